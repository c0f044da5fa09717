"""The ramp benchmark's pure parts: long streams of joined clips, levels, and when to stop.

No sockets, no clocks: the shell (:mod:`benchmarks.ramp`) measures and this module decides.
Times called ``*_at_s`` are wall-clock seconds on the shell's clock; ``start_s``/``end_s``
are seconds into one stream's audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GAP_RANGE_S = (0.8, 2.0)
"""Silence between two joined clips: a natural pause, longer than the default endpoint silence (0.6 s)."""
REFUSAL_CODES = frozenset({"overloaded", "too_many_sessions"})
"""Fatal error codes that mean "not admitted now": a refused stream, not a failed one."""
REFUSAL_HTTP_STATUS = frozenset({429, 503})
"""Handshake answers that refuse for load (a proxy or server at its limit)."""
STALLED_FRACTION = 0.5
"""A level whose clips got no final at all more often than this is a stalled server (a quiet clip rarely has none)."""


@dataclass(frozen=True)
class ClipFacts:
    """What planning needs of a clip: its id, length in samples and reference text."""

    clip_id: str
    samples: int
    text: str


@dataclass(frozen=True)
class Piece:
    """One clip inside a joined stream: where its audio lies (stream seconds) and what was said."""

    clip_id: str
    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class StreamPlan:
    """A long multi-utterance stream: clips in order with silences between them."""

    pieces: tuple[Piece, ...]
    samples: int
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate_hz

    @property
    def reference(self) -> str:
        """The joined reference text of every clip, in order."""
        return " ".join(p.text for p in self.pieces)


def plan_stream(clips: Sequence[ClipFacts], first: int, length_s: float, *, sample_rate_hz: int = 16_000,
                gap_range_s: tuple[float, float] = GAP_RANGE_S, lead_s: float = 0.5, trail_s: float = 1.5,
                seed: int = 0) -> StreamPlan:
    """Clips from ``clips[first]`` on (wrapping round) until the stream holds ``length_s`` of audio.

    At least one clip; gaps drawn uniformly from ``gap_range_s`` (seeded: the same arguments
    give the same stream); ``lead_s`` of silence before the first clip and ``trail_s`` after the
    last so its final is sent before ``stop``.
    """
    if not clips:
        raise ValueError("no clips to join")
    low, high = gap_range_s
    if not 0 <= low <= high:
        raise ValueError(f"gap range {gap_range_s} must be 0 <= low <= high")
    rng = np.random.default_rng(seed)
    at = round(lead_s * sample_rate_hz)
    need = round(length_s * sample_rate_hz)
    pieces: list[Piece] = []
    i = first % len(clips)
    while True:
        clip = clips[i]
        pieces.append(Piece(clip.clip_id, clip.text, at / sample_rate_hz, (at + clip.samples) / sample_rate_hz))
        at += clip.samples
        if at >= need:
            break
        at += round(float(rng.uniform(low, high)) * sample_rate_hz)
        i = (i + 1) % len(clips)
    return StreamPlan(tuple(pieces), at + round(trail_s * sample_rate_hz), sample_rate_hz)


def render_stream(plan: StreamPlan, audio_by_clip: dict[str, np.ndarray]) -> np.ndarray:
    """The plan's audio: float32 silence with each clip's samples at its place."""
    out = np.zeros(plan.samples, np.float32)
    for piece in plan.pieces:
        audio = audio_by_clip[piece.clip_id]
        start = round(piece.start_s * plan.sample_rate_hz)
        out[start:start + audio.size] = audio
    return out


@dataclass(frozen=True)
class Final:
    """A final as the client received it (stream seconds)."""

    start_s: float
    end_s: float
    text: str


def hypotheses_per_piece(pieces: Sequence[Piece], finals: Sequence[Final]) -> list[list[str]]:
    """Each piece's finals: a final goes to the piece it overlaps most (or the nearest, in a silence).

    A final in the silence between clips still counts (to the nearest clip) so an inserted
    word is an error, not lost.
    """
    out: list[list[str]] = [[] for _ in pieces]
    if not pieces:
        return out
    for final in sorted(finals, key=lambda f: f.start_s):
        overlaps = [min(final.end_s, p.end_s) - max(final.start_s, p.start_s) for p in pieces]
        best = int(np.argmax(overlaps))
        if overlaps[best] <= 0:  # in a gap: the nearest piece by distance
            best = int(np.argmin([max(p.start_s - final.end_s, final.start_s - p.end_s) for p in pieces]))
        if final.text:
            out[best].append(final.text)
    return out


def audio_sent_s(started_at_s: float, duration_s: float, speed: float, from_s: float, to_s: float) -> float:
    """Audio seconds a stream started at ``started_at_s`` sent between wall times ``from_s`` and ``to_s``."""
    if speed <= 0:
        raise ValueError("the ramp streams at a pace: speed must be > 0")

    def sent(at_s: float) -> float:
        return min(duration_s, max(0.0, (at_s - started_at_s) * speed))

    return sent(to_s) - sent(from_s)


def in_window(at_s: float, start_s: float, end_s: float) -> bool:
    """Whether ``at_s`` falls in the half-open window [start_s, end_s)."""
    return start_s <= at_s < end_s


def crossing(first_partial_p95_s: float | None, final_p95_s: float | None, refused: int, target_s: float, *,
             failed: int = 0, clips_ended: int = 0, clips_without_final: int = 0) -> str | None:
    """Why a level ends the ramp (None: it held): refusals, failed streams, a p95 over the target, a stall.

    A held stream neither fails nor waits: one failed session (dropped, timed out, an error)
    ends the ramp like a refusal. Stalled: more than :data:`STALLED_FRACTION` of the clips that
    ended got no final at all (their latencies cannot be measured, so percentiles would not show it).
    """
    if refused:
        return "refused"
    if failed:
        return "failed"
    if final_p95_s is not None and final_p95_s > target_s:
        return "final_p95"
    if first_partial_p95_s is not None and first_partial_p95_s > target_s:
        return "first_partial_p95"
    if clips_ended and clips_without_final > STALLED_FRACTION * clips_ended:
        return "finals_missing"
    return None


def held_at_target(levels: Sequence[tuple[int, str | None]]) -> int:
    """Streams held at the target: the most streams held by a level before the first that crossed.

    ``levels`` are (streams held, crossing reason or None) in ramp order; 0 when the first crossed.
    """
    best = 0
    for held, reason in levels:
        if reason is not None:
            break
        best = max(best, held)
    return best

