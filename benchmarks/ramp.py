"""Ramp benchmark: how many long real-time streams the server holds at a latency target.

``python -m benchmarks ramp`` starts the configured model in an in-process server on loopback
(or loads ``--url``: a running server or a proxy in front of several), then adds streams one
step at a time over real sockets. The streams, the levels and the stopping rule: see
:data:`RAMP_DESCRIPTION`; the load itself is :mod:`benchmarks.ramp_runner`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import platform
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from streaming.config import Config
from streaming.evaluation import eval_dir, load_manifest, wer

from .plotting import plot_ramp
from .ramp_plan import GAP_RANGE_S, ClipFacts, held_at_target
from .ramp_runner import Ramp, RampSettings

log = logging.getLogger("benchmarks.ramp")

RAMP_DESCRIPTION = f"""\
Ramp benchmark over real sockets. Each stream is English clips of the manifest joined
into one long multi-utterance stream ({GAP_RANGE_S[0]}-{GAP_RANGE_S[1]} s of silence between
clips, --stream-s long), sent at a real-time pace (--speed); a stream that ends is followed
by a new one on a new session. The ramp starts --start-streams streams, holds them --level-s,
then adds --step-streams more, and so on. At each level it reports, over the utterances whose speech
ended during the level: first-partial latency (speech start to first partial) and final
latency (speech end to final), p50/p95; streams offered, held and refused (fatal error
overloaded / too_many_sessions, or a 429/503 handshake: recorded as refused, not failed);
RTF (engine busy seconds / audio seconds, from the in-process engine or the server's
/v1/info); CPU (this process, and the whole machine) and RSS; WER of the finals against the
clips' references. It stops at the first level whose p95 final or p95 first partial is over
--target-s, that has refused or failed streams, or at --max-streams, and answers "streams
held at the target". Each level's WER is scored again at the end, so late finals count.
Writes ramp-MODEL.json and ramp-MODEL.png into --out."""

RAMP_EPILOG = """\
examples:
  python -m benchmarks ramp                                   # embedded tiny.en in-process, 1, 2, 3... streams
  python -m benchmarks ramp --start-streams 4 --step-streams 2 --max-streams 24 --out bench/ramp/after
  python -m benchmarks ramp --url ws://127.0.0.1:8765/v1/stream --out bench/ramp/before   # a running server
  python -m benchmarks ramp --url "ws://lb:8080/v1/stream?token=$KEY"   # through HAProxy; the key reads /v1/info

With --url the model options are not used (the server has its own), except --set vad.preroll_ms
which must match the server's. With an in-process server, this process's CPU and RSS include
the server's; the client's share is small (a few % of a core per stream)."""


def add_ramp_arguments(p: argparse.ArgumentParser) -> None:
    """The ramp's own options (the model options come from ``streaming.cli``)."""
    p.add_argument("--url", default=None, help="load a running server (ws://HOST:PORT/v1/stream[?token=KEY]) "
                                               "instead of starting one in-process")
    p.add_argument("--target-s", type=float, default=1.5, help="latency target for p95 final and first partial")
    p.add_argument("--start-streams", type=int, default=1, help="streams at the first level")
    p.add_argument("--step-streams", type=int, default=1, help="streams added per level")
    p.add_argument("--max-streams", type=int, default=32, help="stop after the level with this many streams")
    p.add_argument("--level-s", type=float, default=60.0, help="wall seconds each level is measured")
    p.add_argument("--grace-s", type=float, default=None,
                   help="after a level, how long to wait for its outstanding finals (default 3 x --target-s)")
    p.add_argument("--stream-s", type=float, nargs="+", default=[60.0, 120.0], metavar="S",
                   help="length of each joined stream: MIN [MAX] seconds of audio (default 60 120)")
    p.add_argument("--speed", type=float, default=1.0, help="pace: 1.0 = real time, 2.0 = twice as fast")
    p.add_argument("--manifest", default=None, help="JSONL manifest (default ../shared/eval/dev-full.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream plans (same seed, same streams)")
    p.add_argument("--out", default="bench/ramp", help="folder for the JSON and the plot")


def _stream_range_s(args: argparse.Namespace) -> tuple[float, float]:
    return (args.stream_s[0], args.stream_s[-1])


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad ramp options before any model loads (a clear error, not a bad run)."""
    stream_s = _stream_range_s(args)
    checks = {"--start-streams must be >= 1": args.start_streams >= 1,
              "--step-streams must be >= 1": args.step_streams >= 1,
              "--max-streams must be >= --start-streams": args.max_streams >= args.start_streams,
              "--speed must be > 0 (the ramp streams at a pace)": args.speed > 0,
              "--level-s and --target-s must be > 0": args.level_s > 0 and args.target_s > 0,
              "--stream-s takes MIN [MAX] with 0 < MIN <= MAX":
                  len(args.stream_s) <= 2 and 0 < stream_s[0] <= stream_s[1]}
    for message, ok in checks.items():
        if not ok:
            raise ValueError(message)


def settings_from_args(args: argparse.Namespace, url: str, preroll_s: float, multilingual: bool) -> RampSettings:
    """The ramp's settings from the command line (checked by :func:`check_args`) and the target's facts."""
    grace_s = args.grace_s if args.grace_s is not None else 3 * args.target_s
    return RampSettings(url=url, target_s=args.target_s, start=args.start_streams, step=args.step_streams,
                        max_streams=args.max_streams, level_s=args.level_s, grace_s=grace_s,
                        stream_s=_stream_range_s(args),
                        speed=args.speed, preroll_s=preroll_s, seed=args.seed,
                        start_fields={"language": "en"} if multilingual else {})


def info_url(stream_url: str) -> tuple[str, dict[str, str]]:
    """The ``/v1/info`` URL beside a stream URL, and the Authorization header its ``?token=`` gives."""
    parts = urllib.parse.urlsplit(stream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    token = urllib.parse.parse_qs(parts.query).get("token", [None])[0]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/v1/info", "", "")), headers


def fetch_info(stream_url: str) -> dict[str, Any]:
    """The server's ``/v1/info`` (blocking; call it off the event loop)."""
    url, headers = info_url(stream_url)
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as reply:
        return json.loads(reply.read())


class RemoteTarget:
    """A running server: its facts and engine figures come from ``/v1/info``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.info = fetch_info(url)
        self.model = str(self.info.get("model", "remote"))
        self.multilingual = bool(self.info.get("multilingual", False))
        if "engine" not in self.info:
            log.warning("/v1/info shows no engine figures (keys set and no ?token=): RTF will be unknown")

    async def busy_s(self) -> float | None:
        info = await asyncio.to_thread(fetch_info, self.url)
        return info.get("engine", {}).get("busy_s")

    def close(self) -> None:
        pass


class InProcessTarget:
    """The configured model behind a server on a free loopback port, in this process."""

    def __init__(self, config: Config) -> None:
        from streaming.loading import load_configured_backend
        from streaming.server import BackgroundServer

        config = copy.deepcopy(config)
        config.server.host, config.server.port = "127.0.0.1", 0
        backend = load_configured_backend(config)
        self.handle = BackgroundServer(backend, config)
        self.url = self.handle.url
        self.model = backend.name
        self.multilingual = bool(backend.multilingual)

    async def busy_s(self) -> float | None:
        return self.handle.server.engine.stats.busy_s

    def close(self) -> None:
        self.handle.close()


def load_clips(manifest: Path) -> tuple[list[ClipFacts], dict[str, Any]]:
    """The manifest's English clips: their facts for planning and their audio."""
    clips = [c for c in load_manifest(manifest) if c.language == "en"]
    if not clips:
        raise ValueError(f"{manifest} has no English clips")
    audio = {c.id: c.load() for c in clips}
    return [ClipFacts(c.id, int(audio[c.id].size), c.text) for c in clips], audio


def progress_line(level: dict[str, Any]) -> str:
    """One line per level for the terminal."""
    def pair(summary: dict[str, Any]) -> str:
        if summary["p95"] is None:
            return "-"
        return f"{summary['p50']:.2f}/{summary['p95']:.2f} s (n={summary['n']})"

    wer_text = "-" if level["wer"] is None else f"{100 * level['wer']:.1f}%"
    cpu = "-" if level["cpu_process_percent"] is None else f"{level['cpu_process_percent']:.0f}%"
    machine = "-" if level["cpu_machine_percent"] is None else f"{level['cpu_machine_percent']:.0f}%"
    return (f"[{level['streams_offered']:>3} offered] held {level['streams_held']}, refused {level['refused']}, "
            f"failed {level['failed']} | first partial p50/p95 {pair(level['first_partial_latency_s'])} | "
            f"final {pair(level['final_latency_s'])} | RTF {level['rtf']} | CPU {cpu} (machine {machine}) | "
            f"RSS {level['rss_mb']} MB | WER {wer_text} | {level['crossed'] or 'held'}")


def build_report(levels: list[dict[str, Any]], settings: RampSettings, target: Any, manifest: Path,
                 wall_s: float) -> dict[str, Any]:
    """The whole run as JSON: settings, every level, the answer, and WER over all measured clips."""
    refs = [r for level in levels for r in level["references"]]
    hyps = [h for level in levels for h in level["hypotheses"]]
    stopped = next((level["crossed"] for level in levels if level["crossed"] is not None), "max_streams")
    held = held_at_target([(level["streams_held"], level["crossed"]) for level in levels])
    return {"benchmark": "ramp", "model": target.model, "url": settings.url if isinstance(target, RemoteTarget)
            else "in-process", "target_s": settings.target_s, "start": settings.start, "step": settings.step,
            "max_streams": settings.max_streams, "level_s": settings.level_s, "grace_s": settings.grace_s,
            "stream_s": list(settings.stream_s), "speed": settings.speed, "seed": settings.seed,
            "manifest": str(manifest), "host": platform.node(), "cpu_count": os.cpu_count(),
            "wall_s": round(wall_s, 1), "streams_held_at_target": held, "stopped_because": stopped,
            "wer": round(wer(refs, hyps), 4) if any(r.strip() for r in refs) else None,
            "levels": levels}


def run_ramp(args: argparse.Namespace, config: Config) -> int:
    """``python -m benchmarks ramp``: run the ramp, print a line per level, write JSON and the plot."""
    manifest = Path(args.manifest) if args.manifest else eval_dir() / "dev-full.jsonl"
    try:
        check_args(args)
        clips, audio = load_clips(manifest)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        target = RemoteTarget(args.url) if args.url else InProcessTarget(config)
    except OSError as exc:  # a --url that does not answer /v1/info
        print(f"error: cannot read {info_url(args.url)[0]}: {exc}", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args, target.url, config.vad.preroll_ms / 1000, target.multilingual)
        print(f"ramp: {target.model} at {target.url}, target {settings.target_s} s, {len(clips)} clips", flush=True)
        t0 = time.perf_counter()
        ramp = Ramp(settings, clips, audio, target.busy_s)
        levels = asyncio.run(ramp.run(lambda level: print(progress_line(level), flush=True)))
        report = build_report(levels, settings, target, manifest, time.perf_counter() - t0)
    finally:
        target.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", report["model"])
    (out / f"ramp-{name}.json").write_text(json.dumps(report, indent=1))
    plot_ramp(report, out / f"ramp-{name}.png")
    print(f"streams held at the target ({settings.target_s} s): {report['streams_held_at_target']} "
          f"(stopped: {report['stopped_because']}); WER {report['wer']}; "
          f"wrote {out / f'ramp-{name}.json'} and {out / f'ramp-{name}.png'}", flush=True)
    return 0
