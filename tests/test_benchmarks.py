"""The benchmarks package: the ramp's pure rules in tables, its figures on made-up sessions, a real smoke run.

And the rule of the layout: ``streaming`` (the product) never imports ``benchmarks``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import build_parser
from benchmarks.loadgen import StreamResult, UtteranceTiming
from benchmarks.ramp import check_args, info_url
from benchmarks.ramp_plan import (
    ClipFacts,
    Final,
    Piece,
    StreamPlan,
    audio_sent_s,
    crossing,
    held_at_target,
    hypotheses_per_piece,
    in_window,
    plan_stream,
    render_stream,
)
from benchmarks.ramp_runner import Ramp, RampSettings, Session, _refusal
from benchmarks.report import latency_summary, percentile
from benchmarks.resources import Snapshot, usage

ROOT = Path(__file__).resolve().parents[1]
SR = 16_000


# ---------------------------------------------------------------------------- joining clips into streams

CLIPS = [ClipFacts("a", 2 * SR, "alpha"), ClipFacts("b", 3 * SR, "bravo"), ClipFacts("c", 1 * SR, "charlie")]


@pytest.mark.parametrize("first, length_s, ids", [
    (0, 0.1, ["a"]),                 # at least one clip, however short the wish
    (0, 2.0, ["a"]),                 # the first clip alone reaches 2 s of audio (after 0.5 s lead)
    (0, 4.0, ["a", "b"]),
    (1, 4.0, ["b", "c"]),
    (2, 9.0, ["c", "a", "b", "c"]),  # wraps round, repeating clips when the stream is longer than all
    (5, 3.0, ["c", "a"]),            # first is taken modulo the clip count
])
def test_plan_stream_takes_clips_in_order_until_long_enough(first, length_s, ids):
    plan = plan_stream(CLIPS, first, length_s, lead_s=0.5, trail_s=1.5, gap_range_s=(1.0, 1.0))
    assert [p.clip_id for p in plan.pieces] == ids
    assert plan.pieces[0].start_s == 0.5 and plan.pieces[-1].end_s >= length_s
    assert plan.duration_s == pytest.approx(plan.pieces[-1].end_s + 1.5)
    by_id = {c.clip_id: c for c in CLIPS}
    for piece in plan.pieces:
        assert piece.end_s - piece.start_s == pytest.approx(by_id[piece.clip_id].samples / SR)
    for before, after in zip(plan.pieces, plan.pieces[1:]):
        assert after.start_s - before.end_s == pytest.approx(1.0)
    assert plan.reference == " ".join(by_id[i].text for i in ids)


def test_plan_stream_gaps_are_natural_pauses():
    plan = plan_stream(CLIPS, 0, 120.0, seed=5)  # the default gap range, 0.8-2 s
    gaps = [b.start_s - a.end_s for a, b in zip(plan.pieces, plan.pieces[1:])]
    assert len(gaps) > 20 and all(0.8 - 1 / SR <= g <= 2.0 + 1 / SR for g in gaps)
    assert max(gaps) - min(gaps) > 0.5  # drawn, not one fixed pause


def test_plan_stream_is_seeded_and_refuses_bad_input():
    one = plan_stream(CLIPS, 0, 20.0, seed=1)
    assert plan_stream(CLIPS, 0, 20.0, seed=1) == one
    assert plan_stream(CLIPS, 0, 20.0, seed=2) != one
    with pytest.raises(ValueError, match="no clips"):
        plan_stream([], 0, 10.0)
    with pytest.raises(ValueError, match="gap range"):
        plan_stream(CLIPS, 0, 10.0, gap_range_s=(2.0, 1.0))


def test_render_stream_puts_each_clip_at_its_place_in_silence():
    audio = {c.clip_id: np.full(c.samples, i + 1, np.float32) for i, c in enumerate(CLIPS)}
    plan = plan_stream(CLIPS, 0, 5.0, seed=0)
    out = render_stream(plan, audio)
    assert out.dtype == np.float32 and out.size == plan.samples
    covered = np.zeros(out.size, bool)
    for piece in plan.pieces:
        a, b = round(piece.start_s * SR), round(piece.end_s * SR)
        assert np.all(out[a:b] == audio[piece.clip_id][0])
        covered[a:b] = True
    assert np.all(out[~covered] == 0)


# ---------------------------------------------------------------------------- finals to clips, windows

PIECES = (Piece("a", "alpha", 0.5, 2.5), Piece("b", "bravo", 4.0, 7.0), Piece("c", "charlie", 8.0, 9.0))


@pytest.mark.parametrize("finals, expected", [
    ([Final(0.6, 2.4, "alpha")], [["alpha"], [], []]),
    ([Final(0.5, 1.5, "al"), Final(1.6, 2.5, "pha")], [["al", "pha"], [], []]),  # one clip, two utterances
    ([Final(2.0, 6.0, "alpha bravo")], [[], ["alpha bravo"], []]),               # most overlap wins
    ([Final(3.0, 3.4, "uh")], [["uh"], [], []]),                                 # in a gap: nearest clip
    ([Final(7.6, 7.8, "um")], [[], [], ["um"]]),
    ([Final(8.0, 9.0, "")], [[], [], []]),                                       # empty finals say nothing
    ([Final(8.1, 8.9, "charlie"), Final(0.6, 2.4, "alpha")], [["alpha"], [], ["charlie"]]),
])
def test_hypotheses_per_piece(finals, expected):
    assert hypotheses_per_piece(PIECES, finals) == expected


@pytest.mark.parametrize("started, duration, speed, a, b, sent", [
    (10.0, 60.0, 1.0, 0.0, 100.0, 60.0),   # the whole stream
    (10.0, 60.0, 1.0, 20.0, 30.0, 10.0),
    (10.0, 60.0, 2.0, 20.0, 30.0, 20.0),   # twice the pace: twice the audio
    (10.0, 60.0, 1.0, 0.0, 10.0, 0.0),     # before it started
    (10.0, 60.0, 1.0, 65.0, 80.0, 5.0),    # its last 5 s
])
def test_audio_sent_s(started, duration, speed, a, b, sent):
    assert audio_sent_s(started, duration, speed, a, b) == pytest.approx(sent)


def test_audio_sent_s_needs_a_pace():
    with pytest.raises(ValueError):
        audio_sent_s(0.0, 10.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("at, inside", [(9.99, False), (10.0, True), (15.0, True), (19.999, True), (20.0, False)])
def test_windows_are_half_open(at, inside):
    assert in_window(at, 10.0, 20.0) is inside


# ---------------------------------------------------------------------------- percentiles and stopping

@pytest.mark.parametrize("values, q, expected", [
    ([], 95, None), ([1.0], 95, 1.0), ([1.0, 2.0], 50, 1.5),
    ([float(i) for i in range(1, 101)], 95, 95.05), ([0.1234567], 50, 0.123),
])
def test_percentile(values, q, expected):
    assert percentile(values, q) == expected


def test_latency_summary_shape():
    assert latency_summary([]) == {"p50": None, "p95": None, "n": 0}
    assert latency_summary([0.2, 0.4]) == {"p50": 0.3, "p95": 0.39, "n": 2}


def test_a_failed_stream_ends_the_ramp_after_refusals():
    assert crossing(0.5, 0.8, 0, 1.5, failed=1) == "failed"
    assert crossing(0.5, 0.8, 2, 1.5, failed=1) == "refused"
    assert crossing(3.0, 3.0, 0, 1.5, failed=1) == "failed"


@pytest.mark.parametrize("first, final, refused, ended, without, reason", [
    (0.5, 0.8, 0, 10, 0, None),
    (0.5, 1.5, 0, 10, 0, None),                 # at the target still holds
    (0.5, 1.51, 0, 10, 0, "final_p95"),
    (1.6, 0.8, 0, 10, 0, "first_partial_p95"),
    (0.5, 0.8, 1, 10, 0, "refused"),            # a refusal ends the ramp whatever the latency
    (2.0, 2.0, 3, 10, 0, "refused"),
    (None, None, 0, 0, 0, None),                # nothing measured: no verdict
    (None, None, 0, 10, 6, "finals_missing"),   # a stalled server sends no finals at all
    (0.5, 0.8, 0, 10, 5, None),                 # half without a final is not yet a stall
])
def test_crossing(first, final, refused, ended, without, reason):
    assert crossing(first, final, refused, 1.5, clips_ended=ended, clips_without_final=without) == reason


@pytest.mark.parametrize("levels, held", [
    ([], 0),
    ([(1, None), (2, None), (3, None)], 3),            # never crossed: the last level
    ([(1, None), (2, None), (3, "final_p95")], 2),
    ([(1, "first_partial_p95")], 0),
    ([(2, None), (4, None), (5, "refused"), (8, None)], 4),  # nothing after the first crossing counts
    ([(4, None), (3, None)], 4),                       # held streams may dip: the most held
])
def test_held_at_target(levels, held):
    assert held_at_target(levels) == held


# ---------------------------------------------------------------------------- refusals and levels

def _result(events, started_at=None, close_code=1000, reason=None):
    result = StreamResult(events=[(0.0, e) for e in events], close_code=close_code, started_at_s=started_at)
    result.disconnect_reason = reason
    return result


@pytest.mark.parametrize("result, expected", [
    (_result([{"type": "error", "code": "overloaded", "fatal": True, "retry_after_s": 4.5}], close_code=1013),
     ("overloaded", 4.5)),
    (_result([{"type": "error", "code": "too_many_sessions", "fatal": True}], close_code=1013),
     ("too_many_sessions", None)),
    (_result([], close_code=1013, reason="received 1013 (try again later) overloaded"), ("overloaded", None)),
    (_result([], close_code=1013), ("close_1013", None)),
    (_result([], started_at=1.0, close_code=1013), (None, None)),  # admitted, then closed: not a refusal
    (_result([{"type": "error", "code": "internal_error", "fatal": True}], close_code=1011), (None, None)),
    (_result([{"type": "end"}]), (None, None)),
])
def test_refusals_are_told_from_failures(result, expected):
    assert _refusal(result) == expected


def _session(slot, started_at, utterances, finals=(), outcome="running", ended_at=None, code=None, speed=1.0):
    """A made-up session: one piece per (start_s, end_s, text) in ``finals``; utterances as (end_s, first, final)."""
    pieces = tuple(Piece(f"c{i}", text, s, e) for i, (s, e, text) in enumerate(finals))
    plan = StreamPlan(pieces, int(30 * SR), SR)
    events = [{"type": "final", "utterance_id": i, "start_s": s, "end_s": e, "text": text}
              for i, (s, e, text) in enumerate(finals)]
    result = _result(events, started_at=started_at)
    for i, (end_s, first_s, final_s) in enumerate(utterances):
        result.utterances[i] = UtteranceTiming(i, end_s - 1, first_s, end_s, final_s, "x")
    return Session(slot, plan, result, started_at, outcome=outcome, ended_at_s=ended_at, code=code)


def _ramp(sessions, speed=1.0):
    ramp = Ramp(RampSettings(url="ws://unused", speed=speed), [ClipFacts("c0", SR, "x")], {}, lambda: None)
    ramp.sessions, ramp.t0_s = sessions, 0.0
    return ramp


def test_utterances_count_for_the_level_during_which_their_speech_ended():
    # started at wall 100: an utterance ending at stream 5 s ended at wall 105 (105 at speed 1, 102.5 at 2).
    sessions = [_session(0, 100.0, [(5.0, 0.3, 0.5), (15.0, 0.4, 0.6), (25.0, 0.9, 2.5)]),
                _session(1, 110.0, [(1.0, 0.2, 0.7), (12.0, 1.0, 1.2)])]
    first, final, owed = _ramp(sessions)._latencies(110.0, 120.0, 125.0)
    assert sorted(final) == [0.6, 0.7] and sorted(first) == [0.2, 0.4] and owed == 0
    first, final, _ = _ramp(sessions)._latencies(120.0, 130.0, 135.0)
    assert sorted(final) == [1.2, 2.5]
    first, final, _ = _ramp(sessions, speed=2.0)._latencies(100.0, 105.0, 110.0)
    assert sorted(final) == [0.5]  # stream 5 s -> wall 102.5; stream 15 s -> 107.5, outside


def test_an_owed_final_counts_with_the_time_waited():
    session = _session(0, 100.0, [])
    session.result.events.append((0.0, {"type": "speech_end", "utterance_id": 7, "end_s": 3.0}))
    first, final, owed = _ramp([session])._latencies(100.0, 110.0, 112.0)
    assert owed == 1 and final == [pytest.approx(9.0)]  # speech ended at wall 103, still nothing at 112


def test_transcripts_and_outcomes_of_a_window():
    admitted = _session(0, 100.0, [], finals=[(1.0, 3.0, "alpha"), (5.0, 8.0, "bravo"), (20.0, 22.0, "late")])
    refused = _session(1, 104.0, [], outcome="refused", ended_at=104.5, code="overloaded")
    refused.retry_after_s = 3.0
    failed = _session(2, 104.0, [], outcome="failed", ended_at=130.0, code="close_1006")
    for s in (refused, failed):
        s.result.started_at_s = None
    ramp = _ramp([admitted, refused, failed])
    assert ramp._transcripts(100.0, 110.0) == (["alpha", "bravo"], ["alpha", "bravo"])
    outcomes = ramp._outcomes(100.0, 120.0)
    assert outcomes["refused"] == 1 and outcomes["refused_codes"] == {"overloaded": 1}
    assert outcomes["retry_after_s_max"] == 3.0 and outcomes["failed"] == 0  # the failure came later


def test_a_final_after_the_grace_counts_in_the_level_wer_at_the_end():
    session = _session(0, 100.0, [], finals=[(1.0, 3.0, "alpha"), (5.0, 8.0, "bravo")])
    ramp = _ramp([session])
    ramp.windows = [(100.0, 110.0)]
    levels = [{"wer": 1.0, "clips_without_final": 1}]  # as measured, before bravo's final came
    ramp._rescore(levels)
    assert levels[0]["wer"] == 0.0 and levels[0]["clips_without_final"] == 0 and levels[0]["clips_ended"] == 2


# ---------------------------------------------------------------------------- command line, URLs, CPU

@pytest.mark.parametrize("url, expected, headers", [
    ("ws://127.0.0.1:8765/v1/stream", "http://127.0.0.1:8765/v1/info", {}),
    ("wss://asr.example.com/v1/stream?token=abc", "https://asr.example.com/v1/info",
     {"Authorization": "Bearer abc"}),
    ("ws://lb:8080/v1/stream?language=en", "http://lb:8080/v1/info", {}),
])
def test_info_url(url, expected, headers):
    assert info_url(url) == (expected, headers)


@pytest.mark.parametrize("argv, message", [
    (["--speed", "0"], "speed"), (["--start-streams", "0"], "start-streams"),
    (["--start-streams", "4", "--max-streams", "2"], "max-streams"),
    (["--stream-s", "90", "60"], "stream-s"), (["--stream-s", "1", "2", "3"], "stream-s"),
    (["--level-s", "0"], "level-s"), (["--step-streams", "0"], "step-streams"),
])
def test_bad_ramp_options_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        check_args(build_parser().parse_args(["ramp", *argv]))


def test_a_bad_ramp_option_is_a_clear_error_before_any_model_loads():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "ramp", "--speed", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "error: --speed must be > 0" in out.stderr
    assert "model" not in out.stderr  # refused before loading one


def test_usage_from_two_snapshots():
    a = Snapshot(10.0, 5.0, 1000, 4000, 100 * 2**20)
    b = Snapshot(12.0, 8.0, 1600, 4800, 300 * 2**20)
    assert usage(a, b) == {"cpu_process_percent": 150.0, "cpu_machine_percent": 75.0, "rss_mb": 300.0}
    assert usage(a, Snapshot(12.0, 5.0, None, None, None)) == {
        "cpu_process_percent": 0.0, "cpu_machine_percent": None, "rss_mb": None}


def test_the_command_lines():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and all(name in out.stdout for name in ("bench", "ramp", "qwen3"))
    serve = subprocess.run([sys.executable, "-m", "streaming", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert serve.returncode == 0 and "bench" not in serve.stdout


# ---------------------------------------------------------------------------- the product never imports them

def test_streaming_does_not_import_benchmarks():
    code = ("import sys, streaming, streaming.server, streaming.cli, streaming.loading, streaming.models; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'); print(bad); "
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for path in (ROOT / "streaming").rglob("*.py"):  # nor anywhere else in the package, lazily or not
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "benchmarks" for n in names), f"{path} imports benchmarks"


# ---------------------------------------------------------------------------- a real ramp, tiny

@pytest.mark.slow
def test_a_tiny_ramp_over_real_sockets_writes_every_figure(tmp_path):
    """Two short levels with the embedded model; capacity 1, so the second level's extra stream is refused."""
    argv = ["ramp", "--max-streams", "2", "--level-s", "6", "--grace-s", "4", "--stream-s", "8", "12",
            "--speed", "2", "--target-s", "60", "--out", str(tmp_path), "--log-level", "WARNING",
            "--set", "server.capacity_streams=1", "--set", "server.load_admission=false"]
    out = subprocess.run([sys.executable, "-m", "benchmarks", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "ramp-whisper-tiny.en.json").read_text())
    assert {"model", "url", "target_s", "levels", "streams_held_at_target", "stopped_because", "wer",
            "cpu_count", "stream_s", "speed"} <= set(report)
    first, second = report["levels"]
    fields = {"streams_offered", "streams_held", "refused", "refused_codes", "retry_after_s_max", "failed",
              "first_partial_latency_s", "final_latency_s", "utterances", "finals_missing", "clips_ended",
              "clips_without_final", "wer", "rtf", "engine_busy_fraction", "cpu_process_percent",
              "cpu_machine_percent", "rss_mb", "audio_s", "crossed", "window_s"}
    assert fields <= set(first) and fields <= set(second)
    assert first["streams_offered"] == 1 and first["streams_held"] == 1 and first["crossed"] is None
    assert first["utterances"] >= 1 and first["final_latency_s"]["p95"] is not None
    assert first["rtf"] is not None and first["rtf"] > 0 and first["rss_mb"] > 100
    assert first["wer"] is not None and first["wer"] < 0.5  # real speech through the real model
    assert second["streams_offered"] == 2 and second["refused"] >= 1 and second["failed"] == 0
    assert set(second["refused_codes"]) == {"overloaded"} and second["crossed"] == "refused"
    assert report["streams_held_at_target"] == 1 and report["stopped_because"] == "refused"
    png = (tmp_path / "ramp-whisper-tiny.en.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "[  1 offered]" in out.stdout and "streams held at the target" in out.stdout
