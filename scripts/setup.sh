#!/usr/bin/env bash
# Idempotent set-up of .venv/. `scripts/setup.sh serve` (what `make serve` runs) installs only what
# serving needs; `scripts/setup.sh test` (what `make test` runs) adds the test, benchmark and client
# extras, the voice frameworks' venv (.venv/frameworks) and the system packages the tests drive
# (chromium, PortAudio, HAProxy). Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"
case "$mode" in
  serve) extras=""; system=(libsndfile1) ;;
  test)  extras="[test]"; system=(libsndfile1 libportaudio2 chromium haproxy) ;;
  *) echo "usage: scripts/setup.sh [serve|test]" >&2; exit 2 ;;
esac

need_apt=()
for pkg in "${system[@]}"; do
  case "$pkg" in
    chromium) [ -x /usr/bin/chromium ] || need_apt+=(chromium) ;;
    haproxy) [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy) ;;  # tests/test_haproxy.py
    libportaudio2) ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need_apt+=(libportaudio2) ;;
    libsndfile1) ldconfig -p 2>/dev/null | grep -q libsndfile.so.1 || need_apt+=(libsndfile1) ;;
  esac
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: warning: missing system packages (${need_apt[*]}); install them with apt-get" >&2
  fi
fi

stamp=".venv/.installed-$mode"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || { echo "setup: creating .venv"; python3 -m venv .venv; }
  echo "setup: installing the project${extras} into .venv (first time takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras}"
  touch "$stamp"
  # a test install holds everything a serve install does
  [ "$mode" = test ] && touch .venv/.installed-serve
fi

# The Smart Turn v3.2 end-of-turn model of turn_detection = "smart" (streaming/smart_turn.py), in both
# modes: .venv/share/streaming-asr/smart-turn-v3.2-cpu.onnx, taken from the pipecat-ai 1.14.0 wheel
# (model and wheel by Daily, BSD-2-Clause) and checked against its SHA-256. Quick when it is there.
.venv/bin/python scripts/fetch_smart_turn.py

# The speaker encoder of diarize (streaming/speaker_encoder.py), in both modes:
# .venv/share/streaming-asr/resemblyzer-pretrained.pt, the GE2E weights taken from the resemblyzer 0.1.4 wheel
# (Apache-2.0) and checked against their SHA-256; the network around them is ours, so resemblyzer itself
# (and its librosa) is not installed.
.venv/bin/python scripts/fetch_speaker_encoder.py

# The voice frameworks (LiveKit Agents, Pipecat) for tests/test_frameworks.py, in a venv of their own
# inside .venv/: their pins clash with the server's (tests/frameworks/requirements.txt says which).
fw=.venv/frameworks
fw_req=tests/frameworks/requirements.txt
if [ "$mode" = test ] && { [ ! -f "$fw/.installed" ] || [ "$fw_req" -nt "$fw/.installed" ]; }; then
  [ -x "$fw/bin/python" ] || { echo "setup: creating $fw"; python3 -m venv "$fw"; }
  echo "setup: installing the voice frameworks into $fw"
  "$fw/bin/python" -m pip install -q --upgrade pip
  "$fw/bin/python" -m pip install -q -r "$fw_req"
  touch "$fw/.installed"
fi
