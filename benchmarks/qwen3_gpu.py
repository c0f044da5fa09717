"""Qwen3-ASR GPU path: decode-step time (dynamic vs static slots vs CUDA graphs) and N real-time streams.

Part 1 times one bare greedy decode step per batch size over a fixed context:
the backend's dynamic path (a ``DynamicCache`` grown by one position), the
static slot step run eagerly, and the same step replayed as a CUDA graph (CUDA
only). Part 2 runs N streams, each feeding dev clips at real-time pace (one
clip = one utterance, staggered starts), through ``Qwen3ASRBackend.step`` /
``finalize`` with finals first, as the engine does; it reports the final
latency (end of the clip's audio -> final returned) and whether p95 < 1.0 s.
Random weights never emit EOS, so a partial decodes ``--new-tokens`` and a
final ``16 + --tokens-per-s x duration`` tokens (about what real speech gives).
Timings on a CPU say nothing about a GPU: there, compare modes as ratios only.

    python -m benchmarks qwen3-gpu --arch 0.6b --device cuda --dtype bfloat16 --streams 64 128 256 320 --out bench/qwen3-gpu
    python -m benchmarks qwen3-gpu --arch tiny --device cpu --dtype float32 --batch-sizes 1 2 --streams 2 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions
from streaming.models.qwen3_asr import Qwen3ASRBackend, Qwen3ASRState, _resolve_device, _resolve_dtype, random_model
from streaming.models.qwen3_asr.static_decode import SlotDecoding, bucket_for, length_buckets

log = logging.getLogger(__name__)

H100_REFERENCE_MS = {1: 2.5, 256: 18.3}
"""The issue's bare decode step (static cache + CUDA graphs, 0.6B) on one H100; the aim is within 1.5x."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Any, device: torch.device, iters: int) -> dict[str, float]:
    """Median and p90 wall time of ``fn()`` (which ends in a host sync), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return {"ms_median": round(float(np.median(times)), 3), "ms_p90": round(float(np.percentile(times, 90)), 3)}


# --------------------------------------------------------------------------- part 1: decode step


@torch.inference_mode()
def _dynamic_step_fn(backend: Qwen3ASRBackend, slots: SlotDecoding, batch: int, context: int) -> Any:
    """The dynamic path's step: a ``DynamicCache`` of ``context`` positions grown by one, then reset."""
    from transformers import DynamicCache

    pool, dev = slots.pool, backend.device
    cache = DynamicCache()
    for layer in range(backend.n_layers):  # views of the pool: no extra memory for the baseline
        cache.update(pool.keys[layer, :batch, :, :context], pool.values[layer, :batch, :, :context], layer)
    base = [(lay.keys, lay.values) for lay in cache.layers]
    tokens = torch.zeros(batch, dtype=torch.long, device=dev)
    allowed = torch.ones(batch, 1, context + 1, dtype=torch.bool, device=dev)
    pos = torch.full((batch, 1), context, dtype=torch.long, device=dev)

    @torch.inference_mode()
    def run() -> None:
        backend._forward(backend.embed(tokens)[:, None], allowed, pos, cache).argmax(-1).cpu()
        for lay, (k, v) in zip(cache.layers, base):  # back to the context: every call grows it by one
            lay.keys, lay.values = k, v

    return run


def step_times(backend: Qwen3ASRBackend, batches: list[int], context: int, max_len: int, iters: int,
               graphs: bool) -> list[dict[str, Any]]:
    """Per batch size: ms per greedy step for each mode, over ``context`` cached positions per row."""
    slots = SlotDecoding(backend.decoder, backend.lm_head, max_streams=max(batches), max_len=max_len,
                         cuda_graphs=graphs)
    key_len = bucket_for(context + 1, slots.decoder.len_buckets)
    rows = []
    for b in batches:
        bucket = bucket_for(b, slots.decoder.batch_buckets)
        tokens = torch.zeros(bucket, dtype=torch.long)
        write = torch.full((bucket,), slots.pool.scratch, dtype=torch.long)
        write[:b] = context  # rows past b are padding, as in a real call
        modes = {"dynamic": _dynamic_step_fn(backend, slots, b, context),
                 "static": lambda: slots.decoder.step(tokens.to(backend.device), write.to(backend.device),
                                                      key_len).cpu()}
        if slots.graphs is not None:
            modes["cuda_graph"] = lambda: slots.graphs(tokens, write, key_len)
        for mode, fn in modes.items():
            with torch.inference_mode():
                r = {"mode": mode, "batch": b, "padded_batch": bucket if mode != "dynamic" else b,
                     "context": context, "key_len": key_len if mode != "dynamic" else context + 1,
                     **_time_ms(fn, backend.device, iters)}
            rows.append(r)
            log.info("step %s batch=%d: %.2f ms", mode, b, r["ms_median"])
    slots = None  # the pool is freed before the streams part builds its own
    if backend.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- part 2: N streams


@dataclass
class _Stream:
    """One simulated client: its clips back to back from ``offset_s``, one utterance per clip."""

    clips: list[np.ndarray]
    offset_s: float
    clip: int = 0
    fed: int = 0
    clip_start_s: float = 0.0
    stepped: int = 0
    state: Qwen3ASRState | None = None
    pending: list[tuple[Qwen3ASRState, float]] = field(default_factory=list)

    def feed(self, backend: Qwen3ASRBackend, now_s: float, window_s: int) -> None:
        """Append the audio that has 'arrived' by ``now_s``; a finished clip waits for its final."""
        while True:
            if self.state is None:
                self.state = backend.new_utterance(UtteranceOptions(window_s=window_s))
                self.fed = self.stepped = 0
            audio = self.clips[self.clip % len(self.clips)]
            due = min(len(audio), int((now_s - self.offset_s - self.clip_start_s) * SAMPLE_RATE_HZ))
            if due > self.fed:
                self.state.append_audio(audio[self.fed:due])
                self.fed = due
            if self.fed < len(audio):
                return
            end_s = self.offset_s + self.clip_start_s + len(audio) / SAMPLE_RATE_HZ
            self.pending.append((self.state, end_s))
            self.clip += 1
            self.clip_start_s += len(audio) / SAMPLE_RATE_HZ
            self.state = None


def run_streams(backend: Qwen3ASRBackend, clips: list[np.ndarray], n: int, seconds: float, step_s: float,
                window_s: int, seed: int = 0) -> dict[str, Any]:
    """``n`` streams at real-time pace for ``seconds``: finals first, then one batched partial step."""
    rng = np.random.default_rng(seed)
    streams = [_Stream([clips[(k + j) % len(clips)] for j in range(len(clips))], float(rng.uniform(0, 2.0)))
               for k in range(n)]
    hop = int(step_s * SAMPLE_RATE_HZ)
    finals, partials, batches = [], [], []
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    while (now := clock()) < seconds:
        for s in streams:
            s.feed(backend, now, window_s)
        closing = [p for s in streams for p in s.pending]
        if closing:
            for s in streams:
                s.pending.clear()
            backend.finalize([st for st, _ in closing])
            done = clock()
            finals.extend(done - end_s for _, end_s in closing)
            continue
        due = [s for s in streams if s.state is not None and s.fed - s.stepped >= hop]
        if not due:
            time.sleep(0.005)  # real-time pacing of the simulated clients, not a synchronisation
            continue
        arrived = [s.offset_s + s.clip_start_s + (s.stepped + hop) / SAMPLE_RATE_HZ for s in due]
        backend.step([s.state for s in due])
        done = clock()
        for s in due:
            s.stepped = s.fed
        partials.extend(done - a for a in arrived)
        batches.append(len(due))
    p95 = float(np.percentile(finals, 95)) if finals else float("nan")
    return {"streams": n, "seconds": seconds, "finals": len(finals), "steps": len(batches),
            "mean_step_batch": round(float(np.mean(batches)), 1) if batches else 0.0,
            "final_latency_s_p50": round(float(np.median(finals)), 3) if finals else None,
            "final_latency_s_p95": round(p95, 3) if finals else None,
            "final_latency_s_max": round(float(np.max(finals)), 3) if finals else None,
            "partial_latency_s_p95": round(float(np.percentile(partials, 95)), 3) if partials else None,
            "held_p95_final_under_1s": bool(finals) and p95 < 1.0}


def _clips(max_s: float) -> list[np.ndarray]:
    """The dev clips (real speech), each cut to ``max_s``."""
    from streaming.evaluation import dev_clips

    return [c.load()[: int(max_s * SAMPLE_RATE_HZ)] for c in dev_clips()]


# --------------------------------------------------------------------------- report


def plot(report: dict[str, Any], path: Path) -> None:
    """Step time per batch size per mode (with the H100 reference), and p95 latencies per stream count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in ("dynamic", "static", "cuda_graph"):
        pts = [(r["batch"], r["ms_median"]) for r in report["steps"] if r["mode"] == mode]
        if pts:
            ax1.plot(*zip(*pts), "o-", label=mode)
    ax1.plot(list(H100_REFERENCE_MS), list(H100_REFERENCE_MS.values()), "k*", ms=12, label="H100 reference")
    ax1.set(xscale="log", yscale="log", xlabel="batch (streams decoding)", ylabel="ms per decode step",
            title=f"{report['config']['arch']} {report['config']['dtype']} on {report['config']['device_name']}")
    ax1.grid(alpha=0.3)
    ax1.legend()
    runs = report["streams"]
    if runs:
        n = [r["streams"] for r in runs]
        ax2.plot(n, [r["final_latency_s_p95"] for r in runs], "o-", label="final p95")
        ax2.plot(n, [r["partial_latency_s_p95"] for r in runs], "s--", label="partial p95")
        ax2.axhline(1.0, color="k", lw=0.8, ls=":")
        ax2.set(xlabel="concurrent real-time streams", ylabel="seconds", title="latency under N streams")
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _backend(args: argparse.Namespace, model: Any, tok: Any, kv_cache: str, max_streams: int) -> Qwen3ASRBackend:
    dev = torch.device(_resolve_device(args.device))
    return Qwen3ASRBackend(model, tok, device=str(dev), dtype=_resolve_dtype(args.dtype, dev),
                           window_s=args.window_s, max_new_tokens_per_step=args.new_tokens,
                           max_tokens_per_audio_s=args.tokens_per_s, repetition_guard=False, kv_cache=kv_cache,
                           max_streams=max_streams, cuda_graphs=not args.no_graphs)


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks qwen3-gpu")
    p.add_argument("--arch", default="0.6b", choices=["tiny", "0.6b", "1.7b"], help="random-weight architecture")
    p.add_argument("--device", default="auto", help="cuda | cpu | auto")
    p.add_argument("--dtype", default="auto", help="bfloat16 | float16 | float32 | auto (bf16 on CUDA)")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--context", type=int, default=1000, help="cached positions per row in the step timing")
    p.add_argument("--max-len", type=int, default=2048, help="positions per KV slot")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--streams", type=int, nargs="*", default=[64, 128, 256], help="N for the real-time part")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each real-time run")
    p.add_argument("--step-s", type=float, default=1.0, help="audio per partial step")
    p.add_argument("--window-s", type=int, default=4)
    p.add_argument("--clip-s", type=float, default=12.0, help="cut dev clips (utterances) to this length")
    p.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per partial")
    p.add_argument("--tokens-per-s", type=float, default=4.0, help="final budget per audio second")
    p.add_argument("--kv", choices=["static", "dynamic"], default="static", help="decoder KV of the stream part")
    p.add_argument("--no-graphs", action="store_true", help="static step eagerly even on CUDA")
    p.add_argument("--out", default="bench/qwen3-gpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    dev = torch.device(_resolve_device(args.device))
    model, tok = random_model(args.arch, dtype=_resolve_dtype(args.dtype, dev))
    # The step timing makes its own pool: its backend holds none, so the two pools never coexist.
    backend = _backend(args, model, tok, "dynamic", 1)
    report: dict[str, Any] = {"config": {
        "arch": args.arch, "device": str(dev), "dtype": str(backend.dtype).replace("torch.", ""),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "host": platform.node(), "context": args.context, "max_len": args.max_len,
        "len_buckets": list(length_buckets(args.max_len)), "kv": args.kv, "cuda_graphs": not args.no_graphs,
        "new_tokens": args.new_tokens, "tokens_per_s": args.tokens_per_s, "window_s": args.window_s,
        "h100_reference_ms": H100_REFERENCE_MS,
        "note": "random weights never emit EOS; CPU timings are sanity ratios only"}}
    log.info("model ready in %.1f s", time.perf_counter() - t0)
    report["steps"] = step_times(backend, args.batch_sizes, args.context, args.max_len, args.iters,
                                 graphs=not args.no_graphs) if args.batch_sizes else []
    report["streams"] = []
    if args.streams:
        del backend
        _free_device_memory(dev)
        backend = _backend(args, model, tok, args.kv, max(args.streams) + 8)
        t1 = time.perf_counter()
        backend.warmup()
        pool = getattr(backend.row_decoder, "pool", None)
        report["config"].update(kv_slots=pool.slots if pool else None, kv_slot_len=pool.max_len if pool else None,
                                warmup_s=round(time.perf_counter() - t1, 2))
        clips = _clips(args.clip_s)
    for n in args.streams:
        report["streams"].append(run_streams(backend, clips, n, args.seconds, args.step_s, args.window_s))
        log.info("streams: %s", report["streams"][-1])
    held = [r["streams"] for r in report["streams"] if r["held_p95_final_under_1s"]]
    report["streams_held_p95_final_under_1s"] = max(held, default=0)
    (out / "qwen3_gpu.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "qwen3_gpu.png")
    for r in report["steps"]:
        print(f"step {r['mode']:>10} batch {r['batch']:>3}: {r['ms_median']:.2f} ms (p90 {r['ms_p90']:.2f})")
    for r in report["streams"]:
        print(f"{r['streams']:>4} streams: final p95 {r['final_latency_s_p95']} s, partial p95 "
              f"{r['partial_latency_s_p95']} s, held: {r['held_p95_final_under_1s']}")
    print(f"wrote {out / 'qwen3_gpu.json'} and {out / 'qwen3_gpu.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
