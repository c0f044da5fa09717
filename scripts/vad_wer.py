"""Final-only WER on dev-full English with the real endpointer run offline, per VAD classifier.

    .venv/bin/python scripts/vad_wer.py [--manifest ../shared/eval/dev-full.jsonl]

Each clip gets 0.3 s of silence before and 1.5 s after (as the benchmark does),
goes through :class:`streaming.vad.Endpointer` in 100 ms feeds, and each
utterance the endpointer cuts is decoded once with the embedded tiny.en
backend's ``finalize`` (no partials). Run once with webrtcvad alone
(``speech_threshold=0``, the classifier before the Silero gate) and once with
the defaults; prints WER, utterance counts and how far the endpoints moved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.config import VadOptions  # noqa: E402
from streaming.evaluation import eval_dir, load_manifest, wer  # noqa: E402
from benchmarks.loadgen import with_silence  # noqa: E402
from streaming.models import load_backend  # noqa: E402
from streaming.models.base import UtteranceOptions  # noqa: E402
from streaming.vad import Endpointer, UtteranceAudio, UtteranceEnded, UtteranceStarted  # noqa: E402

SR = 16_000


def utterances(audio: np.ndarray, options: VadOptions) -> list[tuple[float, float, np.ndarray]]:
    """(start_s, end_s, audio passed on) of every utterance the endpointer cuts."""
    ep = Endpointer(options)
    events = []
    for i in range(0, audio.size, 1600):
        events += ep.feed(audio[i:i + 1600])
    events += ep.flush()
    out, parts, start = [], [], 0
    for ev in events:
        if isinstance(ev, UtteranceStarted):
            parts, start = [ev.audio], ev.start_sample
        elif isinstance(ev, UtteranceAudio):
            parts.append(ev.audio)
        elif isinstance(ev, UtteranceEnded):
            out.append((start / SR, ev.end_sample / SR, np.concatenate(parts)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(eval_dir() / "dev-full.jsonl"))
    parser.add_argument("--json", help="write the per-clip results here")
    parser.add_argument("--baseline", help="reuse the webrtcvad-alone results of an earlier --json (saves half the time)")
    args = parser.parse_args()
    clips = [c for c in load_manifest(args.manifest) if c.language == "en"]
    backend = load_backend("tiny.en", device="cpu")
    backend.warmup()
    configs = {"webrtcvad": dataclasses.replace(VadOptions(), speech_threshold=0.0), "webrtcvad+silero": VadOptions()}
    results: dict[str, dict[str, dict]] = {name: {} for name in configs}
    if args.baseline:
        results["webrtcvad"] = json.loads(Path(args.baseline).read_text())["results"]["webrtcvad"]
    for clip in clips:
        audio = with_silence(clip.load(), lead_s=0.3, trail_s=1.5)
        for name, options in configs.items():
            if clip.id in results[name]:
                continue
            utts = utterances(audio, options)
            states = []
            for _, _, samples in utts:
                st = backend.new_utterance(UtteranceOptions(language="en"))
                st.append_audio(samples)
                states.append(st)
            finals = backend.finalize(states) if states else []
            results[name][clip.id] = {"text": " ".join(f.text for f in finals if f.text).strip(),
                                      "spans": [(round(s, 3), round(e, 3)) for s, e, _ in utts]}
    refs = [c.text for c in clips]
    summary = {}
    for name in configs:
        hyps = [results[name][c.id]["text"] for c in clips]
        summary[name] = {"wer_percent": round(100 * wer(refs, hyps), 2),
                         "utterances": sum(len(results[name][c.id]["spans"]) for c in clips)}
    base, gated = results["webrtcvad"], results["webrtcvad+silero"]
    d_start, d_end, changed = [], [], []
    for c in clips:
        a, b = [list(x) for x in base[c.id]["spans"]], [list(x) for x in gated[c.id]["spans"]]
        if a and b:
            d_start.append(b[0][0] - a[0][0])
            d_end.append(b[-1][1] - a[-1][1])
        if a != b or base[c.id]["text"] != gated[c.id]["text"]:
            changed.append({"id": c.id, "before": base[c.id], "after": gated[c.id], "ref": c.text})
    summary["first_start_shift_s"] = {"mean": round(float(np.mean(d_start)), 3),
                                      "max_abs": round(float(np.max(np.abs(d_start))), 3)}
    summary["last_end_shift_s"] = {"mean": round(float(np.mean(d_end)), 3),
                                   "max_abs": round(float(np.max(np.abs(d_end))), 3)}
    summary["clips"] = len(clips)
    summary["clips_changed"] = len(changed)
    print(json.dumps(summary, indent=1))
    for ch in changed:
        print(json.dumps(ch))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "results": results}, indent=1))


if __name__ == "__main__":
    main()
