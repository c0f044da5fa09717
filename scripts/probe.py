"""Hostile-but-lawful probe of a real server on loopback, with figures for each defence.

    .venv/bin/python scripts/probe.py                 # all probes, embedded tiny.en, JSON on stdout
    .venv/bin/python scripts/probe.py lockout flood   # some of them

Starts ``python -m streaming serve`` as a child process on a free loopback port
(so its RSS is its own) and runs, one after another, bounded in count and time:

- ``lockout``: 32 sockets that never send ``start`` and send an unknown message
  every second; does a good client still get in, and what text does it get?
- ``slow_reader``: a client that never reads and provokes error events (512 KiB unknown types);
  how long until the server closes it, and how much memory did it hold?
- ``flood``: 655 s of speech pushed as fast as possible by one client; a
  real-time client's final latency beside it, against the same client alone.
- ``finalize_flood``: 1000 ``finalize`` a second for 11 s with speech; the same
  real-time client's final latency beside it.
- ``frames``: floods of 1-byte frames and of 1 MiB frames; the worst event-loop
  lag the server measured (``/v1/info`` ``event_loop_lag_max_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streaming.audio import float_to_pcm16  # noqa: E402
from streaming.evaluation import dev_clips, wer  # noqa: E402
from benchmarks.loadgen import stream_audio, with_silence  # noqa: E402


class ServerProcess:
    """``python -m streaming serve`` on a free loopback port, stopped on exit."""

    def __init__(self, *args: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "streaming", "serve", "--port", str(self.port),
                                      "--log-level", "WARNING", *args], cwd=REPO)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.http("/readyz"), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)  # a child process we do not control: poll its readiness
        else:
            raise RuntimeError("the server did not become ready")
        self.ps = psutil.Process(self.proc.pid)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def info(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.http("/v1/info"), timeout=5) as resp:
            return json.loads(resp.read())

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def speech_clips() -> dict[str, np.ndarray]:
    return {c.id: c for c in dev_clips() if c.language == "en"}


async def calm_client(url: str, clips: list) -> dict[str, Any]:
    """Three clips at real-time pace, one session each, in a row: their final latencies and WER."""
    latencies, hyps = [], []
    for clip in clips:
        r = await stream_audio(url, with_silence(clip.load(), 0.3, 1.5), speed=1.0, timeout_s=300)
        latencies += r.final_latency_s
        hyps.append(r.text)
    return {"final_latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "final_latency_max_s": round(max(latencies), 3) if latencies else None,
            "wer": round(wer([c.text for c in clips], hyps), 4)}


async def probe_lockout(server: ServerProcess, clips: dict) -> dict[str, Any]:
    squatters = [await websockets.connect(server.url) for _ in range(32)]

    async def squat(ws) -> int | None:
        try:
            for _ in range(30):
                await ws.send(json.dumps({"type": "noop"}))
                await asyncio.sleep(1.0)
        except websockets.ConnectionClosed:
            pass
        return ws.close_code

    tasks = [asyncio.create_task(squat(ws)) for ws in squatters]
    await asyncio.sleep(1.0)
    clip = clips["jfk"]
    r = await stream_audio(server.url, with_silence(clip.load(), 0.3, 1.5), speed=1.0)
    codes = await asyncio.gather(*tasks)
    return {"good_client_admitted": r.close_code == 1000 and not r.errors, "good_client_text": r.text,
            "squatters_closed_with": sorted({c for c in codes if c is not None}),
            "squatters_still_open": sum(c is None for c in codes)}


async def probe_slow_reader(server: ServerProcess) -> dict[str, Any]:
    rss0 = server.rss_mb()
    peak = rss0
    ws = await websockets.connect(server.url, max_queue=1, max_size=None)
    await ws.send(json.dumps({"type": "start"}))
    junk = json.dumps({"type": "x" * (512 << 10)})  # under max_message_bytes: each one is an error event
    t0 = time.monotonic()
    closed_after = None
    try:
        async with asyncio.timeout(120):
            while True:
                await ws.send(junk)
                peak = max(peak, server.rss_mb())
    except websockets.ConnectionClosed:
        closed_after = time.monotonic() - t0
    except TimeoutError:
        pass
    ws.transport.abort()
    await asyncio.sleep(1.0)
    return {"closed_after_s": round(closed_after, 1) if closed_after else None,
            "server_rss_mb_before": round(rss0, 1), "server_rss_mb_peak": round(peak, 1),
            "server_rss_mb_after": round(server.rss_mb(), 1)}


async def probe_flood(server: ServerProcess, clips: dict) -> dict[str, Any]:
    calm = [clips[i] for i in ("lib_left", "cards_001", "goforward")]
    alone = await calm_client(server.url, calm)
    speech = np.concatenate([with_silence(c.load(), 0.3, 0.8) for c in clips.values()])
    flood_audio = np.tile(speech, int(np.ceil(655 * 16000 / speech.size)))[: 655 * 16000]
    flood = asyncio.create_task(stream_audio(server.url, flood_audio, speed=0, chunk_s=0.5, timeout_s=1800))
    await asyncio.sleep(3.0)
    beside = await calm_client(server.url, calm)
    flood.cancel()
    await asyncio.gather(flood, return_exceptions=True)
    return {"calm_alone": alone, "calm_beside_flood": beside}


async def probe_finalize_flood(server: ServerProcess, clips: dict) -> dict[str, Any]:
    calm = [clips[i] for i in ("lib_left", "cards_001", "goforward")]
    pcm = float_to_pcm16(np.concatenate([c.load() for c in clips.values()]))
    finals = {"count": 0, "empty": 0}

    async def flooder() -> None:
        async with websockets.connect(server.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "start"}))

            async def read() -> None:
                async for frame in ws:
                    ev = json.loads(frame)
                    if ev["type"] == "final":
                        finals["count"] += 1
                        finals["empty"] += not ev["text"]

            reader = asyncio.create_task(read())
            step = 32  # 1 ms of audio between finalizes: 1000 finalize per second of wall time
            t0 = time.monotonic()
            for i in range(11_000):
                await ws.send(pcm[(i * step) % (len(pcm) - step):][:step])
                await ws.send('{"type":"finalize"}')
                if i % 50 == 0:
                    await asyncio.sleep(max(0.0, t0 + i / 1000 - time.monotonic()))
            await ws.send('{"type":"stop"}')
            await asyncio.wait_for(reader, 300)

    flood = asyncio.create_task(flooder())
    await asyncio.sleep(1.0)
    beside = await calm_client(server.url, calm)
    await asyncio.gather(flood, return_exceptions=True)
    return {"calm_beside_finalize_flood": beside, "flooder_finals": finals}


async def probe_frames(server: ServerProcess, clips: dict) -> dict[str, Any]:
    pcm = float_to_pcm16(np.concatenate([c.load() for c in clips.values()]))
    out = {}
    for name, frames in (("one_byte_frames", [pcm[i:i + 1] for i in range(100_000)]),
                         ("one_mib_frames", [pcm[: 1 << 20]] * 8)):
        before = server.info()["event_loop_lag_max_s"]
        async with websockets.connect(server.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "start"}))
            for i, f in enumerate(frames):
                await ws.send(f)
                if i % 64 == 0:
                    await asyncio.sleep(0)  # let this client answer the server's pings
            await ws.send('{"type":"stop"}')
            async for _ in ws:
                pass
        out[name] = {"worst_loop_lag_ms_so_far": round(1000 * server.info()["event_loop_lag_max_s"], 1),
                     "before_ms": round(1000 * before, 1)}
    return out


PROBES = {"lockout": probe_lockout, "slow_reader": probe_slow_reader, "flood": probe_flood,
          "finalize_flood": probe_finalize_flood, "frames": probe_frames}


async def run(names: list[str], server_args: list[str]) -> dict[str, Any]:
    clips = speech_clips()
    server = ServerProcess(*server_args)
    report: dict[str, Any] = {}
    try:
        for name in names:
            t0 = time.monotonic()
            print(f"probe: {name}…", file=sys.stderr)
            fn = PROBES[name]
            report[name] = await (fn(server) if name == "slow_reader" else fn(server, clips))
            report[name]["probe_s"] = round(time.monotonic() - t0, 1)
        report["server_info"] = server.info()
    finally:
        server.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probes", nargs="*", choices=[*PROBES, []], help="which probes (default: all)")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for the server (repeatable)")
    p.add_argument("--out", default="bench-results/probe.json")
    args = p.parse_args(argv)
    report = asyncio.run(run(args.probes or list(PROBES), args.server_arg))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
