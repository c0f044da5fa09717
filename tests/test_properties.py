"""Property-based tests: any frame is a message or a documented error; any script keeps docs/protocol.md's rules.

The session runs with an energy classifier (no webrtcvad) and a scripted engine that answers the session's
requests when the script says, in any order, so the order of events depends only on the drawn script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.config import SESSION_FIELDS, Config
from streaming.models.base import FinalResult, Hypothesis
from streaming.protocol import (ERROR_CODES, Audio, Finalize, Keepalive, Parser, ProtocolError, Start, Stop, Wire,
                                encode_event)
from streaming.session import Action, Close, FeedAudio, ModelInfo, OpenUtterance, RequestFinal, RequestPartial
from tests.v1_link import Send
from tests.v1_link import V1Session as Session

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PARSER_CODES = {"bad_message", "unknown_message", "audio_before_start", "unsupported_encoding",
                "unsupported_sample_rate", "message_too_large"}
"""The codes docs/protocol.md gives for a frame by itself (the rest come from the session or the shell)."""
SHELL_FATAL_CODES = ["idle_timeout", "shutting_down", "session_too_long", "overloaded", "internal_error",
                     "slow_client"]

# ---- frames ------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
msgpack_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
                   | st.text(max_size=12) | st.binary(max_size=12))
msgpack_values = st.recursive(msgpack_scalars, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.text(max_size=6) | st.integers(0, 9) | st.binary(max_size=3),
                                                inner, max_size=3), max_leaves=12)
KINDS = ["start", "audio", "finalize", "stop", "keepalive", "dance", "", "Start"]
FIELDS = ["sample_rate", "encoding", "pcm", "bogus", *SESSION_FIELDS]
message_maps = st.builds(lambda kind, rest: {"type": kind, **rest},
                         st.sampled_from(KINDS) | json_values,
                         st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))
deep = st.integers(1, 3000)
any_text = st.text(st.characters(exclude_categories=()), max_size=60)
"""Lone surrogates included: a str no socket gives, yet the parser must refuse it cleanly."""
text_frames = st.one_of(
    st.text(max_size=60), any_text, message_maps.map(json.dumps), json_values.map(json.dumps),
    st.builds(lambda kind, text: json.dumps({"type": kind, "language": text}, ensure_ascii=False),
              st.sampled_from(["start", "stop"]), any_text),
    deep.map(lambda n: "[" * n), deep.map(lambda n: "[" * n + "]" * n),
    deep.map(lambda n: '{"type":"stop","x":' + "[" * n + "]" * n + "}"),
    st.sampled_from(['{"type":"start","language":"\\ud800"}', '{"type":"start","step_s":NaN}',
                     '{"type":"start","step_s":1e999}', '{"type":"start","sample_rate":' + "9" * 5000 + "}"]))
binary_frames = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda kind, rest: msgpack.packb({"type": kind, **rest}, use_bin_type=True),
              st.sampled_from(KINDS), st.dictionaries(st.sampled_from(FIELDS), msgpack_values, max_size=4)),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    deep.map(lambda n: b"\x91" * n + b"\xc0"),
    deep.map(lambda n: b"\x81\xa4type\xa4stop\xa1x" + b"\x91" * n + b"\xc0"),
    st.builds(lambda code, data: msgpack.packb({"type": "stop", "x": msgpack.ExtType(code, data)}),
              st.integers(0, 127), st.binary(max_size=8)),
    st.just(msgpack.packb({"type": "stop", "t": msgpack.Timestamp(1, 0)})),
    st.just(msgpack.packb({"type": "start", 1: 2})))
frames = text_frames | binary_frames


@settings(max_examples=400, **SETTINGS)
@given(st.lists(frames, min_size=1, max_size=4), st.sampled_from([None, "json", "msgpack"]))
def test_any_frame_is_a_message_or_a_documented_error(sequence, first):
    parser = Parser(max_message_bytes=4096)
    if first == "json":
        parser.parse('{"type":"start"}')
    elif first == "msgpack":
        parser.parse(msgpack.packb({"type": "start"}))
    for frame in sequence:
        try:
            message = parser.parse(frame)
        except ProtocolError as exc:
            assert exc.code in PARSER_CODES, exc.code
            assert exc.message and len(exc.message) < 1000
            if exc.code == "audio_before_start":
                assert parser.wire is None and isinstance(frame, bytes)
        else:
            assert isinstance(message, Start | Audio | Finalize | Stop | Keepalive)


valid_rates = st.sampled_from([8000, 11025, 16000, 16000.0, 22050, 44100, 48000])
valid_options = st.fixed_dictionaries({}, optional={
    "language": st.sampled_from(["en", None]), "partials": st.booleans(),
    "step_s": st.floats(0.25, 5.0), "window_s": st.none(), "context": st.none() | st.text(max_size=30),
    "endpoint_silence_ms": st.integers(100, 5000) | st.sampled_from([600.0, 100.0]),
    "max_utterance_s": st.floats(2.0, 120.0) | st.integers(2, 120), "vad_aggressiveness": st.integers(0, 3)})


@settings(max_examples=200, **SETTINGS)
@given(valid_rates, st.sampled_from(["pcm_s16le", "pcm_f32le"]), valid_options, st.booleans())
def test_valid_start_round_trips_in_both_wires(rate, encoding, options, use_msgpack):
    message = {"type": "start", "sample_rate": rate, "encoding": encoding, **options}
    frame = msgpack.packb(message, use_bin_type=True) if use_msgpack else json.dumps(message)
    assert Parser().parse(frame) == Start(int(rate), encoding, options)
    session = Session("p", Config(), ModelInfo("fake"), classify=loud)
    [ready] = session.receive(frame)
    assert ready.event["type"] == "ready" and session.state == "streaming"
    assert session.last_valid_message == "start"


# ---- sessions driven by scripts ------------------------------------------------------------------

def loud(frame: np.ndarray) -> bool:
    return float(np.abs(frame).max()) > 0.05


class FailingClassifier:
    """``loud``, but raising on its ``fail_at``-th call: a bug inside the session's VAD."""

    def __init__(self, fail_at: int | None) -> None:
        self.fail_at, self.calls, self.failed = fail_at, 0, False

    def __call__(self, frame: np.ndarray) -> bool:
        self.calls += 1
        if self.calls == self.fail_at:
            self.failed = True
            raise RuntimeError("classifier bug")
        return loud(frame)


def pcm(encoding: str, amplitude: float, duration_ms: int, extra_bytes: int) -> bytes:
    """A 220 Hz tone (16 kHz nominal) of ``duration_ms``, plus ``extra_bytes`` that end inside a sample."""
    width = 2 if encoding == "pcm_s16le" else 4
    n_bytes = duration_ms * 16 * width + extra_bytes
    t = np.arange(n_bytes // width + 1) / 16000.0
    samples = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    data = ((samples * 32767).astype("<i2") if width == 2 else samples.astype("<f4")).tobytes()
    return data[:n_bytes]


packable = st.recursive(st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
                        | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
"""Values both wires can carry (msgpack has no integers over 64 bits)."""
bad_values = packable | st.sampled_from([None, True, False, 600.5, float("nan"), float("inf"), "600", [600]])
good_starts = st.one_of(
    valid_options.map(lambda o: {"sample_rate": 16000, **o}),
    st.builds(lambda rate, enc, o: {"sample_rate": rate, "encoding": enc, **o}, valid_rates,
              st.sampled_from(["pcm_s16le", "pcm_f32le"]), valid_options))
start_fields = good_starts | st.dictionaries(st.sampled_from(FIELDS), bad_values, max_size=3)
durations_ms = st.sampled_from([0, 10, 30, 100, 200, 400, 700, 1200, 2500]) | st.integers(0, 3000)
speech = st.tuples(st.just("audio"), st.just(0.3), durations_ms, st.integers(0, 3))
quiet = st.tuples(st.just("audio"), st.sampled_from([0.0, 0.001]), durations_ms, st.integers(0, 3))
engine = st.tuples(st.just("engine"), st.integers(0, 50), st.booleans())
other_ops = st.one_of(
    engine,
    st.tuples(st.just("audio"), st.sampled_from([0.06, 1.0]), st.integers(0, 300), st.integers(0, 3)),
    st.tuples(st.just("noise"), st.binary(max_size=2000)),
    st.tuples(st.just("message"), st.sampled_from(["finalize", "keepalive", "dance"])),
    st.tuples(st.just("frame"), frames))
# A stream is mostly audio and engine results: each step is some audio, then a few other ops.
steps = st.tuples(speech | quiet, st.lists(engine, max_size=2), st.lists(other_ops, max_size=2)).map(
    lambda step: [step[0], *step[1], *step[2]])
ops = st.lists(steps, min_size=1, max_size=15).map(lambda s: [op for step in s for op in step])
rare_ops = st.one_of(  # ops that end or restart the session, drawn less often
    st.tuples(st.just("message"), st.just("stop")),
    st.tuples(st.just("start"), start_fields),
    st.tuples(st.just("fail"), st.sampled_from(SHELL_FATAL_CODES)))


@dataclass
class Monitor:
    """Checks every action a session returns against the rules of docs/protocol.md, as it happens."""

    events: list[dict] = field(default_factory=list)
    terminal: dict | None = None
    close: Close | None = None
    starts: dict[int, dict] = field(default_factory=dict)
    ends: dict[int, dict] = field(default_factory=dict)
    finals: list[int] = field(default_factory=list)
    eager: set[int] = field(default_factory=set)
    """Utterances with an eager end of turn not retracted (smart turn detection)."""
    opened: set[int] = field(default_factory=set)
    final_requested: set[int] = field(default_factory=set)
    partial_in_flight: set[int] = field(default_factory=set)
    pending: list[tuple[str, int]] = field(default_factory=list)
    fed: dict[int, int] = field(default_factory=dict)

    def take(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            assert self.close is None, f"{action} after {self.close}"
            if isinstance(action, Send):
                self._event(action.event)
            elif isinstance(action, Close):
                assert self.terminal is not None and self.events[-1] is self.terminal, "Close without end/error"
                expected = 1000 if self.terminal["type"] == "end" else ERROR_CODES[self.terminal["code"]][1]
                assert action.code == expected
                self.close = action
            else:
                assert self.terminal is None, f"{action} after {self.terminal}"
                self._engine_work(action)
        return actions

    def _engine_work(self, action: Action) -> None:
        uid = action.utterance_id
        if isinstance(action, OpenUtterance):
            assert uid not in self.opened and uid in self.starts
            self.opened.add(uid)
            self.fed[uid] = 0
            return
        assert uid in self.opened and uid not in self.final_requested, action
        if isinstance(action, FeedAudio):
            assert action.audio.size > 0
            self.fed[uid] += action.audio.size
        elif isinstance(action, RequestPartial):
            assert uid not in self.partial_in_flight, "two partials in flight for one utterance"
            self.partial_in_flight.add(uid)
            self.pending.append(("partial", uid))
        elif isinstance(action, RequestFinal):
            assert uid in self.ends, "final requested before speech_end"
            self.final_requested.add(uid)
            self.pending.append(("final", uid))

    def _event(self, ev: dict) -> None:
        assert self.terminal is None, f"{ev} after {self.terminal}"
        assert ev["seq"] == len(self.events), "seq must count 0, 1, 2…"
        text = encode_event(ev, Wire.JSON)
        text.encode("utf-8")
        encode_event(ev, Wire.MSGPACK)
        self.events.append(ev)
        kind, uid = ev["type"], ev.get("utterance_id")
        if kind == "ready":
            assert len(self.events) == 1
        elif kind == "speech_start":
            assert uid == len(self.starts) and (uid == 0 or uid - 1 in self.ends), "utterances overlap"
            if uid:
                assert ev["start_s"] >= self.ends[uid - 1]["end_s"], "utterance starts before the previous ended"
            self.starts[uid] = ev
        elif kind == "partial":
            assert uid in self.starts and uid not in self.ends
            assert ev["text"].startswith(ev["stable_text"])
            assert ev["start_s"] == self.starts[uid]["start_s"] <= ev["end_s"]
        elif kind == "speech_end":
            assert uid in self.starts and uid not in self.ends
            assert ev["end_s"] >= self.starts[uid]["start_s"]
            self.ends[uid] = ev
        elif kind == "final":
            assert uid == len(self.finals) and uid in self.ends, "finals in utterance order, after speech_end"
            assert (ev["start_s"], ev["end_s"]) == (self.starts[uid]["start_s"], self.ends[uid]["end_s"])
            self.finals.append(uid)
        elif kind == "eager_end_of_turn":
            assert uid in self.starts and uid not in self.ends and uid not in self.eager, "one eager per pause"
            assert self.starts[uid]["start_s"] == ev["start_s"] <= ev["end_s"]
            self.eager.add(uid)
        elif kind == "turn_resumed":
            assert uid in self.eager and uid not in self.ends, "turn_resumed retracts an eager end of turn"
            self.eager.discard(uid)
        elif kind == "error":
            assert ev["code"] in ERROR_CODES and ev["fatal"] is ERROR_CODES[ev["code"]][0]
            if ev["fatal"]:
                self._terminal(ev)
        elif kind == "end":
            assert ev["utterances"] == len(self.starts)
            self._terminal(ev)
        else:
            raise AssertionError(f"undocumented event {kind}")

    def _terminal(self, ev: dict) -> None:
        # Nothing is lost: every utterance heard got its final before the end or the fatal error.
        assert self.finals == list(self.starts), f"{ev['type']} before the finals of {set(self.starts) - set(self.finals)}"
        self.terminal = ev


class Script:
    """Plays ops against a session, answering engine requests with words that grow with the audio fed."""

    def __init__(self, use_msgpack: bool, fail_at: int | None = None) -> None:
        self.classify = FailingClassifier(fail_at)
        self.session = Session("prop", Config(), ModelInfo("fake", max_utterance_s=30.0), classify=self.classify)
        self.monitor = Monitor()
        self.use_msgpack = use_msgpack
        self.encoding = "pcm_s16le"
        self.shell_codes: set[str] = set()

    def frame(self, frame: str | bytes, valid_kind: str | None = None) -> None:
        was_streaming = self.session.state == "streaming"
        actions = self.monitor.take(self.session.receive(frame))
        # A refused frame is not a valid message (partial_sample is a warning on a valid stop).
        if any(isinstance(a, Send) and a.event["type"] == "error" and a.event["code"] != "partial_sample"
               for a in actions):
            assert self.session.last_valid_message is None
        if valid_kind in ("keepalive", "audio") and was_streaming and self.session.state == "streaming":
            assert self.session.last_valid_message == valid_kind
            if valid_kind == "keepalive":
                assert actions == []

    def message(self, kind: str, **fields) -> None:
        obj = {"type": kind, **fields}
        self.frame(msgpack.packb(obj, use_bin_type=True) if self.use_msgpack else json.dumps(obj), kind)

    def play(self, op: tuple) -> None:
        name = op[0]
        if name == "start":
            if "encoding" in op[1] and op[1]["encoding"] in ("pcm_s16le", "pcm_f32le") \
                    and self.session.state == "awaiting_start":
                self.encoding = op[1]["encoding"]
            self.message("start", **op[1])
        elif name == "audio":
            data = pcm(self.encoding, *op[1:])
            if self.use_msgpack:
                self.message("audio", pcm=data)
            else:
                bad = any(e["type"] == "error" and e["code"] == "invalid_audio" for e in self.monitor.events)
                self.frame(data, None if bad or not data else "audio")
        elif name == "noise":
            self.frame(msgpack.packb({"type": "audio", "pcm": op[1]}) if self.use_msgpack else op[1])
        elif name == "message":
            self.message(op[1])
        elif name == "frame":
            self.frame(op[1])
        elif name == "engine":
            self.answer(op[1], dropped=op[2])
        elif name == "fail":
            self.shell_codes.add(op[1])
            self.monitor.take(self.session.fail(ProtocolError(op[1], "the shell ends the session")))

    def answer(self, index: int, dropped: bool = False) -> None:
        if not self.monitor.pending:
            return
        kind, uid = self.monitor.pending.pop(index % len(self.monitor.pending))
        words = [f"w{i}" for i in range(self.monitor.fed[uid] // 4000)]
        if kind == "partial":
            self.monitor.partial_in_flight.discard(uid)
            hypothesis = None if dropped else Hypothesis(" ".join(words[:-1]), " ".join(words[-1:]), "en")
            self.monitor.take(self.session.partial_ready(uid, hypothesis))
        else:
            self.monitor.take(self.session.final_ready(uid, FinalResult(" ".join(words), "en")))


@settings(max_examples=150, **SETTINGS)
@given(st.booleans(), st.one_of(good_starts, good_starts, good_starts, start_fields), ops,
       st.lists(st.tuples(st.integers(0, 30), rare_ops), max_size=2),
       st.none() | st.none() | st.integers(1, 150), st.data())
def test_any_script_keeps_the_protocol_invariants(use_msgpack, first_start, script_ops, rare, fail_at, data):
    for position, op in sorted(rare, key=lambda r: r[0], reverse=True):
        script_ops.insert(position, op)
    script = Script(use_msgpack, fail_at)
    script.play(("start", first_start))
    for op in script_ops:
        script.play(op)
    # The engine answers everything it was asked, in any order; then the client stops.
    for _ in range(2):
        while script.monitor.pending:
            script.answer(data.draw(st.integers(0, len(script.monitor.pending) - 1)))
        if not script.session.closed:
            script.message("stop")
    monitor = script.monitor
    assert script.session.closed and monitor.close is not None, "every RequestFinal answered, yet no end"
    assert monitor.events[-1] is monitor.terminal
    if monitor.terminal["type"] == "error" and monitor.terminal["code"] in SHELL_FATAL_CODES:
        # internal_error would be a bug in the session: only the (simulated) shell may end it so.
        assert monitor.terminal["code"] in script.shell_codes or script.classify.failed, monitor.terminal
    if script.classify.failed:  # the first fatal error after the bug is internal_error (speech drained first)
        fatal = [e["code"] for e in monitor.events if e["type"] == "error" and e["fatal"]]
        assert fatal == ["internal_error"] or fatal and fatal[0] in script.shell_codes | {"invalid_audio"}
    # After the close nothing more, even when late engine results arrive.
    assert script.session.receive(json.dumps({"type": "stop"})) == []
    for uid in monitor.opened:
        assert script.session.partial_ready(uid, Hypothesis("x", "")) == []
        assert script.session.final_ready(uid, FinalResult("x")) == []
