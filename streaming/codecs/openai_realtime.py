"""OpenAI Realtime *transcription sessions* (``/v1/realtime?intent=transcription``), sans I/O.

Clients append base64 audio to an input buffer; each *turn* of it becomes a
user *item* whose transcript arrives as append-only ``delta``s and one
``completed``. With server VAD (the default) our pause endpointer ends turns,
with semantic VAD the Smart Turn model (our ``smart`` turn detection); with
``turn_detection: null`` only the client's ``input_audio_buffer.commit`` does.
The session starts at once with OpenAI's defaults (PCM16 at 24 kHz, server VAD)
because LiveKit sends ``session.update`` without waiting for
``session.created``, while Pipecat waits for it: either way the update becomes
a :class:`~streaming.events.Configure`. Session objects and event shapes (GA and
beta dialects, as the ``openai`` package's types define them) live in :mod:`.openai_events`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .. import events as ev
from ..audio import BYTES_PER_SAMPLE
from ..auth import offered_subprotocols
from ..protocol import ProtocolError, encode_event, parse_json_object, shown
from . import openai_events as oe
from .base import Codec, Frame, Handshake, HandshakeRefused

BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
"""What a browser offers instead of the ``OpenAI-Beta: realtime=v1`` header it cannot set."""
MIN_COMMIT_S = 0.1
"""Less audio than this since the last commit or clear makes a commit ``input_audio_buffer_commit_empty``."""


@dataclass
class _Item:
    """One user item: the audio of one turn, and the utterances of the session that transcribe it."""

    item_id: str
    vad: bool = False
    """``speech_started`` was sent for it (so ``speech_stopped`` is owed)."""
    pending: set[int] = field(default_factory=set)
    """Utterances whose final has not arrived."""
    texts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    language: str | None = None
    sent: str = ""
    """Transcript text sent as deltas so far (a prefix of what the client shows)."""
    committed: bool = False
    dropped: bool = False
    completed: bool = False

    def text(self, tail: str = "") -> str:
        return " ".join(t for t in (*self.texts, tail) if t)


@dataclass
class _Update:
    settings: oe.Settings
    client_event_id: str | None


class OpenAIRealtimeCodec(Codec):
    name = "openai"
    path = "/v1/realtime"

    def __init__(self, session_id: str, model: str, handshake: Handshake) -> None:
        super().__init__(session_id, model, handshake)
        self.beta = _wants_beta(handshake)
        self.settings = oe.Settings()
        """The configuration the session has confirmed (``Configured``)."""
        self._transcription_model = (handshake.params().get("model") or [model])[0] or model
        self._prefix = secrets.token_hex(4)
        self._counter = 0
        self._updates: deque[_Update] = deque()
        """Updates sent as Configure, awaiting the session's Configured or invalid_update."""
        self._items: dict[int, _Item] = {}
        """Utterance id → its item."""
        self._open: _Item | None = None
        """The item the input buffer fills now (None until a turn starts)."""
        self._commits: deque[_Item] = deque()
        """Items of commits sent as Finalize, awaiting the session's answer."""
        self._unfinished: dict[str, _Item] = {}
        """Committed items whose ``completed`` is owed."""
        self._previous_item_id: str | None = None
        self._buffered_bytes = 0
        """Audio bytes appended since the last commit, clear or server-VAD turn end."""
        self._fault: tuple[str | None, str | None] | None = None
        """(param, client event_id) of the fault :meth:`decode` raised, for the error event it becomes."""

    @classmethod
    def check_handshake(cls, handshake: Handshake) -> None:
        intent = (handshake.params().get("intent") or ["transcription"])[0]
        if intent != "transcription":
            raise HandshakeRefused(400, f"this server serves transcription sessions only "
                                        f"(?intent=transcription), not intent={shown(intent)}")

    # ---- frames in ----------------------------------------------------------------------------

    def opened(self) -> list[ev.Command | Frame]:
        return [ev.Start(self.settings.sample_rate, self.settings.encoding, self.settings.options())]

    def decode(self, frame: str | bytes) -> list[ev.Command | Frame]:
        self._fault = None
        if isinstance(frame, bytes):
            raise ProtocolError("bad_message", "binary frames are not events: send audio in "
                                               "input_audio_buffer.append (base64)")
        message = parse_json_object(frame)
        kind = message.get("type")
        client_event_id = message.get("event_id") if isinstance(message.get("event_id"), str) else None
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._fault = ("type", client_event_id)
            raise ProtocolError("unknown_message", f"unknown or unsupported client event type {shown(kind)} "
                                                   f"in a transcription session")
        return handler(self, message, client_event_id)

    def _append(self, message: dict[str, Any], client_event_id: str | None) -> list[ev.Command | Frame]:
        audio = message.get("audio")
        if not isinstance(audio, str):
            self._fault = ("audio", client_event_id)
            raise ProtocolError("bad_message", "input_audio_buffer.append needs a base64 string 'audio'")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            self._fault = ("audio", client_event_id)
            raise ProtocolError("bad_message", "'audio' is not valid base64") from None
        if not pcm:
            return []
        self._buffered_bytes += len(pcm)
        if self.settings.manual and self._open is None:
            self._open = self._new_item()  # a manual turn starts with its first audio
        return [ev.Audio(pcm)]  # bytes pass through: the session's decoder keeps a split sample

    def _commit(self, message: dict[str, Any], client_event_id: str | None) -> list[ev.Command | Frame]:
        sample_bytes = BYTES_PER_SAMPLE[self.settings.encoding]
        needed = int(self.settings.sample_rate * MIN_COMMIT_S) * sample_bytes
        if self._buffered_bytes < needed:
            seconds = self._buffered_bytes / sample_bytes / self.settings.sample_rate
            return [self._error_frame(oe.error_body(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_S * 1000:.0f}ms of audio, but buffer only has {seconds * 1000:.2f}ms of audio.",
                None, client_event_id))]
        item = self._open or self._new_item()
        self._open, self._buffered_bytes = None, 0
        self._commits.append(item)
        return [ev.Finalize()]

    def _clear(self, message: dict[str, Any], client_event_id: str | None) -> list[ev.Command | Frame]:
        if self._open is not None:
            self._open.dropped = True
        self._open, self._buffered_bytes = None, 0
        return [ev.Clear()]

    def _update(self, message: dict[str, Any], client_event_id: str | None) -> list[ev.Command | Frame]:
        base = self._updates[-1].settings if self._updates else self.settings
        try:
            settings = oe.apply_update(base, message.get("session"))
        except oe.UpdateError as exc:
            self._fault = (exc.param, client_event_id)
            raise ProtocolError("invalid_update", exc.message) from None
        self._updates.append(_Update(settings, client_event_id))
        options = settings.options()
        options.update(sample_rate=settings.sample_rate, encoding=settings.encoding)
        return [ev.Configure(options)]

    # ---- events out ---------------------------------------------------------------------------

    def encode(self, event: ev.Event) -> list[Frame]:
        if isinstance(event, ev.Ready):
            return [self._session_frame("transcription_session.created" if self.beta else "session.created")]
        if isinstance(event, ev.Configured):
            if self._updates:
                self.settings = self._updates.popleft().settings
            return [self._session_frame("transcription_session.updated" if self.beta else "session.updated")]
        if isinstance(event, ev.SpeechStarted):
            return self._speech_started(event)
        if isinstance(event, ev.SpeechEnded):
            return self._speech_ended(event)
        if isinstance(event, ev.Partial):
            item = self._items.get(event.utterance_id)
            return self._delta(item, item.text(event.stable_text), event.utterance_id) if _live(item) else []
        if isinstance(event, ev.Final):
            return self._final(event)
        if isinstance(event, ev.Finalized):
            item = self._commits.popleft() if self._commits else None
            return self._committed(item) + self._maybe_complete(item, None) if item is not None else []
        if isinstance(event, ev.Cleared):
            item = self._items.get(event.utterance_id) if event.utterance_id is not None else None
            if item is not None:
                item.dropped = True
            return [self._frame({"type": "input_audio_buffer.cleared"})]
        if isinstance(event, ev.Error):
            return self._error(event)
        # Ended: the client closed the socket, nobody reads it. EagerEndOfTurn, TurnResumed: OpenAI has
        # no such events (its semantic VAD only ever commits a turn).
        return []

    def _speech_started(self, event: ev.SpeechStarted) -> list[Frame]:
        item = self._open = self._open or self._new_item()
        self._items[event.utterance_id] = item
        item.pending.add(event.utterance_id)
        if self.settings.manual:
            return []  # a manual turn has no VAD events
        item.vad = True
        return [self._frame({"type": "input_audio_buffer.speech_started", "audio_start_ms": oe.ms(event.start_s),
                             "item_id": item.item_id}, event.utterance_id)]

    def _speech_ended(self, event: ev.SpeechEnded) -> list[Frame]:
        item = self._items.get(event.utterance_id)
        if not _live(item):
            return []
        out = []
        if item.vad:
            out.append(self._frame({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": oe.ms(event.end_s),
                                    "item_id": item.item_id}, event.utterance_id))
        if event.reason == "finalize":  # the session's answer to the oldest commit
            if self._commits:
                self._commits.popleft()
            out += self._committed(item)
        elif not self.settings.manual or event.reason == "stream_end":  # server VAD ends the turn
            if self._open is item:
                self._open, self._buffered_bytes = None, 0
            out += self._committed(item)
        return out  # manual mode, length cut: the turn goes on until the client commits

    def _final(self, event: ev.Final) -> list[Frame]:
        item = self._items.pop(event.utterance_id, None)
        if not _live(item):
            return []
        item.pending.discard(event.utterance_id)
        if event.text:
            item.texts.append(event.text)
        item.seconds += event.end_s - event.start_s
        item.language = event.language or item.language
        return self._delta(item, item.text(), event.utterance_id) + self._maybe_complete(item, event.utterance_id)

    def _delta(self, item: _Item, text: str, utterance_id: int) -> list[Frame]:
        """Send what ``text`` adds to what was sent, only if it extends it: deltas are never retracted."""
        if len(text) <= len(item.sent) or not text.startswith(item.sent):
            return []
        delta, item.sent = text[len(item.sent):], text
        return [self._frame({"type": "conversation.item.input_audio_transcription.delta", "item_id": item.item_id,
                             "content_index": 0, "delta": delta, "logprobs": None}, utterance_id)]

    def _committed(self, item: _Item) -> list[Frame]:
        if item.committed or item.dropped:
            return []
        item.committed = True
        self._unfinished[item.item_id] = item
        previous, self._previous_item_id = self._previous_item_id, item.item_id
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        return [self._frame({"type": "input_audio_buffer.committed", "previous_item_id": previous,
                             "item_id": item.item_id}),
                self._frame({"type": added, "previous_item_id": previous, "item": oe.user_item(item.item_id)})]

    def _maybe_complete(self, item: _Item, utterance_id: int | None) -> list[Frame]:
        if not item.committed or item.pending or item.completed or item.dropped:
            return []
        item.completed = True
        self._unfinished.pop(item.item_id, None)
        return [self._frame(oe.completed(item.item_id, item.text(), item.seconds, item.language, beta=self.beta),
                            utterance_id)]

    def _error(self, event: ev.Error) -> list[Frame]:
        param, client_event_id = self._fault or (None, None)
        if self._fault is None and event.code == "invalid_update" and self._updates:
            client_event_id = self._updates.popleft().client_event_id  # the refused update is not applied
        self._fault = None
        out = []
        if event.fatal:  # no final is coming for the turns still owed one
            for item in list(self._unfinished.values()):
                item.completed = True
                out.append(self._frame(oe.failed(item.item_id, event.code, event.message)))
            self._unfinished.clear()
        out.append(self._error_frame(oe.error_body(event.code, event.message, param, client_event_id)))
        return out

    # ---- plumbing -----------------------------------------------------------------------------

    def _new_item(self) -> _Item:
        self._counter += 1
        return _Item(f"item_{self._prefix}{self._counter:06d}")

    def _frame(self, event: dict[str, Any], utterance_id: int | None = None) -> Frame:
        self._counter += 1
        message = {"event_id": f"event_{self._prefix}{self._counter:06d}", **event}
        return Frame(encode_event(message, None), event["type"], utterance_id)

    def _error_frame(self, body: dict[str, Any]) -> Frame:
        return self._frame({"type": "error", "error": body})

    def _session_frame(self, kind: str) -> Frame:
        session = oe.render_session(self.settings, beta=self.beta, session_id=f"sess_{self.session_id}",
                                    model=self._transcription_model)
        return self._frame({"type": kind, "session": session})


def _live(item: _Item | None) -> bool:
    return item is not None and not item.dropped and not item.completed


def _wants_beta(handshake: Handshake) -> bool:
    """The beta dialect: header ``OpenAI-Beta: realtime=v1`` or, from a browser, its subprotocol."""
    for key, value in handshake.headers.items():
        if key.lower() == "openai-beta" and "realtime=v1" in value.replace(" ", "").lower():
            return True
    return BETA_SUBPROTOCOL in (p.lower() for p in offered_subprotocols(handshake.headers))


_HANDLERS = {
    "input_audio_buffer.append": OpenAIRealtimeCodec._append,
    "input_audio_buffer.commit": OpenAIRealtimeCodec._commit,
    "input_audio_buffer.clear": OpenAIRealtimeCodec._clear,
    "session.update": OpenAIRealtimeCodec._update,
    "transcription_session.update": OpenAIRealtimeCodec._update,
}
"""Client event type → handler; any other type is ``unknown_message`` (an error event)."""
