"""Several channels in one stream, without sockets: splitting, mixing down, and one session per channel."""

import dataclasses

import numpy as np
import pytest

from streaming import events as ev
from streaming.audio import ChannelSplitter, PcmDecoder, float_to_pcm16, pcm16_to_float
from streaming.channels import ChannelSessions
from streaming.config import Config, VadOptions
from streaming.protocol import MAX_CHANNELS, Parser, ProtocolError
from streaming.session import (Close, Emit, FeedAudio, ModelInfo, OpenUtterance, RequestFinal, RequestPartial,
                               ScoreTurn, Session, Wake)
from tests.fakes import CountingBackend

SR = 16000


def loud(frame):
    return float(np.abs(frame).max()) > 0.05


def tone(seconds, freq=220.0, level=0.3):
    t = np.arange(int(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds):
    return np.zeros(int(seconds * SR), np.float32)


def interleave(*channels):
    """Float channels of equal length → interleaved 16-bit PCM bytes."""
    return float_to_pcm16(np.stack(channels, axis=1).reshape(-1))


# ---- splitting and mixing down ---------------------------------------------------------------------

@pytest.mark.parametrize("encoding,channels,chunks", [
    ("pcm_s16le", 2, [4, 4]),           # whole frames
    ("pcm_s16le", 2, [3, 5, 1, 7]),     # frames split across calls
    ("pcm_f32le", 3, [12, 5, 19]),
    ("mulaw", 4, [1, 2, 3, 6]),
    ("alaw", 8, [8, 8]),
])
def test_splitter_gives_each_channel_its_bytes_whole_frames_only(encoding, channels, chunks):
    width = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}[encoding]
    data = bytes(range(256))[:sum(chunks)]
    splitter = ChannelSplitter(encoding, channels)
    got = [b""] * channels
    offset = 0
    for size in chunks:
        parts = splitter.split(data[offset:offset + size])
        offset += size
        assert len(parts) == channels and len({len(p) for p in parts}) == 1
        got = [g + p for g, p in zip(got, parts)]
    frame = width * channels
    whole = len(data) - len(data) % frame
    assert splitter.pending_bytes == len(data) - whole
    for c in range(channels):
        expected = b"".join(data[i + c * width:i + (c + 1) * width] for i in range(0, whole, frame))
        assert got[c] == expected
    assert splitter.drop_pending() == len(data) - whole and splitter.pending_bytes == 0


def test_mixdown_is_the_mean_of_the_channels_and_keeps_a_split_frame():
    left, right = tone(0.01, level=0.5), tone(0.01, freq=440, level=0.2)
    data = interleave(left, right)
    decoder = PcmDecoder("pcm_s16le", channels=2)
    out = np.concatenate([decoder.decode(data[:7]), decoder.decode(data[7:])])
    expected = (pcm16_to_float(float_to_pcm16(left)) + pcm16_to_float(float_to_pcm16(right))) / 2
    assert decoder.pending_bytes == 0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert decoder.decode(b"\x01\x02\x03").size == 0 and decoder.pending_bytes == 3  # under one frame


@pytest.mark.parametrize("fields,code,says", [
    ({"channels": 0}, "invalid_option", "channels must be an integer from 1 to 8"),
    ({"channels": MAX_CHANNELS + 1}, "invalid_option", "from 1 to 8, got 9"),
    ({"channels": "2"}, "invalid_option", "channels must be an integer"),
    ({"channels": True}, "invalid_option", "channels must be an integer"),
    ({"channels": 2, "multichannel": "yes"}, "invalid_option", "multichannel must be a boolean"),
])
def test_v1_start_refuses_bad_channel_layouts(fields, code, says):
    import json
    with pytest.raises(ProtocolError) as refused:
        Parser().parse(json.dumps({"type": "start", **fields}))
    assert refused.value.code == code and says in refused.value.message


def test_v1_start_reads_the_layout_apart_from_the_options():
    import json
    start = Parser().parse(json.dumps({"type": "start", "channels": 2.0, "multichannel": True, "language": "en"}))
    assert (start.channels, start.multichannel, start.options) == (2, True, {"language": "en"})


# ---- one session per channel ----------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class ChannelDriver:
    """ChannelSessions with a CountingBackend answering the engine inline (or deferred), typed events out."""

    def __init__(self, channels=2, multichannel=True, config=None, defer=False, encoding="pcm_s16le", **options):
        self.backend = CountingBackend()
        info = ModelInfo("counting", turn_model=True, eager_decodes=False)
        self.clock = Clock()
        self.session = ChannelSessions("s", config or Config(), info, classify=loud, clock=self.clock)
        self.states, self.events, self.closes, self.wakes, self.asked = {}, [], [], [], []
        self.defer, self.deferred = defer, []
        self.fed: dict[int, int] = {}
        self.run(self.session.handle(ev.Start(encoding=encoding, options=options, channels=channels,
                                                      multichannel=multichannel)))

    def audio(self, data, chunk=6400):
        for i in range(0, len(data), chunk):
            self.run(self.session.handle(ev.Audio(data[i:i + chunk])))

    def run(self, actions):
        for a in actions:
            if isinstance(a, Emit):
                self.events.append(a.event)
            elif isinstance(a, Close):
                self.closes.append(a)
            elif isinstance(a, OpenUtterance):
                assert a.utterance_id not in self.states, "utterance ids must be unique on the connection"
                self.states[a.utterance_id] = self.backend.new_utterance(a.options)
            elif isinstance(a, FeedAudio):
                self.states[a.utterance_id].append_audio(a.audio)
                self.fed[a.utterance_id] = self.fed.get(a.utterance_id, 0) + a.audio.size
            elif isinstance(a, RequestPartial):
                job = lambda u=a.utterance_id: self.session.partial_ready(u, self.backend.step([self.states[u]])[0])
                self.deferred.append(job) if self.defer else self.run(job())
            elif isinstance(a, RequestFinal):
                job = lambda u=a.utterance_id: self.session.final_ready(u, self.backend.finalize([self.states[u]])[0])
                self.deferred.append(job) if self.defer else self.run(job())
            elif isinstance(a, ScoreTurn):
                self.asked.append(a)
            elif isinstance(a, Wake):
                self.wakes.append(a.after_s)

    def flush(self):
        jobs, self.deferred = self.deferred, []
        for job in jobs:
            self.run(job())

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def two_talkers():
    """Channel 0 speaks at 0.5–2.5 s and 5–6 s; channel 1 at 3–4 s (a call's two legs)."""
    left = np.concatenate([silence(0.5), tone(2.0), silence(2.5), tone(1.0), silence(1.0)])
    right = np.concatenate([silence(3.0), tone(1.0, freq=330), silence(3.0)])
    return left, right


def mono_finals(samples):
    d = ChannelDriver(channels=1, multichannel=False)
    d.audio(float_to_pcm16(samples))
    d.run(d.session.handle(ev.Stop()))
    return [(f.text, f.start_s, f.end_s) for f in d.of(ev.Final)]


def test_each_channel_is_its_own_stream_of_utterances_with_one_ready_and_one_end():
    left, right = two_talkers()
    d = ChannelDriver()
    d.audio(interleave(left, right))
    d.run(d.session.handle(ev.Stop()))
    ready, = d.of(ev.Ready)
    assert ready.options["channels"] == 2 and ready.options["multichannel"] is True
    finals = d.of(ev.Final)
    assert [(f.channel, f.utterance_id) for f in finals] == [(0, 0), (1, 1), (0, 2)]  # local u → u * 2 + c
    for channel, samples in enumerate((left, right)):
        mine = [(f.text, f.start_s, f.end_s) for f in finals if f.channel == channel]
        assert mine == mono_finals(samples)  # the same as that channel streamed alone
    for kind in (ev.SpeechStarted, ev.SpeechEnded, ev.Partial):
        assert d.of(kind) and all(e.channel in (0, 1) for e in d.of(kind))
    for f in finals:  # each utterance's events carry its channel
        assert {e.channel for e in d.events if getattr(e, "utterance_id", None) == f.utterance_id} == {f.channel}
    end, = d.of(ev.Ended)
    assert isinstance(d.events[-1], ev.Ended) and end.utterances == 3 and end.audio_s == pytest.approx(7.0)
    assert d.closes == [Close(1000, "end of stream")] and d.session.closed
    assert d.session.utterance_count == 3 and d.session.audio_samples == 7 * SR


def test_finals_of_one_channel_wait_for_nothing_of_another():
    """Channel 1's final goes out while channel 0's utterance is still open: channels are independent."""
    left = tone(4.0)
    right = np.concatenate([tone(1.0, freq=330), silence(3.0)])
    d = ChannelDriver()
    d.audio(interleave(left, right))
    finals = d.of(ev.Final)
    assert [f.channel for f in finals] == [1]
    assert any(isinstance(e, ev.Partial) and e.channel == 0 for e in d.events[d.events.index(finals[0]):])


def test_mixdown_without_multichannel_is_one_stream_without_channel_fields():
    left, right = two_talkers()
    d = ChannelDriver(multichannel=False)
    d.audio(interleave(left, right))
    d.run(d.session.handle(ev.Stop()))
    assert d.session.channels == 1 and d.of(ev.Ready)[0].options["channels"] == 2
    assert d.of(ev.Ready)[0].options["multichannel"] is False
    assert all(getattr(e, "channel", None) is None for e in d.events)
    mixed = (pcm16_to_float(float_to_pcm16(left)) + pcm16_to_float(float_to_pcm16(right))) / 2
    assert [(f.text, f.start_s, f.end_s) for f in d.of(ev.Final)] == mono_finals(mixed)


def test_one_channel_stream_passes_straight_through():
    left, _ = two_talkers()
    d = ChannelDriver(channels=1, multichannel=True)
    d.audio(float_to_pcm16(left))
    d.run(d.session.handle(ev.Stop()))
    assert d.session.channels == 1 and all(getattr(e, "channel", None) is None for e in d.events)
    assert len(d.of(ev.Final)) == 2


def test_stop_inside_a_frame_says_so_once_and_loses_no_whole_frame():
    left, right = two_talkers()
    d = ChannelDriver()
    data = interleave(left, right)
    d.audio(data + b"\x01\x02\x03")  # three bytes of a 4-byte frame
    d.run(d.session.handle(ev.Stop()))
    errors = d.of(ev.Error)
    assert len(errors) == 1 and errors[0].code == "partial_sample" and not errors[0].fatal
    assert "frame of 2 channels" in errors[0].message
    assert len(d.of(ev.Final)) == 3 and len(d.of(ev.Ended)) == 1


def test_a_fatal_error_ends_every_channel_after_their_finals_and_is_said_once():
    d = ChannelDriver(defer=True)
    left, right = tone(1.0), np.concatenate([silence(0.2), tone(0.8, freq=330)])
    d.audio(interleave(left, right))
    d.run(d.session.fail(ProtocolError("session_too_long", "the session ran past its limit")))
    d.flush()
    errors = d.of(ev.Error)
    assert len(errors) == 1 and errors[0].code == "session_too_long"
    assert sorted(f.channel for f in d.of(ev.Final)) == [0, 1]  # the open utterances still got their finals
    assert d.events[-1] is errors[0] and not d.of(ev.Ended)
    assert len(d.closes) == 1 and d.closes[0].code != 1000 and d.session.closed


def test_bad_audio_in_the_stream_fails_the_connection_once():
    d = ChannelDriver(encoding="pcm_f32le")
    d.run(d.session.handle(ev.Audio(np.full(8, np.nan, dtype="<f4").tobytes())))
    fatal = [e for e in d.of(ev.Error) if e.fatal]
    assert len(fatal) == 1 and fatal[0].code == "invalid_audio"
    assert len(d.closes) == 1 and d.closes[0].code == 1007 and d.session.closed


def test_configure_reaches_every_channel_and_a_refusal_is_said_once():
    d = ChannelDriver()
    d.run(d.session.handle(ev.Configure({"step_s": 0.5})))
    configured = d.of(ev.Configured)
    assert len(configured) == 1 and configured[0].options["channels"] == 2
    assert all(s.options.step_s == 0.5 for s in d.session._sessions)
    d.run(d.session.handle(ev.Configure({"step_s": "soon"})))
    assert len(d.of(ev.Error)) == 1 and not d.of(ev.Error)[0].fatal


def test_refused_start_layouts_and_a_second_start():
    d = ChannelDriver(channels=9)
    error, = d.of(ev.Error)
    assert error.code == "invalid_option" and d.closes and d.closes[0].code == 1008
    d = ChannelDriver()
    d.run(d.session.handle(ev.Start(channels=2, multichannel=True)))
    error, = d.of(ev.Error)
    assert error.code == "already_started" and not d.closes


def test_each_channels_wall_clock_wake_is_folded_into_one_timer():
    """Smart turns on both channels: the shell gets the earliest wake-up, and a wake fires only the due one."""
    config = Config(vad=dataclasses.replace(VadOptions(), turn_prefetch=False))
    d = ChannelDriver(config=config, turn_detection="smart", turn_pause_ms=150, turn_max_silence_ms=1500)
    speech_then_pause = np.concatenate([tone(1.0), silence(0.3)])
    left = np.concatenate([speech_then_pause, silence(0.5)])
    right = np.concatenate([silence(0.5), speech_then_pause])
    data = interleave(left, right)
    d.audio(data[:int(1.3 * SR) * 4])  # channel 0 pauses; its score is never answered
    assert [a.utterance_id % 2 for a in d.asked] == [0]
    assert d.wakes[-1] == pytest.approx(1.35)
    d.clock.now += 0.5
    d.audio(data[int(1.3 * SR) * 4:])  # channel 1 pauses 0.5 s later
    assert [a.utterance_id % 2 for a in d.asked] == [0, 1]
    assert d.wakes[-1] == pytest.approx(0.85)  # channel 0's deadline is still the nearest
    d.clock.now += 0.85
    d.run(d.session.wake())
    assert [(f.channel, f.reason) for f in d.of(ev.Final)] == [(0, "max_silence")]
    assert d.wakes[-1] == pytest.approx(0.5)  # channel 1's deadline, now the only one
    d.clock.now += 0.5
    d.run(d.session.wake())
    assert [(f.channel, f.reason) for f in d.of(ev.Final)] == [(0, "max_silence"), (1, "max_silence")]
    assert d.wakes[-1] is None


def test_admission_is_asked_once_per_connection():
    asked = []
    info = ModelInfo("counting")

    def admit():
        asked.append(1)
        return None

    session = ChannelSessions("s", Config(), info, classify=loud, admit=admit)
    session.handle(ev.Start(channels=4, multichannel=True))
    assert asked == [1] and session.channels == 4
    refused = ChannelSessions("s", Config(), info, classify=loud,
                              admit=lambda: ProtocolError("too_many_sessions", "full"))
    out = refused.handle(ev.Start(channels=4, multichannel=True))
    assert [a.event.code for a in out if isinstance(a, Emit)] == ["too_many_sessions"]
    assert refused.channels == 1


def test_the_channel_session_is_a_session():
    """What the link and the shell use of a Session, ChannelSessions has too."""
    used = ("state", "closed", "options", "vad_options", "last_valid_message", "audio_samples", "utterance_count",
            "handle", "fail", "abandon", "partial_ready", "final_ready", "turn_scored", "eager_ready", "wake",
            "session_id")
    session = Session("s", Config(), ModelInfo("counting"))
    for name in used:
        assert hasattr(ChannelSessions, name) or hasattr(ChannelSessions("s", Config(), ModelInfo("c")), name)
        assert hasattr(session, name)
