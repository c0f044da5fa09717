"""Turn-taking benchmark: false ends of turn and end-of-turn latency per turn-detection mode, over real sockets.

``python -m benchmarks turns --url ws://HOST:PORT/v1/stream --streams 1,4`` streams each case of
:mod:`benchmarks.turn_set` (a clip as a complete turn, and with a hesitation pause mid-sentence)
at real-time pace as its own protocol-v1 session, with the start options of each mode, and
scores what came back: a *false end* is an utterance ended inside the inserted pause with the
speech after it in another utterance; *latency* runs from the moment the last word's end was
sent to the final (and to ``speech_end``, and to an ``eager_end_of_turn`` that was not taken
back); WER of the finals against the references. ``--wer-only`` streams every English clip as
a complete case (still at real-time pace: smart mode's timers are wall-clock) to check the WER
gate: smart modes within :data:`WER_GATE_POINTS` of ``silence-600``. Writes
``turns-MODEL.json`` (and ``turns-MODEL.png``) or ``turns-wer-MODEL.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidStatus, WebSocketException

from streaming.config import Config
from streaming.evaluation import REPO_ROOT, Clip, eval_dir, load_manifest, wer

from .loadgen import sent_at_s, stream_audio
from .plotting import plot_turns
from .report import latency_summary
from .turn_set import SAMPLE_RATE_HZ, TimedWord, TurnCase, cases_of_clip, complete_case, spread

log = logging.getLogger("benchmarks.turns")

MODES: dict[str, dict[str, Any]] = {
    **{f"silence-{ms}": {"turn_detection": "silence", "endpoint_silence_ms": ms} for ms in (200, 400, 600)},
    **{f"smart-{e}": {"turn_detection": "smart", "turn_eagerness": e, "eager_end_of_turn": True}
       for e in ("low", "medium", "high", "auto")},
}
"""Benchmark mode -> the ``start`` fields that select it."""
WER_BASELINE = "silence-600"
WER_GATE_POINTS = 0.3
"""A smart mode passes the WER gate when its WER is at most this many points above :data:`WER_BASELINE`'s."""
WER_MODES = ("silence-600", "smart-low", "smart-medium", "smart-high", "smart-auto")
WORDS_FILE = REPO_ROOT / "bench" / "turns" / "words-tiny.en.json"
"""The clips' word times (tiny.en, cross-attention DTW), computed once so cases are the same every run."""
EARLY_END_S = 0.3
"""An utterance that ends this much before the silence around the pause still ended at the pause (VAD vs word times)."""
SPEED = 1.0
"""Real time: smart mode's pauses and maximum silence are judged on the wall clock too."""

TURNS_DESCRIPTION = f"""\
Turn-taking benchmark over real sockets. Each clip (English, dev-full) gives a complete case
(background, the clip, 2.5 s of background) and a hesitation case (the same with a 500-800 ms
pause of the clip's own background between two words 35-65 % through the sentence). Every case
is its own protocol-v1 session, streamed at real-time pace with the mode's start options:
{chr(10).join(f'  {m:<13} {json.dumps(f)}' for m, f in MODES.items())}
Scores per mode and stream count: false-end rate (hesitation cases split at the pause), split
rate of complete cases, latency from the last word's end to the final / speech_end / a standing
eager_end_of_turn (p50/p95), eager events and how many were taken back (turn_resumed), WER of
the finals, missing finals. Modes the server does not offer (/v1/info) are skipped. Results are
merged into --out/turns-MODEL.json by (mode, streams), plotted in turns-MODEL.png.

examples:
  python -m benchmarks turns --url ws://127.0.0.1:8765/v1/stream --modes silence-600 --clips 6
  python -m benchmarks turns --url ws://127.0.0.1:8765/v1/stream --streams 1,4          # all modes
  python -m benchmarks turns --url ws://127.0.0.1:8765/v1/stream --wer-only             # the WER gate"""


# ---------------------------------------------------------------------------- scoring (pure)

@dataclass
class Utterance:
    """One utterance of a case as the client saw it; ``*_at_s`` are arrival times on the events' clock."""

    start_s: float | None = None
    end_s: float | None = None
    text: str = ""
    partial_text: str = ""
    reason: str | None = None
    final_at_s: float | None = None
    speech_end_at_s: float | None = None
    eager: tuple[float, str] | None = None
    """The standing ``eager_end_of_turn`` (arrival, text): None when none came or ``turn_resumed`` took it back."""


@dataclass
class CaseScore:
    """What one case's stream scored (the JSON's per-case record, with its timeline)."""

    case_id: str
    kind: str
    false_end: bool | None
    """Hesitation cases: the utterance ended inside the pause and the rest came as another one."""
    splits: int
    """Utterance ends before the end of speech, other than length cuts (a complete turn should have none)."""
    final_latency_s: float | None
    speech_end_latency_s: float | None
    eager_latency_s: float | None
    eager_events: int
    turn_resumed: int
    eager_matches_final: bool | None
    end_reason: str | None
    text: str
    error: str | None = None

    @property
    def missing_final(self) -> bool:
        return self.final_latency_s is None


def utterances(events: Sequence[tuple[float, dict[str, Any]]]) -> dict[int, Utterance]:
    """The events of one stream grouped by utterance, in utterance order."""
    out: dict[int, Utterance] = {}
    for at_s, e in events:
        uid = e.get("utterance_id")
        if not isinstance(uid, int):
            continue
        u = out.setdefault(uid, Utterance())
        kind = e["type"]
        if u.start_s is None and "start_s" in e:
            u.start_s = e["start_s"]
        if kind == "partial":
            u.partial_text = e.get("text", "")
        elif kind == "speech_end":
            u.end_s, u.speech_end_at_s = e["end_s"], at_s
            u.reason = e.get("reason", u.reason)
        elif kind == "final":
            u.end_s, u.text, u.final_at_s = e["end_s"], e.get("text", ""), at_s
            u.reason = e.get("reason", u.reason)
        elif kind == "eager_end_of_turn":
            u.eager = (at_s, e.get("text", ""))
        elif kind == "turn_resumed":
            u.eager = None
    return dict(sorted(out.items()))


def _spoke(u: Utterance) -> bool:
    return bool(u.text.strip() or (u.final_at_s is None and u.partial_text.strip()))


def false_end(utts: Sequence[Utterance], silence_s: tuple[float, float]) -> bool:
    """Whether an utterance that began before the silence ended inside it and later speech came separately."""
    a, b = silence_s
    for i, u in enumerate(utts):
        if u.end_s is None or u.start_s is None or u.start_s >= a or not a - EARLY_END_S <= u.end_s <= b:
            continue
        if any(_spoke(later) and later.end_s is not None and later.end_s > b for later in utts[i + 1:]):
            return True
    return False


def score_case(case: TurnCase, events: Sequence[tuple[float, dict[str, Any]]], speed: float = SPEED,
               error: str | None = None) -> CaseScore:
    """Score one case's event timeline: false end at the pause, splits, latencies from the end of speech."""
    utts = list(utterances(events).values())
    # The turn's end lies in the last utterance with text that began before the speech ended.
    ending = next((u for u in reversed(utts) if u.text.strip() and u.start_s is not None
                   and u.start_s < case.speech_end_s), None)
    spoke_at = sent_at_s(case.speech_end_s, speed)

    def since_end(at_s: float | None) -> float | None:
        return None if at_s is None else round(at_s - spoke_at, 3)

    splits = sum(1 for i, u in enumerate(utts) if u.end_s is not None and u.end_s < case.speech_end_s - EARLY_END_S
                 and u.reason != "max_length" and any(_spoke(later) for later in utts[i + 1:]))
    eager = ending.eager if ending else None
    return CaseScore(
        case.case_id, case.kind,
        false_end(utts, case.silence_s) if case.silence_s is not None else None, splits,
        since_end(ending.final_at_s) if ending else None,
        since_end(ending.speech_end_at_s) if ending else None,
        since_end(eager[0]) if eager else None,
        sum(1 for _, e in events if e["type"] == "eager_end_of_turn"),
        sum(1 for _, e in events if e["type"] == "turn_resumed"),
        (eager[1].strip() == ending.text.strip()) if eager and ending else None,
        ending.reason if ending else None,
        " ".join(u.text.strip() for u in utts if u.text.strip()), error)


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _wer(cases: Sequence[TurnCase], scores: Sequence[CaseScore]) -> float | None:
    refs = [c.text for c in cases]
    return round(wer(refs, [s.text for s in scores]), 4) if any(r.strip() for r in refs) else None


def summarize(mode: str, streams: int, cases: Sequence[TurnCase], scores: Sequence[CaseScore],
              wall_s: float = 0.0) -> dict[str, Any]:
    """One run (mode x streams) as the report's row."""
    pairs = list(zip(cases, scores, strict=True))
    hesitation = [s for s in scores if s.kind == "hesitation"]
    complete = [(c, s) for c, s in pairs if c.kind == "complete"]
    hes_pairs = [(c, s) for c, s in pairs if c.kind == "hesitation"]
    eager = [s.eager_latency_s for s in scores if s.eager_latency_s is not None]
    matched = [s.eager_matches_final for s in scores if s.eager_matches_final is not None]
    return {
        "mode": mode, "streams": streams, "start_fields": MODES.get(mode, {}), "cases": len(scores),
        "hesitation_cases": len(hesitation), "false_ends": sum(bool(s.false_end) for s in hesitation),
        "false_end_rate": _rate([bool(s.false_end) for s in hesitation]),
        "split_rate_complete": _rate([s.splits > 0 for _, s in complete]),
        "final_latency_s": latency_summary([s.final_latency_s for s in scores if s.final_latency_s is not None]),
        "speech_end_latency_s": latency_summary([s.speech_end_latency_s for s in scores
                                                 if s.speech_end_latency_s is not None]),
        "eager_latency_s": latency_summary(eager),
        "eager_events": sum(s.eager_events for s in scores), "turn_resumed": sum(s.turn_resumed for s in scores),
        "eager_matches_final_rate": _rate(matched),
        "wer": _wer(cases, scores),
        "wer_complete": _wer([c for c, _ in complete], [s for _, s in complete]),
        "wer_hesitation": _wer([c for c, _ in hes_pairs], [s for _, s in hes_pairs]),
        "missing_finals": sum(s.missing_final for s in scores), "errors": sum(s.error is not None for s in scores),
        "end_reasons": dict(Counter(s.end_reason or "none" for s in scores if not s.missing_final)),
        "final_latency_by_reason_s": {
            reason: latency_summary([s.final_latency_s for s in scores
                                     if s.end_reason == reason and s.final_latency_s is not None])
            for reason in sorted({s.end_reason for s in scores if s.end_reason and not s.missing_final})},
        "wall_s": round(wall_s, 1),
    }


def wer_gate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each smart run's WER against the baseline's at the same stream count (points = percentage points)."""
    base = {r["streams"]: r["wer"] for r in runs if r["mode"] == WER_BASELINE and r["wer"] is not None}
    gate = []
    for r in runs:
        if r["mode"].startswith("smart") and r["wer"] is not None and r["streams"] in base:
            delta = round(100 * (r["wer"] - base[r["streams"]]), 2)
            gate.append({"mode": r["mode"], "streams": r["streams"], "wer": r["wer"],
                         "baseline_wer": base[r["streams"]], "delta_points": delta,
                         "passed": delta <= WER_GATE_POINTS})
    return gate


def merge_runs(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of an earlier report that this one did not redo, then this one's (mode, streams is the key)."""
    redone = {(r["mode"], r["streams"]) for r in new}
    return [r for r in old if (r["mode"], r["streams"]) not in redone] + list(new)


def progress_row(run: dict[str, Any]) -> str:
    """One line of the terminal table."""
    def pair(s: dict[str, Any]) -> str:
        return "-" if s["p50"] is None else f"{s['p50']:.2f}/{s['p95']:.2f}"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    return (f"{run['mode']:<13} {run['streams']:>3} {run['cases']:>5} {pct(run['false_end_rate']):>9} "
            f"{pct(run['split_rate_complete']):>7} {pair(run['final_latency_s']):>12} "
            f"{pair(run['speech_end_latency_s']):>12} {pair(run['eager_latency_s']):>12} "
            f"{run['eager_events']:>5} {pct(run['wer']):>7} {run['missing_finals']:>4}")


TABLE_HEADER = (f"{'mode':<13} {'str':>3} {'cases':>5} {'false-end':>9} {'split':>7} {'final p50/95':>12} "
                f"{'s_end p50/95':>12} {'eager p50/95':>12} {'eager':>5} {'WER':>7} {'miss':>4}")


# ---------------------------------------------------------------------------- cases and word times

def load_words(path: Path) -> dict[str, list[TimedWord]]:
    """The cached word times: clip id -> words (seconds from the clip's start)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {cid: [TimedWord(w, s, e) for w, s, e in words] for cid, words in data["clips"].items()}


def build_words(clips: Sequence[Clip], config: Config, path: Path) -> None:
    """Word times of every clip from the configured model (one final with word timestamps each), saved to ``path``."""
    from streaming.loading import load_configured_backend
    from streaming.models.base import UtteranceOptions

    backend = load_configured_backend(config)
    clips_words = {}
    for clip in clips:
        state = backend.new_utterance(UtteranceOptions(language="en", word_timestamps=True))
        state.append_audio(clip.load())
        words = backend.finalize([state])[0].words or []
        clips_words[clip.id] = [[w.word, round(w.start_s, 3), round(w.end_s, 3)] for w in words]
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(f"  {json.dumps(cid)}: {json.dumps(words)}" for cid, words in clips_words.items())
    path.write_text(f'{{"model": {json.dumps(backend.name)}, "clips": {{\n{body}\n}}}}\n', encoding="utf-8")
    log.info("wrote word times of %d clips to %s", len(clips_words), path)


def english_clips(manifest: Path) -> list[Clip]:
    clips = [c for c in load_manifest(manifest) if c.language == "en"]
    if not clips:
        raise ValueError(f"{manifest} has no English clips")
    return clips


def turn_cases(clips: Sequence[Clip], words: dict[str, list[TimedWord]], count: int, seed: int) -> list[TurnCase]:
    """Complete and hesitation cases of ``count`` clips spread over those that have both (0 = all)."""
    usable = []
    for clip in clips:
        cases = cases_of_clip(clip.id, clip.text, clip.load(), words.get(clip.id, []), seed)
        if cases:
            usable.append(cases)
    return [case for pair in spread(usable, count) for case in pair]


def wer_cases(clips: Sequence[Clip], words: dict[str, list[TimedWord]], seed: int) -> list[TurnCase]:
    """Every clip as a complete case (one without word times ends its speech at the clip's end)."""
    cases = []
    for clip in clips:
        audio = clip.load()
        timed = words.get(clip.id) or [TimedWord("", 0.0, audio.size / SAMPLE_RATE_HZ)]
        cases.append(complete_case(clip.id, clip.text, audio, timed, seed))
    return cases


# ---------------------------------------------------------------------------- streaming (the shell)

def compact_timeline(events: Sequence[tuple[float, dict[str, Any]]]) -> list[list[Any]]:
    """The events as short rows: [arrival_s, type, utterance_id, stream times..., reason, text] (partials untexted)."""
    rows = []
    for at_s, e in events:
        row: list[Any] = [round(at_s, 3), e["type"], e.get("utterance_id")]
        row += [e[k] for k in ("start_s", "end_s", "at_s") if k in e]
        if "reason" in e:
            row.append(e["reason"])
        if e["type"] in ("final", "eager_end_of_turn"):
            row.append(e.get("text", ""))
        elif e["type"] == "error":
            row.append(f"{e.get('code')}: {e.get('message')}")
        rows.append(row)
    return rows


async def run_cases(url: str, cases: Sequence[TurnCase], fields: dict[str, Any], streams: int, *,
                    chunk_s: float, preroll_s: float,
                    on_case: Callable[[TurnCase, CaseScore], None]) -> tuple[list[CaseScore], list[list]]:
    """Stream every case as its own session, ``streams`` at once; their scores and timelines in case order."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(cases)):
        queue.put_nowait(i)
    scores: list[CaseScore | None] = [None] * len(cases)
    timelines: list[list] = [[] for _ in cases]
    refused: list[str] = []

    async def one(i: int) -> None:
        case, error, events = cases[i], None, []
        try:
            result = await stream_audio(url, case.audio, chunk_s=chunk_s, speed=SPEED, start_fields=fields,
                                        preroll_s=preroll_s, timeout_s=case.duration_s / SPEED + 60)
            events = result.events
            fatal = [e for e in result.errors if e.get("fatal")]
            if fatal:
                error = f"{fatal[0].get('code')}: {fatal[0].get('message')}"
                if fatal[0].get("code") == "invalid_option":
                    refused.append(error)
            elif result.close_code != 1000:
                error = f"closed {result.close_code}: {result.disconnect_reason}"
        except (InvalidStatus, WebSocketException, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s", case.case_id, error)
        scores[i] = score_case(case, events, SPEED, error)
        timelines[i] = compact_timeline(events)
        on_case(case, scores[i])

    async def worker() -> None:
        while not queue.empty() and not refused:  # a refused mode fails every case alike: stop early
            await one(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(streams)))
    if refused:
        raise ModeRefused(refused[0])
    return [s for s in scores if s is not None], timelines


class ModeRefused(Exception):
    """The server refused the mode's start options (``invalid_option``): e.g. smart mode without its model."""


def mode_fields(mode: str, info: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The start fields of ``mode`` for this server, or None and why it cannot run it (from ``/v1/info``)."""
    fields = dict(MODES[mode])
    turn = info.get("turn_detection")
    if fields["turn_detection"] == "smart":
        if not isinstance(turn, dict) or "smart" not in turn.get("modes", []):
            return None, "the server offers no smart turn detection (no turn model, or an older server)"
        if not turn.get("eager_end_of_turn"):
            fields["eager_end_of_turn"] = False  # the backend cannot decode early: measure the rest
    if info.get("multilingual"):
        fields["language"] = "en"
    return fields, None


# ---------------------------------------------------------------------------- the command

def add_turns_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="a running server (ws://HOST:PORT/v1/stream); default: start the "
                                               "configured model in-process on loopback")
    p.add_argument("--modes", default=None, help=f"comma list of {', '.join(MODES)} (default: all; "
                                                 f"--wer-only: {', '.join(WER_MODES)})")
    p.add_argument("--streams", default=None, help="concurrent sessions, a comma list runs each (default 1; "
                                                   "--wer-only: 4)")
    p.add_argument("--clips", type=int, default=30, help="clips to use, spread over the usable ones (0 = all); "
                                                         "each gives a complete and a hesitation case")
    p.add_argument("--wer-only", action="store_true", help="stream every English clip as a complete case and "
                                                           f"report WER per mode (the gate: smart within "
                                                           f"{WER_GATE_POINTS} points of {WER_BASELINE})")
    p.add_argument("--chunk-ms", type=int, default=50, help="audio per frame, 20-100 ms")
    p.add_argument("--seed", type=int, default=0, help="seed of the pauses and background fills")
    p.add_argument("--manifest", default=None, help="JSONL manifest (default ../shared/eval/dev-full.jsonl)")
    p.add_argument("--words", default=str(WORDS_FILE), help="cached word times (built with the configured model "
                                                            "when missing)")
    p.add_argument("--build-words", action="store_true", help="recompute the word times even when cached")
    p.add_argument("--out", default="bench/turns", help="folder for the JSON and the plot")


def _chosen(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    modes = args.modes.split(",") if args.modes else list(WER_MODES if args.wer_only else MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    streams = [int(x) for x in (args.streams or ("4" if args.wer_only else "1")).split(",")]
    if not 20 <= args.chunk_ms <= 100 or any(n < 1 for n in streams):
        raise ValueError("--chunk-ms must be 20-100 and --streams >= 1")
    return modes, streams


def run_turns(args: argparse.Namespace, config: Config) -> int:
    """``python -m benchmarks turns``: every mode x stream count, a table row each, then the JSON and the plot."""
    from .ramp import InProcessTarget, fetch_info

    manifest = Path(args.manifest) if args.manifest else eval_dir() / "dev-full.jsonl"
    try:
        modes, streams = _chosen(args)
        clips = english_clips(manifest)
        words_path = Path(args.words)
        if args.build_words or not words_path.exists():
            build_words(clips, config, words_path)
        words = load_words(words_path)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cases = wer_cases(clips, words, args.seed) if args.wer_only else turn_cases(clips, words, args.clips, args.seed)
    target = InProcessTarget(config) if args.url is None else None
    url = args.url or target.url
    try:
        info = fetch_info(url)
        report = _run_all(url, info, cases, modes, streams, args, config.vad.preroll_ms / 1000)
    finally:
        if target is not None:
            target.close()
    report.update({"url": url if target is None else "in-process", "manifest": str(manifest),
                   "words": str(words_path), "seed": args.seed, "chunk_ms": args.chunk_ms})
    write_report(report, Path(args.out), wer_only=args.wer_only)
    return 0


def _run_all(url: str, info: dict[str, Any], cases: list[TurnCase], modes: list[str], streams: list[int],
             args: argparse.Namespace, preroll_s: float) -> dict[str, Any]:
    """Each mode at each stream count; a table row as each run ends."""
    model = str(info.get("model", "remote"))
    hesitation = sum(c.kind == "hesitation" for c in cases)
    print(f"turns: {model} at {url}: {len(cases)} cases ({hesitation} hesitation), modes {', '.join(modes)}, "
          f"streams {streams}; about {sum(c.duration_s for c in cases) / 60:.0f} min of audio per run", flush=True)
    runs, details, skipped = [], {}, {}
    for n in streams:
        for mode in modes:
            fields, why = mode_fields(mode, info)
            if fields is None:
                skipped[mode] = why
                print(f"{mode}: skipped ({why})", flush=True)
                continue
            done = [0]

            def on_case(case: TurnCase, score: CaseScore, mode: str = mode, n: int = n) -> None:
                done[0] += 1
                lat = "-" if score.final_latency_s is None else f"{score.final_latency_s:+.2f}s"
                flag = " FALSE END" if score.false_end else ""
                print(f"  [{mode} x{n}] {done[0]}/{len(cases)} {case.case_id}: final {lat} ({score.end_reason})"
                      f"{flag}{' ERROR ' + score.error if score.error else ''}", flush=True)

            t0 = time.perf_counter()
            try:
                scores, timelines = asyncio.run(run_cases(url, cases, fields, n, chunk_s=args.chunk_ms / 1000,
                                                          preroll_s=preroll_s, on_case=on_case))
            except ModeRefused as exc:
                skipped[mode] = f"refused: {exc}"
                print(f"{mode}: refused by the server ({exc})", flush=True)
                continue
            run = summarize(mode, n, cases, scores, time.perf_counter() - t0)
            run["start_fields"] = fields
            runs.append(run)
            details[f"{mode}@{n}"] = [{**asdict(s), "speech_end_s": c.speech_end_s, "pause_s": c.pause_s,
                                       "silence_s": c.silence_s, "duration_s": round(c.duration_s, 3),
                                       "timeline": t} for c, s, t in zip(cases, scores, timelines)]
            print(TABLE_HEADER + "\n" + progress_row(run), flush=True)
    return {"benchmark": "turns-wer" if args.wer_only else "turns", "model": model, "cases": len(cases),
            "hesitation_cases": hesitation, "clips": len({c.clip_id for c in cases}), "runs": runs,
            "skipped": skipped, "cases_detail": details}


def report_name(model: str, wer_only: bool) -> str:
    return ("turns-wer-" if wer_only else "turns-") + re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def write_report(report: dict[str, Any], out: Path, wer_only: bool = False) -> Path:
    """Merge with an earlier report of the same model (runs redone replace theirs), write JSON, table, plot."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report_name(report['model'], wer_only)}.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        report["runs"] = merge_runs(old.get("runs", []), report["runs"])
        report["cases_detail"] = {**old.get("cases_detail", {}), **report["cases_detail"]}
    report["runs"].sort(key=lambda r: (r["streams"], list(MODES).index(r["mode"]) if r["mode"] in MODES else 99))
    report["wer_gate"] = wer_gate(report["runs"])
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print("\n" + TABLE_HEADER + "\n" + "\n".join(progress_row(r) for r in report["runs"]), flush=True)
    for g in report["wer_gate"]:
        print(f"WER gate {g['mode']} x{g['streams']}: {100 * g['wer']:.2f}% vs {WER_BASELINE} "
              f"{100 * g['baseline_wer']:.2f}% ({g['delta_points']:+.2f} points): "
              f"{'pass' if g['passed'] else 'FAIL'}", flush=True)
    written = [path]
    if not wer_only and report["runs"]:
        written.append(path.with_suffix(".png"))
        plot_turns(report, written[-1])
    print("wrote " + " and ".join(map(str, written)), flush=True)
    return path
