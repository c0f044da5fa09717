"""A connection's session when its audio has several channels to transcribe apart, sans I/O.

:class:`ChannelSessions` has a :class:`~streaming.session.Session`'s interface (the link and the
shell cannot tell them apart). A mono stream, or one whose channels are mixed down
(``multichannel`` false), is one session and passes straight through. A ``multichannel`` stream
of N channels is N sessions, one per channel, fed each channel's samples of the interleaved
audio: each has its own VAD, utterances and finals, through the same engine. Their events carry
``channel``; utterance ids are unique across the connection (channel ``c``'s utterance ``u`` is
``u * N + c``), so the engine keys and the results come back to the right channel. The
connection answers ``start`` once (``ready``), and ends once: ``end`` after every channel has
sent its finals, or the first fatal error after every channel has drained.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from . import events as ev
from .audio import ChannelSplitter
from .config import Config
from .protocol import ProtocolError, channels_error, round_time
from .results import FinalResult, Hypothesis
from .session import (Action, Close, DiscardUtterance, Emit, EmbedSpeakers, FeedAudio, ModelInfo, OpenUtterance, RequestEager,
                      RequestFinal, RequestPartial, ScoreTurn, Session, Wake)

_KEYED = (OpenUtterance, FeedAudio, RequestPartial, RequestFinal, DiscardUtterance, ScoreTurn, RequestEager,
          EmbedSpeakers)
"""Engine actions that name an utterance (their ids are mapped to the connection's)."""
_PER_UTTERANCE = (ev.SpeechStarted, ev.SpeechEnded, ev.Partial, ev.Final, ev.EagerEndOfTurn, ev.TurnResumed)


class ChannelSessions:
    """One connection's stream: one session, or one per channel of a ``multichannel`` stream."""

    def __init__(self, session_id: str, config: Config, model: ModelInfo,
                 classify: Callable[[np.ndarray], bool] | None = None,
                 admit: Callable[[], ProtocolError | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session_id = session_id
        self._config, self._model, self._classify, self._clock = config, model, classify, clock
        self._sessions = [Session(session_id, config, model, classify=classify, admit=admit)]
        self._splitter: ChannelSplitter | None = None
        """Set once a multichannel stream has started."""
        self._wakes: list[float | None] = []
        """Each channel's wall-clock wake-up (monotonic seconds), folded into the shell's one timer."""
        self._closes: list[Close | None] = []
        self._ends: list[ev.Ended | None] = []
        self._fatal: ev.Error | None = None
        self._fatal_close: Close | None = None
        self._pending_failures: list[tuple[int, ProtocolError]] = []
        """Channels still to fail because another ended with a fatal error."""
        self._wake_changed = False
        self._done = False
        self._in_configure = False

    # ---- the Session interface --------------------------------------------------------------------

    @property
    def channels(self) -> int:
        """Channels transcribed apart (1 unless a multichannel stream started)."""
        return len(self._sessions)

    @property
    def state(self) -> str:
        if self._splitter is None:
            return self._sessions[0].state
        if self._done:
            return "closed"
        states = {s.state for s in self._sessions}
        return "draining" if states & {"draining", "closed"} else self._sessions[0].state

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def options(self):
        return self._sessions[0].options

    @property
    def vad_options(self):
        return self._sessions[0].vad_options

    @property
    def last_valid_message(self) -> str | None:
        return self._sessions[0].last_valid_message

    @property
    def audio_samples(self) -> int:
        """16 kHz samples of stream time received (each channel has as many)."""
        return self._sessions[0].audio_samples

    @property
    def utterance_count(self) -> int:
        return sum(s.utterance_count for s in self._sessions)

    def handle(self, command: ev.Command) -> list[Action]:
        if self._splitter is None:
            if isinstance(command, ev.Start) and command.multichannel and command.channels > 1:
                return self._start(command)
            return self._sessions[0].handle(command)
        if isinstance(command, ev.Audio):
            out: list[Action] = []
            for channel, pcm in enumerate(self._splitter.split(command.pcm)):
                out += self._from(channel, self._sessions[channel].handle(ev.Audio(pcm)))
            return out
        if isinstance(command, ev.Stop) and self._splitter.pending_bytes:
            pending = self._splitter.drop_pending()
            out = [Emit(ev.Error("partial_sample", f"stop arrived {pending} byte(s) into a frame of "
                                 f"{self.channels} channels; they were dropped", fatal=False))]
            return out + self._all(lambda s: s.handle(command))
        if isinstance(command, (ev.Start, ev.Keepalive)):  # a second start is refused by the first channel
            return self._from(0, self._sessions[0].handle(command))
        self._in_configure = isinstance(command, ev.Configure)
        try:
            return self._all(lambda s: s.handle(command))
        finally:
            self._in_configure = False

    def fail(self, error: ProtocolError) -> list[Action]:
        return self._all(lambda s: s.fail(error))

    def abandon(self) -> None:
        for session in self._sessions:
            session.abandon()
        self._done = self._splitter is not None

    def partial_ready(self, utterance_id: int, hypothesis: Hypothesis | None) -> list[Action]:
        channel, local = self._local(utterance_id)
        return self._from(channel, self._sessions[channel].partial_ready(local, hypothesis))

    def final_ready(self, utterance_id: int, result: FinalResult) -> list[Action]:
        channel, local = self._local(utterance_id)
        return self._from(channel, self._sessions[channel].final_ready(local, result))

    def turn_scored(self, utterance_id: int, pause: int, probability: float | None) -> list[Action]:
        channel, local = self._local(utterance_id)
        return self._from(channel, self._sessions[channel].turn_scored(local, pause, probability))

    def speakers_ready(self, utterance_id: int, windows: list | None) -> list[Action]:
        channel, local = self._local(utterance_id)
        return self._from(channel, self._sessions[channel].speakers_ready(local, windows))

    def eager_ready(self, utterance_id: int, pause: int, result: FinalResult | None) -> list[Action]:
        channel, local = self._local(utterance_id)
        return self._from(channel, self._sessions[channel].eager_ready(local, pause, result))

    def wake(self) -> list[Action]:
        if self._splitter is None:
            return self._sessions[0].wake()
        now = self._clock()
        out: list[Action] = []
        self._wake_changed = True  # the shell's timer fired: set it again for the channels not due yet
        for channel, due in enumerate(self._wakes):
            if due is not None and due <= now + 1e-3:
                self._wakes[channel] = None
                out += self._from(channel, self._sessions[channel].wake(), timer=False)
        return out + self._timer()

    # ---- a multichannel stream ---------------------------------------------------------------------

    def _start(self, command: ev.Start) -> list[Action]:
        problem = channels_error(command.channels, command.multichannel)
        if problem is not None:  # the first session refuses it, as it would any bad start
            return self._sessions[0].handle(command)
        mono = dataclasses.replace(command, channels=1, multichannel=False)
        first = self._sessions[0].handle(mono)  # admission and option checks happen here, once
        if self._sessions[0].state != "streaming":
            return first
        n = command.channels
        self._sessions += [Session(f"{self.session_id}.{c}", self._config, self._model, classify=self._classify)
                           for c in range(1, n)]
        self._splitter = ChannelSplitter(command.encoding, n)
        self._wakes, self._closes, self._ends = [None] * n, [None] * n, [None] * n
        out = self._from(0, first)
        for channel in range(1, n):
            out += self._from(channel, self._sessions[channel].handle(mono))
        return out

    def _local(self, utterance_id: int) -> tuple[int, int]:
        """(channel, the channel session's utterance id) of a connection utterance id."""
        n = len(self._sessions)
        return utterance_id % n, utterance_id // n

    def _global(self, channel: int, utterance_id: int) -> int:
        return utterance_id * len(self._sessions) + channel

    def _all(self, call: Callable[[Session], list[Action]]) -> list[Action]:
        if self._splitter is None:
            return call(self._sessions[0])
        out: list[Action] = []
        for channel, session in enumerate(self._sessions):
            out += self._from(channel, call(session), timer=False)
        return out + self._timer()

    def _from(self, channel: int, actions: list[Action], timer: bool = True) -> list[Action]:
        """A channel session's actions as the connection's: ids mapped, events tagged, one end."""
        if self._splitter is None:
            return actions
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Emit):
                event = self._event(channel, action.event)
                if event is not None:
                    out.append(Emit(event))
            elif isinstance(action, _KEYED):
                out.append(dataclasses.replace(action, utterance_id=self._global(channel, action.utterance_id)))
            elif isinstance(action, Wake):
                self._wakes[channel] = None if action.after_s is None else self._clock() + action.after_s
                self._wake_changed = True
            elif isinstance(action, Close):
                out += self._closed(channel, action)
        while self._pending_failures:
            other, fault = self._pending_failures.pop(0)
            out += self._from(other, self._sessions[other].fail(fault), timer=False)
        return out + (self._timer() if timer else [])

    def _event(self, channel: int, event: ev.Event) -> ev.Event | None:
        if isinstance(event, _PER_UTTERANCE):
            return dataclasses.replace(event, utterance_id=self._global(channel, event.utterance_id), channel=channel)
        if isinstance(event, ev.Cleared):
            uid = None if event.utterance_id is None else self._global(channel, event.utterance_id)
            return dataclasses.replace(event, utterance_id=uid, channel=channel)
        if isinstance(event, ev.Finalized):
            return dataclasses.replace(event, channel=channel)
        if isinstance(event, (ev.Ready, ev.Configured)):
            if channel:
                return None  # the connection answers once, as its first channel did
            options = event.options | {"channels": len(self._sessions), "multichannel": True}
            return dataclasses.replace(event, options=options)
        if isinstance(event, ev.Ended):
            self._ends[channel] = event
            return None
        if isinstance(event, ev.Error):
            if event.fatal:
                return self._failed(channel, event)
            if channel and self._in_configure:
                return None  # a refused configure is refused by every channel alike: said once
        return event

    def _failed(self, channel: int, error: ev.Error) -> None:
        """A channel ended with a fatal error: the others drain too; the error is said at the end."""
        if self._fatal is None:
            self._fatal = error
            fault = ProtocolError(error.code, error.message, retry_after_s=error.retry_after_s)
            for other, session in enumerate(self._sessions):
                if other != channel and session.state not in ("draining", "closed"):
                    # failed once this channel's actions are through (_from): their finals still go out
                    self._pending_failures.append((other, fault))
        return None

    def _closed(self, channel: int, close: Close) -> list[Action]:
        self._closes[channel] = close
        if close.code != 1000 and self._fatal_close is None:
            self._fatal_close = close
        out: list[Action] = []
        if self._done or any(c is None for c in self._closes):
            return out
        self._done = True
        if self._fatal is not None:
            return out + [Emit(self._fatal), self._fatal_close or close]
        audio_s = max(e.audio_s for e in self._ends if e is not None)
        return out + [Emit(ev.Ended(sum(e.utterances for e in self._ends if e is not None), round_time(audio_s))),
                      Close(1000, "end of stream")]

    def _timer(self) -> list[Action]:
        """The shell's one timer (the earliest channel wake-up, or none), when a channel changed its own."""
        if not self._wake_changed:
            return []
        self._wake_changed = False
        due = [d for d in self._wakes if d is not None]
        return [Wake(max(0.0, min(due) - self._clock()) if due else None)]
