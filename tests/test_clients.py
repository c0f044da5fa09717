"""The Python clients: pure parts (fast) and end to end against the real server (slow)."""

from __future__ import annotations

import io
import json
import os
import re
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
import soundfile as sf

from client.common import (
    Backoff, CaptionState, CaptionUpdate, LatencyTracker, ReplayBuffer, TerminalDisplay, fit_line, info_url,
    window_supported,
)
from client.continuity import encode_audio
from client.events import Codec, Final, Partial, SpeechStart, parse_event, start_message
from client.mic import Output, build_parser, options_from_args
from client.options import StreamOptions, turn_fields
from client.sources import FileSource
from client.subtitles import Cue, parse_subtitles
from client.turns import IDLE, Turn, indicator, next_turn

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ARTIFACTS = REPO / "test-artifacts"


# --- pure parts ------------------------------------------------------------------------------


def test_backoff_schedule_grows_and_caps() -> None:
    backoff = Backoff(initial_s=0.5, factor=2, max_s=5, jitter=0)
    assert [backoff.delay_s(n) for n in range(6)] == [0.5, 1, 2, 4, 5, 5]
    jittered = Backoff(initial_s=1, factor=2, max_s=8, jitter=0.1)
    rand = random.Random(1)
    assert all(0.9 * 4 <= jittered.delay_s(2, rand) <= 1.1 * 4 for _ in range(100))


def _blocks(*lengths: int) -> list[np.ndarray]:
    out, start = [], 0
    for n in lengths:
        out.append(np.arange(start, start + n, dtype=np.float32))
        start += n
    return out


def test_replay_buffer_sends_in_order_and_resends_unacknowledged_audio() -> None:
    buf = ReplayBuffer(max_unsent=1000, max_replay=1000)
    for block in _blocks(10, 10, 10):
        buf.append(block)
    pos, samples = buf.take_unsent(15)
    assert pos == 0 and samples.tolist() == list(range(15))
    pos, samples = buf.take_unsent()
    assert pos == 15 and samples.tolist() == list(range(15, 30))
    buf.ack(12)  # a final ended at sample 12
    assert buf.rewind() == 12  # the connection died: resend from there
    pos, samples = buf.take_unsent()
    assert pos == 12 and samples.tolist() == list(range(12, 30))
    buf.ack(100)  # never past what was sent
    assert buf.acked_pos == 30 and buf.unsent == 0


def test_replay_buffer_drops_oldest_unsent_audio_past_its_bound() -> None:
    buf = ReplayBuffer(max_unsent=25, max_replay=100)
    for block in _blocks(10, 10, 10, 10):
        buf.append(block)
    assert buf.take_dropped() == 15 and buf.take_dropped() == 0
    pos, samples = buf.take_unsent()
    assert pos == 15 and samples.tolist() == list(range(15, 40))  # contiguous newest audio
    assert buf.captured_pos == 40


def test_replay_buffer_keeps_only_recent_sent_audio() -> None:
    buf = ReplayBuffer(max_unsent=1000, max_replay=8)
    for block in _blocks(10, 10):
        buf.append(block)
        buf.take_unsent()
    assert buf.rewind() == 12
    assert buf.take_unsent()[1].tolist() == list(range(12, 20))


def _partial(text: str) -> Partial:
    return Partial(1, 0, text, "", 0.0, 1.0)


def _final(text: str) -> Final:
    return Final(2, 0, text, "en", 0.0, 1.0)


def test_caption_state_partials_replace_and_finals_stay() -> None:
    state = CaptionState()
    assert state.apply(SpeechStart(0, 0, 0.0)).changed is False
    assert state.apply(_partial("hello")).partial == "hello"
    assert state.apply(_partial("hello wor")).partial == "hello wor"
    update = state.apply(_final(" hello world "))
    assert update.new_finals == ["hello world"] and update.partial == ""
    assert state.apply(_final("")).new_finals == []  # nothing to print
    state.apply(_partial("next"))
    assert state.reset_partial().partial == "" and state.transcript == "hello world"


def test_caption_state_names_the_speaker_of_a_labelled_final() -> None:
    state = CaptionState()
    labelled = parse_event({"type": "final", "seq": 3, "utterance_id": 0, "text": "Hello.", "language": "en",
                            "start_s": 0.0, "end_s": 1.0, "speaker": 1})
    assert labelled.speaker == 1
    assert state.apply(labelled).new_finals == ["[speaker 1] Hello."]
    assert state.apply(_final("Hi.")).new_finals == ["Hi."]  # no label without diarize


def test_diarize_flag_asks_for_speaker_labels() -> None:
    assert options_from_args(build_parser().parse_args(["--diarize"])).diarize is True
    assert options_from_args(build_parser().parse_args([])).diarize is False


def test_fit_line_keeps_the_newest_words() -> None:
    assert fit_line("short", 80) == "short"
    line = fit_line("word " * 40, 20)
    assert len(line) == 19 and line.startswith("…") and line.endswith("word")


def test_terminal_line_keeps_the_status_head_when_the_text_is_cut(monkeypatch) -> None:
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=(80, 24): os.terminal_size((30, 24)))
    out = io.StringIO()
    TerminalDisplay(out, interactive=True).show(CaptionUpdate(partial="word " * 20, changed=True, status="[speaking]"))
    line = out.getvalue().removeprefix("\x1b[2;3m").removesuffix("\x1b[0m")
    assert line.startswith("[speaking] …") and line.endswith("word") and len(line) == 29


# --- the turn indicator (client/turns.py; web/turns.js is tested on the same table in test_browser.py) ----------


def _msg(kind: str, uid: int | None = None, **fields) -> dict:
    """A v1 server message with just what the turn rules read (seq is irrelevant to them)."""
    return {"type": kind, **({} if uid is None else {"utterance_id": uid}), **fields}


READY, END = _msg("ready", session_id="s", model="m", protocol=1, options={}), _msg("end", utterances=1, audio_s=9.0)
TURN_TIMELINES: dict[str, list[tuple[dict, str, str]]] = {
    # Each step: the message, then the indicator's state and tentative (eager) text after it.
    "silence mode: speech, pause, final": [
        (READY, "idle", ""),
        (_msg("speech_start", 0, start_s=0.5), "speaking", ""),
        (_msg("partial", 0, text="hello"), "speaking", ""),
        (_msg("speech_end", 0, end_s=1.5, reason="endpoint"), "thinking", ""),
        (_msg("final", 0, text="hello there", reason="endpoint"), "your_turn", ""),
        (END, "idle", ""),
    ],
    "smart with eager: the eager text stands until the final": [
        (_msg("speech_start", 0), "speaking", ""),
        (_msg("partial", 0, text="book a table"), "speaking", ""),
        (_msg("eager_end_of_turn", 0, text=" book a table for two "), "thinking", "book a table for two"),
        (_msg("speech_end", 0, reason="end_of_turn"), "thinking", "book a table for two"),
        (_msg("final", 0, text="book a table for two", reason="end_of_turn"), "your_turn", ""),
    ],
    "hesitation: turn_resumed takes the eager text back, one utterance": [
        (_msg("speech_start", 3), "speaking", ""),
        (_msg("eager_end_of_turn", 3, text="I'd like"), "thinking", "I'd like"),
        (_msg("partial", 3, text="I'd like"), "thinking", "I'd like"),  # decoded before the pause
        (_msg("turn_resumed", 3, at_s=2.0), "speaking", ""),
        (_msg("partial", 3, text="I'd like the soup"), "speaking", ""),
        (_msg("speech_end", 3, reason="max_silence"), "thinking", ""),
        (_msg("final", 3, text="I'd like the soup", reason="max_silence"), "your_turn", ""),
    ],
    "an earlier utterance's final while the user speaks again": [
        (_msg("speech_start", 0), "speaking", ""),
        (_msg("speech_end", 0, reason="endpoint"), "thinking", ""),
        (_msg("speech_start", 1), "speaking", ""),
        (_msg("final", 0, text="one", reason="endpoint"), "speaking", ""),
        (_msg("speech_end", 1, reason="endpoint"), "thinking", ""),
        (_msg("final", 1, text="two", reason="endpoint"), "your_turn", ""),
    ],
    "a length cut keeps the turn": [
        (_msg("partial", 0, text="and so on"), "speaking", ""),
        (_msg("speech_end", 0, reason="max_length"), "speaking", ""),
        (_msg("final", 0, text="and so on", reason="max_length"), "speaking", ""),
        (_msg("speech_start", 1), "speaking", ""),
    ],
    "an older server: no reasons, no turn messages": [
        (_msg("speech_start", 0), "speaking", ""),
        (_msg("speech_end", 0), "thinking", ""),
        (_msg("final", 0, text="hi"), "your_turn", ""),
    ],
    "cleared, a reconnect, errors and unknown messages": [
        (_msg("speech_start", 4), "speaking", ""),
        (_msg("error", code="invalid_message", message="x", fatal=False), "speaking", ""),
        (_msg("speaker_change", speaker=2), "speaking", ""),
        (_msg("cleared", 4, at_s=3.0), "idle", ""),
        (_msg("speech_start", 5), "speaking", ""),
        (READY, "idle", ""),  # a new connection: its utterance ids start at 0 again
        (_msg("speech_start", 0), "speaking", ""),
        (_msg("final", 0, text="again", reason="stream_end"), "your_turn", ""),
    ],
}


@pytest.mark.parametrize("name", list(TURN_TIMELINES))
def test_turn_indicator_follows_the_table(name: str) -> None:
    turn, got = IDLE, []
    for message, _, _ in TURN_TIMELINES[name]:
        turn = next_turn(turn, message)
        got.append((turn.state, turn.eager_text))
    assert got == [(state, eager) for _, state, eager in TURN_TIMELINES[name]]


def test_turn_indicator_keeps_the_final_reason_and_the_utterance() -> None:
    turn = next_turn(next_turn(IDLE, _msg("speech_start", 2)), _msg("final", 2, text="x", reason="end_of_turn"))
    assert turn == Turn("your_turn", 2, "", "end_of_turn")
    assert next_turn(IDLE, _msg("final", 0, text="x")).reason is None


def test_turn_indicator_line() -> None:
    assert indicator(IDLE, "") == ("", "")
    assert indicator(Turn("speaking", 0), "hello") == ("[speaking]", "hello")
    assert indicator(Turn("thinking", 0, "hello there"), "hello") == ("[thinking]", "eager: hello there")
    assert indicator(Turn("thinking", 0), "hello") == ("[thinking]", "hello")
    assert indicator(Turn("your_turn", 0, "", "endpoint"), "") == ("[your turn]", "")


def _render(messages: list[dict], interactive: bool) -> str:
    out = io.StringIO()
    output = Output(display=TerminalDisplay(out, interactive=interactive), turns=True)
    for seq, message in enumerate(messages):
        output.event(parse_event({**message, "seq": seq, "start_s": 0.0, "end_s": 1.0, "language": "en",
                                  "stable_text": "", "at_s": 1.0}))
    return out.getvalue()


EAGER_TIMELINE = [READY, _msg("speech_start", 0), _msg("partial", 0, text="book a"),
                  _msg("eager_end_of_turn", 0, text="book a table"), _msg("turn_resumed", 0),
                  _msg("partial", 0, text="book a table for two"),
                  _msg("eager_end_of_turn", 0, text="book a table for two"),
                  _msg("speech_end", 0, reason="end_of_turn"),
                  _msg("final", 0, text="book a table for two", reason="end_of_turn")]


def test_mic_output_shows_the_turn_in_place_and_finals_for_good() -> None:
    # Each redraw of the in-place line starts with "\r ESC[K"; speech_end changes nothing shown: no redraw.
    shown = re.sub(r"\x1b\[[0-9;]*m", "", _render(EAGER_TIMELINE, interactive=True)).split("\r\x1b[K")
    assert shown == ["[speaking]", "[speaking] book a", "[thinking] eager: book a table", "[speaking] book a",
                     "[speaking] book a table for two", "[thinking] eager: book a table for two",
                     "book a table for two\n[your turn]"]
    # Piped (not a terminal): the transcript only, as before.
    assert _render(EAGER_TIMELINE, interactive=False) == "book a table for two\n"


def test_mic_turn_flags_become_start_fields() -> None:
    parser = build_parser()
    args = parser.parse_args(["--turn-detection", "smart", "--turn-eagerness", "high", "--eager"])
    options = options_from_args(args)
    fields = turn_fields(options.turn_detection, options.turn_eagerness, options.eager_end_of_turn)
    assert fields == {"turn_detection": "smart", "turn_eagerness": "high", "eager_end_of_turn": True}
    start = StreamOptions(sample_rate=16_000, **fields).start_message()
    assert start["turn_detection"] == "smart" and start["turn_eagerness"] == "high" and start["eager_end_of_turn"]
    # Unset flags leave the server's defaults alone.
    plain = options_from_args(parser.parse_args([]))
    assert turn_fields(plain.turn_detection, plain.turn_eagerness, plain.eager_end_of_turn) == {}
    assert not {"turn_detection", "turn_eagerness", "eager_end_of_turn"} & set(StreamOptions().start_message())
    with pytest.raises(SystemExit):
        parser.parse_args(["--turn-eagerness", "eager"])  # the server's choices, checked before connecting
    help_text = " ".join(parser.format_help().split())
    for expected in ("--turn-detection {silence,smart,manual}", "--turn-eagerness {low,medium,high,auto}",
                     "--eager", "[thinking]", "[your turn]", "eager_end_of_turn"):
        assert expected in help_text, expected


def test_latency_tracker_maps_stream_time_to_capture_time() -> None:
    tracker = LatencyTracker(sample_rate_hz=100)
    for i in range(1, 11):  # 10 blocks of 0.1 s, block i captured at t = i * 0.1
        tracker.captured(i * 10, i * 0.1)
    assert tracker.capture_time(35) == pytest.approx(0.35)
    # An utterance from 0.5 s of the stream (times are already offset across reconnects).
    partial = Partial(3, 2, "so", "", 0.5, 0.7)
    assert tracker.on_event(partial, now_s=1.5) == pytest.approx(1.0)
    assert tracker.on_event(partial, now_s=1.9) is None  # only the first partial of an utterance
    final = Final(4, 2, "so", "en", 0.5, 0.8)
    assert tracker.on_event(final, now_s=1.3) == pytest.approx(0.5, abs=0.011)
    assert "first partial: median 1.00 s" in tracker.summary()


def test_codec_json_and_msgpack() -> None:
    start = start_message(44_100, language="en")
    assert start == {"type": "start", "sample_rate": 44100, "encoding": "pcm_s16le", "partials": True,
                     "language": "en"}
    assert "window_s" not in start_message(16_000)
    assert json.loads(Codec().control(start)) == start
    packed = Codec(use_msgpack=True)
    assert msgpack.unpackb(packed.control(start)) == start
    assert msgpack.unpackb(packed.audio(b"\x01\x02")) == {"type": "audio", "pcm": b"\x01\x02"}
    assert Codec().audio(b"\x01\x02") == b"\x01\x02"
    assert packed.event(msgpack.packb({"type": "end", "seq": 3})) == {"type": "end", "seq": 3}
    with pytest.raises(ValueError):
        Codec().event("[1, 2]")


def test_pcm_conversion_clips_and_is_little_endian() -> None:
    pcm = encode_audio(np.array([0.0, 1.0, -1.0, 2.0, 0.5], dtype=np.float32), "pcm_s16le")
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 32767, -32767, 32767, 16384]
    assert encode_audio(b"\x01\x02", "pcm_s16le") == b"\x01\x02"  # bytes pass through
    assert np.frombuffer(encode_audio(np.array([0.25], np.float64), "pcm_f32le"), "<f4").tolist() == [0.25]
    with pytest.raises(TypeError):
        encode_audio(np.zeros(4, np.float32), "mulaw")  # no float → G.711 encoder: give bytes


def test_info_url_and_window_support() -> None:
    assert info_url("ws://h:1/v1/stream") == "http://h:1/v1/info"
    assert info_url("wss://h/v1/stream") == "https://h/v1/info"
    assert window_supported({"supports_window": False}) is False
    assert window_supported({"supports_window": True}) is True
    assert window_supported({"model": "x"}) is None


def test_file_source_reads_native_rate_mono_blocks(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    stereo = np.stack([np.full(2205, 0.5), np.full(2205, -0.5)], axis=1)
    sf.write(path, stereo, 22_050)
    source = FileSource(path, speed=0, block_s=0.1)
    source.start()
    blocks = []
    while (block := source.read()) is not None:
        blocks.append(block)
    assert source.sample_rate_hz == 22_050
    assert [len(b) for b in blocks] == [2205]
    assert np.allclose(blocks[0], 0.0)


def test_file_source_paces_in_real_time(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    sf.write(path, np.zeros(4000), 8000)  # 0.5 s
    source = FileSource(path, speed=2.0, block_s=0.1)
    t0 = time.monotonic()
    source.start()
    while source.read() is not None:
        pass
    # 0.5 s of audio at twice real time: never faster; the upper bound only catches a hang.
    assert 0.2 <= time.monotonic() - t0 < 5.0


# --- end to end --------------------------------------------------------------------------------


@dataclass
class Span:
    clip_id: str
    text: str
    start_s: float
    end_s: float


def english_clips():
    from streaming.evaluation import dev_clips

    return [c for c in dev_clips() if c.language == "en"]


def concatenated_wav(path: Path, clips, rate_hz: int, gap_s: float = 1.5, tail_s: float = 1.0) -> list[Span]:
    """Clips joined by silence, written at ``rate_hz``; returns where each clip lies."""
    parts, spans, t = [], [], 0.0
    gap = np.zeros(round(gap_s * rate_hz), np.float32)
    for clip in clips:
        audio = clip.load(rate_hz)
        spans.append(Span(clip.id, clip.text, t, t + len(audio) / rate_hz))
        parts += [audio, gap]
        t += (len(audio) + len(gap)) / rate_hz
    parts.append(np.zeros(round(tail_s * rate_hz), np.float32))
    sf.write(path, np.concatenate(parts), rate_hz, subtype="PCM_16")
    return spans


def finals_of(stdout: str) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return [e for e in events if e["type"] == "final"]


def assert_valid_cues(cues: list[Cue]) -> None:
    for a, b in zip(cues, cues[1:]):
        assert a.start_s < a.end_s <= b.start_s < b.end_s, (a, b)


def hypotheses_by_clip(cues: list[Cue], spans: list[Span]) -> dict[str, str]:
    """Assign each cue to the clip its midpoint falls in (within the surrounding silence)."""
    out = {s.clip_id: [] for s in spans}
    for cue in cues:
        mid = (cue.start_s + cue.end_s) / 2
        best = min(spans, key=lambda s: 0 if s.start_s - 0.75 <= mid <= s.end_s + 0.75
                   else min(abs(mid - s.start_s), abs(mid - s.end_s)))
        out[best.clip_id].append(cue.text)
    return {k: " ".join(v) for k, v in out.items()}


def record(name: str, text: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def server_url():
    from tests.helpers import running_server

    with running_server() as url:
        yield url


@pytest.mark.slow
def test_mic_client_transcribes_live_input_and_writes_subtitles(server_url: str, tmp_path: Path) -> None:
    from streaming.evaluation import wer

    wav = tmp_path / "speech.wav"
    # Five clips of the English dev set (22 s at real time), at a rate the server must resample.
    spans = concatenated_wav(wav, english_clips()[1:6], rate_hz=22_050)
    srt, vtt = tmp_path / "out.srt", tmp_path / "out.vtt"
    proc = subprocess.run([PYTHON, "-m", "client.mic", "--input", str(wav), "--url", server_url, "--json",
                           "--srt", str(srt), "--vtt", str(vtt)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    finals = finals_of(proc.stdout)
    hypothesis = " ".join(f["text"] for f in finals)
    reference = " ".join(s.text for s in spans)
    error = wer([reference], [hypothesis])
    latency = proc.stderr.strip().splitlines()[-1]
    record("mic-client.txt", f"WER {error:.3f}\n{latency}\n\n{hypothesis}\n")
    assert error <= 0.15, hypothesis

    srt_cues, vtt_cues = parse_subtitles(srt.read_text(), "srt"), parse_subtitles(vtt.read_text(), "vtt")
    assert [c.text for c in srt_cues] == [c.text for c in vtt_cues] == [" ".join(f["text"].split()) for f in finals]
    assert [(c.start_s, c.end_s) for c in srt_cues] == [(c.start_s, c.end_s) for c in vtt_cues]
    assert_valid_cues(srt_cues)
    # Cue times are stream times: each clip's words sit where the clip is in the file.
    per_clip = hypotheses_by_clip(srt_cues, spans)
    assert wer([s.text for s in spans], [per_clip[s.clip_id] for s in spans]) <= 0.15, per_clip


@pytest.mark.slow
def test_mic_client_reports_unsupported_window_clearly(server_url: str, tmp_path: Path) -> None:
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(8000), 16_000)
    proc = subprocess.run([PYTHON, "-m", "client.mic", "--input", str(wav), "--url", server_url, "--window-s", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--window-s is not supported" in proc.stderr


@pytest.mark.slow
def test_mic_client_sends_the_turn_mode_and_the_real_timeline_drives_the_indicator(server_url: str,
                                                                                   tmp_path: Path) -> None:
    wav = tmp_path / "two-turns.wav"
    concatenated_wav(wav, english_clips()[1:3], rate_hz=16_000)  # two clips, 1.5 s apart: two turns at least
    proc = subprocess.run([PYTHON, "-m", "client.mic", "--input", str(wav), "--speed", "0", "--url", server_url,
                           "--json", "--turn-detection", "silence"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr  # the server took the start field
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    turn, states = IDLE, []
    for event in events[:-1]:  # up to the end (which returns to idle)
        turn = next_turn(turn, event)
        states.append(turn.state)
    assert events[-1]["type"] == "end" and sum(e["type"] == "final" for e in events) >= 2
    assert states[-1] == "your_turn"
    # Every turn goes speaking -> thinking -> your turn.
    changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert changes[0] == "idle" and changes[1] == "speaking"
    for i, state in enumerate(changes):
        if state == "your_turn":
            assert changes[i - 1] == "thinking", changes


@pytest.mark.slow
@pytest.mark.parametrize("wire", ["json", "msgpack"])
def test_file_client_prints_finals_matching_the_reference(server_url: str, wire: str) -> None:
    from streaming.evaluation import wer

    clips = {c.id: c for c in english_clips()}
    clip = clips["jfk"] if wire == "json" else clips["lib_left"]
    extra = ["--msgpack"] if wire == "msgpack" else []
    proc = subprocess.run([PYTHON, "-m", "client.file", str(clip.path), "--url", server_url, "--speed", "0",
                           "--json", *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "ready" and events[-1]["type"] == "end"
    assert [e["seq"] for e in events] == list(range(len(events)))
    finals = [e for e in events if e["type"] == "final"]
    assert [f["utterance_id"] for f in finals] == list(range(len(finals)))
    assert wer([clip.text], [" ".join(f["text"] for f in finals)]) <= 0.15

    plain = subprocess.run([PYTHON, "-m", "client.file", str(clip.path), "--url", server_url, "--speed", "0"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [f["text"] for f in finals]  # not a TTY: just the transcript


@pytest.mark.slow
def test_file_client_fails_fast_without_a_server(tmp_path: Path) -> None:
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(8000), 16_000)
    proc = subprocess.run([PYTHON, "-m", "client.file", str(wav), "--url", f"ws://127.0.0.1:{free_port()}/v1/stream"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "cannot connect" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m streaming serve`` as a child process, so a test can kill it like a crash."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> None:
        log = open(ARTIFACTS / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen([PYTHON, "-m", "streaming", "serve", "--port", str(self.port)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "server exited during start-up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)  # polling a process we do not control: no event to wait on
        raise TimeoutError("server did not become healthy")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.mark.slow
def test_mic_client_survives_a_server_crash(tmp_path: Path) -> None:
    from streaming.evaluation import wer

    ARTIFACTS.mkdir(exist_ok=True)
    clips = {c.id: c for c in english_clips()}
    order = ["jfk", "lib_left", "librivox_0870", "librivox_0890", "goforward"]
    wav = tmp_path / "speech.wav"
    spans = concatenated_wav(wav, [clips[i] for i in order], rate_hz=16_000)
    srt = tmp_path / "out.srt"
    server = ServerProcess(free_port())
    server.start()
    client = None
    try:
        client = subprocess.Popen([PYTHON, "-m", "client.mic", "--input", str(wav), "--json", "--srt", str(srt),
                                   "--url", f"ws://127.0.0.1:{server.port}/v1/stream", "--stop-timeout-s", "60"],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        killed = threading.Event()

        def read_stdout() -> None:
            assert client is not None and client.stdout is not None
            for line in client.stdout:
                lines.append(line)
                event = json.loads(line)
                # Crash in the middle of JFK's long third utterance (5.1-11 s).
                if event["type"] == "speech_start" and event["utterance_id"] == 2 and not killed.is_set():
                    server.kill()
                    killed.set()

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        assert killed.wait(60), "the client never reached the third utterance"
        server.start()  # same port: the client must find it again
        client.wait(timeout=180)
        reader.join(10)
        stderr = client.stderr.read() if client.stderr else ""
    finally:
        if client and client.poll() is None:
            client.kill()
        server.kill()
    assert client.returncode == 0, stderr
    assert "connection lost" in stderr and "reconnected" in stderr, stderr

    cues = parse_subtitles(srt.read_text(), "srt")
    assert_valid_cues(cues)
    per_clip = hypotheses_by_clip(cues, spans)
    record("mic-client-crash.txt", stderr + "\n" + json.dumps(per_clip, indent=1) + "\n")
    # Every clip after the crash is transcribed; with the replay, so is the utterance that was cut.
    after = [s for s in spans if s.clip_id != "jfk"]
    assert all(per_clip[s.clip_id] for s in after), per_clip
    assert wer([s.text for s in after], [per_clip[s.clip_id] for s in after]) <= 0.15, per_clip
    assert wer([s.text for s in spans], [per_clip[s.clip_id] for s in spans]) <= 0.15, per_clip
    assert os.path.getsize(srt) > 0
