"""Typed protocol-v1 events for clients, and the client side of the wire codec.

Server messages (``docs/protocol.md``) become small frozen classes with the
message's fields, so a caller writes ``isinstance(event, Final)`` and
``event.words[0].start_s`` instead of dict lookups. A message type this client
does not know (a newer server) becomes :class:`OtherEvent`; fields a known
message has beyond those modelled are kept in ``extra``, so :meth:`to_message`
gives the message back unchanged. Frames are encoded with
:func:`streaming.protocol.encode_event`, the one JSON/msgpack spelling of v1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from streaming.protocol import RETRYABLE_CODES, Wire, decode_event, encode_event
from streaming.results import Word

__all__ = ["Ready", "SpeechStart", "Partial", "SpeechEnd", "Final", "EagerEndOfTurn", "TurnResumed", "Cleared",
           "Error", "End", "OtherEvent",
           "Disconnected", "Reconnected", "AudioDropped", "GaveUp", "ServerEvent", "ClientEvent", "StreamEvent",
           "Word", "parse_event", "Codec", "start_message", "RETRYABLE_ERROR_CODES", "is_retryable"]


RETRYABLE_ERROR_CODES = RETRYABLE_CODES
"""Fatal error codes after which a new connection may succeed: ``streaming.protocol``'s fact, not a copy."""


def is_retryable(code: str) -> bool:
    """Whether a fatal error with ``code`` ends only this connection, not the stream (reconnect helps)."""
    return code in RETRYABLE_ERROR_CODES


# --- server events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    """Base of the server events: ``seq`` as the server (or, after reconnects, the client) numbers it."""

    type: ClassVar[str] = ""
    seq: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, kw_only=True)
    """Fields of the message this client does not model (kept so nothing a newer server says is lost)."""

    def to_message(self) -> dict[str, Any]:
        """The v1 message as a dict (``type``, ``seq``, the fields, then ``extra``)."""
        out: dict[str, Any] = {"type": self.type, "seq": self.seq}
        for f in dataclasses.fields(self):
            if f.name not in ("seq", "extra"):
                out[f.name] = getattr(self, f.name)
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Ready(_Message):
    type: ClassVar[str] = "ready"
    session_id: str
    model: str
    protocol: int
    options: dict[str, Any]


@dataclass(frozen=True)
class SpeechStart(_Message):
    type: ClassVar[str] = "speech_start"
    utterance_id: int
    start_s: float


@dataclass(frozen=True)
class Partial(_Message):
    """The open utterance's current text; ``text`` starts with ``stable_text``, which later partials keep."""

    type: ClassVar[str] = "partial"
    utterance_id: int
    text: str
    stable_text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class SpeechEnd(_Message):
    type: ClassVar[str] = "speech_end"
    utterance_id: int
    end_s: float


@dataclass(frozen=True)
class Final(_Message):
    """An utterance's text, never changed again; ``words`` only when the start asked for ``words``."""

    type: ClassVar[str] = "final"
    utterance_id: int
    text: str
    language: str | None
    start_s: float
    end_s: float
    words: tuple[Word, ...] | None = None
    word_timing: str | None = None
    speaker: int | None = None
    """``diarize``: who said most of it (each word has its own ``speaker``)."""

    def to_message(self) -> dict[str, Any]:
        out = super().to_message()
        if self.speaker is None:
            del out["speaker"]
        if self.words is None:
            del out["words"], out["word_timing"]
        else:
            out["words"] = [{k: v for k, v in dataclasses.asdict(w).items() if k != "speaker" or v is not None}
                            for w in self.words]
        return out


@dataclass(frozen=True)
class EagerEndOfTurn(_Message):
    """Smart turn detection: the pause probably ends the turn; ``text`` is what the final will say
    unless :class:`TurnResumed` takes it back (speech went on)."""

    type: ClassVar[str] = "eager_end_of_turn"
    utterance_id: int
    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TurnResumed(_Message):
    """Speech went on after an :class:`EagerEndOfTurn`: the utterance stays open (one utterance, not two)."""

    type: ClassVar[str] = "turn_resumed"
    utterance_id: int
    at_s: float


@dataclass(frozen=True)
class Cleared(_Message):
    """A ``clear`` was applied: ``utterance_id`` (``None`` when none was open) is dropped, no final follows."""

    type: ClassVar[str] = "cleared"
    utterance_id: int | None
    at_s: float


@dataclass(frozen=True)
class Error(_Message):
    """A server error; ``code`` is one of ``streaming.protocol.ERROR_CODES``; fatal ones end the session."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool


@dataclass(frozen=True)
class End(_Message):
    """After ``stop``: every final was sent."""

    type: ClassVar[str] = "end"
    utterances: int
    audio_s: float


@dataclass(frozen=True)
class OtherEvent:
    """A message this client does not know (or a known type with fields it cannot read), as received."""

    type: str
    seq: int | None
    fields: dict[str, Any]

    def to_message(self) -> dict[str, Any]:
        return dict(self.fields)


ServerEvent = (Ready | SpeechStart | Partial | SpeechEnd | Final | EagerEndOfTurn | TurnResumed | Cleared | Error
               | End | OtherEvent)


# --- client-side events (the connection, not the server) --------------------------------------------


@dataclass(frozen=True)
class Disconnected:
    """The connection failed or was lost; ``retry_in_s`` is ``None`` when the client does not retry
    (the stream is over), else the delay before the next attempt."""

    type: ClassVar[str] = "disconnected"
    reason: str
    retry_in_s: float | None
    code: str | None = None
    """The server's error code when a (retryable) server error closed the connection."""
    connected_before: bool = True
    """False while the very first connection has not been made yet."""


@dataclass(frozen=True)
class Reconnected:
    """A new connection is ready; ``replay_s`` of audio not yet covered by a final is sent again."""

    type: ClassVar[str] = "reconnected"
    session_id: str
    replay_s: float


@dataclass(frozen=True)
class AudioDropped:
    """The buffer of unsent audio was full (server away too long): the oldest audio is being dropped."""

    type: ClassVar[str] = "audio_dropped"
    buffer_s: float


@dataclass(frozen=True)
class GaveUp:
    """The server did not end the stream within the stop timeout; ``unacknowledged_s`` may lack a final."""

    type: ClassVar[str] = "gave_up"
    timeout_s: float
    unacknowledged_s: float


ClientEvent = Disconnected | Reconnected | AudioDropped | GaveUp
StreamEvent = ServerEvent | ClientEvent


# --- parsing ------------------------------------------------------------------------------------------


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _typed(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, kind):
            raise ValueError(f"not a {kind.__name__}: {value!r}")
        return value

    return check


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _words(value: Any) -> tuple[Word, ...] | None:
    if value is None:
        return None
    return tuple(Word(str(w["word"]), _number(w["start_s"]), _number(w["end_s"]), _number(w["probability"]),
                      None if w.get("speaker") is None else _integer(w["speaker"]))
                 for w in value)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "session_id": _typed(str), "model": _typed(str), "protocol": _integer, "options": _typed(dict),
    "utterance_id": _integer, "start_s": _number, "end_s": _number, "at_s": _number, "text": _typed(str),
    "stable_text": _typed(str), "language": _optional(_typed(str)), "words": _words,
    "word_timing": _optional(_typed(str)), "code": _typed(str), "message": _typed(str), "fatal": _typed(bool),
    "utterances": _integer, "audio_s": _number, "speaker": _optional(_integer),
}
_CLASSES: dict[str, type[_Message]] = {cls.type: cls for cls in
                                        (Ready, SpeechStart, Partial, SpeechEnd, Final, EagerEndOfTurn,
                                         TurnResumed, Cleared, Error, End)}


def parse_event(message: dict[str, Any]) -> ServerEvent:
    """A decoded server message as its typed event; never raises (unreadable → :class:`OtherEvent`)."""
    kind = message.get("type")
    seq = message.get("seq")
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is not None and isinstance(seq, int) and not isinstance(seq, bool):
        values: dict[str, Any] = {}
        try:
            for f in dataclasses.fields(cls):
                if f.name in ("seq", "extra"):
                    continue
                if f.name in message:
                    convert = _CONVERTERS[f.name]
                    # Cleared.utterance_id is the one nullable id.
                    values[f.name] = (None if cls is Cleared and f.name == "utterance_id"
                                      and message[f.name] is None else convert(message[f.name]))
                elif f.default is dataclasses.MISSING:
                    raise KeyError(f.name)
        except (KeyError, ValueError, TypeError):
            pass
        else:
            extra = {k: v for k, v in message.items() if k not in values and k not in ("type", "seq")}
            return cls(seq, **values, extra=extra)
    return OtherEvent(str(kind), seq if isinstance(seq, int) else None, dict(message))


# --- wire codec ---------------------------------------------------------------------------------------


class Codec:
    """Encodes client messages and decodes server messages, in JSON or msgpack mode (protocol v1)."""

    def __init__(self, use_msgpack: bool = False) -> None:
        self.use_msgpack = use_msgpack
        self.wire = Wire.MSGPACK if use_msgpack else Wire.JSON

    def control(self, message: dict[str, Any]) -> str | bytes:
        return encode_event(message, self.wire)

    def audio(self, pcm: bytes) -> bytes:
        if self.use_msgpack:
            return encode_event({"type": "audio", "pcm": pcm}, self.wire)  # type: ignore[return-value]
        return pcm

    def event(self, frame: str | bytes) -> dict[str, Any]:
        """One server frame as its message dict (raises ``ValueError`` for a frame that is not one)."""
        return decode_event(frame)


def start_message(sample_rate_hz: int, *, encoding: str = "pcm_s16le", language: str | None = None,
                  window_s: int | None = None, partials: bool = True, words: bool = False,
                  context: str | None = None, endpointing: bool = True,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``start`` message; optional fields are only sent when set, so server defaults apply."""
    message: dict[str, Any] = {"type": "start", "sample_rate": int(sample_rate_hz), "encoding": encoding,
                               "partials": partials}
    if language is not None:
        message["language"] = language
    if window_s is not None:
        message["window_s"] = window_s
    if words:
        message["words"] = True
    if context is not None:
        message["context"] = context
    if not endpointing:
        message["endpointing"] = False
    message.update(extra or {})
    return message
