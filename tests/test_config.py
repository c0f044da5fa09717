"""Config files, CLI flags and start fields fill the same option objects."""

from pathlib import Path

import pytest

from streaming.cli import build_parser, config_from_args
from streaming.config import (Config, ConfigError, SessionOptions, VadOptions, apply_session_fields, load_config)

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
