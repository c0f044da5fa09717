"""What goes into a session and what comes out of it: typed, frozen, wire-free.

A codec (``streaming/codecs/``) turns one protocol's frames into the *commands*
below and the session's *events* back into that protocol's frames. The session
(:mod:`streaming.session`) knows only these classes, never a frame, so one core
serves protocol v1, OpenAI Realtime and Deepgram alike. Times are stream time
in seconds: 0 is the first sample the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .results import Word

# ---- commands: client → session ----------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Begin streaming: the audio format and session options (names of ``config.SESSION_FIELDS``)."""

    sample_rate: int = 16_000
    encoding: str = "pcm_s16le"
    """One of :data:`streaming.audio.ENCODINGS`."""
    options: dict[str, Any] = field(default_factory=dict)
    """Session option fields, validated by the session (an invalid one is ``invalid_option``)."""
    channels: int = 1
    """Interleaved channels of the audio (1 to ``protocol.MAX_CHANNELS``)."""
    multichannel: bool = False
    """With ``channels`` > 1: each channel is its own stream of utterances (events carry ``channel``);
    false mixes the channels down to one."""


@dataclass(frozen=True)
class Audio:
    """Raw client audio in the started encoding; a sample may be split across two commands."""

    pcm: bytes


@dataclass(frozen=True)
class Configure:
    """Change session options mid-stream; they apply from the next utterance on."""

    options: dict[str, Any]


@dataclass(frozen=True)
class Finalize:
    """End the open utterance now (its final follows); with none open, :class:`Finalized` says so."""


@dataclass(frozen=True)
class Clear:
    """Drop the open utterance and its audio: no final is sent for it."""


@dataclass(frozen=True)
class Stop:
    """End of input: the finals of all speech so far, then :class:`Ended`."""


@dataclass(frozen=True)
class Keepalive:
    """The client is alive (the shell's idle timer restarts); nothing else happens."""


Command = Start | Audio | Configure | Finalize | Clear | Stop | Keepalive


# ---- events: session → client -----------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The session started; ``options`` are the effective ones (defaults filled in)."""

    session_id: str
    model: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Configured:
    """A :class:`Configure` was applied; ``options`` are the effective ones now."""

    options: dict[str, Any]


@dataclass(frozen=True)
class SpeechStarted:
    utterance_id: int
    start_s: float
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""


@dataclass(frozen=True)
class SpeechEnded:
    utterance_id: int
    end_s: float
    reason: str
    """``endpoint`` (a pause), ``end_of_turn`` (smart mode: the turn model judged the turn complete),
    ``max_silence`` (smart mode: a pause reached ``turn_max_silence_ms``), ``max_length`` (a length
    cut), ``finalize`` or ``stream_end``."""
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""


@dataclass(frozen=True)
class Partial:
    """The current guess for the open utterance; ``stable_text`` is a prefix that will not change
    within this utterance (append-only across partials)."""

    utterance_id: int
    text: str
    stable_text: str
    start_s: float
    end_s: float
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""


@dataclass(frozen=True)
class Final:
    """An utterance's final text; finals come in utterance order and are never changed."""

    utterance_id: int
    text: str
    language: str | None
    start_s: float
    end_s: float
    reason: str
    """Why the utterance ended (as :attr:`SpeechEnded.reason`)."""
    words: tuple[Word, ...] | None = None
    """Word timings in stream time, when the session asked for them."""
    word_timing: str | None = None
    """How the word times were found (see :attr:`streaming.results.FinalResult.word_timing`)."""
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""
    speaker: int | None = None
    """``diarize``: the session's label (0, 1, …) of who said most of it; each word has its own."""


@dataclass(frozen=True)
class EagerEndOfTurn:
    """Smart mode, ``eager_end_of_turn`` on: the pause probably ends the turn. ``text`` is what the
    final will say if no speech follows (the final then reuses this decode); a :class:`TurnResumed`
    takes it back. At most one per pause."""

    utterance_id: int
    text: str
    start_s: float
    end_s: float
    """Stream time of the audio the text covers (up to the pause)."""
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""


@dataclass(frozen=True)
class TurnResumed:
    """Speech came back after an :class:`EagerEndOfTurn`: the utterance goes on, its final comes later."""

    utterance_id: int
    at_s: float
    """Stream time where the speech resumed."""
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""


@dataclass(frozen=True)
class Finalized:
    """A :class:`Finalize` found no open utterance: nothing more is coming for it."""

    at_s: float
    """Stream time of the audio received so far."""
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""


@dataclass(frozen=True)
class Cleared:
    """A :class:`Clear` was applied; ``utterance_id`` is the dropped utterance, if one was open."""

    utterance_id: int | None
    at_s: float
    channel: int | None = None
    """The audio channel of a ``multichannel`` stream (None: a mono or mixed-down stream)."""


@dataclass(frozen=True)
class Error:
    """A client fault or a server-side reason to end; ``code`` is one of ``protocol.ERROR_CODES``."""

    code: str
    message: str
    fatal: bool
    retry_after_s: float | None = None
    """For ``overloaded``: about when a new session may be admitted (seconds)."""


@dataclass(frozen=True)
class Ended:
    """The stream ended normally (after ``stop``): every final has been sent."""

    utterances: int
    audio_s: float


Event = (Ready | Configured | SpeechStarted | SpeechEnded | Partial | Final | EagerEndOfTurn | TurnResumed
         | Finalized | Cleared | Error | Ended)
