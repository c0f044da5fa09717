"""Hypothesis stability: which part of a partial transcript may no longer change.

LocalAgreement-2 (the idea behind ``ufal/whisper_streaming``'s HypothesisBuffer):
the model re-decodes the open utterance every step; the units (words for
Whisper, tokens for Qwen3-ASR) on which two consecutive hypotheses agree,
counting from the already-stable prefix, become stable. Stable units are never
taken back within an utterance, so a caption overlay can print them for good.

Pure logic over sequences of hashable units: no model, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Unit = TypeVar("Unit", bound=Hashable)


def common_prefix_len(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class LocalAgreement(Generic[Unit]):
    """Commits the units on which the last ``n`` hypotheses agree.

    ``insert`` takes a full hypothesis of the open utterance that starts with
    the stable prefix (decoders force it, so it always does; if a backend
    returns one that does not, the stable prefix still wins). It returns the
    new stable prefix and the tentative tail.
    """

    n: int = 2
    """How many consecutive hypotheses must agree (2 = LocalAgreement-2)."""
    stable: list[Unit] = field(default_factory=list)
    _history: list[list[Unit]] = field(default_factory=list)

    def insert(self, hypothesis: Sequence[Unit]) -> tuple[list[Unit], list[Unit]]:
        hyp = list(hypothesis)
        k = len(self.stable)
        if hyp[:k] != self.stable:
            # The decoder strayed from the forced prefix: keep our promise.
            hyp = self.stable + hyp[common_prefix_len(hyp, self.stable):]
        tail = hyp[k:]
        self._history.append(tail)
        self._history = self._history[-self.n:]
        if len(self._history) == self.n:
            agreed = len(self._history[0])
            for other in self._history[1:]:
                agreed = min(agreed, common_prefix_len(self._history[0], other))
            if agreed:
                self.stable.extend(tail[:agreed])
                self._history = [h[agreed:] for h in self._history]
        return list(self.stable), list(hyp[len(self.stable):])

    def reset(self) -> None:
        self.stable.clear()
        self._history.clear()
