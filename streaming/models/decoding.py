"""Batched greedy decoding over ragged rows, shared by every decoder-only or encoder-decoder backend.

A batch holds rows whose prefixes have different lengths. Each row's past sits
in one padded KV cache; :class:`RaggedBatch` says which cache columns are real
for each row and at which position its next token goes, so every row computes
what it would alone (padding is masked out, RoPE or learned positions count
only real tokens). :func:`greedy_decode` then picks the best token of every row
until a stop rule ends it: end of text, the row's token budget, or a
repetition loop (:class:`RepetitionGuard`).

The model enters through one callback, :data:`DecodeStep`: the batch's input
ids, their positions, which keys each query may see, and the past KV in; the
next-token logits and the new past out. A backend with another cache layout
(static KV slots, CUDA graphs) swaps only that function. No model names here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

log = logging.getLogger(__name__)

DecodeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]
"""``step(input_ids [B, 1], positions [B, 1], allowed [B, 1, K] bool, past) -> (logits [B, V] float, past)``.

``allowed[b, 0, k]`` says whether row ``b``'s new token may attend to cache column ``k``
(the new token's own column is the last one, ``K - 1``).
"""

SelectRows = Callable[[Any, torch.Tensor], Any]
"""``select(past, rows) -> past`` keeping only the batch rows ``rows`` (a long tensor), in that order."""


# --------------------------------------------------------------------------- ragged batches


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, q, k]`` booleans -> the ``[B, 1, q, k]`` additive mask attention layers take as-is."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@dataclass(frozen=True)
class Prefill:
    """Inputs of a ragged prefill: ``W`` new columns per row after ``P`` cached ones."""

    positions: torch.Tensor
    """``[B, W]`` long: a real token's position counts only its row's real tokens before it."""
    allowed: torch.Tensor
    """``[B, W, P + W]`` bool: causal over real columns; a padding query sees itself, so no row of the
    attention is fully masked (a fully masked row gives NaN in some kernels)."""
    last: torch.Tensor
    """``[B]`` long: column (among the ``W`` new ones) of each row's last real input."""


@dataclass
class RaggedBatch:
    """Which cache columns are real for each row, and where each row's next token goes."""

    valid: torch.Tensor
    """``[B, K]`` bool over the cache columns."""
    next_positions: torch.Tensor
    """``[B]`` long: the position of each row's next token."""

    @classmethod
    def prefill(cls, cached: Sequence[int], new: Sequence[int], pad_new: Literal["left", "right"] = "right",
                device: torch.device | str = "cpu") -> tuple[RaggedBatch, Prefill]:
        """The batch after a prefill of ``new[b]`` tokens on top of ``cached[b]`` cached ones.

        The cached columns are left-padded to ``P = max(cached)`` (each row's past ends at column ``P``);
        the new tokens are padded to ``W = max(new)`` on the ``pad_new`` side. Padding columns get the
        position of their row's nearest real token (left) or keep counting (right); no real query sees them.
        """
        if len(cached) != len(new) or not new:
            raise ValueError(f"need one cached and one new length per row, got {len(cached)} and {len(new)}")
        if min(cached) < 0 or min(new) < 1:
            raise ValueError(f"every row needs >= 0 cached and >= 1 new tokens, got {list(cached)}, {list(new)}")
        past = torch.tensor(list(cached), dtype=torch.long, device=device)
        fresh = torch.tensor(list(new), dtype=torch.long, device=device)
        p, w = int(past.max()), int(fresh.max())
        cols = torch.arange(p + w, device=device)[None, :]
        new_cols = torch.arange(w, device=device)[None, :]
        first = (w - fresh) if pad_new == "left" else torch.zeros_like(fresh)  # column of each row's first new token
        real_new = (new_cols >= first[:, None]) & (new_cols < (first + fresh)[:, None])
        valid = torch.cat([cols[:, :p] >= (p - past)[:, None], real_new], dim=1)
        positions = torch.clamp(past[:, None] + new_cols - first[:, None], min=past[:, None])
        q = new_cols.T + p  # [W, 1]: the cache column of each new query
        allowed = ((cols <= q)[None] & valid[:, None, :]) | (cols == q)[None]
        batch = cls(valid, past + fresh)
        return batch, Prefill(positions, allowed, first + fresh - 1)

    @property
    def size(self) -> int:
        return int(self.valid.shape[0])

    def select(self, rows: torch.Tensor) -> RaggedBatch:
        """Only the batch rows ``rows``, in that order."""
        return RaggedBatch(self.valid[rows], self.next_positions[rows])

    def advance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one real column per row for the next token: its ``[B, 1]`` positions and ``[B, 1, K]`` mask."""
        ones = torch.ones(self.size, 1, dtype=torch.bool, device=self.valid.device)
        self.valid = torch.cat([self.valid, ones], dim=1)
        positions = self.next_positions[:, None]
        self.next_positions = self.next_positions + 1
        return positions, self.valid[:, None, :]


# --------------------------------------------------------------------------- stop rules


@dataclass(frozen=True)
class Row:
    """One row's limits: how many tokens it may generate, and what its loop guard sees before them."""

    max_tokens: int
    guard_prefix: Sequence[int] = ()
    """Tokens that precede the generated ones for the repetition guard (e.g. a forced stable prefix)."""


@dataclass(frozen=True)
class Stop:
    """Why a row stopped (``"eos"``, ``"cap"``, ``"loop"``) and how many generated tokens it keeps."""

    reason: str
    keep: int


class StopRule(Protocol):
    """Looks at a row's generated tokens after each new one; a :class:`Stop` ends the row."""

    def check(self, tokens: list[int], row: Row) -> Stop | None: ...


@dataclass(frozen=True)
class TokenBudget:
    """Stops a row once it has generated ``row.max_tokens`` tokens."""

    def check(self, tokens: list[int], row: Row) -> Stop | None:
        return Stop("cap", len(tokens)) if len(tokens) >= row.max_tokens else None


@dataclass(frozen=True)
class RepetitionGuard:
    """Stops a row whose tokens end in an n-gram repeated back to back: a decoder loop.

    An n-gram (``n <= max_ngram``) is a loop when repeated at least
    ``max(min_repeats, ceil(min_repeated_tokens / n))`` times in a row, so short
    n-grams need more copies ("no no no" may be speech). With ``keep_one_copy``
    the row keeps one copy of the loop and drops the rest; else it keeps all.
    """

    min_repeats: int
    min_repeated_tokens: int
    max_ngram: int
    keep_one_copy: bool = True

    def repeats_needed(self, n: int) -> int:
        return max(self.min_repeats, math.ceil(self.min_repeated_tokens / n))

    def find(self, tokens: Sequence[int]) -> int | None:
        """Length to cut ``tokens`` to (one copy of the loop kept) if they end in a loop, else ``None``."""
        size = len(tokens)
        for n in range(1, self.max_ngram + 1):
            need = self.repeats_needed(n)
            if size < n * need:
                continue  # n * need is not monotone in n for every setting: try the longer n-grams too
            gram = list(tokens[size - n:])
            reps = 1
            while reps < need and list(tokens[size - (reps + 1) * n: size - reps * n]) == gram:
                reps += 1
            if reps >= need:
                start = size - n
                while start - n >= 0 and list(tokens[start - n: start]) == gram:
                    start -= n
                return start + n
        return None

    def check(self, tokens: list[int], row: Row) -> Stop | None:
        prefix = list(row.guard_prefix)
        cut = self.find(prefix + tokens if prefix else tokens)
        if cut is None:
            return None
        keep = max(0, cut - len(prefix)) if self.keep_one_copy else len(tokens)
        log.debug("decoder loop after %d tokens, keeping %d", len(tokens), keep)
        return Stop("loop", keep)


@dataclass(frozen=True)
class StopCriteria:
    """End of text, then the rules in order (the first that fires names the stop)."""

    eos_ids: frozenset[int]
    rules: tuple[StopRule, ...] = (TokenBudget(),)


# --------------------------------------------------------------------------- the loop


LogitFilter = Callable[[torch.Tensor, int], torch.Tensor]
"""``filter(logits [B, V], step_index) -> logits``; may work in place (e.g. suppress tokens)."""


@dataclass(frozen=True)
class SuppressTokens:
    """Sets the logits of suppressed tokens to -inf; ``first`` replaces ``every`` at the first step."""

    every: torch.Tensor
    """``[V]`` bool."""
    first: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, step_index: int) -> torch.Tensor:
        mask = self.first if (step_index == 0 and self.first is not None) else self.every
        return logits.masked_fill_(mask, -math.inf)


@dataclass
class Decoded:
    """One row's greedy output."""

    tokens: list[int] = field(default_factory=list)
    """Generated tokens (the end-of-text token excluded, a loop's extra copies cut)."""
    stop: str = ""
    """``"eos"``, ``"cap"`` or ``"loop"``."""
    token_logprobs: list[float] = field(default_factory=list)
    """Log-probability of each of :attr:`tokens` when chosen (only when asked for)."""
    logprob_sum: float = 0.0
    """Over every generated token, a loop's cut copies included."""


def push_token(out: Decoded, row: Row, token: int, logprob: float | None, stop: StopCriteria) -> None:
    """Add a chosen token to a row's output and apply the stop rules (pure: no tensors)."""
    if token in stop.eos_ids:
        out.stop = "eos"
        return
    out.tokens.append(token)
    if logprob is not None:
        out.token_logprobs.append(logprob)
        out.logprob_sum += logprob
    for rule in stop.rules:
        hit = rule.check(out.tokens, row)
        if hit is not None:
            del out.tokens[hit.keep:]
            del out.token_logprobs[hit.keep:]
            out.stop = hit.reason
            return


def _choose(logits: torch.Tensor, with_logprobs: bool) -> tuple[list[int], list[float | None]]:
    """The best token of every row, and its log-probability when asked for."""
    if not with_logprobs:
        best = logits.argmax(-1).tolist()
        return best, [None] * len(best)
    logprobs = logits.log_softmax(-1)
    best_t = logprobs.argmax(-1)
    return best_t.tolist(), logprobs.gather(1, best_t[:, None])[:, 0].tolist()


def greedy_decode(step: DecodeStep, past: Any, batch: RaggedBatch, rows: Sequence[Row],
                  prefill_logits: Callable[[torch.Tensor | None], torch.Tensor], stop: StopCriteria, *,
                  logit_filter: LogitFilter | None = None, with_logprobs: bool = False,
                  select_rows: SelectRows | None = None) -> list[Decoded]:
    """Greedy-decode every row of a prefilled batch until each one stops.

    ``prefill_logits(rows)`` gives the next-token logits after the prefill for the batch rows ``rows``
    (``None``: all); it is asked only for rows with a budget, as the output projection is a large
    part of a step. With ``select_rows`` finished rows leave the batch (less work per step);
    without, they stay in it to the end and their tokens are ignored (fixed shapes, e.g. CUDA graphs).
    """
    if len(rows) != batch.size:
        raise ValueError(f"{len(rows)} rows for a batch of {batch.size}")
    out = [Decoded() for _ in rows]
    for o, row in zip(out, rows, strict=True):
        if row.max_tokens <= 0:
            o.stop = "cap"
    members = list(range(len(rows)))  # original row of each batch row
    running = [j for j in members if not out[j].stop]
    if not running:
        return out
    sel = None
    if select_rows is not None and len(running) < len(members):
        sel = torch.tensor(running, device=batch.valid.device)
        past, batch, members = select_rows(past, sel), batch.select(sel), running
    logits = prefill_logits(sel)
    step_index = 0
    while True:
        if logit_filter is not None:
            logits = logit_filter(logits, step_index)
        best, logprobs = _choose(logits, with_logprobs)
        for r, token, lp in zip(members, best, logprobs, strict=True):
            if not out[r].stop:
                push_token(out[r], rows[r], token, lp, stop)
        running = [j for j, r in enumerate(members) if not out[r].stop]
        if not running:
            return out
        ids = torch.tensor(best, dtype=torch.long, device=batch.valid.device)
        if select_rows is not None and len(running) < len(members):
            sel = torch.tensor(running, device=batch.valid.device)
            past, batch, ids = select_rows(past, sel), batch.select(sel), ids[sel]
            members = [members[j] for j in running]
        positions, allowed = batch.advance()
        logits, past = step(ids[:, None], positions, allowed, past)
        step_index += 1
