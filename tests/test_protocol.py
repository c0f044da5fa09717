"""Protocol v1 parser/encoder: every message and every bad input, no sockets."""

import json
from pathlib import Path

import msgpack
import pytest

from streaming.protocol import (ERROR_CODES, MAX_NESTING, Audio, Finalize, Keepalive, Parser, ProtocolError,
                                Start, Stop, Wire, encode_event)


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


def test_keepalive_in_both_wires():
    _, msgs = parse_all(['{"type":"start"}', '{"type":"keepalive"}'])
    assert msgs[1] == Keepalive()
    _, msgs = parse_all([msgpack.packb({"type": "start"}), msgpack.packb({"type": "keepalive"})])
    assert msgs[1] == Keepalive()


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


START = msgpack.packb({"type": "start"})
NESTED = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)


@pytest.mark.parametrize("frames,code", [
    # Found by a probe: json's RecursionError escaped the parser and closed the session with 1011.
    (["[" * 1000], "bad_message"),
    (["[" * 100_000], "bad_message"),
    (['{"type":"start"}', "[" * 1000], "bad_message"),
    (['{"type":"start"}', '{"type":"stop","x":' + NESTED + "}"], "bad_message"),
    (['{"type":"start"}', '{"type":"finalize","x":"\\ud800"}'], "bad_message"),    # not Unicode text
    (['{"type":"start","language":"\\udfff"}'], "bad_message"),
    (['{"type":"start","language":"\udfff"}'], "bad_message"),                  # a str no socket gives
    (['{"type":"start","sample_rate":' + "9" * 5000 + "}"], "bad_message"),    # over int's digit limit
    ([START, msgpack.packb({"type": "stop", 1: 2})], "bad_message"),               # non-string key
    ([START, msgpack.packb({"type": "stop", "x": {b"k": 1}})], "bad_message"),     # bytes key, nested
    ([START, b"\x91" * 100_000 + b"\xc0"], "bad_message"),                        # huge nesting
    ([START, msgpack.packb({"type": "stop", "x": json.loads(NESTED)})], "bad_message"),
    ([START, msgpack.packb({"type": "stop", "x": msgpack.ExtType(5, b"ab")})], "bad_message"),
    ([START, msgpack.packb({"type": "stop", "x": msgpack.Timestamp(1, 0)})], "bad_message"),
    ([START, msgpack.packb({"type": "audio", "pcm": msgpack.ExtType(1, b"")})], "bad_message"),
    ([START, msgpack.packb({"type": "stop"}) + b"\x00"], "bad_message"),          # trailing bytes
    ([msgpack.packb({"type": "start", 7: "x"})], "bad_message"),
    (['{"type":"start","encoding":null}'], "unsupported_encoding"),
    (['{"type":"start","encoding":["pcm_s16le"]}'], "unsupported_encoding"),
    (['{"type":"start","encoding":1}'], "unsupported_encoding"),
    (['{"type":"start","sample_rate":null}'], "unsupported_sample_rate"),
    (['{"type":"start","sample_rate":false}'], "unsupported_sample_rate"),
    (['{"type":"start","sample_rate":NaN}'], "unsupported_sample_rate"),
    (['{"type":"start","sample_rate":16000.5}'], "unsupported_sample_rate"),
    (['{"type":"keepalive"}', b"\x00\x00"], "audio_before_start"),
])
def test_hostile_frames_are_documented_errors(frames, code):
    p = Parser()
    with pytest.raises(ProtocolError) as e:
        for f in frames:
            p.parse(f)
    assert e.value.code == code
    assert len(e.value.message) < 300


def test_error_messages_show_client_values_briefly():
    p = Parser()
    with pytest.raises(ProtocolError) as e:
        p.parse('{"type":"' + "x" * 100_000 + '"}')
    assert e.value.code == "unknown_message" and len(e.value.message) < 200
    with pytest.raises(ProtocolError) as e:
        p.parse('{"type":"start","sample_rate":true}')
    assert "true" in e.value.message


def test_refused_msgpack_start_answers_in_msgpack():
    p = Parser()
    with pytest.raises(ProtocolError) as e:
        p.parse(msgpack.packb({"type": "start", "encoding": "opus"}))
    assert e.value.code == "unsupported_encoding" and p.wire is Wire.MSGPACK


def test_sixteen_thousand_point_zero_is_a_sample_rate():
    assert Parser().parse('{"type":"start","sample_rate":16000.0}') == Start(16000, "pcm_s16le", {})


def test_encode_event_json_and_msgpack():
    ev = {"type": "final", "seq": 3, "text": "héllo", "utterance_id": 0}
    assert json.loads(encode_event(ev, Wire.JSON)) == ev
    assert json.loads(encode_event(ev, None)) == ev
    assert msgpack.unpackb(encode_event(ev, Wire.MSGPACK)) == ev


def test_every_error_code_has_fatal_close_consistency():
    for code, (fatal, close) in ERROR_CODES.items():
        assert (close is not None) == fatal, code
    assert ERROR_CODES["session_too_long"] == (True, 1008)
    assert ERROR_CODES["overloaded"] == (True, 1013)


def test_every_error_code_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    errors = doc[doc.index("## Errors"):]
    for code, (fatal, close) in ERROR_CODES.items():
        row = next((line for line in errors.splitlines() if line.startswith(f"| `{code}` |")), None)
        assert row is not None, code
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == ("yes" if fatal else "no") and cells[3] == (str(close) if close else ""), row


def _doc_rows(heading: str, until: str) -> dict[str, list[str]]:
    """The rows of the first table after ``heading`` in docs/protocol.md: first cell (unquoted) → cells."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    part = doc[doc.index(heading):]
    part = part[:part.index(until)]
    rows = {}
    for line in part.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_start_field_is_documented_with_its_range():
    from streaming.config import SESSION_FIELDS

    rows = _doc_rows("### `start`", "The server answers")
    assert set(rows) - {"sample_rate", "encoding", "channels", "multichannel"} == set(SESSION_FIELDS)
    for name, rule in SESSION_FIELDS.items():
        if rule.kind in (int, float) and rule.low is not None:
            low, high = (f"{v:g}" if rule.kind is float else f"{int(v)}" for v in (rule.low, rule.high))
            assert f"{low}–{high}" in rows[name][1], (name, rows[name][1])


def test_every_v1_message_and_final_reason_is_documented():
    from streaming import events as ev
    from streaming.codecs.v1 import event_fields
    from streaming.results import Word

    samples = [ev.Ready("s", "m", {}), ev.SpeechStarted(0, 0.0), ev.Partial(0, "a", "", 0.0, 1.0),
               ev.EagerEndOfTurn(0, "a", 0.0, 1.0), ev.TurnResumed(0, 1.5), ev.SpeechEnded(0, 2.0, "endpoint"),
               ev.Final(0, "a", "en", 0.0, 2.0, "endpoint", (Word("a", 0.0, 1.0, 1.0, 0),), "estimated", speaker=0),
               ev.Cleared(None, 1.0), ev.Error("overloaded", "x", True, 2.0), ev.Ended(1, 2.0)]
    messages = _doc_rows("## Server → client", "`reason` of `speech_end`")
    for event in samples:
        fields = event_fields(event)
        kind = fields.pop("type")
        assert kind in messages, kind
        for name in fields:  # every field the message has is named in its row
            assert f"`{name}`" in messages[kind][1], (kind, name)
    reasons = _doc_rows("`reason` of `speech_end`", "Order:")
    assert set(reasons) == {"endpoint", "end_of_turn", "max_silence", "max_length", "finalize", "stream_end"}
