"""What the inference worker runs next: the batching policy over every session's utterances, pure.

No threads, no asyncio, no model and no clock of its own: every method that needs the
time takes ``now_s`` (the worker passes ``time.monotonic()``, tests a fake clock). The
worker (:mod:`streaming.engine`) asks :meth:`Scheduler.next_batch`, runs the batch and
reports :meth:`Scheduler.done`. The policy:

- **Finals before eager decodes before partials**: a final is what a user waits for at an
  endpoint; an *eager* decode (smart turn detection: the final of a still-open utterance at a
  pause that probably ends the turn) is speculative, so it never holds a final back.
- **An eager decode is the final when nothing followed it**: a final asked for while the
  eager decode of the same audio runs joins it, and one asked for after it finished (no audio
  fed since) is answered by it at once. New audio makes a waiting eager decode stale.
- **Eager decodes are dropped first under overload**: asked for while shedding (below), one
  is answered with nothing; a waiting one does not run while shedding.
- **Round-robin between groups** (sessions) within a kind: the group that waited longest
  since its last turn goes first, one item per group, and only then is the batch filled
  oldest request first; so a session flooding the engine gets one turn per round.
- **Batch size**: at most ``max_batch``; a partial batch holds as many items as fit in
  ``partial_batch_s`` at the measured cost of one partial item, so a final that arrives
  meanwhile waits about that long at most.
- **No stale work**: one waiting partial per utterance (a new request joins it, and when it
  runs it decodes all audio fed by then); a final request drops the waiting partial, and a
  partial asked for after the final is answered with nothing.
- **Partials degrade first under overload** (see :meth:`Scheduler.shedding`): while the
  finals' queue delay or their estimated work ahead exceeds ``partial_shed_s`` (and for
  ``partial_shed_s`` after), a partial is dispatched only once it has waited
  ``partial_shed_s``, so each utterance gets about one partial per ``partial_shed_s``
  instead of one per step and the model time goes to finals. Nothing is lost: the partial
  then decodes all audio received. Finals are never held, dropped or reordered for this.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum

SAMPLE_RATE_HZ = 16_000
LOAD_WINDOW_S = 10.0
"""Default span of the sliding window the busy fraction is measured over."""
_EMA_WEIGHT = 0.3
"""Weight of the newest batch in the moving average of an item's cost."""


class WorkKind(Enum):
    """What a request asks the model for."""

    PARTIAL = "partial"
    FINAL = "final"
    EAGER = "eager"
    """A final of an utterance that stays open (smart turn detection's eager end of turn)."""


class Requested(Enum):
    """What became of a request (:meth:`Scheduler.request`)."""

    QUEUED = "queued"
    """A new request now waits."""
    JOINED = "joined"
    """One of that kind already waits (a final: or runs) for the utterance: it answers both."""
    STALE = "stale"
    """A partial or eager decode for an utterance whose final is already asked for, or an eager
    decode asked for under overload: answer it with nothing."""
    FROM_EAGER = "from_eager"
    """A final whose audio the running eager decode already covers: that decode answers it."""
    REUSED = "reused"
    """A final whose audio a finished eager decode covered: answer it with that result; the
    utterance is closed."""


@dataclass(frozen=True)
class RequestOutcome:
    status: Requested
    dropped_partial: bool = False
    """A final request dropped the utterance's waiting partial: answer that one with nothing."""
    dropped_eager: bool = False
    """A final request dropped the utterance's waiting eager decode: answer that one with nothing."""


@dataclass(frozen=True)
class BatchItem:
    key: Hashable
    samples: int
    """Audio samples fed since the utterance's last batch, to hand to the backend now."""
    waited_s: float
    """How long the request waited for this batch."""


@dataclass(frozen=True)
class Batch:
    """Work the worker runs as one backend call."""

    number: int
    kind: WorkKind
    items: tuple[BatchItem, ...]
    started_s: float

    @property
    def keys(self) -> tuple[Hashable, ...]:
        return tuple(item.key for item in self.items)


@dataclass(frozen=True)
class Backlog:
    """Work one group (session) has waiting in the engine."""

    finals: int
    """Finals requested and not yet delivered (waiting or running)."""
    audio_s: float
    """Audio fed to utterances that have a request waiting, not yet taken by a batch."""


@dataclass(frozen=True)
class EngineLoad:
    """How loaded the engine is right now: the figures admission decides by."""

    busy_fraction: float
    """Model-busy seconds / wall seconds over the last ``window_s`` (the running batch counts)."""
    window_s: float
    final_wait_s: float
    """Age of the oldest waiting (not yet running) final; 0 when none waits."""
    partial_wait_s: float
    """Age of the oldest waiting partial; 0 when none waits."""
    pending_finals: int
    """Finals waiting, not running."""
    pending_partials: int
    running: int
    """Items in the batches being decoded now."""
    final_item_s: float
    """Moving average of one final item's share of its batch's cost (0 = not measured yet)."""
    partial_item_s: float
    work_ahead_s: float
    """Estimated model time of the waiting requests (count × measured item cost)."""
    utterances: int
    groups: int
    shedding: bool
    """Partials are being held back (overload; see :meth:`Scheduler.shedding`)."""


@dataclass(frozen=True)
class ShedCounts:
    """Partial work not done as asked, since start."""

    coalesced: int = 0
    """Partial requests that joined one already waiting (one decode answered both)."""
    deferred: int = 0
    """Partial requests held back while shedding (each counted once)."""
    dropped: int = 0
    """Partials answered with nothing because the utterance's final was asked for."""


@dataclass
class _Request:
    since_s: float
    order: int
    deferred: bool = False


@dataclass(eq=False)
class _Utterance:
    group: Hashable
    samples: int = 0
    """Fed, not yet taken by a batch."""
    waiting: dict[WorkKind, _Request] = field(default_factory=dict)
    running: WorkKind | None = None
    batch: int | None = None
    final_asked: bool = False
    """A final was requested (waiting or running): later partials are stale."""
    eager_fresh: bool = False
    """An eager decode finished and no audio was fed since: it is the final."""
    final_joins_eager: bool = False
    """The final was asked for while an eager decode of the same audio ran: that batch closes it."""


class Scheduler:
    """The batching policy; see the module docstring. Not thread-safe: the worker holds its lock."""

    def __init__(self, max_batch: int = 8, partial_batch_s: float = 0.5, partial_shed_s: float = 1.0,
                 window_s: float = LOAD_WINDOW_S, now_s: float = 0.0) -> None:
        if max_batch < 1 or partial_batch_s <= 0 or partial_shed_s <= 0 or window_s <= 0:
            raise ValueError(f"max_batch >= 1 and positive partial_batch_s, partial_shed_s, window_s needed "
                             f"(got {max_batch}, {partial_batch_s}, {partial_shed_s}, {window_s})")
        self.max_batch = max_batch
        self.partial_batch_s = partial_batch_s
        self.partial_shed_s = partial_shed_s
        self.window_s = window_s
        self._origin_s = now_s
        self._utterances: dict[Hashable, _Utterance] = {}
        self._order = itertools.count()
        self._batches = itertools.count(1)
        self._turns = itertools.count(1)
        self._last_turn: dict[Hashable, int] = {}
        """Group → the turn it last had an item in a batch (round-robin between sessions)."""
        self._item_s = {kind: 0.0 for kind in WorkKind}
        self._busy: deque[tuple[float, float]] = deque()
        """(start_s, end_s) of finished batches that may still overlap the load window."""
        self._in_flight: dict[int, Batch] = {}
        self._shed_until_s = float("-inf")
        self._shed = ShedCounts()

    # ---- utterances and requests ---------------------------------------------------------------

    def open(self, key: Hashable, group: Hashable) -> None:
        """Start tracking an utterance of ``group`` (the unit of fairness)."""
        if key in self._utterances:
            raise ValueError(f"utterance {key!r} is already open")
        self._utterances[key] = _Utterance(group)

    def feed(self, key: Hashable, samples: int) -> bool:
        """Count audio fed to an utterance; False when it is not open (discarded or finished)."""
        if samples < 0:
            raise ValueError(f"negative sample count {samples}")
        utt = self._utterances.get(key)
        if utt is None:
            return False
        utt.samples += samples
        if samples:
            utt.eager_fresh = False
        return True

    def cancel(self, key: Hashable, kind: WorkKind) -> bool:
        """Withdraw a waiting (not running) request; True when one was waiting (answer it with nothing)."""
        utt = self._utterances.get(key)
        return utt is not None and utt.waiting.pop(kind, None) is not None

    def request(self, key: Hashable, kind: WorkKind, now_s: float) -> RequestOutcome:
        """Ask for a partial or the final of an open utterance (KeyError if it is not open)."""
        utt = self._utterances.get(key)
        if utt is None:
            raise KeyError(f"no open utterance {key!r}")
        if kind is WorkKind.PARTIAL:
            if utt.final_asked:
                self._count(dropped=1)
                return RequestOutcome(Requested.STALE)
            if kind in utt.waiting:
                self._count(coalesced=1)
                return RequestOutcome(Requested.JOINED)
        elif kind is WorkKind.EAGER:
            if utt.final_asked or self.shedding(now_s):
                self._count(dropped=1)
                return RequestOutcome(Requested.STALE)
            if kind in utt.waiting or utt.running is kind:
                return RequestOutcome(Requested.JOINED)
        elif utt.final_asked:
            return RequestOutcome(Requested.JOINED)
        else:
            return self._request_final(key, utt, now_s)
        utt.waiting[kind] = _Request(now_s, next(self._order))
        self._observe(now_s)
        return RequestOutcome(Requested.QUEUED)

    def _request_final(self, key: Hashable, utt: _Utterance, now_s: float) -> RequestOutcome:
        """A final: from the eager decode of the same audio when there is one, else queued."""
        utt.final_asked = True
        dropped = utt.waiting.pop(WorkKind.PARTIAL, None) is not None
        if dropped:
            self._count(dropped=1)
        if utt.samples == 0 and utt.running is WorkKind.EAGER:
            utt.final_joins_eager = True
            return RequestOutcome(Requested.FROM_EAGER, dropped_partial=dropped)
        if utt.samples == 0 and utt.eager_fresh and utt.running is None:
            del self._utterances[key]
            self._forget_idle_groups()
            return RequestOutcome(Requested.REUSED, dropped_partial=dropped)
        dropped_eager = utt.waiting.pop(WorkKind.EAGER, None) is not None
        utt.waiting[WorkKind.FINAL] = _Request(now_s, next(self._order))
        self._observe(now_s)
        return RequestOutcome(Requested.QUEUED, dropped_partial=dropped, dropped_eager=dropped_eager)

    def discard(self, key: Hashable) -> bool:
        """Forget an utterance (its session is gone); a batch it is in finishes without it."""
        found = self._utterances.pop(key, None) is not None
        self._forget_idle_groups()
        return found

    def __contains__(self, key: Hashable) -> bool:
        return key in self._utterances

    # ---- batches -------------------------------------------------------------------------------

    def next_batch(self, now_s: float) -> Batch | None:
        """Take the next batch to run, or None when nothing may run now (see :meth:`next_wake_s`)."""
        self._observe(now_s)
        shedding = self.shedding(now_s)
        for kind in (WorkKind.FINAL, WorkKind.EAGER, WorkKind.PARTIAL):
            if kind is WorkKind.EAGER and shedding:
                continue
            ready = [(key, utt) for key, utt in self._utterances.items()
                     if kind in utt.waiting and utt.running is None]
            if kind is WorkKind.PARTIAL and shedding:
                ready = self._eligible_while_shedding(ready, now_s)
            if ready:
                return self._take(kind, ready, now_s)
        return None

    def next_wake_s(self, now_s: float) -> float | None:
        """When a held-back partial may run (the worker sleeps until then); None if none is held."""
        if not self.shedding(now_s):
            return None
        held = [utt.waiting[WorkKind.PARTIAL].since_s + self.partial_shed_s
                for utt in self._utterances.values()
                if WorkKind.PARTIAL in utt.waiting and utt.running is None]
        later = [t for t in [*held, self._shed_until_s] if t > now_s] if held else []
        return min(later) if later else None

    def done(self, batch: Batch, cost_s: float, failed_keys: Iterable[Hashable], now_s: float) -> list[Hashable]:
        """Record a finished batch; returns the utterances it closed (its finals, and failed items)."""
        failed = set(failed_keys)
        self._in_flight.pop(batch.number, None)
        self._busy.append((now_s - max(0.0, cost_s), now_s))
        self._prune(now_s)
        if len(failed) < len(batch.items) and batch.items:
            item_s = max(0.0, cost_s) / len(batch.items)
            old = self._item_s[batch.kind]
            self._item_s[batch.kind] = item_s if old <= 0 else (1 - _EMA_WEIGHT) * old + _EMA_WEIGHT * item_s
        closed = []
        for key in batch.keys:
            utt = self._utterances.get(key)
            if utt is None or utt.batch != batch.number:
                continue  # discarded while it ran
            utt.running, utt.batch = None, None
            if batch.kind is WorkKind.FINAL or key in failed or utt.final_joins_eager:
                del self._utterances[key]
                closed.append(key)
            elif batch.kind is WorkKind.EAGER:
                utt.eager_fresh = utt.samples == 0
        self._forget_idle_groups()
        self._observe(now_s)
        return closed

    def _take(self, kind: WorkKind, ready: list[tuple[Hashable, _Utterance]], now_s: float) -> Batch:
        """Round-robin: one item per group, longest since its last turn first; then oldest first."""
        ready.sort(key=lambda e: (self._last_turn.get(e[1].group, 0), e[1].waiting[kind].order))
        limit = self.batch_limit(kind)
        chosen: list[tuple[Hashable, _Utterance]] = []
        groups: set[Hashable] = set()
        for key, utt in ready:
            if utt.group not in groups and len(chosen) < limit:
                chosen.append((key, utt))
                groups.add(utt.group)
        taken = {key for key, _ in chosen}
        rest = sorted((e for e in ready if e[0] not in taken), key=lambda e: e[1].waiting[kind].order)
        chosen += rest[: limit - len(chosen)]
        turn, number = next(self._turns), next(self._batches)
        items = []
        for key, utt in chosen:
            self._last_turn[utt.group] = turn
            request = utt.waiting.pop(kind)
            items.append(BatchItem(key, utt.samples, now_s - request.since_s))
            utt.samples, utt.running, utt.batch = 0, kind, number
        batch = Batch(number, kind, tuple(items), now_s)
        self._in_flight[number] = batch
        return batch

    def batch_limit(self, kind: WorkKind) -> int:
        """Finals: ``max_batch``. Partials: as many as fit in ``partial_batch_s`` at the measured cost.

        On a GPU an item costs little and batches stay large; on a CPU, where cost grows with
        the batch, partials go in small batches so finals are never stuck behind a long one.
        """
        item_s = self._item_s[WorkKind.PARTIAL]
        if kind is WorkKind.FINAL or item_s <= 0:
            return self.max_batch
        return max(1, min(self.max_batch, int(self.partial_batch_s / item_s)))

    # ---- overload ------------------------------------------------------------------------------

    def shedding(self, now_s: float) -> bool:
        """Whether partials are held back now: finals overloaded now or within ``partial_shed_s``.

        Overloaded means the oldest waiting final has waited more than ``partial_shed_s``, or
        the waiting finals' estimated work (count × measured final item cost) exceeds it. The
        state lasts ``partial_shed_s`` after the last overloaded moment seen, since finals-first
        already keeps partials back while finals wait: the point is the time just after.
        """
        return now_s < self._shed_until_s or self._finals_overloaded(now_s)

    def _finals_overloaded(self, now_s: float) -> bool:
        waiting = self._waiting(WorkKind.FINAL)
        if not waiting:
            return False
        oldest_s = now_s - min(r.since_s for r in waiting)
        return oldest_s > self.partial_shed_s or len(waiting) * self._item_s[WorkKind.FINAL] > self.partial_shed_s

    def _observe(self, now_s: float) -> None:
        if self._finals_overloaded(now_s):
            self._shed_until_s = max(self._shed_until_s, now_s + self.partial_shed_s)

    def _eligible_while_shedding(self, ready: list[tuple[Hashable, _Utterance]], now_s: float):
        """Partials that have waited ``partial_shed_s``; the others are held (and counted once)."""
        eligible = []
        for key, utt in ready:
            request = utt.waiting[WorkKind.PARTIAL]
            if now_s - request.since_s >= self.partial_shed_s:
                eligible.append((key, utt))
            elif not request.deferred:
                request.deferred = True
                self._count(deferred=1)
        return eligible

    # ---- figures -------------------------------------------------------------------------------

    def oldest_wait_s(self, kind: WorkKind, now_s: float) -> float:
        """Age of the oldest waiting request of ``kind`` (0 when none waits)."""
        waiting = self._waiting(kind)
        return max(0.0, now_s - min(r.since_s for r in waiting)) if waiting else 0.0

    def item_s(self, kind: WorkKind) -> float:
        """Moving average of one item's cost in a batch of ``kind`` (0 = not measured yet)."""
        return self._item_s[kind]

    def busy_fraction(self, now_s: float) -> float:
        """Model-busy / wall time over the window (or since start, when younger); in-flight counts."""
        start_s = now_s - self.window_s
        span_s = min(self.window_s, now_s - self._origin_s)
        if span_s <= 0:
            return 0.0
        intervals = list(self._busy) + [(b.started_s, now_s) for b in self._in_flight.values()]
        busy_s = sum(max(0.0, min(end, now_s) - max(begin, start_s)) for begin, end in intervals)
        return min(1.0, busy_s / span_s)

    def load(self, now_s: float) -> EngineLoad:
        finals, partials = self._waiting(WorkKind.FINAL), self._waiting(WorkKind.PARTIAL)
        final_item_s, partial_item_s = self._item_s[WorkKind.FINAL], self._item_s[WorkKind.PARTIAL]
        return EngineLoad(
            busy_fraction=self.busy_fraction(now_s), window_s=self.window_s,
            final_wait_s=self.oldest_wait_s(WorkKind.FINAL, now_s),
            partial_wait_s=self.oldest_wait_s(WorkKind.PARTIAL, now_s),
            pending_finals=len(finals), pending_partials=len(partials),
            running=sum(len(b.items) for b in self._in_flight.values()),
            final_item_s=final_item_s, partial_item_s=partial_item_s,
            work_ahead_s=len(finals) * final_item_s + len(partials) * partial_item_s,
            utterances=len(self._utterances), groups=len({u.group for u in self._utterances.values()}),
            shedding=self.shedding(now_s))

    def backlog(self, group: Hashable) -> Backlog:
        """What ``group`` has waiting: the server stops reading a client whose backlog is too large."""
        finals = samples = 0
        for utt in self._utterances.values():
            if utt.group != group:
                continue
            finals += WorkKind.FINAL in utt.waiting or utt.running is WorkKind.FINAL or utt.final_joins_eager
            if utt.waiting:
                samples += utt.samples
        return Backlog(finals, samples / SAMPLE_RATE_HZ)

    @property
    def pending(self) -> int:
        """Requests waiting (not running)."""
        return sum(len(utt.waiting) for utt in self._utterances.values())

    @property
    def utterances(self) -> int:
        return len(self._utterances)

    @property
    def shed(self) -> ShedCounts:
        return self._shed

    # ---- helpers -------------------------------------------------------------------------------

    def _waiting(self, kind: WorkKind) -> list[_Request]:
        return [utt.waiting[kind] for utt in self._utterances.values() if kind in utt.waiting]

    def _count(self, coalesced: int = 0, deferred: int = 0, dropped: int = 0) -> None:
        s = self._shed
        self._shed = ShedCounts(s.coalesced + coalesced, s.deferred + deferred, s.dropped + dropped)

    def _prune(self, now_s: float) -> None:
        while self._busy and self._busy[0][1] <= now_s - self.window_s:
            self._busy.popleft()

    def _forget_idle_groups(self) -> None:
        live = {utt.group for utt in self._utterances.values()}
        for group in [g for g in self._last_turn if g not in live]:
            del self._last_turn[group]
