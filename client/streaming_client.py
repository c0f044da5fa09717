"""The Python client of protocol v1: stream audio, read typed events, survive server restarts.

    async with StreamingClient("ws://127.0.0.1:8765/v1/stream", language="en") as client:
        await client.send(pcm_bytes)          # or float32 numpy samples
        await client.stop()
        async for event in client.events():   # Ready, SpeechStart, Partial, SpeechEnd, Final, …, End
            ...

    transcript = await transcribe(chunks, url=..., sample_rate=16000)   # .text, .finals

When the connection is lost (or the server closes it with a retryable error),
the client reconnects with backoff, sends ``start`` again and replays the audio
not yet covered by a final; events keep one ``seq``, utterance id and time line
(:mod:`client.continuity`). This module is the I/O shell around that pure state
and imports no model code (no torch): any program can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .common import DEFAULT_URL
from .continuity import Outbox, StreamMapper, encode_audio
from .events import (
    AudioDropped, Codec, Disconnected, End, Error, GaveUp, Ready, Reconnected, StreamEvent, is_retryable,
    parse_event,
)
from .options import split_options

RETRYABLE_HTTP_STATUS = frozenset({429, 500, 502, 503, 504})
"""Handshake refusals a later attempt may get past (key limit, a server starting or overloaded)."""


class StreamClosed(Exception):
    """Audio or a control was given after the stream ended (or after :meth:`StreamingClient.stop`)."""


@dataclass(frozen=True)
class _Lost:
    reason: str
    code: str | None = None
    permanent: bool = False
    retry_after_s: float | None = None
    """The server's hint (``overloaded``): wait at least this long before the next try."""


_DONE = object()
MAX_RETRY_AFTER_S = 60.0
"""The longest ``retry_after_s`` hint the client honours (a bad hint must not park it for hours)."""


class StreamingClient:
    """One audio stream to a protocol-v1 server, across reconnects (see the module docstring).

    Keyword arguments are the fields of :class:`StreamOptions` and :class:`ConnectionOptions`;
    any other keyword is sent as a start field (the server refuses unknown ones: ``invalid_option``).
    ``outcome`` says how the stream ended: ``ended`` (the server's ``end``), ``error`` (a fatal error,
    in ``error``), ``gave_up`` (no ``end`` within ``stop_timeout_s``), ``failed`` (connection lost,
    no retry) or ``closed`` (left before the end).
    """

    def __init__(self, url: str = DEFAULT_URL, **options: Any) -> None:
        self.stream, self.options = split_options(options)
        self.url = url
        rate = self.stream.sample_rate
        self._codec = Codec(self.options.use_msgpack)
        self._outbox = Outbox(self.stream.encoding, round(self.options.max_buffer_s * rate),
                              round(self.options.replay_s * rate))
        self._mapper = StreamMapper(rate)
        self._high_water = max(1, round(self.options.max_ahead_s * rate))
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._give_up = asyncio.Event()
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._runner: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._stopping = False
        self._dropping = False
        self.outcome: str | None = None
        self.error: Error | None = None
        """The fatal error that ended the stream, if one did."""
        self.close_code: int | None = None
        """WebSocket close code of the latest connection."""

    # ---- the caller's side ----------------------------------------------------------------------

    async def __aenter__(self) -> StreamingClient:
        ws = None if self.options.retry_first_connect else await self._open()
        self._runner = asyncio.create_task(self._run(ws), name="streaming-client")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connections(self) -> int:
        """Connections that got ``ready`` so far."""
        return self._mapper.connections

    @property
    def unacknowledged_s(self) -> float:
        """Audio given that no final has covered yet."""
        return self._outbox.unacknowledged / self.stream.sample_rate

    async def send(self, audio: bytes | np.ndarray) -> None:
        """Queue audio (bytes in the start's encoding, or float samples); waits while much is unsent."""
        self.send_nowait(audio)
        while self._outbox.unsent > self._high_water and self.outcome is None:
            self._room.clear()
            await self._room.wait()

    def send_nowait(self, audio: bytes | np.ndarray) -> None:
        """Queue audio without waiting (live sources): beyond ``max_buffer_s`` unsent, the oldest is dropped."""
        self._check_open()
        dropped = self._outbox.push(encode_audio(audio, self.stream.encoding))
        if dropped and not self._dropping:
            self._dropping = True
            self._emit(AudioDropped(self.options.max_buffer_s))
        self._wake.set()

    async def finalize(self) -> None:
        """End the open utterance after the audio given so far: its final follows."""
        self._control({"type": "finalize"})

    async def clear(self) -> None:
        """Drop the open utterance and its audio (answered by ``cleared``; no final for it)."""
        self._control({"type": "clear"})

    async def stop(self) -> None:
        """No more audio: the server sends the last finals, then ``end`` (waited for ``stop_timeout_s``)."""
        if not self._stopping:
            self._stopping = True
            self._arm_give_up()
            self._wake.set()

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Every event in order, until the stream is over (see ``outcome``)."""
        while True:
            item = await self._queue.get()
            if item is _DONE:
                self._queue.put_nowait(_DONE)  # a later events() ends at once too
                if self._failure is not None:
                    raise self._failure
                return
            yield item

    async def close(self) -> None:
        """Leave now (no ``stop``): the connection is closed; a stream not yet over is ``closed``."""
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._finish("closed")

    # ---- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.outcome is not None or self._stopping:
            raise StreamClosed(f"the stream is {self.outcome or 'stopping'}")

    def _control(self, message: dict[str, Any]) -> None:
        self._check_open()
        self._outbox.control(message)
        self._wake.set()

    def _emit(self, event: StreamEvent) -> None:
        self._queue.put_nowait(event)

    def _finish(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._queue.put_nowait(_DONE)
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
        self._room.set()

    def _arm_give_up(self) -> None:
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
        loop = asyncio.get_running_loop()
        self._give_up_timer = loop.call_later(self.options.stop_timeout_s, self._give_up.set)

    async def _open(self) -> ClientConnection:
        opts = self.options
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else None
        context = opts.ssl
        if context is None and opts.insecure and self.url.startswith("wss:"):
            context = ssl_module.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl_module.CERT_NONE
        async with asyncio.timeout(opts.connect_timeout_s):
            return await connect(self.url, additional_headers=headers, ssl=context, max_size=2**24,
                                 ping_interval=opts.ping_interval_s, ping_timeout=opts.ping_timeout_s,
                                 close_timeout=opts.close_timeout_s, open_timeout=None)

    async def _run(self, ws: ClientConnection | None) -> None:
        attempt = 0
        try:
            while True:
                ready_before = self._mapper.connections
                try:
                    if ws is None:
                        ws = await self._open()
                    result = await self._session(ws)
                except (OSError, WebSocketException, TimeoutError) as exc:
                    result = _Lost(describe(exc), permanent=_permanent(exc))
                ws = None
                if result == "gave_up":
                    return self._gave_up()
                if isinstance(result, str):
                    return self._finish(result)
                if self._mapper.connections > ready_before:
                    attempt = 0  # the last try got through: start the schedule over
                if self._give_up.is_set():
                    return self._gave_up()
                connected_before = self._mapper.connections > 0
                if not self.options.reconnect or result.permanent:
                    self._emit(Disconnected(result.reason, None, result.code, connected_before))
                    return self._finish("failed")
                delay = self.options.backoff.delay_s(attempt)
                if result.retry_after_s is not None:  # a full server says when a slot is likely to free
                    delay = max(delay, min(result.retry_after_s, MAX_RETRY_AFTER_S))
                attempt += 1
                self._emit(Disconnected(result.reason, delay, result.code, connected_before))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._give_up.wait(), delay)
                if self._give_up.is_set():
                    return self._gave_up()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: the caller's events() raises it
            self._failure = exc
            self._finish("failed")

    def _gave_up(self) -> None:
        self._emit(GaveUp(self.options.stop_timeout_s, self.unacknowledged_s))
        self._finish("gave_up")

    async def _session(self, ws: ClientConnection) -> str | _Lost:
        """One connection: a final outcome (``ended``, ``error``, ``gave_up``) or why it was lost."""
        async with ws:
            try:
                return await self._exchange(ws)
            finally:
                self.close_code = ws.close_code

    async def _exchange(self, ws: ClientConnection) -> str | _Lost:
        with contextlib.suppress(ConnectionClosed):
            # A server that refuses at once (overloaded, shutting down) may close before our start
            # arrives: its error is still waiting to be read below, and it says why and when to retry.
            await ws.send(self._codec.control(self.stream.start_message()))
        async with asyncio.timeout(self.options.connect_timeout_s):
            first = parse_event(self._codec.event(await ws.recv()))
            while isinstance(first, Error) and not first.fatal:  # a warning before ready: pass it on
                self._emit(self._mapper.map(first))
                first = parse_event(self._codec.event(await ws.recv()))
        if isinstance(first, Error):
            return await self._on_fatal(ws, first)
        if not isinstance(first, Ready):
            return _Lost(f"expected ready, got {first.type!r}")
        base_pos = self._outbox.rewind()
        self._mapper.connected(base_pos)
        if self._mapper.connections == 1:
            self._emit(self._mapper.map(first))
        else:
            self._emit(Reconnected(first.session_id, self._outbox.unsent / self.stream.sample_rate))
        self._dropping = False
        sender = asyncio.create_task(self._send_loop(ws))
        receiver = asyncio.create_task(self._receive_loop(ws))
        give_up = asyncio.create_task(self._give_up.wait())
        try:
            await asyncio.wait({receiver, give_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, give_up, receiver):
                task.cancel()
            await asyncio.gather(sender, give_up, receiver, return_exceptions=True)
        if sender.done() and not sender.cancelled():
            exc = sender.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                raise exc  # a bug, not the network
        if receiver.cancelled():
            return "gave_up"
        try:
            return receiver.result()
        except ConnectionClosed as exc:
            return _Lost(describe(exc))

    async def _receive_loop(self, ws: ClientConnection) -> str | _Lost:
        async for frame in ws:
            try:
                raw = parse_event(self._codec.event(frame))
            except ValueError as exc:
                return _Lost(str(exc))
            position = self._mapper.covered_position(raw)
            if position is not None:
                self._outbox.ack(position)
            event = self._mapper.map(raw)
            if isinstance(event, Error) and event.fatal:
                return await self._on_fatal(ws, event)
            self._emit(event)
            if isinstance(event, End):
                await _wait_closed(ws, self.options.close_timeout_s)
                return "ended"
        return _Lost("the server closed the connection without end")

    async def _on_fatal(self, ws: ClientConnection, error: Error) -> str | _Lost:
        if self.options.reconnect and is_retryable(error.code):
            hint = error.extra.get("retry_after_s")
            retry_after_s = float(hint) if isinstance(hint, int | float) and not isinstance(hint, bool) else None
            return _Lost(f"server error {error.code}: {error.message}", code=error.code, retry_after_s=retry_after_s)
        self._emit(error)
        self.error = error
        await _wait_closed(ws, self.options.close_timeout_s)  # the server closes right after: its close code
        return "error"

    async def _send_loop(self, ws: ClientConnection) -> None:
        max_frame = max(1, round(self.options.max_frame_s * self.stream.sample_rate))
        while True:
            self._wake.clear()
            while (item := self._outbox.next_frame(max_frame)) is not None:
                await ws.send(self._codec.audio(item) if isinstance(item, bytes) else self._codec.control(item))
                if self._outbox.unsent <= self._high_water:
                    self._room.set()
            self._room.set()
            if self._stopping:
                await ws.send(self._codec.control({"type": "stop"}))
                self._arm_give_up()  # the server now has stop_timeout_s to send the last final and end
                return
            await self._wake.wait()


async def _wait_closed(ws: ClientConnection, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), timeout_s)


def _permanent(exc: BaseException) -> bool:
    """A refusal that a retry cannot get past (bad key, forbidden origin, wrong path)."""
    return isinstance(exc, InvalidStatus) and exc.response.status_code not in RETRYABLE_HTTP_STATUS


def describe(exc: BaseException) -> str:
    """A short human reason for a connection failure."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
