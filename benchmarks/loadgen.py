"""A measuring protocol-v1 client: streams audio at real-time pace and times every event.

Used by the benchmark and the end-to-end tests. It speaks through
:class:`client.StreamingClient` (without reconnecting: a measurement must see each
failure), so the wire rules live in one place. Latencies are measured against
the wall-clock moment the relevant audio was sent: first partial after the
utterance's first voiced audio, final after the utterance's last voiced audio.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client import ClientEvent, Disconnected, Ready, StreamingClient


@dataclass
class UtteranceTiming:
    """One utterance as the client saw it: when its first partial and its final arrived, and their latency."""

    utterance_id: int
    speech_start_s: float
    """Stream seconds at which speech began (the first partial's ``start_s`` plus the VAD pre-roll)."""
    first_partial_latency_s: float
    speech_end_s: float | None = None
    """Stream seconds at which the final says speech ended (its ``end_s``); None until the final."""
    final_latency_s: float | None = None
    text: str = ""


@dataclass
class StreamResult:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """(seconds since the first audio was sent, event) in arrival order."""
    first_partial_latency_s: list[float] = field(default_factory=list)
    final_latency_s: list[float] = field(default_factory=list)
    close_code: int | None = None
    audio_s: float = 0.0
    started_at_s: float | None = None
    """``time.perf_counter()`` when the first audio was sent (None until then): the events' time origin."""
    utterances: dict[int, UtteranceTiming] = field(default_factory=dict)
    """Utterances with a partial or a final so far, by ``utterance_id`` (filled while the stream runs)."""
    disconnect_reason: str | None = None
    """How the connection ended when it did not end normally (the client's words, close code and reason)."""

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


def sent_at_s(stream_s: float, speed: float) -> float:
    """When :func:`stream_audio` sends the audio at ``stream_s``, in seconds after its first audio (the clock of
    :attr:`StreamResult.events`): the pace maps stream time to wall time; 0 when unpaced (all sent at once)."""
    return stream_s / speed if speed > 0 else 0.0


async def stream_audio(url: str, audio: np.ndarray, sample_rate: int = 16_000, *, chunk_s: float = 0.1,
                       speed: float = 1.0, use_msgpack: bool = False, start_fields: dict[str, Any] | None = None,
                       preroll_s: float = 0.15, timeout_s: float = 120.0,
                       result: StreamResult | None = None) -> StreamResult:
    """Stream mono float32 ``audio`` (at ``sample_rate``) as pcm_s16le, then ``stop``; collect events.

    ``speed`` 1.0 is real time, 0 as fast as possible (each frame waits for the server to take the
    last: TCP backpressure). ``preroll_s`` must match the server's VAD pre-roll: speech is taken to
    start that long after ``start_s``. ``timeout_s`` bounds the whole stream. A refused handshake
    raises (``InvalidStatus``). A caller that watches the stream while it runs passes its own empty
    ``result``, which is filled as events arrive (and returned).
    """
    result = result if result is not None else StreamResult()
    result.audio_s = audio.size / sample_rate
    chunk = max(1, int(chunk_s * sample_rate))
    t0 = 0.0
    # A long pong timeout: pushed faster than real time, the server may leave this socket unread a while.
    client = StreamingClient(url, sample_rate=sample_rate, use_msgpack=use_msgpack, start_fields=start_fields or {},
                             reconnect=False, connect_timeout_s=30, ping_timeout_s=120, stop_timeout_s=timeout_s,
                             max_frame_s=chunk / sample_rate, max_ahead_s=chunk / sample_rate)

    async def send() -> None:
        nonlocal t0
        t0 = result.started_at_s = time.perf_counter()
        for i in range(0, audio.size, chunk):
            await client.send(audio[i:i + chunk])
            if speed > 0:
                delay = t0 + (i + chunk) / sample_rate / speed - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await client.stop()

    sender: asyncio.Task[None] | None = None
    async with client:
        try:
            async with asyncio.timeout(timeout_s):
                async for typed in client.events():
                    if isinstance(typed, Ready):
                        sender = asyncio.create_task(send())
                        continue
                    if isinstance(typed, ClientEvent):  # the connection's end: close_code says how
                        if isinstance(typed, Disconnected):
                            result.disconnect_reason = typed.reason
                        continue
                    now = time.perf_counter() - t0 if sender else 0.0
                    event = typed.to_message()
                    result.events.append((now, event))
                    uid = event.get("utterance_id")
                    if event["type"] == "partial" and uid not in result.utterances:
                        speech_s = min(event["start_s"] + preroll_s, event["end_s"])
                        result.first_partial_latency_s.append(now - sent_at_s(speech_s, speed))
                        result.utterances[uid] = UtteranceTiming(uid, speech_s, now - sent_at_s(speech_s, speed))
                    elif event["type"] == "final" and event["text"]:
                        result.final_latency_s.append(now - sent_at_s(event["end_s"], speed))
                        if uid not in result.utterances:  # no partial before it: the final is the first text
                            speech_s = min(event["start_s"] + preroll_s, event["end_s"])
                            result.utterances[uid] = UtteranceTiming(uid, speech_s, now - sent_at_s(speech_s, speed))
                        timing = result.utterances[uid]
                        timing.speech_end_s = event["end_s"]
                        timing.final_latency_s = now - sent_at_s(event["end_s"], speed)
                        timing.text = event["text"]
        finally:
            if sender is not None:
                sender.cancel()
    result.close_code = client.close_code
    return result


def with_silence(audio: np.ndarray, lead_s: float = 0.5, trail_s: float = 1.5, sample_rate: int = 16_000,
                 noise_dbfs: float | None = None, seed: int = 0) -> np.ndarray:
    """Pad with silence (optionally faint noise) before and after."""
    lead, trail = np.zeros(int(lead_s * sample_rate), np.float32), np.zeros(int(trail_s * sample_rate), np.float32)
    out = np.concatenate([lead, audio.astype(np.float32), trail])
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        out = out + rng.normal(0, 10 ** (noise_dbfs / 20), out.size).astype(np.float32)
    return out
