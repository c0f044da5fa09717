"""One call: ``await transcribe(audio, url=...)`` streams audio through a
:class:`~client.streaming_client.StreamingClient` and returns its finals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import DEFAULT_URL
from .continuity import SAMPLE_DTYPES, encode_audio
from .events import Disconnected, Error, Final, StreamEvent
from .streaming_client import StreamClosed, StreamingClient


class TranscriptionError(Exception):
    """:func:`transcribe` did not get the server's ``end``; ``outcome`` and ``error`` say why."""

    def __init__(self, outcome: str | None, error: Error | None, reason: str = "") -> None:
        detail = f"{error.code}: {error.message}" if error else reason or "no end from the server"
        super().__init__(f"transcription {outcome or 'failed'}: {detail}")
        self.outcome = outcome
        self.error = error


@dataclass(frozen=True)
class Transcript:
    """What :func:`transcribe` got: the finals, and every event in order."""

    finals: list[Final]
    events: list[StreamEvent]

    @property
    def text(self) -> str:
        return " ".join(t for t in (f.text.strip() for f in self.finals) if t)


AudioInput = bytes | np.ndarray | Iterable[bytes | np.ndarray] | AsyncIterable[bytes | np.ndarray]


async def transcribe(audio: AudioInput, url: str = DEFAULT_URL, **options: Any) -> Transcript:
    """Stream ``audio`` (whole bytes/samples, or an iterable of chunks) and return its finals.

    ``options`` are those of :class:`StreamingClient`. Raises :class:`TranscriptionError` when the
    server does not end the stream (a fatal error, a failed connection, the stop timeout).
    """
    events: list[StreamEvent] = []
    async with StreamingClient(url, **options) as client:
        async def pump() -> None:
            with contextlib.suppress(StreamClosed):  # the stream ended early: events() says why
                async for chunk in _chunks(audio, client.stream.sample_rate, client.stream.encoding):
                    await client.send(chunk)
                await client.stop()

        pumping = asyncio.create_task(pump())
        try:
            async for event in client.events():
                events.append(event)
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
        outcome, error = client.outcome, client.error
    if outcome != "ended":
        reasons = [e.reason for e in events if isinstance(e, Disconnected)]
        raise TranscriptionError(outcome, error, reasons[-1] if reasons else "")
    return Transcript([e for e in events if isinstance(e, Final)], events)


async def _chunks(audio: AudioInput, rate: int, encoding: str) -> AsyncIterator[bytes | np.ndarray]:
    if isinstance(audio, bytes | bytearray | memoryview | np.ndarray):
        data = encode_audio(audio, encoding)
        step = rate * np.dtype(SAMPLE_DTYPES[encoding]).itemsize // 10  # 0.1 s per chunk
        for i in range(0, len(data), step):
            yield data[i:i + step]
    elif isinstance(audio, AsyncIterable):
        async for chunk in audio:
            yield chunk
    else:
        for chunk in audio:
            yield chunk
