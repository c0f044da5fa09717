"""One continuous stream across reconnects, sans I/O: what to send next, and how to number what comes back.

A server restart must cost the caller nothing: audio not yet covered by a
final is sent again to the next server, and that server's events (whose seq,
utterance ids and times restart at 0) are renumbered and shifted so the caller
sees one stream. :class:`Outbox` holds the audio and the control messages in
order, by sample position; :class:`StreamMapper` maps one connection's events
onto the whole stream. Both are pure state, tested with plain values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from streaming.audio import float_to_pcm16
from streaming.protocol import round_time

from .common import ReplayBuffer
from .events import (Cleared, EagerEndOfTurn, End, Final, OtherEvent, Partial, ServerEvent, SpeechEnd, SpeechStart,
                     TurnResumed)

SAMPLE_DTYPES: dict[str, str] = {"pcm_s16le": "<i2", "pcm_f32le": "<f4", "mulaw": "u1", "alaw": "u1"}
"""How the samples of each wire encoding are stored (one numpy element per sample)."""


def encode_audio(audio: bytes | bytearray | memoryview | np.ndarray, encoding: str) -> bytes:
    """Audio as the wire bytes of ``encoding``: bytes pass through; float samples are converted
    (``pcm_s16le`` with :func:`streaming.audio.float_to_pcm16`, the one conversion)."""
    if isinstance(audio, bytes | bytearray | memoryview):
        return bytes(audio)
    array = np.asarray(audio)
    if array.dtype.kind == "f":
        if encoding == "pcm_s16le":
            return float_to_pcm16(array)
        if encoding == "pcm_f32le":
            return array.astype("<f4").tobytes()
    elif encoding == "pcm_s16le" and array.dtype.kind == "i" and array.dtype.itemsize == 2:
        return array.astype("<i2").tobytes()
    elif encoding in ("mulaw", "alaw") and array.dtype == np.uint8:
        return array.tobytes()
    raise TypeError(f"cannot send {array.dtype} samples as {encoding}: give bytes in that encoding")


class Outbox:
    """Audio (in the wire encoding) and control messages waiting to be sent or to be covered by a final.

    Controls (``finalize``, ``clear``) keep their place in the audio: each goes out
    after exactly the audio pushed before it, on every connection that replays
    that audio, until a final or ``cleared`` event covers its position.
    """

    def __init__(self, encoding: str, max_unsent: int, max_replay: int) -> None:
        self.dtype = np.dtype(SAMPLE_DTYPES[encoding])
        self.buffer = ReplayBuffer(max_unsent, max_replay, dtype=self.dtype)
        self._stray = b""
        self._controls: list[tuple[int, dict[str, Any]]] = []
        self._next_control = 0

    @property
    def unsent(self) -> int:
        """Samples pushed but not yet sent on the current connection."""
        return self.buffer.unsent

    @property
    def unacknowledged(self) -> int:
        """Samples pushed that no final has covered yet (sent or not)."""
        return self.buffer.captured_pos - self.buffer.acked_pos

    def push(self, pcm: bytes) -> int:
        """Append encoded audio (a sample may be split across pushes); returns samples dropped as too old."""
        data = self._stray + pcm if self._stray else pcm
        usable = len(data) - len(data) % self.dtype.itemsize
        self._stray = data[usable:]
        if usable:
            self.buffer.append(np.frombuffer(data[:usable], dtype=self.dtype))
        return self.buffer.take_dropped()

    def control(self, message: dict[str, Any]) -> None:
        """A control message to send after all audio pushed so far."""
        self._controls.append((self.buffer.captured_pos, message))

    def next_frame(self, max_samples: int) -> bytes | dict[str, Any] | None:
        """The next thing to send: audio bytes, a control message, or ``None`` when all is sent."""
        sent = self.buffer.sent_pos
        if self._next_control < len(self._controls):
            position, message = self._controls[self._next_control]
            if position <= sent:
                self._next_control += 1
                return message
            max_samples = min(max_samples, position - sent)
        if not self.buffer.unsent:
            return None
        _, samples = self.buffer.take_unsent(max_samples)
        return samples.tobytes()

    def ack(self, position: int) -> None:
        """Audio before ``position`` is transcribed or cleared: never send it (or its controls) again."""
        self.buffer.ack(position)
        acked = self.buffer.acked_pos
        done = 0
        while done < self._next_control and self._controls[done][0] <= acked:
            done += 1
        del self._controls[:done]
        self._next_control -= done

    def rewind(self) -> int:
        """A new connection: what is not acknowledged goes out again. Returns its first sample position."""
        self._next_control = 0
        return self.buffer.rewind()


class StreamMapper:
    """Maps each connection's events onto the caller's one stream: ``seq``, utterance ids and times.

    On connection *n*, stream time 0 is the first sample it was sent (``base_pos``);
    its utterance 0 is the first utterance no final or ``cleared`` has ended yet,
    so an utterance cut by a lost connection keeps its id when it is decoded again.
    """

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.seq = 0
        self.connections = 0
        self.base_pos = 0
        self.uid_offset = 0
        self.next_uid = 0
        """The id the next utterance gets in the caller's stream (after every final or cleared one)."""

    @property
    def offset_s(self) -> float:
        return self.base_pos / self.sample_rate_hz

    def connected(self, base_pos: int) -> None:
        """A connection is ready; its audio starts at sample ``base_pos`` of the stream."""
        self.connections += 1
        self.base_pos = base_pos
        self.uid_offset = self.next_uid

    def map(self, event: ServerEvent) -> ServerEvent:
        """The event as the caller sees it (a new object; ``seq`` counts the caller's events)."""
        changes: dict[str, Any] = {}
        if event.seq is not None:
            changes["seq"] = self.seq
            if isinstance(event, OtherEvent):
                changes["fields"] = {**event.fields, "seq": self.seq}
            self.seq += 1
        uid = getattr(event, "utterance_id", None)
        if (isinstance(event, SpeechStart | Partial | SpeechEnd | Final | Cleared | EagerEndOfTurn | TurnResumed)
                and uid is not None):
            changes["utterance_id"] = uid = uid + self.uid_offset
            if isinstance(event, Final | Cleared):
                self.next_uid = max(self.next_uid, uid + 1)
        offset = self.offset_s
        if offset:
            for name in ("start_s", "end_s", "at_s"):
                if hasattr(event, name):
                    changes[name] = round_time(getattr(event, name) + offset)
            if isinstance(event, Final) and event.words is not None:
                changes["words"] = tuple(dataclasses.replace(w, start_s=round_time(w.start_s + offset),
                                                             end_s=round_time(w.end_s + offset))
                                         for w in event.words)
            if isinstance(event, End):
                changes["audio_s"] = round_time(event.audio_s + offset)
        if isinstance(event, End):
            changes["utterances"] = event.utterances + self.uid_offset
        return dataclasses.replace(event, **changes) if changes else event

    def covered_position(self, event: ServerEvent) -> int | None:
        """For a connection's own (unmapped) final or ``cleared``: the stream sample up to which the audio is done."""
        if isinstance(event, Final):
            return self.base_pos + round(event.end_s * self.sample_rate_hz)
        if isinstance(event, Cleared):
            return self.base_pos + round(event.at_s * self.sample_rate_hz)
        return None
