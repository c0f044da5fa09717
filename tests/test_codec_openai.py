"""The OpenAI Realtime transcription codec, sans I/O: frames in → commands/frames out, events in → frames out."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import events as ev
from streaming.codecs import Frame, Handshake, HandshakeRefused, codec_for_path
from streaming.codecs.openai_realtime import OpenAIRealtimeCodec
from streaming.protocol import ERROR_CODES, ProtocolError

DEFAULT_OPTIONS = {"endpointing": True, "speech_threshold": 0.5, "preroll_ms": 300, "turn_detection": "silence",
                   "endpoint_silence_ms": 500}
MANUAL_OPTIONS = {"endpointing": False, "turn_detection": "manual"}
SEMANTIC_OPTIONS = {"endpointing": True, "speech_threshold": 0.5, "preroll_ms": 300, "turn_detection": "smart",
                    "turn_eagerness": "auto", "turn_max_silence_ms": 4000}
"""What ``semantic_vad`` with no other field asks for (eagerness auto: OpenAI's 4 s maximum wait)."""
PCM24K = {"sample_rate": 24_000, "encoding": "pcm_s16le"}


class Client:
    """Drives one codec like the server's link does; collects every frame it sends and checks event ids."""

    def __init__(self, beta: bool = False, headers: dict[str, str] | None = None,
                 query: str = "intent=transcription&model=gpt-4o-transcribe") -> None:
        headers = dict(headers or {})
        if beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        self.codec = OpenAIRealtimeCodec("s1", "tiny.en", Handshake("/v1/realtime", query, headers))
        self.event_ids: list[str] = []

    def send(self, event: dict) -> tuple[list[ev.Command], list[dict]]:
        """One client event → (commands for the session, events the codec answers by itself)."""
        out = self.codec.decode(json.dumps(event))
        return [c for c in out if not isinstance(c, Frame)], self._events([f for f in out if isinstance(f, Frame)])

    def tell(self, *events: ev.Event) -> list[dict]:
        """Session events → the OpenAI events sent (event_id checked and dropped)."""
        return self._events([frame for event in events for frame in self.codec.encode(event)])

    def _events(self, frames: list[Frame]) -> list[dict]:
        out = []
        for frame in frames:
            message = json.loads(frame.data)
            assert frame.kind == message["type"] != "partial"  # no OpenAI event may be replaced unsent
            event_id = message.pop("event_id")
            assert event_id.startswith("event_") and event_id not in self.event_ids
            self.event_ids.append(event_id)
            out.append(message)
        return out

    def ready(self) -> list[dict]:
        return self.tell(ev.Ready("s1", "tiny.en", {}))

    def configure(self, session: dict, kind: str = "session.update") -> tuple[list[ev.Command], list[dict]]:
        """A session update and the session's acceptance: (its commands, the ``session.updated`` sent)."""
        commands, _ = self.send({"type": kind, "session": session})
        return commands, self.tell(ev.Configured({}))

    def append(self, pcm: bytes) -> list[ev.Command]:
        commands, frames = self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
        assert frames == []
        return commands


def silence(seconds: float, rate: int = 24_000, sample_bytes: int = 2) -> bytes:
    return bytes(int(seconds * rate) * sample_bytes)


def item_ids(events: list[dict]) -> list[str]:
    return [e.get("item_id") or e["item"]["id"] for e in events if "item_id" in e or "item" in e]


def strip_ids(events: list[dict]) -> list[dict]:
    """Events with item ids replaced by A, B, C… in order of appearance (ids are random)."""
    names: dict[str, str] = {}

    def name(value):
        if isinstance(value, str) and value.startswith("item_"):
            return names.setdefault(value, "ABCDEFGH"[len(names)])
        if isinstance(value, dict):
            return {k: name(v) for k, v in value.items()}
        if isinstance(value, list):
            return [name(v) for v in value]
        return value

    return [name(e) for e in events]


DEFAULT_TRANSCRIPTION = {"model": "gpt-4o-transcribe", "language": None, "prompt": ""}
DEFAULT_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
GA_DEFAULT_SESSION = {
    "type": "transcription", "id": "sess_s1", "object": "realtime.transcription_session", "expires_at": 0,
    "include": None,
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": DEFAULT_TRANSCRIPTION,
                        "noise_reduction": None, "turn_detection": DEFAULT_VAD}}}
BETA_DEFAULT_SESSION = {
    "id": "sess_s1", "object": "realtime.transcription_session", "expires_at": 0, "include": None,
    "input_audio_format": "pcm16", "input_audio_transcription": DEFAULT_TRANSCRIPTION,
    "turn_detection": DEFAULT_VAD, "input_audio_noise_reduction": None, "modalities": ["text"],
    "client_secret": None}
LIVEKIT_SESSION = {  # livekit-plugins-openai's STT, GA shape
    "type": "transcription",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "gpt-4o-mini-transcribe", "prompt": "", "language": "en"},
                        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 600,
                                           "silence_duration_ms": 350}}}}


# ---- opening -------------------------------------------------------------------------------------


def test_registered_by_path():
    assert codec_for_path("/v1/realtime") is OpenAIRealtimeCodec
    assert (OpenAIRealtimeCodec.name, OpenAIRealtimeCodec.path) == ("openai", "/v1/realtime")


def test_opened_starts_at_once_with_openai_defaults():
    assert Client().codec.opened() == [ev.Start(24_000, "pcm_s16le", DEFAULT_OPTIONS)]


@pytest.mark.parametrize("beta, headers, kind, session", [
    (False, {}, "session.created", GA_DEFAULT_SESSION),
    (True, {}, "transcription_session.created", BETA_DEFAULT_SESSION),
    (False, {"openai-beta": "realtime=v1"}, "transcription_session.created", BETA_DEFAULT_SESSION),
    (False, {"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.k, openai-beta.realtime-v1"},
     "transcription_session.created", BETA_DEFAULT_SESSION),
    (False, {"OpenAI-Beta": "assistants=v2"}, "session.created", GA_DEFAULT_SESSION),
])
def test_ready_is_session_created(beta, headers, kind, session):
    assert Client(beta, headers).ready() == [{"type": kind, "session": session}]


def test_transcription_model_defaults_to_ours_without_a_model_in_the_url():
    created = Client(query="intent=transcription").ready()[0]
    assert created["session"]["audio"]["input"]["transcription"]["model"] == "tiny.en"


@pytest.mark.parametrize("query, refused", [
    ("intent=transcription", False), ("", False), ("model=gpt-4o-transcribe", False),
    ("intent=conversation&model=gpt-realtime", True),
])
def test_handshake_intent(query, refused):
    handshake = Handshake("/v1/realtime", query, {})
    if refused:
        with pytest.raises(HandshakeRefused) as info:
            OpenAIRealtimeCodec.check_handshake(handshake)
        assert info.value.status == 400
    else:
        OpenAIRealtimeCodec.check_handshake(handshake)


# ---- session updates -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, session, options", [
    ("session.update", LIVEKIT_SESSION,
     {"endpointing": True, "speech_threshold": 0.5, "preroll_ms": 600, "turn_detection": "silence",
      "endpoint_silence_ms": 350, "language": "en", "context": None, **PCM24K}),
    ("session.update", {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
     {**MANUAL_OPTIONS, **PCM24K}),
    ("session.update", {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
     {**DEFAULT_OPTIONS, "sample_rate": 8000, "encoding": "mulaw"}),
    ("session.update", {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcma"}}}},
     {**DEFAULT_OPTIONS, "sample_rate": 8000, "encoding": "alaw"}),
    ("session.update", {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     {**DEFAULT_OPTIONS, "sample_rate": 16000, "encoding": "pcm_s16le"}),
    ("session.update", {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.0,
                                                               "prefix_padding_ms": 5000, "silence_duration_ms": 50}}}},
     {"endpointing": True, "speech_threshold": 0.1, "preroll_ms": 1000, "turn_detection": "silence",
      "endpoint_silence_ms": 100, **PCM24K}),
    ("session.update", {"audio": {"input": {"turn_detection": {"threshold": 1, "silence_duration_ms": 99999}}}},
     {"endpointing": True, "speech_threshold": 0.95, "preroll_ms": 300, "turn_detection": "silence",
      "endpoint_silence_ms": 5000, **PCM24K}),
    ("session.update", {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}},
     {**SEMANTIC_OPTIONS, "turn_eagerness": "low", "turn_max_silence_ms": 8000, **PCM24K}),
    ("session.update", {"type": "transcription", "audio": {"input": {
        "transcription": {"model": "whisper-1", "language": "", "prompt": "cards: clubs, hearts"},
        "noise_reduction": {"type": "near_field"}}}, "include": ["item.input_audio_transcription.logprobs"]},
     {**DEFAULT_OPTIONS, "language": None, "context": "cards: clubs, hearts", **PCM24K}),
    ("session.update", {"type": "transcription"}, {**DEFAULT_OPTIONS, **PCM24K}),
    ("transcription_session.update", {"input_audio_format": "g711_ulaw", "turn_detection": None},
     {**MANUAL_OPTIONS, "sample_rate": 8000, "encoding": "mulaw"}),
    ("transcription_session.update", {"input_audio_format": "g711_alaw"},
     {**DEFAULT_OPTIONS, "sample_rate": 8000, "encoding": "alaw"}),
    ("transcription_session.update",  # the older LiveKit plugin's beta update, extra key and all
     {"input_audio_format": "pcm16",
      "input_audio_transcription": {"model": "gpt-4o-transcribe", "prompt": "", "language": "en",
                                    "noise_reduction_type": "near_field"},
      "turn_detection": {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 600,
                         "silence_duration_ms": 350}},
     {"endpointing": True, "speech_threshold": 0.6, "preroll_ms": 600, "turn_detection": "silence",
      "endpoint_silence_ms": 350, "language": "en", "context": None, **PCM24K}),
])
def test_update_becomes_configure(kind, session, options):
    client = Client()
    client.ready()
    commands, frames = client.send({"type": kind, "session": session})
    assert (commands, frames) == ([ev.Configure(options)], [])


def test_updated_echoes_the_session_as_the_client_set_it():
    client = Client()
    client.ready()
    _, updated = client.configure(LIVEKIT_SESSION)
    assert updated == [{"type": "session.updated", "session": {
        **GA_DEFAULT_SESSION,
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "noise_reduction": None,
                            "transcription": {"model": "gpt-4o-mini-transcribe", "prompt": "", "language": "en"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 600,
                                               "silence_duration_ms": 350}}}}}]
    # a later update changes only what it names
    _, updated = client.configure({"type": "transcription", "audio": {"input": {"turn_detection": None}}})
    audio_input = updated[0]["session"]["audio"]["input"]
    assert audio_input["turn_detection"] is None
    assert audio_input["transcription"]["language"] == "en"


def test_semantic_vad_is_echoed_with_its_eagerness():
    client = Client()
    client.ready()
    _, updated = client.configure({"audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                                          "eagerness": "high"}}}})
    turn_detection = updated[0]["session"]["audio"]["input"]["turn_detection"]
    assert turn_detection == {"type": "semantic_vad", "eagerness": "high"}


def test_beta_update_answers_beta_names_and_shape():
    client = Client(beta=True)
    client.ready()
    _, updated = client.configure({"input_audio_format": "g711_ulaw",
                                   "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                                   "turn_detection": None}, kind="transcription_session.update")
    assert updated == [{"type": "transcription_session.updated", "session": {
        **BETA_DEFAULT_SESSION, "input_audio_format": "g711_ulaw", "turn_detection": None,
        "input_audio_transcription": {"model": "whisper-1", "language": "en", "prompt": ""}}}]


def test_update_before_created_is_applied_after_it():
    """An update decoded before the session's Ready was told: created shows defaults, updated the update."""
    client = Client()
    commands, _ = client.send({"type": "session.update", "session": LIVEKIT_SESSION})
    assert commands[0].options["preroll_ms"] == 600
    created = client.ready()
    assert created[0]["session"]["audio"]["input"]["turn_detection"] == DEFAULT_VAD
    updated = client.tell(ev.Configured({}))
    assert updated[0]["session"]["audio"]["input"]["turn_detection"]["prefix_padding_ms"] == 600


@pytest.mark.parametrize("kind, session, param", [
    ("session.update", {"type": "realtime"}, "session.type"),
    ("session.update", "transcription", "session"),
    ("session.update", {"audio": {"input": {"format": {"type": "audio/wav"}}}}, "session.audio.input.format.type"),
    ("session.update", {"audio": {"input": {"format": {"type": "audio/pcm", "rate": "fast"}}}},
     "session.audio.input.format.rate"),
    ("session.update", {"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
     "session.audio.input.turn_detection.type"),
    ("session.update", {"audio": {"input": {"turn_detection": {"threshold": "high"}}}},
     "session.audio.input.turn_detection.threshold"),
    ("session.update", {"audio": {"input": {"turn_detection": {"silence_duration_ms": True}}}},
     "session.audio.input.turn_detection.silence_duration_ms"),
    ("session.update", {"audio": {"input": {"transcription": {"language": 5}}}},
     "session.audio.input.transcription.language"),
    ("session.update", {"audio": []}, "session.audio"),
    ("transcription_session.update", {"input_audio_format": "pcm8"}, "session.input_audio_format"),
    ("transcription_session.update", {"turn_detection": "auto"}, "session.turn_detection"),
    ("session.update", {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}},
     "session.audio.input.turn_detection.eagerness"),
    ("session.update", {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": 2}}}},
     "session.audio.input.turn_detection.eagerness"),
    ("session.update", {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": ["low"]}}}},
     "session.audio.input.turn_detection.eagerness"),
    ("transcription_session.update", {"turn_detection": {"type": "semantic_vad", "eagerness": "HIGH"}},
     "session.turn_detection.eagerness"),
])
def test_refused_update_is_one_error_and_changes_nothing(kind, session, param):
    client = Client()
    client.ready()
    with pytest.raises(ProtocolError) as info:
        client.send({"type": kind, "session": session, "event_id": "evt_client_1"})
    assert info.value.code == "invalid_update" and not info.value.fatal
    error = client.tell(ev.Error("invalid_update", info.value.message, fatal=False))
    assert error == [{"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_update",
                                                 "message": info.value.message, "param": param,
                                                 "event_id": "evt_client_1"}}]
    assert client.codec.opened() == [ev.Start(24_000, "pcm_s16le", DEFAULT_OPTIONS)]  # settings unchanged


def test_update_the_session_refuses_is_reverted():
    """A format change after audio: the session answers invalid_update and the codec keeps the old format."""
    client = Client()
    client.ready()
    client.append(silence(0.2))
    client.send({"type": "session.update", "event_id": "evt_7",
                 "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}})
    error = client.tell(ev.Error("invalid_update", "the audio format cannot change after audio has arrived", False))
    assert error[0]["error"] == {"type": "invalid_request_error", "code": "invalid_update", "param": None,
                                 "message": "the audio format cannot change after audio has arrived",
                                 "event_id": "evt_7"}
    _, updated = client.configure({"type": "transcription"})
    assert updated[0]["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert client.send({"type": "input_audio_buffer.commit"})[0] == [ev.Finalize()]  # 0.2 s of 24 kHz PCM16


# ---- audio and malformed frames --------------------------------------------------------------------


def test_append_passes_bytes_through_even_a_split_sample():
    client = Client()
    client.ready()
    assert client.append(b"\x01\x02\x03") == [ev.Audio(b"\x01\x02\x03")]
    assert client.append(b"\x04") == [ev.Audio(b"\x04")]
    assert client.append(b"") == []


@pytest.mark.parametrize("frame, code, param", [
    ("{not json", "bad_message", None),
    ("[1, 2]", "bad_message", None),
    (b"\x00\x01", "bad_message", None),
    ('{"type": "input_audio_buffer.append", "audio": "@@@="}', "bad_message", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "AAE"}', "bad_message", "audio"),
    ('{"type": "input_audio_buffer.append"}', "bad_message", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": [1, 2]}', "bad_message", "audio"),
    ('{"type": "response.create", "event_id": "e1"}', "unknown_message", "type"),
    ('{"type": "conversation.item.create"}', "unknown_message", "type"),
    ('{"audio": "AAA="}', "unknown_message", "type"),
])
def test_malformed_frames_are_one_nonfatal_error(frame, code, param):
    client = Client()
    client.ready()
    with pytest.raises(ProtocolError) as info:
        client.codec.decode(frame)
    assert info.value.code == code and not ERROR_CODES[code][0]
    error = client.tell(ev.Error(code, info.value.message, fatal=False))
    assert error == [{"type": "error", "error": {
        "type": "invalid_request_error", "code": code, "message": info.value.message, "param": param,
        "event_id": "e1" if "e1" in str(frame) else None}}]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50),
                 st.dictionaries(st.sampled_from(["type", "audio", "session", "event_id"]),
                                 st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                           st.sampled_from(["input_audio_buffer.append", "session.update",
                                                            "input_audio_buffer.commit", "AAAA"])))
                 .map(json.dumps)))
def test_any_frame_gives_commands_or_a_protocol_error(frame):
    client = Client()
    client.ready()
    try:
        out = client.codec.decode(frame)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES
    else:
        assert all(isinstance(item, Frame | ev.Audio | ev.Configure | ev.Finalize | ev.Clear) for item in out)


# ---- server VAD turns ------------------------------------------------------------------------------


def test_server_vad_turn():
    client = Client()
    client.ready()
    assert client.append(silence(1.0)) == [ev.Audio(silence(1.0))]
    first = client.tell(
        ev.SpeechStarted(0, 0.3),
        ev.Partial(0, "and so my", "and so", 0.3, 1.3),
        ev.Partial(0, "and so my fellow", "and so my fellow", 0.3, 2.0),
        ev.Partial(0, "and so my fellow", "and so", 0.3, 2.1),  # a shorter stable prefix sends nothing
        ev.SpeechEnded(0, 2.5, "endpoint"),
        ev.Final(0, "and so my fellow americans", "en", 0.3, 2.5, "endpoint"))
    second = client.tell(ev.SpeechStarted(1, 3.0), ev.SpeechEnded(1, 4.0, "endpoint"),
                         ev.Final(1, "ask not", "en", 3.0, 4.0, "endpoint"))
    assert strip_ids(first + second) == [
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 300, "item_id": "A"},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "A", "content_index": 0,
         "delta": "and so", "logprobs": None},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "A", "content_index": 0,
         "delta": " my fellow", "logprobs": None},
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2500, "item_id": "A"},
        {"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": "A"},
        {"type": "conversation.item.added", "previous_item_id": None, "item": {
            "id": "A", "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}]}},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "A", "content_index": 0,
         "delta": " americans", "logprobs": None},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "A", "content_index": 0,
         "transcript": "and so my fellow americans", "usage": {"type": "duration", "seconds": 2.2},
         "logprobs": None, "languages": [{"code": "en"}]},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 3000, "item_id": "B"},
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 4000, "item_id": "B"},
        {"type": "input_audio_buffer.committed", "previous_item_id": "A", "item_id": "B"},
        {"type": "conversation.item.added", "previous_item_id": "A", "item": {
            "id": "B", "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}]}},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "B", "content_index": 0,
         "delta": "ask not", "logprobs": None},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "B", "content_index": 0,
         "transcript": "ask not", "usage": {"type": "duration", "seconds": 1.0},
         "logprobs": None, "languages": [{"code": "en"}]},
    ]
    assert all(i.startswith("item_") for i in item_ids(first + second))


def test_beta_turn_uses_beta_names():
    client = Client(beta=True)
    client.ready()
    events = client.tell(ev.SpeechStarted(0, 0.0), ev.SpeechEnded(0, 1.0, "endpoint"),
                         ev.Final(0, "ten of clubs", None, 0.0, 1.0, "endpoint"))
    assert [e["type"] for e in events] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.created", "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed"]
    assert events[-1] == {"type": "conversation.item.input_audio_transcription.completed",
                          "item_id": events[0]["item_id"], "content_index": 0, "transcript": "ten of clubs",
                          "usage": {"type": "duration", "seconds": 1.0}, "logprobs": None}


def test_a_final_that_diverges_sends_no_contradicting_delta():
    client = Client()
    client.ready()
    events = client.tell(ev.SpeechStarted(0, 0.0), ev.Partial(0, "and so my", "and so my", 0.0, 1.0),
                         ev.SpeechEnded(0, 2.0, "endpoint"),
                         ev.Final(0, "And so, my friends", "en", 0.0, 2.0, "endpoint"))
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    assert deltas == ["and so my"]
    assert events[-1]["transcript"] == "And so, my friends"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["", "and", "and so", "and so my", "And so,", "and so my fellow"]), max_size=8),
       st.sampled_from(["and so my fellow americans", "And so, my friends", "", "and"]))
def test_deltas_are_append_only(stables, final):
    """Joined deltas only ever grow; they equal the transcript whenever it extends what was sent."""
    client = Client()
    client.ready()
    client.tell(ev.SpeechStarted(0, 0.0))
    sent = ""
    for stable in stables:
        for event in client.tell(ev.Partial(0, stable, stable, 0.0, 1.0)):
            sent += event["delta"]
            assert stable.startswith(sent)
    events = client.tell(ev.SpeechEnded(0, 1.0, "endpoint"), ev.Final(0, final, "en", 0.0, 1.0, "endpoint"))
    sent_before = sent
    sent += "".join(e["delta"] for e in events if e["type"].endswith(".delta"))
    assert events[-1]["transcript"] == final
    assert sent == (final if final.startswith(sent_before) else sent_before)


def test_commit_with_server_vad_ends_the_open_turn():
    client = Client()
    client.ready()
    client.append(silence(0.5))
    started = client.tell(ev.SpeechStarted(0, 0.1))
    assert client.send({"type": "input_audio_buffer.commit"}) == ([ev.Finalize()], [])
    events = client.tell(ev.SpeechEnded(0, 0.5, "finalize"), ev.Final(0, "one", "en", 0.1, 0.5, "finalize"))
    assert [e["type"] for e in events] == [
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "conversation.item.added",
        "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.completed"]
    assert set(item_ids(started + events)) == {started[0]["item_id"]}


def test_commit_right_after_a_server_vad_turn_is_empty():
    client = Client()
    client.ready()
    client.append(silence(1.0))
    client.tell(ev.SpeechStarted(0, 0.1), ev.SpeechEnded(0, 0.9, "endpoint"))
    _, frames = client.send({"type": "input_audio_buffer.commit"})
    assert [f["error"]["code"] for f in frames] == ["input_audio_buffer_commit_empty"]


def test_length_cut_with_server_vad_is_two_items():
    client = Client()
    client.ready()
    events = client.tell(ev.SpeechStarted(0, 0.0), ev.SpeechEnded(0, 25.0, "max_length"), ev.SpeechStarted(1, 25.0),
                         ev.Final(0, "one", "en", 0.0, 25.0, "max_length"), ev.SpeechEnded(1, 26.0, "endpoint"),
                         ev.Final(1, "two", "en", 25.0, 26.0, "endpoint"))
    completed = [(e["item_id"], e["transcript"]) for e in events if e["type"].endswith(".completed")]
    assert [t for _, t in completed] == ["one", "two"] and completed[0][0] != completed[1][0]


# ---- manual commits (turn_detection: null) ------------------------------------------------------------


def manual_client(beta: bool = False) -> Client:
    client = Client(beta)
    client.ready()
    commands, _ = client.configure({"type": "transcription", "audio": {"input": {"turn_detection": None}}})
    assert commands[0].options["endpointing"] is False
    return client


def test_manual_turn_ends_at_commit_with_no_vad_events():
    client = manual_client()
    client.append(silence(0.5))
    speech = client.tell(ev.SpeechStarted(0, 0.1), ev.Partial(0, "ten of", "ten", 0.1, 0.4))
    assert client.send({"type": "input_audio_buffer.commit"}) == ([ev.Finalize()], [])
    events = speech + client.tell(ev.SpeechEnded(0, 0.5, "finalize"),
                                  ev.Final(0, "ten of clubs", "en", 0.1, 0.5, "finalize"))
    assert strip_ids(events) == [
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "A", "content_index": 0,
         "delta": "ten", "logprobs": None},
        {"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": "A"},
        {"type": "conversation.item.added", "previous_item_id": None, "item": {
            "id": "A", "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}]}},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "A", "content_index": 0,
         "delta": " of clubs", "logprobs": None},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "A", "content_index": 0,
         "transcript": "ten of clubs", "usage": {"type": "duration", "seconds": 0.4}, "logprobs": None,
         "languages": [{"code": "en"}]},
    ]


@pytest.mark.parametrize("audio", [b"", silence(0.05), silence(0.0999)])
def test_commit_with_too_little_audio_is_commit_empty_and_nothing_else(audio):
    client = manual_client()
    if audio:
        client.append(audio)
    commands, frames = client.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert commands == []
    assert len(frames) == 1 and frames[0]["type"] == "error"
    assert {k: v for k, v in frames[0]["error"].items() if k != "message"} == {
        "type": "invalid_request_error", "code": "input_audio_buffer_commit_empty", "param": None, "event_id": "c1"}
    assert "buffer too small" in frames[0]["error"]["message"]


@pytest.mark.parametrize("session, seconds", [
    ({"audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}}}, 0.1),
    ({"audio": {"input": {"format": {"type": "audio/pcma"}, "turn_detection": None}}}, 0.1),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}, 0.1),
])
def test_commit_minimum_follows_the_format(session, seconds):
    client = Client()
    client.ready()
    commands, _ = client.configure(session)
    rate, sample_bytes = commands[0].options["sample_rate"], 1 if "law" in commands[0].options["encoding"] else 2
    client.append(silence(seconds, rate, sample_bytes)[:-1])
    assert client.send({"type": "input_audio_buffer.commit"})[0] == []
    client.append(b"\x00")
    assert client.send({"type": "input_audio_buffer.commit"})[0] == [ev.Finalize()]


def test_commit_of_audio_without_speech_completes_with_an_empty_transcript():
    client = manual_client()
    client.append(silence(0.3))
    assert client.send({"type": "input_audio_buffer.commit"})[0] == [ev.Finalize()]
    events = client.tell(ev.Finalized(0.3))
    assert strip_ids(events) == [
        {"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": "A"},
        {"type": "conversation.item.added", "previous_item_id": None, "item": {
            "id": "A", "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}]}},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "A", "content_index": 0,
         "transcript": "", "usage": {"type": "duration", "seconds": 0.0}, "logprobs": None, "languages": []},
    ]


def test_manual_commits_chain_items():
    client = manual_client(beta=True)
    ids = []
    for n in range(3):
        client.append(silence(0.2))
        client.send({"type": "input_audio_buffer.commit"})
        events = client.tell(ev.Finalized(0.2 * (n + 1)))
        ids.append(events[0]["item_id"])
        assert events[0]["previous_item_id"] == (ids[-2] if n else None)
        assert events[1]["type"] == "conversation.item.created"
    assert len(set(ids)) == 3


def test_manual_turn_cut_for_length_is_one_item_until_the_commit():
    client = manual_client()
    client.append(silence(0.5))
    events = client.tell(ev.SpeechStarted(0, 0.0), ev.SpeechEnded(0, 25.0, "max_length"),
                         ev.Final(0, "one", "en", 0.0, 25.0, "max_length"), ev.SpeechStarted(1, 25.0),
                         ev.Partial(1, "two", "two", 25.0, 25.5))
    client.send({"type": "input_audio_buffer.commit"})
    events += client.tell(ev.SpeechEnded(1, 26.0, "finalize"),
                          ev.Final(1, "two three", "en", 25.0, 26.0, "finalize"))
    assert [e.get("delta") for e in events if e["type"].endswith(".delta")] == ["one", " two", " three"]
    assert len(set(item_ids(events))) == 1
    assert events[-1]["transcript"] == "one two three" and events[-1]["usage"]["seconds"] == 26.0


def test_commit_before_the_final_of_a_length_cut_waits_for_it():
    client = manual_client()
    client.append(silence(0.5))
    client.tell(ev.SpeechStarted(0, 0.0), ev.SpeechEnded(0, 25.0, "max_length"))
    client.send({"type": "input_audio_buffer.commit"})
    committed = client.tell(ev.Finalized(25.0))
    assert [e["type"] for e in committed] == ["input_audio_buffer.committed", "conversation.item.added"]
    done = client.tell(ev.Final(0, "one", "en", 0.0, 25.0, "max_length"))
    assert done[-1]["transcript"] == "one" and done[-1]["item_id"] == committed[0]["item_id"]


# ---- clear -----------------------------------------------------------------------------------------


def test_clear_drops_the_open_turn():
    client = Client()
    client.ready()
    client.append(silence(0.5))
    started = client.tell(ev.SpeechStarted(0, 0.1))
    assert client.send({"type": "input_audio_buffer.clear"}) == ([ev.Clear()], [])
    assert client.tell(ev.Cleared(0, 0.5)) == [{"type": "input_audio_buffer.cleared"}]
    assert client.tell(ev.Partial(0, "x", "x", 0.1, 0.5), ev.SpeechEnded(0, 0.5, "endpoint"),
                       ev.Final(0, "x", "en", 0.1, 0.5, "endpoint")) == []
    events = client.tell(ev.SpeechStarted(1, 1.0), ev.SpeechEnded(1, 2.0, "endpoint"))
    assert events[0]["item_id"] != started[0]["item_id"]
    assert events[2]["previous_item_id"] is None  # the cleared turn was never an item


def test_clear_in_manual_mode_resets_the_buffer():
    client = manual_client()
    client.append(silence(0.5))
    client.send({"type": "input_audio_buffer.clear"})
    assert client.tell(ev.Cleared(None, 0.5)) == [{"type": "input_audio_buffer.cleared"}]
    _, frames = client.send({"type": "input_audio_buffer.commit"})
    assert frames[0]["error"]["code"] == "input_audio_buffer_commit_empty"


# ---- semantic VAD (smart turn detection) -----------------------------------------------------------


def semantic(eagerness: str | None = None, **fields) -> dict:
    """A GA update that asks for ``semantic_vad`` (with ``eagerness`` unless None)."""
    td = {"type": "semantic_vad", **fields} | ({"eagerness": eagerness} if eagerness is not None else {})
    return {"type": "transcription", "audio": {"input": {"turn_detection": td}}}


@pytest.mark.parametrize("eagerness, max_silence_ms", [
    ("low", 8000), ("medium", 4000), ("high", 2000), ("auto", 4000), (None, 4000)])  # None: not sent
def test_semantic_vad_is_smart_turn_detection_with_openais_maximum_wait(eagerness, max_silence_ms):
    client = Client()
    client.ready()
    commands, _ = client.send({"type": "session.update", "session": semantic(eagerness)})
    assert commands == [ev.Configure({**SEMANTIC_OPTIONS, "turn_eagerness": eagerness or "auto",
                                      "turn_max_silence_ms": max_silence_ms, **PCM24K})]


def test_semantic_vad_in_the_beta_dialect():
    client = Client(beta=True)
    client.ready()
    commands, updated = client.configure({"turn_detection": {"type": "semantic_vad", "eagerness": "high"}},
                                         kind="transcription_session.update")
    assert commands == [ev.Configure({**SEMANTIC_OPTIONS, "turn_eagerness": "high", "turn_max_silence_ms": 2000,
                                      **PCM24K})]
    assert updated[0]["session"]["turn_detection"] == {"type": "semantic_vad", "eagerness": "high"}


@pytest.mark.parametrize("set_as, shown", [
    ({"type": "semantic_vad"}, {"type": "semantic_vad", "eagerness": "auto"}),
    ({"type": "semantic_vad", "eagerness": "low"}, {"type": "semantic_vad", "eagerness": "low"}),
    ({"type": "semantic_vad", "eagerness": None, "create_response": False},
     {"type": "semantic_vad", "eagerness": "auto", "create_response": False}),
])
def test_semantic_vad_is_echoed_as_openai_shows_it(set_as, shown):
    """Type and eagerness, the default filled in (as server_vad shows its defaults); no server_vad fields."""
    client = Client()
    client.ready()
    _, updated = client.configure({"audio": {"input": {"turn_detection": set_as}}})
    assert updated[0]["session"]["audio"]["input"]["turn_detection"] == shown
    types = pytest.importorskip("openai.types.realtime")
    parsed = types.SessionUpdatedEvent.model_validate({"event_id": "event_1", **updated[0]})
    assert parsed.session.audio.input.turn_detection.eagerness == shown["eagerness"]


def test_turn_detection_switches_mid_session_and_each_update_names_its_mode():
    """server → semantic → server → null → semantic: every Configure names the mode, so none is left over."""
    client = Client()
    client.ready()
    steps = [
        (semantic("high"), {**SEMANTIC_OPTIONS, "turn_eagerness": "high", "turn_max_silence_ms": 2000}),
        ({"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}}},
         {**DEFAULT_OPTIONS, "endpoint_silence_ms": 800}),
        ({"audio": {"input": {"turn_detection": None}}}, MANUAL_OPTIONS),
        (semantic(), SEMANTIC_OPTIONS),
    ]
    for session, options in steps:
        commands, updated = client.configure(session)
        assert commands == [ev.Configure({**options, **PCM24K})]
        shown = updated[0]["session"]["audio"]["input"]["turn_detection"]
        assert (shown or {}).get("type") == (session["audio"]["input"]["turn_detection"] or {}).get("type")
    assert client.codec.settings.manual is False


def test_semantic_vad_update_before_created_is_applied_after_it():
    client = Client()
    commands, _ = client.send({"type": "session.update", "session": semantic("low")})
    assert commands[0].options["turn_detection"] == "smart"
    assert client.ready()[0]["session"]["audio"]["input"]["turn_detection"] == DEFAULT_VAD
    updated = client.tell(ev.Configured({}))
    assert updated[0]["session"]["audio"]["input"]["turn_detection"] == {"type": "semantic_vad", "eagerness": "low"}


@pytest.mark.parametrize("reason", ["end_of_turn", "max_silence"])
def test_semantic_turn_ends_like_a_server_vad_turn_and_eager_events_send_nothing(reason):
    """A smart-mode turn (eager end, resumed, then the end) gives the same events as a server VAD turn."""
    client = Client()
    client.configure(semantic("high"))
    events = client.tell(
        ev.SpeechStarted(0, 0.2), ev.Partial(0, "i want to", "i want", 0.2, 1.0),
        ev.EagerEndOfTurn(0, "i want to", 0.2, 1.1), ev.TurnResumed(0, 1.6),
        ev.Partial(0, "i want to go home", "i want to go", 0.2, 2.4),
        ev.EagerEndOfTurn(0, "i want to go home", 0.2, 2.5),
        ev.SpeechEnded(0, 2.5, reason), ev.Final(0, "i want to go home", "en", 0.2, 2.5, reason))
    assert [e["type"] for e in events] == [
        "input_audio_buffer.speech_started", "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.added",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed"]
    assert "".join(e["delta"] for e in events if "delta" in e) == "i want to go home"
    assert events[3]["audio_end_ms"] == 2500 and events[-1]["transcript"] == "i want to go home"


@pytest.mark.parametrize("event", [ev.EagerEndOfTurn(0, "so", 0.0, 1.0), ev.TurnResumed(0, 1.5),
                                   ev.EagerEndOfTurn(9, "unknown utterance", 0.0, 1.0), ev.TurnResumed(9, 1.5)])
def test_eager_end_of_turn_and_turn_resumed_have_no_openai_event(event):
    client = Client()
    client.ready()
    client.tell(ev.SpeechStarted(0, 0.0))
    assert client.tell(event) == []


# ---- errors and the close ----------------------------------------------------------------------------


@pytest.mark.parametrize("code, kind", [
    ("internal_error", "server_error"), ("overloaded", "server_error"), ("shutting_down", "server_error"),
    ("too_many_sessions", "server_error"), ("idle_timeout", "invalid_request_error"),
    ("invalid_option", "invalid_request_error"), ("message_too_large", "invalid_request_error"),
    ("session_too_long", "invalid_request_error"), ("invalid_update", "invalid_request_error"),
])
def test_session_errors_keep_our_code_under_openai_types(code, kind):
    client = Client()
    fatal = ERROR_CODES[code][0]
    assert client.tell(ev.Error(code, "why", fatal)) == [
        {"type": "error", "error": {"type": kind, "code": code, "message": "why", "param": None, "event_id": None}}]


def test_fatal_error_fails_the_turns_still_owed_a_transcript():
    client = Client()
    client.ready()
    started = client.tell(ev.SpeechStarted(0, 0.0), ev.SpeechEnded(0, 1.0, "endpoint"))
    events = client.tell(ev.Error("internal_error", "boom", fatal=True))
    assert events == [
        {"type": "conversation.item.input_audio_transcription.failed", "item_id": started[0]["item_id"],
         "content_index": 0, "error": {"type": "server_error", "code": "internal_error", "message": "boom",
                                       "param": None}},
        {"type": "error", "error": {"type": "server_error", "code": "internal_error", "message": "boom",
                                    "param": None, "event_id": None}}]
    assert client.tell(ev.Final(0, "late", "en", 0.0, 1.0, "endpoint")) == []


@pytest.mark.parametrize("code, reason", [(1011, "internal_error"), (1001, "shutting_down"), (1000, "end of stream"),
                                          (1009, "message_too_large")])
def test_close_is_the_one_the_session_asks_for(code, reason):
    error = ev.Error(reason, "x", True) if code != 1000 else None
    assert Client().codec.close_frame(code, reason, error) == (code, reason)


def test_ended_sends_nothing():
    assert Client().tell(ev.Ended(2, 10.0)) == []
