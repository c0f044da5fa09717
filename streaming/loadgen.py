"""A measuring protocol-v1 client: streams audio at real-time pace and times every event.

Used by the benchmark and the end-to-end tests. Latencies are measured against
the wall-clock moment the relevant audio was sent: first partial after the
utterance's first voiced audio, final after the utterance's last voiced audio.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import websockets

from .audio import float_to_pcm16


@dataclass
class StreamResult:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """(seconds since the first audio was sent, event) in arrival order."""
    first_partial_latency_s: list[float] = field(default_factory=list)
    final_latency_s: list[float] = field(default_factory=list)
    close_code: int | None = None
    audio_s: float = 0.0

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == "final"]

    @property
    def text(self) -> str:
        return " ".join(e["text"] for e in self.finals if e["text"]).strip()

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == "error"]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]


async def stream_audio(url: str, audio: np.ndarray, sample_rate: int = 16_000, *, chunk_s: float = 0.1,
                       speed: float = 1.0, use_msgpack: bool = False, start_fields: dict[str, Any] | None = None,
                       preroll_s: float = 0.15, timeout_s: float = 120.0) -> StreamResult:
    """Stream mono float32 ``audio`` (at ``sample_rate``) as pcm_s16le, then ``stop``; collect events.

    ``speed`` 1.0 is real time, 0 as fast as possible. ``preroll_s`` must match the
    server's VAD pre-roll: speech is taken to start that long after ``start_s``.
    """
    result = StreamResult(audio_s=audio.size / sample_rate)
    start = {"type": "start", "sample_rate": sample_rate, "encoding": "pcm_s16le", **(start_fields or {})}
    chunk = max(1, int(chunk_s * sample_rate))
    t0 = 0.0

    def encode(msg: dict[str, Any]) -> str | bytes:
        return msgpack.packb(msg, use_bin_type=True) if use_msgpack else json.dumps(msg)

    # A long pong timeout: pushed faster than real time, the server may leave this socket unread a while.
    async with websockets.connect(url, max_size=None, ping_timeout=120) as ws:
        await ws.send(encode(start))
        ready = _decode(await asyncio.wait_for(ws.recv(), 30))
        if ready["type"] != "ready":
            result.events.append((0.0, ready))
            return result

        def wall_of(stream_s: float) -> float:
            """Wall time (relative to t0) at which the audio at ``stream_s`` was sent."""
            return stream_s / speed if speed > 0 else 0.0

        async def send() -> None:
            nonlocal t0
            t0 = time.perf_counter()
            for i in range(0, audio.size, chunk):
                pcm = float_to_pcm16(audio[i:i + chunk])
                await ws.send(msgpack.packb({"type": "audio", "pcm": pcm}, use_bin_type=True)
                              if use_msgpack else pcm)
                if speed > 0:
                    due = t0 + (i + chunk) / sample_rate / speed
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
            await ws.send(encode({"type": "stop"}))

        sender = asyncio.create_task(send())
        first_partial: dict[int, float] = {}
        try:
            async with asyncio.timeout(timeout_s):
                async for frame in ws:
                    now = time.perf_counter() - t0
                    event = _decode(frame)
                    result.events.append((now, event))
                    uid = event.get("utterance_id")
                    if event["type"] == "partial" and uid not in first_partial:
                        first_partial[uid] = now
                        speech_s = min(event["start_s"] + preroll_s, event["end_s"])
                        result.first_partial_latency_s.append(now - wall_of(speech_s))
                    elif event["type"] == "final" and event["text"]:
                        result.final_latency_s.append(now - wall_of(event["end_s"]))
        except websockets.ConnectionClosedError:
            pass  # closed with an error code (after its error event): the result records it
        finally:
            sender.cancel()
        result.close_code = ws.close_code
    return result


def _decode(frame: str | bytes) -> dict[str, Any]:
    return msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else json.loads(frame)


def with_silence(audio: np.ndarray, lead_s: float = 0.5, trail_s: float = 1.5, sample_rate: int = 16_000,
                 noise_dbfs: float | None = None, seed: int = 0) -> np.ndarray:
    """Pad with silence (optionally faint noise) before and after."""
    lead, trail = np.zeros(int(lead_s * sample_rate), np.float32), np.zeros(int(trail_s * sample_rate), np.float32)
    out = np.concatenate([lead, audio.astype(np.float32), trail])
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        out = out + rng.normal(0, 10 ** (noise_dbfs / 20), out.size).astype(np.float32)
    return out
