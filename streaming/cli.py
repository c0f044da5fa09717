"""Command line: ``python -m streaming serve`` (the benchmarks: ``python -m benchmarks``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import Config, ConfigError, load_config, set_field
from .loading import load_configured_backend
from .logs import setup_logging

SERVE_EPILOG = """\
examples:
  python -m streaming serve                              # embedded Whisper tiny.en on 127.0.0.1:8765
  python -m streaming serve --model base --language fr   # embedded multilingual Whisper base
  python -m streaming serve --config configs/qwen3-asr-0.6b.toml --device cuda
  python -m streaming serve --host 0.0.0.0 --certfile cert.pem --keyfile key.pem --api-keys-file keys.txt
                                                         # wss:// + https://, API keys required
  python -m streaming serve --api-key "$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"

security: with API keys set, a session needs one (Authorization: Bearer KEY, the
WebSocket subprotocol "authorization.bearer.KEY" beside "streaming-asr", or ?token=KEY);
/metrics and the load figures of /v1/info need one too (unless --info-public).
Serving a non-loopback --host without keys needs --allow-unauthenticated.

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
    p.add_argument("--log-format", choices=["text", "json"],
                   help="text (default) or json: one JSON object per line with every event field")


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
    sec = serve.add_argument_group("security")
    sec.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                     help="require this API key (repeatable); URL-safe characters (letters, digits, -._~)")
    sec.add_argument("--api-keys-file", metavar="FILE",
                     help="file of API keys, one 'KEY [max_sessions]' per line, # comments")
    sec.add_argument("--max-sessions-per-key", type=int, metavar="N",
                     help="concurrent sessions one key may hold (0 = no per-key limit; the file may set its own)")
    sec.add_argument("--allowed-origin", action="append", dest="allowed_origins", metavar="ORIGIN",
                     help="browser origin allowed to connect, e.g. https://app.example.com (repeatable; "
                          "'*' = any; default: the server's own origin and localhost)")
    sec.add_argument("--allow-unauthenticated", action="store_true", default=None,
                     help="serve a non-loopback --host without API keys (otherwise refused)")
    sec.add_argument("--info-public", action="store_true", default=None,
                     help="show load figures in /v1/info and /metrics without an API key")
    _add_model_args(serve)
    # The benchmarks live beside the package (python -m benchmarks) and import this module, never the reverse.
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file, then CLI flags, then --set overrides."""
    config = load_config(args.config)
    flags = {
        ("server", "host"): getattr(args, "host", None), ("server", "port"): getattr(args, "port", None),
        ("server", "max_sessions"): getattr(args, "max_sessions", None),
        ("server", "certfile"): getattr(args, "certfile", None),
        ("server", "keyfile"): getattr(args, "keyfile", None),
        ("server", "api_keys"): getattr(args, "api_keys", None),
        ("server", "api_keys_file"): getattr(args, "api_keys_file", None),
        ("server", "max_sessions_per_key"): getattr(args, "max_sessions_per_key", None),
        ("server", "allowed_origins"): getattr(args, "allowed_origins", None),
        ("server", "allow_unauthenticated"): getattr(args, "allow_unauthenticated", None),
        ("server", "info_public"): getattr(args, "info_public", None),
        ("server", "log_format"): getattr(args, "log_format", None),
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        setup_logging(args.log_level, config.server.log_format)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _serve(config)


def _serve(config: Config) -> int:
    from .auth import check_exposure, load_keys
    from .models import ModelLoadError
    from .server import run_server

    opts = config.server
    try:  # before the model loads: a refused configuration should fail at once
        keys = load_keys(opts.api_keys, opts.api_keys_file, opts.max_sessions_per_key)
        check_exposure(opts.host, keys, opts.allow_unauthenticated)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        backend = load_configured_backend(config)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("streaming")

    async def main_async() -> None:
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(run_server(backend, config, ready=ready))
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            task.result()  # start-up failed: raise its error
        server = ready.result()
        http = "https" if config.server.certfile else "http"
        base = f"{http}://{config.server.host}:{server.port}"
        log.info("streaming at %s", server.url)
        log.info("browser demo at %s/  (caption overlay at %s/overlay, model info at %s/v1/info)", base, base, base)
        if keys:
            log.info("API keys required: open the demo as %s/?token=YOUR_KEY; metrics at %s/metrics", base, base)
        if not config.server.certfile and config.server.host not in ("127.0.0.1", "localhost", "::1"):
            log.info("note: browsers open the microphone only on localhost or https; use --certfile/--keyfile "
                     "for other machines")
        await task

    try:
        _run(main_async())
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
