"""Word timestamps: DTW, alignment matrix and word grouping on synthetic data (no model); the
Whisper backend's times against faster-whisper's on real speech (slow); Qwen3-ASR's estimate."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.models import timing
from streaming.models.base import UtteranceOptions, Word


def _reference_dtw_cost(cost: np.ndarray) -> float:
    """The cheapest monotonic path cost, by the textbook double loop."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    return float(acc[n, m])


@pytest.mark.parametrize(("cost", "rows", "cols"), [
    ([[0.0]], [0], [0]),
    ([[0, 1, 1], [1, 0, 1], [1, 1, 0]], [0, 1, 2], [0, 1, 2]),  # the diagonal
    ([[0, 0, 0, 1], [1, 1, 1, 0]], [0, 0, 0, 1], [0, 1, 2, 3]),  # stays on row 0, then one step down
    ([[0, 1], [0, 1], [1, 0]], [0, 1, 2], [0, 0, 1]),  # two tokens on frame 0
    ([[5, 5, 5]], [0, 0, 0], [0, 1, 2]),  # one row: straight right
    ([[5], [5]], [0, 1], [0, 0]),  # one column: straight down
])
def test_dtw_paths(cost, rows, cols):
    got_rows, got_cols = timing.dtw(np.array(cost, dtype=float))
    assert got_rows.tolist() == rows and got_cols.tolist() == cols


def test_dtw_path_is_monotonic_and_cheapest():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, m = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        cost = rng.standard_normal((n, m))
        rows, cols = timing.dtw(cost)
        assert (rows[0], cols[0]) == (0, 0) and (rows[-1], cols[-1]) == (n - 1, m - 1)
        steps = set(zip(np.diff(rows).tolist(), np.diff(cols).tolist(), strict=True))
        assert steps <= {(1, 1), (1, 0), (0, 1)}
        assert cost[rows, cols].sum() == pytest.approx(_reference_dtw_cost(cost))
    with pytest.raises(ValueError):
        timing.dtw(np.zeros((0, 3)))


@pytest.mark.parametrize(("rows", "cols", "n", "starts"), [
    ([0, 1, 2], [0, 1, 2], 3, [0, 1, 2]),
    ([0, 0, 0, 1, 1, 2], [0, 1, 2, 3, 4, 5], 3, [0, 3, 5]),
    ([0, 1, 2, 2, 2], [0, 0, 0, 1, 2], 3, [0, 0, 0]),  # a down step: the token starts where the last did
])
def test_row_start_frames(rows, cols, n, starts):
    assert timing.row_start_frames(np.array(rows), np.array(cols), n).tolist() == starts


@pytest.mark.parametrize(("values", "width", "expected"), [
    ([1, 1, 9, 1, 1], 3, [1, 1, 1, 1, 1]),  # a spike is removed
    ([1, 2, 3, 4, 5], 3, [2, 2, 3, 4, 4]),  # reflect padding at the ends
    ([3, 1], 7, [3, 1]),  # shorter than the half width: unchanged
])
def test_median_filter(values, width, expected):
    assert timing.median_filter(np.array(values, dtype=float), width).tolist() == expected
    with pytest.raises(ValueError):
        timing.median_filter(np.zeros(5), 4)


def _staircase(bounds: list[int], frames: int, heads: int = 3, seed: int = 0) -> np.ndarray:
    """Attention logits [heads, rows, frames] where row k attends to frames [bounds[k], bounds[k+1])."""
    rng = np.random.default_rng(seed)
    qk = rng.normal(0, 0.3, (heads, len(bounds) - 1, frames))
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        qk[:, k, a:b] += 6.0
    return qk


def test_token_boundaries_follow_a_staircase_of_attention():
    # 4 tokens + end-of-text over 100 frames (2 s): tokens at 0.1, 0.5, 0.9, 1.3 s, end of text at 1.7 s.
    bounds = [5, 25, 45, 65, 85, 100]
    scores = timing.alignment_matrix(_staircase(bounds, 100))
    assert scores.shape == (5, 100)
    got = timing.token_boundaries_s(scores)
    # The path starts at frame 0, so the first token owns the silence before it (trim_first_word's job).
    np.testing.assert_allclose(got, [0.0, *(np.array(bounds[1:5]) / 50)], atol=0.04)  # within two frames
    assert np.all(np.diff(got) > 0)


@pytest.mark.parametrize(("spans", "expected_first"), [
    ([(0.0, 2.0), (2.0, 2.3), (2.3, 2.6), (2.6, 2.9)], (1.4, 2.0)),  # silence in front: cut to 2 x 0.3 s
    ([(0.0, 0.5), (0.5, 0.8), (0.8, 1.1)], (0.0, 0.5)),  # ends early: left alone
    ([(0.0, 0.6), (0.6, 0.9), (0.9, 1.2), (1.2, 1.5)], (0.0, 0.6)),  # not over twice the median
    ([(0.0, 3.0)], (1.6, 3.0)),  # the median is capped at 0.7 s
])
def test_trim_first_word(spans, expected_first):
    words = [Word(str(i), s, e, 1.0) for i, (s, e) in enumerate(spans)]
    trimmed = timing.trim_first_word(words)
    assert (trimmed[0].start_s, trimmed[0].end_s) == pytest.approx(expected_first)
    assert trimmed[1:] == words[1:]


def test_alignment_matrix_standardises_each_head_over_tokens():
    qk = _staircase([0, 10, 20, 30], 30, heads=2)
    qk[1] *= 3.0  # a sharper head must not outweigh the other
    assert timing.alignment_matrix(qk, filter_width=1).shape == (3, 30)
    x = np.exp(qk - qk.max(-1, keepdims=True))
    x /= x.sum(-1, keepdims=True)
    z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    np.testing.assert_allclose(timing.alignment_matrix(qk, filter_width=1), z.mean(0))
    np.testing.assert_allclose(timing.alignment_matrix(qk), timing.median_filter(z, 7).mean(0))


@pytest.mark.parametrize(("pieces", "spans"), [
    # byte-level BPE pieces: "Ġ" is a leading space
    (["ĠHello", ",", "Ġworld", "."], [(0, 2), (2, 4)]),  # punctuation stays on the word before
    (["ĠAm", "eric", "ans"], [(0, 3)]),  # sub-word pieces join
    (["Hello", "Ġthere"], [(0, 1), (1, 2)]),  # the first token needs no space
    (["Ġ", "Ġx", "Ġ", "ä¸Ń"], [(0, 2), (2, 4)]),  # a lone space joins the word after it
    (["Ġ\"", "Hi", "\"", "Ġyou"], [(0, 3), (3, 4)]),  # an opening quote joins the word it opens
    (["Ġok", "Ġ"], [(0, 2)]),  # a trailing space joins the last word
    (["Ġ,", "Ġyes"], [(0, 1), (1, 2)]),  # spaced punctuation is a word of its own (as in the text)
])
def test_word_token_spans(pieces, spans):
    starts = [p[:1] == "Ġ" for p in pieces]
    blank = [set(p) <= {"Ġ"} for p in pieces]
    assert timing.word_token_spans(starts, blank) == spans


def test_build_words_times_probabilities_and_punctuation():
    # tokens: " Hello" "," " wor" "ld" "." ; boundaries: token k from b[k] to b[k+1]
    bounds = np.array([0.0, 0.4, 0.9, 1.0, 1.3, 2.0])
    probs = [0.8, 0.6, 0.9, 0.7, 0.5]
    punct = [False, True, False, False, True]
    words = timing.build_words([" Hello,", " world."], [(0, 2), (2, 5)], bounds, probs, 2.5, punct)
    assert words == [Word("Hello,", 0.0, 0.4, pytest.approx(0.7)), Word("world.", 0.9, 1.3, pytest.approx(0.7))]
    # Without punctuation flags the comma and the full stop carry time.
    plain = timing.build_words([" Hello,", " world."], [(0, 2), (2, 5)], bounds, probs, 2.5)
    assert [(w.start_s, w.end_s) for w in plain] == [(0.0, 0.9), (0.9, 2.0)]
    # Clipped to the utterance, never decreasing; a span of two pieces shares its time by length.
    odd = timing.build_words(["ab cdef", " "], [(0, 1), (1, 2)], np.array([-0.5, 1.0, 9.0]), [1.0, 1.0], 0.6)
    assert [(w.word, w.start_s, w.end_s) for w in odd] == [("ab", 0.0, 0.0), ("cdef", 0.0, 0.6)]


def test_monotonic_clips_and_orders():
    words = [Word("a", 0.5, 0.4, 1.2), Word("b", 0.3, 0.9, -0.1), Word("c", 1.0, 3.0, 0.5)]
    assert timing.monotonic(words, 2.0) == [Word("a", 0.5, 0.5, 1.0), Word("b", 0.5, 0.9, 0.0),
                                            Word("c", 1.0, 2.0, 0.5)]


@pytest.mark.parametrize(("text", "expected"), [
    (",", True), (' "', True), ("...", True), ("!?", True), ("a", False), (" ", False), ("'s", False),
    ("", False), ("1.", False),
])
def test_is_punctuation(text, expected):
    assert timing.is_punctuation(text) is expected


def test_published_alignment_heads_decode():
    assert timing.published_alignment_heads("tiny.en", 4, 6) == [
        (1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]
    assert timing.published_alignment_heads("whisper-base", 6, 8) == [
        (3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)]
    assert timing.published_alignment_heads("openai/whisper-tiny.en", 4, 6) is not None
    assert timing.published_alignment_heads("large-v9", 4, 6) is None
    with pytest.raises(ValueError):
        timing.published_alignment_heads("tiny.en", 2, 4)  # a different shape


@pytest.mark.parametrize(("text", "start", "end", "expected"), [
    ("", 0.0, 1.0, []),
    ("ab", 0.0, 1.0, [("ab", 0.0, 1.0)]),
    ("a bbb", 1.0, 2.0, [("a", 1.0, 1.25), ("bbb", 1.25, 2.0)]),
    ("  x  yy ", 0.0, 0.3, [("x", 0.0, 0.1), ("yy", 0.1, 0.3)]),
])
def test_estimated_words(text, start, end, expected):
    got = [(w.word, w.start_s, w.end_s) for w in timing.estimated_words(text, start, end)]
    assert got == [(w, pytest.approx(s), pytest.approx(e)) for w, s, e in expected]


# ---------------------------------------------------------------- real model vs faster-whisper (slow)


@pytest.mark.slow
def test_tiny_en_word_times_match_faster_whisper_on_english_dev_clips():
    pytest.importorskip("faster_whisper")
    from scripts.word_times import GOAL_S, compare, faster_whisper_model
    from streaming.evaluation import dev_clips
    from streaming.models.whisper import WhisperBackend

    try:
        backend = WhisperBackend.from_embedded("tiny.en", threads=1)
    except Exception as exc:  # noqa: BLE001 - the package may be absent on a bare machine
        pytest.skip(f"embedded tiny.en unavailable: {exc}")
    clips = [c for c in dev_clips() if c.language == "en"]
    result = compare(clips, backend, faster_whisper_model("tiny.en"))
    assert result["matched_words"] >= 80, result
    assert result["median_start_diff_s"] <= GOAL_S and result["median_end_diff_s"] <= GOAL_S, result
    for row in result["clips"]:
        assert row["word_timing"] == timing.TIMING_ALIGNMENT_HEADS
        assert " ".join(w for w, *_ in row["ours"]) == row["text"]
        times = [t for _, start, end, _ in row["ours"] for t in (start, end)]
        assert times == sorted(times) and 0.0 <= times[0] and times[-1] <= row["duration_s"], row["ours"]


# ---------------------------------------------------------------- Qwen3-ASR: estimated word times


def test_qwen3_words_are_an_estimate_spread_by_character_length():
    import torch

    from streaming.models.qwen3_asr import Qwen3ASRBackend, random_model

    model, tok = random_model("tiny", seed=0)
    with torch.no_grad():  # larger random weights: the greedy output varies, so there are words
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    backend = Qwen3ASRBackend(model, tok, repetition_guard=False)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(32_000)).astype(np.float32)
    asked, plain, empty = (backend.new_utterance(UtteranceOptions(language="en", word_timestamps=w))
                           for w in (True, False, True))
    asked.append_audio(audio)
    plain.append_audio(audio)
    final, unasked, silent = backend.finalize([asked, plain, empty])
    assert final.text and final.text == unasked.text
    assert final.word_timing == timing.TIMING_ESTIMATED and unasked.words is None and unasked.word_timing is None
    assert [w.word for w in final.words] == final.text.split() and len(final.words) >= 2, final.text
    assert final.words[0].start_s == 0.0 and final.words[-1].end_s == pytest.approx(2.0)
    for w, nxt in zip(final.words, final.words[1:]):
        assert w.end_s == pytest.approx(nxt.start_s, abs=1e-3)
    lengths = np.array([len(w.word) for w in final.words], dtype=float)
    np.testing.assert_allclose([w.end_s - w.start_s for w in final.words], 2.0 * lengths / lengths.sum(), atol=2e-3)
    assert silent.text == "" and silent.words == [] and silent.word_timing == timing.TIMING_ESTIMATED
