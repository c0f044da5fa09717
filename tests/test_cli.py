"""The real command line: `python -m streaming serve` as a user runs it."""

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


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "streaming", "serve", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--host", "--port", "--model", "--config", "--certfile", "--language", "--window-s", "--set"):
        assert flag in out
    assert "browser demo" in out


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
