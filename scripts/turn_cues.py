"""Every pause of the turn-taking set, with what a smart-mode session knows there: the Smart Turn
probability and the decode of the utterance so far (the prefetched final). Offline, as fast as
the CPU allows: the real Session (its VAD and endpointer), the real backend and the real turn model,
answered inline; every pause is answered "wait" so the whole case is seen, and each pause records
how long its silence lasted. Then decision rules are replayed over those pauses: which pause ends
each case, how often a hesitation is cut, how many real ends the model takes at once.

    .venv/bin/python scripts/turn_cues.py --config configs/voice-agent.toml --out bench/turns/cues.json
    .venv/bin/python scripts/turn_cues.py --load bench/turns/cues.json          # rules only

Used to choose the text cue of ``streaming/turns.py`` (docs/turn-taking.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.turn_set import SAMPLE_RATE_HZ  # noqa: E402
from benchmarks.turns import WORDS_FILE, english_clips, load_words, turn_cases  # noqa: E402
from streaming import events as ev  # noqa: E402
from streaming.audio import float_to_pcm16  # noqa: E402
from streaming.config import load_config  # noqa: E402
from streaming.evaluation import eval_dir  # noqa: E402
from streaming.session import (FeedAudio, ModelInfo, OpenUtterance, RequestEager, RequestFinal,  # noqa: E402
                               RequestPartial, ScoreTurn, Session)

CHUNK_S = 0.05


def replay_case(case, backend, turn_model, config, pause_ms: int = 150) -> dict[str, Any]:
    """One case through a Session: its pauses (time, probability, text, silence that followed)."""
    info = ModelInfo(backend.name, turn_model=True, eager_decodes=True)
    session = Session("cues", config, info)
    states: dict[int, Any] = {}
    pauses: list[dict[str, Any]] = []
    finals: list[str] = []
    now = [0.0]

    def run(actions) -> None:
        for a in actions:
            if isinstance(a, OpenUtterance):
                states[a.utterance_id] = backend.new_utterance(a.options)
            elif isinstance(a, FeedAudio):
                states[a.utterance_id].append_audio(a.audio)
                for p in pauses:
                    if p["resumed_s"] is None:
                        p["resumed_s"] = now[0]
            elif isinstance(a, ScoreTurn):
                prob = turn_model.score([a.audio])[0]
                pauses.append({"at_s": round(now[0], 3), "p": round(prob, 4), "text": None, "resumed_s": None,
                               "_key": (a.utterance_id, a.pause)})
                run(session.turn_scored(a.utterance_id, a.pause, 0.0))
            elif isinstance(a, RequestEager):
                result = backend.finalize_open([states[a.utterance_id]])[0]
                for p in pauses:
                    if p["_key"] == (a.utterance_id, a.pause):
                        p["text"] = result.text.strip()
                run(session.eager_ready(a.utterance_id, a.pause, None))
            elif isinstance(a, RequestPartial):
                run(session.partial_ready(a.utterance_id, None))
            elif isinstance(a, RequestFinal):
                result = backend.finalize([states.pop(a.utterance_id)])[0]
                finals.append(result.text.strip())
                run(session.final_ready(a.utterance_id, result))

    run(session.handle(ev.Start(options={"turn_detection": "smart", "turn_max_silence_ms": 10_000,
                                         "turn_pause_ms": pause_ms, "partials": False})))
    n = int(CHUNK_S * SAMPLE_RATE_HZ)
    for i in range(0, case.audio.size, n):
        now[0] = (i + n) / SAMPLE_RATE_HZ
        run(session.handle(ev.Audio(float_to_pcm16(case.audio[i:i + n]))))
    run(session.handle(ev.Stop()))
    end_s = case.audio.size / SAMPLE_RATE_HZ
    for p in pauses:
        p.pop("_key")
        p["silence_s"] = round((p["resumed_s"] if p["resumed_s"] is not None else end_s) - p["at_s"], 3)
        p.pop("resumed_s")
        p["real_end"] = p["at_s"] >= case.speech_end_s
        p["inserted"] = bool(case.silence_s and case.silence_s[0] <= p["at_s"] <= case.silence_s[1])
    return {"case": case.case_id, "kind": case.kind, "speech_end_s": case.speech_end_s, "pauses": pauses,
            "finals": finals}


TERMINAL = (".", "?", "!")


def rule_outcome(case: dict[str, Any], decide) -> tuple[str, float | None]:
    """Which pause ends ``case`` under ``decide(p, text, silence_s) -> wait_s|0``: 'false_end' (the
    inserted pause), 'split' (another mid-turn pause), or 'end' with the wait taken at the real end."""
    for p in case["pauses"]:
        wait = decide(p["p"], p["text"] or "")
        if wait is None or p["silence_s"] < wait:
            continue
        if p["real_end"]:
            return "end", wait
        return ("false_end" if p["inserted"] else "split"), wait
    return "none", None


def rules(max_s: float) -> dict[str, Any]:
    def plain(end):
        return lambda p, text: 0.0 if p >= end else max_s

    def cue(end, text_end, text_wait):
        def decide(p, text):
            if p >= end:
                return 0.0
            if text.endswith(TERMINAL):
                return 0.0 if p >= text_end else text_wait
            return max_s
        return decide

    out = {f"model>={e}": plain(e) for e in (0.8, 0.9, 0.93, 0.95)}
    for e in (0.93, 0.95):
        for te in (0.3, 0.5, 0.7, 0.8):
            for tw in (0.6, 0.8, 1.0, max_s):
                out[f"model>={e} | text. & p>={te} | text. wait {tw}"] = cue(e, te, tw)
    return out


def evaluate(cases: list[dict[str, Any]], max_s: float) -> list[dict[str, Any]]:
    rows = []
    for name, decide in rules(max_s).items():
        hes = [rule_outcome(c, decide) for c in cases if c["kind"] == "hesitation"]
        comp = [rule_outcome(c, decide) for c in cases if c["kind"] == "complete"]
        ends = [w for o, w in hes + comp if o == "end"]
        rows.append({"rule": name,
                     "false_end": sum(o == "false_end" for o, _ in hes) / max(1, len(hes)),
                     "split_complete": sum(o != "end" for o, _ in comp) / max(1, len(comp)),
                     "ends_at_once": sum(w == 0.0 for w in ends) / max(1, len(ends)),
                     "ends_by_text_wait": sum(0 < w < max_s for w in ends) / max(1, len(ends)),
                     "ends_by_max": sum(w == max_s for w in ends) / max(1, len(ends))})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/voice-agent.toml")
    ap.add_argument("--clips", type=int, default=0, help="clips (0 = all usable)")
    ap.add_argument("--out", type=Path, default=Path("bench/turns/cues.json"))
    ap.add_argument("--load", type=Path, help="skip the replay: evaluate the rules over this file")
    ap.add_argument("--max-silence-s", type=float, default=2.0)
    ap.add_argument("--turn-pause-ms", type=int, default=150, help="the silence at which pauses are judged")
    args = ap.parse_args()
    if args.load:
        cases = json.loads(args.load.read_text())["cases"]
    else:
        from streaming.loading import load_configured_backend
        from streaming.smart_turn import load_turn_model

        config = load_config(args.config)
        backend = load_configured_backend(config)
        turn_model = load_turn_model(config.turn_model)
        built = turn_cases(english_clips(eval_dir() / "dev-full.jsonl"), load_words(WORDS_FILE), args.clips,
                           seed=0)
        cases = []
        t0 = time.perf_counter()
        for i, case in enumerate(built, 1):
            cases.append(replay_case(case, backend, turn_model, config, args.turn_pause_ms))
            print(f"{i}/{len(built)} {case.case_id}: {len(cases[-1]['pauses'])} pauses "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": args.config, "turn_pause_ms": args.turn_pause_ms, "cases": cases}, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    rows = evaluate(cases, args.max_silence_s)
    print(f"{'rule':58} {'false':>6} {'split':>6} {'once':>6} {'text':>6} {'max':>6}")
    for r in sorted(rows, key=lambda r: r["false_end"]):
        print(f"{r['rule']:58} {r['false_end']:6.1%} {r['split_complete']:6.1%} {r['ends_at_once']:6.1%} "
              f"{r['ends_by_text_wait']:6.1%} {r['ends_by_max']:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
