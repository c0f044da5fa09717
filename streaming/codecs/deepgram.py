"""Deepgram live transcription (``/v1/listen``), sans I/O: Deepgram's frames ↔ the session.

The query sets everything (:mod:`.deepgram_query`), so :meth:`DeepgramCodec.opened`
starts the session at once. Client frames: binary = audio (an empty one ends the
stream, as it did in Deepgram's older API), text = ``KeepAlive``, ``Finalize``,
``CloseStream`` or ``Configure``. Server messages have the full shape the
official SDK's models require (``deepgram-sdk`` 7: ``ListenV1Results``,
``ListenV1Metadata``…), always, since a missing key makes clients drop a message.

How the session's events read in Deepgram's terms:

- a partial → an interim ``Results`` (``is_final: false``, with ``interim_results``);
- a final → a final ``Results``: ``speech_final`` is true at a real end of turn
  (:data:`SPEECH_FINAL_REASONS`: a pause, the turn model's end of turn or its
  longest pause, a ``Finalize``, the end of the stream), false after a length
  cut (``max_length``); ``from_finalize`` when a ``Finalize`` ended it; then
  ``UtteranceEnd`` after a pause (:data:`UTTERANCE_END_REASONS`, with ``utterance_end_ms``);
- our ``EagerEndOfTurn``/``TurnResumed`` → nothing: Deepgram's v1 listen API has
  no such messages (Flux's ``EagerEndOfTurn``/``TurnResumed`` belong to its v2 API);
- a ``Finalize`` with no utterance open → an empty final ``Results`` with ``from_finalize``;
- speech start → ``SpeechStarted`` (with ``vad_events``);
- the end after ``CloseStream`` → ``Metadata`` (then the server closes with 1000);
- 10 s without audio or a message → close 1011 with Deepgram's NET-0001 reason
  and no message before it, as Deepgram does;
- any other error → ``{"type": "Error", "variant", "description", "message"}``
  (``variant`` is ``SchemaError`` for a client message that cannot be read, else
  this server's error code).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from .. import events as ev
from ..config import MAX_CONTEXT_CHARS
from ..protocol import ProtocolError, parse_json_object, round_time, shown
from ..results import Word
from ..results import estimate_words
from .base import Codec, Frame, Handshake
from .deepgram_query import context_of, parse_query

NET_0001_REASON = ("Deepgram did not receive audio data or a text message within the timeout window. "
                   "See https://dpgr.am/net0001")
"""Deepgram's close reason for its idle timeout (code 1011), word for word: clients match on it."""
SCHEMA_ERROR_CODES = ("bad_message", "unknown_message")
"""Error codes that Deepgram reports as ``SchemaError`` (a client text message it cannot read)."""
MAX_ECHOED_CHARS = 200
"""How much of an unreadable message a ``SchemaError`` echoes in ``message``."""
SPEECH_FINAL_REASONS = frozenset({"endpoint", "end_of_turn", "max_silence", "finalize", "stream_end"})
"""Final reasons that end the speaker's turn (``speech_final: true``); a ``max_length`` cut does not."""
UTTERANCE_END_REASONS = frozenset({"endpoint", "end_of_turn", "max_silence"})
"""Final reasons that are a pause in the speech, after which ``UtteranceEnd`` follows (with ``utterance_end_ms``)."""


class DeepgramCodec(Codec):
    name = "deepgram"
    path = "/v1/listen"
    idle_timeout_s = 10.0
    """Deepgram closes a stream that sends no audio and no message for 10 s (NET-0001)."""

    def __init__(self, session_id: str, model: str, handshake: Handshake,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(session_id, model, handshake)
        self.options = parse_query(handshake.params())
        self.request_id = request_id_for(session_id)
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"streaming-asr/model/{model}"))
        self.model_info = {"name": model, "version": _version(), "arch": model}
        self.created = now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._audio_sha256 = hashlib.sha256()
        self._refused_text: str | None = None
        """The client text a ``SchemaError`` being raised echoes."""
        self._pending_keyterms: deque[list[str]] = deque()
        """Keyterms of each ``Configure`` the session has not answered yet."""
        self._last_word_end: dict[int, float] = {}
        """Per channel, the end of the last word since its last ``UtteranceEnd`` (absent: no word since)."""
        self.channels = self.options.channels if self.options.multichannel else 1
        """Channels transcribed apart (``channel_index``'s second number)."""

    @classmethod
    def check_handshake(cls, handshake: Handshake) -> None:
        parse_query(handshake.params())

    def opened(self) -> list[ev.Command | Frame]:
        return [self.options.start()]

    # ---- client frames ---------------------------------------------------------------------------

    def decode(self, frame: str | bytes) -> list[ev.Command | Frame]:
        if isinstance(frame, bytes):
            if not frame:
                return [ev.Stop()]
            self._audio_sha256.update(frame)
            return [ev.Audio(frame)]
        message = self._json(frame)
        kind = message.get("type")
        if kind == "KeepAlive":
            return [ev.Keepalive()]
        if kind == "Finalize":
            return [ev.Finalize()]
        if kind == "CloseStream":
            return [ev.Stop()]
        if kind == "Configure":
            return self._configure(message, frame)
        self._refused_text = _excerpt(frame)
        raise ProtocolError("unknown_message", f"unknown message type {shown(kind)} (expected KeepAlive, "
                                               "Finalize, CloseStream or Configure)")

    def _json(self, frame: str) -> dict[str, Any]:
        try:
            return parse_json_object(frame)
        except ProtocolError:
            self._refused_text = _excerpt(frame)
            raise

    def _configure(self, message: dict[str, Any], frame: str) -> list[ev.Command | Frame]:
        """``Configure``: ``keyterms`` replace the session's context from the next utterance on."""
        keyterms = message.get("keyterms")
        if keyterms is None:  # nothing this server changes (``features`` has no effect here)
            return [self._frame({"type": "ConfigureSuccess", "request_id": self.request_id})]
        if not isinstance(keyterms, list) or not all(isinstance(t, str) for t in keyterms):
            self._refused_text = _excerpt(frame)
            raise ProtocolError("bad_message", "Configure's keyterms must be an array of strings")
        terms = list(dict.fromkeys(t.strip() for t in keyterms if t.strip()))
        if len(context_of(terms)) > MAX_CONTEXT_CHARS:
            return [self._frame({"type": "ConfigureFailure", "request_id": self.request_id,
                                 "code": "CONFIGURE_KEYTERM_LIMIT_EXCEEDED",
                                 "description": f"keyterms are too long together: at most {MAX_CONTEXT_CHARS} "
                                                "characters"})]
        self._pending_keyterms.append(terms)
        return [ev.Configure({"context": context_of(terms) or None})]

    # ---- session events --------------------------------------------------------------------------

    def encode(self, event: ev.Event) -> list[Frame]:
        if isinstance(event, ev.Partial):
            if not self.options.interim_results:
                return []
            words = estimate_words(event.text, event.start_s, event.end_s)
            message = self._results_message(event.text, words, event.start_s, event.end_s, is_final=False,
                                            speech_final=False, from_finalize=False, channel=event.channel)
            return [Frame(_json_text(message), "partial", event.utterance_id)]
        if isinstance(event, ev.Final):
            return self._final(event)
        if isinstance(event, ev.Finalized):
            return [self._frame(self._results_message("", (), event.at_s, event.at_s, is_final=True,
                                                      speech_final=True, from_finalize=True,
                                                      channel=event.channel))]
        if isinstance(event, ev.SpeechStarted):
            if not self.options.vad_events:
                return []
            return [self._frame({"type": "SpeechStarted", "channel": [event.channel or 0],
                                 "timestamp": event.start_s})]
        if isinstance(event, ev.Configured):
            if not self._pending_keyterms:
                return []
            return [self._frame({"type": "ConfigureSuccess", "request_id": self.request_id,
                                 "keyterms": self._pending_keyterms.popleft()})]
        if isinstance(event, ev.Error):
            return self._error(event)
        if isinstance(event, ev.Ended):
            return [self._frame(self._metadata(event.audio_s))]
        return []  # Ready, SpeechEnded, Cleared, EagerEndOfTurn, TurnResumed: no Deepgram v1 message

    def _final(self, final: ev.Final) -> list[Frame]:
        words = final.words if final.words is not None else estimate_words(final.text, final.start_s, final.end_s)
        message = self._results_message(final.text, words, final.start_s, final.end_s, is_final=True,
                                        speech_final=final.reason in SPEECH_FINAL_REASONS,
                                        from_finalize=final.reason == "finalize", channel=final.channel)
        frames = [Frame(_json_text(message), "final", final.utterance_id)]
        entries = message["channel"]["alternatives"][0]["words"]
        channel = final.channel or 0
        if entries:
            self._last_word_end[channel] = entries[-1]["end"]
        if (final.reason in UTTERANCE_END_REASONS and self.options.utterance_end_ms is not None
                and channel in self._last_word_end):
            frames.append(self._frame({"type": "UtteranceEnd", "channel": [channel, self.channels],
                                       "last_word_end": self._last_word_end.pop(channel)}))
        return frames

    def _results_message(self, transcript: str, words: Sequence[Word], start_s: float, end_s: float, *,
                         is_final: bool, speech_final: bool, from_finalize: bool,
                         channel: int | None = None) -> dict[str, Any]:
        confidence = round(sum(w.probability for w in words) / len(words), 4) if words else 0.0
        alternative = {"transcript": transcript, "confidence": confidence,
                       "words": word_entries(words, start_s, end_s)}
        return {"type": "Results", "channel_index": [channel or 0, self.channels], "duration": round_time(end_s - start_s),
                "start": start_s, "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
                "channel": {"alternatives": [alternative]},
                "metadata": {"request_id": self.request_id, "model_info": self.model_info,
                             "model_uuid": self.model_uuid}}

    def _error(self, error: ev.Error) -> list[Frame]:
        if self._pending_keyterms and error.code == "invalid_update":  # the session refused a Configure
            self._pending_keyterms.popleft()
            return [self._frame({"type": "ConfigureFailure", "request_id": self.request_id,
                                 "code": "CONFIGURE_INTERNAL_ERROR", "description": error.message})]
        if error.fatal and error.code == "idle_timeout":
            return []  # Deepgram says it in the close frame only (see close_frame)
        if error.code in SCHEMA_ERROR_CODES:
            echoed, self._refused_text = self._refused_text, None
            return [self._frame({"type": "Error", "variant": "SchemaError", "description": error.message,
                                 "message": echoed if echoed is not None else ""})]
        return [self._frame({"type": "Error", "variant": error.code, "description": error.message,
                             "message": error.message})]

    def _metadata(self, duration_s: float) -> dict[str, Any]:
        return {"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                "sha256": self._audio_sha256.hexdigest(), "created": self.created, "duration": duration_s,
                "channels": self.options.channels, "models": [self.model_uuid], "model_info": {self.model_uuid: self.model_info}}

    def close_frame(self, code: int, reason: str, error: ev.Error | None) -> tuple[int, str]:
        if error is not None and error.code == "idle_timeout":
            return 1011, NET_0001_REASON
        return code, reason

    def _frame(self, message: dict[str, Any]) -> Frame:
        return Frame(_json_text(message), message["type"])


def word_entries(words: Sequence[Word], start_s: float, end_s: float) -> list[dict[str, Any]]:
    """Deepgram's ``words``: ``word`` bare and lower-cased, ``punctuated_word`` as in the transcript.

    Times are kept inside the result's span and in order (a backend's alignment may stray by a
    frame), so a client can place every word within ``[start, start + duration]``. A word that is
    punctuation only (a dash) is not a word; it stays in the transcript.
    """
    bare = [_bare(w.word) for w in words]
    if not any(bare):  # nothing but punctuation: keep it rather than return no words for a transcript
        bare = [w.word.lower() for w in words]
    entries: list[dict[str, Any]] = []
    at = start_s
    for word, plain in zip(words, bare):
        if not plain:
            continue
        start = min(max(word.start_s, at), end_s)
        end = min(max(word.end_s, start), end_s)
        entry = {"word": plain, "start": start, "end": end, "confidence": round(word.probability, 4),
                 "punctuated_word": word.word}
        if word.speaker is not None:
            entry["speaker"] = word.speaker
        entries.append(entry)
        at = start
    return entries


def request_id_for(session_id: str) -> str:
    """A UUID for ``metadata.request_id`` that starts with the server's session id (hex) when it can,
    so a client's request id finds the server's log lines."""
    prefix = session_id.lower() if len(session_id) <= 32 and all(c in "0123456789abcdef" for c in
                                                                 session_id.lower()) else ""
    return str(uuid.UUID(hex=(prefix + uuid.uuid4().hex)[:32]))


def _bare(word: str) -> str:
    """The word without leading/trailing punctuation, lower-cased (``"Americans,"`` → ``"americans"``)."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end].lower()


def _excerpt(text: str) -> str:
    """The start of a client text, safe to send back (a lone surrogate becomes ``?``)."""
    text = text if len(text) <= MAX_ECHOED_CHARS else text[:MAX_ECHOED_CHARS] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def _json_text(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _version() -> str:
    try:
        return metadata.version("streaming-asr")
    except metadata.PackageNotFoundError:
        return "dev"
