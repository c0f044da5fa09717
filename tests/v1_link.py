"""A v1 session as tests drive it: frames in, decoded v1 messages out (a Link of the v1 codec and a Session).

Session tests were written against frames and message dicts; this keeps them that
way while the session itself speaks typed commands and events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streaming.codecs import Handshake
from streaming.codecs.v1 import V1Codec
from streaming.link import Link
from streaming.link import Send as FrameSend
from streaming.protocol import decode_event
from streaming.session import Session


@dataclass(frozen=True)
class Send:
    """A sent v1 message, decoded back into its dict."""

    event: dict[str, Any]


def decode_frame(data: str | bytes) -> dict[str, Any]:
    return decode_event(data)


class V1Session:
    """``Session`` behind the v1 codec, with the old frame-level API (``receive``)."""

    def __init__(self, session_id, config, model, classify=None, admit=None, core=Session) -> None:
        self.core = core(session_id, config, model, classify=classify, admit=admit)
        self.codec = V1Codec(session_id, model.name, Handshake("/v1/stream"))
        self.link = Link(self.codec, self.core, config.server.max_message_bytes)

    def __getattr__(self, name):
        return getattr(self.core, name)

    @property
    def wire(self):
        return self.codec.parser.wire

    @property
    def last_valid_message(self):
        return self.link.last_valid_message

    def receive(self, frame):
        return self._wire(self.link.receive(frame))

    def fail(self, error):
        return self._wire(self.link.fail(error))

    def partial_ready(self, utterance_id, hypothesis):
        return self._wire(self.link.partial_ready(utterance_id, hypothesis))

    def final_ready(self, utterance_id, result):
        return self._wire(self.link.final_ready(utterance_id, result))

    @staticmethod
    def _wire(actions):
        return [Send(decode_frame(a.frame.data)) if isinstance(a, FrameSend) else a for a in actions]
