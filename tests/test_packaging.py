"""What `make serve` installs is all serving needs: the server never imports test, benchmark or SDK packages."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_FOR_SERVING = ["pytest", "hypothesis", "playwright", "jiwer", "matplotlib", "psutil", "openai", "deepgram",
                   "faster_whisper", "ctranslate2", "sounddevice"]


def test_serving_dependencies_hold_no_test_or_benchmark_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower()
             for dep in project["dependencies"]}
    assert not names & {"pytest", "hypothesis", "playwright", "jiwer", "matplotlib", "psutil", "openai",
                        "deepgram-sdk", "faster-whisper", "ctranslate2", "sounddevice"}
    extras = project["optional-dependencies"]
    assert {"bench", "test", "client"} <= set(extras)


def test_the_server_starts_without_the_extras():
    """Import everything `streaming serve` imports with the extras made unimportable."""
    blocked = ", ".join(repr(name) for name in NOT_FOR_SERVING)
    code = f"""
import sys
for name in ({blocked},):
    sys.modules[name] = None  # import of it raises ImportError
from streaming import cli, server, session, link, codecs, engine, config
from streaming.codecs import CODECS
parser = cli.build_parser() if hasattr(cli, "build_parser") else None
print(sorted(CODECS))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "/v1/stream" in out.stdout


def test_serve_installs_only_the_serving_set():
    script = (ROOT / "scripts" / "setup.sh").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "serve) extras=\"\"" in script and "chromium" not in script.split("serve)")[1].split(";;")[0]
    serve_rule = makefile.split("\nserve:")[1].split("\n\n")[0]
    assert "setup-serve" in serve_rule
