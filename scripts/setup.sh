#!/usr/bin/env bash
# Idempotent set-up: system packages (when root and missing), .venv/, and the
# project installed into it with its test extras. Called by `make serve` and
# `make test`; safe to run again (it only does what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need_apt+=(libportaudio2)
ldconfig -p 2>/dev/null | grep -q libsndfile.so.1 || need_apt+=(libsndfile1)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: warning: missing system packages (${need_apt[*]}); install them with apt-get" >&2
  fi
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || { echo "setup: creating .venv"; python3 -m venv .venv; }
  echo "setup: installing the project into .venv (first time takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
