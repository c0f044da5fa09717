"""Wire protocol v1, sans I/O: frames in → client messages; server events → frames.

See ``docs/protocol.md``. Nothing here touches a socket: the server passes each
received frame (``str`` for text, ``bytes`` for binary) to :meth:`Parser.parse`
and sends what :func:`encode_event` returns.
"""

from __future__ import annotations

import json
import math
import reprlib
from enum import Enum
from typing import Any

import msgpack

from .events import Audio, Clear, Finalize, Keepalive, Start, Stop

PROTOCOL_VERSION = 1
ENCODINGS = ("pcm_s16le", "pcm_f32le", "mulaw", "alaw")
"""Audio encodings of ``start``: 16-bit or float PCM, or 8-bit G.711 µ-law / A-law (telephony)."""
MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 48_000
MAX_CHANNELS = 8
"""Most interleaved channels a stream may carry (``channels`` of ``start``, every protocol)."""
MAX_NESTING = 32
"""Deepest nesting of arrays/objects a client message may have; deeper is ``bad_message``."""


class Wire(Enum):
    JSON = "json"
    MSGPACK = "msgpack"


# code -> (fatal, WebSocket close code)
ERROR_CODES: dict[str, tuple[bool, int | None]] = {
    "bad_message": (False, None),
    "unknown_message": (False, None),
    "already_started": (False, None),
    "partial_sample": (False, None),
    "invalid_update": (False, None),
    "audio_before_start": (True, 1008),
    "unsupported_encoding": (True, 1003),
    "unsupported_sample_rate": (True, 1003),
    "invalid_option": (True, 1008),
    "message_too_large": (True, 1009),
    "invalid_audio": (True, 1007),
    "too_many_sessions": (True, 1013),
    "overloaded": (True, 1013),
    "session_too_long": (True, 1008),
    "idle_timeout": (True, 1008),
    "slow_client": (True, 1008),
    "shutting_down": (True, 1001),
    "internal_error": (True, 1011),
}


RETRYABLE_CODES = frozenset({"too_many_sessions", "overloaded", "shutting_down", "idle_timeout", "slow_client",
                             "internal_error"})
"""Fatal errors after which a new connection may succeed (clients reconnect); any other fatal error is the
client's to fix. Clients and the browser read these from ``/v1/info`` (:func:`protocol_facts`)."""


def protocol_facts() -> dict[str, Any]:
    """The wire facts clients need, as ``/v1/info`` publishes them (one source for every client)."""
    return {"version": PROTOCOL_VERSION, "encodings": list(ENCODINGS), "min_sample_rate_hz": MIN_SAMPLE_RATE_HZ,
            "max_sample_rate_hz": MAX_SAMPLE_RATE_HZ,
            "max_channels": MAX_CHANNELS, "retryable_codes": sorted(RETRYABLE_CODES),
            "error_codes": {code: {"fatal": fatal, "retryable": code in RETRYABLE_CODES}
                            for code, (fatal, _close) in ERROR_CODES.items()}}


def check_frame_size(frame: str | bytes, limit: int) -> None:
    """Refuse a frame over ``limit`` bytes with ``message_too_large`` (every protocol's rule)."""
    # surrogatepass: a str holding a lone surrogate is measured here and refused as bad_message later.
    size = len(frame.encode("utf-8", "surrogatepass")) if isinstance(frame, str) else len(frame)
    if size > limit:
        raise ProtocolError("message_too_large", f"frame of {size} bytes is over the limit of {limit}")


class ProtocolError(Exception):
    """A client fault with a stable ``code``; the shell turns it into one ``error`` event."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        """A retryable refusal's hint of when to come back (``overloaded``); None = no hint."""

    @property
    def fatal(self) -> bool:
        return ERROR_CODES[self.code][0]

    @property
    def close_code(self) -> int | None:
        return ERROR_CODES[self.code][1]


ClientMessage = Start | Audio | Finalize | Clear | Stop | Keepalive


class Parser:
    """Turns received frames into client messages; learns the wire format from the first frame."""

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        self.max_message_bytes = max_message_bytes
        self.wire: Wire | None = None

    def parse(self, frame: str | bytes) -> ClientMessage:
        check_frame_size(frame, self.max_message_bytes)
        if self.wire is None:
            return self._parse_first(frame)
        if self.wire is Wire.JSON:
            if isinstance(frame, bytes):
                return Audio(frame)
            return _message_from_map(parse_json_object(frame))
        if isinstance(frame, str):
            raise ProtocolError("bad_message", "this session speaks msgpack: text frames are not allowed")
        return _message_from_map(_msgpack_map(frame))

    def _parse_first(self, frame: str | bytes) -> ClientMessage:
        if isinstance(frame, str):
            message = _message_from_map(parse_json_object(frame))
            if isinstance(message, Start):
                self.wire = Wire.JSON
            return message
        try:
            obj = _unpack(frame)
        except ProtocolError:
            obj = None  # not msgpack: raw audio
        if isinstance(obj, dict) and obj.get("type") == "start":
            # A msgpack start, even a refused one: the client reads msgpack, so errors go out in msgpack.
            self.wire = Wire.MSGPACK
            return _message_from_map(_checked_map(obj, "msgpack"))
        raise ProtocolError("audio_before_start", "audio received before the start message")


def parse_json_object(text: str) -> dict[str, Any]:
    """A text frame as a JSON object, with every check a v1 message gets (nesting, Unicode); else bad_message."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ProtocolError("bad_message", f"text frame nests deeper than {MAX_NESTING} levels") from None
    except Exception as exc:  # any decoder failure is the client's malformed frame, never a server fault
        raise ProtocolError("bad_message", f"text frame is not valid JSON: {_short(str(exc))}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    return _checked_map(obj, "JSON")


def _unpack(data: bytes) -> Any:
    def refuse_ext(code: int, _data: bytes) -> Any:
        raise ValueError(f"msgpack extension type {code} is not allowed")

    try:
        # strict_map_key=False so that a non-string key is our bad_message, not a decoder error.
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=refuse_ext,
                               max_ext_len=0)
    except (RecursionError, msgpack.exceptions.StackError):
        raise ProtocolError("bad_message", f"msgpack frame nests deeper than {MAX_NESTING} levels") from None
    except Exception as exc:  # any decoder failure is the client's malformed frame, never a server fault
        raise ProtocolError("bad_message", f"binary frame is not valid msgpack: {_short(str(exc))}") from None


def _msgpack_map(data: bytes) -> dict[str, Any]:
    obj = _unpack(data)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "a msgpack message must be a map")
    return _checked_map(obj, "msgpack")


_PLAIN_SCALARS = (type(None), bool, int, float, bytes)


def _checked_map(obj: dict[Any, Any], wire: str) -> dict[str, Any]:
    """Refuse what no message holds: deep nesting, non-string keys, extension types, text that is not UTF-8."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:  # iterative: a hostile frame must not exhaust the call stack
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolError("bad_message", f"a {wire} string is not valid Unicode text") from None
        elif isinstance(value, dict | list):
            if depth > MAX_NESTING:
                raise ProtocolError("bad_message", f"a {wire} message nests deeper than {MAX_NESTING} levels")
            if isinstance(value, dict):
                if not all(isinstance(key, str) for key in value):
                    raise ProtocolError("bad_message", f"every key of a {wire} map must be a string")
                stack.extend((key, depth) for key in value)
                value = value.values()
            stack.extend((item, depth + 1) for item in value)
        elif not isinstance(value, _PLAIN_SCALARS):
            raise ProtocolError("bad_message", f"a {wire} message may not hold a {type(value).__name__}")
    return obj


def _message_from_map(obj: dict[str, Any]) -> ClientMessage:
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "a message needs a string field 'type'")
    if kind == "start":
        return _parse_start(obj)
    if kind == "audio":
        pcm = obj.get("pcm")
        if not isinstance(pcm, (bytes, bytearray)):
            raise ProtocolError("bad_message", "an audio message needs binary field 'pcm'")
        return Audio(bytes(pcm))
    if kind == "finalize":
        return Finalize()
    if kind == "clear":
        return Clear()
    if kind == "stop":
        return Stop()
    if kind == "keepalive":
        return Keepalive()
    raise ProtocolError("unknown_message", f"unknown message type {shown(kind)}")


def _parse_start(obj: dict[str, Any]) -> Start:
    rate = obj.get("sample_rate", 16_000)
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    encoding = obj.get("encoding", "pcm_s16le")
    problem = format_error(rate, encoding)
    if problem is not None:
        raise ProtocolError(*problem)
    channels, multichannel = obj.get("channels", 1), obj.get("multichannel", False)
    if isinstance(channels, float) and channels.is_integer():
        channels = int(channels)
    problem = channels_error(channels, multichannel)
    if problem is not None:
        raise ProtocolError(*problem)
    options = {k: v for k, v in obj.items() if k not in _FORMAT_FIELDS}
    return Start(rate, encoding, options, channels=channels, multichannel=multichannel)


_FORMAT_FIELDS = ("type", "sample_rate", "encoding", "channels", "multichannel")
"""Fields of ``start`` that describe the audio, not the session's options."""


def channels_error(channels: Any, multichannel: Any) -> tuple[str, str] | None:
    """(code, message) when a channel layout cannot be served, else None (every protocol's rule)."""
    if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= MAX_CHANNELS:
        return "invalid_option", f"channels must be an integer from 1 to {MAX_CHANNELS}, got {shown(channels)}"
    if not isinstance(multichannel, bool):
        return "invalid_option", f"multichannel must be a boolean, got {shown(multichannel)}"
    return None


def format_error(rate: Any, encoding: Any) -> tuple[str, str] | None:
    """(code, message) when a sample rate or encoding cannot be served, else None (every protocol's rule)."""
    if not isinstance(rate, int) or isinstance(rate, bool):
        return "unsupported_sample_rate", f"sample_rate must be an integer, got {shown(rate)}"
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        return "unsupported_sample_rate", f"sample_rate {rate} is outside {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz"
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        return "unsupported_encoding", f"encoding {shown(encoding)} is not supported (use one of {', '.join(ENCODINGS)})"
    return None


def decode_event(frame: str | bytes) -> dict[str, Any]:
    """A server event frame back into its dict (clients): JSON text, or msgpack in msgpack mode.

    Raises ``ValueError`` for a frame that is not an event.
    """
    try:
        message = msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else json.loads(frame)
    except Exception as exc:  # any decoder failure: the server sent something that is no event
        raise ValueError(f"server sent a frame that is not an event: {frame!r:.200}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError(f"server sent a frame that is not an event: {frame!r:.200}")
    return message


def encode_event(event: dict[str, Any], wire: Wire | None) -> str | bytes:
    """Serialize one server event for the session's wire format (JSON until known)."""
    if wire is Wire.MSGPACK:
        return msgpack.packb(event, use_bin_type=True)
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3


def shown(value: Any) -> str:
    """A client value as an error message shows it: JSON spelling for literals, bounded in size and depth."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _REPR.repr(value)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def round_time(seconds: float) -> float:
    """Event times in seconds, millisecond resolution."""
    return round(seconds, 3) if math.isfinite(seconds) else 0.0
