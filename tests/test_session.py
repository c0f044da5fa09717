"""The stream state machine without sockets: frames in, actions out (engine simulated inline)."""

import json
import logging

import msgpack
import numpy as np
import pytest

from streaming.audio import float_to_pcm16
from streaming.config import SESSION_FIELDS, Config
from streaming.models.base import FinalResult
from streaming.protocol import ProtocolError
from streaming.session import Close, FeedAudio, ModelInfo, OpenUtterance, RequestFinal, RequestPartial
from tests.v1_link import Send
from tests.v1_link import V1Session as Session
from tests.fakes import CountingBackend

SR = 16000


def loud(frame):
    return float(np.abs(frame).max()) > 0.05


def tone(seconds, rate=SR):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds, rate=SR):
    return np.zeros(int(seconds * rate), np.float32)


class Driver:
    """Runs a Session with a CountingBackend answering engine requests immediately (or later)."""

    def __init__(self, config=None, backend=None, defer=False, classify=loud, validate=None):
        self.backend = backend or CountingBackend()
        info = ModelInfo(self.backend.name, self.backend.supports_window, 30.0,
                         validate or self.backend.validate_options)
        self.session = Session("s1", config or Config(), info, classify=classify)
        self.states = {}
        self.events, self.closed = [], None
        self.defer = defer
        self.deferred = []

    def send(self, frame):
        self.run(self.session.receive(frame))

    def start(self, **fields):
        self.send(json.dumps({"type": "start", **fields}))

    def audio(self, samples, chunk=3200):
        data = float_to_pcm16(samples)
        for i in range(0, len(data), chunk):
            self.send(data[i:i + chunk])

    def run(self, actions):
        for a in actions:
            if isinstance(a, Send):
                self.events.append(a.event)
            elif isinstance(a, Close):
                assert self.closed is None, "closed twice"
                self.closed = a
            elif isinstance(a, OpenUtterance):
                self.states[a.utterance_id] = self.backend.new_utterance(a.options)
            elif isinstance(a, FeedAudio):
                self.states[a.utterance_id].append_audio(a.audio)
            elif isinstance(a, RequestPartial):
                job = lambda u=a.utterance_id: self.session.partial_ready(u, self.backend.step([self.states[u]])[0])
                self.deferred.append(job) if self.defer else self.run(job())
            elif isinstance(a, RequestFinal):
                job = lambda u=a.utterance_id: self.session.final_ready(u, self.backend.finalize([self.states[u]])[0])
                self.deferred.append(job) if self.defer else self.run(job())

    def flush_deferred(self, reverse=False):
        jobs, self.deferred = self.deferred, []
        for job in (reversed(jobs) if reverse else jobs):
            self.run(job())

    def types(self):
        return [e["type"] for e in self.events]


def test_full_session_event_order_and_seq():
    d = Driver()
    d.start()
    d.audio(np.concatenate([silence(0.5), tone(2.0), silence(1.0), tone(1.0), silence(1.0)]))
    d.send('{"type":"stop"}')
    t = d.types()
    assert t[0] == "ready" and t[-1] == "end"
    assert [e["seq"] for e in d.events] == list(range(len(d.events)))
    finals = [e for e in d.events if e["type"] == "final"]
    assert [f["utterance_id"] for f in finals] == [0, 1]
    for uid in (0, 1):
        kinds = [e["type"] for e in d.events if e.get("utterance_id") == uid]
        assert kinds[0] == "speech_start" and kinds[-1] == "final"
        assert kinds.index("speech_end") < kinds.index("final")
        assert all(k == "partial" for k in kinds[1:kinds.index("speech_end")])
    assert "partial" in t
    assert d.closed == Close(1000, "end of stream")
    assert finals[0]["start_s"] == pytest.approx(0.5 - 0.15, abs=0.04)  # 150 ms pre-roll
    assert finals[0]["end_s"] == pytest.approx(2.5, abs=0.04)


def test_partials_stable_prefix_grows_and_text_starts_with_it():
    d = Driver()
    d.start(step_s=0.5)
    d.audio(np.concatenate([silence(0.3), tone(4.0)]))
    partials = [e for e in d.events if e["type"] == "partial"]
    assert len(partials) >= 4
    previous = ""
    for p in partials:
        assert p["text"].startswith(p["stable_text"])
        assert p["stable_text"].startswith(previous)
        previous = p["stable_text"]


def test_partials_off():
    d = Driver()
    d.start(partials=False)
    d.audio(np.concatenate([tone(2.0), silence(1.0)]))
    assert "partial" not in d.types() and "final" in d.types()


def test_stop_mid_word_yields_last_words():
    d = Driver()
    d.start()
    d.audio(np.concatenate([silence(0.3), tone(1.5)]))
    d.send('{"type":"stop"}')
    finals = [e for e in d.events if e["type"] == "final"]
    # Everything from the pre-roll (0.15 s) to the very last sample reached the model.
    assert len(finals) == 1 and finals[0]["text"] == "w0 w1 w2"
    assert d.states[0].duration_s == pytest.approx(1.8 - 0.15, abs=1e-3)
    assert d.types()[-1] == "end"


def test_finalize_forces_endpoint():
    d = Driver()
    d.start()
    d.audio(tone(1.0))
    d.send('{"type":"finalize"}')
    assert d.types()[-1] == "final"
    assert d.closed is None
    d.audio(np.concatenate([silence(0.5), tone(1.0)]))
    d.send('{"type":"stop"}')
    assert [e["utterance_id"] for e in d.events if e["type"] == "final"] == [0, 1]


def test_finals_out_in_order_even_if_engine_answers_out_of_order():
    d = Driver(defer=True)
    d.start(partials=False)
    d.audio(np.concatenate([tone(1.0), silence(1.0), tone(1.0), silence(1.0)]))
    d.send('{"type":"stop"}')
    assert "final" not in d.types()
    d.flush_deferred(reverse=True)
    assert [e["utterance_id"] for e in d.events if e["type"] == "final"] == [0, 1]
    assert d.types()[-1] == "end"


def test_odd_byte_frames_lose_nothing_and_partial_sample_at_stop():
    d = Driver()
    d.start()
    data = float_to_pcm16(np.concatenate([silence(0.3), tone(1.2)])) + b"\x01"
    for i in range(0, len(data), 333):
        d.send(data[i:i + 333])
    assert d.session.audio_samples == int(1.5 * SR)
    d.send('{"type":"stop"}')
    errors = [e for e in d.events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["partial_sample"] and errors[0]["fatal"] is False
    assert d.types()[-1] == "end"


@pytest.mark.parametrize("start,code,close", [
    ({"encoding": "opus"}, "unsupported_encoding", 1003),
    ({"sample_rate": 100}, "unsupported_sample_rate", 1003),
    ({"step_s": 0}, "invalid_option", 1008),
    ({"stepp_s": 1}, "invalid_option", 1008),
    ({"window_s": 4}, "invalid_option", 1008),        # model has no window
    ({"language": "xx"}, "invalid_option", 1008),     # backend refuses it
    ({"partials": "yes"}, "invalid_option", 1008),
    ({"endpoint_silence_ms": 1e9}, "invalid_option", 1008),
    ({"context": "x" * 5000}, "invalid_option", 1008),
])
def test_bad_start_is_fatal_with_close_code(start, code, close):
    d = Driver()
    d.start(**start)
    assert d.events[0]["type"] == "error" and d.events[0]["code"] == code and d.events[0]["fatal"]
    assert d.closed.code == close


def test_audio_before_start_is_fatal():
    d = Driver()
    d.send(b"\x00\x00" * 100)
    assert d.events[0]["code"] == "audio_before_start" and d.closed.code == 1008


def test_nonfatal_errors_keep_the_stream():
    d = Driver()
    d.start()
    d.send("{oops")
    d.send('{"type":"dance"}')
    d.send('{"type":"start"}')
    d.audio(np.concatenate([tone(1.0), silence(1.0)]))
    d.send('{"type":"stop"}')
    codes = [e["code"] for e in d.events if e["type"] == "error"]
    assert codes == ["bad_message", "unknown_message", "already_started"]
    assert d.types()[-1] == "end" and "final" in d.types()


def test_fatal_error_mid_stream_first_sends_final_of_audio_so_far():
    d = Driver()
    d.start(encoding="pcm_f32le")
    d.send(np.concatenate([silence(0.3), tone(1.5)]).astype("<f4").tobytes())
    d.send(np.array([np.nan] * 10, dtype="<f4").tobytes())
    t = d.types()
    assert t.index("final") < t.index("error")
    assert d.events[-1]["code"] == "invalid_audio" and d.closed.code == 1007
    d.send(b"\x00" * 8)  # ignored after close
    assert d.events[-1]["code"] == "invalid_audio"


def test_resampled_48k_times_are_stream_times():
    d = Driver()
    d.start(sample_rate=48000)
    d.audio(np.concatenate([silence(1.0, 48000), tone(2.0, 48000), silence(1.0, 48000)]), chunk=9600)
    d.send('{"type":"stop"}')
    final = next(e for e in d.events if e["type"] == "final")
    assert final["start_s"] == pytest.approx(1.0 - 0.15, abs=0.05)
    assert final["end_s"] == pytest.approx(3.0, abs=0.05)


def test_msgpack_session():
    d = Driver()
    d.send(msgpack.packb({"type": "start", "sample_rate": 16000}))
    pcm = float_to_pcm16(np.concatenate([tone(1.0), silence(1.0)]))
    d.send(msgpack.packb({"type": "audio", "pcm": pcm}))
    d.send(msgpack.packb({"type": "stop"}))
    assert d.session.wire.value == "msgpack"
    assert d.types()[0] == "ready" and "final" in d.types() and d.types()[-1] == "end"


def test_silence_only_gives_no_utterance():
    d = Driver()
    d.start()
    d.audio(silence(5.0))
    d.send('{"type":"stop"}')
    assert d.types() == ["ready", "end"]
    assert not d.backend.batches


SPEECH_THEN_MORE = np.concatenate([silence(0.3), tone(1.0), silence(1.0), tone(2.0)])


@pytest.mark.parametrize("fields", [
    # Found by a probe: each of these passed validation, then crashed the session on speech (close 1011,
    # no error event) or silently misbehaved (endpoint_silence_ms false = a 0 ms endpoint).
    {"max_utterance_s": None}, {"step_s": None}, {"endpoint_silence_ms": None}, {"partials": None},
    {"vad_aggressiveness": None}, {"endpoint_silence_ms": False}, {"endpoint_silence_ms": True},
    {"vad_aggressiveness": True}, {"step_s": True}, {"max_utterance_s": False}, {"window_s": False},
    {"endpoint_silence_ms": 600.5}, {"language": False}, {"context": 0},
])
def test_mistyped_start_fields_are_invalid_option_naming_the_field(fields):
    d = Driver()
    d.start(**fields)
    d.audio(SPEECH_THEN_MORE)
    [key] = fields
    assert d.types() == ["error"] and d.events[0]["code"] == "invalid_option" and key in d.events[0]["message"]
    assert d.closed == Close(1008, "invalid_option")


@pytest.mark.parametrize("fields", [{"language": None}, {"window_s": None}, {"context": None}])
def test_documented_nulls_are_values(fields):
    d = Driver()
    d.start(**fields)
    d.audio(np.concatenate([tone(1.0), silence(1.0)]))
    d.send('{"type":"stop"}')
    assert d.types()[0] == "ready" and "final" in d.types() and d.types()[-1] == "end"


def test_integral_float_endpoint_is_an_integer():
    d = Driver()
    d.start(endpoint_silence_ms=600.0, vad_aggressiveness=3.0)
    options = d.events[0]["options"]
    assert options["endpoint_silence_ms"] == 600 and type(options["endpoint_silence_ms"]) is int
    assert options["vad_aggressiveness"] == 3


def test_deeply_nested_frame_mid_stream_is_bad_message_and_the_stream_goes_on():
    d = Driver()
    d.start()
    d.send("[" * 1000)  # RecursionError inside json
    d.audio(np.concatenate([tone(1.0), silence(1.0)]))
    d.send('{"type":"stop"}')
    errors = [e for e in d.events if e["type"] == "error"]
    assert [(e["code"], e["fatal"]) for e in errors] == [("bad_message", False)]
    assert d.types()[-1] == "end" and "final" in d.types()


class FailsOnCall:
    """An energy classifier that raises on its n-th call (it is called for every non-silent frame)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, frame):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("classifier bug")
        return loud(frame)


def test_exception_inside_the_session_is_internal_error_after_earlier_finals(caplog):
    d = Driver(classify=FailsOnCall(100))  # 1 s of tone is ~34 loud frames: fails inside the second tone
    d.start()
    with caplog.at_level(logging.ERROR, logger="streaming.session"):
        d.audio(SPEECH_THEN_MORE)
    t = d.types()
    finals = [e for e in d.events if e["type"] == "final"]
    # Utterance 0 ended before the bug; utterance 1 was open: the audio it had is still decoded.
    assert [f["utterance_id"] for f in finals] == [0, 1] and all(f["text"].startswith("w0 w1") for f in finals)
    assert t[-1] == "error" and t.index("final") < t.index("error")
    assert d.events[-1]["code"] == "internal_error" and d.events[-1]["fatal"] is True
    assert d.closed == Close(1011, "internal_error")
    assert any("s1" in r.getMessage() and r.exc_info for r in caplog.records), "logged with the session id"
    d.send(b"\x00" * 3200)  # nothing after the close
    d.send('{"type":"stop"}')
    assert d.events[-1]["code"] == "internal_error"


def test_exception_during_stop_still_sends_end_of_speech():
    classify = FailsOnCall(None)
    d = Driver(classify=classify)
    d.start()
    d.audio(np.concatenate([silence(0.3), tone(1.0)])[: int(1.15 * SR) + 100])  # ends inside a VAD frame
    assert d.types()[-1] != "error"
    classify.n = classify.calls + 1  # the stop's flush classifies the last partial frame: it fails
    d.send('{"type":"stop"}')
    assert [e["type"] for e in d.events][-3:] == ["speech_end", "final", "error"]
    assert d.events[-1]["code"] == "internal_error" and d.closed.code == 1011


def test_exception_in_model_validation_is_internal_error_not_a_crash(caplog):
    def broken(options):
        raise KeyError("bug")

    d = Driver(validate=broken)
    with caplog.at_level(logging.ERROR, logger="streaming.session"):
        d.start()
    assert d.types() == ["error"] and d.events[0]["code"] == "internal_error" and d.closed.code == 1011
    assert "s1" in caplog.text


def test_broken_engine_result_is_internal_error_not_a_crash():
    d = Driver(defer=True)
    d.start(partials=False)
    d.audio(np.concatenate([tone(1.0), silence(1.0)]))
    assert d.types()[-1] == "speech_end"
    d.run(d.session.final_ready(0, FinalResult(text=None)))  # a backend bug
    assert d.events[-1]["code"] == "internal_error" and d.closed.code == 1011


def test_keepalive_does_nothing_but_count_as_a_valid_message():
    d = Driver()
    d.start()
    assert d.session.last_valid_message == "start"
    assert d.session.receive('{"type":"keepalive"}') == []
    assert d.session.last_valid_message == "keepalive"
    d.send("{oops")
    assert d.session.last_valid_message is None
    d.send('{"type":"dance"}')
    assert d.session.last_valid_message is None
    d.send('{"type":"start"}')  # already_started
    assert d.session.last_valid_message is None
    d.audio(tone(0.5))
    assert d.session.last_valid_message == "audio"
    d.send('{"type":"finalize"}')
    assert d.session.last_valid_message == "finalize"
    d.send(msgpack.packb({"type": "keepalive"}))  # a JSON session: binary is audio
    assert d.session.last_valid_message == "audio"
    d.send('{"type":"stop"}')
    assert d.types()[-1] == "end"
    d.send('{"type":"keepalive"}')
    assert d.session.last_valid_message is None


def test_keepalive_in_msgpack_and_before_start():
    d = Driver()
    d.send(msgpack.packb({"type": "start"}))
    assert d.session.receive(msgpack.packb({"type": "keepalive"})) == []
    assert d.session.last_valid_message == "keepalive"
    d = Driver()
    d.send('{"type":"keepalive"}')
    assert d.events[0]["code"] == "audio_before_start" and d.closed.code == 1008


@pytest.mark.parametrize("code,close", [("session_too_long", 1008), ("overloaded", 1013)])
def test_server_side_fatal_codes_drain_first(code, close):
    d = Driver()
    d.start()
    d.audio(np.concatenate([silence(0.3), tone(1.5)]))
    d.run(d.session.fail(ProtocolError(code, "server says so")))
    t = d.types()
    assert t.index("final") < t.index("error") and d.events[-1]["code"] == code
    assert d.closed == Close(close, code)


def test_every_start_field_is_checked_by_the_table():
    # The session has no rules of its own: an unknown field and each table field's wrong type both refuse.
    for key in SESSION_FIELDS:
        d = Driver()
        d.start(**{key: [1]})
        assert d.events[0]["code"] == "invalid_option" and key in d.events[0]["message"]
