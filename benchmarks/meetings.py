"""Speaker-label benchmark: meetings made of real speech from distinct speakers, scored offline.

A meeting alternates turns between 2-4 speakers of the dev set (one clip per turn,
clips repeat for speakers with little audio), with natural gaps (0.3-1.5 s) and
some back-to-back turns (0-0.15 s), over a faint seeded noise floor. The offline
evaluation cuts the meeting where the server's VAD would, one utterance per
reference turn, except that back-to-back turns make one utterance (so the tracker
must find the change inside it), and runs ``SpeakerEncoder.embed_windows`` and
``SpeakerTracker.commit`` per utterance in order. It scores the labels by time
(accuracy, DER) and per reference turn, after mapping hypothesis speakers one to
one onto the reference speakers.

Everything but :func:`main` is pure: clip facts and arrays in, meetings and
scores out. ``python -m benchmarks.meetings --speakers 2 3 4 --out bench/meetings/``.

``--streamed`` streams the meetings through an in-process server instead (protocol v1,
``diarize`` and ``words``, real-time pace, several at once) and scores what the finals say:
the share of words and of finals with the right speaker, time accuracy and DER from the
words; the same load with ``diarize`` off gives its cost (final latency, CPU per audio second,
streams held).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streaming.speakers import SpeakerOptions, SpeakerTracker, window_spans

SAMPLE_RATE_HZ = 16_000
FRAME_S = 0.01
"""Scoring resolution."""
GAP_RANGE_S = (0.3, 1.5)
"""A natural pause between turns."""
BACK_TO_BACK_RANGE_S = (0.0, 0.15)
"""A turn that follows at once: too short a pause for a VAD to end the utterance."""
BACK_TO_BACK_SHARE = 0.2
"""About this share of turns follow back to back."""
MERGE_GAP_S = 0.15
"""Turns this close make one utterance in the offline evaluation."""
MEETING_RANGE_S = (120.0, 300.0)
LEAD_S = 0.5
"""Noise floor before the first turn."""
NOISE_FLOOR = 1e-4
"""Standard deviation of the seeded noise under the whole meeting (about -80 dBFS)."""
COLLAR_S = 0.25
"""DER ignores this much time either side of every reference turn boundary."""
SPEAKER_GROUPS = ("lj", "mfa", "librispeech", "librivox", "jfk")
_MFA_SPEAKER = ("mfa_acoustic_corpus", "mfa_cold_corpus")
"""The MFA test corpus's one read-speech speaker; common voice, falsetto and whisper clips are other voices."""


def speaker_of(clip_id: str) -> str | None:
    """The dev-set speaker group of a clip, or None when it is not one of the distinct speakers used here.

    ``dctts_*`` clips are excluded: they are TTS of the LJ Speech voice, the same speaker as ``ljspeech_*``.
    """
    if clip_id.startswith(("ljspeech_", "lhotse_ljspeech_")):
        return "lj"
    if clip_id.startswith(_MFA_SPEAKER):
        return "mfa"
    if clip_id.startswith("librispeech_2412-"):
        return "librispeech"
    if clip_id.startswith("librivox_"):
        return "librivox"
    if clip_id == "jfk":
        return "jfk"
    return None


@dataclass(frozen=True)
class ClipFacts:
    """What the meeting planner needs of a clip."""

    clip_id: str
    duration_s: float
    text: str


@dataclass(frozen=True)
class Turn:
    """One reference turn of a meeting: who spoke which clip, when (seconds of meeting audio)."""

    speaker: str
    start_s: float
    end_s: float
    clip_id: str
    text: str


@dataclass(frozen=True)
class Segment:
    """A stretch of time with one label (a reference speaker name or a hypothesis number)."""

    label: Hashable
    start_s: float
    end_s: float


def clips_by_speaker(clips: Sequence[ClipFacts]) -> dict[str, list[ClipFacts]]:
    """The usable clips of each speaker group, in id order."""
    groups: dict[str, list[ClipFacts]] = {}
    for clip in sorted(clips, key=lambda c: c.clip_id):
        speaker = speaker_of(clip.clip_id)
        if speaker is not None:
            groups.setdefault(speaker, []).append(clip)
    return groups


def plan_meeting(clips: dict[str, list[ClipFacts]], n_speakers: int, seed: int,
                 duration_s: float | None = None) -> list[Turn]:
    """Seeded turns of ``n_speakers`` speakers, alternating, until the meeting reaches ``duration_s``.

    Speakers are drawn from ``clips``; the next speaker is never the one who just spoke;
    each speaker cycles through a shuffled order of their clips.
    """
    if not 2 <= n_speakers <= len(clips):
        raise ValueError(f"need 2..{len(clips)} speakers, not {n_speakers}")
    rng = np.random.default_rng(seed)
    speakers = sorted(rng.choice(sorted(clips), size=n_speakers, replace=False).tolist())
    target_s = duration_s if duration_s is not None else float(rng.uniform(*MEETING_RANGE_S))
    queues: dict[str, list[ClipFacts]] = {s: [] for s in speakers}
    turns: list[Turn] = []
    now_s = LEAD_S
    previous = None
    while not turns or turns[-1].end_s < target_s:
        speaker = str(rng.choice([s for s in speakers if s != previous]))
        if not queues[speaker]:
            queues[speaker] = [clips[speaker][i] for i in rng.permutation(len(clips[speaker]))]
        clip = queues[speaker].pop()
        if turns:
            back_to_back = rng.random() < BACK_TO_BACK_SHARE
            now_s += float(rng.uniform(*(BACK_TO_BACK_RANGE_S if back_to_back else GAP_RANGE_S)))
        turns.append(Turn(speaker, round(now_s, 3), round(now_s + clip.duration_s, 3), clip.clip_id, clip.text))
        now_s = turns[-1].end_s
        previous = speaker
    return turns


def render_meeting(turns: Sequence[Turn], audio_of: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """The meeting's 16 kHz mono float32 audio: each turn's clip at its start over a seeded noise floor."""
    total = int(math.ceil((turns[-1].end_s + LEAD_S) * SAMPLE_RATE_HZ))
    audio = np.random.default_rng(seed).normal(0.0, NOISE_FLOOR, total).astype(np.float32)
    for turn in turns:
        clip = audio_of[turn.clip_id]
        start = int(round(turn.start_s * SAMPLE_RATE_HZ))
        audio[start:start + len(clip)] += clip[:total - start]
    return audio


def utterances_of(turns: Sequence[Turn], merge_gap_s: float = MERGE_GAP_S) -> list[tuple[float, float]]:
    """Where a VAD would cut: one ``(start_s, end_s)`` per turn, turns at most ``merge_gap_s`` apart merged."""
    spans: list[tuple[float, float]] = []
    for turn in turns:
        if spans and turn.start_s - spans[-1][1] <= merge_gap_s:
            spans[-1] = (spans[-1][0], turn.end_s)
        else:
            spans.append((turn.start_s, turn.end_s))
    return spans


def _frames(segments: Sequence[Segment], n_frames: int, index: dict[Hashable, int]) -> np.ndarray:
    """Label index per scoring frame (-1: nobody); later segments overwrite earlier ones."""
    frames = np.full(n_frames, -1, dtype=np.int64)
    for segment in segments:
        first = int(round(segment.start_s / FRAME_S))
        last = int(round(segment.end_s / FRAME_S))
        frames[max(0, first):max(0, min(n_frames, last))] = index.setdefault(segment.label, len(index))
    return frames


def best_mapping(overlap: np.ndarray) -> dict[int, int]:
    """The one-to-one map of hypothesis rows to reference columns with the most total overlap.

    Exhaustive over permutations of the smaller side (a meeting has a handful of speakers);
    above 200 000 permutations, greedy by largest overlap.
    """
    n_hyp, n_ref = overlap.shape
    if n_hyp == 0 or n_ref == 0:
        return {}
    small, large = min(n_hyp, n_ref), max(n_hyp, n_ref)
    if math.perm(large, small) > 200_000:
        mapping: dict[int, int] = {}
        for flat in np.argsort(-overlap, axis=None):
            h, r = divmod(int(flat), n_ref)
            if h not in mapping and r not in mapping.values() and overlap[h, r] > 0:
                mapping[h] = r
        return mapping
    best_total, best = -1.0, {}
    for chosen in itertools.permutations(range(large), small):
        pairs = list(zip(range(small), chosen)) if n_hyp <= n_ref else list(zip(chosen, range(small)))
        total = float(sum(overlap[h, r] for h, r in pairs))
        if total > best_total:
            best_total, best = total, dict(pairs)
    return {h: r for h, r in best.items() if overlap[h, r] > 0}


@dataclass(frozen=True)
class Scores:
    """How well hypothesis labels match the reference turns of one meeting."""

    accuracy: float
    """Share of reference speech time whose mapped hypothesis speaker is right (no hypothesis counts as wrong)."""
    turn_accuracy: float
    """Share of reference turns whose most-covering mapped hypothesis speaker is right."""
    der: float
    """(missed + false alarm + confusion) / reference speech time, outside the collar."""
    missed: float
    false_alarm: float
    confusion: float
    hyp_speakers: int
    mapping: dict[str, str]
    """Hypothesis label -> reference speaker (both as strings, for JSON)."""


def score(reference: Sequence[Turn], hypothesis: Sequence[Segment], collar_s: float = COLLAR_S) -> Scores:
    """Score hypothesis segments against reference turns (no overlapping speech in either)."""
    end_s = max([t.end_s for t in reference] + [s.end_s for s in hypothesis])
    n_frames = int(math.ceil(end_s / FRAME_S)) + 1
    ref_index: dict[Hashable, int] = {}
    hyp_index: dict[Hashable, int] = {}
    ref = _frames([Segment(t.speaker, t.start_s, t.end_s) for t in reference], n_frames, ref_index)
    hyp = _frames(hypothesis, n_frames, hyp_index)
    overlap = np.zeros((len(hyp_index), len(ref_index)))
    both = (ref >= 0) & (hyp >= 0)
    np.add.at(overlap, (hyp[both], ref[both]), 1)
    mapping = best_mapping(overlap)
    # Hypothesis speakers left unmapped map to -2: never right, but still speech (confusion, not a miss).
    lookup = np.array([mapping.get(h, -2) for h in range(len(hyp_index))] + [-1], dtype=np.int64)
    mapped = lookup[hyp]  # hyp == -1 picks the final -1: nobody
    speech = ref >= 0
    accuracy = float(np.mean(mapped[speech] == ref[speech])) if speech.any() else 1.0

    right_turns = 0
    for turn in reference:
        frames = mapped[int(round(turn.start_s / FRAME_S)):int(round(turn.end_s / FRAME_S))]
        frames = frames[frames != -1]
        if len(frames):
            values, counts = np.unique(frames, return_counts=True)
            right_turns += int(values[np.argmax(counts)] == ref_index[turn.speaker])

    scored = np.ones(n_frames, dtype=bool)
    collar = int(round(collar_s / FRAME_S))
    for turn in reference:
        for boundary in (turn.start_s, turn.end_s):
            centre = int(round(boundary / FRAME_S))
            scored[max(0, centre - collar):centre + collar] = False
    ref_time = float(np.sum(scored & speech))
    missed = float(np.sum(scored & speech & (hyp < 0)))
    false_alarm = float(np.sum(scored & ~speech & (hyp >= 0)))
    confusion = float(np.sum(scored & speech & (hyp >= 0) & (mapped != ref)))
    denominator = ref_time or 1.0
    ref_names = {i: str(label) for label, i in ref_index.items()}
    hyp_names = {i: str(label) for label, i in hyp_index.items()}
    return Scores(accuracy=accuracy, turn_accuracy=right_turns / len(reference) if reference else 1.0,
                  der=(missed + false_alarm + confusion) / denominator, missed=missed / denominator,
                  false_alarm=false_alarm / denominator, confusion=confusion / denominator,
                  hyp_speakers=len(hyp_index),
                  mapping={hyp_names[h]: ref_names[r] for h, r in sorted(mapping.items())})


@dataclass(frozen=True)
class Utterance:
    """One stretch the VAD would cut, in meeting time, with its speaker windows (times relative to ``start_s``)."""

    start_s: float
    end_s: float
    windows: Sequence


def hypothesis_segments(utterances: Sequence[Utterance], labels: Sequence[Sequence[int]]) -> list[Segment]:
    """Meeting-time segments from each utterance's windows and their labels.

    The first and last window speak for the utterance's edges too (the encoder leaves
    leading and trailing silence out of its windows, the server labels whole utterances).
    """
    segments = []
    for utterance, window_labels in zip(utterances, labels):
        spans = window_spans(utterance.windows)
        for i, ((start, end), label) in enumerate(zip(spans, window_labels)):
            start = 0.0 if i == 0 else start
            end = utterance.end_s - utterance.start_s if i == len(spans) - 1 else end
            segments.append(Segment(int(label), utterance.start_s + start, utterance.start_s + end))
    return segments


def track(utterances: Sequence[Utterance], options: SpeakerOptions) -> list[Segment]:
    """Run a fresh tracker over the utterances in order, committing each, as the server would on finals."""
    tracker = SpeakerTracker(options)
    return hypothesis_segments(utterances, [tracker.commit(u.windows) for u in utterances])


# --- the command line: real audio, the real encoder ---------------------------------------------

@dataclass
class Meeting:
    name: str
    turns: list[Turn]
    audio: np.ndarray


def build_meetings(counts: Sequence[int], per_count: int, seed: int) -> list[Meeting]:
    """``per_count`` seeded meetings for each number of speakers, from the dev set's audio."""
    from streaming.evaluation import dev_clips, load_audio

    clips = [c for c in dev_clips(full=True) if speaker_of(c.id) is not None]
    groups = clips_by_speaker([ClipFacts(c.id, len(load_audio(c.path)) / SAMPLE_RATE_HZ, c.text) for c in clips])
    audio_of = {c.id: load_audio(c.path) for c in clips}
    meetings = []
    for n in counts:
        for k in range(per_count):
            meeting_seed = seed * 1000 + n * 10 + k
            turns = plan_meeting(groups, n, meeting_seed)
            meetings.append(Meeting(f"{n}spk-{k}", turns, render_meeting(turns, audio_of, meeting_seed)))
    return meetings


def embed_meeting(meeting: Meeting, encoder) -> tuple[list[Utterance], float, float]:
    """The meeting's utterances with their windows, the seconds spent embedding and the seconds of audio embedded."""
    utterances, spent_s, audio_s = [], 0.0, 0.0
    for start_s, end_s in utterances_of(meeting.turns):
        chunk = meeting.audio[int(round(start_s * SAMPLE_RATE_HZ)):int(round(end_s * SAMPLE_RATE_HZ))]
        began = time.perf_counter()
        windows = encoder.embed_windows(chunk)
        spent_s += time.perf_counter() - began
        audio_s += len(chunk) / SAMPLE_RATE_HZ
        utterances.append(Utterance(start_s, end_s, windows))
    return utterances, spent_s, audio_s


def _sweep(embedded: list[tuple[Meeting, list]], thresholds: Sequence[float],
           min_segments: Sequence[float]) -> list[dict]:
    rows = []
    for threshold, min_segment_s in itertools.product(thresholds, min_segments):
        options = SpeakerOptions(threshold=threshold, min_segment_s=min_segment_s)
        scores = [score(m.turns, track(u, options)) for m, u in embedded]
        rows.append({"threshold": threshold, "min_segment_s": min_segment_s,
                     "accuracy_by_speakers": {
                         n: round(float(np.mean([s.accuracy for (m, _), s in zip(embedded, scores)
                                                 if len({t.speaker for t in m.turns}) == n])), 4)
                         for n in sorted({len({t.speaker for t in m.turns}) for m, _ in embedded})},
                     "mean_accuracy": round(float(np.mean([s.accuracy for s in scores])), 4)})
        print(f"sweep threshold={threshold:.2f} min_segment_s={min_segment_s:.1f}: "
              f"{rows[-1]['accuracy_by_speakers']} mean {rows[-1]['mean_accuracy']:.3f}")
    return rows


# --- streamed: the same meetings through the real server, at real-time pace ------------------------

def trimmed(meeting: Meeting, seconds: float | None) -> Meeting:
    """The meeting's first whole turns that end within ``seconds`` (all of it when None), 1 s after the last."""
    if seconds is None:
        return meeting
    turns = [t for t in meeting.turns if t.end_s <= seconds - 1.0] or meeting.turns[:1]
    end = int(round((turns[-1].end_s + 1.0) * SAMPLE_RATE_HZ))
    return Meeting(meeting.name, turns, meeting.audio[:end])


def reference_speaker(turns: Sequence[Turn], start_s: float, end_s: float) -> str | None:
    """The reference speaker who talks most within [start_s, end_s] (None: nobody does)."""
    best, best_overlap = None, 0.0
    for turn in turns:
        overlap = min(end_s, turn.end_s) - max(start_s, turn.start_s)
        if overlap > best_overlap:
            best, best_overlap = turn.speaker, overlap
    return best


def score_stream(turns: Sequence[Turn], finals: Sequence[dict]) -> dict:
    """Score a diarized stream's finals: time accuracy and DER from their words (``score``), the share of
    words and of finals whose mapped speaker is the reference one (words by their own span, widened
    to 0.3 s so a short word still finds its turn)."""
    words = [w for f in finals if f.get("text") for w in f.get("words") or []]
    segments = [Segment(w["speaker"], w["start_s"], w["end_s"]) for w in words if w.get("speaker") is not None]
    scores = score(turns, segments)
    mapping = scores.mapping
    right_words = sum(mapping.get(str(w["speaker"])) == reference_speaker(turns, w["start_s"] - 0.15,
                                                                          w["end_s"] + 0.15) for w in words)
    labelled = [f for f in finals if f.get("text")]
    right_finals = sum(mapping.get(str(f.get("speaker"))) == reference_speaker(turns, f["start_s"], f["end_s"])
                       for f in labelled)
    return {"word_accuracy": round(right_words / len(words), 4) if words else 0.0,
            "final_accuracy": round(right_finals / len(labelled), 4) if labelled else 0.0,
            "time_accuracy": round(scores.accuracy, 4), "der": round(scores.der, 4),
            "hyp_speakers": scores.hyp_speakers, "words": len(words), "finals": len(labelled),
            "mapping": mapping}


async def _stream_all(url: str, meetings: Sequence[Meeting], diarize: bool, speed: float) -> list:
    from .loadgen import stream_audio

    fields = {"diarize": True, "words": True} if diarize else {"words": True}
    timeout = max(len(m.audio) for m in meetings) / SAMPLE_RATE_HZ / max(speed, 0.05) + 300
    return await asyncio.gather(*(stream_audio(url, m.audio, speed=speed, start_fields=fields, timeout_s=timeout)
                                  for m in meetings))


def run_streamed(args: argparse.Namespace) -> dict:
    """Stream ``args.streams`` meetings at once (each size in turn), diarize off then on; score and time them."""
    from streaming.config import Config
    from streaming.loading import load_configured_backend
    from streaming.server import BackgroundServer

    from .bench import HELD_FINAL_P95_S
    from .report import percentile
    from .resources import snapshot, usage

    pool = [trimmed(m, args.seconds) for m in build_meetings(args.speakers, max(args.streams) // len(args.speakers)
                                                             + 1, args.seed)]
    by_size = sorted(pool, key=lambda m: (m.name.split("-")[1], m.name))  # 2spk-0, 3spk-0, 4spk-0, 2spk-1, …
    config = Config()
    config.server.host, config.server.port = "127.0.0.1", 0
    config.server.load_admission = False  # measure the load, do not refuse it
    config.server.capacity_streams = max(args.streams)
    backend = load_configured_backend(config)
    levels, rows = [], []
    with BackgroundServer(backend, config) as handle:
        if not handle.server.speaker_encoder:
            raise SystemExit("meetings: the speaker encoder is not installed (make setup)")
        for n in args.streams:
            meetings = by_size[:n]
            audio_s = sum(len(m.audio) for m in meetings) / SAMPLE_RATE_HZ
            for diarize in (False, True):
                before = snapshot()
                results = asyncio.run(_stream_all(handle.url, meetings, diarize, args.speed))
                used = usage(before, snapshot())
                cpu_s = (snapshot().process_cpu_s - before.process_cpu_s)
                finals = [x for r in results for x in r.final_latency_s]
                errors = [e for r in results for e in r.errors]
                level = {"streams": n, "diarize": diarize, "audio_s": round(audio_s, 1),
                         "final_latency_s_p50": percentile(finals, 50), "final_latency_s_p95": percentile(finals, 95),
                         "cpu_s_per_audio_s": round(cpu_s / audio_s, 4), **used, "errors": len(errors),
                         "held": bool(finals) and not errors and percentile(finals, 95) <= HELD_FINAL_P95_S}
                levels.append(level)
                print(f"{n} streams, diarize {'on ' if diarize else 'off'}: final p50/p95 "
                      f"{level['final_latency_s_p50']:.2f}/{level['final_latency_s_p95']:.2f} s, "
                      f"CPU {level['cpu_s_per_audio_s']:.3f} s per audio s, errors {len(errors)}", flush=True)
                if diarize:
                    for meeting, result in zip(meetings, results, strict=True):
                        row = {"streams": n, "meeting": meeting.name,
                               "speakers": sorted({t.speaker for t in meeting.turns}),
                               "duration_s": round(len(meeting.audio) / SAMPLE_RATE_HZ, 1),
                               **score_stream(meeting.turns, result.finals)}
                        rows.append(row)
                        print(f"  {meeting.name}: {row['duration_s']:.0f} s, {len(row['speakers'])} speakers -> "
                              f"{row['hyp_speakers']} found; words {row['word_accuracy']:.3f}, finals "
                              f"{row['final_accuracy']:.3f}, time {row['time_accuracy']:.3f}, DER {row['der']:.3f}",
                              flush=True)
    held = {str(d): max([lv["streams"] for lv in levels if lv["diarize"] == d and lv["held"]], default=0)
            for d in (False, True)}
    return {"benchmark": "meetings-streamed", "model": backend.name, "speed": args.speed, "seconds": args.seconds,
            "held_final_p95_s": HELD_FINAL_P95_S, "streams_held": {"diarize_off": held["False"],
                                                                   "diarize_on": held["True"]},
            "levels": levels, "meetings": rows}


def plot_streamed(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, lat) = plt.subplots(1, 2, figsize=(11, 4))
    rows = report["meetings"]
    names = [f"{r['meeting']} ({r['streams']})" for r in rows]
    x = np.arange(len(rows))
    acc.bar(x - 0.2, [r["word_accuracy"] for r in rows], 0.4, label="words")
    acc.bar(x + 0.2, [r["final_accuracy"] for r in rows], 0.4, label="finals")
    acc.axhline(0.9, color="grey", lw=1, ls="--")
    acc.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    acc.set_ylim(0, 1.02)
    acc.set_title("speaker accuracy, streamed (meeting, concurrent streams)")
    acc.legend()
    for diarize, style in ((False, "o--"), (True, "s-")):
        levels = [lv for lv in report["levels"] if lv["diarize"] == diarize]
        label = "diarize on" if diarize else "diarize off"
        lat.plot([lv["streams"] for lv in levels], [lv["final_latency_s_p95"] for lv in levels], style,
                 label=f"{label}: final p95")
        lat.plot([lv["streams"] for lv in levels], [lv["final_latency_s_p50"] for lv in levels], style, alpha=0.5,
                 label=f"{label}: final p50")
    lat.axhline(report["held_final_p95_s"], color="grey", lw=1, ls="--", label="held threshold (p95)")
    lat.set_xlabel("concurrent real-time meeting streams")
    lat.set_ylabel("seconds after speech end")
    lat.set_title("the cost of diarize")
    lat.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, nargs="+", default=[2, 3, 4], help="speakers per meeting")
    parser.add_argument("--meetings", type=int, default=3, help="meetings per number of speakers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=SpeakerOptions().threshold)
    parser.add_argument("--min-segment-s", type=float, default=SpeakerOptions().min_segment_s)
    parser.add_argument("--sweep", action="store_true", help="also score a grid of thresholds and min_segment_s")
    parser.add_argument("--out", type=Path, default=Path("bench/meetings"))
    parser.add_argument("--streamed", action="store_true",
                        help="instead of offline: stream the meetings through an in-process server (embedded "
                             "tiny.en) with diarize off and on, and score the finals' speaker labels")
    parser.add_argument("--streams", type=int, nargs="+", default=[3, 6],
                        help="--streamed: concurrent meeting streams per level (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=150.0,
                        help="--streamed: each meeting's first whole turns within this long (default %(default)s)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="--streamed: pace, 1 = real time (default), 0 = as fast as the server reads")
    args = parser.parse_args(argv)
    if args.streamed:
        report = run_streamed(args)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "streamed.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        plot_streamed(report, args.out / "streamed.png")
        print(f"wrote {path} and streamed.png; streams held (final p95 <= {report['held_final_p95_s']} s): "
              f"diarize off {report['streams_held']['diarize_off']}, on {report['streams_held']['diarize_on']}")
        return 0

    from streaming.speaker_encoder import SpeakerEncoder

    encoder = SpeakerEncoder.load()
    options = SpeakerOptions(threshold=args.threshold, min_segment_s=args.min_segment_s)
    results, embedded = [], []
    for meeting in build_meetings(args.speakers, args.meetings, args.seed):
        utterances, spent_s, audio_s = embed_meeting(meeting, encoder)
        embedded.append((meeting, utterances))
        scores = score(meeting.turns, track(utterances, options))
        row = {"meeting": meeting.name, "speakers": sorted({t.speaker for t in meeting.turns}),
               "duration_s": round(len(meeting.audio) / SAMPLE_RATE_HZ, 1), "turns": len(meeting.turns),
               "utterances": len(utterances), **asdict(scores), "embed_rtf": round(spent_s / audio_s, 4)}
        results.append(row)
        print(f"{meeting.name}: {row['duration_s']:.0f} s, {len(row['speakers'])} speakers -> "
              f"{scores.hyp_speakers} found, accuracy {scores.accuracy:.3f}, per turn {scores.turn_accuracy:.3f}, "
              f"DER {scores.der:.3f}, embed RTF {row['embed_rtf']:.3f}")
    report = {"options": asdict(options), "meetings": results}
    if args.sweep:
        report["sweep"] = _sweep(embedded, [0.60, 0.62, 0.64, 0.66, 0.68, 0.70, 0.75], [0.5, 1.0, 1.5, 2.0])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
