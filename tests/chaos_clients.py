"""Misbehaving clients for the chaos test: each one fault, each reporting what the server answered.

Every fault uses one connection at a time and returns :class:`Outcome` records
(the error codes it got, whether they were fatal, the close code, the session
id from ``ready``), so the test can compare them with the protocol's error table.
Clients that send many frames yield now and then: they share this event loop
with the good clients, whose real-time pace must not suffer from the test itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

START = json.dumps({"type": "start"})
STOP = json.dumps({"type": "stop"})
FINALIZE = json.dumps({"type": "finalize"})
YIELD_EVERY = 64
"""A flood yields to the other clients of this loop every this many frames."""


@dataclass
class Outcome:
    kind: str
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    session_id: str | None = None

    @property
    def errors(self) -> list[tuple[str, bool]]:
        """(code, fatal) of every error event, in order."""
        return [(e["code"], e["fatal"]) for e in self.events if e["type"] == "error"]

    @property
    def last(self) -> str | None:
        return self.events[-1]["type"] if self.events else None


def _record(outcome: Outcome, frame: str | bytes) -> None:
    event = json.loads(frame)
    outcome.events.append(event)
    if event["type"] == "ready":
        outcome.session_id = event["session_id"]


async def read_until_close(ws, outcome: Outcome, timeout_s: float = 60.0) -> Outcome:
    """Collect events until the server closes (a hang catcher bounds the wait)."""
    try:
        async with asyncio.timeout(timeout_s):
            async for frame in ws:
                _record(outcome, frame)
    except websockets.ConnectionClosed:
        pass
    outcome.close_code = ws.close_code
    return outcome


async def send_all(ws, frames: Iterable[str | bytes]) -> None:
    """Send frames, yielding every :data:`YIELD_EVERY`; stop quietly if the server has closed."""
    try:
        for i, frame in enumerate(frames):
            await ws.send(frame)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
    except websockets.ConnectionClosed:
        pass


async def converse(url: str, kind: str, frames: Iterable[str | bytes], timeout_s: float = 60.0) -> Outcome:
    """Send ``frames`` (all of them, reading meanwhile), then read every event until the close."""
    outcome = Outcome(kind)
    async with websockets.connect(url, max_size=None) as ws:
        reader = asyncio.create_task(read_until_close(ws, outcome, timeout_s))
        await send_all(ws, frames)
        return await reader


# ---- garbage ---------------------------------------------------------------------------------------

def start_with(**fields: Any) -> str:
    return json.dumps({"type": "start", **fields})


BAD_STARTS: dict[str, str] = {
    "start_bool_as_number": start_with(endpoint_silence_ms=True),
    "start_string_as_bool": start_with(partials="yes"),
    "start_null_step": start_with(step_s=None),
    "start_number_language": start_with(language=5),
    "start_fractional_int": start_with(vad_aggressiveness=1.5),
    "start_unknown_field": start_with(parials=False),
    "start_string_rate": start_with(sample_rate="16000"),
    "start_null_encoding": start_with(encoding=None),
}
"""A start with a wrong-typed, null, bool or unknown field: each refused, fatally, with its code."""


def junk_frames(rng: np.random.Generator) -> list[str]:
    """Text frames that are each a non-fatal error: invalid JSON, deep nesting, huge unknown types."""
    return ["][", "[" * 1000, '{"type": "start", ', json.dumps([1, 2, 3]), json.dumps({"type": 7}),
            json.dumps({"type": "x" * 100_000}), json.dumps({"type": "transcribe", "payload": "y" * 50_000}),
            rng.bytes(64).hex()]


async def random_bytes_before_start(url: str, rng: np.random.Generator) -> Outcome:
    return await converse(url, "random_bytes_before_start", [rng.bytes(4096)])


async def junk_around_start(url: str, rng: np.random.Generator, speech_pcm: bytes) -> Outcome:
    """Junk before and after a valid start, a second start, some speech, then stop: a session that survives."""
    frames = [*junk_frames(rng), START, *junk_frames(rng), START, speech_pcm, STOP]
    return await converse(url, "junk_around_start", frames)


async def bad_start(url: str, kind: str) -> Outcome:
    return await converse(url, kind, [BAD_STARTS[kind]])


# ---- clients that vanish, stall or never start ----------------------------------------------------

async def vanish(url: str, speech_pcm: bytes, after: str) -> Outcome:
    """Stream speech, then drop the TCP connection (no close) once ``after`` is seen.

    ``after``: ``ready`` (before any speech is decoded), ``partial`` (mid-utterance, a
    partial decode under way) or ``finalize`` (a final requested from the engine, unsent).
    """
    outcome = Outcome(f"vanish_after_{after}")
    chunk = 3200  # 0.1 s
    async with asyncio.timeout(60):
        ws = await websockets.connect(url, max_size=None)
        await ws.send(START)
        _record(outcome, await ws.recv())
        if after != "ready":
            for i in range(0, len(speech_pcm), chunk):
                await ws.send(speech_pcm[i:i + chunk])
                await asyncio.sleep(0.02)
                if after == "partial":
                    while True:
                        try:
                            _record(outcome, await asyncio.wait_for(ws.recv(), 0.001))
                        except TimeoutError:
                            break
                    if any(e["type"] == "partial" for e in outcome.events):
                        break
            if after == "finalize":
                await ws.send(FINALIZE)
                await asyncio.sleep(0.01)
    ws.transport.abort()
    return outcome


async def never_reads(url: str, host: str, port: int) -> Outcome:
    """Sends quiet audio and junk that provokes error events, and never reads a frame.

    Loopback TCP would absorb megabytes of unread events (the server's send buffer
    is sized from the MSS, ~4 MB at loopback's 64 KiB), and permessage-deflate
    squeezes repeated error events ~20:1, so a realistic reader stalls only after
    minutes. This client shrinks both ends (MSS 536, receive buffer 4 KiB) and
    turns compression off: the server's sends block within a second. The audio
    is silence: the fault is the reading, not the engine.
    """
    outcome = Outcome("never_reads")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    ws = await websockets.connect(url, sock=sock, max_queue=1, max_size=None, compression=None)
    await ws.send(START)
    _record(outcome, await ws.recv())  # the ready, to learn the session id; nothing after it
    quiet = bytes(3200)  # 0.1 s of silence
    sent = 0
    try:
        async with asyncio.timeout(60):  # a hang catcher: the server must close it long before
            while True:
                await ws.send(quiet)
                for _ in range(32):
                    await ws.send("][")  # each answered with a bad_message event nobody reads
                sent += 1
                await asyncio.sleep(0.005)
    except websockets.ConnectionClosed:
        pass
    except TimeoutError:
        outcome.events.append({"type": "hang", "sent": sent})
    outcome.close_code = ws.close_code
    ws.transport.abort()
    return outcome


async def floods_one_byte_frames(url: str, speech_pcm: bytes) -> Outcome:
    """Speech sent one byte per frame: slow for the server to eat, but lawful: it must decode it."""
    return await converse(url, "one_byte_frames", [START, *(speech_pcm[i:i + 1] for i in range(len(speech_pcm))),
                                                  STOP], timeout_s=90)


async def oversized(url: str, kind: str, limit: int) -> Outcome:
    frame: str | bytes = b"\x00" * (limit + 2) if kind == "oversized_binary" else json.dumps(
        {"type": "keepalive", "pad": "p" * limit})
    return await converse(url, kind, [START, frame])


async def idles_after_start(url: str) -> Outcome:
    return await converse(url, "idle_after_start", [START])


async def never_starts(url: str) -> Outcome:
    return await converse(url, "never_starts", [])


async def reconnect_storm(url: str, cycles: int) -> list[Outcome]:
    """Connect, start, stop, close, as fast as the server answers, ``cycles`` times."""
    return [await converse(url, "storm", [START, STOP]) for _ in range(cycles)]


async def over_the_limit(url: str, extra: int, free: int) -> tuple[list[Outcome], list[Outcome]]:
    """Open ``free + extra`` sessions at once and hold them: ``free`` get ``ready``, ``extra`` are refused.

    Returns (admitted, refused); the admitted ones are then stopped cleanly.
    """
    conns = [await websockets.connect(url, max_size=None) for _ in range(free + extra)]
    outcomes = [Outcome("over_the_limit") for _ in conns]
    await asyncio.gather(*(send_all(ws, [START]) for ws in conns))
    async with asyncio.timeout(30):
        for ws, outcome in zip(conns, outcomes):
            with contextlib.suppress(websockets.ConnectionClosed):
                _record(outcome, await ws.recv())
    admitted = [(ws, o) for ws, o in zip(conns, outcomes) if o.last == "ready"]
    refused = [(ws, o) for ws, o in zip(conns, outcomes) if o.last != "ready"]
    for ws, _ in admitted:
        await ws.send(STOP)
    await asyncio.gather(*(read_until_close(ws, o) for ws, o in [*admitted, *refused]))
    for ws in conns:
        await ws.close()
    return [o for _, o in admitted], [o for _, o in refused]
