"""Admission's I/O shell: the start-up self-benchmark and the watch over the engine's live load.

:class:`AdmissionControl` is what the server asks whether one more stream may
start (:meth:`~AdmissionControl.refusal`), whether it is ready (``/readyz``)
and what its capacity is (``/v1/info``); the policy itself is the pure
:mod:`streaming.capacity`. At start-up, unless ``capacity_streams`` is
configured, :func:`measure_costs` times the backend's partial step and final in
a worker thread (the server is not ready meanwhile); then the engine's load
figures are sampled every :data:`SAMPLE_INTERVAL_S` and at every decision.

The audio timed is a dev clip when the evaluation folder is there (real speech:
the decoder runs as many tokens as it will in service), else a synthetic burst;
the engine's live per-item costs correct the estimate once real traffic runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .capacity import Admission, CapacityPolicy, Costs
from .protocol import ProtocolError
from .results import SAMPLE_RATE_HZ, UtteranceOptions
from .scheduler import LOAD_WINDOW_S

if TYPE_CHECKING:
    from .config import Config
    from .engine import Engine
    from .models.base import Backend

log = logging.getLogger("streaming.capacity")
SAMPLE_INTERVAL_S = 0.5
"""How often the engine's load is sampled between decisions (the gate's hold is counted on these)."""
PARTIAL_AUDIO_S = 3.0
"""Audio of the utterance a timed partial decodes (mid-utterance: partials re-decode all of it)."""
FINAL_AUDIO_S = 6.0
"""Audio of the utterance a timed final decodes (about the average utterance)."""
PROBE_BATCH = 3
"""The small partial batch timed besides batch 1 (what batching saves per utterance)."""


def probe_audio(seconds: float = FINAL_AUDIO_S) -> tuple[np.ndarray, str]:
    """``seconds`` of speech to time the model on, and where it came from."""
    from .evaluation import dev_clips

    try:
        clips = sorted((c for c in dev_clips() if c.language == "en"), key=lambda c: -c.duration_s)
        if clips:
            audio = clips[0].load()
            if audio.size >= seconds * SAMPLE_RATE_HZ:
                return audio[: int(seconds * SAMPLE_RATE_HZ)], f"dev clip {clips[0].id}"
    except (OSError, ValueError, KeyError) as exc:  # no evaluation folder here: synthetic audio will do
        log.debug("no dev clip for the capacity probe: %r", exc)
    return synthetic_audio(seconds), "synthetic"


def synthetic_audio(seconds: float) -> np.ndarray:
    """Noise shaped like speech in loudness (syllable-rate bursts), so the model runs and is not skipped as silent."""
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    noise = np.random.default_rng(0).standard_normal(n)
    return (0.1 * envelope * noise).astype(np.float32)


def measure_costs(backend: Backend, audio: np.ndarray | None = None, batch: int = PROBE_BATCH) -> Costs:
    """Time one partial (batch 1), a partial batch of ``batch`` and one final (about 2 s for tiny.en on 2 cores)."""
    if audio is None:
        audio, _ = probe_audio()
    partial_audio = audio[: int(PARTIAL_AUDIO_S * SAMPLE_RATE_HZ)]
    # The better of two runs each: the first call of a new shape also pays one-off set-up costs.
    partial_s = _best_of_two(backend, "step", partial_audio, 1)
    batch_s = _best_of_two(backend, "step", partial_audio, batch) if batch > 1 else 0.0
    final_s = _best_of_two(backend, "finalize", audio, 1)
    return Costs(partial_s=partial_s, final_s=final_s, batch=batch if batch > 1 else 1, partial_batch_s=batch_s)


def _probe(backend: Backend) -> tuple[Costs, str]:
    """The costs measured on :func:`probe_audio`, and which audio that was (for the log)."""
    audio, source = probe_audio()
    return measure_costs(backend, audio), source


def _states(backend: Backend, audio: np.ndarray, count: int) -> list:
    """``count`` fresh utterances holding ``audio`` (fresh: a partial changes its utterance's state)."""
    states = []
    for _ in range(count):
        state = backend.new_utterance(UtteranceOptions())
        state.append_audio(audio)
        states.append(state)
    return states


def _best_of_two(backend: Backend, method: str, audio: np.ndarray, count: int) -> float:
    """Seconds ``backend.step`` or ``.finalize`` takes on ``count`` fresh utterances of ``audio``, best of two."""
    call = getattr(backend, method)
    best_s = float("inf")
    for _ in range(2):
        states = _states(backend, audio, count)
        t0 = time.perf_counter()
        call(states)
        best_s = min(best_s, time.perf_counter() - t0)
    return max(best_s, 1e-6)


class AdmissionControl:
    """One server's admission: capacity (configured or measured at :meth:`start`), live load, decisions."""

    def __init__(self, engine: Engine, config: Config, clock: Callable[[], float] = time.monotonic,
                 on_capacity: Callable[[int], None] | None = None) -> None:
        opts = config.server
        self.engine = engine
        self.enabled_load = opts.load_admission
        self.configured = opts.capacity_streams
        self.policy = CapacityPolicy(
            latency_target_s=opts.latency_target_s, max_busy_fraction=opts.max_busy_fraction,
            step_s=config.session.step_s, partial_batch_s=config.engine.partial_batch_s,
            max_batch=config.engine.max_batch, max_streams=opts.max_sessions, busy_window_s=LOAD_WINDOW_S)
        self.clock = clock
        self.on_capacity = on_capacity
        """Called with the capacity whenever it is set or changes (the metrics gauge)."""
        self.admission: Admission | None = None
        self._sampler: asyncio.Task | None = None

    async def start(self, backend: Backend) -> None:
        """Fix the capacity: the configured one, or measure the model (in a worker thread); start sampling."""
        if self.configured > 0:
            self.admission = Admission(self.policy, configured=self.configured)
            log.info("capacity: %d streams (configured)", self.admission.capacity)
        else:
            t0 = time.perf_counter()
            costs, source = await asyncio.to_thread(_probe, backend)
            self.admission = Admission(self.policy, costs=costs)
            estimate = self.admission.estimate
            log.info("capacity: %d streams (measured on %s in %.1f s: partial %.0f ms, %d in %.0f ms, final %.0f ms; "
                     "busy %.0f%%, limited by %s)", self.admission.capacity, source, time.perf_counter() - t0,
                     costs.partial_s * 1000, costs.batch, costs.partial_batch_s * 1000, costs.final_s * 1000,
                     estimate.busy_fraction * 100, estimate.limited_by)
            if estimate.final_latency_s > self.policy.latency_target_s:
                log.warning("capacity: one stream's final alone takes about %.2f s, over the %.2f s latency target",
                            estimate.final_latency_s, self.policy.latency_target_s)
        self._announce()
        if self.enabled_load:
            self._sampler = asyncio.get_running_loop().create_task(self._sample())

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None

    def refusal(self, in_use: int) -> ProtocolError | None:
        """``overloaded`` (with ``retry_after_s``) when one more stream would be beyond capacity or the load."""
        admission = self._current()
        self._observe()
        decision = admission.decide(in_use, self.clock())
        if decision.admit:
            return None
        return ProtocolError("overloaded", f"the server is at capacity ({decision.reason}); retry in about "
                             f"{decision.retry_after_s:g} s", retry_after_s=decision.retry_after_s)

    def readiness(self, in_use: int) -> tuple[bool, str]:
        """(whether one more stream would be admitted, why not)."""
        refusal = self.refusal(in_use)
        return refusal is None, "" if refusal is None else refusal.message

    def describe(self, in_use: int) -> dict[str, Any]:
        """The ``capacity`` section of ``/v1/info``."""
        return self._current().describe(in_use)

    def session_closed(self, duration_s: float) -> None:
        self._current().session_closed(duration_s)

    def _current(self) -> Admission:
        if self.admission is None:
            raise RuntimeError("admission asked before start(): the capacity is not known yet")
        return self.admission

    def _observe(self) -> None:
        if not self.enabled_load or self.admission is None:
            return
        before = self.admission.capacity
        self.admission.observe(self.engine.load(), self.clock())
        if self.admission.capacity != before:
            log.info("capacity: %d streams (was %d; re-estimated from the engine's live costs)",
                     self.admission.capacity, before)
            self._announce()

    def _announce(self) -> None:
        if self.on_capacity is not None and self.admission is not None:
            self.on_capacity(self.admission.capacity)

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            try:
                self._observe()
            except Exception:  # noqa: BLE001 - sampling goes on (each decision observes again anyway)
                log.exception("capacity: sampling the engine load failed")
