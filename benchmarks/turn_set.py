"""The turn-taking benchmark's test cases, made from real speech (pure: arrays and word times in, cases out).

Each clip gives two cases. *Complete*: lead-in background, the clip, then ~2.5 s of background;
the turn ends at the clip's last word. *Hesitation*: the same, with a 500-800 ms pause inserted
mid-sentence, at the widest quiet gap between two words 35-65 % of the way through the speech,
cut at that gap's middle (:func:`choose_cut`). Every added stretch (lead-in, pause, tail) is the
clip's own background: its quietest 30 ms frames overlap-added in a seeded order, so a pause
sounds like a pause in that recording, not digital zero; frames inside words (with a margin: the
word times are a model's) are left out of it, so a fill of a clip trimmed tight to its speech is not
made of the quiet ends of its words. Word times come from the benchmark's cache
(:mod:`benchmarks.turns`); they tend to end a clip's last word early, so a case's end of speech
is where the sound of that word ends (:func:`heard_end_s`). All times here are seconds of the
case's audio ("stream time").
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streaming.vad import frames_dbfs

SAMPLE_RATE_HZ = 16_000
LEAD_S = 0.5
"""Background before the speech."""
TRAIL_S = 2.5
"""Background after the last word: longer than any mode's wait (silence 600 ms, smart max silence 2 s)."""
PAUSE_RANGE_S = (0.5, 0.8)
"""Length of the inserted hesitation pause, drawn per clip."""
BOUNDARY_RANGE = (0.35, 0.65)
"""Where the pause may go: word boundaries this far through the speech (first word start to last word end)."""
MIN_WORDS = 6
"""Shorter clips have no middle to hesitate in."""
MIN_WORDS_EACH_SIDE = 2
"""Words the pause leaves before and after it."""
FRAME_S = 0.03
"""Frame of the background search."""
QUIET_FRACTION = 0.1
"""The quietest tenth of a clip's frames is its background."""
DIGITAL_SILENCE_DBFS = -90.0
"""Frames quieter than this are padding (digital zero or near it), not background."""
BACKGROUND_MAX_DBFS = -50.0
"""Louder frames are not a pause's background (a breath, a word the word times missed, a crowd)."""
FALLBACK_NOISE_DBFS = -70.0
"""Level of the seeded noise that stands in for a clip without any background frames."""
QUIET_MARGIN_DB = 10.0
"""A cut point is quiet when it is at most this much louder than the clip's background."""
SNAP_S = 0.06
"""How far beyond a gap's word times a quiet cut point is looked for."""
FADE_S = 0.005
"""Cross-fade at every join of speech and background (no click)."""
WORD_MARGIN_S = (0.05, 0.15)
"""Frames this close before a word's start or after its end are still the word, not background."""
END_SEARCH_S = 0.4
"""How far past the last word's end (word times) its sound is looked for."""
END_ABOVE_BACKGROUND_DB = 20.0
END_MIN_DBFS = -45.0
"""The last word sounds where it is this much above the background, and at least this loud."""


@dataclass(frozen=True)
class TimedWord:
    """One word of a clip with its span, seconds from the clip's start."""

    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TurnCase:
    """One benchmark stream: its audio and where, in its stream time, the speech and the pause lie."""

    case_id: str
    clip_id: str
    kind: str
    """``complete`` or ``hesitation``."""
    text: str
    """The clip's reference transcript."""
    audio: np.ndarray = field(compare=False, repr=False)
    speech_start_s: float
    """The first word's start."""
    speech_end_s: float
    """The last word's end: where the turn really ends."""
    pause_s: tuple[float, float] | None = None
    """Hesitation: the inserted pause [start, end)."""
    silence_s: tuple[float, float] | None = None
    """Hesitation: the whole silence around the pause, from the word before it ends to the word after starts."""

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE_HZ


def clip_seed(clip_id: str, seed: int) -> int:
    """A per-clip seed that does not depend on which other clips are used (nor on Python's hash salt)."""
    return zlib.crc32(clip_id.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


def frame_levels_dbfs(audio: np.ndarray, frame: int) -> np.ndarray:
    """The level of each whole ``frame``-sample frame of ``audio`` (the VAD's measure)."""
    n = audio.size // frame
    return frames_dbfs(audio[: n * frame].reshape(n, frame)) if n else np.zeros(0)


def outside_words(frames: int, words: Sequence[TimedWord]) -> np.ndarray:
    """Which of ``frames`` frames of :data:`FRAME_S` lie wholly outside every word (with :data:`WORD_MARGIN_S`)."""
    keep = np.ones(frames, bool)
    for w in words:
        lo = max(0, int((w.start_s - WORD_MARGIN_S[0]) / FRAME_S))
        hi = min(frames, int(np.ceil((w.end_s + WORD_MARGIN_S[1]) / FRAME_S)))
        keep[lo:hi] = False
    return keep


def background(audio: np.ndarray, samples: int, rng: np.random.Generator,
               words: Sequence[TimedWord] = ()) -> np.ndarray:
    """``samples`` of ``audio``'s background: its quietest frames outside ``words`` (not padding, and
    at most :data:`BACKGROUND_MAX_DBFS`), overlap-added in random order.

    Square-root Hann windows at half overlap keep the power of uncorrelated frames, so the fill
    has the background's level without clicks. A clip with no such frames gets faint noise.
    """
    frame = int(FRAME_S * SAMPLE_RATE_HZ)
    hop = frame // 2
    levels = frame_levels_dbfs(audio, frame)
    usable = np.flatnonzero((levels > DIGITAL_SILENCE_DBFS) & (levels <= BACKGROUND_MAX_DBFS)
                            & outside_words(levels.size, words))
    if usable.size < 3:
        return rng.normal(0.0, 10 ** (FALLBACK_NOISE_DBFS / 20), samples).astype(np.float32)
    count = max(3, int(round(QUIET_FRACTION * usable.size)))
    quiet = usable[np.argsort(levels[usable], kind="stable")[:count]]
    window = np.sqrt(np.hanning(frame + 1)[:frame]).astype(np.float32)
    slots = samples // hop + 2
    out = np.zeros((slots + 1) * hop, np.float32)
    for k, pick in enumerate(rng.integers(0, quiet.size, slots)):
        start = int(quiet[pick]) * frame
        out[k * hop:k * hop + frame] += window * audio[start:start + frame]
    return out[hop:hop + samples]  # the first half-frame has only one window over it


def join(parts: Sequence[np.ndarray], fade: int) -> np.ndarray:
    """Concatenate ``parts``, cross-fading ``fade`` samples at each join (each join shortens the sum by ``fade``)."""
    out = parts[0].astype(np.float32)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    for part in parts[1:]:
        part = part.astype(np.float32)
        mixed = out[out.size - fade:] * (1 - ramp) + part[:fade] * ramp
        out = np.concatenate([out[:out.size - fade], mixed, part[fade:]])
    return out


def background_dbfs(audio: np.ndarray) -> float:
    """The level of ``audio``'s background: the loudest of its quietest tenth of frames (padding left out)."""
    levels = frame_levels_dbfs(audio, int(FRAME_S * SAMPLE_RATE_HZ))
    levels = levels[levels > DIGITAL_SILENCE_DBFS]
    return float(np.percentile(levels, 100 * QUIET_FRACTION)) if levels.size >= 3 else FALLBACK_NOISE_DBFS


def heard_end_s(audio: np.ndarray, words: Sequence[TimedWord]) -> float:
    """Where the clip's speech ends: the end of the last 10 ms after the last word's start that is
    :data:`END_ABOVE_BACKGROUND_DB` above the background (within :data:`END_SEARCH_S` past the word
    times' end), or the word times' end when that is later or nothing is that loud."""
    last = words[-1]
    step = SAMPLE_RATE_HZ // 100
    lo = int(last.start_s * SAMPLE_RATE_HZ)
    hi = min(audio.size, int((last.end_s + END_SEARCH_S) * SAMPLE_RATE_HZ))
    levels = frame_levels_dbfs(audio[lo:hi], step)
    loud = np.flatnonzero(levels >= max(background_dbfs(audio) + END_ABOVE_BACKGROUND_DB, END_MIN_DBFS))
    heard_s = (lo + (int(loud[-1]) + 1) * step) / SAMPLE_RATE_HZ if loud.size else 0.0
    return max(last.end_s, heard_s)


def quietest_point(audio: np.ndarray, lo: int, hi: int) -> tuple[int, float]:
    """The middle of the quietest 10 ms of ``audio[lo:hi]`` (5 ms steps), and its level."""
    step = SAMPLE_RATE_HZ // 100
    lo, hi = max(0, lo), min(audio.size, hi)
    if hi - lo < step:
        middle = min(max((lo + hi) // 2, 0), audio.size)
        return middle, level_at(audio, middle)
    starts = np.arange(lo, hi - step + 1, step // 2)
    levels = frames_dbfs(np.stack([audio[s:s + step] for s in starts]))
    best = int(np.argmin(levels))
    return int(starts[best]) + step // 2, float(levels[best])


def level_at(audio: np.ndarray, sample: int) -> float:
    """The level of the 10 ms of ``audio`` centred on ``sample``."""
    half = SAMPLE_RATE_HZ // 200
    part = audio[max(0, sample - half):sample + half]
    return float(frames_dbfs(part[None, :])[0])


def choose_cut(audio: np.ndarray, words: Sequence[TimedWord]) -> tuple[int, int] | None:
    """Where the pause goes: (``i``, sample) for the boundary between words i and i+1, or None if none fits.

    Candidates: boundaries 35-65 % of the way through the speech (first word start to last word
    end) with two words each side. The cut is the gap's middle when that is quiet (within
    :data:`QUIET_MARGIN_DB` of the background), else the quietest 10 ms of the gap widened by
    :data:`SNAP_S`; a boundary with no quiet point is no word boundary (the word times are a
    model's, not exact). Of the quiet ones the widest gap wins (10 ms steps), then the one nearest the middle.
    """
    if len(words) < MIN_WORDS:
        return None
    first_s, span_s = words[0].start_s, words[-1].end_s - words[0].start_s
    quiet_dbfs = background_dbfs(audio) + QUIET_MARGIN_DB
    best: tuple[float, float, int, int] | None = None
    for i in range(MIN_WORDS_EACH_SIDE - 1, len(words) - MIN_WORDS_EACH_SIDE):
        before, after = words[i], words[i + 1]
        at = (before.end_s - first_s) / span_s if span_s > 0 else 0.0
        if not BOUNDARY_RANGE[0] <= at <= BOUNDARY_RANGE[1]:
            continue
        gap_s = max(0.0, after.start_s - before.end_s)
        cut = int(round((before.end_s + gap_s / 2) * SAMPLE_RATE_HZ))
        level = level_at(audio, cut)
        if level > quiet_dbfs:
            cut, level = quietest_point(audio, int((before.end_s - SNAP_S) * SAMPLE_RATE_HZ),
                                        int((after.start_s + SNAP_S) * SAMPLE_RATE_HZ))
        if level > quiet_dbfs:
            continue
        key = (round(gap_s, 2), -abs(at - 0.5))
        if best is None or key > best[:2]:
            best = (*key, i, cut)
    return None if best is None else (best[2], best[3])


def complete_case(clip_id: str, text: str, audio: np.ndarray, words: Sequence[TimedWord], seed: int) -> TurnCase:
    """The clip as one whole turn: lead-in background, the speech, ~2.5 s of background."""
    rng = np.random.default_rng([clip_seed(clip_id, seed), 0])
    fade = int(FADE_S * SAMPLE_RATE_HZ)
    lead = background(audio, int(LEAD_S * SAMPLE_RATE_HZ) + fade, rng, words)
    tail = background(audio, int(TRAIL_S * SAMPLE_RATE_HZ) + fade, rng, words)
    out = join([lead, audio, tail], fade)
    offset_s = (lead.size - fade) / SAMPLE_RATE_HZ
    return TurnCase(f"{clip_id}/complete", clip_id, "complete", text, out, round(words[0].start_s + offset_s, 3),
                    round(heard_end_s(audio, words) + offset_s, 3))


def hesitation_case(clip_id: str, text: str, audio: np.ndarray, words: Sequence[TimedWord],
                    seed: int) -> TurnCase | None:
    """The clip with a 500-800 ms background pause at a mid-sentence word boundary; None if it has none."""
    chosen = choose_cut(audio, words)
    if chosen is None:
        return None
    boundary, cut = chosen
    before, after = words[boundary], words[boundary + 1]
    rng = np.random.default_rng([clip_seed(clip_id, seed), 1])
    fade = int(FADE_S * SAMPLE_RATE_HZ)
    pause = int(round(rng.uniform(*PAUSE_RANGE_S) * SAMPLE_RATE_HZ))
    lead = background(audio, int(LEAD_S * SAMPLE_RATE_HZ) + fade, rng, words)
    gap = background(audio, pause + 2 * fade, rng, words)  # its fades overlap the speech: all the pause is fill
    tail = background(audio, int(TRAIL_S * SAMPLE_RATE_HZ) + fade, rng, words)
    out = join([lead, audio[:cut], gap, audio[cut:], tail], fade)
    offset_s = (lead.size - fade) / SAMPLE_RATE_HZ
    cut_s = cut / SAMPLE_RATE_HZ + offset_s
    pause_s = pause / SAMPLE_RATE_HZ

    def stream_s(clip_s: float) -> float:
        """A time of the clip in the case's stream: after the cut, moved by the pause."""
        return round(clip_s + offset_s + (pause_s if clip_s + offset_s >= cut_s else 0.0), 3)

    return TurnCase(f"{clip_id}/hesitation", clip_id, "hesitation", text, out, stream_s(words[0].start_s),
                    stream_s(heard_end_s(audio, words)), (round(cut_s, 3), round(cut_s + pause_s, 3)),
                    (stream_s(min(before.end_s, cut / SAMPLE_RATE_HZ)),
                     stream_s(max(after.start_s, cut / SAMPLE_RATE_HZ))))


def cases_of_clip(clip_id: str, text: str, audio: np.ndarray, words: Sequence[TimedWord],
                  seed: int = 0) -> list[TurnCase]:
    """A clip's complete and hesitation cases; none when it is too short or has no boundary to pause at."""
    hesitation = hesitation_case(clip_id, text, audio, words, seed)
    if hesitation is None:
        return []
    return [complete_case(clip_id, text, audio, words, seed), hesitation]


def spread(items: Sequence, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them for 0 or more than there are), in order."""
    if count <= 0 or count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]
