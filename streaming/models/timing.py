"""Word timestamps from cross-attention: the pure part (no model), numpy only.

Whisper's decoder attends to the encoder frames (20 ms each) it is reading
while it writes a token; a few "alignment heads" do so sharply. Given those
heads' attention logits for a teacher-forced pass over the final tokens, this
module turns them into one alignment matrix (softmax over the utterance's
frames, standardised per head and frame over the tokens, median-filtered along
time, averaged over heads), finds the cheapest monotonic path through it with
dynamic time warping, reads each token's start frame off the path and groups
tokens into the words of the transcript. The same recipe as openai/whisper's
``timing.py``; the code here is our own.
"""

from __future__ import annotations

import base64
import gzip
import unicodedata
from collections.abc import Sequence

import numpy as np

from streaming.results import Word

FRAMES_PER_S = 50
"""Whisper encoder frames per second (two 10 ms mel frames each)."""

MEDIAN_FILTER_WIDTH = 7
"""Median filter width in frames along time, as openai/whisper and CTranslate2 use."""

ALIGNMENT_HEADS_B85: dict[str, bytes] = {
    "tiny.en": b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00",
    "base": b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m",
}
"""The alignment heads openai/whisper publishes (``_ALIGNMENT_HEADS``): a gzipped boolean
[layers, heads] mask in base85, for the checkpoints we ship."""

TIMING_ALIGNMENT_HEADS = "cross-attention DTW (alignment heads)"
TIMING_FALLBACK_HEADS = "cross-attention DTW (no known alignment heads: all heads of the last half of the decoder)"
TIMING_ESTIMATED = "estimated: utterance span split by character length (no forced aligner loaded)"
"""``FinalResult.word_timing`` values: how the times were found."""


def decode_alignment_heads(data: bytes, layers: int, heads: int) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs of a base85 gzipped boolean mask of shape [layers, heads]."""
    mask = np.frombuffer(gzip.decompress(base64.b85decode(data)), dtype=bool)
    if mask.size != layers * heads:
        raise ValueError(f"alignment-head mask has {mask.size} entries, expected {layers} x {heads}")
    return [(int(layer), int(head)) for layer, head in np.argwhere(mask.reshape(layers, heads))]


def published_alignment_heads(name: str, layers: int, heads: int) -> list[tuple[int, int]] | None:
    """The published heads of a checkpoint named like ``tiny.en``/``whisper-base``, or ``None``."""
    key = name.rsplit("/", 1)[-1].removeprefix("whisper-")
    data = ALIGNMENT_HEADS_B85.get(key)
    return None if data is None else decode_alignment_heads(data, layers, heads)


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd ``width`` along the last axis (reflect-padded ends)."""
    if width % 2 != 1 or width <= 0:
        raise ValueError(f"median filter width must be odd and positive, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad:  # too short to reflect: leave as is
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1), axis=-1)


def alignment_matrix(qk: np.ndarray, filter_width: int = MEDIAN_FILTER_WIDTH) -> np.ndarray:
    """[heads, tokens, frames] attention logits → [tokens, frames] alignment scores (higher = aligned).

    Softmax over the utterance's frames, then each head's weights are
    standardised over the tokens (per frame) so that heads and frames compare,
    median-filtered along time and averaged over heads.
    """
    x = np.asarray(qk, dtype=np.float64)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    x /= x.sum(axis=-1, keepdims=True)
    mean = x.mean(axis=-2, keepdims=True)
    std = x.std(axis=-2, keepdims=True)
    x = (x - mean) / np.maximum(std, 1e-10)
    return median_filter(x, filter_width).mean(axis=0)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path from cell (0, 0) to (N-1, M-1) of an [N, M] cost matrix.

    Steps go diagonal, down (next row) or right (next column). Returns the row
    and column index of every cell on the path, in order; ties prefer the
    diagonal, then down. Filled one row at a time: within a row the
    chain of right steps is a running minimum (``acc[j] - S[j]`` with ``S`` the
    row's cumulative cost), so N numpy passes replace the N x M loop.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError(f"dtw needs a non-empty matrix, got shape {cost.shape}")
    acc = np.full((n + 1, m + 1), np.inf)  # acc[i, j]: cheapest path to cell (i-1, j-1); row/column 0 pad
    acc[0, 0] = 0.0
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 down (from the row above), 2 right
    for i in range(1, n + 1):
        diag, up = acc[i - 1, :-1], acc[i - 1, 1:]
        row_sum = np.cumsum(cost[i - 1])
        entry = cost[i - 1] + np.minimum(diag, up)  # best arrival from the row above
        acc[i, 1:] = row_sum + np.minimum.accumulate(entry - row_sum)
        left = acc[i, :-1]
        move[i, 1:] = np.where((diag <= up) & (diag <= left), 0, np.where(up <= left, 1, 2))
    rows, cols = [], []
    i, j = n, m
    while i > 0 and j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        step = move[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    # The padded borders are infinite, so the path leaves the table only through (1, 1) -> (0, 0).
    return np.array(rows[::-1]), np.array(cols[::-1])


def row_start_frames(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> np.ndarray:
    """The frame at which a DTW path first enters each of ``num_rows`` rows."""
    starts = np.zeros(num_rows, dtype=np.int64)
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    starts[rows[first]] = cols[first]
    return starts


def token_boundaries_s(scores: np.ndarray) -> np.ndarray:
    """Start time (s) of each row of an [tokens + 1, frames] alignment matrix.

    Row ``k`` is the decoder position that predicts text token ``k`` (the last
    row predicts end-of-text), so entry ``k`` is where token ``k`` starts and
    entry ``k + 1`` where it ends.
    """
    rows, cols = dtw(-scores)
    return row_start_frames(rows, cols, scores.shape[0]) / FRAMES_PER_S


def word_token_spans(starts_word: Sequence[bool], is_blank: Sequence[bool]) -> list[tuple[int, int]]:
    """Group tokens into words: ``[start, end)`` token ranges, one per word.

    A token that begins with whitespace begins a new word, unless the word so
    far is only whitespace; punctuation without a leading space therefore stays
    on the word before it. ``is_blank`` marks tokens that are whitespace only;
    a trailing all-blank group is merged into the word before.
    """
    spans: list[list[int]] = []
    blank_so_far = True
    for k, (starts, blank) in enumerate(zip(starts_word, is_blank, strict=True)):
        if not spans or (starts and not blank_so_far):
            spans.append([k, k + 1])
            blank_so_far = blank
        else:
            spans[-1][1] = k + 1
            blank_so_far = blank_so_far and blank
    if len(spans) > 1 and blank_so_far:
        last = spans.pop()
        spans[-1][1] = last[1]
    return [(a, b) for a, b in spans]


def build_words(texts: Sequence[str], spans: Sequence[tuple[int, int]], boundaries_s: np.ndarray,
                token_probs: Sequence[float], duration_s: float,
                punctuation: Sequence[bool] | None = None) -> list[Word]:
    """Words with times from token boundaries (``len(tokens) + 1`` of them) and mean token probability.

    ``texts[i]`` is the decoded text of span ``i``. A word's time runs from its
    first to its last token that is not punctuation (``punctuation`` flags per
    token): a comma or a closing quote carries the pause after it, not speech.
    A span holding several whitespace-separated pieces (rare) becomes several
    words sharing its time in proportion to their lengths; empty ones are
    dropped. Times are clipped to ``[0, duration_s]`` and never decrease.
    """
    words: list[Word] = []
    for text, (a, b) in zip(texts, spans, strict=True):
        pieces = text.split()
        if not pieces:
            continue
        core = [k for k in range(a, b) if not (punctuation and punctuation[k])] or list(range(a, b))
        start, end = float(boundaries_s[core[0]]), float(boundaries_s[core[-1] + 1])
        prob = float(np.mean(token_probs[a:b]))
        for piece, (s, e) in zip(pieces, split_span(start, end, [len(p) for p in pieces]), strict=True):
            words.append(Word(piece, s, e, prob))
    return trim_first_word(monotonic(words, duration_s))


def trim_first_word(words: list[Word]) -> list[Word]:
    """Cut an overlong first word to twice the median word length, keeping its end.

    Every DTW path starts at frame 0, so silence before the first word is
    counted in it. When that word ends late (past four median words) and lasts
    over twice the median word (the median capped at 0.7 s), its start moves
    up, as openai/whisper and faster-whisper do.
    """
    durations = [w.end_s - w.start_s for w in words if w.end_s > w.start_s]
    if not durations:
        return words
    median = min(0.7, float(np.median(durations)))
    first = words[0]
    longest = 2 * median
    if first.end_s > 4 * median and first.end_s - first.start_s > longest:
        words = [Word(first.word, round(first.end_s - longest, 3), first.end_s, first.probability), *words[1:]]
    return words


def split_span(start_s: float, end_s: float, weights: Sequence[int]) -> list[tuple[float, float]]:
    """``[start_s, end_s]`` cut into consecutive pieces in proportion to ``weights``."""
    w = np.maximum(np.asarray(weights, dtype=np.float64), 1e-9)  # an empty piece still gets a place
    edges = np.concatenate([[0.0], np.cumsum(w)]) / w.sum()
    times = start_s + (end_s - start_s) * edges
    return [(float(times[i]), float(times[i + 1])) for i in range(len(weights))]


def monotonic(words: list[Word], duration_s: float) -> list[Word]:
    """The words with times rounded to ms, clipped to ``[0, duration_s]`` and made non-decreasing."""
    out: list[Word] = []
    floor = 0.0
    for w in words:
        start = round(min(max(w.start_s, floor), duration_s), 3)
        end = round(min(max(w.end_s, start), duration_s), 3)
        out.append(Word(w.word, start, end, min(max(w.probability, 0.0), 1.0)))
        floor = end
    return out


def estimated_words(text: str, start_s: float, end_s: float) -> list[Word]:
    """Words of ``text`` spread over ``[start_s, end_s]`` by character length (no aligner).

    For backends without an alignment; probability is unknown and reported as 1.
    """
    pieces = text.split()
    if not pieces:
        return []
    spans = split_span(start_s, end_s, [len(p) for p in pieces])
    return monotonic([Word(p, s, e, 1.0) for p, (s, e) in zip(pieces, spans, strict=True)], end_s)


def is_punctuation(text: str) -> bool:
    """Whether a token's text is punctuation only (spaces aside), e.g. ``","`` or ``' "'``."""
    text = text.strip()
    return bool(text) and all(unicodedata.category(c)[0] == "P" for c in text)
