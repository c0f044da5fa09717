"""The interface of a wire codec: one protocol's frames ↔ the session's commands and events.

A codec is sans I/O and per connection. The server's connection loop is the
same for every protocol: it asks :meth:`Codec.opened` once, passes each received
frame to :meth:`Codec.decode` and the commands it returns to the session, turns
every session event into frames with :meth:`Codec.encode`, and closes with what
:meth:`Codec.close_frame` says. A codec may also answer a frame by itself (a
:class:`Frame` among the commands), e.g. an acknowledgement that changes no
session state.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from ..events import Command, Error, Event


@dataclass(frozen=True)
class Frame:
    """One frame to send."""

    data: str | bytes
    kind: str = "event"
    """``partial`` marks a frame a newer ``partial`` of the same utterance may replace while both wait
    to be sent (full-text partials); every other kind is always sent."""
    utterance_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Handshake:
    """What a codec may read from the WebSocket handshake request."""

    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def params(self) -> dict[str, list[str]]:
        """The query parameters, each with all its values (``keyterm=a&keyterm=b``)."""
        return parse_qs(self.query, keep_blank_values=True)


class HandshakeRefused(Exception):
    """The handshake asks for something the protocol's server cannot serve: answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Codec(abc.ABC):
    """One connection's protocol; see the module docstring."""

    name: str = "codec"
    path: str = ""
    """URL path this codec serves."""
    idle_timeout_s: float | None = None
    """Seconds without a valid message after which the session ends with ``idle_timeout``
    (None = the server's ``idle_timeout_s``)."""

    def __init__(self, session_id: str, model: str, handshake: Handshake) -> None:
        self.session_id = session_id
        self.model = model
        self.handshake = handshake

    @classmethod
    def check_handshake(cls, handshake: Handshake) -> None:
        """Raise :class:`HandshakeRefused` for a request this protocol cannot serve (before the upgrade)."""

    def opened(self) -> list[Command | Frame]:
        """What happens as the connection opens: commands for the session, frames to send."""
        return []

    @abc.abstractmethod
    def decode(self, frame: str | bytes) -> list[Command | Frame]:
        """One received frame → commands (and frames answered by the codec itself).

        Raises :class:`streaming.protocol.ProtocolError` for a frame the protocol refuses.
        """

    @abc.abstractmethod
    def encode(self, event: Event) -> list[Frame]:
        """One session event → the frames that tell the client (possibly none)."""

    def close_frame(self, code: int, reason: str, error: Error | None) -> tuple[int, str]:
        """The WebSocket close (code, reason) for a session close; ``error`` is the fatal one, if any."""
        return code, reason
