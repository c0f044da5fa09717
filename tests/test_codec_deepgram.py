"""Deepgram live codec (``/v1/listen``) without sockets: query → start or refusal, frames → commands,
events → frames, every error and close; every message checked against the official SDK's models."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming import events as ev
from streaming.codecs import Frame, Handshake, HandshakeRefused, codec_for_path
from streaming.codecs.deepgram import NET_0001_REASON, DeepgramCodec, request_id_for, word_entries
from streaming.codecs.deepgram_query import MIN_ENDPOINTING_MS, MIN_TURN_PAUSE_MS
from streaming.config import MAX_CONTEXT_CHARS
from streaming.protocol import ERROR_CODES, ProtocolError
from streaming.results import Word

dg_types = pytest.importorskip("deepgram.listen.v1.types")
from deepgram.core.unchecked_base_model import construct_type  # noqa: E402
from deepgram.listen.v1.socket_client import V1SocketClientResponse  # noqa: E402

SDK_MODELS = {"Results": dg_types.ListenV1Results, "Metadata": dg_types.ListenV1Metadata,
              "UtteranceEnd": dg_types.ListenV1UtteranceEnd, "SpeechStarted": dg_types.ListenV1SpeechStarted,
              "Error": dg_types.ListenV1Error, "ConfigureSuccess": dg_types.ListenV1ConfigureSuccess,
              "ConfigureFailure": dg_types.ListenV1ConfigureFailure}
CREATED = datetime(2026, 12, 1, 12, 30, 5, 123000, tzinfo=UTC)


def codec(query: str = "", session_id: str = "0123456789ab") -> DeepgramCodec:
    return DeepgramCodec(session_id, "tiny.en", Handshake("/v1/listen", query), now=lambda: CREATED)


def messages(frames: list[Frame]) -> list[dict]:
    """Frames as messages, each checked strictly against its SDK model and parsed as the SDK parses it."""
    out = []
    for frame in frames:
        assert isinstance(frame.data, str)
        message = json.loads(frame.data)
        model = SDK_MODELS[message["type"]]
        model.model_validate(message)  # strict: every required field, the right types
        assert isinstance(construct_type(type_=V1SocketClientResponse, object_=message), model)
        out.append(message)
    return out


def start_of(query: str) -> ev.Start:
    [start] = codec(query).opened()
    return start


BASE = {"words": True, "partials": False, "language": "en"}


# ---- handshake query → start ------------------------------------------------------------------------


@pytest.mark.parametrize("query,start", [
    ("", ev.Start(16000, "pcm_s16le", BASE)),
    ("encoding=linear16&sample_rate=48000", ev.Start(48000, "pcm_s16le", BASE)),
    ("encoding=mulaw", ev.Start(8000, "mulaw", BASE)),
    ("encoding=MULAW&sample_rate=8000", ev.Start(8000, "mulaw", BASE)),
    ("encoding=alaw&sample_rate=16000", ev.Start(16000, "alaw", BASE)),
    ("sample_rate=24000", ev.Start(24000, "pcm_s16le", BASE)),
    ("interim_results=true", ev.Start(16000, "pcm_s16le", BASE | {"partials": True})),
    ("interim_results=False", ev.Start(16000, "pcm_s16le", BASE)),
    ("language=en-US", ev.Start(16000, "pcm_s16le", BASE)),
    ("language=de-DE", ev.Start(16000, "pcm_s16le", BASE | {"language": "de"})),
    ("language=pt_BR", ev.Start(16000, "pcm_s16le", BASE | {"language": "pt"})),
    ("language=multi", ev.Start(16000, "pcm_s16le", BASE | {"language": None})),
    ("detect_language=true", ev.Start(16000, "pcm_s16le", BASE | {"language": None})),
    ("language=fr&detect_language=true", ev.Start(16000, "pcm_s16le", BASE | {"language": "fr"})),
    ("endpointing=false", ev.Start(16000, "pcm_s16le", BASE | {"endpointing": False})),
    ("endpointing=true", ev.Start(16000, "pcm_s16le", BASE)),
    ("endpointing=25", ev.Start(16000, "pcm_s16le", BASE | {"endpoint_silence_ms": MIN_ENDPOINTING_MS})),
    ("endpointing=0", ev.Start(16000, "pcm_s16le", BASE | {"endpoint_silence_ms": MIN_ENDPOINTING_MS})),
    ("endpointing=800", ev.Start(16000, "pcm_s16le", BASE | {"endpoint_silence_ms": 800})),
    ("endpointing=60000", ev.Start(16000, "pcm_s16le", BASE | {"endpoint_silence_ms": 5000})),
    ("keyterm=Kubernetes&keyterm=customer%20service&keyterm=term:0.15",
     ev.Start(16000, "pcm_s16le", BASE | {"context": "Kubernetes, customer service, term:0.15"})),
    ("keywords=Deepgram:2&keywords=snuffleupagus:-1.5&keywords=plain&keyterm=plain",
     ev.Start(16000, "pcm_s16le", BASE | {"context": "plain, Deepgram, snuffleupagus"})),
    ("channels=1&multichannel=false&model=nova-3&punctuate=true&smart_format=true&utterance_end_ms=1000"
     "&vad_events=true", ev.Start(16000, "pcm_s16le", BASE)),
])
def test_query_gives_start(query, start):
    assert start_of(query) == start


SILENCE = {"turn_detection": "silence", "endpointing": True}
SMART = {"turn_detection": "smart", "endpointing": True}
MANUAL = {"turn_detection": "manual", "endpointing": False}


@pytest.mark.parametrize("query,options", [
    ("turn_detection=smart", SMART),
    ("turn_detection=SMART", SMART),
    ("turn_detection=silence", SILENCE),
    ("turn_detection=manual", MANUAL),
    ("turn_eagerness=high", {"turn_eagerness": "high"}),  # applies when the server's default mode is smart
    ("turn_detection=smart&turn_eagerness=low", SMART | {"turn_eagerness": "low"}),
    ("turn_detection=smart&turn_eagerness=Auto", SMART | {"turn_eagerness": "auto"}),
    # smart: endpointing is the pause the turn model judges, raised to 150 ms, at most 2000 ms
    ("turn_detection=smart&endpointing=25", SMART | {"turn_pause_ms": MIN_TURN_PAUSE_MS}),
    ("turn_detection=smart&endpointing=0", SMART | {"turn_pause_ms": 150}),
    ("turn_detection=smart&endpointing=300", SMART | {"turn_pause_ms": 300}),
    ("turn_detection=smart&endpointing=9000", SMART | {"turn_pause_ms": 2000}),
    ("turn_detection=smart&endpointing=true", SMART),
    # smart: utterance_end_ms is also the longest pause a turn survives, clamped to 200-10000 ms
    ("turn_detection=smart&utterance_end_ms=1000", SMART | {"turn_max_silence_ms": 1000}),
    ("turn_detection=smart&utterance_end_ms=0", SMART | {"turn_max_silence_ms": 200}),
    ("turn_detection=smart&utterance_end_ms=60000", SMART | {"turn_max_silence_ms": 10_000}),
    ("turn_detection=smart&endpointing=25&utterance_end_ms=1500",
     SMART | {"turn_pause_ms": 150, "turn_max_silence_ms": 1500}),
    # the mode, once named, decides: endpointing=false no longer means manual, a pause means nothing in manual
    ("turn_detection=smart&endpointing=false", SMART),
    ("turn_detection=silence&endpointing=false", SILENCE),
    ("turn_detection=manual&endpointing=25&utterance_end_ms=1000", MANUAL),
    # silence: endpointing keeps its meaning; utterance_end_ms only its UtteranceEnd one
    ("turn_detection=silence&endpointing=25&utterance_end_ms=1000",
     SILENCE | {"endpoint_silence_ms": MIN_ENDPOINTING_MS}),
    ("turn_detection=silence&endpointing=700", SILENCE | {"endpoint_silence_ms": 700}),
    # no turn_detection: exactly as before (the server's default mode)
    ("endpointing=25&utterance_end_ms=1000", {"endpoint_silence_ms": MIN_ENDPOINTING_MS}),
    ("endpointing=9000", {"endpoint_silence_ms": 5000}),
])
def test_turn_detection_query_gives_start(query, options):
    DeepgramCodec.check_handshake(Handshake("/v1/listen", query))
    assert start_of(query) == ev.Start(16000, "pcm_s16le", BASE | options)


def test_livekit_query_is_accepted_whole():
    """Every parameter LiveKit's deepgram.STT sends, unknown ones included, in its spelling."""
    query = ("model=nova-3&punctuate=true&smart_format=true&no_delay=true&interim_results=true&encoding=linear16"
             "&vad_events=true&sample_rate=16000&channels=1&endpointing=25&filler_words=true&profanity_filter=false"
             "&numerals=false&mip_opt_out=false&language=en-US&keyterm=LiveKit&diarize=false&dictation=false"
             "&utterance_end_ms=1000&tag=agent&enable_diarization=false&extra=key:value")
    DeepgramCodec.check_handshake(Handshake("/v1/listen", query))
    assert start_of(query) == ev.Start(16000, "pcm_s16le", {"words": True, "partials": True, "language": "en",
                                                          "endpoint_silence_ms": MIN_ENDPOINTING_MS,
                                                          "context": "LiveKit"})


@pytest.mark.parametrize("query,says", [
    ("encoding=opus", "encoding 'opus' is not supported"),
    ("encoding=linear32", "use linear16, mulaw or alaw"),
    ("encoding=flac&sample_rate=16000", "not supported"),
    ("sample_rate=4000", "outside 8000-48000"),
    ("sample_rate=96000", "outside 8000-48000"),
    ("sample_rate=16k", "sample_rate must be an integer"),
    ("sample_rate=16000.5", "sample_rate must be an integer"),
    ("sample_rate=nan", "sample_rate must be an integer"),
    ("channels=9", "channels must be from 1 to 8"),
    ("channels=0", "channels must be from 1 to 8"),
    ("multichannel=both", "multichannel must be true or false"),
    ("channels=two", "channels must be an integer"),
    ("interim_results=maybe", "interim_results must be true or false"),
    ("vad_events=1", "vad_events must be true or false"),
    ("endpointing=soon", "endpointing must be a number of milliseconds or false"),
    ("endpointing=-5", "endpointing must be a number of milliseconds or false"),
    ("utterance_end_ms=later", "utterance_end_ms must be an integer"),
    ("utterance_end_ms=-1", "utterance_end_ms must not be negative"),
    ("turn_detection=semantic", "turn_detection must be one of silence, smart, manual, got 'semantic'"),
    ("turn_detection=", "turn_detection must be one of silence, smart, manual"),
    ("turn_eagerness=eager", "turn_eagerness must be one of low, medium, high, auto, got 'eager'"),
    ("turn_detection=smart&turn_eagerness=2", "turn_eagerness must be one of"),
    ("&".join(f"keyterm=term{i:04d}" for i in range(200)), f"at most {MAX_CONTEXT_CHARS} characters"),
])
def test_query_refused_with_400(query, says):
    handshake = Handshake("/v1/listen", query)
    with pytest.raises(HandshakeRefused) as refused:
        DeepgramCodec.check_handshake(handshake)
    assert refused.value.status == 400
    assert says in refused.value.message
    with pytest.raises(HandshakeRefused):  # the constructor reads the same rules
        DeepgramCodec("s", "tiny.en", handshake)


def test_registered_by_path_with_deepgram_idle_timeout():
    assert codec_for_path("/v1/listen") is DeepgramCodec
    assert DeepgramCodec.name == "deepgram" and DeepgramCodec.idle_timeout_s == 10.0


# ---- client frames → commands --------------------------------------------------------------------


@pytest.mark.parametrize("frame,commands", [
    (b"\x01\x02\x03", [ev.Audio(b"\x01\x02\x03")]),
    (b"\x01", [ev.Audio(b"\x01")]),  # half a sample: the session keeps it for the next frame
    (b"", [ev.Stop()]),  # Deepgram's older close-stream message
    ('{"type":"KeepAlive"}', [ev.Keepalive()]),
    ('{"type":"Finalize"}', [ev.Finalize()]),
    ('{"type":"Finalize","channel":0}', [ev.Finalize()]),
    ('{"type":"CloseStream"}', [ev.Stop()]),
    ('{"type":"Configure","keyterms":["Acme","  Acme ",""," Widget"]}',
     [ev.Configure({"context": "Acme, Widget"})]),
    ('{"type":"Configure","keyterms":[]}', [ev.Configure({"context": None})]),
])
def test_frames_decode_to_commands(frame, commands):
    assert codec().decode(frame) == commands


@pytest.mark.parametrize("frame,code", [
    ("not json", "bad_message"),
    ("[1, 2]", "bad_message"),
    ('"KeepAlive"', "bad_message"),
    ("[" * 100_000 + "]" * 100_000, "bad_message"),
    ('{"type":"Keepalive"}', "unknown_message"),  # Deepgram's names are case-sensitive
    ('{"type":"Bogus","x":1}', "unknown_message"),
    ('{"no_type":1}', "unknown_message"),
    ('{"type":5}', "unknown_message"),
    ('{"type":"Configure","keyterms":"Acme"}', "bad_message"),
    ('{"type":"Configure","keyterms":[1]}', "bad_message"),
    ('{"type":"Configure","keyterms":["\\ud800"]}', "bad_message"),  # a lone surrogate is not text
])
def test_unreadable_text_is_a_nonfatal_schema_error_echoing_it(frame, code):
    c = codec()
    with pytest.raises(ProtocolError) as refused:
        c.decode(frame)
    assert refused.value.code == code and not refused.value.fatal
    [error] = messages(c.encode(ev.Error(code, refused.value.message, fatal=False)))
    assert error == {"type": "Error", "variant": "SchemaError", "description": refused.value.message,
                     "message": frame if len(frame) <= 200 else frame[:200] + "…"}


def test_echo_of_unreadable_text_is_always_sendable():
    c = codec()
    with pytest.raises(ProtocolError):
        c.decode("\ud800 not json")
    [frame] = c.encode(ev.Error("bad_message", "x", fatal=False))
    frame.data.encode("utf-8")  # the server can send it
    assert json.loads(frame.data)["message"] == "? not json"


def test_configure_without_keyterms_is_answered_by_the_codec():
    [reply] = codec().decode('{"type":"Configure","features":{"numerals":true}}')
    assert messages([reply]) == [{"type": "ConfigureSuccess", "request_id": codec_request_id(reply)}]


def codec_request_id(frame: Frame) -> str:
    return json.loads(frame.data)["request_id"]


def test_configure_answered_after_the_session_applies_or_refuses_it():
    c = codec()
    c.decode('{"type":"Configure","keyterms":["Acme"]}')
    c.decode('{"type":"Configure","keyterms":["Widget"]}')
    [ok] = messages(c.encode(ev.Configured({"context": "Acme"})))
    assert ok == {"type": "ConfigureSuccess", "request_id": c.request_id, "keyterms": ["Acme"]}
    [failed] = messages(c.encode(ev.Error("invalid_update", "no", fatal=False)))
    assert failed == {"type": "ConfigureFailure", "request_id": c.request_id, "code": "CONFIGURE_INTERNAL_ERROR",
                      "description": "no"}
    assert c.encode(ev.Configured({})) == []  # nothing pending: nothing to answer


def test_configure_over_the_keyterm_limit_fails_at_once():
    terms = json.dumps([f"term{i:04d}" for i in range(200)])
    [reply] = codec().decode(f'{{"type":"Configure","keyterms":{terms}}}')
    [failed] = messages([reply])
    assert failed["code"] == "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"


@given(st.one_of(st.text(max_size=300), st.binary(max_size=64)))
def test_any_frame_gives_commands_or_a_documented_nonfatal_error(frame):
    c = codec()
    try:
        out = c.decode(frame)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES and not exc.fatal
        messages(c.encode(ev.Error(exc.code, exc.message, fatal=False)))
    else:
        assert all(isinstance(item, ev.Audio | ev.Stop | ev.Keepalive | ev.Finalize | ev.Configure | Frame)
                   for item in out)


# ---- session events → frames ---------------------------------------------------------------------


def words(*spec: tuple[str, float, float, float]) -> tuple[Word, ...]:
    return tuple(Word(w, s, e, p) for w, s, e, p in spec)


ASK = words(("And", 0.5, 0.7, 0.9), ("so,", 0.7, 0.95, 0.8), ("Americans.", 1.0, 1.6, 0.7))


def test_final_results_full_shape():
    c = codec()
    [final] = messages(c.encode(ev.Final(3, "And so, Americans.", "en", 0.42, 1.62, "endpoint", ASK, "dtw")))
    assert final == {
        "type": "Results", "channel_index": [0, 1], "duration": 1.2, "start": 0.42, "is_final": True,
        "speech_final": True, "from_finalize": False,
        "channel": {"alternatives": [{"transcript": "And so, Americans.", "confidence": 0.8, "words": [
            {"word": "and", "start": 0.5, "end": 0.7, "confidence": 0.9, "punctuated_word": "And"},
            {"word": "so", "start": 0.7, "end": 0.95, "confidence": 0.8, "punctuated_word": "so,"},
            {"word": "americans", "start": 1.0, "end": 1.6, "confidence": 0.7, "punctuated_word": "Americans."},
        ]}]},
        "metadata": {"request_id": c.request_id, "model_uuid": c.model_uuid,
                     "model_info": {"name": "tiny.en", "version": c.model_info["version"], "arch": "tiny.en"}},
    }


@pytest.mark.parametrize("reason,speech_final,from_finalize", [
    ("endpoint", True, False),
    ("end_of_turn", True, False),
    ("max_silence", True, False),
    ("max_length", False, False),
    ("finalize", True, True),
    ("stream_end", True, False),
])
def test_final_flags_by_reason(reason, speech_final, from_finalize):
    [final] = messages(codec().encode(ev.Final(0, "And so, Americans.", "en", 0.4, 1.7, reason, ASK)))
    assert (final["is_final"], final["speech_final"], final["from_finalize"]) == (True, speech_final, from_finalize)


def test_final_without_word_times_gets_estimated_words_in_its_span():
    [final] = messages(codec().encode(ev.Final(0, "ask not what", "en", 2.0, 3.2, "endpoint", None)))
    got = final["channel"]["alternatives"][0]["words"]
    assert [w["word"] for w in got] == ["ask", "not", "what"]
    assert got[0]["start"] == 2.0 and got[-1]["end"] == 3.2
    assert all(a["end"] <= b["start"] + 1e-9 for a, b in zip(got, got[1:]))


def test_empty_final_has_no_words_and_zero_confidence():
    [final] = messages(codec().encode(ev.Final(0, "", "en", 1.0, 1.5, "endpoint", ())))
    alt = final["channel"]["alternatives"][0]
    assert (alt["transcript"], alt["words"], alt["confidence"]) == ("", [], 0.0)


def test_interim_results_only_when_asked_with_estimated_words():
    partial = ev.Partial(1, "ask not what your", "ask not", 4.0, 5.0)
    assert codec().encode(partial) == []
    [frame] = codec("interim_results=true").encode(partial)
    assert (frame.kind, frame.utterance_id) == ("partial", 1)  # a newer interim may replace it unsent
    [interim] = messages([frame])
    assert (interim["is_final"], interim["speech_final"], interim["from_finalize"]) == (False, False, False)
    assert (interim["start"], interim["duration"]) == (4.0, 1.0)
    got = interim["channel"]["alternatives"][0]["words"]
    assert [w["word"] for w in got] == ["ask", "not", "what", "your"]
    assert 4.0 <= got[0]["start"] and got[-1]["end"] <= 5.0


def test_finalize_with_nothing_open_is_an_empty_final_from_finalize():
    [final] = messages(codec().encode(ev.Finalized(7.25)))
    assert (final["start"], final["duration"], final["is_final"], final["from_finalize"]) == (7.25, 0.0, True, True)
    assert final["channel"]["alternatives"][0]["transcript"] == ""


def test_speech_started_only_with_vad_events():
    assert codec().encode(ev.SpeechStarted(0, 1.25)) == []
    assert messages(codec("vad_events=true").encode(ev.SpeechStarted(0, 1.25))) == [
        {"type": "SpeechStarted", "channel": [0], "timestamp": 1.25}]


def test_utterance_end_after_an_endpoint_with_words_since_the_last_one():
    c = codec("utterance_end_ms=1000&interim_results=true")
    cut = ev.Final(0, "And so,", "en", 0.4, 1.0, "max_length", ASK[:2])
    assert [m["type"] for m in messages(c.encode(cut))] == ["Results"]  # a length cut is no utterance end
    out = messages(c.encode(ev.Final(1, "", "en", 1.0, 1.4, "endpoint", ())))
    assert out[1] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.95}  # the cut's last word
    assert len(messages(c.encode(ev.Final(2, "", "en", 2.0, 2.4, "endpoint", ())))) == 1  # no word since
    out = messages(c.encode(ev.Final(3, "Americans.", "en", 3.0, 3.9, "endpoint", words(("Americans.", 3.1, 3.7, 1)))))
    assert out[1]["last_word_end"] == 3.7
    assert len(messages(codec().encode(ev.Final(0, "And so,", "en", 0.4, 1.0, "endpoint", ASK[:2])))) == 1


@pytest.mark.parametrize("reason,utterance_end", [
    ("endpoint", True), ("end_of_turn", True), ("max_silence", True),
    ("max_length", False), ("finalize", False), ("stream_end", False),
])
def test_utterance_end_follows_every_pause_that_ends_a_turn(reason, utterance_end):
    c = codec("turn_detection=smart&utterance_end_ms=1000")
    out = messages(c.encode(ev.Final(0, "Americans.", "en", 3.0, 3.9, reason, words(("Americans.", 3.1, 3.7, 1)))))
    assert [m["type"] for m in out] == (["Results", "UtteranceEnd"] if utterance_end else ["Results"])


def test_nothing_for_ready_speech_end_and_clear():
    c = codec()
    assert c.encode(ev.Ready("s", "tiny.en", {})) == []
    assert c.encode(ev.SpeechEnded(0, 1.0, "endpoint")) == []
    assert c.encode(ev.Cleared(0, 1.0)) == []


@pytest.mark.parametrize("event", [ev.EagerEndOfTurn(0, "And so,", 0.4, 1.0), ev.TurnResumed(0, 1.5)])
def test_nothing_for_eager_end_of_turn_and_turn_resumed(event):
    """Deepgram's v1 listen API has no such messages (Flux's are v2), whatever the client asked for."""
    c = codec("turn_detection=smart&interim_results=true&vad_events=true&utterance_end_ms=1000")
    assert c.encode(event) == []


def test_smart_turn_in_deepgram_messages():
    """Speech, an eager end taken back, then the end of turn: interims, one speech_final, one UtteranceEnd."""
    c = codec("turn_detection=smart&interim_results=true&vad_events=true&utterance_end_ms=1000")
    events = [ev.SpeechStarted(0, 0.4), ev.Partial(0, "And so,", "And", 0.4, 1.0),
              ev.EagerEndOfTurn(0, "And so,", 0.4, 1.0), ev.TurnResumed(0, 1.3),
              ev.Partial(0, "And so, Americans.", "And so,", 0.4, 1.7), ev.SpeechEnded(0, 1.7, "end_of_turn"),
              ev.Final(0, "And so, Americans.", "en", 0.4, 1.7, "end_of_turn", ASK)]
    out = messages([frame for event in events for frame in c.encode(event)])
    assert [(m["type"], m.get("is_final"), m.get("speech_final")) for m in out] == [
        ("SpeechStarted", None, None), ("Results", False, False), ("Results", False, False),
        ("Results", True, True), ("UtteranceEnd", None, None)]
    assert out[3]["channel"]["alternatives"][0]["transcript"] == "And so, Americans."


def test_errors_in_deepgram_shape():
    c = codec()
    [error] = messages(c.encode(ev.Error("partial_sample", "stop arrived 1 byte into a sample", fatal=False)))
    assert error == {"type": "Error", "variant": "partial_sample", "description": "stop arrived 1 byte into a "
                     "sample", "message": "stop arrived 1 byte into a sample"}
    [fatal] = messages(c.encode(ev.Error("invalid_option", "unknown language 'xx'", fatal=True)))
    assert fatal["variant"] == "invalid_option"
    assert c.close_frame(1008, "invalid_option", ev.Error("invalid_option", "x", True)) == (1008, "invalid_option")


def test_idle_timeout_closes_1011_net_0001_with_no_message_before():
    c = codec()
    idle = ev.Error("idle_timeout", "no audio or keepalive for 10 s", fatal=True)
    assert c.encode(idle) == []
    code, reason = c.close_frame(1008, "idle_timeout", idle)
    assert code == 1011 and reason == NET_0001_REASON and "net0001" in reason
    assert len(reason.encode()) <= 123  # fits a close frame


def test_close_stream_ends_with_metadata_then_the_normal_close():
    c = codec()
    audio = [b"\x00\x01" * 800, b"\x02\x03" * 800]
    for chunk in audio:
        c.decode(chunk)
    [meta] = messages(c.encode(ev.Ended(utterances=2, audio_s=0.1)))
    assert meta == {"type": "Metadata", "transaction_key": "deprecated", "request_id": c.request_id,
                    "sha256": hashlib.sha256(b"".join(audio)).hexdigest(), "created": "2026-12-01T12:30:05.123Z",
                    "duration": 0.1, "channels": 1, "models": [c.model_uuid],
                    "model_info": {c.model_uuid: c.model_info}}
    assert c.close_frame(1000, "end of stream", None) == (1000, "end of stream")


def test_one_request_id_per_connection_in_every_message():
    c = codec("interim_results=true&utterance_end_ms=1000")
    ids = {m.get("request_id") or m["metadata"]["request_id"]
           for m in messages(c.encode(ev.Partial(0, "and so", "", 0, 1)) + c.encode(ev.Finalized(1.0))
                             + c.encode(ev.Final(0, "And so,", "en", 0.4, 1.0, "endpoint", ASK[:2])))
           if m["type"] == "Results"} | {messages(c.encode(ev.Ended(1, 1.0)))[0]["request_id"]}
    assert ids == {c.request_id}
    assert codec().request_id != c.request_id  # another connection, another id


def test_request_id_is_a_uuid_that_names_the_session():
    rid = request_id_for("0123456789ab")
    assert str(uuid.UUID(rid)) == rid and rid.replace("-", "").startswith("0123456789ab")
    other = request_id_for("not hex!")  # a session id that is not hex: a plain random UUID
    assert str(uuid.UUID(other)) == other


# ---- words -----------------------------------------------------------------------------------------


def test_words_are_kept_in_span_and_order_and_punctuation_alone_is_no_word():
    got = word_entries(words(("Hello,", 0.9, 1.3, 1), ("—", 1.3, 1.4, 1), ("world!", 1.2, 2.6, 1)), 1.0, 2.5)
    assert [(w["word"], w["punctuated_word"], w["start"], w["end"]) for w in got] == [
        ("hello", "Hello,", 1.0, 1.3), ("world", "world!", 1.2, 2.5)]
    assert [w["word"] for w in word_entries(words(("...", 0, 1, 1)), 0, 1)] == ["..."]  # never no words


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8).filter(lambda s: s.strip() == s and s),
                          st.floats(-5, 50), st.floats(-5, 50), st.floats(0, 1)), max_size=20),
       st.floats(0, 20), st.floats(0, 20))
def test_word_entries_always_inside_the_span_in_order(spec, start, length):
    end = start + length
    got = word_entries(words(*spec), start, end)
    assert all(start <= w["start"] <= w["end"] <= end for w in got)
    assert all(a["start"] <= b["start"] for a, b in zip(got, got[1:]))
    if spec:
        assert got  # a transcript with words never has an empty word list


# ---- through the session (a Link, the counting stand-in model answering at once; no socket) -------------


class DeepgramDriver:
    """A Deepgram connection as the server runs it, minus the socket: frames in, messages and the close out."""

    def __init__(self, query: str = "", config=None) -> None:
        import numpy as np

        from streaming.config import Config
        from streaming.link import Link, Send
        from streaming.session import Close, FeedAudio, ModelInfo, OpenUtterance, RequestFinal, RequestPartial, Session
        from tests.fakes import CountingBackend

        self.np, self.Send, self.Close = np, Send, Close
        self.kinds = (FeedAudio, OpenUtterance, RequestFinal, RequestPartial)
        self.backend = CountingBackend()
        info = ModelInfo(self.backend.name, False, 30.0, self.backend.validate_options)
        session = Session("0123456789ab", config or Config(), info,
                          classify=lambda frame: float(np.abs(frame).max()) > 0.05)
        self.codec = codec(query)
        self.link = Link(self.codec, session)
        self.states: dict = {}
        self.frames: list[Frame] = []
        self.closed = None
        self.run(self.link.open())

    def run(self, actions) -> None:
        feed, open_, final, partial = self.kinds
        for a in actions:
            if isinstance(a, self.Send):
                self.frames.append(a.frame)
            elif isinstance(a, self.Close):
                assert self.closed is None, "closed twice"
                self.closed = (a.code, a.reason)
            elif isinstance(a, open_):
                self.states[a.utterance_id] = self.backend.new_utterance(a.options)
            elif isinstance(a, feed):
                self.states[a.utterance_id].append_audio(a.audio)
            elif isinstance(a, partial):
                self.run(self.link.partial_ready(a.utterance_id, self.backend.step([self.states[a.utterance_id]])[0]))
            elif isinstance(a, final):
                self.run(self.link.final_ready(a.utterance_id, self.backend.finalize([self.states[a.utterance_id]])[0]))

    def send(self, frame) -> None:
        self.run(self.link.receive(frame))

    def audio(self, seconds: float, loud: bool, rate: int = 16000, chunk_s: float = 0.05) -> None:
        t = self.np.arange(int(seconds * rate)) / rate
        samples = (0.3 * self.np.sin(2 * self.np.pi * 220 * t)) if loud else self.np.zeros(t.size)
        pcm = (samples * 32767).astype("<i2").tobytes()
        step = int(chunk_s * rate) * 2
        for i in range(0, len(pcm), step):
            self.send(pcm[i:i + step])

    def messages(self) -> list[dict]:
        return messages(self.frames)


def test_session_stream_in_deepgram_messages():
    d = DeepgramDriver("interim_results=true&vad_events=true&utterance_end_ms=1000&endpointing=25")
    d.send('{"type":"KeepAlive"}')
    d.audio(0.5, loud=False)
    d.audio(2.0, loud=True)
    d.audio(1.0, loud=False)
    d.audio(1.5, loud=True)
    d.send('{"type":"Finalize"}')
    d.send('{"type":"CloseStream"}')
    got = d.messages()
    types = [m["type"] for m in got]
    assert types[0] == "SpeechStarted" and types[-1] == "Metadata" and d.closed == (1000, "end of stream")
    finals = [m for m in got if m["type"] == "Results" and m["is_final"]]
    assert [(f["speech_final"], f["from_finalize"]) for f in finals] == [(True, False), (True, True)]
    assert types[types.index("UtteranceEnd") - 1] == "Results"  # right after the first (endpoint) final
    assert any(m["type"] == "Results" and not m["is_final"] for m in got)  # interims
    for f in finals:
        alt = f["channel"]["alternatives"][0]
        assert alt["transcript"] and len(alt["words"]) == len(alt["transcript"].split())
        assert all(f["start"] <= w["start"] <= w["end"] <= f["start"] + f["duration"] + 1e-6 for w in alt["words"])
    assert got[-1]["duration"] == 5.0 and got[-1]["request_id"] == d.codec.request_id


def test_session_finalize_with_nothing_open_and_manual_mode():
    d = DeepgramDriver("endpointing=false")
    d.audio(1.0, loud=True)
    d.audio(1.5, loud=False)  # a pause: manual mode does not end the utterance
    assert not [m for m in d.messages() if m["type"] == "Results"]
    d.send('{"type":"Finalize"}')
    d.send('{"type":"Finalize"}')  # nothing open now
    first, second = [m for m in d.messages() if m["type"] == "Results"]
    assert first["from_finalize"] and first["channel"]["alternatives"][0]["transcript"]
    assert second["from_finalize"] and second["channel"]["alternatives"][0]["transcript"] == ""
    assert second["start"] == 2.5 and d.closed is None


def test_session_schema_error_keeps_the_stream_and_idle_closes_1011():
    d = DeepgramDriver()
    d.send('{"type":"Hello"}')
    [error] = d.messages()
    assert error["variant"] == "SchemaError" and error["message"] == '{"type":"Hello"}' and d.closed is None
    d.audio(0.5, loud=True)
    d.run(d.link.fail(ProtocolError("idle_timeout", "no audio or keepalive for 10 s")))
    assert [m["type"] for m in d.messages()][1:] == ["Results"]  # the speech so far, then no message
    assert d.closed == (1011, NET_0001_REASON)


def test_session_refuses_an_unknown_language_in_deepgram_shape():
    d = DeepgramDriver("language=xx")
    [error] = d.messages()
    assert error["variant"] == "invalid_option" and "xx" in error["description"]
    assert d.closed[0] == 1008


def test_session_mulaw_8k():
    from streaming.audio import G711_TABLES

    d = DeepgramDriver("encoding=mulaw&sample_rate=8000")
    table = G711_TABLES["mulaw"]
    t = d.np.arange(8000 * 2) / 8000
    tone = d.np.where(t < 1.5, 0.3 * d.np.sin(2 * d.np.pi * 220 * t), 0.0)
    mulaw = d.np.abs(table[None, :] - tone[:, None]).argmin(axis=1).astype(d.np.uint8).tobytes()
    for i in range(0, len(mulaw), 400):  # 50 ms
        d.send(mulaw[i:i + 400])
    d.send('{"type":"CloseStream"}')
    got = d.messages()
    [final] = [m for m in got if m["type"] == "Results"]
    assert final["channel"]["alternatives"][0]["transcript"] and final["start"] < 0.5
    assert got[-1]["type"] == "Metadata" and got[-1]["duration"] == 2.0
    assert got[-1]["sha256"] == hashlib.sha256(mulaw).hexdigest()
