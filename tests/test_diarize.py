"""Speaker labels in the session, without sockets or the real encoder: scripted voices, typed events out.

The stand-in encoder hears a tone's pitch as a voice (220 Hz is one speaker, 440 Hz another), so
which speaker says what is known exactly; the real encoder on real speech is tests/test_speaker_encoder.py
and tests/test_diarize_e2e.py.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from streaming import events as ev
from streaming.audio import float_to_pcm16
from streaming.channels import ChannelSessions
from streaming.config import Config
from streaming.session import (Close, EmbedSpeakers, Emit, FeedAudio, ModelInfo, OpenUtterance, RequestFinal,
                               RequestPartial)
from tests.fakes import CountingBackend

SR = 16000
VOICES = {220: 0, 440: 1, 330: 2}
"""Tone pitch → the axis of its voice vector."""


def loud(frame):
    return float(np.abs(frame).max()) > 0.05


def tone(seconds, freq):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds):
    return np.zeros(int(seconds * SR), np.float32)


@dataclass(frozen=True)
class FakeWindow:
    start_s: float
    end_s: float
    vector: np.ndarray


def pitch_windows(audio, window_s=1.6, hop_s=0.4):
    """What the encoder would give if voices were pitches: a unit vector per window on its pitch's axis."""
    n, hop = int(window_s * SR), int(hop_s * SR)
    if audio.size < int(0.4 * SR):
        return []
    starts = list(range(0, max(1, audio.size - n + 1), hop)) if audio.size > n else [0]
    out = []
    for s in starts:
        chunk = audio[s:s + n]
        spectrum = np.abs(np.fft.rfft(chunk))
        freq = int(round(np.argmax(spectrum) * SR / chunk.size / 110) * 110)
        vector = np.zeros(256)
        vector[VOICES.get(freq, 7)] = 1.0
        out.append(FakeWindow(s / SR, (s + chunk.size) / SR, vector))
    return out


class Driver:
    """A session (or a multichannel one) with a CountingBackend and the pitch encoder answering inline,
    or holding the encoder's answers back (``hold_speakers``) to answer them in any order."""

    def __init__(self, speaker_encoder=True, hold_speakers=False, channels=1, **options):
        self.backend = CountingBackend()
        info = ModelInfo("counting", speaker_encoder=speaker_encoder)
        self.session = ChannelSessions("s", Config(), info, classify=loud)
        self.states, self.events, self.closes, self.embeds = {}, [], [], []
        self.hold = hold_speakers
        self.held = []
        self.run(self.session.handle(ev.Start(options={"diarize": True, "words": True, **options},
                                              channels=channels, multichannel=channels > 1)))

    def audio(self, samples, chunk=3200):
        data = samples if isinstance(samples, bytes) else float_to_pcm16(samples)
        for i in range(0, len(data), chunk * 2):
            self.run(self.session.handle(ev.Audio(data[i:i + chunk * 2])))

    def stop(self):
        self.run(self.session.handle(ev.Stop()))

    def run(self, actions):
        for a in actions:
            if isinstance(a, Emit):
                self.events.append(a.event)
            elif isinstance(a, Close):
                self.closes.append(a)
            elif isinstance(a, OpenUtterance):
                self.states[a.utterance_id] = self.backend.new_utterance(a.options)
            elif isinstance(a, FeedAudio):
                self.states[a.utterance_id].append_audio(a.audio)
            elif isinstance(a, RequestPartial):
                self.run(self.session.partial_ready(a.utterance_id, self.backend.step([self.states[a.utterance_id]])[0]))
            elif isinstance(a, RequestFinal):
                self.run(self.session.final_ready(a.utterance_id,
                                                  self.backend.finalize([self.states[a.utterance_id]])[0]))
            elif isinstance(a, EmbedSpeakers):
                self.embeds.append(a)
                if self.hold:
                    self.held.append(a)
                else:
                    self.run(self.session.speakers_ready(a.utterance_id, pitch_windows(a.audio)))

    def answer(self, action, windows="pitch"):
        self.run(self.session.speakers_ready(action.utterance_id,
                                             pitch_windows(action.audio) if windows == "pitch" else windows))

    def finals(self):
        return [e for e in self.events if isinstance(e, ev.Final)]


def turns(*spec):
    """(seconds, pitch) pairs, each followed by 0.8 s of silence (an endpoint)."""
    parts = [silence(0.3)]
    for seconds, freq in spec:
        parts += [tone(seconds, freq), silence(0.8)]
    return np.concatenate(parts)


def test_a_new_voice_is_a_new_speaker_and_a_returning_one_keeps_its_number():
    d = Driver()
    d.audio(turns((2.0, 220), (2.0, 440), (2.0, 220), (3.0, 330), (2.0, 440)))
    d.stop()
    assert [f.speaker for f in d.finals()] == [0, 1, 0, 2, 1]
    for f in d.finals():
        assert f.words and {w.speaker for w in f.words} == {f.speaker}


def test_a_change_inside_one_utterance_splits_its_words():
    d = Driver()
    d.audio(np.concatenate([silence(0.3), tone(4.0, 220), tone(4.0, 440), silence(1.0)]))
    d.stop()
    final, = d.finals()
    speakers = [w.speaker for w in final.words]
    assert speakers[0] == 0 and speakers[-1] == 1
    assert speakers == sorted(speakers)  # one change, where the voice changed
    switch = speakers.index(1)
    assert final.words[switch].start_s == pytest.approx(0.3 + 4.0, abs=0.6)
    assert final.speaker in (0, 1)


def test_max_speakers_caps_the_labels():
    d = Driver(max_speakers=2)
    d.audio(turns((2.0, 220), (2.0, 440), (2.0, 330)))
    d.stop()
    labels = [f.speaker for f in d.finals()]
    assert labels[:2] == [0, 1] and labels[2] in (0, 1)


def test_the_final_waits_for_its_speakers_and_finals_stay_in_order():
    d = Driver(hold_speakers=True)
    d.audio(turns((2.0, 220), (2.0, 440)))
    assert len(d.embeds) == 2 and not d.finals()  # both decoded, neither labelled yet
    d.answer(d.held[1])  # the second utterance's speakers first: its final still waits for the first
    assert not d.finals()
    d.answer(d.held[0])
    assert [(f.utterance_id, f.speaker) for f in d.finals()] == [(0, 0), (1, 1)]
    d.stop()
    assert isinstance(d.events[-1], ev.Ended)


def test_a_failed_encoder_or_a_too_short_utterance_takes_the_previous_speaker():
    d = Driver(hold_speakers=True)
    d.audio(turns((2.0, 220), (2.0, 440), (2.0, 220)))
    d.answer(d.held[0])
    d.answer(d.held[1])
    d.answer(d.held[2], windows=None)  # the encoder failed: the final still goes out
    assert [f.speaker for f in d.finals()] == [0, 1, 1]
    d.audio(turns((0.3, 220)))  # too short for one window
    d.answer(d.held[3], windows=[])
    assert d.finals()[-1].speaker == 1


def test_embed_gets_exactly_the_utterance_audio_the_engine_got():
    d = Driver()
    d.audio(turns((2.0, 220), (1.5, 440)))
    d.stop()
    fed = {uid: st.num_samples for uid, st in d.states.items()}
    assert {a.utterance_id: a.audio.size for a in d.embeds} == fed


def test_diarize_refused_without_the_encoder():
    d = Driver(speaker_encoder=False)
    error, = [e for e in d.events if isinstance(e, ev.Error)]
    assert error.code == "invalid_option" and "speaker encoder" in error.message
    assert d.closes and d.closes[0].code == 1008


def test_without_diarize_no_speaker_and_no_encoder_work():
    backend_info = ModelInfo("counting", speaker_encoder=True)
    session = ChannelSessions("s", Config(), backend_info, classify=loud)
    out = session.handle(ev.Start(options={"words": True}))
    out += session.handle(ev.Audio(float_to_pcm16(turns((2.0, 220)))))
    assert not [a for a in out if isinstance(a, EmbedSpeakers)]


def test_each_channel_has_its_own_speakers():
    left = turns((2.0, 220), (2.0, 220))
    right = turns((2.0, 440), (2.0, 440))
    d = Driver(channels=2)
    d.audio(float_to_pcm16(np.stack([left, right], axis=1).reshape(-1)))
    d.stop()
    by_channel = {}
    for f in d.finals():
        by_channel.setdefault(f.channel, []).append(f.speaker)
    assert by_channel == {0: [0, 0], 1: [0, 0]}


def test_cleared_utterance_is_never_labelled_and_its_answer_is_ignored():
    d = Driver(hold_speakers=True)
    d.audio(turns((2.0, 220)))
    d.audio(np.concatenate([silence(0.2), tone(1.5, 440)]))
    d.run(d.session.handle(ev.Clear()))
    d.answer(d.held[0])
    d.stop()
    assert [f.speaker for f in d.finals()] == [0]
    assert isinstance(d.events[-1], ev.Ended)
