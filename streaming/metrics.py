"""Prometheus metrics of one server: what it serves, how fast, and how loaded its engine is.

Each :class:`ServerMetrics` has its own registry (several servers may share a
process, e.g. in tests). The shell calls its methods as things happen; the
engine's queue depth and busy time are read when ``/metrics`` is scraped.
prometheus_client's metrics are thread-safe, so :meth:`ServerMetrics.batch`
may be called from the inference worker thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
BATCH_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
SESSION_SECONDS_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14_400)
LOOP_LAG_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class BusyWindow:
    """Busy fraction over roughly the last ``window_s``, from (time, cumulative busy seconds) samples."""

    def __init__(self, window_s: float = 60.0, now: float = 0.0, busy_s: float = 0.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque([(now, busy_s)])
        self._lock = threading.Lock()

    def update(self, now: float, busy_s: float) -> float:
        """Record a sample; the fraction of wall time busy since the oldest sample kept (0–1)."""
        with self._lock:
            samples = self._samples
            # Keep one sample at or before the window's start so the span covers the whole window.
            while len(samples) > 1 and samples[1][0] <= now - self.window_s:
                samples.popleft()
            t0, b0 = samples[0]
            samples.append((now, busy_s))
            span = now - t0
            if span <= 0:
                return 0.0
            return min(1.0, max(0.0, (busy_s - b0) / span))


class _EngineCollector(Collector):
    """Engine figures read at scrape time."""

    def __init__(self, pending: Callable[[], int], busy_s: Callable[[], float],
                 clock: Callable[[], float]) -> None:
        self.pending = pending
        self.busy_s = busy_s
        self.clock = clock
        self.window = BusyWindow(now=clock(), busy_s=busy_s())

    def collect(self) -> Iterator[Metric]:
        busy = self.busy_s()
        yield GaugeMetricFamily("asr_engine_queue_depth", "Requests (partials and finals) waiting for the "
                                "inference worker.", value=self.pending())
        yield CounterMetricFamily("asr_engine_busy_seconds", "Wall time the inference worker spent in "
                                  "batches; rate() of it is the busy fraction.", value=busy)
        yield GaugeMetricFamily("asr_engine_busy_ratio", "Fraction of wall time the inference worker was busy "
                                "over about the last minute (between scrapes).",
                                value=self.window.update(self.clock(), busy))

    def describe(self) -> Iterator[Metric]:
        return iter(())


class ServerMetrics:
    """The metrics of one :class:`~streaming.server.StreamingServer`; see :meth:`render`."""

    def __init__(self, engine_pending: Callable[[], int], engine_busy_s: Callable[[], float],
                 model: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("asr_sessions_active", "Sessions open now.", registry=r)
        self.sessions = Counter("asr_sessions", "Sessions closed, by outcome.", ["outcome"], registry=r)
        self.refused = Counter("asr_sessions_refused", "Sessions refused, by reason (unauthorized, "
                               "forbidden_origin, key_limit, too_many_sessions, overloaded, shutting_down…).",
                               ["reason"], registry=r)
        self.capacity = Gauge("asr_capacity_streams", "Streams the server admits at its latency target "
                              "(configured, or measured from the model's cost; /v1/info says which).", registry=r)
        self.session_seconds = Histogram("asr_session_duration_seconds", "Wall-clock length of closed sessions.",
                                         buckets=SESSION_SECONDS_BUCKETS, registry=r)
        self.utterances = Counter("asr_utterances", "Utterances of closed sessions.", registry=r)
        self.audio = Counter("asr_audio_in_seconds", "Audio received from clients (stream seconds).", registry=r)
        self.errors = Counter("asr_errors", "Error events sent to clients, by code.", ["code"], registry=r)
        self.transcriptions = Counter("asr_transcriptions", "File transcriptions (POST /v1/audio/transcriptions), "
                                      "by HTTP status.", ["status"], registry=r)
        self.first_partial = Histogram("asr_first_partial_latency_seconds", "Server-side time from an "
                                       "utterance's start to its first partial.", buckets=LATENCY_BUCKETS_S,
                                       registry=r)
        self.final = Histogram("asr_final_latency_seconds", "Server-side time from an utterance's end to its "
                               "final.", buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("asr_batch_size",
                                    "Utterances per engine batch, by kind (partial, final, eager, turn).", ["kind"], buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("asr_batch_seconds", "Compute time of one engine batch, by kind.",
                                       ["kind"], buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self.loop_lag = Histogram("asr_event_loop_lag_seconds", "How late the event loop ran a 20 ms timer "
                                  "(a stall caused by the server's own work on the loop).",
                                  buckets=LOOP_LAG_BUCKETS_S, registry=r)
        if model:
            Gauge("asr_model_info", "The served model (always 1).", ["model"], registry=r).labels(model).set(1)
        r.register(_EngineCollector(engine_pending, engine_busy_s, clock))

    # ---- called by the server shell ------------------------------------------------------------

    def session_opened(self) -> None:
        self.sessions_active.inc()

    def session_closed(self, outcome: str, duration_s: float, audio_s: float, utterances: int) -> None:
        """A session that :meth:`session_opened` counted has ended (``audio_s`` is already in audio_in)."""
        self.sessions_active.dec()
        self.sessions.labels(outcome).inc()
        self.session_seconds.observe(max(0.0, duration_s))
        self.utterances.inc(max(0, utterances))

    def set_capacity(self, streams: int) -> None:
        """The admission capacity was set or re-estimated."""
        self.capacity.set(streams)

    def session_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def transcription(self, status: int) -> None:
        self.transcriptions.labels(str(status)).inc()

    def audio_in(self, seconds: float) -> None:
        if seconds > 0:
            self.audio.inc(seconds)

    def first_partial_latency(self, seconds: float) -> None:
        self.first_partial.observe(max(0.0, seconds))

    def final_latency(self, seconds: float) -> None:
        self.final.observe(max(0.0, seconds))

    def batch(self, kind: str, size: int, seconds: float) -> None:
        """One engine batch; called from the inference worker thread (``engine.on_batch``)."""
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(max(0.0, seconds))

    def event_loop_lag(self, seconds: float) -> None:
        """One measurement of the event loop's lag (see ``server.LoopLagMonitor``)."""
        self.loop_lag.observe(max(0.0, seconds))

    # ---- scrape ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
