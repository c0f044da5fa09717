"""Result types the session, the engine and every model backend share.

This module imports nothing of the project: the core (session, codecs, engine)
and the backends both depend on it, so the core never imports ``models/``.
Times inside a result are relative to the start of its utterance; the session
turns them into stream time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SAMPLE_RATE_HZ = 16_000
"""Every backend consumes mono float32 audio at this rate, in [-1, 1]."""


class OptionError(ValueError):
    """A per-session option this backend cannot honour (e.g. an unknown language)."""


@dataclass
class UtteranceOptions:
    """What a backend needs to know about the session an utterance belongs to."""

    language: str | None = None
    """ISO code such as ``"en"``; ``None`` lets a multilingual model detect it."""
    window_s: int | None = None
    """Encoder attention window in whole seconds (Qwen3-ASR: 1-8); ``None`` = backend default."""
    context: str | None = None
    """Optional hotwords/context text that biases decoding but never appears in the transcript."""
    previous_text: str | None = None
    """Final text of the previous utterance of the same session, usable as context."""
    word_timestamps: bool = False
    """Whether the final should carry :attr:`FinalResult.words`."""
    task: str = "transcribe"
    """``transcribe``, or ``translate``: English text whatever the language (backends with ``supports_translate``)."""


@dataclass(frozen=True)
class Word:
    """One word of a final, with its time span (seconds from the utterance start) and confidence."""

    word: str
    """The word as it appears in the transcript (punctuation attached), no surrounding spaces."""
    start_s: float
    end_s: float
    probability: float
    """Mean token probability of the word, in [0, 1]."""
    speaker: int | None = None
    """The session's label of who said it (``diarize``), else None."""

    def shifted(self, offset_s: float) -> "Word":
        """The same word with its times moved by ``offset_s`` (utterance time → stream time)."""
        return Word(self.word, self.start_s + offset_s, self.end_s + offset_s, self.probability, self.speaker)


@dataclass
class Hypothesis:
    """A partial result: the current best guess for an open utterance."""

    stable_text: str
    """Prefix that the stability policy will not change again within this utterance."""
    unstable_text: str
    """Tentative tail that may still change."""
    language: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    """Backend-specific counters (e.g. encoder frames recomputed) for benchmarks and logs."""

    @property
    def text(self) -> str:
        return join_text(self.stable_text, self.unstable_text)


@dataclass
class FinalResult:
    """The final text of a closed utterance; never changed again."""

    text: str
    language: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    words: list[Word] | None = None
    """Word timings when :attr:`UtteranceOptions.word_timestamps` was asked (utterance time)."""
    word_timing: str | None = None
    """How the word times were found, e.g. ``"cross-attention DTW"``, or ``"estimated: …"`` when they
    are an estimate rather than an alignment."""


def join_text(a: str, b: str) -> str:
    """Join two text pieces with exactly one space where both are non-empty."""
    a, b = a.strip(), b.strip()
    if a and b:
        return f"{a} {b}"
    return a or b


def estimate_words(text: str, start_s: float, end_s: float) -> tuple[Word, ...]:
    """Words of ``text`` spread over [start_s, end_s] in proportion to their length (no alignment known)."""
    words = text.split()
    total = sum(len(w) for w in words) or 1
    span = max(0.0, end_s - start_s)
    out, at = [], start_s
    for w in words:
        step = span * len(w) / total
        out.append(Word(w, round(at, 3), round(at + step, 3), 0.0))
        at += step
    return tuple(out)
