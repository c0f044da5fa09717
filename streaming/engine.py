"""The inference engine: one worker thread owns the model and batches all sessions' work.

Sessions (on the asyncio loop) open utterances, feed audio and request partials
or finals; each request returns an ``asyncio.Future``. The worker thread
repeatedly takes a batch — finals first (they are what users wait for at an
endpoint), then partials, oldest request first, at most ``max_batch`` — appends
the audio that arrived meanwhile to each utterance state and runs one batched
``Backend.finalize`` or ``Backend.step``. A partial always decodes all audio
received by the time the batch starts, so stale partial work is never done:
there is at most one pending partial per utterance. The event loop never runs
model code.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from .models.base import Backend, UtteranceOptions, UtteranceState

log = logging.getLogger("streaming.engine")


class EngineClosed(RuntimeError):
    """The engine was stopped or the utterance discarded before the work ran."""


@dataclass
class _Slot:
    key: Hashable
    options: UtteranceOptions
    state: UtteranceState | None = None
    audio: list[np.ndarray] = field(default_factory=list)
    partial: asyncio.Future | None = None
    partial_since: float = 0.0
    final: asyncio.Future | None = None
    final_since: float = 0.0
    busy: bool = False


@dataclass
class EngineStats:
    batches: int = 0
    partial_batches: int = 0
    final_batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    max_batch_seen: int = 0
    errors: int = 0


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

    def open(self, key: Hashable, options: UtteranceOptions) -> None:
        with self._cond:
            self._slots[key] = _Slot(key, options)

    def feed(self, key: Hashable, audio: np.ndarray) -> None:
        with self._cond:
            slot = self._slots.get(key)
            if slot is not None:
                slot.audio.append(audio)

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
        """Pick the next batch under the lock: finals first, oldest request first."""
        for kind in ("final", "partial"):
            ready = [s for s in self._slots.values() if getattr(s, kind) is not None and not s.busy]
            if not ready:
                continue
            ready.sort(key=lambda s: getattr(s, f"{kind}_since"))
            batch = []
            for slot in ready[: self._batch_limit(kind)]:
                future = getattr(slot, kind)
                setattr(slot, kind, None)
                audio, slot.audio = slot.audio, []
                slot.busy = True
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
        try:
            states = []
            for slot, audio, _ in batch:
                if slot.state is None:
                    slot.state = self.backend.new_utterance(slot.options)
                if audio:
                    slot.state.append_audio(np.concatenate(audio))
                states.append(slot.state)
            results = self.backend.finalize(states) if kind == "final" else self.backend.step(states)
        except Exception as exc:  # noqa: BLE001 - reported to every waiting session
            log.exception("%s batch of %d failed", kind, len(batch))
            self.stats.errors += 1
            self._finish(batch, kind, exc=exc)
            return
        elapsed = time.perf_counter() - t0
        st = self.stats
        st.batches += 1
        st.items += len(batch)
        st.busy_s += elapsed
        st.max_batch_seen = max(st.max_batch_seen, len(batch))
        if kind == "final":
            st.final_batches += 1
        else:
            st.partial_batches += 1
            item_s = elapsed / len(batch)
            self._partial_item_s = item_s if self._partial_item_s <= 0 else 0.7 * self._partial_item_s + 0.3 * item_s
        for result in results:
            result.stats.setdefault("batch", len(batch))
            result.stats.setdefault("batch_ms", round(elapsed * 1000, 1))
        self._finish(batch, kind, results=results)

    def _finish(self, batch, kind: str, results=None, exc: Exception | None = None) -> None:
        with self._cond:
            for slot, _, _ in batch:
                slot.busy = False
                if kind == "final" or exc is not None:
                    self._slots.pop(slot.key, None)
            self._cond.notify()
        for i, (_, _, future) in enumerate(batch):
            if exc is not None:
                _settle(future, exc=exc)
            else:
                _settle(future, value=results[i])


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
