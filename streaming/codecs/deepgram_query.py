"""Deepgram live transcription's handshake query (``/v1/listen?...``) → the session's :class:`Start`.

Deepgram has no start message: the audio format and every option come in the
URL. This module reads them, refuses (HTTP 400, before the upgrade) only what
this server cannot serve, and accepts every other parameter unread: voice
frameworks send many (LiveKit: ``no_delay``, ``filler_words``, ``numerals``,
``mip_opt_out``, ``diarize``…), and an unknown one must not fail a connection.

Choices where Deepgram's behaviour cannot be copied exactly:

- ``encoding`` absent means ``linear16``: Deepgram would sniff a container
  (WAV, Ogg…), which this server does not decode.
- ``sample_rate`` absent means 16000 Hz for ``linear16`` and 8000 Hz for
  ``mulaw``/``alaw`` (telephony); Deepgram requires it with ``encoding``.
- ``language`` absent means ``en`` (Deepgram's default); ``multi`` (or
  ``detect_language=true``) lets the model detect it; ``en-US`` → ``en``.
- ``endpointing=<ms>`` is raised to :data:`MIN_ENDPOINTING_MS`. Deepgram's
  endpointer can act on 10 ms of silence because its model keeps decoding across
  the cut; here an endpoint closes the utterance Whisper decodes, and pauses of
  that length occur inside words (stop consonants) and between words. Absent
  means the server's ``endpoint_silence_ms``; ``false`` is manual mode.
- ``turn_detection=silence|smart|manual`` and ``turn_eagerness=low|medium|high|auto``
  are this server's extensions (absent = the server's configured default). Given,
  ``turn_detection`` decides how a turn ends and ``endpointing=false`` no longer
  means manual mode: in ``smart`` mode ``endpointing=<ms>`` is the pause the turn
  model judges (``turn_pause_ms``, raised to :data:`MIN_TURN_PAUSE_MS`) and
  ``utterance_end_ms`` is also the longest pause a turn survives
  (``turn_max_silence_ms``, clamped to its range); in ``manual`` mode neither
  pause applies.
- ``keyterm``/``keywords`` (``keywords`` may carry ``:boost``, dropped) become
  the session's ``context`` (decoding bias, never in the transcript).
- ``punctuate``/``smart_format``/``model``: accepted, no effect (Whisper punctuates).
- ``diarize=true``: every final's words carry ``speaker`` (0, 1, … for the stream), as
  Deepgram's do; ``max_speakers`` (an extension) caps how many. Interim results carry none.
- ``channels`` (1 to :data:`~streaming.protocol.MAX_CHANNELS`) of interleaved audio are mixed
  down to one, unless ``multichannel=true``: then each channel is transcribed apart and its
  results carry ``channel_index: [channel, channels]``, as Deepgram's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import MAX_CONTEXT_CHARS, SESSION_FIELDS, VadOptions
from ..events import Start
from ..knobs import knobs
from ..protocol import MAX_CHANNELS, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, shown
from .base import HandshakeRefused

ENCODINGS = {"linear16": "pcm_s16le", "mulaw": "mulaw", "alaw": "alaw"}
"""Deepgram ``encoding`` → this server's audio encoding."""
DEFAULT_SAMPLE_RATE_HZ = {"linear16": 16_000, "mulaw": 8_000, "alaw": 8_000}
MIN_ENDPOINTING_MS = 300
"""Shortest endpointing silence honoured (LiveKit asks 25 ms, Deepgram's default is 10 ms)."""
MAX_ENDPOINTING_MS = 5_000
"""Longest one (the session's ``endpoint_silence_ms`` range)."""
TURN_DETECTION_MODES: tuple[str, ...] = knobs(VadOptions)["turn_detection"].rules.choices or ()
"""``turn_detection`` values (the session option's choices)."""
TURN_EAGERNESS_LEVELS: tuple[str, ...] = knobs(VadOptions)["turn_eagerness"].rules.choices or ()
"""``turn_eagerness`` values (the session option's choices)."""
MIN_TURN_PAUSE_MS = 150
"""Shortest ``endpointing`` pause honoured in smart mode (the ``turn_pause_ms`` default): shorter pauses
are inside words, and the turn model would be asked at every one."""
MAX_TURN_PAUSE_MS = int(SESSION_FIELDS["turn_pause_ms"].high or 2_000)
MIN_TURN_MAX_SILENCE_MS = int(SESSION_FIELDS["turn_max_silence_ms"].low or 200)
MAX_TURN_MAX_SILENCE_MS = int(SESSION_FIELDS["turn_max_silence_ms"].high or 10_000)
"""``utterance_end_ms`` in smart mode is clamped into the ``turn_max_silence_ms`` range."""


@dataclass(frozen=True)
class ListenOptions:
    """What the query asks for, checked."""

    encoding: str = "linear16"
    sample_rate: int = 16_000
    language: str | None = "en"
    interim_results: bool = False
    endpointing: bool = True
    endpointing_ms: int | None = None
    """The endpointing pause as asked (raised when used); None = the server's default."""
    utterance_end_ms: int | None = None
    vad_events: bool = False
    keyterms: tuple[str, ...] = ()
    turn_detection: str | None = None
    """``silence``, ``smart`` or ``manual``; None = the server's default mode."""
    turn_eagerness: str | None = None
    """None = the server's default."""
    channels: int = 1
    multichannel: bool = False
    diarize: bool = False
    max_speakers: int | None = None

    def start(self) -> Start:
        """The session's start for these options; finals always carry words (Deepgram's always do)."""
        options: dict[str, Any] = {"words": True, "partials": self.interim_results, "language": self.language}
        options.update(self._turn_options())
        if self.turn_eagerness is not None:
            options["turn_eagerness"] = self.turn_eagerness
        if self.keyterms:
            options["context"] = context_of(self.keyterms)
        if self.diarize:
            options["diarize"] = True
            if self.max_speakers is not None:
                options["max_speakers"] = self.max_speakers
        return Start(self.sample_rate, ENCODINGS[self.encoding], options, channels=self.channels,
                     multichannel=self.multichannel)

    def _turn_options(self) -> dict[str, Any]:
        """How turns end: ``endpointing`` alone (Deepgram's meaning), or ``turn_detection`` and its pauses."""
        if self.turn_detection is None:
            if not self.endpointing:
                return {"endpointing": False}
            if self.endpointing_ms is None:
                return {}
            return {"endpoint_silence_ms": _clamped(self.endpointing_ms, MIN_ENDPOINTING_MS, MAX_ENDPOINTING_MS)}
        # named, so a server whose default is manual (endpointing = false) still ends turns at pauses
        options: dict[str, Any] = {"turn_detection": self.turn_detection,
                                   "endpointing": self.turn_detection != "manual"}
        if self.turn_detection == "silence" and self.endpointing_ms is not None:
            options["endpoint_silence_ms"] = _clamped(self.endpointing_ms, MIN_ENDPOINTING_MS, MAX_ENDPOINTING_MS)
        elif self.turn_detection == "smart":
            if self.endpointing_ms is not None:
                options["turn_pause_ms"] = _clamped(self.endpointing_ms, MIN_TURN_PAUSE_MS, MAX_TURN_PAUSE_MS)
            if self.utterance_end_ms is not None:
                options["turn_max_silence_ms"] = _clamped(self.utterance_end_ms, MIN_TURN_MAX_SILENCE_MS,
                                                          MAX_TURN_MAX_SILENCE_MS)
        return options


def parse_query(params: dict[str, list[str]]) -> ListenOptions:
    """Read the query parameters (each with all its values); raise :class:`HandshakeRefused` (400)."""
    encoding = _last(params, "encoding", "linear16").lower()
    if encoding not in ENCODINGS:
        _refuse(f"encoding {shown(encoding)} is not supported (use linear16, mulaw or alaw)")
    rate = _integer(params, "sample_rate", DEFAULT_SAMPLE_RATE_HZ[encoding])
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        _refuse(f"sample_rate {rate} is outside {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz")
    channels = _integer(params, "channels", 1)
    if not 1 <= channels <= MAX_CHANNELS:
        _refuse(f"channels must be from 1 to {MAX_CHANNELS}, got {channels}")
    endpointing, endpointing_ms = _endpointing(_last(params, "endpointing", None))
    utterance_end_ms = _integer(params, "utterance_end_ms", None)
    if utterance_end_ms is not None and utterance_end_ms < 0:
        _refuse(f"utterance_end_ms must not be negative, got {utterance_end_ms}")
    turn_detection = _choice(params, "turn_detection", TURN_DETECTION_MODES)
    turn_eagerness = _choice(params, "turn_eagerness", TURN_EAGERNESS_LEVELS)
    keyterms = _keyterms(params)
    if len(context_of(keyterms)) > MAX_CONTEXT_CHARS:
        _refuse(f"keyterm/keywords are too long together: at most {MAX_CONTEXT_CHARS} characters")
    return ListenOptions(
        encoding=encoding, sample_rate=rate, language=_language(params),
        interim_results=_boolean(params, "interim_results", False), endpointing=endpointing,
        endpointing_ms=endpointing_ms, utterance_end_ms=utterance_end_ms,
        vad_events=_boolean(params, "vad_events", False), keyterms=keyterms, turn_detection=turn_detection,
        turn_eagerness=turn_eagerness, channels=channels, multichannel=_boolean(params, "multichannel", False),
        diarize=_boolean(params, "diarize", False), max_speakers=_max_speakers(params))


def _max_speakers(params: dict[str, list[str]]) -> int | None:
    """``max_speakers`` (an extension: Deepgram has no cap), 1 to 16."""
    value = _integer(params, "max_speakers", None)
    if value is not None and not 1 <= value <= 16:
        _refuse(f"max_speakers must be from 1 to 16, got {value}")
    return value


def context_of(keyterms: tuple[str, ...] | list[str]) -> str:
    """Key terms as the session's ``context`` text."""
    return ", ".join(keyterms)


def _clamped(value: int, low: int, high: int) -> int:
    """A pause asked in Deepgram's terms, inside the range this server serves."""
    return min(max(value, low), high)


def _refuse(message: str) -> None:
    raise HandshakeRefused(400, message)


def _last(params: dict[str, list[str]], name: str, default: Any) -> Any:
    """A one-valued parameter: its last value (as a repeated one would be read), or ``default``."""
    values = params.get(name)
    return values[-1].strip() if values else default


def _integer(params: dict[str, list[str]], name: str, default: int | None) -> int | None:
    value = _last(params, name, None)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():  # NaN and inf are not integers either
        _refuse(f"{name} must be an integer, got {shown(value)}")
    return int(number)


def _boolean(params: dict[str, list[str]], name: str, default: bool) -> bool:
    value = _last(params, name, None)
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        _refuse(f"{name} must be true or false, got {shown(value)}")
    return value.lower() == "true"


def _choice(params: dict[str, list[str]], name: str, choices: tuple[str, ...]) -> str | None:
    """A parameter that names one of ``choices`` (any case); absent → None."""
    value = _last(params, name, None)
    if value is None:
        return None
    if value.lower() not in choices:
        _refuse(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    return value.lower()


def _endpointing(value: str | None) -> tuple[bool, int | None]:
    """``endpointing``: absent → (on, server default); ``false`` → off; ms → (on, the ms as asked)."""
    if value is None or value.lower() == "true":
        return True, None
    if value.lower() == "false":
        return False, None
    try:
        ms = float(value)
    except ValueError:
        ms = float("nan")
    if not ms.is_integer() or ms < 0:
        _refuse(f"endpointing must be a number of milliseconds or false, got {shown(value)}")
    return True, int(ms)


def _language(params: dict[str, list[str]]) -> str | None:
    """``language`` → an ISO code for the model, None = detect."""
    value = _last(params, "language", "")
    if not value:
        return None if _last(params, "detect_language", "false").lower() == "true" else "en"
    if value.lower() == "multi":
        return None
    return value.replace("_", "-").split("-")[0].lower()


def _keyterms(params: dict[str, list[str]]) -> tuple[str, ...]:
    """``keyterm`` values as they are, then ``keywords`` without a ``:boost`` suffix; unique, in order."""
    terms = [t.strip() for t in params.get("keyterm", [])]
    for keyword in params.get("keywords", []):
        word, sep, boost = keyword.rpartition(":")
        terms.append((word if sep and _is_number(boost) else keyword).strip())
    return tuple(dict.fromkeys(t for t in terms if t))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
