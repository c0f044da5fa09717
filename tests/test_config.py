"""Config files, CLI flags and start fields fill the same option objects."""

import dataclasses
import json
import re
import tomllib
import typing
from pathlib import Path

import pytest

from streaming.cli import build_parser, config_from_args, flag_knobs
from streaming.config import (SECTIONS, SESSION_FIELDS, Config, ConfigError, ServerOptions, SessionOptions,
                              StartField, VadOptions, apply_session_fields, load_config, session_field_info,
                              set_field)
from streaming.knobs import Knob, knobs, opt

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.model.name


def test_default_toml_matches_dataclass_defaults():
    assert load_config(CONFIGS / "default.toml") == Config()


def test_unknown_and_mistyped_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[vad]\nendpoint_silence = 3\n")
    with pytest.raises(ConfigError, match="endpoint_silence"):
        load_config(bad)
    bad.write_text("[nope]\nx = 1\n")
    with pytest.raises(ConfigError, match="nope"):
        load_config(bad)
    bad.write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match="port"):
        load_config(bad)


def test_cli_overrides_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nname = "base"\n[vad]\nendpoint_silence_ms = 900\n')
    args = build_parser().parse_args(["serve", "--config", str(cfg), "--port", "9000", "--language", "fr",
                                      "--set", "vad.preroll_ms=200", "--set", "server.idle_timeout_s=5"])
    config = config_from_args(args)
    assert config.model.name == "base" and config.server.port == 9000 and config.session.language == "fr"
    assert config.vad.endpoint_silence_ms == 900 and config.vad.preroll_ms == 200
    assert config.server.idle_timeout_s == 5.0


@pytest.mark.parametrize("fields", [
    {"step_s": 0.1}, {"window_s": 0}, {"window_s": 9}, {"window_s": 2.5}, {"vad_aggressiveness": 4},
    {"endpoint_silence_ms": float("nan")}, {"partials": 1}, {"language": ""}, {"bogus": 1},
])
def test_start_fields_validated(fields):
    with pytest.raises(ConfigError):
        apply_session_fields(SessionOptions(), VadOptions(), fields)


def test_start_fields_applied():
    s, v = SessionOptions(), VadOptions()
    apply_session_fields(s, v, {"window_s": 4.0, "vad_aggressiveness": 3, "language": "de", "step_s": 2})
    assert s.window_s == 4 and isinstance(s.window_s, int) and v.aggressiveness == 3 and s.language == "de"
    assert s.step_s == 2.0


NULLABLE = {"language", "window_s", "context", "max_speakers"}


@pytest.mark.parametrize("key", sorted(SESSION_FIELDS))
def test_null_is_a_value_only_where_documented(key):
    s, v = SessionOptions(), VadOptions()
    if key in NULLABLE:
        apply_session_fields(s, v, {key: None})
        assert getattr(s, SESSION_FIELDS[key].attr) is None
    else:
        # Found by a probe: step_s/endpoint_silence_ms/max_utterance_s null passed and crashed the session.
        with pytest.raises(ConfigError, match=key):
            apply_session_fields(s, v, {key: None})


@pytest.mark.parametrize("key", sorted(SESSION_FIELDS))
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_only_a_boolean(key, value):
    s, v = SessionOptions(), VadOptions()
    if SESSION_FIELDS[key].kind is bool:
        apply_session_fields(s, v, {key: value})
        assert getattr(s if SESSION_FIELDS[key].section == "session" else v, SESSION_FIELDS[key].attr) is value
    else:
        # Found by a probe: endpoint_silence_ms false gave a 0 ms endpoint (54 finals for an 11 s clip).
        with pytest.raises(ConfigError, match=key):
            apply_session_fields(s, v, {key: value})


@pytest.mark.parametrize("fields", [
    {"endpoint_silence_ms": 600.5}, {"vad_aggressiveness": 1.5}, {"window_s": 4.2},
    {"step_s": float("inf")}, {"step_s": float("-inf")}, {"max_utterance_s": float("nan")},
    {"endpoint_silence_ms": float("inf")}, {"endpoint_silence_ms": "600"}, {"step_s": "1"},
    {"endpoint_silence_ms": [600]}, {"step_s": {"value": 1}}, {"language": 5}, {"language": ["en"]},
    {"context": 12}, {"context": "x" * 1001}, {"language": "x" * 17}, {"partials": "true"}, {"partials": 0},
    {"partials": None}, {"max_utterance_s": 1.9}, {"max_utterance_s": 10 ** 400}, {"step_s": 10 ** 400},
    {"endpoint_silence_ms": 99}, {"endpoint_silence_ms": 5001},
])
def test_start_field_violations_name_the_field(fields):
    [key] = fields
    with pytest.raises(ConfigError, match=key):
        apply_session_fields(SessionOptions(), VadOptions(), fields)


def test_integral_floats_are_integers_and_ints_are_numbers():
    s, v = SessionOptions(), VadOptions()
    apply_session_fields(s, v, {"endpoint_silence_ms": 600.0, "vad_aggressiveness": 0.0, "window_s": 8.0,
                                "step_s": 1, "max_utterance_s": 10, "context": "", "language": "en"})
    assert v.endpoint_silence_ms == 600 and type(v.endpoint_silence_ms) is int
    assert v.aggressiveness == 0 and type(v.aggressiveness) is int and type(s.window_s) is int
    assert type(s.step_s) is float and type(v.max_utterance_s) is float and s.context == ""


def test_start_field_table_matches_the_option_dataclasses():
    """One table of rules: each entry names a real option of the same type and nullability."""
    hints = {"session": typing.get_type_hints(SessionOptions), "vad": typing.get_type_hints(VadOptions)}
    for key, rule in SESSION_FIELDS.items():
        hint = hints[rule.section][rule.attr]
        assert rule.nullable == (type(None) in typing.get_args(hint)), key
        assert rule.kind in (hint, *typing.get_args(hint)), key


def test_session_field_info_describes_types_nullability_and_ranges():
    info = session_field_info()
    assert info["endpoint_silence_ms"] == {"type": "integer", "nullable": False, "min": 100, "max": 5000}
    assert info["step_s"] == {"type": "number", "nullable": False, "min": 0.25, "max": 5.0}
    assert info["window_s"] == {"type": "integer", "nullable": True, "min": 1, "max": 8}
    assert info["partials"] == {"type": "boolean", "nullable": False}
    assert info["context"] == {"type": "string", "nullable": True, "min_length": 0, "max_length": 1000}
    assert {k for k, v in info.items() if v["nullable"]} == NULLABLE
    json.dumps(info)


@pytest.mark.parametrize("key,value", [
    ("port", True), ("port", 80.5), ("port", None), ("host", 5), ("idle_timeout_s", False),
    ("idle_timeout_s", float("nan")), ("api_keys", "k"),
])
def test_config_values_are_type_checked_strictly(key, value):
    with pytest.raises(ConfigError, match=key):
        set_field(ServerOptions(), key, value)


def test_config_values_convert_like_start_fields():
    server = ServerOptions()
    set_field(server, "port", 9000.0)
    set_field(server, "idle_timeout_s", 5)
    assert type(server.port) is int and type(server.idle_timeout_s) is float
    session = SessionOptions()
    set_field(session, "window_s", None)
    set_field(session, "language", "fr")
    assert session.window_s is None and session.language == "fr"


# ---------------------------------------------------------------- one definition, derived everywhere

def _every_knob() -> list[tuple[str, Knob]]:
    return [(section, knob) for section, cls in SECTIONS.items() for knob in knobs(cls).values()]


def _toml_literal(value) -> str:
    """A value as configs/default.toml spells it (TOML literals of these types read the same as JSON's)."""
    return json.dumps(value)


def _default_toml_lines() -> dict[tuple[str, str], str]:
    """(section, key) -> the value text of each `key = value` line, commented-out ones included."""
    lines, section = {}, None
    for raw in (CONFIGS / "default.toml").read_text(encoding="utf-8").splitlines():
        header = re.match(r"\s*\[(\w+)\]", raw)
        if header:
            section = header.group(1)
            continue
        m = re.match(r"\s*#?\s*(\w+)\s*=\s*(.+)$", raw)
        if m and section:
            lines[section, m.group(1)] = m.group(2)
    return lines


@pytest.mark.parametrize("section,knob", _every_knob(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_default_toml_lists_every_option_with_its_default(section, knob):
    """Every field is in configs/default.toml with its default; an unset (None) one as a commented line."""
    text = (CONFIGS / "default.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    if knob.default is None:
        assert (section, knob.name) in _default_toml_lines() and knob.name not in data.get(section, {}), knob.name
    else:
        assert data[section][knob.name] == knob.default, f"[{section}] {knob.name}"
        assert type(data[section][knob.name]) is type(knob.default) or knob.kind is float, knob.name


@pytest.mark.parametrize("section,knob", _every_knob(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_option_has_a_docstring(section, knob):
    """The docstring is the option's help (--help, docs); a field without one has none."""
    assert knob.doc, f"[{section}] {knob.name} has no docstring"


def test_start_fields_come_from_the_field_metadata():
    derived = {knob.start: (section, knob) for section, knob in _every_knob() if knob.start}
    assert set(SESSION_FIELDS) == set(derived)
    for key, (section, knob) in derived.items():
        low, high = knob.rules.start_range or (knob.rules.low, knob.rules.high)
        assert SESSION_FIELDS[key] == StartField(section, knob.name, knob.kind, low, high, knob.nullable,
                                                 knob.rules.choices), key


# The protocol's start fields (docs/protocol.md): deriving the table must not change what clients may send.
PROTOCOL_START_FIELDS = {
    "language": ("session", "language", str, 1, 16, True), "partials": ("session", "partials", bool, None, None, False),
    "step_s": ("session", "step_s", float, 0.25, 5.0, False), "window_s": ("session", "window_s", int, 1, 8, True),
    "context": ("session", "context", str, 0, 1000, True), "words": ("session", "words", bool, None, None, False),
    "endpoint_silence_ms": ("vad", "endpoint_silence_ms", int, 100, 5000, False),
    "endpointing": ("vad", "endpointing", bool, None, None, False),
    "speech_threshold": ("vad", "speech_threshold", float, 0.1, 0.95, False),
    "preroll_ms": ("vad", "preroll_ms", int, 0, 1000, False),
    "max_utterance_s": ("vad", "max_utterance_s", float, 2.0, 120.0, False),
    "vad_aggressiveness": ("vad", "aggressiveness", int, 0, 3, False),
    "turn_detection": ("vad", "turn_detection", str, None, None, False, ("silence", "smart", "manual")),
    "turn_eagerness": ("vad", "turn_eagerness", str, None, None, False, ("low", "medium", "high", "auto")),
    "turn_pause_ms": ("vad", "turn_pause_ms", int, 60, 2000, False),
    "turn_max_silence_ms": ("vad", "turn_max_silence_ms", int, 200, 10_000, False),
    "eager_end_of_turn": ("vad", "eager_end_of_turn", bool, None, None, False),
    "task": ("session", "task", str, None, None, False, ("transcribe", "translate")),
    "diarize": ("session", "diarize", bool, None, None, False),
    "max_speakers": ("session", "max_speakers", int, 1, 16, True),
}


def test_start_fields_are_the_documented_protocol():
    assert {k: StartField(*v) for k, v in PROTOCOL_START_FIELDS.items()} == SESSION_FIELDS


@pytest.mark.parametrize("toml,key,message", [
    ("[vad]\nendpoint_silence_ms = 99\n", "endpoint_silence_ms", "is out of range [100, 5000]"),
    ("[session]\nstep_s = 9.0\n", "step_s", "is out of range [0.25, 5.0]"),
    ("[session]\nlanguage = \"\"\n", "language", "must be 1-16 characters long"),
    ("[whisper]\nagreement_n = 0\n", "agreement_n", "is out of range [1, 8]"),
    ("[qwen3_asr]\nwindow_s = 9\n", "window_s", "is out of range [1, 8]"),
    ("[server]\nport = 70000\n", "port", "is out of range [0, 65535]"),
    ("[engine]\nmax_batch = 0\n", "max_batch", "must be >= 1"),
    ("[model]\ndevice = \"gpu\"\n", "device", "must be one of 'auto', 'cpu', 'cuda', got 'gpu'"),
    ("[vad]\nframe_ms = 25\n", "frame_ms", "must be one of 10, 20, 30"),
    ("[server]\napi_keys = [\"a\", 1]\n", "api_keys", "must be a string"),
])
def test_toml_values_out_of_range_fail_like_start_fields(tmp_path, toml, key, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(key)) as err:
        load_config(path)
    assert message in str(err.value)
    [(section, values)] = tomllib.loads(toml).items()
    if key in SESSION_FIELDS and SESSION_FIELDS[key].section == section:  # a client's start: the same words
        value = values[key]
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_session_fields(SessionOptions(), VadOptions(), {key: value})


def test_the_operator_may_go_where_clients_may_not():
    """speech_threshold 0 (webrtcvad alone) is a config value, never a client's."""
    config = Config()
    set_field(config.vad, "speech_threshold", 0)
    assert config.vad.speech_threshold == 0.0
    with pytest.raises(ConfigError, match=re.escape("speech_threshold=0 is out of range [0.1, 0.95]")):
        apply_session_fields(SessionOptions(), VadOptions(), {"speech_threshold": 0})


# Every dedicated flag: argv -> the field it sets and the value it gets.
FLAGS = [
    ("--host", "0.0.0.0", "server", "host", "0.0.0.0"), ("--port", "9000", "server", "port", 9000),
    ("--max-sessions", "3", "server", "max_sessions", 3), ("--certfile", "c.pem", "server", "certfile", "c.pem"),
    ("--keyfile", "k.pem", "server", "keyfile", "k.pem"), ("--api-key", "k1", "server", "api_keys", ["k1"]),
    ("--api-keys-file", "keys.txt", "server", "api_keys_file", "keys.txt"),
    ("--max-sessions-per-key", "2", "server", "max_sessions_per_key", 2),
    ("--allowed-origin", "https://a.example", "server", "allowed_origins", ["https://a.example"]),
    ("--allow-unauthenticated", None, "server", "allow_unauthenticated", True),
    ("--info-public", None, "server", "info_public", True), ("--log-format", "json", "server", "log_format", "json"),
    ("--model", "base", "model", "name", "base"), ("--device", "cpu", "model", "device", "cpu"),
    ("--dtype", "float16", "model", "dtype", "float16"), ("--threads", "2", "model", "threads", 2),
    ("--max-batch", "4", "engine", "max_batch", 4), ("--language", "fr", "session", "language", "fr"),
    ("--window-s", "2", "session", "window_s", 2), ("--step-s", "0.5", "session", "step_s", 0.5),
    ("--endpoint-silence-ms", "800", "vad", "endpoint_silence_ms", 800),
    ("--turn-detection", "smart", "vad", "turn_detection", "smart"),
    ("--task", "translate", "session", "task", "translate"),
]


@pytest.mark.parametrize("flag,value,section,attr,expected", FLAGS, ids=[f[0] for f in FLAGS])
def test_every_flag_sets_the_field_it_names(flag, value, section, attr, expected):
    args = build_parser().parse_args(["serve", flag] + ([value] if value is not None else []))
    config = config_from_args(args)
    assert getattr(getattr(config, section), attr) == expected
    changed = [(s, k.name) for s, k in _every_knob()
               if getattr(getattr(config, s), k.name) != getattr(getattr(Config(), s), k.name)]
    assert changed == [(section, attr)]


def test_the_flag_table_covers_every_flag():
    assert sorted(f[0] for f in FLAGS) == sorted(knob.flag for _, knob, _ in flag_knobs())


def test_repeatable_flags_collect_and_flags_are_range_checked():
    args = build_parser().parse_args(["serve", "--api-key", "a", "--api-key", "b", "--allowed-origin", "*"])
    config = config_from_args(args)
    assert config.server.api_keys == ["a", "b"] and config.server.allowed_origins == ["*"]
    for argv, message in [(["--port", "70000"], "--port=70000 is out of range [0, 65535]"),
                          (["--window-s", "9"], "--window-s=9 is out of range [1, 8]"),
                          (["--step-s", "nan"], "--step-s must be a finite number")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_from_args(build_parser().parse_args(["serve", *argv]))


def _other_value(knob: Knob):
    """A valid value of the knob other than its default."""
    if knob.rules.choices:
        return next(c for c in knob.rules.choices if c != knob.default)
    if knob.kind is bool:
        return not knob.default
    if knob.kind is list:
        return ["x"]
    if knob.kind is str:
        return "xy" if knob.default != "xy" else "yz"
    low, high = knob.rules.low, knob.rules.high
    value = high if high is not None and high != knob.default else (low if low is not None else 0) + 1
    return knob.kind(value)


@pytest.mark.parametrize("section,knob", _every_knob(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_set_reaches_every_option_of_every_section(section, knob):
    value = _other_value(knob)
    config = config_from_args(build_parser().parse_args(["serve", "--set", f"{section}.{knob.name}={_toml_literal(value)}"]))
    assert getattr(getattr(config, section), knob.name) == value


def test_set_errors_name_the_option():
    for item, message in [("whisper.agreement_n=0", "--set whisper.agreement_n=0 is out of range [1, 8]"),
                          ("qwen3_asr.nope=1", "--set qwen3_asr.nope: unknown option 'nope'"),
                          ("nope.x=1", "unknown section 'nope'"), ("vad", "expected SECTION.KEY=VALUE")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_from_args(build_parser().parse_args(["serve", "--set", item]))


@dataclasses.dataclass
class _Plain:
    """A section as another engineer may add it: plain fields, no opt()."""

    count: int = 3
    """How many."""
    ratio: float | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    shaped: int = opt(1, low=0, high=2, flag="--shaped", start="shaped_start")
    """With rules."""


def test_a_plain_field_is_a_knob_without_rules():
    k = knobs(_Plain)
    assert (k["count"].kind, k["count"].nullable, k["count"].default, k["count"].doc) == (int, False, 3, "How many.")
    assert (k["ratio"].kind, k["ratio"].nullable, k["ratio"].doc) == (float, True, "")
    assert k["count"].flag is None and k["count"].start is None and k["count"].rules.low is None
    assert (k["shaped"].rules.low, k["shaped"].rules.high, k["shaped"].flag, k["shaped"].start) == (0, 2, "--shaped",
                                                                                                    "shaped_start")
    obj = _Plain()
    set_field(obj, "count", 10 ** 6)
    set_field(obj, "ratio", None)
    set_field(obj, "names", ["a"])
    assert (obj.count, obj.ratio, obj.names) == (10 ** 6, None, ["a"])
    for key, value in [("count", "3"), ("count", True), ("names", "a"), ("shaped", 3)]:
        with pytest.raises(ConfigError, match=key):
            set_field(obj, key, value)
    assert _Plain().names == [] and _Plain().names is not _Plain().names


def test_list_defaults_are_not_shared():
    a, b = ServerOptions(), ServerOptions()
    a.api_keys.append("k")
    assert b.api_keys == [] and ServerOptions().allowed_origins == []
