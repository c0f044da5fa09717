"""The inference engine: one worker thread owns the model and runs what the scheduler picks.

Sessions (on the asyncio loop) open utterances, feed audio and request partials or
finals; each request returns an ``asyncio.Future``. What runs next, in which batch, and
which work is stale or held back under overload is the pure policy of
:class:`~streaming.scheduler.Scheduler` (finals first, round-robin between sessions,
partial batches sized from measured cost; read its docstring). This module is the
plumbing around it: the thread, the lock, the backend and its per-utterance states, the
audio chunks, and the futures, settled on their loop with ``call_soon_threadsafe``. The
event loop never runs model code.

A batch that raises is retried item by item, so one poisoned utterance fails alone and
the others of its batch still get their results.

Smart turn detection adds two kinds of work. An *eager* decode (:meth:`Engine.request_eager`)
is the final of an utterance that stays open; when no audio follows it, the utterance's final
is that result, without a second decode. The end-of-turn model (:meth:`Engine.score_turn`)
runs on a thread of its own: a score takes tens of milliseconds and must not wait behind a
model batch. So does the speaker encoder of ``diarize`` (:meth:`Engine.embed_speakers`). :meth:`Engine.backlog` tells the server
how much work one session has waiting (it stops reading a client that sends faster than
the engine decodes), :meth:`Engine.load` how loaded the whole engine is (admission).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .results import UtteranceOptions
from .scheduler import Backlog, Batch, EngineLoad, Requested, Scheduler, WorkKind

if TYPE_CHECKING:  # the engine holds a backend, it never imports one: the server hands it over
    from .models.base import Backend, UtteranceState
    from .smart_turn import SmartTurnModel as TurnModel
    from .speaker_encoder import SpeakerEncoder

__all__ = ["Backlog", "Engine", "EngineClosed", "EngineLoad", "EngineStats", "WorkKind"]

log = logging.getLogger("streaming.engine")


class EngineClosed(RuntimeError):
    """The engine was stopped or the utterance discarded before the work ran."""


@dataclass(eq=False)
class _Slot:
    """The worker's side of one utterance: its backend state, audio not yet handed over, futures."""

    key: Hashable
    options: UtteranceOptions
    state: UtteranceState | None = None
    audio: list[np.ndarray] = field(default_factory=list)
    waiting: dict[WorkKind, asyncio.Future] = field(default_factory=dict)
    running: dict[WorkKind, asyncio.Future] = field(default_factory=dict)
    eager_result: object | None = None
    """The latest eager decode's result (the final while no audio follows it)."""


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
    partials_coalesced: int = 0
    """Partial requests answered by a decode already waiting for the same utterance."""
    partials_deferred: int = 0
    """Partial requests held back while finals were overloaded (decoded later, with all audio)."""
    partials_dropped: int = 0
    """Partials answered with nothing because the utterance's final was requested (stale)."""
    eager_batches: int = 0
    finals_from_eager: int = 0
    """Finals answered by an eager decode of the same audio (no second decode)."""
    turn_scores: int = 0
    """End-of-turn model calls (items)."""


class Engine:
    """Owns a :class:`Backend`; see the module docstring."""

    def __init__(self, backend: Backend, max_batch: int = 8, threads: int = 0, partial_batch_s: float = 0.5,
                 partial_shed_s: float = 1.0, turn_model: TurnModel | None = None,
                 speaker_encoder: SpeakerEncoder | None = None) -> None:
        self.backend = backend
        self.turn_model = turn_model
        """The end-of-turn model (``score(audios) -> probabilities``) of smart turn detection, if loaded."""
        self.speaker_encoder = speaker_encoder
        """The speaker encoder (``embed_windows(audio)``) of ``diarize``, if loaded."""
        self._turns = _SideWorker("turn", "end-of-turn model", self._score_turns)
        self._speakers = _SideWorker("speaker", "speaker encoder", self._embed_speakers)
        self.max_batch = max(1, max_batch)
        self.threads = threads
        self.partial_batch_s = partial_batch_s
        self.partial_shed_s = partial_shed_s
        self._scheduler = Scheduler(self.max_batch, partial_batch_s, partial_shed_s, now_s=time.monotonic())
        self._stats = EngineStats()
        self._slots: dict[Hashable, _Slot] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self.on_batch: Callable[[str, int, float], None] | None = None
        """Called from the worker after each batch with (kind, size, seconds) — metrics."""
        self._turns.on_batch = self._speakers.on_batch = self._side_batch

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._thread.start()
        if self.turn_model is not None:
            self._turns.start()
        if self.speaker_encoder is not None:
            self._speakers.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            slots = list(self._slots.values())
            self._slots.clear()
            for slot in slots:
                self._scheduler.discard(slot.key)
            self._cond.notify_all()
        for slot in slots:
            _settle_all(slot.waiting, exc=EngineClosed("engine stopped"))
        self._turns.stop()
        self._speakers.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    # ---- figures (any thread) ----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests waiting for the worker (a load indicator)."""
        with self._cond:
            return self._scheduler.pending

    @property
    def utterances(self) -> int:
        with self._cond:
            return self._scheduler.utterances

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the counters since start."""
        with self._cond:
            shed = self._scheduler.shed
            return dataclasses.replace(self._stats, partials_coalesced=shed.coalesced,
                                       partials_deferred=shed.deferred, partials_dropped=shed.dropped)

    def load(self) -> EngineLoad:
        """How loaded the engine is now (busy fraction, waits, queue, measured costs): for admission."""
        with self._cond:
            return self._scheduler.load(time.monotonic())

    def backlog(self, group: Hashable) -> Backlog:
        """What ``group`` has waiting: the server stops reading a client whose backlog is too large."""
        with self._cond:
            return self._scheduler.backlog(group)

    # ---- API for sessions (call from the event loop) -----------------------------------------

    def open(self, key: Hashable, options: UtteranceOptions, group: Hashable = None) -> None:
        """Open an utterance; ``group`` (the session) is what fairness is counted by (default: the key)."""
        with self._cond:
            self._scheduler.open(key, key if group is None else group)
            self._slots[key] = _Slot(key, options)

    def feed(self, key: Hashable, audio: np.ndarray) -> None:
        """Add audio to an open utterance (ignored once it is discarded or finished)."""
        with self._cond:
            slot = self._slots.get(key)
            if slot is None:
                return
            slot.audio.append(audio)
            self._scheduler.feed(key, audio.size)
            if audio.size:
                slot.eager_result = None
                if self._scheduler.cancel(key, WorkKind.EAGER):  # speculation on audio that has grown
                    _settle(slot.waiting.pop(WorkKind.EAGER, None), value=None)

    def request_partial(self, key: Hashable) -> asyncio.Future:
        """A hypothesis over all audio fed by the time it runs; resolves to None if it became stale."""
        return self._request(key, WorkKind.PARTIAL)

    def request_final(self, key: Hashable) -> asyncio.Future:
        """The utterance's final result; the utterance is closed once it is delivered."""
        return self._request(key, WorkKind.FINAL)

    def request_eager(self, key: Hashable) -> asyncio.Future:
        """The final of the audio fed so far, the utterance staying open; None if dropped (overload,
        new audio, or the final asked for first). A final with no audio since is this result."""
        return self._request(key, WorkKind.EAGER)

    def score_turn(self, audio: np.ndarray) -> asyncio.Future:
        """The end-of-turn model's probability that the turn ending ``audio`` is complete."""
        return self._turns.submit(audio)

    def embed_speakers(self, audio: np.ndarray) -> asyncio.Future:
        """The speaker encoder's windows (``SpeakerWindow``: times and a unit vector) over one utterance."""
        return self._speakers.submit(audio)

    def discard(self, key: Hashable) -> None:
        """Forget an utterance (client gone); its pending futures fail with EngineClosed."""
        with self._cond:
            slot = self._slots.pop(key, None)
            self._scheduler.discard(key)
        if slot is not None:
            _settle_all(slot.waiting, exc=EngineClosed("discarded"))

    def _request(self, key: Hashable, kind: WorkKind) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            slot = self._slots.get(key)
            if slot is None or not self._running:
                future.set_exception(EngineClosed(f"no open utterance {key!r}"))
                return future
            outcome = self._scheduler.request(key, kind, time.monotonic())
            if outcome.dropped_partial:
                _settle(slot.waiting.pop(WorkKind.PARTIAL, None), value=None)
            if outcome.dropped_eager:
                _settle(slot.waiting.pop(WorkKind.EAGER, None), value=None)
            if outcome.status is Requested.STALE:
                future.set_result(None)
                return future
            if outcome.status is Requested.REUSED:
                self._slots.pop(key, None)
                self._stats.finals_from_eager += 1
                future.set_result(slot.eager_result)
                return future
            if outcome.status is Requested.FROM_EAGER:
                self._stats.finals_from_eager += 1
                slot.running[WorkKind.FINAL] = future  # settled with the running eager decode's outcome
                return future
            if outcome.status is Requested.JOINED:
                # Share the answer; a future its caller cancelled is replaced where it sits.
                where = slot.waiting if kind in slot.waiting else slot.running
                previous = where.get(kind)
                if previous is not None and not previous.done():
                    return previous
                where[kind] = future
                return future
            slot.waiting[kind] = future
            self._cond.notify()
        return future

    # ---- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                work = [self._take(key, batch.kind) for key in batch.keys]
            self._process(batch, work)

    def _next_batch(self) -> Batch | None:
        """Under the lock: wait until the scheduler gives a batch (None once stopped)."""
        while self._running:
            now_s = time.monotonic()
            batch = self._scheduler.next_batch(now_s)
            if batch is not None:
                return batch
            wake_s = self._scheduler.next_wake_s(now_s)  # a partial held back under overload
            self._cond.wait(None if wake_s is None else max(0.0, wake_s - now_s))
        return None

    def _take(self, key: Hashable, kind: WorkKind) -> tuple[_Slot, list[np.ndarray]]:
        """Under the lock: move an item's future to running and take the audio fed since its last batch."""
        slot = self._slots[key]
        future = slot.waiting.pop(kind, None)
        if future is not None:
            slot.running[kind] = future
        audio, slot.audio = slot.audio, []
        return slot, audio

    def _process(self, batch: Batch, work: list[tuple[_Slot, list[np.ndarray]]]) -> None:
        kind = batch.kind.value
        t0 = time.perf_counter()
        outcomes: list[object] = [self._prepare(slot, audio) for slot, audio in work]
        ready = [i for i, o in enumerate(outcomes) if o is None]
        if ready:
            try:
                results = self._call_backend([work[i][0] for i in ready], batch.kind)
            except Exception:  # noqa: BLE001 - retried one by one so one poisoned utterance fails alone
                log.warning("%s batch of %d failed; retrying its items one by one", kind, len(ready), exc_info=True)
                results = [self._run_alone(work[i][0], batch.kind) for i in ready]
            for i, result in zip(ready, results, strict=True):
                outcomes[i] = result
        elapsed = time.perf_counter() - t0
        succeeded = [o for o in outcomes if not isinstance(o, Exception)]
        for result in succeeded:
            result.stats.setdefault("batch", len(work))
            result.stats.setdefault("batch_ms", round(elapsed * 1000, 1))
        if succeeded and self.on_batch is not None:
            try:
                self.on_batch(kind, len(work), elapsed)
            except Exception:  # noqa: BLE001 - a metrics fault must not stop inference
                log.exception("on_batch hook failed")
        self._finish(batch, work, outcomes, elapsed)

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

    def _score_turns(self, audios: list[np.ndarray]) -> list[float]:
        scores = [float(p) for p in self.turn_model.score(audios)]
        with self._cond:
            self._stats.turn_scores += len(audios)
        return scores

    def _embed_speakers(self, audios: list[np.ndarray]) -> list[list]:
        return [self.speaker_encoder.embed_windows(audio) for audio in audios]

    def _side_batch(self, kind: str, size: int, seconds: float) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(kind, size, seconds)
            except Exception:  # noqa: BLE001 - a metrics fault must not stop the side models
                log.exception("on_batch hook failed")

    def _call_backend(self, slots: list[_Slot], kind: WorkKind) -> list:
        states = [slot.state for slot in slots]
        if kind is WorkKind.FINAL:
            results = self.backend.finalize(states)
        elif kind is WorkKind.EAGER:
            results = self.backend.finalize_open(states)
        else:
            results = self.backend.step(states)
        if len(results) != len(states):
            raise RuntimeError(f"backend returned {len(results)} results for {len(states)} utterances")
        return results

    def _run_alone(self, slot: _Slot, kind: WorkKind) -> object:
        """One item of a failed batch on its own: its result, or the exception it raises."""
        try:
            return self._call_backend([slot], kind)[0]
        except Exception as exc:  # noqa: BLE001 - delivered to that utterance's session only
            log.error("%s of utterance %r failed: %r", kind.value, slot.key, exc)
            return exc

    def _finish(self, batch: Batch, work: list[tuple[_Slot, list[np.ndarray]]], outcomes: list[object],
                elapsed: float) -> None:
        """Report the batch to the scheduler, count it, close what it closed, settle its futures."""
        failed = [slot.key for (slot, _), o in zip(work, outcomes, strict=True) if isinstance(o, Exception)]
        orphans: list[tuple[_Slot, BaseException]] = []
        with self._cond:
            for key in self._scheduler.done(batch, elapsed, failed, time.monotonic()):
                slot = self._slots.pop(key, None)
                if slot is not None and slot.waiting:
                    # A failed utterance's state is unusable: what it still waits for fails the same way.
                    outcome = outcomes[[s.key for s, _ in work].index(key)]
                    orphans.append((slot, outcome if isinstance(outcome, Exception) else EngineClosed("closed")))
            self._count(batch, len(failed), elapsed)
            running = [slot.running.pop(batch.kind, None) for slot, _ in work]
            joined: list[asyncio.Future | None] = [None] * len(work)
            if batch.kind is WorkKind.EAGER:
                for i, ((slot, _), outcome) in enumerate(zip(work, outcomes, strict=True)):
                    joined[i] = slot.running.pop(WorkKind.FINAL, None)  # a final that joined this decode
                    if not isinstance(outcome, Exception) and key_open(self._slots, slot):
                        slot.eager_result = outcome
            self._cond.notify()
        for future, final, outcome in zip(running, joined, outcomes, strict=True):
            for f in (future, final):
                if isinstance(outcome, Exception):
                    _settle(f, exc=outcome)
                else:
                    _settle(f, value=outcome)
        for slot, exc in orphans:
            _settle_all(slot.waiting, exc=exc)

    def _count(self, batch: Batch, failed: int, elapsed: float) -> None:
        st = self._stats
        st.errors += failed
        if failed == len(batch.items):
            return  # nothing came of it: not a batch in the figures (as before the scheduler split)
        st.batches += 1
        st.items += len(batch.items)
        st.busy_s += elapsed
        st.max_batch_seen = max(st.max_batch_seen, len(batch.items))
        if batch.kind is WorkKind.FINAL:
            st.final_batches += 1
        elif batch.kind is WorkKind.EAGER:
            st.eager_batches += 1
        else:
            st.partial_batches += 1


class _SideWorker:
    """A thread of its own for a small model beside the ASR one (the end-of-turn model, the speaker
    encoder): its calls take milliseconds and must not wait behind a model batch. Everything
    submitted meanwhile runs as one batch, in order; a failure fails that batch's futures only."""

    def __init__(self, kind: str, what: str, run: Callable[[list[np.ndarray]], list]) -> None:
        self.kind, self.what, self._run_batch = kind, what, run
        self.on_batch: Callable[[str, int, float], None] | None = None
        self._queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self._cond = threading.Condition()
        """Guards ``_queue`` (apart from the engine's lock: a notify must never wake the wrong worker)."""
        self._thread: threading.Thread | None = None
        self._running = False

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"{self.kind}-worker", daemon=True)
        self._thread.start()

    def submit(self, item: np.ndarray) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            if not self._running:
                future.set_exception(EngineClosed(f"no {self.what}" if self._thread is None else "engine stopped"))
                return future
            self._queue.append((item, future))
            self._cond.notify()
        return future

    def stop(self) -> None:
        with self._cond:
            self._running = False
            queued, self._queue = self._queue, []
            self._cond.notify_all()
        for _, future in queued:
            _settle(future, exc=EngineClosed("engine stopped"))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._queue:
                    self._cond.wait()
                if not self._running:
                    return
                work, self._queue = self._queue, []
            t0 = time.perf_counter()
            try:
                results = self._run_batch([item for item, _ in work])
            except Exception as exc:  # noqa: BLE001 - its futures fail; the session copes without the answer
                log.error("%s failed on %d item(s): %r", self.what, len(work), exc)
                for _, future in work:
                    _settle(future, exc=exc)
                continue
            if self.on_batch is not None:
                self.on_batch(self.kind, len(work), time.perf_counter() - t0)
            for (_, future), result in zip(work, results, strict=True):
                _settle(future, value=result)


def key_open(slots: dict[Hashable, _Slot], slot: _Slot) -> bool:
    """Whether ``slot`` is still the engine's open utterance for its key (not closed or discarded)."""
    return slots.get(slot.key) is slot


def _settle_all(futures: dict[WorkKind, asyncio.Future], exc: BaseException) -> None:
    for future in futures.values():
        _settle(future, exc=exc)
    futures.clear()


def _settle(future: asyncio.Future | None, value=None, exc: BaseException | None = None) -> None:
    """Resolve a future from any thread, on its own loop (no-op if nobody waits any more)."""
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
