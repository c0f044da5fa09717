"""Turn-taking on protocol v1's wire, sans I/O: the session's turn events → v1 messages (JSON and msgpack),
and what the bundled client library makes of them."""

from __future__ import annotations

import json

import msgpack
import pytest

from client.events import Final as ClientFinal
from client.events import SpeechEnd, parse_event
from streaming import events as ev
from streaming.codecs import Handshake
from streaming.codecs.v1 import V1Codec, event_fields
from streaming.results import Word

REASONS = ("endpoint", "end_of_turn", "max_silence", "max_length", "finalize", "stream_end")
"""Every ``SpeechEnded``/``Final`` reason (``streaming/events.py``)."""


def v1(use_msgpack: bool = False) -> V1Codec:
    codec = V1Codec("s1", "tiny.en", Handshake("/v1/stream"))
    start = {"type": "start"}
    codec.decode(msgpack.packb(start) if use_msgpack else json.dumps(start))  # the first frame sets the wire
    return codec


def sent(codec: V1Codec, *events: ev.Event) -> list[dict]:
    """Session events → the v1 messages sent, decoded from the wire."""
    out = []
    for event in events:
        for frame in codec.encode(event):
            message = msgpack.unpackb(frame.data) if isinstance(frame.data, bytes) else json.loads(frame.data)
            assert frame.kind == message["type"] and frame.utterance_id == message.get("utterance_id")
            out.append(message)
    return out


@pytest.mark.parametrize("event, fields", [
    (ev.EagerEndOfTurn(3, "i want to go", 1.5, 2.75),
     {"type": "eager_end_of_turn", "utterance_id": 3, "text": "i want to go", "start_s": 1.5, "end_s": 2.75}),
    (ev.EagerEndOfTurn(0, "", 0.0, 0.5),
     {"type": "eager_end_of_turn", "utterance_id": 0, "text": "", "start_s": 0.0, "end_s": 0.5}),
    (ev.TurnResumed(3, 3.25), {"type": "turn_resumed", "utterance_id": 3, "at_s": 3.25}),
    *[(ev.SpeechEnded(1, 4.0, reason), {"type": "speech_end", "utterance_id": 1, "end_s": 4.0, "reason": reason})
      for reason in REASONS],
    *[(ev.Final(1, "go home", "en", 2.0, 4.0, reason),
       {"type": "final", "utterance_id": 1, "text": "go home", "language": "en", "start_s": 2.0, "end_s": 4.0,
        "reason": reason}) for reason in REASONS],
    (ev.Final(1, "go", None, 2.0, 2.5, "end_of_turn", (Word("go", 2.1, 2.4, 0.9),), "cross-attention DTW"),
     {"type": "final", "utterance_id": 1, "text": "go", "language": None, "start_s": 2.0, "end_s": 2.5,
      "reason": "end_of_turn", "words": [{"word": "go", "start_s": 2.1, "end_s": 2.4, "probability": 0.9}],
      "word_timing": "cross-attention DTW"}),
])
def test_turn_events_as_v1_fields(event, fields):
    assert event_fields(event) == fields


@pytest.mark.parametrize("use_msgpack", [False, True])
def test_eager_timeline_in_v1_messages(use_msgpack):
    """speech_start → partial → eager_end_of_turn → turn_resumed → partial → eager → speech_end → final, seq 0…"""
    codec = v1(use_msgpack)
    messages = sent(codec, ev.Ready("s1", "tiny.en", {}), ev.SpeechStarted(0, 0.2),
                    ev.Partial(0, "i want", "i", 0.2, 1.0), ev.EagerEndOfTurn(0, "i want", 0.2, 1.1),
                    ev.TurnResumed(0, 1.6), ev.Partial(0, "i want to go home", "i want", 0.2, 2.4),
                    ev.EagerEndOfTurn(0, "i want to go home", 0.2, 2.5), ev.SpeechEnded(0, 2.5, "end_of_turn"),
                    ev.Final(0, "i want to go home", "en", 0.2, 2.5, "end_of_turn"))
    assert [m["seq"] for m in messages] == list(range(len(messages)))
    assert [m["type"] for m in messages] == ["ready", "speech_start", "partial", "eager_end_of_turn",
                                             "turn_resumed", "partial", "eager_end_of_turn", "speech_end", "final"]
    assert messages[3] == {"type": "eager_end_of_turn", "seq": 3, "utterance_id": 0, "text": "i want",
                           "start_s": 0.2, "end_s": 1.1}
    assert messages[4] == {"type": "turn_resumed", "seq": 4, "utterance_id": 0, "at_s": 1.6}
    assert messages[6]["text"] == messages[8]["text"]  # the final reuses the eager decode
    assert messages[7]["reason"] == messages[8]["reason"] == "end_of_turn"


@pytest.mark.parametrize("event", [ev.Configured({"turn_detection": "smart"}), ev.Finalized(1.0)])
def test_v1_still_says_nothing_for_configured_and_finalized(event):
    assert event_fields(event) is None and sent(v1(), event) == []


# ---- the bundled client library (client/events.py) reads the new fields and messages -------------------


@pytest.mark.parametrize("event", [ev.SpeechEnded(2, 3.0, "max_silence"),
                                   ev.Final(2, "hello", "en", 1.0, 3.0, "max_silence"),
                                   ev.EagerEndOfTurn(2, "so", 0.0, 1.0), ev.TurnResumed(2, 1.5)])
def test_client_library_reads_turn_messages_and_gives_them_back_unchanged(event):
    """Modelled or not, nothing the server says is lost; a known message with a new field stays readable."""
    [message] = sent(v1(), event)
    parsed = parse_event(message)
    assert parsed.type == message["type"] and parsed.seq == 0
    assert parsed.to_message() == message
    if message["type"] in ("speech_end", "final"):
        assert isinstance(parsed, SpeechEnd | ClientFinal)  # the new "reason" does not make it unreadable
        assert getattr(parsed, "reason", parsed.extra.get("reason")) == "max_silence"
