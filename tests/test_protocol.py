"""Protocol v1 parser/encoder: every message and every bad input, no sockets."""

import json

import msgpack
import pytest

from streaming.protocol import (ERROR_CODES, Audio, Finalize, Parser, ProtocolError, Start, Stop, Wire,
                                encode_event)


def parse_all(frames, max_bytes=1 << 20):
    p = Parser(max_bytes)
    return p, [p.parse(f) for f in frames]


def test_json_session_messages():
    p, msgs = parse_all([json.dumps({"type": "start", "sample_rate": 48000, "encoding": "pcm_f32le",
                                     "language": "en", "partials": False}),
                         b"\x00\x01", json.dumps({"type": "finalize"}), json.dumps({"type": "stop"})])
    assert p.wire is Wire.JSON
    assert msgs[0] == Start(48000, "pcm_f32le", {"language": "en", "partials": False})
    assert msgs[1:] == [Audio(b"\x00\x01"), Finalize(), Stop()]


def test_start_defaults():
    _, [start] = parse_all(['{"type":"start"}'])
    assert start == Start(16000, "pcm_s16le", {})


def test_msgpack_session_detected_from_first_binary_frame():
    pack = lambda m: msgpack.packb(m, use_bin_type=True)  # noqa: E731
    p, msgs = parse_all([pack({"type": "start", "sample_rate": 16000}), pack({"type": "audio", "pcm": b"ab"}),
                         pack({"type": "stop"})])
    assert p.wire is Wire.MSGPACK
    assert msgs[1:] == [Audio(b"ab"), Stop()]
    with pytest.raises(ProtocolError) as e:
        p.parse('{"type":"stop"}')
    assert e.value.code == "bad_message"


@pytest.mark.parametrize("frames,code", [
    (["not json"], "bad_message"),
    (["[1,2]"], "bad_message"),
    (['{"no_type":1}'], "bad_message"),
    (['{"type":"dance"}'], "unknown_message"),
    ([b"\x01\x02\x03\x04"], "audio_before_start"),
    (['{"type":"start","encoding":"mp3"}'], "unsupported_encoding"),
    (['{"type":"start","sample_rate":4000}'], "unsupported_sample_rate"),
    (['{"type":"start","sample_rate":96000}'], "unsupported_sample_rate"),
    (['{"type":"start","sample_rate":"16k"}'], "unsupported_sample_rate"),
    (['{"type":"start","sample_rate":true}'], "unsupported_sample_rate"),
    (['{"type":"start"}', "x" * 2000], "message_too_large"),
    (['{"type":"start"}', b"\x00" * 2000], "message_too_large"),
    ([msgpack.packb({"type": "start"}), msgpack.packb([1, 2])], "bad_message"),
    ([msgpack.packb({"type": "start"}), b"\xc1garbage"], "bad_message"),
    ([msgpack.packb({"type": "start"}), msgpack.packb({"type": "audio", "pcm": "text"})], "bad_message"),
])
def test_bad_input_codes(frames, code):
    p = Parser(max_message_bytes=1000)
    with pytest.raises(ProtocolError) as e:
        for f in frames:
            p.parse(f)
    assert e.value.code == code
    fatal, close = ERROR_CODES[code]
    assert e.value.fatal is fatal and e.value.close_code == close


def test_encode_event_json_and_msgpack():
    ev = {"type": "final", "seq": 3, "text": "héllo", "utterance_id": 0}
    assert json.loads(encode_event(ev, Wire.JSON)) == ev
    assert json.loads(encode_event(ev, None)) == ev
    assert msgpack.unpackb(encode_event(ev, Wire.MSGPACK)) == ev


def test_every_error_code_has_fatal_close_consistency():
    for code, (fatal, close) in ERROR_CODES.items():
        assert (close is not None) == fatal, code
