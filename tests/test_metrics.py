"""Prometheus metrics: the pure parts with a fake clock, then /metrics after real sessions."""

import asyncio
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from streaming.evaluation import dev_clips
from benchmarks.loadgen import stream_audio, with_silence
from streaming.metrics import BusyWindow, ServerMetrics
from tests.fakes import CountingBackend
from tests.helpers import background_server


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


BUSY = [
    # [(now, busy_s), ...] after BusyWindow(window_s=60, now=0, busy_s=0) -> fraction of the last sample
    ([(10, 5)], 0.5),
    ([(10, 10)], 1.0),
    ([(10, 0)], 0.0),
    ([(0, 0)], 0.0),  # no time passed
    ([(30, 15), (60, 15)], 0.25),
    ([(30, 30), (100, 30)], 0.0),  # busy early, idle for the last 70 s: the window forgot the busy part
    ([(50, 0), (70, 10), (120, 40)], 40 / 70),  # from the sample at 50 (the last at or before 120-60)
    ([(10, 50)], 1.0),  # clamped
]


@pytest.mark.parametrize("updates,expected", BUSY)
def test_busy_window(updates, expected):
    window = BusyWindow(window_s=60, now=0, busy_s=0)
    for now, busy in updates:
        value = window.update(now, busy)
    assert value == pytest.approx(expected)


def test_server_metrics_count_what_they_are_told():
    pending, busy, now = [3], [0.0], [100.0]
    m = ServerMetrics(lambda: pending[0], lambda: busy[0], model="counting", clock=lambda: now[0])
    m.session_opened()
    m.session_opened()
    m.session_closed("completed", duration_s=12.0, audio_s=10.0, utterances=2)
    m.session_refused("unauthorized")
    m.session_refused("unauthorized")
    m.session_refused("key_limit")
    m.error("invalid_option")
    m.audio_in(1.5)
    m.audio_in(0.5)
    m.first_partial_latency(0.4)
    m.final_latency(0.8)
    m.final_latency(2.5)
    m.batch("partial", 3, 0.05)
    m.batch("final", 1, 0.2)
    busy[0], now[0] = 5.0, 110.0
    got = samples(m.render().decode())
    assert got[("asr_sessions_active", ())] == 1
    assert got[("asr_sessions_total", (("outcome", "completed"),))] == 1
    assert got[("asr_sessions_refused_total", (("reason", "unauthorized"),))] == 2
    assert got[("asr_sessions_refused_total", (("reason", "key_limit"),))] == 1
    assert got[("asr_errors_total", (("code", "invalid_option"),))] == 1
    assert got[("asr_audio_in_seconds_total", ())] == 2.0
    assert got[("asr_utterances_total", ())] == 2
    assert got[("asr_session_duration_seconds_sum", ())] == 12.0
    assert got[("asr_first_partial_latency_seconds_count", ())] == 1
    assert got[("asr_final_latency_seconds_count", ())] == 2
    assert got[("asr_final_latency_seconds_bucket", (("le", "1.0"),))] == 1
    assert got[("asr_batch_size_count", (("kind", "partial"),))] == 1
    assert got[("asr_batch_size_sum", (("kind", "partial"),))] == 3
    assert got[("asr_batch_seconds_sum", (("kind", "final"),))] == pytest.approx(0.2)
    assert got[("asr_engine_queue_depth", ())] == 3
    assert got[("asr_engine_busy_seconds_total", ())] == 5.0
    assert got[("asr_engine_busy_ratio", ())] == pytest.approx(0.5)
    assert got[("asr_model_info", (("model", "counting"),))] == 1


def test_each_server_has_its_own_registry_and_batch_is_thread_safe():
    a = ServerMetrics(lambda: 0, lambda: 0.0)
    b = ServerMetrics(lambda: 0, lambda: 0.0)

    def worker():
        for _ in range(1000):
            a.batch("partial", 2, 0.001)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert samples(a.render().decode())[("asr_batch_size_count", (("kind", "partial"),))] == 4000
    assert ("asr_batch_size_count", (("kind", "partial"),)) not in samples(b.render().decode())


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


async def test_metrics_after_real_sessions():
    clip = {c.id: c for c in dev_clips()}["lib_left"]
    audio = with_silence(clip.load(), 0.5, 1.5)
    with background_server(CountingBackend(), api_keys=["metrics-test-key-000"]) as handle:
        base = handle.url.replace("ws://", "http://").removesuffix("/v1/stream")
        url = f"{handle.url}?token=metrics-test-key-000"
        with pytest.raises(InvalidStatus):
            await stream_audio(handle.url, audio, speed=0)  # no key: refused
        result = await stream_audio(url, audio, speed=0)
        assert result.close_code == 1000 and len(result.finals) == 1
        for _ in range(500):  # the session is counted closed once its handler returns
            if not handle.server.sessions:
                break
            await asyncio.sleep(0.02)
        status, kind, text = await asyncio.to_thread(_get, f"{base}/metrics?token=metrics-test-key-000")
    assert status == 200 and kind.startswith("text/plain; version=")
    got = samples(text)
    assert got[("asr_sessions_active", ())] == 0
    assert sum(v for (name, _), v in got.items() if name == "asr_sessions_total") == 1
    assert got[("asr_sessions_refused_total", (("reason", "unauthorized"),))] == 1
    assert 0 < got[("asr_audio_in_seconds_total", ())] <= audio.size / 16000 + 0.01
    assert got[("asr_batch_size_count", (("kind", "final"),))] >= 1
    assert got[("asr_final_latency_seconds_count", ())] == 1
    assert got[("asr_first_partial_latency_seconds_count", ())] == 1
    assert got[("asr_engine_queue_depth", ())] == 0
    assert got[("asr_engine_busy_seconds_total", ())] > 0
    assert ("asr_model_info", (("model", "counting"),)) in got
