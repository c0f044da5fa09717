"""Context (hotwords) for the Whisper backend: terms tiny.en gets wrong, leaks, and WER on dev-full.

    .venv/bin/python scripts/hotwords.py [--sections hotwords,leak,wer] [--json bench/words/hotwords.json]

``hotwords``: clips of dev-full where the embedded tiny.en mis-hears a name
or term, decoded as one utterance without and with a context naming it; a
case is fixed when the term is in the output with the context and not
without. ``leak``: the unrelated context "zebra quantum" on every English
dev clip; neither word may appear. ``wer``: WER of the English clips of
dev-full with no prompt (context None, the default), with the previous
clip's final text as ``previous_text`` (manifest order; the previous final is
the unprompted one), and with the unrelated context on every clip. Finals
only, batches of 8, one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.evaluation import Clip, dev_clips, normalize_english, wer  # noqa: E402
from streaming.models.base import UtteranceOptions  # noqa: E402

CASES: list[tuple[str, str, str]] = [
    # (clip, context, term that must appear); tiny.en's output without context in the comment
    ("cards_002", "Clubs, Spades, Hearts, Diamonds", "clubs"),  # "4. Queen of Clothes"
    ("librivox_0880", "ill-disposed", "ill disposed"),  # "an old-sposed young man"
    ("ljspeech_LJ001-0024", "Maintz, Peter Schoeffer", "schoeffer"),  # "at mains by Peter Schulfer"
    ("ljspeech_LJ001-0031", "Sweynheim, Pannartz, Subiaco", "pannartz"),  # "Swainheim and Panarps"
    ("dctts_LJ001-0054", "Jenson", "jenson"),  # "Dense and, however, ..."
    ("ljspeech_LJ001-0007", "Gutenberg", "gutenberg"),  # "the Guttenburg or 42-line Bible"
    ("dctts_LJ001-0092", "Caslon, Willoughby", "willoughby"),  # "the Diary of Lady Willonby"
    ("dctts_LJ001-0123", "Bradshaw", "bradshaw"),  # "read Brouchhoff's guide"
]
LEAK_CONTEXT = "zebra quantum"
LEAK_WORDS = ("zebra", "quantum")
BATCH = 8


def has_term(text: str, term: str) -> bool:
    """Whether the words of ``term`` appear in order, side by side, in ``text`` (both normalized)."""
    words, want = normalize_english(text).split(), normalize_english(term).split()
    return any(words[i:i + len(want)] == want for i in range(len(words) - len(want) + 1))


def finals(backend: Any, clips: list[Clip], options: list[UtteranceOptions]) -> list[str]:
    """Final text of each clip decoded whole as one utterance, ``BATCH`` at a time."""
    texts: list[str] = []
    for i in range(0, len(clips), BATCH):
        states = []
        for clip, opts in zip(clips[i:i + BATCH], options[i:i + BATCH], strict=True):
            st = backend.new_utterance(opts)
            st.append_audio(clip.load())
            states.append(st)
        texts += [f.text for f in backend.finalize(states)]
    return texts


def hotword_cases(backend: Any, cases: list[tuple[str, str, str]] = CASES) -> list[dict[str, Any]]:
    clips = {c.id: c for c in dev_clips(full=True)}
    picked = [clips[cid] for cid, _, _ in cases]
    before = finals(backend, picked, [UtteranceOptions(language="en")] * len(picked))
    after = finals(backend, picked, [UtteranceOptions(language="en", context=ctx) for _, ctx, _ in cases])
    return [{"id": cid, "context": ctx, "term": term, "reference": clips[cid].text, "before": b, "after": a,
             "term_before": has_term(b, term), "term_after": has_term(a, term),
             "wer_before": round(wer([clips[cid].text], [b]), 3), "wer_after": round(wer([clips[cid].text], [a]), 3)}
            for (cid, ctx, term), b, a in zip(cases, before, after, strict=True)]


def leak_check(backend: Any, clips: list[Clip]) -> list[dict[str, Any]]:
    texts = finals(backend, clips, [UtteranceOptions(language="en", context=LEAK_CONTEXT)] * len(clips))
    return [{"id": c.id, "text": t, "leaked": any(w in normalize_english(t).split() for w in LEAK_WORDS)}
            for c, t in zip(clips, texts, strict=True)]


def wer_table(backend: Any, clips: list[Clip]) -> dict[str, Any]:
    refs = [c.text for c in clips]
    plain = finals(backend, clips, [UtteranceOptions(language="en")] * len(clips))
    prompted = dataclasses.replace(backend.decoding, prompt_previous_text=True)
    saved, backend.decoding = backend.decoding, prompted
    try:
        previous = finals(backend, clips, [UtteranceOptions(language="en", previous_text=p)
                                           for p in [None, *plain[:-1]]])
    finally:
        backend.decoding = saved
    unrelated = finals(backend, clips, [UtteranceOptions(language="en", context=LEAK_CONTEXT)] * len(clips))
    return {"clips": len(clips),
            "wer_no_prompt": round(wer(refs, plain), 4),
            "wer_previous_text": round(wer(refs, previous), 4),
            "wer_unrelated_context": round(wer(refs, unrelated), 4),
            "per_clip": [{"id": c.id, "no_prompt": a, "previous_text": b, "unrelated_context": u}
                         for c, a, b, u in zip(clips, plain, previous, unrelated, strict=True)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="hotwords,leak,wer")
    parser.add_argument("--json", default="bench/words/hotwords.json", help="merged into this file ('' = don't)")
    args = parser.parse_args()
    from streaming.models.whisper import WhisperBackend

    backend = WhisperBackend.from_embedded("tiny.en", threads=1)
    sections = set(args.sections.split(","))
    out: dict[str, Any] = {}
    if args.json and Path(args.json).is_file():
        out = json.loads(Path(args.json).read_text(encoding="utf-8"))
    if "hotwords" in sections:
        out["hotwords"] = rows = hotword_cases(backend)
        for r in rows:
            print(f"{r['id']}  context={r['context']!r}  term={r['term']!r}\n"
                  f"   before ({'has' if r['term_before'] else 'no '} term, WER {r['wer_before']}): {r['before']}\n"
                  f"   after  ({'has' if r['term_after'] else 'no '} term, WER {r['wer_after']}): {r['after']}")
        fixed = sum(r["term_after"] and not r["term_before"] for r in rows)
        print(f"hotwords: {fixed}/{len(rows)} terms fixed by the context")
    if "leak" in sections:
        out["leak"] = rows = leak_check(backend, [c for c in dev_clips() if c.language == "en"])
        print(f"leak: context {LEAK_CONTEXT!r} appeared in {sum(r['leaked'] for r in rows)}/{len(rows)} dev clips")
    if "wer" in sections:
        out["wer_dev_full_en"] = table = wer_table(backend, [c for c in dev_clips(full=True) if c.language == "en"])
        print(f"dev-full English ({table['clips']} clips): WER no prompt {table['wer_no_prompt']:.2%}, "
              f"previous text {table['wer_previous_text']:.2%}, unrelated context {table['wer_unrelated_context']:.2%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
