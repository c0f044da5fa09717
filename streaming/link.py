"""One connection's protocol and session together, sans I/O: frames in, actions out.

The server shell owns a socket and a :class:`Link`; the link owns a codec (the
wire protocol the URL path chose) and a :class:`~streaming.session.Session`
(the wire-free core). Received frames go through the codec into the session's
commands; the session's events come back through the codec as frames. The
shell only carries out the resulting actions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import events as ev
from .codecs import Codec, Frame
from .protocol import ProtocolError, check_frame_size
from .results import FinalResult, Hypothesis
from .session import Action, Close, Emit, Session

log = logging.getLogger("streaming.link")


@dataclass(frozen=True)
class Send:
    """Send ``frame``; ``event`` is the session event it tells, when it tells one (metrics read it)."""

    frame: Frame
    event: ev.Event | None = None


LinkAction = Send | Action
"""What the shell carries out: :class:`Send`, :class:`Close` or one of the session's engine actions."""


class Link:
    """A codec and a session for one connection; see the module docstring. Never raises."""

    def __init__(self, codec: Codec, session: Session, max_message_bytes: int = 1 << 20) -> None:
        self.codec = codec
        self.max_message_bytes = max_message_bytes
        self.session = session
        self._fatal: ev.Error | None = None
        self.last_valid_message: str | None = None
        """What the latest :meth:`receive` did that keeps the connection alive (None: nothing valid)."""

    @property
    def closed(self) -> bool:
        return self.session.closed

    def open(self) -> list[LinkAction]:
        """The connection is open: what the protocol does first (a start from the URL, a greeting)."""
        return self._decoded(self.codec.opened, "opening")

    def receive(self, frame: str | bytes) -> list[LinkAction]:
        """One received frame."""
        self.last_valid_message = None
        if self.session.state in ("draining", "closed"):
            return []
        return self._decoded(lambda: self._decode(frame), "decoding a frame")

    def _decode(self, frame: str | bytes) -> list[Any]:
        check_frame_size(frame, self.max_message_bytes)
        return self.codec.decode(frame)

    def fail(self, error: ProtocolError) -> list[LinkAction]:
        return self._translate(self.session.fail(error))

    def abandon(self) -> None:
        self.session.abandon()

    def partial_ready(self, utterance_id: int, hypothesis: Hypothesis | None) -> list[LinkAction]:
        return self._translate(self.session.partial_ready(utterance_id, hypothesis))

    def final_ready(self, utterance_id: int, result: FinalResult) -> list[LinkAction]:
        return self._translate(self.session.final_ready(utterance_id, result))

    def speakers_ready(self, utterance_id: int, windows: list | None) -> list[LinkAction]:
        return self._translate(self.session.speakers_ready(utterance_id, windows))

    def turn_scored(self, utterance_id: int, pause: int, probability: float | None) -> list[LinkAction]:
        return self._translate(self.session.turn_scored(utterance_id, pause, probability))

    def eager_ready(self, utterance_id: int, pause: int, result: FinalResult | None) -> list[LinkAction]:
        return self._translate(self.session.eager_ready(utterance_id, pause, result))

    def wake(self) -> list[LinkAction]:
        return self._translate(self.session.wake())

    # ---- plumbing --------------------------------------------------------------------------------

    def _decoded(self, decode: Callable[[], list[Any]], during: str) -> list[LinkAction]:
        try:
            items = decode()
        except ProtocolError as exc:
            return self.fail(exc)
        except Exception:  # a codec bug is this session's internal error, never the server's
            log.exception("session %s: internal error %s", self.session.session_id, during)
            return self.fail(ProtocolError("internal_error", f"internal server error {during}"))
        out: list[LinkAction] = []
        valid = None
        for item in items:
            if isinstance(item, Frame):
                out.append(Send(item))
                valid = valid or "reply"
                continue
            actions = self.session.handle(item)
            if self.session.last_valid_message is not None:
                valid = self.session.last_valid_message
            out.extend(self._translate(actions))
        self.last_valid_message = valid
        return out

    def _translate(self, actions: list[Action]) -> list[LinkAction]:
        out: list[LinkAction] = []
        for action in actions:
            if isinstance(action, Emit):
                if isinstance(action.event, ev.Error) and action.event.fatal:
                    self._fatal = action.event
                out.extend(Send(frame, action.event) for frame in self._encode(action.event))
            elif isinstance(action, Close):
                code, reason = self.codec.close_frame(action.code, action.reason, self._fatal)
                out.append(Close(code, reason))
            else:
                out.append(action)
        return out

    def _encode(self, event: ev.Event) -> list[Frame]:
        try:
            return self.codec.encode(event)
        except Exception:  # noqa: BLE001 - a codec bug loses this event, logged, never the session
            log.exception("session %s: could not encode %s", self.session.session_id, type(event).__name__)
            return []
