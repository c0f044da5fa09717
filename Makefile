# The two commands of the README:
#   make serve   start the server with the embedded Whisper tiny.en model
#   make test    run the whole test suite
HOST ?= 127.0.0.1
PORT ?= 8765
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup setup-serve serve test test-fast bench

setup:
	@bash scripts/setup.sh test

setup-serve:
	@bash scripts/setup.sh serve

serve: setup-serve
	.venv/bin/python -m streaming serve --host $(HOST) --port $(PORT) $(ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	.venv/bin/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

bench: setup
	.venv/bin/python -m benchmarks bench --streams 1 --manifest ../shared/eval/dev-full.jsonl $(ARGS)
