"""The server shell over real loopback sockets, with a stand-in model (fast)."""

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import websockets

from streaming.audio import float_to_pcm16
from streaming.evaluation import dev_clips
from benchmarks.loadgen import stream_audio, with_silence
from tests.fakes import CountingBackend
from tests.helpers import background_server, collect_until_close, running_server


@pytest.fixture(scope="module")
def speech():
    clips = {c.id: c for c in dev_clips()}
    return with_silence(clips["lib_left"].load(), 0.5, 1.5)


async def recv_json(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def test_good_stream_json_and_msgpack(speech):
    with running_server(CountingBackend()) as url:
        for use_msgpack in (False, True):
            r = await stream_audio(url, speech, speed=0, use_msgpack=use_msgpack)
            types = [e["type"] for _, e in r.events]
            assert types[0] == "speech_start" and types[-1] == "end", types
            assert r.close_code == 1000
            assert len(r.finals) == 1 and r.finals[0]["text"].startswith("w0 w1")


async def test_bad_clients_never_disturb_a_good_stream(speech):
    backend = CountingBackend(delay_s=0.01)
    with running_server(backend, max_message_bytes=64 * 1024) as url:
        good = asyncio.create_task(stream_audio(url, speech, speed=4.0))

        async def bad(frames, expect_code, expect_close):
            async with websockets.connect(url) as ws:
                for f in frames:
                    await ws.send(f)
                events = await collect_until_close(ws)
                errors = [e for e in events if e["type"] == "error"]
                assert errors and errors[0]["code"] == expect_code, events
                if expect_close:
                    assert ws.close_code == expect_close
                return events

        start = json.dumps({"type": "start"})
        await asyncio.gather(
            bad([b"\x00\x01" * 100], "audio_before_start", 1008),
            bad(["{not json", start, json.dumps({"type": "stop"})], "bad_message", 1000),
            bad([json.dumps({"type": "start", "encoding": "flac"})], "unsupported_encoding", 1003),
            bad([json.dumps({"type": "start", "sample_rate": 96000})], "unsupported_sample_rate", 1003),
            bad([start, b"\x00" * (65 * 1024)], "message_too_large", 1009),
            bad([start, start, json.dumps({"type": "stop"})], "already_started", 1000),
            bad([json.dumps({"type": "start", "encoding": "pcm_f32le"}),
                 np.array([np.nan] * 100, "<f4").tobytes()], "invalid_audio", 1007),
            bad([start, b"\x01\x02\x03", json.dumps({"type": "stop"})], "partial_sample", 1000),
            bad([json.dumps({"type": "start", "window_s": 3})], "invalid_option", 1008),
        )
        r = await good
        assert r.close_code == 1000 and len(r.finals) == 1 and not r.errors
        assert r.finals[0]["text"].startswith("w0 w1 w2")


async def test_too_many_sessions(speech):
    with background_server(CountingBackend(), max_sessions=2) as handle:
        url = handle.url
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await a.send(json.dumps({"type": "start"}))
            await b.send(json.dumps({"type": "start"}))
            assert (await recv_json(a))["type"] == "ready"
            async with websockets.connect(url) as c:
                events = await collect_until_close(c)
                assert events[0]["code"] == "too_many_sessions" and events[0]["fatal"]
                assert c.close_code == 1013
        # Once they are gone, a new session is accepted.
        for _ in range(100):
            if not handle.server.sessions:
                break
            await asyncio.sleep(0.05)
        r = await stream_audio(url, speech, speed=0)
        assert r.close_code == 1000


async def test_idle_and_vanishing_clients(speech):
    backend = CountingBackend()
    with background_server(backend, idle_timeout_s=0.5) as handle:
        url = handle.url
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "start"}))
            events = await collect_until_close(ws, timeout=5)
            assert events[-1]["code"] == "idle_timeout" and ws.close_code == 1008
        # A client that vanishes mid-utterance: its engine state is released.
        ws = await websockets.connect(url)
        await ws.send(json.dumps({"type": "start"}))
        await ws.send(float_to_pcm16(speech[:16000 * 3]))
        await asyncio.sleep(0.3)
        ws.transport.abort()
        for _ in range(100):
            if not handle.server.sessions and handle.server.engine.utterances == 0:
                break
            await asyncio.sleep(0.05)
        assert not handle.server.sessions and handle.server.engine.utterances == 0
        r = await stream_audio(url, speech, speed=0)
        assert r.close_code == 1000 and r.finals


async def test_http_endpoints_and_demo(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>demo</title>")
    (tmp_path / "app.js").write_text("export {}")
    with background_server(CountingBackend(), web_dir=str(tmp_path)) as handle:
        base = handle.url.replace("ws://", "http://").removesuffix("/v1/stream")

        def get(path):
            try:
                with urllib.request.urlopen(base + path, timeout=5) as resp:
                    return resp.status, resp.headers.get("Content-Type"), resp.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("Content-Type"), e.read()

        status, kind, body = await asyncio.to_thread(get, "/v1/info")
        info = json.loads(body)
        assert status == 200 and info["model"] == "counting" and info["protocol"]["version"] == 1
        assert "window_s" in info["start_fields"]
        assert (await asyncio.to_thread(get, "/healthz"))[0] == 200
        assert (await asyncio.to_thread(get, "/../pyproject.toml"))[0] == 404
        assert (await asyncio.to_thread(get, "/nope.js"))[0] == 404
        assert (await asyncio.to_thread(get, "/v1/stream"))[0] == 426
        for path in ("/", "/overlay", "/index.html"):
            status, kind, body = await asyncio.to_thread(get, path)
            assert status == 200 and kind.startswith("text/html") and b"demo" in body
        status, kind, _ = await asyncio.to_thread(get, "/app.js")
        assert status == 200 and kind.startswith("text/javascript")


async def test_drain_finishes_open_sessions(speech):
    with background_server(CountingBackend()) as handle:
        async with websockets.connect(handle.url) as ws:
            await ws.send(json.dumps({"type": "start"}))
            await recv_json(ws)
            await ws.send(float_to_pcm16(speech[: int(16000 * 2.5)]))
            await asyncio.sleep(0.2)
            drain = asyncio.run_coroutine_threadsafe(handle.server.drain(timeout_s=5), handle.loop)
            events = await collect_until_close(ws)
            await asyncio.wrap_future(drain)
        types = [e["type"] for e in events]
        assert "final" in types and events[-1]["code"] == "shutting_down"
        assert types.index("final") < len(types) - 1
        assert ws.close_code == 1001


async def test_client_that_does_not_read_is_closed_as_slow():
    # With no room at all in the send queue, the very first event finds the client "behind".
    with running_server(CountingBackend(), send_queue_events=0) as url:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "start"}))
            await collect_until_close(ws, timeout=5)
        assert ws.close_code == 1008 and ws.close_reason == "slow_client"
