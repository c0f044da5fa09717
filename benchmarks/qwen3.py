"""Model-only benchmark of the streaming Qwen3-ASR backend against the re-feed recipe.

Streams continuous speech (dev clips back to back, no endpoints) and records,
per step, the latency and how many encoder frames and decoder positions were
recomputed, versus stream length, for several ``window_s``; beside it, in the
same process, the official toolkit's recipe: re-run ALL audio so far with the
previous text minus its last 5 tokens as prefix and no cache. A second part
("real time") steps N streams as one batch and reports whether each batch
size keeps up with the audio. Random weights with the real architecture never
emit EOS, so new tokens per step are capped (``--new-tokens``).

    python -m benchmarks qwen3 --arch 0.6b --stream-s 60 --windows 1 2 4 8 --out bench/qwen3
    python -m benchmarks qwen3 --device cuda --dtype bfloat16 --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.plotting import plot_qwen3
from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions
from streaming.models.qwen3_asr import (
    AUDIO_PAD,
    CLAMP_RANGE,
    FRAMES_PER_CHUNK,
    LogMel,
    Qwen3ASRBackend,
    post_cnn_tokens,
    random_model,
)

log = logging.getLogger(__name__)

REFEED_KEEP_BACK = 5
"""The official recipe drops this many tokens of the previous text before re-feeding it as prefix."""


def speech_stream(seconds: float) -> np.ndarray:
    """Real speech clips concatenated back to back (no silence between them), ``seconds`` long."""
    from streaming.evaluation import dev_clips

    parts, total, need = [], 0, int(seconds * SAMPLE_RATE_HZ)
    clips = dev_clips()
    while total < need:
        for clip in clips:
            a = clip.load()
            parts.append(a)
            total += len(a)
            if total >= need:
                break
    return np.concatenate(parts)[:need]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_streaming(backend: Qwen3ASRBackend, audio: np.ndarray, window_s: int, step_s: float) -> list[dict]:
    """One stream through ``backend.step`` every ``step_s``: per-step latency and recomputed work."""
    state = backend.new_utterance(UtteranceOptions(window_s=window_s))
    hop = int(step_s * SAMPLE_RATE_HZ)
    rows = []
    for i in range(hop, len(audio) + 1, hop):
        state.append_audio(audio[i - hop:i])
        _sync(backend.device)
        t0 = time.perf_counter()
        hyp = backend.step([state])[0]
        _sync(backend.device)
        st = hyp.stats
        rows.append({"t_s": round(i / SAMPLE_RATE_HZ, 3), "latency_ms": round(1000 * (time.perf_counter() - t0), 2),
                     "encoder_frames": st.get("encoder_frames", 0),
                     "decoder_positions": st.get("decoder_positions", 0),
                     "decoder_audio_positions": st.get("decoder_audio_positions", 0),
                     "decoder_text_positions": st.get("decoder_text_positions", 0),
                     "decoded_tokens": st.get("decoded_tokens", 0),
                     "cached_positions": st.get("cached_positions", 0)})
        log.info("window %ss t=%.0fs %.0f ms enc=%d dec=%d", window_s, rows[-1]["t_s"], rows[-1]["latency_ms"],
                 rows[-1]["encoder_frames"], rows[-1]["decoder_positions"])
    return rows


@torch.inference_mode()
def run_refeed(backend: Qwen3ASRBackend, audio: np.ndarray, step_s: float, new_tokens: int) -> list[dict]:
    """The official recipe: every step, all audio so far + previous text minus 5 tokens, no cache kept."""
    from transformers import DynamicCache, Qwen3ASRFeatureExtractor

    model, dev = backend.model, backend.device
    fe = Qwen3ASRFeatureExtractor()
    state = backend.new_utterance(UtteranceOptions())  # for the prompt ids only
    pad_id = backend.tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    hop = int(step_s * SAMPLE_RATE_HZ)
    text: list[int] = []
    rows = []
    for i in range(hop, len(audio) + 1, hop):
        _sync(dev)
        t0 = time.perf_counter()
        feats = fe(audio[:i], sampling_rate=SAMPLE_RATE_HZ, padding="longest", return_attention_mask=True,
                   return_tensors="pt")
        x = feats["input_features"].to(dev, backend.dtype)
        mask = feats["attention_mask"].to(dev)
        n_frames = int(mask.sum())
        n_audio = post_cnn_tokens(n_frames)
        prefix = text[:-REFEED_KEEP_BACK] if len(text) > REFEED_KEEP_BACK else []
        ids = state.head_ids + [pad_id] * n_audio + state.suffix_ids + prefix
        cache = DynamicCache()
        out = model(input_ids=torch.tensor([ids], device=dev), input_features=x, input_features_mask=mask,
                    cache=cache, use_cache=True, logits_to_keep=1)
        new: list[int] = []
        for _ in range(new_tokens):
            tok = int(out.logits[0, -1].argmax())
            if tok in backend.eos_ids:
                break
            new.append(tok)
            out = model(input_ids=torch.tensor([[tok]], device=dev), cache=out.cache, use_cache=True)
        text = prefix + new
        _sync(dev)
        rows.append({"t_s": round(i / SAMPLE_RATE_HZ, 3), "latency_ms": round(1000 * (time.perf_counter() - t0), 2),
                     "encoder_frames": n_frames, "decoder_positions": len(ids) + len(new),
                     "decoder_audio_positions": n_audio, "decoder_text_positions": len(prefix),
                     "decoded_tokens": len(new), "cached_positions": 0})
        log.info("refeed t=%.0fs %.0f ms enc=%d dec=%d", rows[-1]["t_s"], rows[-1]["latency_ms"],
                 n_frames, rows[-1]["decoder_positions"])
    return rows


def run_realtime(backend: Qwen3ASRBackend, audio: np.ndarray, batch: int, window_s: int, step_s: float,
                 seconds: float) -> dict:
    """``batch`` streams stepped together every ``step_s`` of audio: do they keep up with real time?"""
    hop = int(step_s * SAMPLE_RATE_HZ)
    states = [backend.new_utterance(UtteranceOptions(window_s=window_s)) for _ in range(batch)]
    offsets = [(k * 7919 * 16) % max(1, len(audio) - int(seconds * SAMPLE_RATE_HZ) - 1) for k in range(batch)]
    lat = []
    for i in range(hop, int(seconds * SAMPLE_RATE_HZ) + 1, hop):
        for s, off in zip(states, offsets):
            s.append_audio(audio[off + i - hop: off + i])
        _sync(backend.device)
        t0 = time.perf_counter()
        backend.step(states)
        _sync(backend.device)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    backend.finalize(states)
    final_s = time.perf_counter() - t0
    steady = lat[len(lat) // 2:] or lat
    p95 = float(np.percentile(steady, 95))
    return {"batch": batch, "window_s": window_s, "step_s": step_s, "seconds": seconds,
            "step_latency_ms_mean": round(1000 * float(np.mean(steady)), 1),
            "step_latency_ms_p95": round(1000 * p95, 1), "finalize_ms": round(1000 * final_s, 1),
            "real_time_factor_p95": round(p95 / step_s, 3), "held_in_real_time": bool(p95 <= step_s)}


def feature_drift(window_s: int = 4, seconds: float = 60.0) -> dict:
    """How far the streaming feature rule moves from the offline extractor on real speech, per clip.

    Also counts how often an offline-exact cache (keyed on the global max) would have had to rebuild:
    whenever the running max rises above a finished window's smallest raw value + 8.
    """
    from streaming.evaluation import dev_clips
    from transformers import Qwen3ASRFeatureExtractor

    fe = Qwen3ASRFeatureExtractor()
    logmel = LogMel(fe.mel_filters)
    per_clip, rebuilds, steps = [], 0, 0
    clips = dev_clips()
    audios = [(c.id, c.load()) for c in clips] + [("stream", speech_stream(seconds))]
    wf = window_s * FRAMES_PER_CHUNK
    for cid, a in audios:
        n = LogMel.total_frames(len(a))
        raw = logmel.raw(a, 0, n, final=True)
        prefix_max = torch.cummax(raw.max(dim=0).values, dim=0).values
        ours = torch.cat([LogMel.normalise(raw[:, w:min(w + wf, n)], float(prefix_max[min(w + wf, n) - 1]))
                          for w in range(0, n, wf)], dim=1)
        ref = torch.from_numpy(fe(a, sampling_rate=SAMPLE_RATE_HZ, padding="longest", n_window=0,
                                  return_tensors="np")["input_features"][0])
        diff = (ours - ref).abs()
        per_clip.append({"clip": cid, "seconds": round(len(a) / SAMPLE_RATE_HZ, 2),
                         "max_abs_diff": round(float(diff.max()), 4), "mean_abs_diff": float(diff.mean()),
                         "fraction_changed": round(float((diff > 1e-4).float().mean()), 5)})
        # Offline-exact cache: stale when the max rises over (smallest raw value of finished windows) + 8.
        min_raw = raw.min(dim=0).values
        last_max = -np.inf
        for t in range(FRAMES_PER_CHUNK, n + 1, FRAMES_PER_CHUNK):  # one step per second
            steps += 1
            done = (t // wf) * wf
            m = float(prefix_max[t - 1])
            if done and m > last_max and float(min_raw[:done].min()) < m - CLAMP_RANGE:
                rebuilds += 1
            last_max = m
    return {"rule": "clamp floor = running max up to the end of each encoder window - 8 (frozen per window)",
            "window_s": window_s, "clips": per_clip,
            "offline_exact_rebuilds": rebuilds, "offline_exact_steps": steps}


def summarize(run: dict) -> dict:
    """Means over the first and last 10 s of the stream."""
    steps = run["steps"]
    head, tail = steps[: max(1, len(steps) // 6)], steps[-max(1, len(steps) // 6):]
    out = {}
    for key in ("latency_ms", "encoder_frames", "decoder_positions", "decoder_audio_positions"):
        out[key] = {"first": round(float(np.mean([r[key] for r in head])), 1),
                    "last": round(float(np.mean([r[key] for r in tail])), 1),
                    "max": max(r[key] for r in steps)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks qwen3")
    p.add_argument("--arch", default="0.6b", choices=["tiny", "0.6b", "1.7b"],
                   help="architecture of the random-weight model (real sizes)")
    p.add_argument("--model", default=None, help="load real weights instead (local folder or hub id)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16 | auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--stream-s", type=float, default=60.0, help="stream length, 10-120 s")
    p.add_argument("--step-s", type=float, default=1.0)
    p.add_argument("--windows", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--new-tokens", type=int, default=6, help="greedy tokens per step (random weights never stop)")
    p.add_argument("--no-refeed", action="store_true", help="skip the re-feed baseline")
    p.add_argument("--refeed-s", type=float, default=None, help="run the re-feed baseline only this far")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                   help="real-time part: streams stepped together (e.g. 1 8 32)")
    p.add_argument("--realtime-window-s", type=int, default=4)
    p.add_argument("--realtime-s", type=float, default=20.0, help="stream length of the real-time part")
    p.add_argument("--no-drift", action="store_true", help="skip the feature-drift report")
    p.add_argument("--out", default="bench/qwen3", help="output folder (JSON + PNG)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.model:
        backend = Qwen3ASRBackend.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                                  max_new_tokens_per_step=args.new_tokens)
    else:
        from streaming.models.qwen3_asr import _resolve_device, _resolve_dtype

        dev = torch.device(_resolve_device(args.device))
        model, tok = random_model(args.arch, dtype=_resolve_dtype(args.dtype, dev))
        backend = Qwen3ASRBackend(model, tok, device=str(dev), dtype=args.dtype,
                                  max_new_tokens_per_step=args.new_tokens)
    n_params = sum(p.numel() for p in backend.model.parameters())
    log.info("model ready in %.1f s, %.2f B params", time.perf_counter() - t0, n_params / 1e9)
    backend.warmup()
    audio = speech_stream(max(args.stream_s, args.realtime_s * 2))
    stream_audio = audio[: int(args.stream_s * SAMPLE_RATE_HZ)]

    results: dict[str, Any] = {
        "config": {"arch": args.arch if not args.model else args.model, "params": n_params,
                   "device": str(backend.device), "dtype": str(backend.dtype).replace("torch.", ""),
                   "threads": torch.get_num_threads(), "stream_s": args.stream_s, "step_s": args.step_s,
                   "new_tokens": args.new_tokens, "host": platform.node(),
                   "note": "random weights never emit EOS: every step decodes exactly new_tokens"},
        "runs": [], "realtime": []}
    for w in args.windows:
        steps = run_streaming(backend, stream_audio, w, args.step_s)
        results["runs"].append({"mode": f"window_{w}s", "window_s": w, "steps": steps})
    if not args.no_refeed:
        ref_audio = stream_audio[: int((args.refeed_s or args.stream_s) * SAMPLE_RATE_HZ)]
        results["runs"].append({"mode": "refeed", "window_s": 8,
                                "steps": run_refeed(backend, ref_audio, args.step_s, args.new_tokens)})
    for run in results["runs"]:
        run["summary"] = summarize(run)
    for b in args.batch_sizes:
        results["realtime"].append(run_realtime(backend, audio, b, args.realtime_window_s, args.step_s,
                                                args.realtime_s))
        log.info("real time: %s", results["realtime"][-1])
    if not args.no_drift:
        results["feature_drift"] = feature_drift(window_s=4, seconds=min(args.stream_s, 60))
    (out / "bench_qwen3.json").write_text(json.dumps(results, indent=1))
    plot_qwen3(results, out / "bench_qwen3.png")
    for run in results["runs"]:
        s = run["summary"]
        print(f"{run['mode']:>10}: latency {s['latency_ms']['first']:.0f} -> {s['latency_ms']['last']:.0f} ms, "
              f"encoder frames {s['encoder_frames']['first']:.0f} -> {s['encoder_frames']['last']:.0f}, "
              f"decoder positions {s['decoder_positions']['first']:.0f} -> {s['decoder_positions']['last']:.0f}")
    for r in results["realtime"]:
        print(f"batch {r['batch']:>3}: p95 step {r['step_latency_ms_p95']:.0f} ms, "
              f"RTF {r['real_time_factor_p95']}, held in real time: {r['held_in_real_time']}")
    print(f"wrote {out / 'bench_qwen3.json'} and {out / 'bench_qwen3.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
