"""Soak: real speech looped into ONE session for a long time, faster than real time.

    .venv/bin/python scripts/soak.py --minutes 30 --speed 2     # the long run (about 15 min)
    .venv/bin/python scripts/soak.py --minutes 2 --speed 2      # what CI runs (tests/test_soak.py)
    .venv/bin/python scripts/soak.py --minutes 10 --speed 0     # push 10 min as fast as possible

Starts the server in-process on loopback with the embedded model and streams
one *block* of English clips of ``dev-full.jsonl`` (back to back, 0.8 s of
silence between them, as long as one window) again and again until
``--minutes`` of audio have gone in, sampling the process RSS every second.
The first and the last window hold the same audio, so they compare like for
like. Reports, for the first and the last window of stream time
(``--window-minutes``, default 5, or a third of the run when shorter; with
``--speed 0``, as fast as the server lets the client send, windows of wall
time and no latency, since nothing is paced): RSS,
final latency after the end of each utterance (p50/p95), the engine's mean
batch time, and the whole run's WER, as JSON (``--out``). Flat means the last
window is no worse than the first: no leak, no slowdown with session age.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streaming.config import Config  # noqa: E402
from streaming.evaluation import dev_clips, wer  # noqa: E402
from benchmarks.loadgen import stream_audio  # noqa: E402
from streaming.server import BackgroundServer  # noqa: E402

GAP_S = 0.8
SAMPLE_RATE_HZ = 16_000


def soak_audio(minutes: float, block_s: float) -> tuple[np.ndarray, list[str], float]:
    """A block of English dev-full clips (with gaps) at least ``block_s`` long, repeated to at least
    ``minutes`` of audio; the texts in order, and the block's length in seconds."""
    clips = [c for c in dev_clips(full=True) if c.language == "en"]
    gap = np.zeros(int(GAP_S * SAMPLE_RATE_HZ), np.float32)
    parts, texts, size = [], [], 0
    for clip in clips:
        if size >= block_s * SAMPLE_RATE_HZ:
            break
        audio = clip.load()
        parts += [gap, audio]
        texts.append(clip.text)
        size += gap.size + audio.size
    block = np.concatenate(parts)
    repeats = max(2, int(np.ceil(minutes * 60 * SAMPLE_RATE_HZ / block.size)))
    return np.tile(block, repeats), texts * repeats, block.size / SAMPLE_RATE_HZ


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def run_soak(url: str, server: Any, minutes: float, speed: float,
                   window_minutes: float | None = None) -> dict[str, Any]:
    """Stream the soak audio into one session on ``url``; measure RSS and latency per window."""
    window_s = 60 * (window_minutes if window_minutes else min(5.0, minutes / 3))
    audio, texts, block_s = soak_audio(minutes, window_s)
    window_s = block_s  # windows are whole blocks: the same audio first and last
    proc = psutil.Process(os.getpid())
    samples: list[tuple[float, float]] = []  # (wall seconds since start, RSS MB)
    batches: list[tuple[float, int, float]] = []  # (wall, batches so far, busy seconds so far)
    t0 = time.perf_counter()

    async def sample() -> None:
        while True:
            wall = time.perf_counter() - t0
            samples.append((wall, proc.memory_info().rss / 2**20))
            stats = server.engine.stats
            batches.append((wall, stats.batches, stats.busy_s))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    try:
        result = await stream_audio(url, audio, speed=speed, chunk_s=0.1, timeout_s=minutes * 60 * 4 + 300)
    finally:
        sampler.cancel()
    audio_s = audio.size / SAMPLE_RATE_HZ

    wall_s = time.perf_counter() - t0
    # Windows in stream time; unpaced (speed 0), wall time stands in for it.
    scale = speed if speed > 0 else audio_s / max(wall_s, 1e-9)
    finals = [(t, e) for t, e in result.events if e["type"] == "final"]
    latency = [(e["end_s"], t - e["end_s"] / speed) for t, e in finals if e["text"]] if speed > 0 else []

    def window(first: bool) -> dict[str, Any]:
        lo, hi = (0.0, window_s) if first else (audio_s - window_s, audio_s)
        lat = [x for s, x in latency if lo <= s < hi]
        rss = [m for w, m in samples if lo <= w * scale < hi]
        b = [(w, n, busy) for w, n, busy in batches if lo <= w * scale < hi]
        mean_batch_ms = None
        if len(b) >= 2 and b[-1][1] > b[0][1]:
            mean_batch_ms = round(1000 * (b[-1][2] - b[0][2]) / (b[-1][1] - b[0][1]), 1)
        return {"stream_s": [round(lo), round(hi)], "finals": len(lat),
                "final_latency_p50_s": percentile(lat, 50), "final_latency_p95_s": percentile(lat, 95),
                "rss_mb_median": round(float(np.median(rss)), 1) if rss else None,
                "rss_mb_max": round(max(rss), 1) if rss else None, "mean_batch_ms": mean_batch_ms}

    return {
        "audio_s": round(audio_s, 1), "speed": speed, "wall_s": round(wall_s, 1),
        "utterances_expected": len(texts), "finals": len(finals), "finals_with_text": sum(1 for _, e in finals if e["text"]),
        "errors": result.errors, "close_code": result.close_code,
        "wer": round(wer([" ".join(texts)], [result.text]), 4),
        "first_window": window(True), "last_window": window(False),
        "rss_mb_start": round(samples[0][1], 1) if samples else None,
        "rss_mb_end": round(samples[-1][1], 1) if samples else None,
        "rss_mb_max": round(max(m for _, m in samples), 1) if samples else None,
        "rss_mb_by_block": [round(float(np.median([m for w, m in samples if i * block_s <= w * scale < (i + 1)
                                                   * block_s] or [0.0])), 1) for i in range(round(audio_s / block_s))],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of audio to stream (default 30)")
    p.add_argument("--speed", type=float, default=2.0, help="times real time (default 2)")
    p.add_argument("--window-minutes", type=float, default=None, help="length of the first/last windows")
    p.add_argument("--model", default="tiny.en", help="embedded model (default tiny.en)")
    p.add_argument("--out", default="bench-results/soak.json", help="where to write the JSON")
    args = p.parse_args(argv)

    from streaming.models import load_backend

    backend = load_backend(args.model, device="cpu")
    backend.warmup()
    config = Config()
    config.server.port = 0
    print(f"soak: {args.minutes:g} min of audio at {args.speed:g}x into one session", file=sys.stderr)
    with BackgroundServer(backend, config) as handle:
        report = asyncio.run(run_soak(handle.url, handle.server, args.minutes, args.speed, args.window_minutes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report["close_code"] == 1000 and not report["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
