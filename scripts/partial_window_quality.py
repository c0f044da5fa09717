#!/usr/bin/env python
"""Partials over a short encoder window against the full 30 s: text, stability, finals and cost per clip.

    .venv/bin/python scripts/partial_window_quality.py --english               # English dev clips, full vs 10/5 s
    .venv/bin/python scripts/partial_window_quality.py --manifest ../shared/eval/dev-full.jsonl --english \\
        --variants 0,10:1,5:2 --json bench/whisper-tiny.en/partial-window.json

Each clip is one utterance stepped every ``--step-s`` (the server's default 1 s) by every
variant in turn, so all see the same audio at the same moment; then each is finalized. A
variant is ``WINDOW[:PAD][q]`` (``partial_window_s``, ``partial_pad_s``, ``q``: the int8 partial
encoder of ``quantize="partials"``); the first is the reference.
Reported per variant, against the reference:

* ``partial_wer_vs_full``: corpus WER of its partial texts against the full window's
  partials at the same step (steps where the full window's partial is empty are left out);
* ``last_partial_wer``: the last partial (the whole clip) against the reference text;
* ``stable_not_in_final``: word edits between the last stable text and the final's words
  as far as it goes, over all clips (LocalAgreement committed them, the final disagreed:
  a visible correction);
* ``stable_share``: of the final's words, the share already stable at the last partial;
* ``first_text_s``: mean audio time of the first non-empty partial;
* ``finals_equal``: whether its final texts and word times equal the full window's;
* ``partial_cpu_ms_per_audio_s`` and ``final_cpu_ms_per_audio_s``: CPU of all its steps and
  of its finals per second of audio (one torch thread: the cost a stream puts on a core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.evaluation import dev_clips, load_manifest, normalize_english, wer  # noqa: E402
from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions  # noqa: E402
from streaming.models.options import WhisperDecodingOptions  # noqa: E402
from streaming.models.whisper import WhisperBackend, quantize_linear_int8  # noqa: E402


def parse_variants(spec: str, pad_s: float) -> dict[str, tuple[float, float, bool]]:
    """``"0,10:1,10:2q"`` -> {name: (partial_window_s, partial_pad_s, int8)}; a missing pad is ``pad_s``."""
    out = {}
    for item in spec.split(","):
        window, _, pad = item.rstrip("q").partition(":")
        out[item] = (float(window), float(pad) if pad else pad_s, item.endswith("q"))
    return out


def run_clip(backend: WhisperBackend, audio: Any, variants: dict[str, tuple[float, float, bool]],
             step_s: float, int8_encoder: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Stream one clip through every variant in lockstep; their partials, final and CPU."""
    base, before, fp32_encoder = backend.decoding, backend._partial_encoder, backend.encoder
    windows = list(variants)
    decodings = {w: dataclasses.replace(base, partial_window_s=variants[w][0], partial_pad_s=variants[w][1])
                 for w in windows}

    def use(w: str) -> None:
        backend.decoding = decodings[w]
        backend._partial_encoder = int8_encoder if variants[w][2] else fp32_encoder

    states = {}
    for w in windows:
        use(w)
        states[w] = backend.new_utterance(UtteranceOptions(language="en", word_timestamps=True))
    out: dict[str, dict[str, Any]] = {w: {"partials": [], "cpu_ms": 0.0, "final_cpu_ms": 0.0} for w in windows}
    chunk = int(step_s * SAMPLE_RATE_HZ)
    try:
        for start in range(0, audio.size, chunk):
            for w in windows:
                use(w)
                states[w].append_audio(audio[start:start + chunk])
                cpu0 = time.thread_time()
                hyp = backend.step([states[w]])[0]
                out[w]["cpu_ms"] += (time.thread_time() - cpu0) * 1000
                out[w]["partials"].append((states[w].duration_s, hyp.stable_text, hyp.text))
        for w in windows:
            use(w)
            cpu0 = time.thread_time()
            final = backend.finalize([states[w]])[0]
            out[w]["final_cpu_ms"] += (time.thread_time() - cpu0) * 1000
            out[w]["final"] = final.text
            out[w]["words"] = [(x.word, x.start_s, x.end_s) for x in final.words or []]
    finally:
        backend.decoding, backend._partial_encoder = base, before
    return out


def stable_errors(stable: str, final: str) -> int:
    """Word edits (normalized) between the stable text and as many of the final's first words."""
    s, f = normalize_english(stable).split(), normalize_english(final).split()
    f = f[: len(s)]
    row = list(range(len(f) + 1))  # Levenshtein over words, one row at a time
    for i, word in enumerate(s, 1):
        prev, row[0] = row[0], i
        for j, other in enumerate(f, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (word != other))
    return row[-1]


def summarize(clips: list[Any], runs: list[dict[str, dict[str, Any]]], windows: list[str],
              audio_s: float) -> dict[str, Any]:
    """The per-variant figures of the module docstring."""
    full = windows[0]
    summary = {}
    for w in windows:
        refs, hyps, stable_bad, stable_words, shares, firsts = [], [], 0, 0, [], []
        for run in runs:
            for (_, _, text_full), (_, _, text) in zip(run[full]["partials"], run[w]["partials"], strict=True):
                if text_full.strip():
                    refs.append(text_full)
                    hyps.append(text)
            last_stable = run[w]["partials"][-1][1]
            stable_bad += stable_errors(last_stable, run[w]["final"])
            stable_words += len(normalize_english(last_stable).split())
            final_words = len(normalize_english(run[w]["final"]).split())
            shares.append(len(normalize_english(last_stable).split()) / final_words if final_words else 1.0)
            firsts.append(next((t for t, _, text in run[w]["partials"] if text.strip()), float("nan")))
        summary[w] = {
            "partial_wer_vs_full": round(wer(refs, hyps), 4),
            "last_partial_wer": round(wer([c.text for c in clips], [r[w]["partials"][-1][2] for r in runs]), 4),
            "final_wer": round(wer([c.text for c in clips], [r[w]["final"] for r in runs]), 4),
            "stable_not_in_final": stable_bad, "stable_words": stable_words,
            "stable_share": round(statistics.mean(shares), 3),
            "first_text_s": round(statistics.mean(firsts), 2),
            "finals_equal": all(r[w]["final"] == r[full]["final"] and r[w]["words"] == r[full]["words"] for r in runs),
            "partial_cpu_ms_per_audio_s": round(sum(r[w]["cpu_ms"] for r in runs) / audio_s, 1),
            "final_cpu_ms_per_audio_s": round(sum(r[w]["final_cpu_ms"] for r in runs) / audio_s, 1),
        }
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--manifest", type=Path, help="default: the 12 dev clips")
    p.add_argument("--english", action="store_true", help="English clips only")
    p.add_argument("--variants", default="0,10,5", help="WINDOW[:PAD] list; the first is the reference")
    p.add_argument("--pad-s", type=float, default=WhisperDecodingOptions().partial_pad_s)
    p.add_argument("--step-s", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=0, help="first N clips only")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    clips = load_manifest(args.manifest) if args.manifest else dev_clips()
    if args.english:
        clips = [c for c in clips if c.language == "en"]
    clips = clips[: args.limit] if args.limit else clips
    variants = parse_variants(args.variants, args.pad_s)
    windows = list(variants)
    backend = WhisperBackend.from_embedded(args.model)
    backend.warmup()
    int8_encoder = quantize_linear_int8(backend.encoder)
    runs, audio_s = [], 0.0
    for i, clip in enumerate(clips):
        audio = clip.load()[: int(backend.max_utterance_s * SAMPLE_RATE_HZ)]
        audio_s += audio.size / SAMPLE_RATE_HZ
        runs.append(run_clip(backend, audio, variants, args.step_s, int8_encoder))
        print(f"[{i + 1}/{len(clips)}] {clip.id}: " + " | ".join(
            f"{w}: {runs[-1][w]['partials'][-1][2][:50]!r}" for w in windows), flush=True)
    summary = summarize(clips, runs, windows, audio_s)
    for w, row in summary.items():
        print(f"{w:>6}  " + "  ".join(f"{k} {v}" for k, v in row.items()))
    if args.json:
        detail = [{"id": c.id, **{w: {"partials": r[w]["partials"], "final": r[w]["final"]} for w in windows}}
                  for c, r in zip(clips, runs, strict=True)]
        args.json.write_text(json.dumps({"model": backend.name, "variants": variants, "step_s": args.step_s,
                                         "clips": len(clips), "audio_s": round(audio_s, 1), "summary": summary,
                                         "clips_detail": detail}, indent=1) + "\n")


if __name__ == "__main__":
    main()
