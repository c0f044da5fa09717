"""Admission by measured capacity, sans I/O: how many streams the server can hold at its latency target.

A count of sessions is not a capacity: 32 long streams were all admitted on a
2-core machine and got their finals 112 s late. This module decides from the
model's *cost* instead:

- :func:`capacity_from_costs` turns measured model costs (:class:`Costs`: a
  partial step at batch 1 and at a small batch, a final) into the number of
  real-time streams that keep the model busy at most ``max_busy_fraction`` of
  the time while a final still fits in ``latency_target_s``;
- :class:`LoadGate` watches the engine's live load figures (an ``EngineLoad``:
  busy fraction, the age of the oldest waiting final and partial) and says
  "unhealthy" when they show the server is full whatever the count says, with
  hysteresis so it does not flap;
- :class:`Admission` puts both together: admit while ``in_use < capacity`` and
  the gate is healthy, else refuse with ``overloaded`` and a ``retry_after_s``.
  A measured capacity is also re-estimated from the engine's live per-item
  costs (real speech, real utterance lengths), again with hysteresis.

The capacity counts *every* partial at ``step_s``: it is the load at which first
partials keep their latency too. Beyond it the engine still serves finals for a
while by coalescing and shedding partials (tiny.en on 2 cores: one stream keeps
the model 38 % busy, so this gives 2; finals stayed near 1.5 s up to 4 streams,
whose first partials were 2.6 s late at p95; ``bench/whisper-tiny.en``).

Nothing here reads a clock, a socket or a thread: the caller passes ``now_s``
and the load figures in, so every rule is tested with tables and a fake clock
(``tests/test_capacity.py``). The measuring and the live sampling are ``streaming/admission.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


class LoadFigures(Protocol):
    """The engine's load as ``Engine.load()`` reports it (``streaming.engine.EngineLoad``)."""

    busy_fraction: float
    """Model-busy seconds per wall second over about the last 10 s (0–1)."""
    final_wait_s: float
    """Age of the oldest final waiting for the model (0 = none waits)."""
    partial_wait_s: float
    """Age of the oldest partial waiting for the model."""
    pending_finals: int
    pending_partials: int
    final_item_s: float
    """Moving average of the model cost of one final (0 = not measured yet)."""
    partial_item_s: float
    """Moving average of the model cost of one utterance in a partial batch (0 = not measured yet)."""


@dataclass(frozen=True)
class Costs:
    """Model seconds of the work streams cause, as measured at start-up (or seen live)."""

    partial_s: float
    """One partial step of one utterance (batch 1)."""
    final_s: float
    """One final of one utterance (batch 1)."""
    batch: int = 1
    """Size of the small partial batch that was timed too (1 = only batch 1 was)."""
    partial_batch_s: float = 0.0
    """The whole step of that small batch; the cost of other sizes is interpolated linearly."""

    def __post_init__(self) -> None:
        if not (self.partial_s > 0 and self.final_s > 0) or not all(
                math.isfinite(v) for v in (self.partial_s, self.final_s, self.partial_batch_s)):
            raise ValueError(f"costs must be positive and finite: {self}")
        if self.batch < 1 or (self.batch > 1 and self.partial_batch_s <= 0):
            raise ValueError(f"a batch of {self.batch} needs its measured cost: {self}")

    def partial_step_s(self, size: int) -> float:
        """Model seconds of one partial batch of ``size`` utterances.

        Linear in the size through the two measured points (a batch is never cheaper than one
        item of it; beyond the timed batch the same marginal cost per utterance is assumed).
        """
        size = max(1, size)
        if self.batch <= 1:  # only one item timed: no batching gain assumed
            return self.partial_s * size
        marginal_s = max(0.0, (self.partial_batch_s - self.partial_s) / (self.batch - 1))
        return self.partial_s + marginal_s * (size - 1)

    def describe(self) -> dict[str, Any]:
        """The figures in milliseconds, as ``/v1/info`` shows them."""
        facts: dict[str, Any] = {"partial_ms": round(self.partial_s * 1000, 1),
                                 "final_ms": round(self.final_s * 1000, 1)}
        if self.batch > 1:
            facts |= {"partial_batch": self.batch, "partial_batch_ms": round(self.partial_batch_s * 1000, 1)}
        return facts


@dataclass(frozen=True)
class CapacityPolicy:
    """What "can hold" means: the targets capacity is sized for, and how the decisions are damped."""

    latency_target_s: float = 1.5
    """Server-side final latency (speech end → final) the capacity is sized for."""
    max_busy_fraction: float = 0.85
    """Model-busy share of wall time the admitted streams may cause; above it new streams are refused."""
    step_s: float = 1.0
    """Audio between two partials of a stream (the sessions' default ``step_s``)."""
    utterance_s: float = 6.0
    """Seconds of stream per utterance (one final each); the dev-full set averages 7.2 s."""
    partial_batch_s: float = 0.5
    """The engine's partial batch target: a batch grows only while its cost stays within it."""
    max_batch: int = 8
    """The engine's largest batch."""
    max_streams: int = 32
    """The hard cap (``max_sessions``): capacity never exceeds it."""
    final_wait_share: float = 0.5
    """A final waiting longer than this share of ``latency_target_s`` marks the server full."""
    recover_margin: float = 0.1
    """The gate reopens only below ``max_busy_fraction`` minus this (and half the wait limits)."""
    recover_hold_s: float = 3.0
    """…and only after the load has stayed that low for this long."""
    recalibrate_hold_s: float = 10.0
    """A live capacity estimate replaces the current one after differing from it this long."""
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    """Bounds of ``retry_after_s``."""
    session_s: float = 60.0
    """Expected session length before any session has closed (for ``retry_after_s``)."""
    busy_window_s: float = 10.0
    """Span the engine's busy fraction is measured over (how long a burst keeps it high)."""

    def __post_init__(self) -> None:
        if not (self.latency_target_s > 0 and 0 < self.max_busy_fraction <= 1 and self.step_s > 0
                and self.utterance_s > 0 and self.max_batch >= 1 and self.max_streams >= 1):
            raise ValueError(f"invalid capacity policy: {self}")

    @property
    def final_wait_limit_s(self) -> float:
        return self.final_wait_share * self.latency_target_s


@dataclass(frozen=True)
class Estimate:
    """What :func:`capacity_from_costs` found, with the figures it found it by."""

    streams: int
    partial_batch: int
    """Partial batch size the engine would use at that many streams."""
    busy_fraction: float
    """Model-busy share those streams cause."""
    final_latency_s: float
    """Worst model wait of a final at that load: the running partial batch, then the final."""
    limited_by: Literal["busy", "latency", "max_streams"]


def partial_batch_size(costs: Costs, streams: int, policy: CapacityPolicy) -> int:
    """The partial batch the engine forms with ``streams`` waiting: as large as fits in ``partial_batch_s``.

    Mirrors the engine's rule (partial batches sized from the measured cost so a final that
    arrives meanwhile waits at most about ``partial_batch_s``); a single item always runs.
    """
    size = max(1, min(streams, policy.max_batch))
    while size > 1 and costs.partial_step_s(size) > policy.partial_batch_s:
        size -= 1
    return size


def load_at(costs: Costs, streams: int, policy: CapacityPolicy) -> tuple[int, float, float]:
    """(partial batch, busy fraction, final latency) of ``streams`` real-time streams.

    Each stream needs one partial per ``step_s`` (at the per-utterance cost of the batch the
    engine forms) and one final per ``utterance_s``:
    ``busy = streams × (partial_step_s(b) / b / step_s + final_s / utterance_s)``.
    A final waits at most for the partial batch running when it arrives, then runs:
    ``latency = partial_step_s(b) + final_s`` (queueing behind other finals is what the
    ``max_busy_fraction`` headroom pays for).
    """
    batch = partial_batch_size(costs, streams, policy)
    step_s = costs.partial_step_s(batch)
    busy = streams * (step_s / batch / policy.step_s + costs.final_s / policy.utterance_s)
    return batch, busy, step_s + costs.final_s


def capacity_from_costs(costs: Costs, policy: CapacityPolicy) -> Estimate:
    """The most streams whose load stays within ``max_busy_fraction`` and ``latency_target_s``.

    At least one stream: a server too slow even for one still serves one (its latency is
    then the model's; the caller logs that the target cannot be met).
    """
    chosen = None
    for streams in range(1, policy.max_streams + 1):
        batch, busy, latency_s = load_at(costs, streams, policy)
        if busy > policy.max_busy_fraction or latency_s > policy.latency_target_s:
            limit = "busy" if busy > policy.max_busy_fraction else "latency"
            if chosen is None:
                return Estimate(1, batch, round(busy, 4), round(latency_s, 4), limit)
            return Estimate(*chosen, limit)
        chosen = (streams, batch, round(busy, 4), round(latency_s, 4))
    assert chosen is not None  # max_streams >= 1
    return Estimate(*chosen, "max_streams")


@dataclass
class LoadGate:
    """Live load health with hysteresis: closes at once when a limit is crossed, reopens only after
    the load stayed clearly below every limit for ``recover_hold_s``."""

    policy: CapacityPolicy
    healthy: bool = True
    reason: str = ""
    """Why it is closed (the figure over its limit), for ``/readyz`` and the error message."""
    _low_since_s: float | None = None
    _retry_hint_s: float = 0.0

    def observe(self, load: LoadFigures, now_s: float) -> None:
        p = self.policy
        over = _over_limit(load, p)
        if over:
            self.healthy, self.reason, self._low_since_s = False, over, None
            self._retry_hint_s = _drain_estimate_s(load, p)
            return
        if self.healthy:
            return
        clear = (load.busy_fraction < p.max_busy_fraction - p.recover_margin
                 and load.final_wait_s < p.final_wait_limit_s / 2
                 and load.partial_wait_s < p.latency_target_s / 2)
        if not clear:
            self._low_since_s = None
            return
        if self._low_since_s is None:
            self._low_since_s = now_s
        if now_s - self._low_since_s >= p.recover_hold_s:
            self.healthy, self.reason, self._low_since_s = True, "", None

    def retry_after_s(self, now_s: float) -> float:
        """When the gate may reopen: the backlog's drain or the busy window's fall, then the hold
        (once the load is low, what is left of the hold)."""
        if self._low_since_s is None:
            return self._retry_hint_s + self.policy.recover_hold_s
        return max(0.0, self.policy.recover_hold_s - (now_s - self._low_since_s))


def _over_limit(load: LoadFigures, p: CapacityPolicy) -> str:
    """Which live figure is over its limit ("" = none), worded for an operator."""
    if load.busy_fraction >= p.max_busy_fraction:
        return f"model busy {load.busy_fraction:.0%} of the time (limit {p.max_busy_fraction:.0%})"
    if load.final_wait_s >= p.final_wait_limit_s:
        return f"a final has waited {load.final_wait_s:.2f} s for the model (limit {p.final_wait_limit_s:.2f} s)"
    if load.partial_wait_s >= p.latency_target_s:
        return f"a partial has waited {load.partial_wait_s:.2f} s for the model (limit {p.latency_target_s:.2f} s)"
    return ""


def _drain_estimate_s(load: LoadFigures, p: CapacityPolicy) -> float:
    """Seconds until the live figures could be under the reopening limits if no new work came:
    the queued work's model time, or the time the busy window needs to fall that far."""
    queued_s = load.pending_finals * load.final_item_s + load.pending_partials * load.partial_item_s
    reopen = max(p.max_busy_fraction - p.recover_margin, 0.05)
    busy_fall_s = p.busy_window_s * max(0.0, load.busy_fraction - reopen) / max(load.busy_fraction, 1e-9)
    return max(queued_s, busy_fall_s)


@dataclass(frozen=True)
class Decision:
    """Whether one more stream is admitted now; if not, why and when to come back."""

    admit: bool
    reason: str = ""
    retry_after_s: float | None = None


@dataclass
class Admission:
    """The server's admission state: a capacity (configured or measured, re-estimated live) and a load gate.

    Call :meth:`observe` with the engine's load figures now and then (the server does it every
    half second and at every decision), :meth:`decide` at each ``start``, and
    :meth:`session_closed` when an admitted session ends (its length feeds ``retry_after_s``).
    """

    policy: CapacityPolicy
    configured: int = 0
    """``capacity_streams`` from the options; 0 = use the measured ``costs``."""
    costs: Costs | None = None
    capacity: int = field(init=False)
    source: Literal["configured", "measured"] = field(init=False)
    estimate: Estimate | None = field(init=False, default=None)
    gate: LoadGate = field(init=False)
    _drift_since_s: float | None = field(init=False, default=None)
    _drift_sign: int = field(init=False, default=0)
    _session_s: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.gate = LoadGate(self.policy)
        if self.configured > 0:
            self.source, self.capacity = "configured", min(self.configured, self.policy.max_streams)
        elif self.costs is not None:
            self.source = "measured"
            self.estimate = capacity_from_costs(self.costs, self.policy)
            self.capacity = self.estimate.streams
        else:
            raise ValueError("a capacity needs either configured streams (> 0) or measured costs")

    def observe(self, load: LoadFigures, now_s: float) -> None:
        """Take the engine's live figures: update the gate and, for a measured capacity, re-estimate it."""
        self.gate.observe(load, now_s)
        if self.source == "measured" and load.partial_item_s > 0 and load.final_item_s > 0:
            self._recalibrate(Costs(load.partial_item_s, load.final_item_s), now_s)

    def _recalibrate(self, live: Costs, now_s: float) -> None:
        """Adopt the capacity the live per-item costs give once it has differed, the same way, for a while."""
        estimate = capacity_from_costs(live, self.policy)
        sign = (estimate.streams > self.capacity) - (estimate.streams < self.capacity)
        if sign == 0 or sign != self._drift_sign:
            self._drift_sign, self._drift_since_s = sign, (None if sign == 0 else now_s)
            return
        if self._drift_since_s is not None and now_s - self._drift_since_s >= self.policy.recalibrate_hold_s:
            self.capacity, self.estimate = estimate.streams, estimate
            self._drift_sign, self._drift_since_s = 0, None

    def decide(self, in_use: int, now_s: float) -> Decision:
        """Admit one more stream while ``in_use < capacity`` and the live load is healthy."""
        if in_use >= self.capacity:
            return Decision(False, f"all {self.capacity} streams of capacity are in use",
                            self._bounded(self._slot_frees_in_s(in_use)))
        if not self.gate.healthy and in_use > 0:
            # With no stream in, the load is someone else's (file jobs, a just-ended burst): refusing
            # the first stream would only keep the server empty, so the gate holds back the second on.
            return Decision(False, self.gate.reason, self._bounded(self.gate.retry_after_s(now_s)))
        return Decision(True)

    def session_closed(self, duration_s: float) -> None:
        """An admitted session ended after ``duration_s`` (a moving average of lengths)."""
        if duration_s >= 0 and math.isfinite(duration_s):
            self._session_s = duration_s if self._session_s is None else 0.8 * self._session_s + 0.2 * duration_s

    def _slot_frees_in_s(self, in_use: int) -> float:
        """Expected wait for the first of ``in_use`` sessions to end: the mean length over their number
        (memoryless lengths; we do not know how long each has left)."""
        mean_s = self.policy.session_s if self._session_s is None else self._session_s
        return mean_s / max(1, in_use)

    def _bounded(self, seconds: float) -> float:
        return round(min(self.policy.retry_max_s, max(self.policy.retry_min_s, seconds)), 1)

    def describe(self, in_use: int) -> dict[str, Any]:
        """The ``capacity`` section of ``/v1/info``."""
        facts: dict[str, Any] = {"streams": self.capacity, "in_use": in_use,
                                 "available": max(0, self.capacity - in_use) if self.gate.healthy else int(in_use == 0),
                                 "source": self.source, "healthy": self.gate.healthy,
                                 "latency_target_s": self.policy.latency_target_s,
                                 "max_busy_fraction": self.policy.max_busy_fraction}
        if not self.gate.healthy:
            facts["unhealthy_because"] = self.gate.reason
        if self.costs is not None:
            facts["measured"] = self.costs.describe()
        if self.estimate is not None:
            facts["estimate"] = {"partial_batch": self.estimate.partial_batch,
                                 "busy_fraction": self.estimate.busy_fraction,
                                 "final_latency_s": self.estimate.final_latency_s,
                                 "limited_by": self.estimate.limited_by}
        return facts
