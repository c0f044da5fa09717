"""Command line: ``python -m streaming serve`` (the benchmarks: ``python -m benchmarks``).

The flags are generated from the option dataclasses (:mod:`streaming.config`): a field declared
with ``opt(flag=...)`` gets that flag, its help from the field's docstring, its type, choices and
range from the field; every other field is reachable with ``--set SECTION.KEY=VALUE``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

from .config import SECTIONS, Config, ConfigError, load_config, set_field
from .knobs import Knob, knobs
from .loading import load_configured_backend
from .logs import setup_logging

SERVE_EPILOG = f"""\
examples:
  python -m streaming serve                              # embedded Whisper tiny.en on 127.0.0.1:8765
  python -m streaming serve --model base --language fr   # embedded multilingual Whisper base
  python -m streaming serve --config configs/qwen3-asr-0.6b.toml --device cuda
  python -m streaming serve --host 0.0.0.0 --certfile cert.pem --keyfile key.pem --api-keys-file keys.txt
                                                         # wss:// + https://, API keys required
  python -m streaming serve --api-key "$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
  python -m streaming serve --set whisper.agreement_n=3 --set vad.endpoint_silence_ms=800

security: with API keys set, a session needs one (Authorization: Bearer KEY, the
WebSocket subprotocol "authorization.bearer.KEY" beside "streaming-asr", or ?token=KEY);
/metrics and the load figures of /v1/info need one too (unless --info-public).
Serving a non-loopback --host without keys needs --allow-unauthenticated.

Any option of a config section can also be set with --set SECTION.KEY=VALUE
(sections: {", ".join(SECTIONS)});
configs/default.toml lists every one with its default.
"""

GROUP_ORDER = ("server", "security", "model", "engine", "session", "vad", "whisper", "qwen3_asr", "logging")
"""The order of the flag groups in ``--help`` (a group not listed here comes after them)."""
GROUP_HELP = {
    "security": "API keys and browser origins (see security below).",
    "session": "Session defaults: a client's start message may override them.",
    "logging": "Log lines on stderr.",
}
"""A group's description where its section's class docstring does not say it."""


def flag_knobs() -> Iterator[tuple[str, Knob, str]]:
    """(section, knob, argparse dest) of every option with a dedicated flag.

    The dest is the flag's own name (``--max-sessions`` → ``max_sessions``), except that a repeatable
    list flag (``--api-key``) collects into the field's name (``api_keys``).
    """
    for section, cls in SECTIONS.items():
        for knob in knobs(cls).values():
            if knob.flag is not None:
                dest = knob.name if knob.kind is list else knob.flag.removeprefix("--").replace("-", "_")
                yield section, knob, dest


def add_config_arguments(parser: argparse.ArgumentParser, skip_groups: tuple[str, ...] = ()) -> None:
    """``--config``, ``--set``, ``--log-level`` and the flag of every option, grouped by section."""
    files = parser.add_argument_group("configuration", "A TOML file, then the flags, then --set.")
    files.add_argument("--config", metavar="FILE", help="TOML config file (see configs/); CLI options override it")
    files.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="set any config option (repeatable), e.g. --set whisper.agreement_n=3")
    chosen = [(knob.rules.group or section, section, knob, dest) for section, knob, dest in flag_knobs()
              if (knob.rules.group or section) not in skip_groups]
    rank = {name: i for i, name in enumerate(GROUP_ORDER)}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, section, knob, dest in sorted(chosen, key=lambda c: rank.get(c[0], len(rank))):  # stable sort
        if name not in groups:
            doc = GROUP_HELP.get(name) or (SECTIONS[name].__doc__ if name in SECTIONS else None)
            groups[name] = parser.add_argument_group(name, doc)
        groups[name].add_argument(knob.flag, dest=dest, **_argument(knob))
    if "logging" not in groups:
        groups["logging"] = parser.add_argument_group("logging", GROUP_HELP["logging"])
    groups["logging"].add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                                   help="the lowest level logged (default: INFO)")


def _argument(knob: Knob) -> dict[str, Any]:
    """``add_argument`` keywords for a knob: its type, choices, placeholder and help; default None = unset."""
    kwargs: dict[str, Any] = {"default": None, "help": _help(knob)}
    if knob.kind is bool:
        kwargs["action"] = "store_true" if knob.default is False else argparse.BooleanOptionalAction
        return kwargs
    if knob.kind is list:
        kwargs |= {"action": "append", "type": knob.item or str}
    elif knob.kind in (int, float, str):
        kwargs["type"] = knob.kind
    if knob.rules.choices is not None:
        kwargs["choices"] = list(knob.rules.choices)
    else:
        kwargs["metavar"] = knob.rules.metavar or _metavar(knob)
    return kwargs


def _metavar(knob: Knob) -> str:
    """The value placeholder from the unit in the name (``_ms`` → MS, ``_s`` → S) or the type."""
    for unit in ("ms", "s"):
        if knob.name.endswith(f"_{unit}"):
            return unit.upper()
    return "N" if knob.kind in (int, float) else "VALUE"


def _help(knob: Knob) -> str:
    """The field's docstring on one line (reST markup dropped), then its range and default."""
    text = re.sub(r"``(.+?)``", r"\1", " ".join(knob.doc.split())).removesuffix(".").replace("%", "%%")
    notes = []
    low, high = knob.rules.low, knob.rules.high
    if knob.kind in (int, float) and low is not None and high is not None:
        notes.append(f"{low}-{high}")
    if knob.kind is list:
        notes.append("repeatable")
    elif knob.kind is not bool and knob.default not in (None, ""):
        notes.append(f"default: {knob.default}")
    return f"{text} ({'; '.join(notes)})" if notes else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streaming",
                                     description="Real-time streaming speech-recognition server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the WebSocket server (and the browser demo)",
                           description="Run the streaming WebSocket server at ws://HOST:PORT/v1/stream; "
                                       "the browser demo is at http://HOST:PORT/ and the overlay at /overlay.",
                           epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(serve)
    # The benchmarks live beside the package (python -m benchmarks) and import this module, never the reverse.
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file, then CLI flags, then --set overrides (a parser without some flags leaves those unset)."""
    config = load_config(getattr(args, "config", None))
    for section, knob, dest in flag_knobs():
        value = getattr(args, dest, None)
        if value is not None:
            setattr(getattr(config, section), knob.name, knob.check(knob.flag, value))
    for item in getattr(args, "set", None) or []:
        name, sep, raw = item.partition("=")
        section, dot, key = name.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        if section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        set_field(getattr(config, section), key, _parse_value(raw), name=f"--set {section}.{key}")
    return config


def _parse_value(raw: str) -> Any:
    """A ``--set`` value as TOML reads it (``3``, ``true``, ``"x"``, ``[1, 2]``); anything else is a string."""
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
