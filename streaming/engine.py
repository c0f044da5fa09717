"""The inference engine: one worker thread owns the model and batches all sessions' work.

Sessions (on the asyncio loop) open utterances, feed audio and request partials
or finals; each request returns an ``asyncio.Future``. The worker thread
repeatedly takes a batch — finals first (they are what users wait for at an
endpoint), then partials; within a kind, round-robin over *groups* (sessions),
so one client flooding the engine with work gets one turn like every other
session and cannot delay their finals; at most ``max_batch`` — appends
the audio that arrived meanwhile to each utterance state and runs one batched
``Backend.finalize`` or ``Backend.step``. A partial always decodes all audio
received by the time the batch starts, so stale partial work is never done:
there is at most one pending partial per utterance. The event loop never runs
model code.

A batch that raises is retried item by item, so one poisoned utterance fails
alone and the others of its batch still get their results. :meth:`Engine.backlog`
tells the server how much work one session has waiting, so it can stop reading a
client that sends audio faster than the engine decodes it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .results import UtteranceOptions

if TYPE_CHECKING:  # the engine holds a backend, it never imports one: the server hands it over
    from .models.base import Backend, UtteranceState

log = logging.getLogger("streaming.engine")


class EngineClosed(RuntimeError):
    """The engine was stopped or the utterance discarded before the work ran."""


@dataclass
class _Slot:
    key: Hashable
    options: UtteranceOptions
    group: Hashable = None
    """The session the utterance belongs to: the unit of fairness."""
    state: UtteranceState | None = None
    audio: list[np.ndarray] = field(default_factory=list)
    audio_samples: int = 0
    """Samples in ``audio`` (fed, not yet given to the backend)."""
    running: str | None = None
    """Kind of the batch this utterance is in right now, if any."""
    partial: asyncio.Future | None = None
    partial_since: float = 0.0
    final: asyncio.Future | None = None
    final_since: float = 0.0
    @property
    def busy(self) -> bool:
        return self.running is not None


@dataclass(frozen=True)
class Backlog:
    """Work one group (session) has waiting in the engine."""

    finals: int
    """Finals requested and not yet delivered (waiting or running)."""
    audio_s: float
    """Audio fed to utterances that have a request waiting, not yet taken by a batch."""


@dataclass
class EngineStats:
    batches: int = 0
    partial_batches: int = 0
    final_batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    max_batch_seen: int = 0
    errors: int = 0
    """Items whose work failed (after the one-by-one retry)."""


class Engine:
    """Owns a :class:`Backend`; see the module docstring."""

    def __init__(self, backend: Backend, max_batch: int = 8, threads: int = 0, partial_batch_s: float = 0.5) -> None:
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.threads = threads
        self.partial_batch_s = partial_batch_s
        self._partial_item_s = 0.0
        """Moving average of the cost of one utterance in a partial batch (0 = not measured yet)."""
        self.stats = EngineStats()
        self._slots: dict[Hashable, _Slot] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self._order = itertools.count()
        self._turns = itertools.count(1)
        self._last_turn: dict[Hashable, int] = {}
        """Group → the turn it last had a batch item in (round-robin between sessions)."""
        self.on_batch: Callable[[str, int, float], None] | None = None
        """Called from the worker after each batch with (kind, size, seconds) — metrics."""

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            slots = list(self._slots.values())
            self._slots.clear()
            self._cond.notify_all()
        for slot in slots:
            _settle(slot.partial, exc=EngineClosed("engine stopped"))
            _settle(slot.final, exc=EngineClosed("engine stopped"))
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def pending(self) -> int:
        """Requests waiting for the worker (a load indicator)."""
        with self._cond:
            return sum((s.partial is not None) + (s.final is not None) for s in self._slots.values())

    @property
    def utterances(self) -> int:
        with self._cond:
            return len(self._slots)

    # ---- API for sessions (call from the event loop) -----------------------------------------

    def open(self, key: Hashable, options: UtteranceOptions, group: Hashable = None) -> None:
        """Open an utterance; ``group`` (the session) is what fairness is counted by (default: the key)."""
        with self._cond:
            self._slots[key] = _Slot(key, options, group=key if group is None else group)

    def feed(self, key: Hashable, audio: np.ndarray) -> None:
        with self._cond:
            slot = self._slots.get(key)
            if slot is not None:
                slot.audio.append(audio)
                slot.audio_samples += audio.size

    def backlog(self, group: Hashable) -> Backlog:
        """What ``group`` has waiting: the server stops reading a client whose backlog is too large."""
        finals = 0
        samples = 0
        with self._cond:
            for slot in self._slots.values():
                if slot.group != group:
                    continue
                finals += slot.final is not None or slot.running == "final"
                if slot.final is not None or slot.partial is not None:
                    samples += slot.audio_samples
        return Backlog(finals, samples / 16_000)

    def request_partial(self, key: Hashable) -> asyncio.Future:
        return self._request(key, "partial")

    def request_final(self, key: Hashable) -> asyncio.Future:
        return self._request(key, "final")

    def discard(self, key: Hashable) -> None:
        """Forget an utterance (client gone); its pending futures fail with EngineClosed."""
        with self._cond:
            slot = self._slots.pop(key, None)
        if slot is not None:
            _settle(slot.partial, exc=EngineClosed("discarded"))
            _settle(slot.final, exc=EngineClosed("discarded"))

    def _request(self, key: Hashable, kind: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            slot = self._slots.get(key)
            if slot is None or not self._running:
                future.set_exception(EngineClosed(f"no open utterance {key!r}"))
                return future
            previous = getattr(slot, kind)
            if previous is not None and not previous.done():
                return previous
            if kind == "final" and slot.partial is not None:
                # The utterance is ending: a partial not yet started is stale, drop it.
                stale, slot.partial = slot.partial, None
                if not stale.done():
                    stale.set_result(None)
            setattr(slot, kind, future)
            setattr(slot, f"{kind}_since", next(self._order))
            self._cond.notify()
        return future

    # ---- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                batch, kind = self._take_batch()
                while batch is None and self._running:
                    self._cond.wait()
                    batch, kind = self._take_batch()
                if not self._running:
                    return
            self._process(batch, kind)

    def _take_batch(self) -> tuple[list[tuple[_Slot, list[np.ndarray], asyncio.Future]] | None, str]:
        """Pick the next batch under the lock: finals first, then round-robin between groups.

        Groups that waited longest since their last turn go first, one item each;
        the rest of the batch is filled, oldest request first, only once every
        waiting group has an item in it.
        """
        for kind in ("final", "partial"):
            ready = [s for s in self._slots.values() if getattr(s, kind) is not None and not s.busy]
            if not ready:
                continue
            ready.sort(key=lambda s: (self._last_turn.get(s.group, 0), getattr(s, f"{kind}_since")))
            limit = self._batch_limit(kind)
            chosen: list[_Slot] = []
            groups: set[Hashable] = set()
            for slot in ready:
                if slot.group not in groups and len(chosen) < limit:
                    chosen.append(slot)
                    groups.add(slot.group)
            extra = sorted((s for s in ready if s not in chosen), key=lambda s: getattr(s, f"{kind}_since"))
            chosen += extra[: limit - len(chosen)]
            turn = next(self._turns)
            batch = []
            for slot in chosen:
                self._last_turn[slot.group] = turn
                future = getattr(slot, kind)
                setattr(slot, kind, None)
                audio, slot.audio, slot.audio_samples = slot.audio, [], 0
                slot.running = kind
                batch.append((slot, audio, future))
            return batch, kind
        return None, ""

    def _batch_limit(self, kind: str) -> int:
        """Finals: ``max_batch``. Partials: as many as fit in ``partial_batch_s`` at the measured cost.

        On a GPU an item costs little and batches stay large; on a CPU, where cost grows with
        the batch, partials go in small batches so finals are never stuck behind a long one.
        """
        if kind == "final" or self._partial_item_s <= 0:
            return self.max_batch
        return max(1, min(self.max_batch, int(self.partial_batch_s / self._partial_item_s)))

    def _process(self, batch: list[tuple[_Slot, list[np.ndarray], asyncio.Future]], kind: str) -> None:
        t0 = time.perf_counter()
        outcomes: list[object] = [self._prepare(slot, audio) for slot, audio, _ in batch]
        ready = [i for i, o in enumerate(outcomes) if o is None]
        if ready:
            try:
                results = self._call_backend([batch[i][0] for i in ready], kind)
            except Exception:  # noqa: BLE001 - retried one by one so one poisoned utterance fails alone
                log.warning("%s batch of %d failed; retrying its items one by one", kind, len(ready), exc_info=True)
                results = [self._run_alone(batch[i][0], kind) for i in ready]
            for i, result in zip(ready, results, strict=True):
                outcomes[i] = result
        elapsed = time.perf_counter() - t0
        failed = sum(isinstance(o, Exception) for o in outcomes)
        self.stats.errors += failed
        if failed < len(batch):
            self._account(kind, len(batch), elapsed, [o for o in outcomes if not isinstance(o, Exception)])
        self._finish(batch, kind, outcomes)

    def _account(self, kind: str, size: int, elapsed: float, results: list) -> None:
        st = self.stats
        st.batches += 1
        st.items += size
        st.busy_s += elapsed
        st.max_batch_seen = max(st.max_batch_seen, size)
        if kind == "final":
            st.final_batches += 1
        else:
            st.partial_batches += 1
            item_s = elapsed / size
            self._partial_item_s = item_s if self._partial_item_s <= 0 else 0.7 * self._partial_item_s + 0.3 * item_s
        for result in results:
            result.stats.setdefault("batch", size)
            result.stats.setdefault("batch_ms", round(elapsed * 1000, 1))
        if self.on_batch is not None:
            try:
                self.on_batch(kind, size, elapsed)
            except Exception:  # noqa: BLE001 - a metrics fault must not stop inference
                log.exception("on_batch hook failed")

    def _prepare(self, slot: _Slot, chunks: list[np.ndarray]) -> Exception | None:
        """Create the utterance state if needed and append its new audio; the exception if that fails."""
        try:
            if slot.state is None:
                slot.state = self.backend.new_utterance(slot.options)
            if chunks:
                slot.state.append_audio(np.concatenate(chunks))
        except Exception as exc:  # noqa: BLE001 - delivered to that utterance's session only
            log.error("utterance %r: could not take its audio: %r", slot.key, exc)
            return exc
        return None

    def _call_backend(self, slots: list[_Slot], kind: str) -> list:
        states = [slot.state for slot in slots]
        results = self.backend.finalize(states) if kind == "final" else self.backend.step(states)
        if len(results) != len(states):
            raise RuntimeError(f"backend returned {len(results)} results for {len(states)} utterances")
        return results

    def _run_alone(self, slot: _Slot, kind: str) -> object:
        """One item of a failed batch on its own: its result, or the exception it raises."""
        try:
            return self._call_backend([slot], kind)[0]
        except Exception as exc:  # noqa: BLE001 - delivered to that utterance's session only
            log.error("%s of utterance %r failed: %r", kind, slot.key, exc)
            return exc

    def _finish(self, batch, kind: str, outcomes: list[object]) -> None:
        with self._cond:
            for (slot, _, _), outcome in zip(batch, outcomes, strict=True):
                slot.running = None
                if kind == "final" or isinstance(outcome, Exception):
                    self._slots.pop(slot.key, None)
            live = {slot.group for slot in self._slots.values()}
            for group in [g for g in self._last_turn if g not in live]:
                del self._last_turn[group]
            self._cond.notify()
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                _settle(future, exc=outcome)
            else:
                _settle(future, value=outcome)


def _settle(future: asyncio.Future | None, value=None, exc: BaseException | None = None) -> None:
    """Resolve a future from the worker thread, on its own loop (no-op if nobody waits any more)."""
    if future is None:
        return
    loop = future.get_loop()

    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # loop closed: nobody is waiting any more
        pass
