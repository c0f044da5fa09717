"""The per-connection stream state machine, sans I/O.

A :class:`Session` takes received frames and engine results and returns
*actions* for the shell to carry out: events to send, utterance work for the
engine, and when to close. States: ``awaiting_start`` → ``streaming`` →
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

from .audio import PcmDecoder, Resampler
from .config import Config, ConfigError, SessionOptions, VadOptions, apply_session_fields, copy_options
from .models.base import FinalResult, Hypothesis, OptionError, UtteranceOptions
from .protocol import (PROTOCOL_VERSION, Audio, Finalize, Keepalive, Parser, ProtocolError, Start, Stop, Wire,
                       round_time)
from .vad import SAMPLE_RATE_HZ, Endpointer, UtteranceAudio, UtteranceEnded, UtteranceStarted, VadEvent

log = logging.getLogger("streaming.session")


# ---- actions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    event: dict[str, Any]


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


Action = Send | Close | OpenUtterance | FeedAudio | RequestPartial | RequestFinal


@dataclass
class ModelInfo:
    """What the session needs to know about the model (never the model itself)."""

    name: str
    supports_window: bool = False
    max_utterance_s: float = 30.0
    validate: Callable[[UtteranceOptions], None] = lambda options: None


@dataclass
class _Utterance:
    utterance_id: int
    start_sample: int
    samples: int = 0
    samples_at_last_request: int = 0
    end_sample: int | None = None
    partial_in_flight: bool = False
    partial_wanted: bool = False
    last_partial_text: str | None = None


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
        self.parser = Parser(config.server.max_message_bytes)
        self.state = "awaiting_start"
        self.options: SessionOptions | None = None
        self.vad_options: VadOptions | None = None
        self._classify = classify
        self._seq = 0
        """``seq`` of the next event."""
        self._out: list[Action] = []
        """Actions emitted by the input being handled, handed out by :meth:`_guarded`."""
        self._decoder: PcmDecoder | None = None
        self._resampler: Resampler | None = None
        self._endpointer: Endpointer | None = None
        self._open: _Utterance | None = None
        self._awaiting_final: list[int] = []
        """Utterances whose final is owed, in order."""
        self._early_finals: dict[int, FinalResult] = {}
        self._utterances: dict[int, _Utterance] = {}
        self._previous_text: str | None = None
        self._fatal: ProtocolError | None = None
        self._vad_failed = False
        """An internal error happened: the endpointer's state is not trusted again."""
        self._stopping = False
        self.last_valid_message: str | None = None
        """Type of the message the latest :meth:`receive` handled without error (``"audio"``,
        ``"keepalive"``…), None when that frame was refused or ignored; the shell restarts its idle
        timer only on a valid message."""
        self.audio_samples = 0
        """16 kHz samples received so far."""
        self.utterance_count = 0

    # ---- inputs -------------------------------------------------------------------------------

    @property
    def wire(self) -> Wire | None:
        return self.parser.wire

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def receive(self, frame: str | bytes) -> list[Action]:
        """Handle one received WebSocket frame; never raises."""
        self.last_valid_message = None
        if self.state in ("draining", "closed"):
            return []
        return self._guarded("handling a frame", self._receive, frame)

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

    def _event(self, kind: str, **fields: Any) -> None:
        self._emit(Send({"type": kind, "seq": self._seq, **fields}))
        self._seq += 1

    def _close(self, error: ProtocolError | None) -> None:
        self.state = "closed"
        if error is None:
            self._event("end", utterances=self.utterance_count,
                        audio_s=round_time(self.audio_samples / SAMPLE_RATE_HZ))
            self._emit(Close(1000, "end of stream"))
        else:
            self._event("error", code=error.code, message=error.message, fatal=True)
            self._emit(Close(error.close_code or 1011, error.code))

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

    def _receive(self, frame: str | bytes) -> None:
        try:
            self._handle(self.parser.parse(frame))
        except ProtocolError as exc:
            self._fail(exc)

    def _handle(self, message: Start | Audio | Finalize | Stop | Keepalive) -> None:
        kind = type(message).__name__.lower()
        if isinstance(message, Start):
            self._start(message)
        elif self.state == "awaiting_start":
            raise ProtocolError("audio_before_start", f"{kind} before start")
        elif isinstance(message, Audio):
            self._audio(message.pcm)
        elif isinstance(message, Finalize):
            self._vad_events(self._endpointer.force_end())
        elif isinstance(message, Stop):
            self._stop()
        elif not isinstance(message, Keepalive):  # a keepalive changes nothing
            raise AssertionError(message)
        self.last_valid_message = kind

    def _fail(self, error: ProtocolError) -> None:
        if self.state == "closed":
            return
        if not error.fatal:
            self._event("error", code=error.code, message=error.message, fatal=False)
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
                self._event(
                    "partial", utterance_id=utterance_id, text=text, stable_text=hypothesis.stable_text.strip(),
                    start_s=round_time(utt.start_sample / SAMPLE_RATE_HZ),
                    end_s=round_time((utt.start_sample + utt.samples) / SAMPLE_RATE_HZ))
        if is_open and utt.partial_wanted:
            self._request_partial(utt)

    def _final_ready(self, utterance_id: int, result: FinalResult) -> None:
        if self.state == "closed" or utterance_id not in self._awaiting_final:
            return
        self._early_finals[utterance_id] = result
        while self._awaiting_final and self._awaiting_final[0] in self._early_finals:
            uid = self._awaiting_final.pop(0)
            res = self._early_finals.pop(uid)
            utt = self._utterances.pop(uid)
            text = res.text.strip()
            if text:
                self._previous_text = text
            self._event("final", utterance_id=uid, text=text, language=res.language,
                        start_s=round_time(utt.start_sample / SAMPLE_RATE_HZ),
                        end_s=round_time((utt.end_sample or utt.start_sample) / SAMPLE_RATE_HZ))
        self._maybe_finish()

    # ---- message handlers -----------------------------------------------------------------------

    def _start(self, message: Start) -> None:
        if self.state != "awaiting_start":
            raise ProtocolError("already_started", "the session has already started; a second start is ignored")
        session, vad = copy_options(self.config)
        try:
            apply_session_fields(session, vad, message.options)
            if session.window_s is not None and not self.model.supports_window and "window_s" in message.options:
                raise ConfigError(f"model {self.model.name} has no attention window: window_s is not supported")
            vad = dataclasses.replace(vad, max_utterance_s=min(vad.max_utterance_s, self.model.max_utterance_s))
            self.model.validate(self._utterance_options(session))
        except (ConfigError, OptionError) as exc:
            raise ProtocolError("invalid_option", str(exc)) from None
        refusal = self._admit() if self._admit is not None else None
        if refusal is not None:
            raise refusal
        self.options, self.vad_options = session, vad
        self._decoder = PcmDecoder(message.encoding)
        self._resampler = Resampler(message.sample_rate)
        self._endpointer = Endpointer(vad, classify=self._classify)
        self.state = "streaming"
        effective = dataclasses.asdict(session) | {
            "endpoint_silence_ms": vad.endpoint_silence_ms, "max_utterance_s": vad.max_utterance_s,
            "vad_aggressiveness": vad.aggressiveness, "sample_rate": message.sample_rate,
            "encoding": message.encoding}
        self._event("ready", session_id=self.session_id, model=self.model.name,
                    protocol=PROTOCOL_VERSION, options=effective)

    def _audio(self, pcm: bytes) -> None:
        samples = self._decoder.decode(pcm)
        self._samples(self._resampler.process(samples))

    def _samples(self, samples: np.ndarray) -> None:
        self.audio_samples += samples.size
        self._vad_events(self._endpointer.feed(samples))

    def _stop(self) -> None:
        if self._decoder.pending_bytes:
            self._event(
                "error", code="partial_sample", fatal=False,
                message=f"stop arrived {self._decoder.pending_bytes} byte(s) into a sample; they were dropped")
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
        for ev in events:
            if isinstance(ev, UtteranceStarted):
                utt = _Utterance(ev.utterance_id, ev.start_sample)
                self._open = utt
                self._utterances[utt.utterance_id] = utt
                self.utterance_count += 1
                self._event("speech_start", utterance_id=utt.utterance_id,
                            start_s=round_time(ev.start_sample / SAMPLE_RATE_HZ))
                self._emit(OpenUtterance(utt.utterance_id, self._utterance_options(self.options)))
                self._feed(utt, ev.audio)
            elif isinstance(ev, UtteranceAudio):
                self._feed(self._utterances[ev.utterance_id], ev.audio)
            elif isinstance(ev, UtteranceEnded):
                utt = self._utterances[ev.utterance_id]
                utt.end_sample = ev.end_sample
                self._open = None
                self._awaiting_final.append(utt.utterance_id)
                self._event("speech_end", utterance_id=utt.utterance_id,
                            end_s=round_time(ev.end_sample / SAMPLE_RATE_HZ))
                self._emit(RequestFinal(utt.utterance_id))

    def _feed(self, utt: _Utterance, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        utt.samples += audio.size
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

    def _utterance_options(self, session: SessionOptions) -> UtteranceOptions:
        return UtteranceOptions(language=session.language, window_s=session.window_s,
                                context=session.context, previous_text=self._previous_text)
