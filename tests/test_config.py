"""Config files, CLI flags and start fields fill the same option objects."""

import json
import typing
from pathlib import Path

import pytest

from streaming.cli import build_parser, config_from_args
from streaming.config import (SESSION_FIELDS, Config, ConfigError, ServerOptions, SessionOptions, VadOptions,
                              apply_session_fields, load_config, session_field_info, set_field)

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


NULLABLE = {"language", "window_s", "context"}


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
