"""The ramp's load: stream slots over real sockets, one level at a time, and the figures of each level.

A *slot* is one concurrent stream: it streams a long joined plan at a real-time pace, then
the next plan on a new session, until the ramp ends. A refused session (``overloaded``,
``too_many_sessions`` or a 429/503 handshake) is recorded as refused and retried after its
``retry_after_s``. The pure rules (plans, windows, when to stop) are :mod:`benchmarks.ramp_plan`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.exceptions import InvalidStatus, WebSocketException

from streaming.evaluation import wer

from .loadgen import StreamResult, stream_audio
from .ramp_plan import (
    REFUSAL_CODES,
    REFUSAL_HTTP_STATUS,
    ClipFacts,
    Final,
    StreamPlan,
    audio_sent_s,
    crossing,
    hypotheses_per_piece,
    in_window,
    plan_stream,
    render_stream,
)
from .report import latency_summary
from .resources import snapshot, usage

log = logging.getLogger("benchmarks.ramp")

POLL_S = 0.1
"""How often the level loop looks whether the new slots are admitted."""
RETRY_S = 2.0
"""Wait before a refused slot tries again when the server gave no ``retry_after_s``."""


@dataclass
class RampSettings:
    """How the ramp loads the server (the CLI fills it; see ``python -m benchmarks ramp --help``)."""

    url: str
    target_s: float = 1.5
    start: int = 1
    step: int = 1
    max_streams: int = 32
    level_s: float = 60.0
    grace_s: float = 4.5
    stream_s: tuple[float, float] = (60.0, 120.0)
    speed: float = 1.0
    preroll_s: float = 0.15
    start_fields: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    admit_timeout_s: float = 30.0


@dataclass
class Session:
    """One attempt of one slot: its plan, what the client saw, and how it ended."""

    slot: int
    plan: StreamPlan
    result: StreamResult
    attempted_at_s: float
    outcome: str = "running"
    """running, ended (normally), refused, failed."""
    code: str | None = None
    ended_at_s: float | None = None
    retry_after_s: float | None = None

    @property
    def admitted(self) -> bool:
        return self.result.started_at_s is not None

    def finals(self) -> list[Final]:
        return [Final(e["start_s"], e["end_s"], e["text"]) for _, e in self.result.events if e["type"] == "final"]

    def owed_finals(self) -> dict[int, float]:
        """Utterances whose speech ended (``speech_end``) with no final yet: utterance id -> end_s."""
        ended = {e["utterance_id"]: e["end_s"] for _, e in self.result.events if e["type"] == "speech_end"}
        for _, e in self.result.events:
            if e["type"] == "final":
                ended.pop(e.get("utterance_id"), None)
        return ended


def _refusal(result: StreamResult) -> tuple[str | None, float | None]:
    """(code, retry_after_s) when the server refused admission: a fatal refusal error, or 1013 before ready.

    Close code 1013 is "try again later": a server that refuses a connection before its start
    may close with it (the reason names the code) without an error event.
    """
    for error in result.errors:
        if error.get("code") in REFUSAL_CODES:
            return error["code"], error.get("retry_after_s")
    if result.started_at_s is None and result.close_code == 1013:
        reason = result.disconnect_reason or ""
        return next((code for code in sorted(REFUSAL_CODES) if code in reason), "close_1013"), None
    return None, None


class Ramp:
    """Drives the slots and measures levels; ``busy_s`` reads the engine's busy seconds (None: unknown)."""

    def __init__(self, settings: RampSettings, clips: list[ClipFacts], audio_by_clip: dict[str, np.ndarray],
                 busy_s: Callable[[], Awaitable[float | None]]) -> None:
        self.s = settings
        self.clips = clips
        self.audio_by_clip = audio_by_clip
        self.busy_s = busy_s
        self.sessions: list[Session] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.t0_s = time.perf_counter()
        self.windows: list[tuple[float, float]] = []
        """Each measured level's window [start, end) on the wall clock."""

    def plan_for(self, slot: int, attempt: int) -> StreamPlan:
        """Slot ``slot``'s ``attempt``-th stream: its own first clip, length and gaps."""
        low, high = self.s.stream_s
        seed = self.s.seed * 1_000_003 + slot * 1009 + attempt
        length_s = float(np.random.default_rng(seed).uniform(low, high))
        first = (slot * 17 + attempt * 31) % len(self.clips)
        return plan_stream(self.clips, first, length_s, seed=seed)

    async def _slot(self, slot: int) -> None:
        """Stream plan after plan on new sessions until cancelled."""
        attempt = 0
        while True:
            plan = self.plan_for(slot, attempt)
            attempt += 1
            session = Session(slot, plan, StreamResult(), time.perf_counter())
            self.sessions.append(session)
            audio = render_stream(plan, self.audio_by_clip)
            await self._stream(session, audio)
            if session.outcome == "refused":
                await asyncio.sleep(session.retry_after_s or RETRY_S)
            elif session.outcome == "failed":
                await asyncio.sleep(1.0)  # no hot loop against a server that is down

    async def _stream(self, session: Session, audio: np.ndarray) -> None:
        """One session; its outcome says how it ended (a refusal is not a failure)."""
        outcome, code = "ended", None
        try:
            await stream_audio(self.s.url, audio, speed=self.s.speed, start_fields=self.s.start_fields,
                               preroll_s=self.s.preroll_s, timeout_s=session.plan.duration_s / self.s.speed + 60,
                               result=session.result)
        except InvalidStatus as exc:
            status = exc.response.status_code
            outcome, code = ("refused" if status in REFUSAL_HTTP_STATUS else "failed"), f"http_{status}"
        except (OSError, TimeoutError, WebSocketException) as exc:
            outcome, code = "failed", type(exc).__name__
        else:
            refused, session.retry_after_s = _refusal(session.result)
            if refused is not None:
                outcome, code = "refused", refused
            elif session.result.errors:
                outcome, code = "failed", session.result.errors[0].get("code")
            elif session.result.close_code != 1000:
                outcome, code = "failed", f"close_{session.result.close_code}"
        session.outcome, session.code, session.ended_at_s = outcome, code, time.perf_counter()
        if outcome != "ended":
            log.info("slot %d: %s (%s)", session.slot, outcome, code)

    def _of_slot(self, slot: int) -> list[Session]:
        """The slot's sessions, oldest first."""
        return [x for x in self.sessions if x.slot == slot]

    def holding(self) -> int:
        """Slots holding a stream: admitted and running, or between two plans after a normal end."""
        held = 0
        for slot in range(len(self.tasks)):
            mine = self._of_slot(slot)
            last = mine[-1] if mine else None
            if last is None:
                continue
            if last.outcome == "running" and last.admitted:
                held += 1
            elif last.outcome == "running" and len(mine) > 1 and mine[-2].outcome == "ended":
                held += 1
        return held

    async def _add_slots(self, offered: int) -> None:
        """Start slots up to ``offered`` and wait until each new one is admitted or refused."""
        new = range(len(self.tasks), offered)
        for slot in new:
            self.tasks.append(asyncio.create_task(self._slot(slot), name=f"ramp-slot-{slot}"))
        deadline = time.perf_counter() + self.s.admit_timeout_s
        while time.perf_counter() < deadline:
            firsts = [self._of_slot(slot)[:1] for slot in new]
            if all(f and (f[0].admitted or f[0].outcome != "running") for f in firsts):
                return
            await asyncio.sleep(POLL_S)
        log.warning("some of slots %d-%d not admitted within %.0f s", new.start, new.stop - 1,
                    self.s.admit_timeout_s)

    async def run(self, on_level: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        """Add streams level by level until a level crosses the target, is refused, or the cap is reached."""
        levels: list[dict[str, Any]] = []
        self.t0_s = time.perf_counter()
        offered = min(self.s.start, self.s.max_streams)
        try:
            while True:
                added_at = time.perf_counter()
                await self._add_slots(offered)
                level = await self._measure(offered, added_at)
                levels.append(level)
                on_level(level)
                if level["crossed"] is not None or offered >= self.s.max_streams:
                    break
                offered = min(self.s.max_streams, offered + self.s.step)
            self._rescore(levels)
        finally:
            await self.stop()
        return levels

    def _rescore(self, levels: list[dict[str, Any]]) -> None:
        """Each level's WER again at the end: finals that came after its grace (a slow level) count too."""
        for level, (start, end) in zip(levels, self.windows):
            refs, hyps = self._transcripts(start, end)
            level |= {"references": refs, "hypotheses": hyps, "clips_ended": len(refs),
                      "clips_without_final": sum(not h for h in hyps),
                      "wer": round(wer(refs, hyps), 4) if any(r.strip() for r in refs) else None}

    async def stop(self) -> None:
        """Cancel every slot (their sockets close) and wait for them."""
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        bugs = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if bugs:  # a slot that died of a bug must not pass for a quiet one
            raise bugs[0]

    async def _measure(self, offered: int, added_at: float) -> dict[str, Any]:
        """Hold ``offered`` streams for ``level_s``, wait for the window's finals, then sum the level up."""
        start = time.perf_counter()
        before, busy0 = snapshot(), await self.busy_s()
        await asyncio.sleep(self.s.level_s)
        end = time.perf_counter()
        self.windows.append((start, end))
        # The whole grace, not "until nothing is owed": a loaded server sends even speech_end late.
        await asyncio.sleep(self.s.grace_s)
        after, busy1 = snapshot(), await self.busy_s()
        level = self._figures(offered, added_at, start, end, after.wall_s)
        audio_s = self._audio_sent_s(start, after.wall_s)
        level["audio_s"] = round(audio_s, 1)
        busy = None if busy0 is None or busy1 is None else busy1 - busy0
        level["rtf"] = round(busy / audio_s, 3) if busy is not None and audio_s > 0 else None
        level["engine_busy_fraction"] = round(busy / (after.wall_s - before.wall_s), 3) if busy is not None else None
        level |= usage(before, after)
        return level

    def _at(self, session: Session, stream_s: float) -> float:
        """The wall time at which ``session`` sent its audio at ``stream_s``."""
        return session.result.started_at_s + stream_s / self.s.speed

    def _owed(self, start: float, end: float) -> list[float]:
        """Wall times of speech ends in [start, end) whose final is still owed by a running session."""
        owed = []
        for session in self.sessions:
            if session.outcome == "running" and session.admitted:
                owed += [at for at in (self._at(session, end_s) for end_s in session.owed_finals().values())
                         if in_window(at, start, end)]
        return owed

    def _outcomes(self, since: float, until: float) -> dict[str, Any]:
        """Refusals and failures of sessions that ended in [since, until), by code."""
        refused: dict[str, int] = {}
        failed: dict[str, int] = {}
        retry_after = []
        for session in self.sessions:
            if session.ended_at_s is None or not in_window(session.ended_at_s, since, until):
                continue
            if session.outcome == "refused":
                refused[str(session.code)] = refused.get(str(session.code), 0) + 1
                if session.retry_after_s is not None:
                    retry_after.append(session.retry_after_s)
            elif session.outcome == "failed":
                failed[str(session.code)] = failed.get(str(session.code), 0) + 1
        return {"refused": sum(refused.values()), "refused_codes": refused,
                "retry_after_s_max": max(retry_after) if retry_after else None,
                "failed": sum(failed.values()), "failed_codes": failed}

    def _latencies(self, start: float, end: float, measured_at: float) -> tuple[list[float], list[float], int]:
        """First-partial and final latencies of utterances whose speech ended in [start, end).

        A final still owed when the level is measured counts with the time waited so far (a lower
        bound): a server that stops answering must not look fast. Returns (first, final, owed).
        """
        first, final = [], []
        for session in self.sessions:
            if not session.admitted:
                continue
            for u in session.result.utterances.values():
                if u.speech_end_s is not None and in_window(self._at(session, u.speech_end_s), start, end):
                    first.append(u.first_partial_latency_s)
                    final.append(u.final_latency_s)
        owed = [measured_at - at for at in self._owed(start, end)]
        return first, final + owed, len(owed)

    def _transcripts(self, start: float, end: float) -> tuple[list[str], list[str]]:
        """(references, hypotheses) of the clips whose audio ended in [start, end), admitted streams only."""
        refs, hyps = [], []
        for session in self.sessions:
            if not session.admitted:
                continue
            per_piece = hypotheses_per_piece(session.plan.pieces, session.finals())
            for piece, hyp in zip(session.plan.pieces, per_piece):
                if in_window(self._at(session, piece.end_s), start, end):
                    refs.append(piece.text)
                    hyps.append(" ".join(hyp))
        return refs, hyps

    def _figures(self, offered: int, added_at: float, start: float, end: float, measured_at: float) -> dict[str, Any]:
        """The level's figures but CPU and RTF: streams, refusals, latencies, WER."""
        outcomes = self._outcomes(added_at, measured_at)
        first, final, owed = self._latencies(start, end, measured_at)
        refs, hyps = self._transcripts(start, end)
        first_s, final_s = latency_summary(first), latency_summary(final)
        return {"streams_offered": offered, "streams_held": self.holding(), **outcomes,
                "window_s": [round(start - self.t0_s, 2), round(end - self.t0_s, 2)],
                "utterances": len(final), "first_partial_latency_s": first_s, "final_latency_s": final_s,
                "finals_missing": owed, "clips_ended": len(refs),
                "wer": round(wer(refs, hyps), 4) if any(r.strip() for r in refs) else None,
                "clips_without_final": sum(not h for h in hyps),
                "crossed": crossing(first_s["p95"], final_s["p95"], outcomes["refused"], self.s.target_s,
                                    failed=outcomes["failed"], clips_ended=len(refs),
                                    clips_without_final=sum(not h for h in hyps)),
                "references": refs, "hypotheses": hyps}

    def _audio_sent_s(self, start: float, until: float) -> float:
        """Audio seconds the admitted streams sent between ``start`` and ``until``."""
        return sum(audio_sent_s(x.result.started_at_s, x.plan.duration_s, self.s.speed, start,
                                min(until, x.ended_at_s or until)) for x in self.sessions if x.admitted)
