"""``python -m benchmarks bench|ramp|turns|translate|qwen3 ...``: the benchmarks' command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from streaming.cli import add_config_arguments, config_from_args
from streaming.config import ConfigError
from streaming.logs import setup_logging

STANDALONE = {
    "qwen3": ("benchmarks.qwen3", "Qwen3-ASR model-only streaming benchmark (own options: qwen3 --help)"),
    "qwen3-gpu": ("benchmarks.qwen3_gpu", "Qwen3-ASR GPU path benchmark (own options: qwen3-gpu --help)"),
}
"""Benchmarks with their own argument parser (no server, no configured model): name -> (module, help)."""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The configuration flags of a tool that loads the configured model but serves nothing."""
    add_config_arguments(p, skip_groups=("server", "security"))


def _standalone() -> dict[str, tuple[str, str]]:
    """The standalone benchmarks whose module is present in this checkout."""
    return {name: v for name, v in STANDALONE.items() if importlib.util.find_spec(v[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    """Subcommands over the configured model (bench, ramp, turns) plus the standalone ones, listed for --help."""
    from .bench import add_bench_arguments
    from .ramp import RAMP_DESCRIPTION, RAMP_EPILOG, add_ramp_arguments
    from .translate import TRANSLATE_DESCRIPTION, add_translate_arguments
    from .turns import TURNS_DESCRIPTION, add_turns_arguments

    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="Benchmarks of the streaming server (run from the repo root).")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="stream a manifest over N concurrent sessions and report latency/WER",
                           description="Benchmark: starts a server on loopback, streams the manifest's clips at "
                                       "real-time pace over N concurrent sessions, prints JSON and saves a plot.")
    add_bench_arguments(bench)
    _add_model_args(bench)
    ramp = sub.add_parser("ramp", help="add long real-time streams one step at a time until latency crosses a "
                                       "target or streams are refused", description=RAMP_DESCRIPTION,
                          epilog=RAMP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ramp_arguments(ramp)
    _add_model_args(ramp)
    turns = sub.add_parser("turns", help="false ends of turn and end-of-turn latency per turn-detection mode "
                                         "(silence/smart), over real sockets", description=TURNS_DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_turns_arguments(turns)
    _add_model_args(turns)
    translate = sub.add_parser("translate", help="live translation (task translate) vs offline: chrF per "
                                                 "language (a multilingual model: --model base)",
                               description=TRANSLATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_translate_arguments(translate)
    _add_model_args(translate)
    for name, (_, help_text) in _standalone().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    standalone = _standalone()
    if argv and argv[0] in standalone:  # its own parser takes every further argument
        return importlib.import_module(standalone[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        setup_logging(args.log_level, config.server.log_format)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "ramp":
        from .ramp import run_ramp

        return run_ramp(args, config)
    if args.command == "translate":
        from .translate import run_translate

        return run_translate(args, config)
    if args.command == "turns":
        from .turns import run_turns

        return run_turns(args, config)
    from .bench import run_bench

    return run_bench(args, config)


if __name__ == "__main__":
    raise SystemExit(main())
