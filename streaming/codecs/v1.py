"""Protocol v1 (``/v1/stream``, ``docs/protocol.md``): frames via :mod:`streaming.protocol`, events with ``seq``."""

from __future__ import annotations

import sys
from typing import Any

from .. import events as ev
from ..protocol import PROTOCOL_VERSION, Parser, encode_event
from ..results import Word
from .base import Codec, Frame, Handshake


class V1Codec(Codec):
    name = "v1"
    path = "/v1/stream"

    def __init__(self, session_id: str, model: str, handshake: Handshake) -> None:
        super().__init__(session_id, model, handshake)
        self.parser = Parser(max_message_bytes=sys.maxsize)  # the link checks frame sizes for every protocol
        self._seq = 0

    def decode(self, frame: str | bytes) -> list[ev.Command | Frame]:
        return [self.parser.parse(frame)]

    def encode(self, event: ev.Event) -> list[Frame]:
        fields = event_fields(event)
        if fields is None:
            return []
        message = {"type": fields.pop("type"), "seq": self._seq, **fields}
        self._seq += 1
        uid = message.get("utterance_id")
        return [Frame(encode_event(message, self.parser.wire), message["type"], uid)]


def event_fields(event: ev.Event) -> dict[str, Any] | None:
    """A session event as protocol v1's message fields (without ``seq``); None = v1 says nothing.
    Events of a ``multichannel`` stream carry ``channel``."""
    fields = _fields(event)
    channel = getattr(event, "channel", None)
    if fields is not None and channel is not None:
        fields["channel"] = channel
    return fields


def _word(w: Word) -> dict[str, Any]:
    fields = {"word": w.word, "start_s": w.start_s, "end_s": w.end_s, "probability": w.probability}
    if w.speaker is not None:
        fields["speaker"] = w.speaker
    return fields


def _fields(event: ev.Event) -> dict[str, Any] | None:
    if isinstance(event, ev.Ready):
        return {"type": "ready", "session_id": event.session_id, "model": event.model,
                "protocol": PROTOCOL_VERSION, "options": event.options}
    if isinstance(event, ev.SpeechStarted):
        return {"type": "speech_start", "utterance_id": event.utterance_id, "start_s": event.start_s}
    if isinstance(event, ev.SpeechEnded):
        return {"type": "speech_end", "utterance_id": event.utterance_id, "end_s": event.end_s,
                "reason": event.reason}
    if isinstance(event, ev.Partial):
        return {"type": "partial", "utterance_id": event.utterance_id, "text": event.text,
                "stable_text": event.stable_text, "start_s": event.start_s, "end_s": event.end_s}
    if isinstance(event, ev.Final):
        fields = {"type": "final", "utterance_id": event.utterance_id, "text": event.text,
                  "language": event.language, "start_s": event.start_s, "end_s": event.end_s,
                  "reason": event.reason}
        if event.speaker is not None:
            fields["speaker"] = event.speaker
        if event.words is not None:
            fields["words"] = [_word(w) for w in event.words]
            fields["word_timing"] = event.word_timing
        return fields
    if isinstance(event, ev.EagerEndOfTurn):
        return {"type": "eager_end_of_turn", "utterance_id": event.utterance_id, "text": event.text,
                "start_s": event.start_s, "end_s": event.end_s}
    if isinstance(event, ev.TurnResumed):
        return {"type": "turn_resumed", "utterance_id": event.utterance_id, "at_s": event.at_s}
    if isinstance(event, ev.Cleared):
        return {"type": "cleared", "utterance_id": event.utterance_id, "at_s": event.at_s}
    if isinstance(event, ev.Error):
        fields = {"type": "error", "code": event.code, "message": event.message, "fatal": event.fatal}
        if event.retry_after_s is not None:
            fields["retry_after_s"] = event.retry_after_s
        return fields
    if isinstance(event, ev.Ended):
        return {"type": "end", "utterances": event.utterances, "audio_s": event.audio_s}
    return None  # Configured, Finalized: v1 has no message for them
