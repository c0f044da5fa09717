"""Endpointing state machine: synthetic frames (injected classifier) and real speech (webrtcvad)."""

import numpy as np
import pytest

from streaming.config import VadOptions
from streaming.evaluation import dev_clips
from benchmarks.loadgen import with_silence
from streaming.vad import Endpointer, UtteranceAudio, UtteranceEnded, UtteranceStarted

SR = 16000
FRAME = 480  # 30 ms


def tone(seconds, amp=0.3):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds):
    return np.zeros(int(seconds * SR), np.float32)


def loud_is_speech(frame):
    return float(np.abs(frame).max()) > 0.05


def run(ep, audio, chunk=1234):
    events = []
    for i in range(0, audio.size, chunk):
        events += ep.feed(audio[i:i + chunk])
    return events


def summarize(events):
    starts = [e for e in events if isinstance(e, UtteranceStarted)]
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    return starts, ends


def test_one_utterance_with_preroll_and_endpoint():
    ep = Endpointer(VadOptions(endpoint_silence_ms=600, preroll_ms=300), classify=loud_is_speech)
    audio = np.concatenate([silence(1.0), tone(1.0), silence(1.0)])
    events = run(ep, audio)
    starts, ends = summarize(events)
    assert len(starts) == 1 and len(ends) == 1
    assert ends[0].reason == "endpoint"
    # Starts 300 ms before the first voiced frame (1.0 s), ends at the last voiced frame (2.0 s).
    assert abs(starts[0].start_sample / SR - 0.7) <= 0.031
    assert abs(ends[0].end_sample / SR - 2.0) <= 0.031
    # Everything between start and endpoint was passed on, in order, exactly once.
    fed = sum(e.audio.size for e in events if isinstance(e, (UtteranceStarted, UtteranceAudio)))
    assert abs(fed / SR - (2.0 + 0.6 - 0.7)) <= 0.031


def test_silence_and_blips_open_nothing():
    ep = Endpointer(VadOptions(speech_start_ms=120), classify=loud_is_speech)
    audio = np.concatenate([silence(1), tone(0.06), silence(1), tone(0.06), silence(1)])
    assert run(ep, audio) == []


def test_two_utterances_in_order_and_pause_shorter_than_endpoint_keeps_one():
    ep = Endpointer(VadOptions(endpoint_silence_ms=500), classify=loud_is_speech)
    audio = np.concatenate([tone(1), silence(0.3), tone(1), silence(1), tone(0.5), silence(1)])
    starts, ends = summarize(run(ep, audio))
    assert [s.utterance_id for s in starts] == [0, 1]
    assert [e.utterance_id for e in ends] == [0, 1]


def test_force_end_and_flush():
    ep = Endpointer(VadOptions(), classify=loud_is_speech)
    events = run(ep, np.concatenate([silence(0.2), tone(0.5)]))
    assert summarize(events)[0]
    ended = ep.force_end()
    assert [e.reason for e in ended if isinstance(e, UtteranceEnded)] == ["forced"]
    run(ep, tone(0.5))
    flushed = ep.flush()
    assert [e.reason for e in flushed if isinstance(e, UtteranceEnded)] == ["stream_end"]
    assert ep.flush() == []


def test_flush_includes_incomplete_last_frame():
    ep = Endpointer(VadOptions(), classify=loud_is_speech)
    events = ep.feed(tone(1.0)[:8000 + 100])  # not a whole number of frames
    events += ep.flush()
    fed = sum(e.audio.size for e in events if isinstance(e, (UtteranceStarted, UtteranceAudio)))
    assert fed == 8100


def test_long_utterance_cut_at_quiet_point():
    ep = Endpointer(VadOptions(max_utterance_s=5.0, endpoint_silence_ms=600), classify=loud_is_speech)
    # Continuous speech with a short 90 ms pause at 4.2 s (inside the cut zone 3.5-5 s).
    audio = np.concatenate([tone(4.2), silence(0.09), tone(2.0), silence(1)])
    starts, ends = summarize(run(ep, audio))
    assert ends[0].reason == "max_length"
    assert 4.2 <= ends[0].end_sample / SR <= 4.35
    assert len(starts) == 2 and ends[-1].reason == "endpoint"
    # Without any pause the cut happens at the limit.
    ep = Endpointer(VadOptions(max_utterance_s=3.0), classify=lambda f: True)
    starts, ends = summarize(run(ep, tone(7)))
    assert ends and all(e.end_sample - s.start_sample <= 3.0 * SR + FRAME for s, e in zip(starts, ends))


def test_frame_size_validation():
    with pytest.raises(ValueError):
        Endpointer(VadOptions(frame_ms=25), classify=loud_is_speech)


def test_real_speech_with_webrtcvad():
    clips = {c.id: c for c in dev_clips()}
    speech = clips["lib_left"].load()
    audio = np.concatenate([silence(1.0), speech, silence(2.0), clips["onetwothree"].load(), silence(2.0)])
    ep = Endpointer(VadOptions())
    starts, ends = summarize(run(ep, audio, chunk=1600))
    assert len(starts) >= 2 and len(ends) == len(starts)
    assert starts[0].start_sample / SR < 1.2
    assert ends[-1].end_sample / SR <= audio.size / SR - 1.0


def test_real_silence_and_faint_noise_give_no_utterance():
    ep = Endpointer(VadOptions())
    assert run(ep, silence(5)) == []
    noisy = with_silence(np.zeros(0, np.float32), 0, 5, noise_dbfs=-60)
    assert run(Endpointer(VadOptions()), noisy) == []


class Scripted:
    """A StreamClassifier from two per-frame scripts over time: voiced(t) and confirmed(t)."""

    def __init__(self, voiced, confirmed):
        self.voiced, self.confirmed, self.frames = voiced, confirmed, 0

    def classify_frames(self, frames, last_frame_samples=None):
        t = (self.frames + np.arange(len(frames))) * FRAME / SR
        self.frames += len(frames)
        return np.array([self.voiced(x) for x in t]), np.array([self.confirmed(x) for x in t])


@pytest.mark.parametrize("voiced, confirmed, expected", [
    # webrtcvad voiced 1-3 s; confirmation at once: opens at the onset (minus 150 ms pre-roll).
    ((1.0, 3.0), (1.0, 3.0), [(0.85, 3.0)]),
    # Confirmation 0.4 s late: still starts at webrtcvad's onset.
    ((1.0, 3.0), (1.4, 3.0), [(0.85, 3.0)]),
    # Never confirmed (loud noise): nothing.
    ((1.0, 3.0), (9.0, 9.0), []),
    # Confirmation stops at 2 s while webrtcvad still says voiced (noise after speech): ends at 2 s.
    ((1.0, 3.0), (1.0, 2.0), [(0.85, 2.0)]),
])
def test_confirmation_opens_and_holds_utterances(voiced, confirmed, expected):
    inside = lambda span: (lambda t: span[0] <= t < span[1])  # noqa: E731
    ep = Endpointer(VadOptions(), classify=Scripted(inside(voiced), inside(confirmed)))
    events = run(ep, tone(8.0)) + ep.flush()
    starts, ends = summarize(events)
    got = [(s.start_sample / SR, e.end_sample / SR) for s, e in zip(starts, ends)]
    assert len(got) == len(expected)
    for (s0, e0), (x0, x1) in zip(got, expected):
        assert abs(s0 - x0) <= 0.031 and abs(e0 - x1) <= 0.031, got


def test_late_confirmation_starts_within_the_lookback():
    """Confirmed 2.5 s after webrtcvad's onset: the start lies within pre-roll + window + look-back before it."""
    inside = lambda span: (lambda t: span[0] <= t < span[1])  # noqa: E731
    ep = Endpointer(VadOptions(), classify=Scripted(inside((1.0, 6.0)), inside((3.5, 6.0))))
    starts, ends = summarize(run(ep, tone(8.0)) + ep.flush())
    assert len(starts) == 1 and 3.5 - 0.15 - 0.3 - 1.0 - 0.031 <= starts[0].start_sample / SR < 3.5
