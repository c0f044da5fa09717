"""The turn-taking benchmark: its cases (where the pause goes, what it sounds like), its scores on scripted
timelines, its report and plot, and one small real run over sockets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import build_parser
from benchmarks.turn_set import (
    FALLBACK_NOISE_DBFS,
    LEAD_S,
    PAUSE_RANGE_S,
    SAMPLE_RATE_HZ,
    TRAIL_S,
    TimedWord,
    TurnCase,
    background,
    background_dbfs,
    cases_of_clip,
    choose_cut,
    complete_case,
    frame_levels_dbfs,
    heard_end_s,
    hesitation_case,
    spread,
)
from benchmarks.turns import (
    MODES,
    WORDS_FILE,
    CaseScore,
    compact_timeline,
    load_words,
    merge_runs,
    mode_fields,
    progress_row,
    score_case,
    summarize,
    turn_cases,
    wer_gate,
    write_report,
)
from streaming.evaluation import dev_clips
from streaming.vad import frames_dbfs

SR = SAMPLE_RATE_HZ


def level(audio: np.ndarray) -> float:
    return float(frames_dbfs(audio[None, :])[0])


def spoken(layout: list[tuple[float, float]], total_s: float, *, noise_dbfs: float = -60.0,
           loud: list[tuple[float, float]] = ()) -> tuple[np.ndarray, list[TimedWord]]:
    """A made-up clip: a 300 Hz tone at -20 dBFS over each (start, end) word span, faint noise elsewhere."""
    rng = np.random.default_rng(7)
    audio = rng.normal(0, 10 ** (noise_dbfs / 20), int(total_s * SR)).astype(np.float32)
    t = np.arange(audio.size) / SR
    for a, b in [*layout, *loud]:
        span = (t >= a) & (t < b)
        audio[span] += (0.1 * np.sin(2 * np.pi * 300 * t[span])).astype(np.float32)
    return audio, [TimedWord(f"w{i}", a, b) for i, (a, b) in enumerate(layout)]


def words_at(starts_s: list[float], word_s: float = 0.3) -> list[tuple[float, float]]:
    return [(s, s + word_s) for s in starts_s]


# ten words of 0.3 s from 0.2 s on, 0.05 s apart: boundaries 35-65 % through are after words 3, 4, 5
EVEN = [0.2 + 0.35 * i for i in range(10)]


def shifted(starts: list[float], after: int, by_s: float) -> list[float]:
    """``starts`` with every word after index ``after`` moved later by ``by_s`` (a wider gap there)."""
    return [s + (by_s if i > after else 0.0) for i, s in enumerate(starts)]


# ---------------------------------------------------------------------------- where the pause goes

@pytest.mark.parametrize("layout, loud, expected", [
    (words_at(shifted(EVEN, 4, 0.2)), [], 4),          # the widest gap in the middle
    (words_at(shifted(EVEN, 5, 0.1)), [], 5),
    (words_at(shifted(EVEN, 1, 0.5)), [], 3),          # a wider gap too early does not count
    (words_at(EVEN), [], 4),                           # all alike: the one nearest the middle
    (words_at(shifted(EVEN, 4, 0.2)), [(1.9, 2.15)], 5),   # the wide gap is not silent (the word times lie)
    (words_at(EVEN[:5]), [], None),                    # five words: no middle to hesitate in
    (words_at(EVEN), [(1.2, 2.7)], None),              # no quiet boundary mid-sentence
])
def test_the_pause_goes_at_the_widest_quiet_word_boundary_mid_sentence(layout, loud, expected):
    audio, words = spoken(layout, layout[-1][1] + 0.5, loud=loud)
    chosen = choose_cut(audio, words)
    assert (None if chosen is None else chosen[0]) == expected
    if chosen is not None:
        i, cut = chosen
        assert words[i].end_s - 0.06 <= cut / SR <= words[i + 1].start_s + 0.06
        assert level(audio[cut - 80:cut + 80]) < -50  # in the silence, not in a word


def test_a_wide_silent_gap_is_cut_at_its_middle():
    audio, words = spoken(words_at(shifted(EVEN, 4, 0.3)), 5.0)
    i, cut = choose_cut(audio, words)
    assert i == 4 and cut / SR == pytest.approx((words[4].end_s + words[5].start_s) / 2, abs=1e-3)


def test_a_hesitation_case_inserts_a_background_pause_and_keeps_the_speech():
    audio, words = spoken(words_at(shifted(EVEN, 4, 0.2)), 4.5)
    case = hesitation_case("clip", "ref", audio, words, seed=3)
    a, b = case.pause_s
    assert PAUSE_RANGE_S[0] <= b - a <= PAUSE_RANGE_S[1] + 1e-3
    _, cut = choose_cut(audio, words)
    lead, trail = int(LEAD_S * SR), int(TRAIL_S * SR)
    pause = case.audio.size - lead - audio.size - trail
    assert a == pytest.approx(LEAD_S + cut / SR, abs=1e-3) and b - a == pytest.approx(pause / SR, abs=1e-3)
    # the speech before and after the pause is the clip's, sample for sample (away from the 5 ms fades)
    np.testing.assert_array_equal(case.audio[lead + 80:lead + cut - 80], audio[80:cut - 80])
    np.testing.assert_array_equal(case.audio[lead + cut + pause + 80:lead + cut + pause + 16_000],
                                  audio[cut + 80:cut + 16_000])
    gap = case.audio[int(a * SR):int(b * SR)]
    assert np.all(gap != 0) and -66 < level(gap) < -54  # the clip's own background (-60 dBFS), not zeros
    assert case.speech_start_s == pytest.approx(LEAD_S + words[0].start_s, abs=1e-3)
    assert case.speech_end_s == pytest.approx(LEAD_S + words[-1].end_s + (b - a), abs=1e-3)
    s0, s1 = case.silence_s
    assert s0 == pytest.approx(LEAD_S + words[4].end_s, abs=1e-3) and s0 <= a < b <= s1
    assert s1 == pytest.approx(LEAD_S + words[5].start_s + (b - a), abs=1e-3)
    tail = case.audio[-int(TRAIL_S * SR):]
    assert np.all(tail != 0) and -66 < level(tail) < -54


def test_a_complete_case_is_the_clip_between_background():
    audio, words = spoken(words_at(EVEN), 4.0)
    case = complete_case("clip", "ref", audio, words, seed=0)
    assert case.kind == "complete" and case.pause_s is None and case.silence_s is None
    assert case.audio.size == int(LEAD_S * SR) + audio.size + int(TRAIL_S * SR)
    lead = int(LEAD_S * SR)
    np.testing.assert_array_equal(case.audio[lead + 80:lead + audio.size - 80], audio[80:-80])
    assert case.speech_end_s == pytest.approx(LEAD_S + words[-1].end_s, abs=1e-3)
    assert level(case.audio[:lead - 80]) > -66


def test_cases_are_seeded_per_clip():
    audio, words = spoken(words_at(shifted(EVEN, 4, 0.2)), 4.5)
    one = cases_of_clip("clip", "ref", audio, words, seed=0)
    again = cases_of_clip("clip", "ref", audio, words, seed=0)
    assert [c.case_id for c in one] == ["clip/complete", "clip/hesitation"]
    assert one == again and all(np.array_equal(x.audio, y.audio) for x, y in zip(one, again))
    pauses = {round(hesitation_case(f"clip{i}", "r", audio, words, seed=0).pause_s[1]
                    - hesitation_case(f"clip{i}", "r", audio, words, seed=0).pause_s[0], 3) for i in range(8)}
    assert len(pauses) > 4  # drawn per clip
    other = cases_of_clip("clip", "ref", audio, words, seed=1)
    assert not np.array_equal(one[1].audio, other[1].audio)
    assert cases_of_clip("short", "ref", *spoken(words_at(EVEN[:4]), 2.0), seed=0) == []


def test_background_of_a_clip_with_digital_silence_is_faint_noise_not_zero():
    rng = np.random.default_rng(0)
    silent = np.zeros(SR, np.float32)
    fill = background(silent, 8000, rng)
    assert fill.size == 8000 and np.all(fill != 0) and level(fill) == pytest.approx(FALLBACK_NOISE_DBFS, abs=1)
    padded, _ = spoken(words_at(EVEN), 4.0, noise_dbfs=-50)
    padded = np.concatenate([np.zeros(SR, np.float32), padded])  # zero padding is not the background
    assert background_dbfs(padded) > -60 and level(background(padded, 8000, rng)) > -60


def test_background_leaves_out_the_words_and_anything_loud():
    """A clip trimmed tight to its speech: its quietest frames are word ends and a breath (-30 dBFS,
    outside the word times), not background; the fill is faint noise instead. With quiet room tone
    between the words, the fill is that room tone."""
    rng = np.random.default_rng(0)
    layout = words_at(EVEN)
    tight, words = spoken(layout, 3.7, noise_dbfs=-95, loud=[(3.6, 3.7)])
    fill = background(tight, 8000, rng, words)
    assert level(fill) == pytest.approx(FALLBACK_NOISE_DBFS, abs=1)
    roomy, words = spoken(words_at(shifted(EVEN, 4, 1.0)), 5.0, noise_dbfs=-60)
    assert level(background(roomy, 8000, rng, words)) == pytest.approx(-60, abs=2)


@pytest.mark.parametrize("word_end_s, sound_end_s, expected_s", [
    (2.0, 2.2, 2.2),    # the word times end the word early: its sound decides
    (2.0, 2.0, 2.0),
    (2.2, 2.0, 2.2),    # they end it late: the word times (never earlier than they say)
    (2.0, 2.6, 2.4),    # sound far past them is looked for only END_SEARCH_S on
])
def test_the_end_of_speech_is_where_the_last_word_stops_sounding(word_end_s, sound_end_s, expected_s):
    audio, _ = spoken([(0.5, 1.0), (1.6, sound_end_s)], 3.5, noise_dbfs=-65)
    words = [TimedWord("a", 0.5, 1.0), TimedWord("b", 1.6, word_end_s)]
    assert heard_end_s(audio, words) == pytest.approx(expected_s, abs=0.011)


def test_spread():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 0) == [0, 1, 2, 3] and spread(list(range(4)), 9) == [0, 1, 2, 3]


def test_the_cached_word_times_give_cases_of_most_english_clips():
    """The committed cache and the real clips: most clips qualify; every pause sits between two words."""
    clips = [c for c in dev_clips(full=True) if c.language == "en"]
    words = load_words(WORDS_FILE)
    assert {c.id for c in clips} <= set(words)
    cases = turn_cases(clips, words, 0, seed=0)
    hesitation = [c for c in cases if c.kind == "hesitation"]
    assert len(hesitation) >= 50 and len(cases) == 2 * len(hesitation)
    for case in hesitation:
        a, b = case.pause_s
        assert PAUSE_RANGE_S[0] <= b - a <= PAUSE_RANGE_S[1] + 1e-3
        assert case.speech_start_s < a < b < case.speech_end_s
        gap = case.audio[int(a * SR):int(b * SR)]
        assert np.all(frame_levels_dbfs(gap, 480) > -100)  # never digital zero
    again = turn_cases(clips[:10], words, 0, seed=0)
    assert [c.pause_s for c in again] == [c.pause_s for c in cases if c.clip_id in {x.id for x in clips[:10]}]


# ---------------------------------------------------------------------------- scoring scripted timelines

HES = TurnCase("c/hesitation", "c", "hesitation", "ref", np.zeros(SR * 11, np.float32), 0.5, 8.0,
               (4.1, 4.8), (4.0, 4.9))
COMPLETE = TurnCase("c/complete", "c", "complete", "ref", np.zeros(SR * 11, np.float32), 0.5, 8.0)


def ev(arrival_s: float, kind: str, uid: int | None = 0, **fields) -> tuple[float, dict]:
    return arrival_s, {"type": kind, "seq": 0, **({"utterance_id": uid} if uid is not None else {}), **fields}


def utterance(uid: int, start_s: float, end_s: float, end_at_s: float, final_at_s: float, text: str = "words",
              reason: str = "endpoint") -> list[tuple[float, dict]]:
    return [ev(start_s + 0.2, "speech_start", uid, start_s=start_s),
            ev(start_s + 0.6, "partial", uid, text="wor", stable_text="", start_s=start_s, end_s=start_s + 0.5),
            ev(end_at_s, "speech_end", uid, end_s=end_s, reason=reason),
            ev(final_at_s, "final", uid, text=text, language="en", start_s=start_s, end_s=end_s, reason=reason)]


ONE = utterance(0, 0.4, 8.0, 8.7, 9.0)
SPLIT_AT_PAUSE = utterance(0, 0.4, 4.05, 4.5, 4.8, "first") + utterance(1, 4.8, 8.0, 8.8, 9.2, "second")
SPLIT_EARLY = utterance(0, 0.4, 2.0, 2.5, 2.7, "first") + utterance(1, 2.3, 8.0, 8.8, 9.1, "second")
SPLIT_BEFORE_PAUSE_EDGE = utterance(0, 0.4, 3.8, 4.3, 4.5, "first") + utterance(1, 4.8, 8.0, 8.8, 9.2)
EAGER_TAKEN_BACK = [*ONE[:2], ev(4.4, "eager_end_of_turn", 0, text="first", start_s=0.4, end_s=4.0),
                    ev(5.0, "turn_resumed", 0, at_s=4.9), *ONE[2:]]
EAGER_STANDING = [*ONE[:2], ev(8.3, "eager_end_of_turn", 0, text="words", start_s=0.4, end_s=8.0), *ONE[2:]]
LENGTH_CUT = utterance(0, 0.4, 3.0, 3.1, 3.5, "a", reason="max_length") + utterance(1, 3.0, 8.0, 8.8, 9.1)
NOISE_AFTER = ONE + utterance(1, 9.0, 9.4, 9.9, 10.0, "")
NO_REASON = [(t, {k: v for k, v in e.items() if k != "reason"}) for t, e in ONE]  # a server before turn-taking


@pytest.mark.parametrize("case, events, false_end, splits, final, speech_end, eager, reason", [
    (HES, ONE, False, 0, 1.0, 0.7, None, "endpoint"),
    (HES, SPLIT_AT_PAUSE, True, 1, 1.2, 0.8, None, "endpoint"),
    (HES, SPLIT_EARLY, False, 1, 1.1, 0.8, None, "endpoint"),      # split, but not at the pause
    (HES, SPLIT_BEFORE_PAUSE_EDGE, True, 1, 1.2, 0.8, None, "endpoint"),  # VAD ends a little before the words
    (HES, EAGER_TAKEN_BACK, False, 0, 1.0, 0.7, None, "endpoint"),  # a retracted eager end is no latency
    (HES, EAGER_STANDING, False, 0, 1.0, 0.7, 0.3, "endpoint"),
    (HES, LENGTH_CUT, False, 0, 1.1, 0.8, None, "endpoint"),       # a length cut is not a turn decision
    (HES, NOISE_AFTER, False, 0, 1.0, 0.7, None, "endpoint"),      # an empty utterance after the end
    (COMPLETE, ONE, None, 0, 1.0, 0.7, None, "endpoint"),
    (COMPLETE, SPLIT_AT_PAUSE, None, 1, 1.2, 0.8, None, "endpoint"),
    (COMPLETE, NO_REASON, None, 0, 1.0, 0.7, None, None),
])
def test_score_case(case, events, false_end, splits, final, speech_end, eager, reason):
    score = score_case(case, events)
    assert score.false_end is false_end and score.splits == splits and score.end_reason == reason
    assert score.final_latency_s == pytest.approx(final) and score.speech_end_latency_s == pytest.approx(speech_end)
    assert score.eager_latency_s == (None if eager is None else pytest.approx(eager))
    assert not score.missing_final


def test_eager_events_are_counted_and_matched_to_the_final():
    taken_back, standing = score_case(HES, EAGER_TAKEN_BACK), score_case(HES, EAGER_STANDING)
    assert (taken_back.eager_events, taken_back.turn_resumed, taken_back.eager_matches_final) == (1, 1, None)
    assert (standing.eager_events, standing.turn_resumed, standing.eager_matches_final) == (1, 0, True)
    assert score_case(HES, SPLIT_AT_PAUSE).text == "first second"


def test_a_case_without_a_final_is_missing_it():
    lost = score_case(HES, ONE[:3], error="closed 1011: boom")
    assert lost.missing_final and lost.final_latency_s is None and lost.error == "closed 1011: boom"
    assert score_case(COMPLETE, []).missing_final
    assert score_case(COMPLETE, utterance(0, 0.4, 8.0, 8.7, 9.0, text="")).missing_final  # nothing was heard


def test_the_latency_clock_follows_the_pace():
    assert score_case(COMPLETE, ONE, speed=2.0).final_latency_s == pytest.approx(9.0 - 4.0)


def test_compact_timeline_keeps_times_reasons_and_texts():
    rows = compact_timeline(EAGER_STANDING + [ev(9.5, "error", None, code="x", message="y", fatal=True)])
    assert rows[0] == [0.6, "speech_start", 0, 0.4]
    assert rows[1] == [1.0, "partial", 0, 0.4, 0.9]
    assert rows[2] == [8.3, "eager_end_of_turn", 0, 0.4, 8.0, "words"]
    assert rows[3] == [8.7, "speech_end", 0, 8.0, "endpoint"]
    assert rows[4] == [9.0, "final", 0, 0.4, 8.0, "endpoint", "words"]
    assert rows[5] == [9.5, "error", None, "x: y"]


# ---------------------------------------------------------------------------- runs, report, plot

def scored(case: TurnCase, events, text: str | None = None) -> CaseScore:
    score = score_case(case, events)
    if text is not None:
        score.text = text
    return score


def test_summarize_one_run():
    cases = [COMPLETE, HES, COMPLETE, HES]
    scores = [scored(COMPLETE, ONE, "ref"), scored(HES, SPLIT_AT_PAUSE, "ref"), scored(COMPLETE, EAGER_STANDING, "ref"),
              score_case(HES, [], error="lost")]
    run = summarize("silence-200", 4, cases, scores, wall_s=12.34)
    assert run["mode"] == "silence-200" and run["streams"] == 4 and run["start_fields"] == MODES["silence-200"]
    assert run["cases"] == 4 and run["hesitation_cases"] == 2
    assert run["false_ends"] == 1 and run["false_end_rate"] == 0.5 and run["split_rate_complete"] == 0.0
    assert run["final_latency_s"]["n"] == 3 and run["final_latency_s"]["p50"] == pytest.approx(1.0)
    assert run["eager_latency_s"] == {"p50": 0.3, "p95": 0.3, "n": 1} and run["eager_events"] == 1
    assert run["eager_matches_final_rate"] == 1.0
    assert run["missing_finals"] == 1 and run["errors"] == 1 and run["end_reasons"] == {"endpoint": 3}
    assert set(run["final_latency_by_reason_s"]) == {"endpoint"}
    assert run["final_latency_by_reason_s"]["endpoint"] == run["final_latency_s"]
    assert run["wer_complete"] == 0.0 and run["wer_hesitation"] == 0.5 and run["wall_s"] == 12.3


def row(mode: str, streams: int, wer: float | None, false_end: float | None = 0.1) -> dict:
    lat = {"p50": 0.8, "p95": 1.4, "n": 10}
    return {"mode": mode, "streams": streams, "cases": 10, "false_end_rate": false_end, "split_rate_complete": 0.0,
            "final_latency_s": lat, "speech_end_latency_s": lat, "eager_latency_s": {"p50": None, "p95": None,
                                                                                     "n": 0},
            "eager_events": 0, "wer": wer, "missing_finals": 0}


def test_wer_gate_compares_smart_modes_with_silence_600_at_the_same_streams():
    runs = [row("silence-600", 4, 0.070), row("smart-low", 4, 0.072), row("smart-high", 4, 0.0735),
            row("smart-auto", 1, 0.05), row("silence-200", 4, 0.2)]
    gate = wer_gate(runs)
    assert [(g["mode"], g["delta_points"], g["passed"]) for g in gate] == [("smart-low", 0.2, True),
                                                                          ("smart-high", 0.35, False)]


def test_merge_runs_replaces_only_the_runs_redone():
    old = [row("silence-600", 1, 0.1), row("smart-low", 1, 0.2)]
    new = [row("smart-low", 1, 0.3), row("smart-low", 4, 0.4)]
    merged = merge_runs(old, new)
    assert [(r["mode"], r["streams"], r["wer"]) for r in merged] == [("silence-600", 1, 0.1), ("smart-low", 1, 0.3),
                                                                     ("smart-low", 4, 0.4)]


def test_progress_row_lines_up_with_the_header():
    from benchmarks.turns import TABLE_HEADER

    line = progress_row(row("smart-medium", 4, 0.0712))
    assert line.split() == ["smart-medium", "4", "10", "10.0%", "0.0%", "0.80/1.40", "0.80/1.40", "-", "0", "7.1%",
                            "0"]
    assert len(line) == len(TABLE_HEADER)


@pytest.mark.parametrize("mode, info, fields, why", [
    ("silence-400", {}, {"turn_detection": "silence", "endpoint_silence_ms": 400}, None),
    ("silence-400", {"multilingual": True}, {"turn_detection": "silence", "endpoint_silence_ms": 400,
                                             "language": "en"}, None),
    ("smart-low", {"turn_detection": {"modes": ["silence", "manual"]}}, None, "no smart"),
    ("smart-low", {}, None, "no smart"),
    ("smart-low", {"turn_detection": {"modes": ["silence", "manual", "smart"], "eager_end_of_turn": True}},
     {"turn_detection": "smart", "turn_eagerness": "low", "eager_end_of_turn": True}, None),
    ("smart-high", {"turn_detection": {"modes": ["smart"], "eager_end_of_turn": False}},
     {"turn_detection": "smart", "turn_eagerness": "high", "eager_end_of_turn": False}, None),
])
def test_mode_fields_follow_what_the_server_offers(mode, info, fields, why):
    got, reason = mode_fields(mode, info)
    assert got == fields and (reason is None) == (why is None)
    if why:
        assert why in reason


def test_the_report_is_written_merged_and_plotted(tmp_path):
    runs = [row("silence-200", 1, 0.08, 0.6), row("silence-600", 1, 0.07, 0.1), row("smart-auto", 1, 0.071, 0.05),
            row("smart-auto", 4, 0.072, 0.06)]
    report = {"benchmark": "turns", "model": "whisper-tiny.en", "cases": 20, "hesitation_cases": 10,
              "runs": runs[:2], "cases_detail": {"silence-200@1": [{"case_id": "a"}]}, "skipped": {}}
    path = write_report(report, tmp_path)
    assert path == tmp_path / "turns-whisper-tiny.en.json"
    later = {**report, "runs": runs[2:], "cases_detail": {"smart-auto@1": []}}
    write_report(later, tmp_path)
    saved = json.loads(path.read_text())
    assert [(r["mode"], r["streams"]) for r in saved["runs"]] == [("silence-200", 1), ("silence-600", 1),
                                                                  ("smart-auto", 1), ("smart-auto", 4)]
    assert set(saved["cases_detail"]) == {"silence-200@1", "smart-auto@1"}
    assert [g["mode"] for g in saved["wer_gate"]] == ["smart-auto"]
    png = (tmp_path / "turns-whisper-tiny.en.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    wer_only = write_report({**report, "benchmark": "turns-wer"}, tmp_path, wer_only=True)
    assert wer_only.name == "turns-wer-whisper-tiny.en.json" and not wer_only.with_suffix(".png").exists()


def test_the_command_line_knows_turns():
    args = build_parser().parse_args(["turns", "--url", "ws://h:1/v1/stream", "--modes", "silence-600,smart-low",
                                      "--streams", "1,4", "--clips", "6"])
    assert (args.command, args.modes, args.streams, args.clips, args.wer_only) == (
        "turns", "silence-600,smart-low", "1,4", 6, False)


# ---------------------------------------------------------------------------- a real run, tiny

@pytest.mark.slow
def test_two_clips_in_silence_600_over_real_sockets(tmp_path, capsys):
    from benchmarks.turns import run_turns
    from streaming.config import Config
    from tests.helpers import running_server

    with running_server() as url:
        args = build_parser().parse_args(["turns", "--url", url, "--modes", "silence-600", "--clips", "2",
                                          "--streams", "2", "--out", str(tmp_path)])
        assert run_turns(args, Config()) == 0
    report = json.loads((tmp_path / "turns-whisper-tiny.en.json").read_text())
    assert {"model", "url", "cases", "hesitation_cases", "runs", "cases_detail", "wer_gate", "skipped"} <= set(report)
    (run,) = report["runs"]
    assert {"false_end_rate", "split_rate_complete", "final_latency_s", "speech_end_latency_s", "eager_latency_s",
            "eager_events", "turn_resumed", "wer", "wer_complete", "wer_hesitation", "missing_finals", "errors",
            "end_reasons", "cases", "start_fields"} <= set(run)
    assert run["mode"] == "silence-600" and run["cases"] == 4 and run["hesitation_cases"] == 2
    assert run["missing_finals"] == 0 and run["errors"] == 0 and run["final_latency_s"]["n"] == 4
    assert run["wer"] < 0.5 and 0 < run["final_latency_s"]["p50"] < 30
    details = report["cases_detail"]["silence-600@2"]
    assert len(details) == 4 and all(any(e[1] == "final" for e in d["timeline"]) for d in details)
    assert Path(tmp_path / "turns-whisper-tiny.en.png").exists()
    out = capsys.readouterr().out
    assert "silence-600" in out and "false-end" in out
