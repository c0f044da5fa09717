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
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, InvalidMessage, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from .http import REASONS, Reply, has_body, serialize_headers, text_reply

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


def _handshake_parser(protocol: ServerProtocol) -> Generator[None]:
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
        # Never upgraded (the router answers 400/405): leave the body unread rather than
        # parse it as WebSocket frames; the response swaps in a parser that discards it.
        while True:
            yield
    yield from Protocol.parse(protocol)  # WebSocket frames once the handshake succeeded


class HttpServerConnection(ServerConnection):
    """A ``ServerConnection`` (pass as ``create_connection=``) that answers every HTTP request."""

    principal: str | None = None
    """The API key id the handshake authenticated (set by the server's ``process_request``)."""

    def __init__(self, protocol: ServerProtocol, server: Any, **kwargs: Any) -> None:
        # No data has reached the protocol yet: its parser can still be replaced.
        protocol.parser = _handshake_parser(protocol)
        next(protocol.parser)
        super().__init__(protocol, server, **kwargs)

    # ---- reading in slices -----------------------------------------------------------------
    # A socket read returns up to 256 KiB, and websockets parses every frame in it in one
    # callback: 256 KiB of 1-byte frames (7 bytes each with the header) is 37,000 frames and
    # held the event loop for about 300 ms. Large reads are fed to the protocol in slices of
    # _SLICE_BYTES, one per loop iteration, with the socket paused meanwhile (measured: a
    # 64,000-frame flood's worst loop lag fell from 470-500 ms to under 20 ms). The wish of
    # websockets' own flow control (pause while its message queue is full) is kept apart.

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
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
        self._flush_inbox()
        super().connection_lost(exc)


_SLICE_BYTES = 4 * 1024
"""Most bytes of received data parsed in one event-loop callback."""
