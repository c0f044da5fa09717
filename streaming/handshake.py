"""websockets glue: let every HTTP request reach ``process_request`` so it gets a real answer.

websockets' own request parser (``websockets.http11.Request.parse``) is built
for WebSocket handshakes: it refuses a request with a body (``Content-Length``
other than 0, ``Transfer-Encoding``) and a malformed request line by dropping
the connection without a response. :class:`HttpServerConnection` swaps the
handshake parser of its sans-I/O protocol for :func:`parse_request`, which
reads the same request line and headers but leaves bodies alone, so the
router (:func:`streaming.http.route`) can answer ``405`` / ``400``; after any
non-101 response websockets discards what is left of the request. Malformed
requests get ``400`` and overlong lines ``414`` / ``431`` instead of silence.

An endpoint that takes a body (a POST of :data:`streaming.http.POST_ENDPOINTS`)
reads it from ``process_request`` with :meth:`HttpServerConnection.read_body`:
bounded, ``Content-Length`` or chunked, only after the endpoint has authorized
the request, so a refused upload is never buffered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import (HeaderLineTooLong, InvalidMessage, RequestLineTooLong, SecurityError,
                                   TooManyHeaders)
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from .http import REASONS, BodyFraming, Reply, body_framing, has_body, serialize_headers, text_reply

ReadLine = Callable[[int, type[Exception]], Generator[None, None, bytes | bytearray]]


def parse_request(read_line: ReadLine) -> Generator[None, None, Request]:
    """Request line and headers of any HTTP/1.x request (any method; a body is left unread).

    Raises like ``Request.parse``: ``EOFError``, ``RequestLineTooLong``,
    ``HeaderLineTooLong``, ``TooManyHeaders``, ``ValueError`` / ``UnicodeDecodeError``.
    """
    try:
        line = yield from parse_line(read_line, RequestLineTooLong)
    except EOFError as exc:
        raise EOFError("connection closed while reading HTTP request line") from exc
    parts = bytes(line).split(b" ", 2)
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0] or not parts[1]:
        raise ValueError("invalid HTTP request line")
    method, path, protocol = (p.decode("ascii") for p in parts)
    headers = yield from parse_headers(read_line)
    return Request(path, headers, method, protocol)


def to_response(reply: Reply, head: bool = False) -> Response:
    """A websockets ``Response`` for ``reply``; ``head`` keeps the headers and drops the body."""
    return Response(reply.status, REASONS.get(reply.status, "Error"), Headers(serialize_headers(reply)),
                    b"" if head else reply.body)


class BodyError(Exception):
    """A request body that cannot be read: ``status`` 400 (malformed, cut short), 411, 413 or 501."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _BodyRequest:
    """What :meth:`HttpServerConnection.read_body` asks of the parser, and where the body goes."""

    def __init__(self) -> None:
        self.framing: BodyFraming | None = None
        self.max_bytes = 0
        self.result: asyncio.Future[bytes] | None = None

    def settle(self, body: bytes | None = None, error: BodyError | None = None) -> None:
        if self.result is not None and not self.result.done():
            if error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(body)


MAX_TRAILER_LINES = 32


def read_body(reader: StreamReader, framing: BodyFraming, max_bytes: int) -> Generator[None, None, bytes]:
    """The body of a request (after its headers), at most ``max_bytes``.

    Raises :class:`BodyError`: 413 beyond ``max_bytes``, 400 for a malformed chunk or a body cut short.
    """
    try:
        if not framing.chunked:
            if framing.length > max_bytes:
                raise BodyError(413, f"the request body is larger than {max_bytes} bytes")
            return bytes((yield from reader.read_exact(framing.length)))
        body = bytearray()
        while True:
            line = yield from parse_line(reader.read_line)
            size = bytes(line).partition(b";")[0].strip()
            if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
                raise BodyError(400, "malformed chunk size")
            if not int(size, 16):
                break
            if len(body) + int(size, 16) > max_bytes:
                raise BodyError(413, f"the request body is larger than {max_bytes} bytes")
            body += yield from reader.read_exact(int(size, 16))
            if (yield from reader.read_exact(2)) != b"\r\n":
                raise BodyError(400, "a chunk does not end with CRLF")
        for _ in range(MAX_TRAILER_LINES):  # trailer fields, ignored, up to the empty line
            if not (yield from parse_line(reader.read_line)):
                return bytes(body)
        raise BodyError(400, "too many trailer fields")
    except EOFError:
        raise BodyError(400, "the request body ended early") from None
    except SecurityError:
        raise BodyError(400, "a chunk line is too long") from None


def _handshake_parser(protocol: ServerProtocol, body: _BodyRequest) -> Generator[None]:
    """``ServerProtocol.parse`` with :func:`parse_request` and an answer for every bad request."""
    try:
        request = yield from parse_request(protocol.reader.read_line)
    except EOFError as exc:  # the client went away before a full request: nobody to answer
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = exc
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
        return
    except Exception as exc:
        protocol.handshake_exc = exc
        if isinstance(exc, RequestLineTooLong):
            reply = text_reply(414, "request line too long")
        elif isinstance(exc, (HeaderLineTooLong, TooManyHeaders)):
            reply = Reply(431, b"request header fields too large\n")
        else:
            reply = text_reply(400, "malformed HTTP request")
        protocol.send_response(to_response(reply))  # also half-closes and discards the rest
        yield
        return
    protocol.events.append(request)
    if has_body(request.headers):
        # Never upgraded: leave the body unread rather than parse it as WebSocket frames, unless
        # the endpoint asks for it (read_body); the response swaps in a parser that discards it.
        while body.framing is None and not protocol.reader.eof:
            yield
        if body.framing is not None:
            try:
                body.settle((yield from read_body(protocol.reader, body.framing, body.max_bytes)))
            except BodyError as exc:
                body.settle(error=exc)
        while not (yield from protocol.reader.at_eof()):  # whatever follows the body is dropped
            protocol.reader.discard()
        # The client went away before the response: close as websockets does for a cut request.
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
        return
    yield from Protocol.parse(protocol)  # WebSocket frames once the handshake succeeded


class HttpServerConnection(ServerConnection):
    """A ``ServerConnection`` (pass as ``create_connection=``) that answers every HTTP request."""

    principal: str | None = None
    """The API key id the handshake authenticated (set by the server's ``process_request``)."""

    request_head_timeout_s: float = 10.0
    """A connection that has not sent a whole request head by then is dropped (websockets' own
    ``open_timeout`` also bounds ``process_request``, which an upload's transcription outlives)."""

    def __init__(self, protocol: ServerProtocol, server: Any, **kwargs: Any) -> None:
        # No data has reached the protocol yet: its parser can still be replaced.
        self._body = _BodyRequest()
        protocol.parser = self._parser = _handshake_parser(protocol, self._body)
        next(protocol.parser)
        super().__init__(protocol, server, **kwargs)

    async def read_body(self, max_bytes: int) -> bytes:
        """The body of the request being handshaken, at most ``max_bytes`` (call from ``process_request``).

        Answers ``Expect: 100-continue`` first. Raises :class:`BodyError` (400, 411, 413, 501).
        Time is bounded by the caller (and by websockets' ``open_timeout``, when one is set).
        """
        if self.request is None or self._body.result is not None:
            raise RuntimeError("read_body is for the one request whose response is not sent yet")
        if self.protocol.parser is not self._parser:  # the parser saw the end of the stream
            raise BodyError(400, "the connection closed before the body was read")
        framing = body_framing(self.request.headers)
        if isinstance(framing, Reply):
            raise BodyError(framing.status, framing.body.decode().strip())
        if not framing.chunked and framing.length > max_bytes:
            raise BodyError(413, f"the request body is larger than {max_bytes} bytes")
        if not framing.chunked and framing.length == 0:
            return b""  # Content-Length: 0, which the parser did not wait for
        expect = (self.request.headers.get("Expect") or "").lower()
        if expect == "100-continue" and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._body.framing, self._body.max_bytes = framing, max_bytes
        self._body.result = self.loop.create_future()
        next(self._parser)  # resume the parser on the bytes already received
        return await self._body.result

    @property
    def lost(self) -> asyncio.Future[None]:
        """Done when the connection is gone (a long request stops working for nobody)."""
        return self.connection_lost_waiter

    # ---- reading in slices -----------------------------------------------------------------
    # A socket read returns up to 256 KiB, and websockets parses every frame in it in one
    # callback: 256 KiB of 1-byte frames (7 bytes each with the header) is 37,000 frames and
    # held the event loop for about 300 ms. Large reads are fed to the protocol in slices of
    # _SLICE_BYTES, one per loop iteration, with the socket paused meanwhile (measured: a
    # 64,000-frame flood's worst loop lag fell from 470-500 ms to under 20 ms). The wish of
    # websockets' own flow control (pause while its message queue is full) is kept apart.

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.request_head_timeout_s, self._head_timed_out)
        self._inbox = bytearray()
        self._feeding = False
        self._queue_full = False
        self.recv_messages.pause = self._pause_for_queue
        self.recv_messages.resume = self._resume_for_queue

    def _pause_for_queue(self) -> None:
        self._queue_full = True
        self.transport.pause_reading()

    def _resume_for_queue(self) -> None:
        self._queue_full = False
        if not self._feeding:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if not self._feeding and len(data) <= _SLICE_BYTES:
            super().data_received(data)
            return
        self._inbox += data
        if not self._feeding:
            self._feeding = True
            self.transport.pause_reading()
            self.loop.call_soon(self._feed_slice)

    def _feed_slice(self) -> None:
        if not self._inbox:  # flushed by eof/connection_lost meanwhile
            self._feeding = False
            return
        chunk = bytes(self._inbox[:_SLICE_BYTES])
        del self._inbox[:_SLICE_BYTES]
        super().data_received(chunk)
        if self._inbox:
            self.loop.call_soon(self._feed_slice)
            return
        self._feeding = False
        if not self._queue_full and not self.transport.is_closing():
            self.transport.resume_reading()

    def _flush_inbox(self) -> None:
        if self._inbox:
            data = bytes(self._inbox)
            self._inbox.clear()
            super().data_received(data)

    def eof_received(self) -> None:
        self._flush_inbox()  # the data before the end of the stream, in order
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_timer.cancel()
        self._flush_inbox()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        if self.request is None:
            self.transport.abort()


_SLICE_BYTES = 4 * 1024
"""Most bytes of received data parsed in one event-loop callback."""
