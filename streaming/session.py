"""The per-connection stream state machine, sans I/O and wire-free.

A :class:`Session` takes typed commands (:mod:`streaming.events`) and engine
results and returns *actions* for the shell to carry out: typed events to send
(a codec turns them into one protocol's frames), utterance work for the engine,
and when to close. States: ``awaiting_start`` → ``streaming`` →
(``stop`` or a fatal error) ``draining`` → ``closed``. While draining, the
speech received so far is still decoded and its finals sent before ``end`` (or
the fatal ``error``), so nothing the client sent is lost.

No input makes a session raise: a client fault is an ``error`` event, and an
unexpected exception (a bug) is logged with the session id and ends the session
with a fatal ``internal_error``, still after the finals of the speech so far.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import events as ev
from .audio import PcmDecoder, Resampler
from .config import Config, ConfigError, SessionOptions, VadOptions, apply_session_fields, copy_options
from .protocol import ProtocolError, channels_error, format_error, round_time
from .results import FinalResult, Hypothesis, OptionError, UtteranceOptions, Word, estimate_words
from .speakers import SpeakerOptions, SpeakerTracker, Window, speakers_of_words, utterance_speaker
from .turns import Decision, PauseTracker, decide
from .vad import (SAMPLE_RATE_HZ, Endpointer, UtteranceAudio, UtteranceEnded, UtterancePaused, UtteranceResumed,
                  UtteranceStarted, VadEvent)

log = logging.getLogger("streaming.session")


# ---- actions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Emit:
    """Tell the client ``event`` (the shell's codec turns it into frames)."""

    event: ev.Event


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class OpenUtterance:
    utterance_id: int
    options: UtteranceOptions


@dataclass(frozen=True)
class FeedAudio:
    utterance_id: int
    audio: np.ndarray


@dataclass(frozen=True)
class RequestPartial:
    utterance_id: int


@dataclass(frozen=True)
class RequestFinal:
    utterance_id: int


@dataclass(frozen=True)
class DiscardUtterance:
    """The utterance was cleared: the engine drops its state and pending work."""

    utterance_id: int


@dataclass(frozen=True)
class ScoreTurn:
    """Smart mode: ask the end-of-turn model about pause ``pause``; answer with :meth:`Session.turn_scored`."""

    utterance_id: int
    pause: int
    audio: np.ndarray
    """The utterance's last seconds up to the pause (what the model reads)."""


@dataclass(frozen=True)
class RequestEager:
    """Smart mode: decode the utterance as a final now, keeping it open (an eager end of turn);
    answer with :meth:`Session.eager_ready`. The engine reuses it for the final if no audio follows."""

    utterance_id: int
    pause: int


@dataclass(frozen=True)
class EmbedSpeakers:
    """``diarize``: the speaker encoder's windows over an ended utterance's audio; answer with
    :meth:`Session.speakers_ready`. Its final waits for them."""

    utterance_id: int
    audio: np.ndarray


@dataclass(frozen=True)
class Wake:
    """Call :meth:`Session.wake` after ``after_s`` of wall time, replacing any earlier request; None cancels."""

    after_s: float | None


Action = (Emit | Close | OpenUtterance | FeedAudio | RequestPartial | RequestFinal | DiscardUtterance | ScoreTurn
          | RequestEager | EmbedSpeakers | Wake)

_END_REASONS = {"forced": "finalize"}
"""Endpointer reasons as events name them (others keep theirs: endpoint, max_length, stream_end)."""



@dataclass
class ModelInfo:
    """What the session needs to know about the model (never the model itself)."""

    name: str
    supports_window: bool = False
    max_utterance_s: float = 30.0
    validate: Callable[[UtteranceOptions], None] = lambda options: None
    turn_model: bool = False
    """Whether an end-of-turn model is loaded (``turn_detection = "smart"`` needs one)."""
    eager_decodes: bool = True
    """Whether the backend can decode an open utterance (``eager_end_of_turn`` needs it)."""
    final_reuses_partial: bool = False
    """Whether a final right after a partial of the same audio reuses its work (see ``Backend``)."""
    speaker_encoder: bool = False
    """Whether a speaker encoder is loaded (``diarize`` needs one)."""


@dataclass
class _Utterance:
    utterance_id: int
    start_sample: int
    samples: int = 0
    samples_at_last_request: int = 0
    end_sample: int | None = None
    end_reason: str = "endpoint"
    word_timestamps: bool = False
    partial_in_flight: bool = False
    partial_wanted: bool = False
    last_partial_text: str | None = None
    turns: PauseTracker = dataclasses.field(default_factory=PauseTracker)
    """Smart mode: the pauses being judged and the audio held meanwhile."""
    speaker_audio: list[np.ndarray] | None = None
    """``diarize``: the audio fed to the engine, for the speaker encoder once the utterance ends."""
    speakers: list[Window] | None = None
    """``diarize``: the encoder's windows (None: still asked; the final waits for them)."""


class Session:
    """One client stream; see the module docstring."""

    def __init__(self, session_id: str, config: Config, model: ModelInfo,
                 classify: Callable[[np.ndarray], bool] | None = None,
                 admit: Callable[[], ProtocolError | None] | None = None) -> None:
        self.session_id = session_id
        self._admit = admit
        """Asked at ``start`` whether the server takes the session (an error refuses it)."""
        self.config = config
        self.model = model
        self.state = "awaiting_start"
        self.options: SessionOptions | None = None
        self.vad_options: VadOptions | None = None
        self._classify = classify
        self._format: tuple[int, str] | None = None
        """(sample rate, encoding) of the started stream."""
        self._channels = 1
        """Interleaved channels of the stream's audio, mixed down to one (see :mod:`streaming.channels`)."""
        self._out: list[Action] = []
        """Actions emitted by the input being handled, handed out by :meth:`_guarded`."""
        self._decoder: PcmDecoder | None = None
        self._resampler: Resampler | None = None
        self._endpointer: Endpointer | None = None
        self._open: _Utterance | None = None
        self._awaiting_final: list[int] = []
        """Utterances whose final is owed, in order."""
        self._early_finals: dict[int, FinalResult] = {}
        self._finalized_after: list[tuple[int, ev.Finalized]] = []
        """``Finalized`` events held until the final of the utterance they follow has gone out."""
        self._utterances: dict[int, _Utterance] = {}
        self._previous_text: str | None = None
        self._fatal: ProtocolError | None = None
        self._vad_failed = False
        """An internal error happened: the endpointer's state is not trusted again."""
        self._stopping = False
        self.last_valid_message: str | None = None
        """Kind of the command the latest :meth:`handle` applied without error (``"audio"``,
        ``"keepalive"``…), None when it was refused or ignored; the shell restarts its idle
        timer only on a valid message."""
        self.audio_samples = 0
        """16 kHz samples received so far."""
        self.utterance_count = 0
        self._speakers: SpeakerTracker | None = None
        """``diarize``: who is who in this session (its centroids; bounded however long it runs)."""
        self._last_speaker: int | None = None

    # ---- inputs -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def handle(self, command: ev.Command) -> list[Action]:
        """Apply one client command; never raises."""
        self.last_valid_message = None
        if self.state in ("draining", "closed"):
            return []
        return self._guarded(f"handling {type(command).__name__.lower()}", self._command, command)

    def fail(self, error: ProtocolError) -> list[Action]:
        """A client fault or a server-side reason to end (idle, shutdown, internal error); never raises."""
        return self._guarded(f"ending with {error.code}", self._fail, error)

    def abandon(self) -> None:
        """The shell gave up on the client (it stopped reading its events): nothing more is produced."""
        self.state = "closed"

    def partial_ready(self, utterance_id: int, hypothesis: Hypothesis | None) -> list[Action]:
        """The engine finished (or dropped, with None) a partial request; never raises."""
        return self._guarded(f"handling the partial of utterance {utterance_id}", self._partial_ready,
                             utterance_id, hypothesis)

    def final_ready(self, utterance_id: int, result: FinalResult) -> list[Action]:
        """The engine finished an utterance's final; finals go out in utterance order. Never raises."""
        return self._guarded(f"handling the final of utterance {utterance_id}", self._final_ready,
                             utterance_id, result)

    def turn_scored(self, utterance_id: int, pause: int, probability: float | None) -> list[Action]:
        """The end-of-turn model's answer for a :class:`ScoreTurn` (None: it failed; the pause waits). Never raises."""
        return self._guarded(f"handling the turn score of utterance {utterance_id}", self._turn_scored,
                             utterance_id, pause, probability)

    def eager_ready(self, utterance_id: int, pause: int, result: FinalResult | None) -> list[Action]:
        """The eager decode of a :class:`RequestEager` (None: dropped under load). Never raises."""
        return self._guarded(f"handling the eager decode of utterance {utterance_id}", self._eager_ready,
                             utterance_id, pause, result)

    def speakers_ready(self, utterance_id: int, windows: list[Window] | None) -> list[Action]:
        """The speaker encoder's answer for an :class:`EmbedSpeakers` (None: it failed, the final goes out
        with the previous speaker). Never raises."""
        return self._guarded(f"handling the speakers of utterance {utterance_id}", self._speakers_ready,
                             utterance_id, windows)

    def wake(self) -> list[Action]:
        """The wall-clock timer of a :class:`Wake` fired: a pause still judged has lasted
        ``turn_max_silence_ms`` (the client sent no audio meanwhile), so the turn ends. Never raises."""
        return self._guarded("handling the turn timer", self._wake)

    # ---- actions out, and what a bug does -----------------------------------------------------------

    def _guarded(self, during: str, handler: Callable[..., None], *args: Any) -> list[Action]:
        """Run one input's handler and hand out the actions it emitted; a bug becomes ``internal_error``."""
        try:
            handler(*args)
        except Exception:
            self._internal_error(during)
        actions, self._out = self._out, []
        return actions

    def _emit(self, action: Action) -> None:
        # Actions are collected as the state changes they report happen, never in local lists: a handler
        # that fails half-way still hands out everything it did before (no lost speech_start, no seq gap).
        self._out.append(action)

    def _event(self, event: ev.Event) -> None:
        self._emit(Emit(event))

    def _close(self, error: ProtocolError | None) -> None:
        self.state = "closed"
        if error is None:
            self._event(ev.Ended(self.utterance_count, self._time(self.audio_samples)))
            self._emit(Close(1000, "end of stream"))
        else:
            self._event(ev.Error(error.code, error.message, fatal=True, retry_after_s=error.retry_after_s))
            self._emit(Close(error.close_code or 1011, error.code))

    @staticmethod
    def _time(samples: int) -> float:
        return round_time(samples / SAMPLE_RATE_HZ)

    def _internal_error(self, during: str) -> None:
        """An unexpected exception (a bug): log it, then end with ``internal_error`` after the owed finals.

        Call only from an ``except`` block. The endpointer may have failed half-way through a frame, so it
        is not used again: the open utterance ends at the last audio fed to the engine.
        """
        log.exception("session %s: internal error %s", self.session_id, during)
        self._vad_failed = True
        error = ProtocolError("internal_error", f"internal server error {during} (session {self.session_id})")
        try:
            if self.state == "draining":
                self._fatal = self._fatal or error
                self._maybe_finish()
            else:
                self._fail(error)
        except Exception:
            log.exception("session %s: could not drain after an internal error; closing now", self.session_id)
            if self.state != "closed":
                self._close(error)

    # ---- inputs → state changes ---------------------------------------------------------------------

    def _command(self, command: ev.Command) -> None:
        try:
            self._apply(command)
        except ProtocolError as exc:
            self._fail(exc)

    def _apply(self, command: ev.Command) -> None:
        kind = type(command).__name__.lower()
        if isinstance(command, ev.Start):
            self._start(command)
        elif self.state == "awaiting_start":
            raise ProtocolError("audio_before_start", f"{kind} before start")
        elif isinstance(command, ev.Audio):
            self._audio(command.pcm)
        elif isinstance(command, ev.Configure):
            self._configure(command.options)
        elif isinstance(command, ev.Finalize):
            self._finalize()
        elif isinstance(command, ev.Clear):
            self._clear()
        elif isinstance(command, ev.Stop):
            self._stop()
        elif not isinstance(command, ev.Keepalive):  # a keepalive changes nothing
            raise AssertionError(command)
        self.last_valid_message = kind

    def _fail(self, error: ProtocolError) -> None:
        if self.state == "closed":
            return
        if not error.fatal:
            self._event(ev.Error(error.code, error.message, fatal=False))
        elif self.state == "awaiting_start":
            self._close(error)
        elif self.state != "draining":
            self._fatal = error
            self._begin_drain()
        elif self._fatal is None and error.code == "internal_error":
            # After stop an utterance failed: the finals still owed go out, then this error instead
            # of ``end`` (a shutdown or idle timer meanwhile does not change a completed stream's end).
            self._fatal = error

    def _partial_ready(self, utterance_id: int, hypothesis: Hypothesis | None) -> None:
        utt = self._utterances.get(utterance_id)
        if self.state == "closed" or utt is None:
            return
        utt.partial_in_flight = False
        is_open = self._open is not None and self._open.utterance_id == utterance_id
        if hypothesis is not None and is_open and self.options.partials and self.state == "streaming":
            text = hypothesis.text
            if text and text != utt.last_partial_text:
                utt.last_partial_text = text
                self._event(ev.Partial(utterance_id, text, hypothesis.stable_text.strip(),
                                       self._time(utt.start_sample), self._time(utt.start_sample + utt.samples)))
        if is_open and utt.partial_wanted:
            self._request_partial(utt)

    def _final_ready(self, utterance_id: int, result: FinalResult) -> None:
        if self.state == "closed" or utterance_id not in self._awaiting_final:
            return
        self._early_finals[utterance_id] = result
        self._release_finals()

    def _speakers_ready(self, utterance_id: int, windows: list[Window] | None) -> None:
        utt = self._utterances.get(utterance_id)
        if self.state == "closed" or utt is None or utt.speakers is not None:
            return
        utt.speakers = list(windows or [])
        self._release_finals()

    def _release_finals(self) -> None:
        """Send the finals that are ready, in utterance order (one waits for its result and speakers)."""
        while self._awaiting_final and self._awaiting_final[0] in self._early_finals:
            uid = self._awaiting_final[0]
            utt = self._utterances[uid]
            if utt.speaker_audio is not None and utt.speakers is None:
                break
            self._awaiting_final.pop(0)
            res = self._early_finals.pop(uid)
            del self._utterances[uid]
            text = res.text.strip()
            if text:
                self._previous_text = text
            start_s, end_s = self._time(utt.start_sample), self._time(utt.end_sample or utt.start_sample)
            words, timing = (self._words(res, text, start_s, end_s) if utt.word_timestamps else (None, None))
            speaker = None
            if utt.speaker_audio is not None and text:
                speaker, words = self._who(utt, start_s, words)
            self._event(ev.Final(uid, text, res.language, start_s, end_s, utt.end_reason, words, timing,
                                 speaker=speaker))
            while self._finalized_after and self._finalized_after[0][0] == uid:
                self._event(self._finalized_after.pop(0)[1])
        self._maybe_finish()

    def _who(self, utt: _Utterance, start_s: float,
             words: tuple[Word, ...] | None) -> tuple[int | None, tuple[Word, ...] | None]:
        """Label a final's speaker and words: the tracker commits the utterance's windows (never undone).
        An utterance too short for a window is said by the previous speaker."""
        windows = utt.speakers or []
        if self._speakers is None:
            self._speakers = SpeakerTracker(SpeakerOptions(max_speakers=self.options.max_speakers))
        elif self._speakers.options.max_speakers != self.options.max_speakers:  # configured since
            self._speakers.options = dataclasses.replace(self._speakers.options, max_speakers=self.options.max_speakers)
        if windows:
            labels = self._speakers.commit(windows)
            speaker = utterance_speaker(windows, labels)
            if words:
                spans = [(w.start_s - start_s, w.end_s - start_s) for w in words]
                words = tuple(dataclasses.replace(w, speaker=s)
                              for w, s in zip(words, speakers_of_words(spans, windows, labels), strict=True))
        else:
            speaker = self._last_speaker if self._last_speaker is not None else 0
            if words:
                words = tuple(dataclasses.replace(w, speaker=speaker) for w in words)
        self._last_speaker = words[-1].speaker if words else speaker
        return speaker, words

    @staticmethod
    def _words(result: FinalResult, text: str, start_s: float, end_s: float) -> tuple[tuple[Word, ...], str]:
        """The final's words in stream time; a backend that gave none gets an even estimate, said so."""
        if result.words is not None or not text:
            words = [w.shifted(start_s) for w in result.words or ()]
            return tuple(Word(w.word, round_time(w.start_s), round_time(w.end_s), round(w.probability, 4), w.speaker)
                         for w in words), result.word_timing or "backend"
        return estimate_words(text, start_s, end_s), "estimated: utterance span split by character length"

    # ---- message handlers -----------------------------------------------------------------------

    def _start(self, message: ev.Start) -> None:
        if self.state != "awaiting_start":
            raise ProtocolError("already_started", "the session has already started; a second start is ignored")
        problem = (format_error(message.sample_rate, message.encoding)
                   or channels_error(message.channels, message.multichannel))
        if problem is not None:
            raise ProtocolError(*problem)
        session, vad = copy_options(self.config)
        try:
            session, vad = self._checked_options(session, vad, message.options)
        except (ConfigError, OptionError) as exc:
            raise ProtocolError("invalid_option", str(exc)) from None
        refusal = self._admit() if self._admit is not None else None
        if refusal is not None:
            raise refusal
        self.options, self.vad_options = session, vad
        self._channels = message.channels
        self._set_format(message.sample_rate, message.encoding)
        self._endpointer = Endpointer(vad, classify=self._classify)
        self.state = "streaming"
        self._event(ev.Ready(self.session_id, self.model.name, self._effective()))

    def _checked_options(self, session: SessionOptions, vad: VadOptions,
                         fields: dict[str, Any]) -> tuple[SessionOptions, VadOptions]:
        """Copies of ``session``/``vad`` with ``fields`` applied and checked against the model."""
        session, vad = dataclasses.replace(session), dataclasses.replace(vad)
        apply_session_fields(session, vad, fields)
        if session.window_s is not None and not self.model.supports_window and "window_s" in fields:
            raise ConfigError(f"model {self.model.name} has no attention window: window_s is not supported")
        if session.diarize and not self.model.speaker_encoder:
            raise ConfigError("diarize needs the speaker encoder, which this server has not loaded "
                              "(see the server log; scripts/setup.sh installs it)")
        if vad.turn_detection == "smart" and not self.model.turn_model:
            raise ConfigError("turn_detection 'smart' needs the end-of-turn model, which this server has not "
                              "loaded (see the server log; scripts/setup.sh installs it)")
        if vad.eager_end_of_turn and vad.turn_detection == "smart" and not self.model.eager_decodes:
            raise ConfigError(f"model {self.model.name} cannot decode an open utterance here: "
                              "eager_end_of_turn is not supported")
        vad = dataclasses.replace(vad, max_utterance_s=min(vad.max_utterance_s, self.model.max_utterance_s))
        self.model.validate(self._utterance_options(session))
        return session, vad

    def _set_format(self, sample_rate: int, encoding: str) -> None:
        self._format = (sample_rate, encoding)
        self._decoder = PcmDecoder(encoding, self._channels)
        self._resampler = Resampler(sample_rate)

    def _effective(self) -> dict[str, Any]:
        session, vad = self.options, self.vad_options
        return dataclasses.asdict(session) | {
            "endpoint_silence_ms": vad.endpoint_silence_ms, "endpointing": vad.endpointing,
            "max_utterance_s": vad.max_utterance_s, "vad_aggressiveness": vad.aggressiveness,
            "speech_threshold": vad.speech_threshold, "preroll_ms": vad.preroll_ms,
            "turn_detection": vad.turn_detection, "turn_eagerness": vad.turn_eagerness,
            "turn_pause_ms": vad.turn_pause_ms, "turn_max_silence_ms": vad.turn_max_silence_ms,
            "eager_end_of_turn": vad.eager_end_of_turn,
            "sample_rate": self._format[0], "encoding": self._format[1], "channels": self._channels,
            "multichannel": False}

    def _configure(self, fields: dict[str, Any]) -> None:
        """Change options mid-stream (from the next utterance on); a refused change keeps the old ones.

        Before any audio everything may change, the audio format too; afterwards the session's
        own options and what the endpointer can change live (:meth:`Endpointer.fixed_changes`).
        """
        fields = dict(fields)
        rate, encoding = fields.pop("sample_rate", self._format[0]), fields.pop("encoding", self._format[1])
        fresh = self.audio_samples == 0 and not self._decoder.pending_bytes
        if (rate, encoding) != self._format:
            problem = format_error(rate, encoding) if fresh else (
                "invalid_update", "the audio format cannot change after audio has arrived")
            if problem is not None:
                raise ProtocolError("invalid_update", problem[1])
        try:
            session, vad = self._checked_options(self.options, self.vad_options, fields)
        except (ConfigError, OptionError) as exc:
            raise ProtocolError("invalid_update", str(exc)) from None
        fixed = [] if fresh else self._endpointer.fixed_changes(vad)
        if fixed:
            raise ProtocolError("invalid_update", f"{', '.join(fixed)} cannot change after audio has arrived")
        self.options, self.vad_options = session, vad
        if fresh:
            self._set_format(rate, encoding)
            self._endpointer = Endpointer(vad, classify=self._classify)
        else:
            self._endpointer.reconfigure(vad)
        self._event(ev.Configured(self._effective()))

    def _audio(self, pcm: bytes) -> None:
        samples = self._decoder.decode(pcm)
        self._samples(self._resampler.process(samples))

    def _samples(self, samples: np.ndarray) -> None:
        self.audio_samples += samples.size
        self._vad_events(self._endpointer.feed(samples))

    def _finalize(self) -> None:
        events = self._endpointer.force_end()
        self._vad_events(events)
        if not any(isinstance(event, UtteranceEnded) for event in events):
            # Nothing was open: say so, after the finals still owed (a client reads it as "all done").
            finalized = ev.Finalized(self._time(self.audio_samples))
            if self._awaiting_final:
                self._finalized_after.append((self._awaiting_final[-1], finalized))
            else:
                self._event(finalized)

    def _clear(self) -> None:
        """Drop the open utterance: the engine forgets it, no final is owed for it."""
        utt = self._open
        self._endpointer.clear()
        if utt is not None:
            self._open = None
            self._utterances.pop(utt.utterance_id, None)
            self._emit(DiscardUtterance(utt.utterance_id))
        self._event(ev.Cleared(utt.utterance_id if utt else None, self._time(self.audio_samples)))

    def _stop(self) -> None:
        if self._decoder.pending_bytes:
            self._event(ev.Error(
                "partial_sample", f"stop arrived {self._decoder.pending_bytes} byte(s) into a sample; they were dropped",
                fatal=False))
        self._samples(self._resampler.process(np.zeros(0, dtype=np.float32), last=True))
        self._stopping = True
        self._begin_drain()

    def _begin_drain(self) -> None:
        self._flush_vad()
        self.state = "draining"
        self._maybe_finish()

    def _flush_vad(self) -> None:
        """End of input: close the open utterance (through the endpointer unless it failed)."""
        if self._endpointer is None:
            return
        if not self._vad_failed:
            self._vad_events(self._endpointer.flush())
        elif self._open is not None:
            utt = self._open
            self._vad_events([UtteranceEnded(utt.utterance_id, utt.start_sample + utt.samples, "stream_end")])

    def _maybe_finish(self) -> None:
        if self.state == "draining" and not self._awaiting_final:
            self._close(self._fatal)

    # ---- VAD events → actions -----------------------------------------------------------------

    def _vad_events(self, events: list[VadEvent]) -> None:
        for event in events:
            if isinstance(event, UtteranceStarted):
                utt = _Utterance(event.utterance_id, event.start_sample, word_timestamps=self.options.words,
                                 speaker_audio=[] if self.options.diarize else None)
                self._open = utt
                self._utterances[utt.utterance_id] = utt
                self.utterance_count += 1
                self._event(ev.SpeechStarted(utt.utterance_id, self._time(event.start_sample)))
                self._emit(OpenUtterance(utt.utterance_id, self._utterance_options(self.options)))
                self._feed(utt, event.audio)
            elif isinstance(event, UtteranceAudio):
                self._feed(self._utterances[event.utterance_id], event.audio)
            elif isinstance(event, UtterancePaused):
                self._paused(self._utterances[event.utterance_id], event)
            elif isinstance(event, UtteranceResumed):
                self._resumed(self._utterances[event.utterance_id], event)
            elif isinstance(event, UtteranceEnded):
                utt = self._utterances[event.utterance_id]
                utt.end_sample = event.end_sample
                utt.end_reason = _END_REASONS.get(event.reason, event.reason)
                if utt.turns.paused:
                    utt.turns.end()
                    self._emit(Wake(None))
                self._open = None
                self._awaiting_final.append(utt.utterance_id)
                self._event(ev.SpeechEnded(utt.utterance_id, self._time(event.end_sample), utt.end_reason))
                self._emit(RequestFinal(utt.utterance_id))
                if utt.speaker_audio is not None:
                    audio = np.concatenate(utt.speaker_audio) if utt.speaker_audio else np.zeros(0, np.float32)
                    utt.speaker_audio = []  # the encoder has it now
                    self._emit(EmbedSpeakers(utt.utterance_id, audio))

    def _feed(self, utt: _Utterance, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        if utt.turns.paused:
            utt.turns.hold(audio)  # judged pause: fed only if speech resumes (the turn may end before it)
            return
        utt.samples += audio.size
        if utt.speaker_audio is not None:
            utt.speaker_audio.append(audio)
        if self.vad_options.turn_detection == "smart":
            utt.turns.fed(audio)
        self._emit(FeedAudio(utt.utterance_id, audio))
        step = int(self.options.step_s * SAMPLE_RATE_HZ)
        if utt.last_partial_text is None:
            step //= 2  # until the first words show, ask twice as often: the first partial is what users wait for
        if self.options.partials and utt.samples - utt.samples_at_last_request >= step:
            self._request_partial(utt)

    def _request_partial(self, utt: _Utterance) -> None:
        # At most one partial in flight per utterance: the engine always decodes all audio
        # received by the time it runs, so a request made meanwhile would be redundant.
        if utt.partial_in_flight:
            utt.partial_wanted = utt.samples > utt.samples_at_last_request
            return
        utt.partial_in_flight = True
        utt.partial_wanted = False
        utt.samples_at_last_request = utt.samples
        self._emit(RequestPartial(utt.utterance_id))

    # ---- smart turn detection ----------------------------------------------------------------------

    def _paused(self, utt: _Utterance, event: UtterancePaused) -> None:
        """A pause of ``turn_pause_ms``: ask the turn model, and start the wall-clock maximum."""
        pause = utt.turns.begin(event.at_sample)
        vad = self.vad_options
        # The timer first: a shell that answers the score at once may end the turn, cancelling it.
        self._emit(Wake(max(0.0, vad.turn_max_silence_ms - vad.turn_pause_ms) / 1000))
        self._emit(ScoreTurn(utt.utterance_id, pause, utt.turns.score_audio()))
        if vad.turn_prefetch and self.model.eager_decodes:
            # The final-to-be, decoded while the model scores: if the turn ends it is the final.
            utt.turns.eager_asked = True
            self._emit(RequestEager(utt.utterance_id, pause))
        elif self.model.final_reuses_partial and self.options.partials and utt.samples > utt.samples_at_last_request:
            # A partial of all the audio up to the pause, while the model scores it: the client sees the
            # words before the turn ends, and a final over the same audio reuses its work.
            self._request_partial(utt)

    def _resumed(self, utt: _Utterance, event: UtteranceResumed) -> None:
        held, retract = utt.turns.resume()
        self._emit(Wake(None))
        if retract:
            self._event(ev.TurnResumed(utt.utterance_id, self._time(event.at_sample)))
        for audio in held:
            self._feed(utt, audio)

    def _judged(self, utterance_id: int, pause: int) -> _Utterance | None:
        """The open utterance if ``pause`` is still the pause it is judged at (else the answer is stale)."""
        utt = self._open
        if (self.state != "streaming" or utt is None or utt.utterance_id != utterance_id
                or not utt.turns.current(pause)):
            return None
        return utt

    def _turn_scored(self, utterance_id: int, pause: int, probability: float | None) -> None:
        utt = self._judged(utterance_id, pause)
        if utt is None or probability is None:
            return
        vad = self.vad_options
        decision = decide(probability, vad.turn_eagerness, vad.eager_end_of_turn)
        if decision is Decision.END:
            self._vad_events(self._endpointer.end_turn("end_of_turn"))
        elif decision is Decision.EAGER:
            utt.turns.eager_wanted = True
            if utt.turns.eager_text is not None:
                self._send_eager(utt)
            elif not utt.turns.eager_asked:
                utt.turns.eager_asked = True
                self._emit(RequestEager(utterance_id, pause))

    def _eager_ready(self, utterance_id: int, pause: int, result: FinalResult | None) -> None:
        utt = self._judged(utterance_id, pause)
        if utt is None or result is None:
            return
        utt.turns.eager_text = result.text.strip()
        if utt.turns.eager_wanted:
            self._send_eager(utt)

    def _send_eager(self, utt: _Utterance) -> None:
        """``eager_end_of_turn`` with the current pause's decode (once per pause)."""
        if utt.turns.eager_sent or utt.turns.eager_text is None:
            return
        utt.turns.eager_sent = True
        self._event(ev.EagerEndOfTurn(utt.utterance_id, utt.turns.eager_text, self._time(utt.start_sample),
                                      self._time(utt.start_sample + utt.samples)))

    def _wake(self) -> None:
        utt = self._open
        if self.state == "streaming" and utt is not None and utt.turns.paused:
            self._vad_events(self._endpointer.end_turn("max_silence"))

    def _utterance_options(self, session: SessionOptions) -> UtteranceOptions:
        return UtteranceOptions(language=session.language, window_s=session.window_s, context=session.context,
                                previous_text=self._previous_text, word_timestamps=session.words, task=session.task)

