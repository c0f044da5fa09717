"""``python -m benchmarks translate``: live translation (``task: "translate"``) against offline.

Every dev clip that has an English reference translation (``benchmarks/data/translations-en.jsonl``,
written for this project) is translated twice by the same multilingual Whisper model: offline, the
whole clip in one decode (``finalize`` with ``task="translate"``), and streamed, at real-time pace
over protocol v1 with ``task: "translate"`` (the server's VAD cuts it, finals are joined). Scored
with corpus chrF (sacrebleu) per language and over all; the goal is streamed within
:data:`CHRF_GATE_POINTS` of offline in every language.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from streaming.config import Config
from streaming.evaluation import TRANSLATIONS_FILE, chrf, eval_dir, load_manifest, load_translations

from .loadgen import stream_audio, with_silence
from .plotting import plot_translation

CHRF_GATE_POINTS = 2.0
"""The streamed chrF may be at most this far below the offline one (per language)."""
PADS = ((0.15, 0.6), (0.3, 1.0), (0.5, 1.5))
"""Silence (lead, trail) around the clip for the offline *noise floor*: the same whole-clip decode with
the clip's edges moved as a VAD cut moves them. Greedy translation by a small model is chaotic in
them (one clip's chrF moves by 10-20 points), so a streamed score is read against that spread."""

TRANSLATE_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def add_translate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default=None, help="JSONL manifest (default ../shared/eval/dev-full.jsonl)")
    p.add_argument("--refs", default=str(TRANSLATIONS_FILE), help="English reference translations (JSONL: id, en)")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time (default), 0 = as fast as possible")
    p.add_argument("--out", default="bench/translate", help="folder of the JSON and the plot")


def score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per language and over all: chrF of the streamed and the offline translations, and the gap."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["language"]].append(row)
    groups["all"] = list(rows)
    out = {}
    for lang, items in sorted(groups.items()):
        refs = [r["reference"] for r in items]
        streamed = chrf(refs, [r["streamed"] for r in items])
        offline = chrf(refs, [r["offline"] for r in items])
        padded = [chrf(refs, [r["offline_padded"][k] for r in items]) for k in range(len(items[0]["offline_padded"]))]
        out[lang] = {"clips": len(items), "chrf_streamed": round(streamed, 2), "chrf_offline": round(offline, 2),
                     "delta": round(streamed - offline, 2), "gate_pass": streamed >= offline - CHRF_GATE_POINTS,
                     "chrf_offline_padded": [round(p, 2) for p in padded],
                     "within_offline_spread": min(padded + [offline]) - CHRF_GATE_POINTS <= streamed}
    return out


def run_translate(args: argparse.Namespace, config: Config) -> int:
    from streaming.loading import load_configured_backend
    from streaming.results import UtteranceOptions
    from streaming.server import BackgroundServer

    manifest = Path(args.manifest) if args.manifest else eval_dir() / "dev-full.jsonl"
    refs = load_translations(args.refs)
    clips = [c for c in load_manifest(manifest) if c.id in refs]
    if not clips:
        print(f"error: no clip of {manifest} has a reference in {args.refs}", file=sys.stderr)
        return 2
    backend = load_configured_backend(config)
    if not backend.supports_translate:
        print(f"error: {backend.name} cannot translate; use a multilingual Whisper model (--model base)",
              file=sys.stderr)
        return 2
    print(f"translate: {backend.name}, {len(clips)} clips, streamed at speed {args.speed:g} and offline",
          file=sys.stderr)
    rows: list[dict[str, Any]] = []
    def offline(audio) -> Any:
        st = backend.new_utterance(UtteranceOptions(task="translate"))
        st.append_audio(audio)
        return backend.finalize([st])[0]

    for clip in clips:  # offline first: the server's engine owns the backend once it runs
        audio = clip.load()
        result = offline(audio)
        rows.append({"id": clip.id, "language": clip.language, "reference": refs[clip.id],
                     "offline": result.text, "offline_language": result.language,
                     "offline_padded": [offline(with_silence(audio, lead, trail)).text for lead, trail in PADS]})
    config.server.host, config.server.port = "127.0.0.1", 0
    # One stream at a time: admission by measured capacity would only race the previous stream's close.
    config.server.load_admission = False
    config.server.capacity_streams = config.server.capacity_streams or 2
    t0 = time.perf_counter()
    with BackgroundServer(backend, config) as handle:
        for clip, row in zip(clips, rows, strict=True):
            r = asyncio.run(stream_audio(handle.url, with_silence(clip.load(), 0.5, 1.5), speed=args.speed,
                                         start_fields={"task": "translate"}))
            if r.errors:
                print(f"error: {clip.id}: {r.errors[0]}", file=sys.stderr)
                return 1
            row.update(streamed=r.text, streamed_languages=sorted({f["language"] for f in r.finals if f["text"]}),
                       finals=len([f for f in r.finals if f["text"]]))
            print(f"  {clip.id} [{clip.language}] streamed: {r.text!r}\n{'':>{len(clip.id) + 8}}offline:  "
                  f"{row['offline']!r}", file=sys.stderr)
    report = {"benchmark": "translate", "model": backend.name, "manifest": str(manifest), "refs": str(args.refs),
              "speed": args.speed, "gate_points": CHRF_GATE_POINTS, "wall_s": round(time.perf_counter() - t0, 1),
              "languages": score(rows), "clips": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"translate-{backend.name}.json"
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_translation(report, path.with_suffix(".png"))
    print(f"{'language':8} {'clips':>5} {'streamed':>9} {'offline':>8} {'delta':>6}  offline, padded")
    for lang, s in report["languages"].items():
        spread = "/".join(f"{p:.1f}" for p in s["chrf_offline_padded"])
        print(f"{lang:8} {s['clips']:5} {s['chrf_streamed']:9.1f} {s['chrf_offline']:8.1f} {s['delta']:+6.1f}  "
              f"{spread}{'' if s['gate_pass'] else '  below the gate'}")
    print(f"wrote {path} and {path.with_suffix('.png')}", file=sys.stderr)
    return 0
