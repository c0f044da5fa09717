"""End-to-end benchmark: N concurrent sessions streaming a manifest at real-time pace.

``python -m benchmarks bench --streams 1,2,4 --manifest ../shared/eval/dev-full.jsonl``
starts the server in-process on loopback (or uses ``--url``), gives each of N
workers a share of the clips (one session per clip, clip + trailing silence,
then ``stop``), and reports WER, first-partial and final latency (p50/p95),
real-time factor (engine busy time / audio time), CPU and memory, as JSON and
a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from streaming.config import Config
from streaming.evaluation import Clip, eval_dir, load_manifest, wer
from streaming.loading import load_configured_backend
from streaming.server import BackgroundServer

from .loadgen import StreamResult, stream_audio, with_silence
from .plotting import plot_reports
from .report import latency_summary, percentile

log = logging.getLogger("benchmarks.bench")


HELD_FINAL_P95_S = 3.0
"""A run "holds" its streams when the p95 final latency after end of speech stays under this."""


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1", help="concurrent sessions; a comma list runs each (e.g. 1,2,4)")
    p.add_argument("--manifest", default=None, help="JSONL manifest (default ../shared/eval/dev-full.jsonl)")
    p.add_argument("--languages", default=None,
                   help="comma list of clip languages to use (default: en for English-only models, else all)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N clips")
    p.add_argument("--speed", type=float, default=1.0, help="1.0 = real time")
    p.add_argument("--trailing-silence-s", type=float, default=1.5)
    p.add_argument("--url", default=None, help="benchmark a running server instead of starting one")
    p.add_argument("--out", default="bench-results", help="folder for the JSON and the plot")


def run_bench(args: argparse.Namespace, config: Config) -> int:
    manifest = Path(args.manifest) if args.manifest else eval_dir() / "dev-full.jsonl"
    clips = load_manifest(manifest)
    backend = None
    if args.url is None:
        backend = load_configured_backend(config)
    multilingual = backend.multilingual if backend else True
    languages = (args.languages.split(",") if args.languages else (None if multilingual else ["en"]))
    if languages:
        clips = [c for c in clips if c.language in languages]
    if args.limit:
        clips = clips[: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for n in [int(x) for x in str(args.streams).split(",")]:
        report = _run_one(n, clips, args, config, backend)
        reports.append(report)
        path = out / f"bench-{report['model']}-{n}streams.json"
        path.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if k not in ("clips_detail", "latencies")}, indent=2),
              flush=True)
        log.info("wrote %s", path)
    held = [r["streams"] for r in reports if r["held_in_real_time"]]
    log.info("streams held in real time (p95 final latency <= %.1f s): %s", HELD_FINAL_P95_S,
             max(held) if held else "none")
    plot = out / f"bench-{reports[0]['model']}.png"
    plot_reports(reports, plot)
    log.info("wrote %s", plot)
    return 0


def _run_one(n: int, clips: list[Clip], args, config: Config, backend) -> dict[str, Any]:
    import psutil

    proc = psutil.Process()
    server_handle = None
    url = args.url
    if url is None:
        server_handle = BackgroundServer(backend, config)
        url = server_handle.url
    proc.cpu_percent(None)
    rss_peak = [proc.memory_info().rss]
    stop_sampling = threading.Event()

    def sample_memory() -> None:
        while not stop_sampling.wait(0.5):
            rss_peak[0] = max(rss_peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    busy0 = server_handle.server.engine.stats.busy_s if server_handle else 0.0
    t0 = time.perf_counter()
    results: dict[str, StreamResult] = asyncio.run(_stream_all(url, clips, n, args, config))
    wall = time.perf_counter() - t0
    stop_sampling.set()
    cpu = proc.cpu_percent(None)
    busy = (server_handle.server.engine.stats.busy_s - busy0) if server_handle else None
    model = server_handle.server.backend.name if server_handle else "remote"
    if server_handle:
        server_handle.close()
    audio_s = sum(r.audio_s for r in results.values())
    en = [c for c in clips if c.language == "en"]
    first = [x for r in results.values() for x in r.first_partial_latency_s]
    final = [x for r in results.values() for x in r.final_latency_s]
    report = {
        "model": model, "streams": n, "clips": len(clips), "audio_s": round(audio_s, 1),
        "wall_s": round(wall, 1),
        "wer_en": round(wer([c.text for c in en], [results[c.id].text for c in en]), 4) if en else None,
        "first_partial_latency_s": latency_summary(first), "final_latency_s": latency_summary(final),
        "rtf": round(busy / audio_s, 3) if busy is not None and audio_s else None,
        "cpu_percent": cpu, "rss_peak_mb": round(rss_peak[0] / 2**20), "speed": args.speed,
        "errors": sum(len(r.errors) for r in results.values()),
        # Held in real time: every session ended cleanly and finals kept up with speech.
        "held_in_real_time": bool(final) and percentile(final, 95) <= HELD_FINAL_P95_S
        and all(r.close_code == 1000 and not r.errors for r in results.values()),
        "clips_detail": {cid: {"text": r.text, "first_partial_s": r.first_partial_latency_s,
                               "final_s": r.final_latency_s} for cid, r in results.items()},
    }
    report["latencies"] = {"first_partial": first, "final": final}
    return report


async def _stream_all(url: str, clips: list[Clip], n: int, args, config: Config) -> dict[str, StreamResult]:
    queue: asyncio.Queue[Clip] = asyncio.Queue()
    for clip in clips:
        queue.put_nowait(clip)
    results: dict[str, StreamResult] = {}
    done = [0]

    async def worker() -> None:
        while not queue.empty():
            clip = queue.get_nowait()
            audio = with_silence(await asyncio.to_thread(clip.load), lead_s=0.3, trail_s=args.trailing_silence_s)
            start = {"language": clip.language} if clip.language != "en" or config.session.language else {}
            results[clip.id] = await stream_audio(url, audio, speed=args.speed, start_fields=start,
                                                  preroll_s=config.vad.preroll_ms / 1000)
            done[0] += 1
            log.info("[%d streams] %d/%d %s: %s", n, done[0], len(clips), clip.id, results[clip.id].text[:70])

    await asyncio.gather(*(worker() for _ in range(n)))
    return results
