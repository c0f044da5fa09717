"""The real command line: `python -m streaming serve` as a user runs it."""

import dataclasses
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# The flags users and scripts already type: generating the parser must keep every one.
KNOWN_FLAGS = ("--host", "--port", "--max-sessions", "--certfile", "--keyfile", "--api-key", "--api-keys-file",
               "--max-sessions-per-key", "--allowed-origin", "--allow-unauthenticated", "--info-public", "--config",
               "--model", "--device", "--dtype", "--threads", "--max-batch", "--language", "--window-s", "--step-s",
               "--endpoint-silence-ms", "--set", "--log-level", "--log-format")


def test_help_explains_every_option():
    from streaming.cli import flag_knobs

    out = subprocess.run([sys.executable, "-m", "streaming", "serve", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    for flag in {*KNOWN_FLAGS, *(knob.flag for _, knob, _ in flag_knobs())}:
        assert re.search(rf"^\s+{flag}\b", out, re.M), f"{flag} missing from --help"
    for _, knob, _ in flag_knobs():  # each flag's help is its field's docstring
        first_words = " ".join(knob.doc.replace("``", "").split()[:4])
        assert first_words in flat, (knob.flag, first_words)
    for group in ("configuration:", "server:", "security:", "model:", "engine:", "session:", "vad:", "logging:"):
        assert f"\n{group}" in out, group
    assert "browser demo" in out and "examples:" in out and "--set SECTION.KEY=VALUE" in out
    assert "(0-65535; default: 8765)" in flat and "(repeatable)" in flat


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("[vad]\nnope = 1\n")
    proc = subprocess.run([sys.executable, "-m", "streaming", "serve", "--config", str(bad)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option 'nope'" in proc.stderr


@pytest.mark.slow
def test_serve_starts_says_where_and_stops_cleanly():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "streaming", "serve", "--port", "0"], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 180
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"browser demo at (http://\S+)/ ", line)
            if m:
                url = m.group(1)
                break
        assert url, "".join(lines)
        assert any("streaming at ws://127.0.0.1:" in l for l in lines)
        with urllib.request.urlopen(url + "/v1/info", timeout=10) as resp:
            assert json.loads(resp.read())["model"] == "whisper-tiny.en"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_unknown_model_is_a_clear_error():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "streaming", "serve", "--model", "nosuch/model", "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "cannot load model 'nosuch/model'" in proc.stderr and "tiny.en" in proc.stderr


# ---------------------------------------------------------------- [whisper] / [qwen3_asr] reach the backend

class _Loaded:
    """What a recorded backend constructor returns: enough for load_configured_backend."""

    name = "recorded"

    def warmup(self) -> None:
        pass


def _configured(*argv: str):
    from streaming.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_model_sections_reach_the_backend_constructors(monkeypatch):
    import streaming.models as models
    from streaming.loading import load_configured_backend
    from streaming.models.options import Qwen3Options, WhisperDecodingOptions
    from streaming.models.qwen3_asr import Qwen3ASRBackend
    from streaming.models.whisper import WhisperBackend

    calls = []
    for cls, method in [(WhisperBackend, "from_embedded"), (WhisperBackend, "from_pretrained"),
                        (Qwen3ASRBackend, "from_pretrained")]:
        monkeypatch.setattr(cls, method, classmethod(
            lambda cls, name, _m=f"{cls.__name__}.{method}", **kw: calls.append((_m, name, kw)) or _Loaded()))
    kinds = {"tiny.en": "embedded-whisper", "ckpt/whisper": "whisper", "ckpt/qwen3": "qwen3_asr"}
    monkeypatch.setattr(models, "model_type", kinds.__getitem__)
    sets = ["--set", "whisper.agreement_n=3", "--set", "qwen3_asr.max_new_tokens_per_step=7",
            "--set", "qwen3_asr.repetition_guard=false", "--device", "cpu", "--dtype", "float32"]

    load_configured_backend(_configured(*sets))
    load_configured_backend(_configured("--model", "ckpt/whisper", *sets))
    load_configured_backend(_configured("--model", "ckpt/qwen3", *sets))
    load_configured_backend(_configured("--model", "ckpt/qwen3", "--window-s", "2", *sets))
    whisper = WhisperDecodingOptions(agreement_n=3)
    qwen3 = dataclasses.asdict(Qwen3Options(max_new_tokens_per_step=7, repetition_guard=False))
    assert [(m, n, kw.get("decoding")) for m, n, kw in calls[:2]] == [
        ("WhisperBackend.from_embedded", "tiny.en", whisper), ("WhisperBackend.from_pretrained", "ckpt/whisper", whisper)]
    assert calls[2][:2] == ("Qwen3ASRBackend.from_pretrained", "ckpt/qwen3")
    assert {k: calls[2][2][k] for k in qwen3} == qwen3 and "decoding" not in calls[2][2]
    assert calls[3][2]["window_s"] == 2  # [session] window_s (--window-s) is the model's default window too


def test_model_options_are_the_backends_own_keywords_and_defaults():
    """Qwen3Options mirrors Qwen3ASRBackend's keyword arguments; WhisperBackend takes decoding=."""
    from streaming.models.options import Qwen3Options
    from streaming.models.qwen3_asr import Qwen3ASRBackend
    from streaming.models.whisper import WhisperBackend

    params = inspect.signature(Qwen3ASRBackend.__init__).parameters
    for f in dataclasses.fields(Qwen3Options):
        assert f.name in params and params[f.name].default == f.default, f.name
    assert "decoding" in inspect.signature(WhisperBackend.__init__).parameters


@pytest.mark.slow
def test_qwen3_section_configures_a_real_checkpoint(tmp_path):
    """A saved tiny random Qwen3-ASR through the loader users hit, with [qwen3_asr] set by --set."""
    from transformers import Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    from streaming.loading import load_configured_backend
    from streaming.models.qwen3_asr import random_model

    model, tok = random_model("tiny", seed=1)
    model.save_pretrained(tmp_path)
    Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tok).save_pretrained(tmp_path)
    backend = load_configured_backend(_configured(
        "--model", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--threads", "1",
        "--set", "qwen3_asr.window_s=2", "--set", "qwen3_asr.max_utterance_s=30",
        "--set", "qwen3_asr.max_new_tokens_per_step=7", "--set", "qwen3_asr.max_tokens_per_audio_s=5",
        "--set", "qwen3_asr.repetition_guard=false"))
    assert (backend.default_window_s, backend.max_utterance_s, backend.max_new_tokens_per_step) == (2, 30.0, 7)
    assert backend.max_tokens_per_audio_s == 5.0 and backend.repetition_guard is False


@pytest.mark.slow
def test_whisper_section_configures_the_embedded_model():
    from streaming.loading import load_configured_backend

    backend = load_configured_backend(_configured("--device", "cpu", "--threads", "1",
                                                  "--set", "whisper.agreement_n=3", "--set", "whisper.max_tokens=100"))
    assert backend.decoding.agreement_n == 3 and backend.decoding.max_tokens == 100
