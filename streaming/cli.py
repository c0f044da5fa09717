"""Command line: ``python -m streaming serve|bench``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from .config import Config, ConfigError, load_config, set_field

SERVE_EPILOG = """\
examples:
  python -m streaming serve                              # embedded Whisper tiny.en on 127.0.0.1:8765
  python -m streaming serve --model base --language fr   # embedded multilingual Whisper base
  python -m streaming serve --config configs/qwen3-asr-0.6b.toml --device cuda
  python -m streaming serve --host 0.0.0.0 --certfile cert.pem --keyfile key.pem   # wss:// + https://

Any option of a config section can also be set with --set SECTION.KEY=VALUE
(e.g. --set vad.endpoint_silence_ms=800); see configs/default.toml for all of them.
"""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (see configs/); CLI options override it")
    p.add_argument("--model", metavar="NAME_OR_PATH",
                   help="embedded model (tiny.en [default], base), a local transformers checkpoint folder "
                        "(Whisper or Qwen3-ASR) or a hub id")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="model precision")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads for the inference worker (0 = all)")
    p.add_argument("--max-batch", type=int, metavar="N", help="most utterances decoded together in one batch")
    p.add_argument("--language", metavar="CODE", help="default language (sessions may override in start)")
    p.add_argument("--window-s", type=int, metavar="S", help="default encoder window 1-8 s (Qwen3-ASR)")
    p.add_argument("--step-s", type=float, metavar="S", help="default audio between partial updates")
    p.add_argument("--endpoint-silence-ms", type=int, metavar="MS", help="default silence that ends an utterance")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set any config option (repeatable)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streaming",
                                     description="Real-time streaming speech-recognition server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the WebSocket server (and the browser demo)",
                           description="Run the streaming WebSocket server at ws://HOST:PORT/v1/stream; "
                                       "the browser demo is at http://HOST:PORT/ and the overlay at /overlay.",
                           epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8765; 0 = any free port)")
    serve.add_argument("--max-sessions", type=int, metavar="N", help="concurrent sessions before refusing")
    serve.add_argument("--certfile", metavar="PEM", help="TLS certificate: serve wss:// and https://")
    serve.add_argument("--keyfile", metavar="PEM", help="TLS private key for --certfile")
    _add_model_args(serve)

    from .bench import add_bench_arguments

    bench = sub.add_parser("bench", help="stream a manifest over N concurrent sessions and report latency/WER",
                           description="Benchmark: starts a server on loopback, streams the manifest's clips at "
                                       "real-time pace over N concurrent sessions, prints JSON and saves a plot.")
    add_bench_arguments(bench)
    _add_model_args(bench)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file, then CLI flags, then --set overrides."""
    config = load_config(args.config)
    flags = {
        ("server", "host"): getattr(args, "host", None), ("server", "port"): getattr(args, "port", None),
        ("server", "max_sessions"): getattr(args, "max_sessions", None),
        ("server", "certfile"): getattr(args, "certfile", None),
        ("server", "keyfile"): getattr(args, "keyfile", None),
        ("model", "name"): args.model, ("model", "device"): args.device, ("model", "dtype"): args.dtype,
        ("model", "threads"): args.threads, ("engine", "max_batch"): args.max_batch,
        ("session", "language"): args.language, ("session", "window_s"): args.window_s,
        ("session", "step_s"): args.step_s, ("vad", "endpoint_silence_ms"): args.endpoint_silence_ms,
    }
    for (section, key), value in flags.items():
        if value is not None:
            set_field(getattr(config, section), key, value, where="--")
    for item in args.set:
        name, sep, raw = item.partition("=")
        section, dot, key = name.partition(".")
        if not sep or not dot or not hasattr(config, section):
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        set_field(getattr(config, section), key, _parse_value(raw), where=f"--set {section}.")
    return config


def _parse_value(raw: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_configured_backend(config: Config):
    from .models import load_backend

    t0 = time.perf_counter()
    backend = load_backend(config.model.name, device=config.model.device, dtype=config.model.dtype,
                           threads=config.model.threads, window_s=config.session.window_s)
    backend.warmup()
    logging.getLogger("streaming").info("model %s ready in %.1f s", backend.name, time.perf_counter() - t0)
    return backend


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(config)
    from .bench import run_bench

    return run_bench(args, config)


def _serve(config: Config) -> int:
    from .models import ModelLoadError
    from .server import run_server

    try:
        backend = load_configured_backend(config)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("streaming")

    async def main_async() -> None:
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(run_server(backend, config, ready=ready))
        server = await ready
        http = "https" if config.server.certfile else "http"
        base = f"{http}://{config.server.host}:{server.port}"
        log.info("streaming at %s", server.url)
        log.info("browser demo at %s/  (caption overlay at %s/overlay, model info at %s/v1/info)", base, base, base)
        if not config.server.certfile and config.server.host not in ("127.0.0.1", "localhost", "::1"):
            log.info("note: browsers open the microphone only on localhost or https; use --certfile/--keyfile "
                     "for other machines")
        await task

    try:
        _run(main_async())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {config.server.host}:{config.server.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
