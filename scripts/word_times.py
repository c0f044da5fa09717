"""Word timestamps of the Whisper backend against faster-whisper's (CTranslate2's own DTW), same weights.

    .venv/bin/python scripts/word_times.py [--manifest ../shared/eval/dev.jsonl] [--json bench/words/word_times.json]

Each English clip is decoded whole, as one utterance, by the embedded tiny.en
backend with ``word_timestamps`` and by ``faster_whisper.WhisperModel`` with
``word_timestamps=True`` on the CTranslate2 files the embedded model is
converted from (greedy, no VAD, language "en", no timestamp tokens, float32).
faster-whisper goes on decoding after the last word it timed, so only the
words of its first window (seek 0) are compared. Words are matched by aligning
the two normalized word lists; the script prints per-clip and overall median
absolute start and end differences.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.evaluation import Clip, eval_dir, load_manifest  # noqa: E402
from streaming.models.base import UtteranceOptions, Word  # noqa: E402

GOAL_S = 0.1
"""Both medians must stay at or below this."""


def faster_whisper_model(name: str = "tiny.en", threads: int = 1) -> Any:
    """faster-whisper on the CTranslate2 folder of an embedded model (model.bin, config.json, tokenizer.json)."""
    from faster_whisper import WhisperModel

    from streaming.models.embedded import EMBEDDED_MODELS

    sources = EMBEDDED_MODELS[name].sources()
    if len(sources.model_bin) != 1:
        raise SystemExit(f"{name} ships model.bin in pieces; faster-whisper needs one folder")
    return WhisperModel(str(sources.model_bin[0].parent), device="cpu", compute_type="float32", cpu_threads=threads)


def reference_words(model: Any, audio: Any) -> list[Word]:
    """faster-whisper's words of the first 30 s window of ``audio`` (one greedy decode)."""
    segments, _ = model.transcribe(audio, language="en", beam_size=1, temperature=0.0, vad_filter=False,
                                   word_timestamps=True, without_timestamps=True,
                                   condition_on_previous_text=False)
    return [Word(w.word.strip(), float(w.start), float(w.end), float(w.probability))
            for seg in segments if seg.seek == 0 for w in seg.words if w.word.strip()]


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def match_words(ours: list[Word], theirs: list[Word]) -> list[tuple[Word, Word]]:
    """Pairs of words: equal ones (after normalization) in the longest common alignment of the two
    lists, and between two such runs, gaps of the same length on both sides by position
    (``"1,"`` against ``"One,"``)."""
    a, b = [_norm(w.word) for w in ours], [_norm(w.word) for w in theirs]
    pairs: list[tuple[int, int]] = []
    i0 = j0 = 0
    for i, j, n in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        if i - i0 == j - j0:
            pairs += [(i0 + k, j0 + k) for k in range(i - i0)]
        pairs += [(i + k, j + k) for k in range(n)]
        i0, j0 = i + n, j + n
    return [(ours[i], theirs[j]) for i, j in pairs]


def compare(clips: list[Clip], backend: Any, model: Any) -> dict[str, Any]:
    """Per-clip words of both and the median absolute start/end differences over all matched words."""
    rows, starts, ends = [], [], []
    for clip in clips:
        audio = clip.load()
        st = backend.new_utterance(UtteranceOptions(language="en", word_timestamps=True))
        st.append_audio(audio)
        final = backend.finalize([st])[0]
        theirs = reference_words(model, audio)
        pairs = match_words(final.words or [], theirs)
        ds = [abs(o.start_s - t.start_s) for o, t in pairs]
        de = [abs(o.end_s - t.end_s) for o, t in pairs]
        starts += ds
        ends += de
        rows.append({
            "id": clip.id, "duration_s": round(audio.size / 16_000, 3), "text": final.text,
            "word_timing": final.word_timing, "words": len(final.words or []), "reference_words": len(theirs),
            "matched": len(pairs),
            "median_start_diff_s": round(statistics.median(ds), 3) if ds else None,
            "median_end_diff_s": round(statistics.median(de), 3) if de else None,
            "ours": [[w.word, w.start_s, w.end_s, round(w.probability, 3)] for w in final.words or []],
            "faster_whisper": [[w.word, round(w.start_s, 3), round(w.end_s, 3)] for w in theirs],
        })
    return {
        "median_start_diff_s": round(statistics.median(starts), 3) if starts else None,
        "median_end_diff_s": round(statistics.median(ends), 3) if ends else None,
        "mean_start_diff_s": round(statistics.fmean(starts), 3) if starts else None,
        "mean_end_diff_s": round(statistics.fmean(ends), 3) if ends else None,
        "matched_words": len(starts), "goal_s": GOAL_S, "clips": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(eval_dir() / "dev.jsonl"))
    parser.add_argument("--json", default="bench/words/word_times.json", help="write the results here ('' = don't)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from streaming.models.whisper import WhisperBackend

    clips = [c for c in load_manifest(args.manifest) if c.language == "en"]
    backend = WhisperBackend.from_embedded("tiny.en", threads=args.threads)
    result = compare(clips, backend, faster_whisper_model("tiny.en", args.threads))
    result["manifest"] = Path(args.manifest).name
    print(f"{'clip':<16} {'words':>5} {'ref':>4} {'match':>5} {'|Δstart| med':>13} {'|Δend| med':>11}")
    for row in result["clips"]:
        print(f"{row['id']:<16} {row['words']:>5} {row['reference_words']:>4} {row['matched']:>5} "
              f"{row['median_start_diff_s']!s:>13} {row['median_end_diff_s']!s:>11}")
    print(f"all: {result['matched_words']} matched words, median |Δstart| {result['median_start_diff_s']} s, "
          f"median |Δend| {result['median_end_diff_s']} s (goal ≤ {GOAL_S} s); "
          f"mean {result['mean_start_diff_s']} / {result['mean_end_diff_s']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
