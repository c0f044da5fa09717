#!/usr/bin/env python
"""Offline final WER and cost of Whisper with int8 dynamic quantization against float32, on the same clips.

    .venv/bin/python scripts/quantized_wer.py                                   # 89 English dev-full clips
    .venv/bin/python scripts/quantized_wer.py --json bench/whisper-tiny.en/quantized-wer.json

Every clip (its first 30 s) is one utterance finalized by each variant in turn, in batches
of ``--batch``: ``fp32`` (today), ``int8-encoder`` (the encoder's linear layers int8) and
``int8`` (the encoder's and the decoder's; the vocabulary projection stays float32). The
figures are WER after Whisper's English normalizer, how many texts equal float32's, and the
CPU milliseconds per second of audio on one torch thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.evaluation import eval_dir, load_manifest, wer  # noqa: E402
from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions  # noqa: E402
from streaming.models.embedded import load_embedded_whisper  # noqa: E402
from streaming.models.options import WhisperDecodingOptions  # noqa: E402
from streaming.models.whisper import WhisperBackend  # noqa: E402

VARIANTS = {"fp32": "none", "int8-encoder": "encoder", "int8": "all"}
"""Variant name -> ``WhisperDecodingOptions.quantize``."""


def backend_for(name: str, quantize: str) -> WhisperBackend:
    """A fresh backend (its own copy of the weights) with ``quantize``."""
    return WhisperBackend(load_embedded_whisper(name), decoding=dataclasses.replace(WhisperDecodingOptions(),
                                                                                     quantize=quantize))


def finals(backend: WhisperBackend, audios: list[Any], batch: int) -> tuple[list[str], float]:
    """Final texts of ``audios`` in batches, and the CPU milliseconds they took."""
    texts, cpu_ms = [], 0.0
    for i in range(0, len(audios), batch):
        states = []
        for audio in audios[i:i + batch]:
            st = backend.new_utterance(UtteranceOptions(language="en"))
            st.append_audio(audio)
            states.append(st)
        cpu0 = time.thread_time()
        texts.extend(r.text for r in backend.finalize(states))
        cpu_ms += (time.thread_time() - cpu0) * 1000
    return texts, cpu_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--manifest", type=Path, default=eval_dir() / "dev-full.jsonl")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    clips = [c for c in load_manifest(args.manifest) if c.language == "en"]
    clips = clips[: args.limit] if args.limit else clips
    audios = [c.load()[: 30 * SAMPLE_RATE_HZ] for c in clips]
    audio_s = sum(a.size for a in audios) / SAMPLE_RATE_HZ
    refs = [c.text for c in clips]
    report: dict[str, Any] = {"model": args.model, "clips": len(clips), "audio_s": round(audio_s, 1), "variants": {}}
    texts: dict[str, list[str]] = {}
    for name in args.variants.split(","):
        backend = backend_for(args.model, VARIANTS[name])
        backend.warmup()
        texts[name], cpu_ms = finals(backend, audios, args.batch)
        first = next(iter(texts))
        row = {"wer": round(wer(refs, texts[name]), 4), "same_text_as_" + first:
               sum(a == b for a, b in zip(texts[first], texts[name], strict=True)),
               "cpu_ms_per_audio_s": round(cpu_ms / audio_s, 1)}
        report["variants"][name] = row
        print(f"{name:13s} " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        del backend
    if args.json:
        report["rows"] = [{"id": c.id, "reference": c.text, **{n: t[i] for n, t in texts.items()}}
                          for i, c in enumerate(clips)]
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
