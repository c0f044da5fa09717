"""OpenAI Realtime transcription sessions, as plain data: the session object both ways, and the server events.

Pure functions and one small dataclass, no state beyond a value: the codec
(:mod:`.openai_realtime`) keeps the state. Two dialects share them: the GA API
(``session.update`` with ``session.type = "transcription"`` and an
``audio.input`` object) and the beta API a client asks for with the handshake
header ``OpenAI-Beta: realtime=v1`` (``transcription_session.update`` with
``input_audio_format``, ``input_audio_transcription``, ``turn_detection``).
Field sets follow the ``openai`` package's types (``types/realtime`` and
``types/beta/realtime``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import SESSION_FIELDS

SERVER_VAD_DEFAULTS: dict[str, Any] = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                       "silence_duration_ms": 500}
"""OpenAI's turn detection when a client sets none (and the defaults of a ``server_vad`` it sets in part)."""
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
"""``server_vad`` is served by our pause endpointer (``turn_detection = "silence"``), ``semantic_vad`` by the
Smart Turn model (``turn_detection = "smart"``)."""
SEMANTIC_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
"""``semantic_vad`` eagerness → the longest pause a turn survives (``turn_max_silence_ms``): OpenAI documents
maximum waits of 8 s, 4 s and 2 s, and ``auto`` = ``medium``. The eagerness names are ours too
(``turn_eagerness``)."""
DEFAULT_EAGERNESS = "auto"
"""A ``semantic_vad`` without ``eagerness`` (OpenAI's default)."""
GA_FORMATS = {"audio/pcm": ("pcm_s16le", 24_000), "audio/pcmu": ("mulaw", 8_000), "audio/pcma": ("alaw", 8_000)}
"""GA ``audio.input.format.type`` → (Start encoding, sample rate); ``audio/pcm`` may name another ``rate``."""
BETA_FORMATS = {"pcm16": ("pcm_s16le", 24_000), "g711_ulaw": ("mulaw", 8_000), "g711_alaw": ("alaw", 8_000)}
"""Beta ``input_audio_format`` → (Start encoding, sample rate)."""
SERVER_ERROR_CODES = frozenset({"internal_error", "overloaded", "shutting_down", "too_many_sessions"})
"""Our error codes that are the server's fault (OpenAI type ``server_error``); every other is the client's
(``invalid_request_error``)."""


class UpdateError(ValueError):
    """A session update this server refuses; ``param`` is the offending field's path."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---- the session object ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """A transcription session's configuration as the client set it; rendered in either dialect."""

    encoding: str = "pcm_s16le"
    sample_rate: int = 24_000
    transcription: dict[str, Any] | None = field(default_factory=dict)
    """``model``, ``language``, ``prompt`` and whatever else the client set (echoed back)."""
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(SERVER_VAD_DEFAULTS))
    """None = manual commits (no server VAD)."""
    noise_reduction: dict[str, Any] | None = None
    """Accepted and echoed; the server applies none."""
    include: list[Any] | None = None

    @property
    def manual(self) -> bool:
        """Whether only the client's commits end a turn."""
        return self.turn_detection is None

    def options(self) -> dict[str, Any]:
        """The session options (``config.SESSION_FIELDS`` names) this configuration asks for.

        The turn detection mode is always named, whatever the server's default, so an update from one
        type to another (or to null) switches it. Numbers outside our ranges are clamped into them:
        OpenAI's ranges differ from ours, and a client that asks for 50 ms of silence gets the shortest we
        serve rather than an error.
        """
        opts: dict[str, Any] = {}
        td = self.turn_detection
        opts["endpointing"] = td is not None
        if td is None:
            opts["turn_detection"] = "manual"
        else:
            vad = {**SERVER_VAD_DEFAULTS, **td}
            opts["speech_threshold"] = _clamped("speech_threshold", vad["threshold"])
            opts["preroll_ms"] = _clamped("preroll_ms", round(vad["prefix_padding_ms"]))
            if td["type"] == "semantic_vad":
                eagerness = td.get("eagerness", DEFAULT_EAGERNESS)
                opts.update(turn_detection="smart", turn_eagerness=eagerness,
                            turn_max_silence_ms=SEMANTIC_MAX_WAIT_MS[eagerness])
            else:
                opts["turn_detection"] = "silence"
                opts["endpoint_silence_ms"] = _clamped("endpoint_silence_ms", round(vad["silence_duration_ms"]))
        transcription = self.transcription or {}
        if "language" in transcription:
            opts["language"] = transcription["language"] or None  # "" (LiveKit's "detect") = none given
        if "prompt" in transcription:
            opts["context"] = transcription["prompt"] or None
        return opts


def _clamped(option: str, value: float) -> Any:
    rule = SESSION_FIELDS[option]
    value = min(max(value, rule.low), rule.high)
    return rule.kind(value)


def apply_update(settings: Settings, session: Any) -> Settings:
    """``settings`` with one update's ``session`` object applied (GA or beta shape); fields it omits stay.

    Raises :class:`UpdateError` for a value this server cannot serve or understand.
    """
    if not isinstance(session, dict):
        raise UpdateError("'session' must be an object", "session")
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise UpdateError(f"this server serves transcription sessions only: session.type must be "
                          f"'transcription', got {kind!r}", "session.type")
    audio = _object(session, "audio", "session.audio") or {}
    audio_input = _object(audio, "input", "session.audio.input") or {}
    changes: dict[str, Any] = {}
    if audio_input.get("format") is not None:
        changes["encoding"], changes["sample_rate"] = _ga_format(audio_input["format"])
    if session.get("input_audio_format") is not None:
        changes["encoding"], changes["sample_rate"] = _beta_format(session["input_audio_format"])
    for key, path in (("transcription", "session.audio.input.transcription"),
                      ("input_audio_transcription", "session.input_audio_transcription")):
        source = audio_input if key == "transcription" else session
        if key in source:
            changes["transcription"] = _transcription(settings.transcription, source[key], path)
    for source, path in ((audio_input, "session.audio.input.turn_detection"), (session, "session.turn_detection")):
        if "turn_detection" in source:
            changes["turn_detection"] = _turn_detection(source["turn_detection"], path)
    if "noise_reduction" in audio_input:
        changes["noise_reduction"] = copy.deepcopy(audio_input["noise_reduction"])
    if "input_audio_noise_reduction" in session:
        changes["noise_reduction"] = copy.deepcopy(session["input_audio_noise_reduction"])
    if "include" in session:
        changes["include"] = copy.deepcopy(session["include"])
    return replace(settings, **changes)


def _object(parent: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, dict):
        raise UpdateError(f"'{path}' must be an object", path)
    return value


def _ga_format(fmt: Any) -> tuple[str, int]:
    path = "session.audio.input.format"
    if not isinstance(fmt, dict) or fmt.get("type") not in GA_FORMATS:
        raise UpdateError(f"'{path}.type' must be one of {', '.join(GA_FORMATS)}", f"{path}.type")
    encoding, rate = GA_FORMATS[fmt["type"]]
    if fmt["type"] == "audio/pcm" and fmt.get("rate") is not None:
        rate = fmt["rate"]
        if isinstance(rate, float) and rate.is_integer():
            rate = int(rate)
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise UpdateError(f"'{path}.rate' must be an integer", f"{path}.rate")
    return encoding, rate


def _beta_format(fmt: Any) -> tuple[str, int]:
    if fmt not in BETA_FORMATS:
        raise UpdateError(f"'session.input_audio_format' must be one of {', '.join(BETA_FORMATS)}",
                          "session.input_audio_format")
    return BETA_FORMATS[fmt]


def _transcription(current: dict[str, Any] | None, value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UpdateError(f"'{path}' must be an object or null", path)
    for key in ("language", "prompt"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise UpdateError(f"'{path}.{key}' must be a string", f"{path}.{key}")
    return {**(current or {}), **copy.deepcopy(value)}


def _turn_detection(value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UpdateError(f"'{path}' must be an object or null", path)
    kind = value.get("type") or "server_vad"
    if kind not in TURN_DETECTION_TYPES:
        raise UpdateError(f"'{path}.type' must be one of {', '.join(TURN_DETECTION_TYPES)}", f"{path}.type")
    given = {k: v for k, v in copy.deepcopy(value).items() if v is not None}
    for key in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
        number = given.get(key, 0)
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise UpdateError(f"'{path}.{key}' must be a number", f"{path}.{key}")
    if kind == "semantic_vad":
        eagerness = given.setdefault("eagerness", DEFAULT_EAGERNESS)
        if not isinstance(eagerness, str) or eagerness not in SEMANTIC_MAX_WAIT_MS:
            raise UpdateError(f"'{path}.eagerness' must be one of {', '.join(SEMANTIC_MAX_WAIT_MS)}",
                              f"{path}.eagerness")
        return {"type": kind, **given}  # type and eagerness (filled in), as OpenAI shows semantic_vad
    return {**SERVER_VAD_DEFAULTS, **given, "type": kind}  # server_vad with its defaults, as OpenAI shows it


def render_session(settings: Settings, *, beta: bool, session_id: str, model: str) -> dict[str, Any]:
    """The session object of ``session.created/updated`` (GA) or ``transcription_session.*`` (beta)."""
    transcription = (None if settings.transcription is None
                     else {"model": model, "language": None, "prompt": "", **settings.transcription})
    common = {"id": session_id, "object": "realtime.transcription_session", "expires_at": 0,
              "include": copy.deepcopy(settings.include)}
    if beta:
        fmt = next(name for name, (enc, _rate) in BETA_FORMATS.items() if enc == settings.encoding)
        return {**common, "input_audio_format": fmt, "input_audio_transcription": transcription,
                "turn_detection": copy.deepcopy(settings.turn_detection),
                "input_audio_noise_reduction": copy.deepcopy(settings.noise_reduction),
                "modalities": ["text"], "client_secret": None}
    kind = next(name for name, (enc, _rate) in GA_FORMATS.items() if enc == settings.encoding)
    fmt = {"type": kind, "rate": settings.sample_rate} if kind == "audio/pcm" else {"type": kind}
    return {"type": "transcription", **common,
            "audio": {"input": {"format": fmt, "transcription": transcription,
                                "noise_reduction": copy.deepcopy(settings.noise_reduction),
                                "turn_detection": copy.deepcopy(settings.turn_detection)}}}


# ---- server events (without ``event_id``: the codec adds a fresh one to each) ------------------------


def ms(seconds: float) -> int:
    """Stream time in seconds → OpenAI's integer milliseconds."""
    return int(round(seconds * 1000))


def user_item(item_id: str) -> dict[str, Any]:
    """The user message item a commit creates; its transcript arrives in ``...transcription.completed``."""
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}]}


def error_body(code: str, message: str, param: str | None = None, client_event_id: str | None = None
               ) -> dict[str, Any]:
    """The ``error`` object of an ``error`` event (and of ``...transcription.failed``)."""
    kind = "server_error" if code in SERVER_ERROR_CODES else "invalid_request_error"
    return {"type": kind, "code": code, "message": message, "param": param, "event_id": client_event_id}


def completed(item_id: str, transcript: str, seconds: float, language: str | None, *, beta: bool
              ) -> dict[str, Any]:
    event = {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
             "content_index": 0, "transcript": transcript,
             "usage": {"type": "duration", "seconds": round(max(seconds, 0.0), 3)}, "logprobs": None}
    if not beta:  # GA only: the languages found (empty = none reliably detected)
        event["languages"] = [{"code": language}] if language else []
    return event


def failed(item_id: str, code: str, message: str) -> dict[str, Any]:
    body = error_body(code, message)
    del body["event_id"]
    return {"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id, "content_index": 0,
            "error": body}
