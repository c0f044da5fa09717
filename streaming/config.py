"""Every knob, defined once: option dataclasses filled by the config file, the CLI and ``start``.

A TOML config (``configs/*.toml``) has the sections ``[model]``, ``[engine]``, ``[server]``,
``[session]``, ``[vad]``, ``[whisper]`` and ``[qwen3_asr]``, one per dataclass of :class:`Config`.
A field carries its own rules (:func:`~streaming.knobs.opt`: range, choices, CLI flag, ``start``
name) and its attribute docstring; the TOML checks, ``--set``, the CLI flags (:mod:`streaming.cli`),
the ``start`` fields (:data:`SESSION_FIELDS`) and ``/v1/info`` are derived from them.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .knobs import ConfigError, knobs, opt
from .models.options import Qwen3Options, WhisperDecodingOptions
from .protocol import shown as _shown

__all__ = ["MAX_CONTEXT_CHARS", "SECTIONS", "SESSION_FIELDS", "Config", "ConfigError", "EngineOptions",
           "ModelOptions", "Qwen3Options", "ServerOptions", "SessionOptions", "StartField", "TurnModelOptions", "VadOptions",
           "WhisperDecodingOptions", "apply_session_fields", "copy_options", "load_config",
           "session_field_info", "set_field"]

MAX_CONTEXT_CHARS = 1000
"""Longest ``context`` (hotwords) in characters, on every protocol."""


@dataclass
class ModelOptions:
    """Which model runs and where."""

    name: str = opt("tiny.en", flag="--model", metavar="NAME_OR_PATH")
    """Embedded model (``tiny.en``, ``base``), a local transformers checkpoint folder (Whisper or
    Qwen3-ASR), or a hub id."""
    device: str = opt("auto", choices=("auto", "cpu", "cuda"), flag="--device")
    """Where the model runs: ``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    dtype: str = opt("auto", choices=("auto", "float32", "float16", "bfloat16"), flag="--dtype")
    """Model precision: ``float32``, ``float16``, ``bfloat16`` or ``auto`` (float32 on CPU, half on GPU)."""
    threads: int = opt(0, low=0, flag="--threads")
    """Torch intra-op threads for the inference worker; 0 = all cores."""


@dataclass
class EngineOptions:
    """The inference worker that batches the work of all sessions."""

    max_batch: int = opt(8, low=1, flag="--max-batch")
    """Most utterances decoded together in one batch."""
    partial_batch_s: float = 0.5
    """Target duration of one partial batch: partial batches are sized from the measured cost per
    utterance so a final that arrives meanwhile waits at most about this long (finals go first)."""
    partial_shed_s: float = opt(1.0, low=0.05, high=60.0)
    """Overload threshold: while a final has waited this long (or the finals waiting would take this
    long), and for this long after, a partial runs only once it has waited this long (partials degrade
    first: about one per utterance per this long, each over all audio received; finals never wait for them)."""


@dataclass
class ServerOptions:
    """Network-facing limits and endpoints."""

    host: str = opt("127.0.0.1", flag="--host", metavar="ADDRESS")
    """Address to listen on (``0.0.0.0`` = every interface; a non-loopback address needs API keys)."""
    port: int = opt(8765, low=0, high=65535, flag="--port")
    """TCP port; 0 = any free port."""
    max_sessions: int = opt(32, low=1, flag="--max-sessions")
    """Concurrent sessions; one more is refused with ``too_many_sessions``."""
    capacity_streams: int = opt(0, low=0)
    """Streams admitted at once (one more gets ``overloaded``); 0 = measured from the model's cost at start-up."""
    latency_target_s: float = opt(1.5, low=0.1, high=60.0)
    """Final latency (speech end to final) the capacity is sized for; a final waiting half of it means full."""
    max_busy_fraction: float = opt(0.85, low=0.05, high=1.0)
    """Model-busy share of wall time the admitted streams may cause; above it new streams get ``overloaded``."""
    load_admission: bool = True
    """Whether the live engine load (busy fraction, waiting finals) may refuse streams below the capacity."""
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
    certfile: str = opt("", flag="--certfile", metavar="PEM")
    """TLS certificate (PEM) to serve ``wss://`` and ``https://``; empty = plain."""
    keyfile: str = opt("", flag="--keyfile", metavar="PEM")
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
    api_keys: list[str] = opt([], flag="--api-key", metavar="KEY", group="security")
    """Accepted API keys (``Authorization: Bearer``, subprotocol or ``?token=``), URL-safe characters
    (letters, digits, ``-._~``); empty = no auth."""
    api_keys_file: str = opt("", flag="--api-keys-file", metavar="FILE", group="security")
    """File of API keys, one per line (``KEY [max_sessions]``; ``#`` comments); adds to ``api_keys``."""
    max_sessions_per_key: int = opt(0, low=0, flag="--max-sessions-per-key", group="security")
    """Concurrent sessions one API key may hold (0 = only ``max_sessions``; the keys file may set its own)."""
    allowed_origins: list[str] = opt([], flag="--allowed-origin", metavar="ORIGIN", group="security")
    """Browser origins allowed to open sessions, e.g. ``https://app.example.com`` (``*`` = any); empty =
    the server's own origin and localhost."""
    allow_unauthenticated: bool = opt(False, flag="--allow-unauthenticated", group="security")
    """Serve a non-loopback address with no API keys (otherwise the server refuses to start)."""
    info_public: bool = opt(False, flag="--info-public", group="security")
    """Whether ``/v1/info`` load figures (sessions, engine) and ``/metrics`` are served without an API key."""
    log_format: str = opt("text", choices=("text", "json"), flag="--log-format", group="logging")
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

    language: str | None = opt(None, low=1, high=16, start=True, flag="--language", metavar="CODE")
    """ISO language code; unset (None) = the model's default or detection."""
    partials: bool = opt(True, start=True)
    """Send partial hypotheses."""
    step_s: float = opt(1.0, low=0.25, high=5.0, start=True, flag="--step-s")
    """Stream audio between two partial updates."""
    window_s: int | None = opt(None, low=1, high=8, start=True, flag="--window-s")
    """Encoder attention window in whole seconds (models that support it); unset (None) = the model's default."""
    context: str | None = opt(None, low=0, high=MAX_CONTEXT_CHARS, start=True)
    """Hotwords/context text; biases decoding, never in the transcript."""
    words: bool = opt(False, start=True)
    """Word timings (start, end, probability) on every final."""
    task: str = opt("transcribe", choices=("transcribe", "translate"), start=True, flag="--task")
    """``transcribe`` (text in the spoken language) or ``translate`` (English text from any language:
    Whisper's translate task, multilingual Whisper models only); ``language`` stays the source language."""
    diarize: bool = opt(False, start=True)
    """Speaker labels: every final (and each of its words) says who spoke, 0, 1, … stable for the session."""
    max_speakers: int | None = opt(None, low=1, high=16, start=True)
    """``diarize``: at most this many speakers (a hint: a new voice past it joins the nearest); None = no cap."""


@dataclass
class VadOptions:
    """Voice-activity detection and endpointing."""

    aggressiveness: int = opt(2, low=0, high=3, start="vad_aggressiveness")
    """webrtcvad mode, 0 (least) to 3 (most aggressive about calling audio non-speech)."""
    frame_ms: int = opt(30, choices=(10, 20, 30))
    """VAD frame length: 10, 20 or 30 ms."""
    speech_start_ms: int = 120
    """Voiced audio (within ``speech_window_ms``) needed to open an utterance."""
    speech_window_ms: int = 300
    """Window over which ``speech_start_ms`` is counted."""
    endpoint_silence_ms: int = opt(600, low=100, high=5000, start=True, flag="--endpoint-silence-ms")
    """Unvoiced audio that ends an utterance."""
    endpointing: bool = opt(True, start=True)
    """End utterances at pauses; false = manual mode, where only ``finalize``, ``stop`` and the
    ``max_utterance_s`` cut end one (the same as ``turn_detection = "manual"``)."""
    turn_detection: str = opt("silence", choices=("silence", "smart", "manual"), start=True,
                              flag="--turn-detection")
    """How a turn (utterance) ends: ``silence`` (after ``endpoint_silence_ms`` of silence), ``smart``
    (the Smart Turn model judges each pause of ``turn_pause_ms``; ``turn_max_silence_ms`` at most) or
    ``manual`` (only ``finalize``, ``stop`` and the ``max_utterance_s`` cut)."""
    turn_eagerness: str = opt("auto", choices=("low", "medium", "high", "auto"), start=True)
    """Smart mode: how readily a pause ends the turn (``high`` ends sooner and cuts in more often;
    ``auto`` = ``medium``); sets the turn model's thresholds (``streaming/turns.py``)."""
    turn_pause_ms: int = opt(150, low=60, high=2000, start=True)
    """Smart mode: silence after which the turn model judges whether the turn is complete."""
    turn_max_silence_ms: int = opt(2000, low=200, high=10_000, start=True)
    """Smart mode: the longest pause a turn survives when the model says incomplete (stream audio,
    and wall clock while the client sends nothing)."""
    eager_end_of_turn: bool = opt(False, start=True)
    """Smart mode: send ``eager_end_of_turn`` with the transcript when a pause probably ends the turn
    (``turn_resumed`` takes it back if speech follows; the final then reuses that decode)."""
    turn_prefetch: bool = True
    """Smart mode: decode the utterance at every pause while the turn model scores it, so a turn the
    model ends has its final (that decode) without waiting for a decoder; the decode is eager work,
    dropped first under load, and wasted when speech resumes. False: decode only once the turn ends."""
    preroll_ms: int = opt(150, low=0, high=1000, start=True)
    """Audio kept before the detected start so first words are not clipped."""
    max_utterance_s: float = opt(25.0, low=2.0, high=120.0, start=True)
    """An utterance is cut at the quietest point near this length."""
    speech_threshold: float = opt(0.5, low=0.0, high=0.95, start=True, start_range=(0.1, 0.95))
    """Silero VAD probability that confirms webrtcvad's voiced frames as speech; 0 = webrtcvad alone."""
    speech_hold_ms: int = 600
    """How long after Silero's last speech chunk webrtcvad's voiced frames still count as speech."""


@dataclass
class TurnModelOptions:
    """The end-of-turn model of ``turn_detection = "smart"`` (Smart Turn v3.2, ONNX)."""

    path: str = opt("", metavar="ONNX")
    """The model file; empty = the copy ``scripts/setup.sh`` takes from the pipecat-ai wheel
    (``<venv>/share/streaming-asr/smart-turn-v3.2-cpu.onnx``)."""
    threads: int = opt(1, low=1, high=64)
    """onnxruntime intra-op threads of the turn model's worker thread."""


@dataclass
class Config:
    """The whole configuration: one options object per TOML section (the field name is the section)."""

    model: ModelOptions = field(default_factory=ModelOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    server: ServerOptions = field(default_factory=ServerOptions)
    session: SessionOptions = field(default_factory=SessionOptions)
    vad: VadOptions = field(default_factory=VadOptions)
    whisper: WhisperDecodingOptions = field(default_factory=WhisperDecodingOptions)
    """Decoding knobs of the Whisper backends (embedded and transformers checkpoints)."""
    qwen3_asr: Qwen3Options = field(default_factory=Qwen3Options)
    """Knobs of the Qwen3-ASR backend."""
    turn_model: TurnModelOptions = field(default_factory=TurnModelOptions)
    """The end-of-turn model of smart turn detection."""


SECTIONS: dict[str, type] = typing.get_type_hints(Config)
"""Section name → its options dataclass."""


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


def set_field(obj: Any, key: str, value: Any, where: str = "", name: str | None = None) -> None:
    """Set one dataclass field after its knob's checks: strict type (int accepted for float, never bool
    for a number), nullability, range and choices. Errors name ``name`` (default: ``where`` and the key)."""
    knob = knobs(type(obj)).get(key)
    if knob is None:
        known = ", ".join(knobs(type(obj)))
        raise ConfigError(f"{name + ':' if name else where} unknown option {key!r} (known: {known})")
    setattr(obj, key, knob.check(name or f"{where} option {key!r}", value))


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
    choices: tuple[Any, ...] | None = None
    """The only values allowed, when the option has a fixed set (e.g. ``turn_detection``)."""


_START_SECTIONS = ("session", "vad")
"""The sections a session copies (:func:`copy_options`): the only ones ``start`` may set."""
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _start_fields() -> dict[str, StartField]:
    """The ``start`` table, from the fields declared with ``opt(start=...)``."""
    table: dict[str, StartField] = {}
    for section, cls in SECTIONS.items():
        for knob in knobs(cls).values():
            if knob.start is None:
                continue
            if section not in _START_SECTIONS or knob.kind not in _JSON_TYPES or knob.start in table:
                raise TypeError(f"[{section}] {knob.name}: a start field must be a bool/int/float/str of "
                                f"{_START_SECTIONS} with a name of its own, got {knob.start!r}")
            low, high = knob.rules.start_range or (knob.rules.low, knob.rules.high)
            table[knob.start] = StartField(section, knob.name, knob.kind, low, high, knob.nullable, knob.rules.choices)
    return table


def apply_session_fields(session: SessionOptions, vad: VadOptions, fields: dict[str, Any]) -> None:
    """Apply a ``start`` message's option fields to copies' targets, validating each.

    Raises :class:`ConfigError` naming the offending field.
    """
    for key, value in fields.items():
        rule = SESSION_FIELDS.get(key) if isinstance(key, str) else None
        if rule is None:
            raise ConfigError(f"unknown start field {_shown(key)} (known: {', '.join(sorted(SESSION_FIELDS))})")
        target = session if rule.section == "session" else vad
        setattr(target, rule.attr, knobs(type(target))[rule.attr].check(key, value, for_start=True))


SESSION_FIELDS: dict[str, StartField] = _start_fields()
"""Every field a ``start`` message may set, checked only by these rules (docs/protocol.md, /v1/info)."""


def session_field_info() -> dict[str, dict[str, Any]]:
    """Describe the start fields (for ``/v1/info``): JSON type, nullability, range (a string's: its length)."""
    info: dict[str, dict[str, Any]] = {}
    for key, rule in SESSION_FIELDS.items():
        entry: dict[str, Any] = {"type": _JSON_TYPES[rule.kind], "nullable": rule.nullable}
        if rule.kind is str:
            entry |= {"min_length": rule.low, "max_length": rule.high}
        elif rule.kind is not bool:
            entry |= {"min": rule.low, "max": rule.high}
        if rule.choices is not None:
            entry["choices"] = list(rule.choices)
        info[key] = entry
    return info


def copy_options(config: Config) -> tuple[SessionOptions, VadOptions]:
    """Fresh per-session copies of the configured defaults."""
    return dataclasses.replace(config.session), dataclasses.replace(config.vad)
