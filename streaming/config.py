"""Every knob, defined once: option dataclasses filled by the config file, the CLI and ``start``.

A TOML config (``configs/*.toml``) has the sections ``[model]``, ``[engine]``,
``[server]``, ``[session]`` and ``[vad]``, one per dataclass below. The CLI
overrides single fields; a client's ``start`` message overrides the fields that
:data:`SESSION_FIELDS` allows, each validated against its range.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import shown as _shown


class ConfigError(ValueError):
    """A config file, CLI value or start field that is unknown or out of range."""


@dataclass
class ModelOptions:
    """Which model runs and where."""

    name: str = "tiny.en"
    """Embedded model name (``tiny.en``, ``base``), a local checkpoint folder, or a hub id."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    dtype: str = "auto"
    """``float32``, ``float16``, ``bfloat16`` or ``auto`` (float32 on CPU, half on GPU)."""
    threads: int = 0
    """Torch intra-op threads for the inference worker; 0 = all cores."""


@dataclass
class EngineOptions:
    """The inference worker that batches the work of all sessions."""

    max_batch: int = 8
    """Most utterances decoded together in one batch."""
    partial_batch_s: float = 0.5
    """Target duration of one partial batch: partial batches are sized from the measured cost per
    utterance so a final that arrives meanwhile waits at most about this long (finals go first)."""


@dataclass
class ServerOptions:
    """Network-facing limits and endpoints."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 32
    """Concurrent sessions; one more is refused with ``too_many_sessions``."""
    max_message_bytes: int = 1 << 20
    """Largest client frame; larger gets ``message_too_large``."""
    idle_timeout_s: float = 60.0
    """A session that sends nothing for this long is closed (vanished clients)."""
    send_queue_events: int = 1000
    """Events buffered for a slow reader before its session is closed (unsent partials are replaced
    by newer ones, so only finals and other events count)."""
    send_queue_bytes: int = 4 << 20
    """Bytes of events buffered for a slow reader before its session is closed."""
    send_timeout_s: float = 20.0
    """A client that takes no data for this long while events wait is closed (``slow_client``)."""
    web_dir: str = ""
    """Folder of the browser demo; empty = the ``web/`` folder of the repository."""
    certfile: str = ""
    """TLS certificate (PEM) to serve ``wss://`` and ``https://``; empty = plain."""
    keyfile: str = ""
    """TLS private key (PEM) for ``certfile``."""
    drain_timeout_s: float = 10.0
    """On shutdown, how long open sessions get to finish their pending finals."""
    max_pending_connections: int = 16
    """Connections that have not sent ``start`` yet, counted apart from sessions; more are refused."""
    start_timeout_s: float = 10.0
    """A connection that sends no ``start`` within this long is closed (``idle_timeout``)."""
    max_session_s: float = 14_400.0
    """Longest session (wall clock); then it gets ``session_too_long`` after its pending finals."""
    ping_interval_s: float = 20.0
    """WebSocket ping interval; a peer that does not answer within ``ping_timeout_s`` is dropped."""
    ping_timeout_s: float = 20.0
    """How long a WebSocket ping may go unanswered before the connection is dropped."""
    close_timeout_s: float = 5.0
    """How long a decided close may wait for the client before the transport is aborted."""
    max_audio_ahead_s: float = 8.0
    """Audio of one session fed to the engine but not yet decoded; above it the server stops
    reading that client's socket (TCP backpressure) until the engine catches up."""
    max_pending_finals: int = 2
    """Finals one session may have waiting for the engine before its socket is no longer read."""
    api_keys: list[str] = field(default_factory=list)
    """Accepted API keys (``Authorization: Bearer``, subprotocol or ``?token=``); empty = no auth."""
    api_keys_file: str = ""
    """File of API keys, one per line (``KEY [max_sessions]``; ``#`` comments); adds to ``api_keys``."""
    max_sessions_per_key: int = 0
    """Concurrent sessions one API key may hold (0 = only ``max_sessions``)."""
    allowed_origins: list[str] = field(default_factory=list)
    """Browser origins allowed to open sessions (``*`` = any); empty = same origin and localhost."""
    allow_unauthenticated: bool = False
    """Serve a non-loopback address with no API keys (otherwise the server refuses to start)."""
    info_public: bool = False
    """Whether ``/v1/info`` shows load figures (sessions, engine) without an API key."""
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per log line)."""
    request_head_timeout_s: float = 10.0
    """A connection that sends no complete HTTP request head within this long is dropped."""
    max_upload_bytes: int = 25 * 1024 * 1024
    """Largest file for ``POST /v1/audio/transcriptions`` (OpenAI's limit is 25 MB); larger gets 413."""
    max_file_audio_s: float = 4 * 3600.0
    """Longest audio in one uploaded file (a small compressed file can hold hours); longer gets 400."""
    max_file_jobs: int = 4
    """Files transcribed at once; one more gets 429."""
    upload_timeout_s: float = 120.0
    """Time to receive a whole upload; slower gets 408."""


@dataclass
class SessionOptions:
    """Per-session decoding options; a client's ``start`` may override them."""

    language: str | None = None
    """ISO language code; None = the model's default or detection."""
    partials: bool = True
    """Send partial hypotheses."""
    step_s: float = 1.0
    """Stream audio between two partial updates."""
    window_s: int | None = None
    """Encoder attention window in seconds (models that support it)."""
    context: str | None = None
    """Hotwords/context text; biases decoding, never in the transcript."""
    words: bool = False
    """Word timings (start, end, probability) on every final."""


@dataclass
class VadOptions:
    """Voice-activity detection and endpointing."""

    aggressiveness: int = 2
    """webrtcvad mode, 0 (least) to 3 (most aggressive about calling audio non-speech)."""
    frame_ms: int = 30
    """VAD frame length: 10, 20 or 30 ms."""
    speech_start_ms: int = 120
    """Voiced audio (within ``speech_window_ms``) needed to open an utterance."""
    speech_window_ms: int = 300
    """Window over which ``speech_start_ms`` is counted."""
    endpoint_silence_ms: int = 600
    """Unvoiced audio that ends an utterance."""
    endpointing: bool = True
    """End utterances at pauses; false = manual mode, where only ``finalize``, ``stop`` and the
    ``max_utterance_s`` cut end one."""
    preroll_ms: int = 150
    """Audio kept before the detected start so first words are not clipped."""
    max_utterance_s: float = 25.0
    """An utterance is cut at the quietest point near this length."""
    speech_threshold: float = 0.5
    """Silero VAD probability that confirms webrtcvad's voiced frames as speech; 0 = webrtcvad alone."""
    speech_hold_ms: int = 600
    """How long after Silero's last speech chunk webrtcvad's voiced frames still count as speech."""


@dataclass
class Config:
    model: ModelOptions = field(default_factory=ModelOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    server: ServerOptions = field(default_factory=ServerOptions)
    session: SessionOptions = field(default_factory=SessionOptions)
    vad: VadOptions = field(default_factory=VadOptions)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML config; unknown sections or keys are an error, missing ones keep defaults."""
    config = Config()
    if path is None:
        return config
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    for section, values in data.items():
        target = getattr(config, section, None)
        if target is None or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        for key, value in values.items():
            set_field(target, key, value, where=f"{path}: [{section}]")
    return config


def set_field(obj: Any, key: str, value: Any, where: str = "") -> None:
    """Set one dataclass field with a strict type check (int accepted for float, never bool for a number)."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if key not in fields:
        raise ConfigError(f"{where} unknown option {key!r}")
    kind, nullable = _field_type(type(obj), key)
    if kind is not None:
        value = check_value(f"{where} option {key!r}", value, kind, nullable)
    setattr(obj, key, value)


@functools.cache
def _field_type(cls: type, key: str) -> tuple[type | None, bool]:
    """The field's type from its annotation (``int``, ``str | None``, ``list[str]`` → list) and nullability.

    None as the type means "not checked" (an annotation this function does not understand).
    """
    try:
        hint = typing.get_type_hints(cls)[key]
    except Exception:  # an unresolvable annotation: fall back to the default's type
        default = getattr(cls(), key)
        return (None if default is None else type(default)), default is None
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        nullable = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None, nullable
        hint = rest[0]
    origin = typing.get_origin(hint) or hint
    return (origin if isinstance(origin, type) else None), nullable


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def check_value(name: str, value: Any, kind: type, nullable: bool = False,
                low: float | None = None, high: float | None = None) -> Any:
    """Check one value against its type (JSON's: a bool is not a number), nullability and inclusive range.

    Returns the value converted to ``kind`` (600.0 → 600 for an int, 2 → 2.0 for a float); the range of a
    string bounds its length. Raises :class:`ConfigError` naming ``name``.
    """
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{name} must be {_TYPE_NAMES.get(kind, kind.__name__)}, not null")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be {_TYPE_NAMES[kind]}, got {_shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{name}={_shown(value)} is out of range [{low}, {high}]")
        try:
            return kind(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{name}={_shown(value)} is too large") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {_shown(value)}")
    if kind is str and ((low is not None and len(value) < low) or (high is not None and len(value) > high)):
        raise ConfigError(f"{name} must be {low}-{high} characters long, got {len(value)}")
    return value


@dataclass(frozen=True)
class StartField:
    """The rule for one ``start`` field: which option it sets, its JSON type, whether null is a value, its range."""

    section: str
    """``session`` or ``vad``: the options object it sets."""
    attr: str
    """The option's name in that object."""
    kind: type
    """``bool``, ``int``, ``float`` or ``str``: a JSON boolean, integer (600.0 counts), number or string."""
    low: float | None = None
    high: float | None = None
    """Inclusive range of a number, or of a string's length; None = unbounded."""
    nullable: bool = False
    """Whether ``null`` is a value (it sets the option to None); otherwise null is ``invalid_option``."""


MAX_CONTEXT_CHARS = 1000
# Every field a ``start`` message may set, checked only by this table (docs/protocol.md, /v1/info).
SESSION_FIELDS: dict[str, StartField] = {
    "language": StartField("session", "language", str, 1, 16, nullable=True),
    "partials": StartField("session", "partials", bool),
    "step_s": StartField("session", "step_s", float, 0.25, 5.0),
    "window_s": StartField("session", "window_s", int, 1, 8, nullable=True),
    "context": StartField("session", "context", str, 0, MAX_CONTEXT_CHARS, nullable=True),
    "words": StartField("session", "words", bool),
    "endpoint_silence_ms": StartField("vad", "endpoint_silence_ms", int, 100, 5000),
    "endpointing": StartField("vad", "endpointing", bool),
    "speech_threshold": StartField("vad", "speech_threshold", float, 0.1, 0.95),
    "preroll_ms": StartField("vad", "preroll_ms", int, 0, 1000),
    "max_utterance_s": StartField("vad", "max_utterance_s", float, 2.0, 120.0),
    "vad_aggressiveness": StartField("vad", "aggressiveness", int, 0, 3),
}


def apply_session_fields(session: SessionOptions, vad: VadOptions, fields: dict[str, Any]) -> None:
    """Apply a ``start`` message's option fields to copies' targets, validating each.

    Raises :class:`ConfigError` naming the offending field.
    """
    for key, value in fields.items():
        rule = SESSION_FIELDS.get(key) if isinstance(key, str) else None
        if rule is None:
            raise ConfigError(f"unknown start field {_shown(key)} (known: {', '.join(sorted(SESSION_FIELDS))})")
        value = check_value(key, value, rule.kind, rule.nullable, rule.low, rule.high)
        setattr(session if rule.section == "session" else vad, rule.attr, value)


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def session_field_info() -> dict[str, dict[str, Any]]:
    """Describe the start fields (for ``/v1/info``): JSON type, nullability, range (a string's: its length)."""
    info: dict[str, dict[str, Any]] = {}
    for key, rule in SESSION_FIELDS.items():
        entry: dict[str, Any] = {"type": _JSON_TYPES[rule.kind], "nullable": rule.nullable}
        if rule.kind is str:
            entry |= {"min_length": rule.low, "max_length": rule.high}
        elif rule.kind is not bool:
            entry |= {"min": rule.low, "max": rule.high}
        info[key] = entry
    return info


def copy_options(config: Config) -> tuple[SessionOptions, VadOptions]:
    """Fresh per-session copies of the configured defaults."""
    return dataclasses.replace(config.session), dataclasses.replace(config.vad)
