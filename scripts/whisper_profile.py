#!/usr/bin/env python
"""Where a Whisper partial and a final spend their time, and what the speed options buy, side by side.

    .venv/bin/python scripts/whisper_profile.py                          # tiny.en, batch 1/4/8, 3 repeats
    .venv/bin/python scripts/whisper_profile.py --variants 0,10,10q,10@2 --batches 8 --json cost.json

A variant is ``WINDOW[q][@THREADS]``: ``partial_window_s`` (0 = the full 30 s), ``q`` for the
int8 partial encoder (``quantize="partials"``), ``@2`` for two torch threads.

Partials: each row is a different English dev-full clip's first ``--partial-s`` seconds,
stepped at 1 s, 2 s, ... so its stable prefix is what a stream would have, and the last
step is timed. Finals: the clips' first ``--final-s`` seconds with word timestamps, so the
DTW pass is timed too.
Each phase is timed in CPU milliseconds of the process (``time.process_time``: every torch
thread, OpenMP's spinning included) and in wall milliseconds. CPU time moves much less than
wall time when other processes share the cores. Variants run interleaved, the same work in
the same process, and the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.evaluation import dev_clips  # noqa: E402
from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions  # noqa: E402
from streaming.models.whisper import WhisperBackend, quantize_linear_int8  # noqa: E402

PHASES = ("features", "encoder", "prefill", "decode_steps", "vocab", "word_timing", "other")
"""``vocab``: the vocabulary projection of every decoder position (outside the decoder module)."""



@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration a run compares (see the module docstring for its spelling)."""

    window_s: float
    int8: bool
    threads: int

    @classmethod
    def parse(cls, spec: str, threads: int) -> Variant:
        head, _, count = spec.partition("@")
        return cls(float(head.rstrip("q")), head.endswith("q"), int(count) if count else threads)


class PhaseTimer:
    """CPU and wall milliseconds per phase of one backend call, from wrappers and module hooks."""

    def __init__(self) -> None:
        self.cpu_ms: dict[str, float] = defaultdict(float)
        self.wall_ms: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.current: str | None = None
        self._start: tuple[float, float] = (0.0, 0.0)

    def begin(self, phase: str) -> bool:
        """Start ``phase`` unless another one is running (nested work counts for the outer phase)."""
        if self.current is not None:
            return False
        self.current, self._start = phase, (time.process_time(), time.perf_counter())
        return True

    def end(self) -> None:
        cpu0, wall0 = self._start
        self.cpu_ms[self.current] += (time.process_time() - cpu0) * 1000
        self.wall_ms[self.current] += (time.perf_counter() - wall0) * 1000
        self.counts[self.current] += 1
        self.current = None

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self.begin(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                if started:
                    self.end()
        return timed

    def reset(self) -> None:
        self.cpu_ms.clear()
        self.wall_ms.clear()
        self.counts.clear()


class _TimedLogMel:
    """A :class:`LogMel` whose calls count as the ``features`` phase (its attributes read through)."""

    def __init__(self, log_mel: Any, timer: PhaseTimer) -> None:
        self._inner, self._call = log_mel, timer.wrap("features", log_mel)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def instrument(backend: WhisperBackend) -> PhaseTimer:
    """Time ``backend``'s phases: instance wrappers for its methods, forward hooks on its decoder."""
    timer = PhaseTimer()
    backend.log_mel = _TimedLogMel(backend.log_mel, timer)  # type: ignore[assignment]
    backend._run_encoder = timer.wrap("encoder", backend._run_encoder)  # type: ignore[method-assign]
    if hasattr(backend, "_logits"):  # the decoding loop's vocabulary projection, while it lives here
        backend._logits = timer.wrap("vocab", backend._logits)  # type: ignore[method-assign]
    backend._align_words = timer.wrap("word_timing", backend._align_words)  # type: ignore[method-assign]
    started: list[bool] = []

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        started.append(timer.begin("prefill" if ids is not None and ids.shape[1] > 1 else "decode_steps"))

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if started.pop():
            timer.end()

    backend.decoder.register_forward_pre_hook(before, with_kwargs=True)
    backend.decoder.register_forward_hook(after, with_kwargs=True)
    return timer


@contextmanager
def applied(backend: WhisperBackend, variant: Variant, int8_encoder: torch.nn.Module) -> Iterator[None]:
    """``backend`` configured as ``variant`` for the duration (window, partial encoder, torch threads)."""
    before = backend.decoding, backend._partial_encoder, torch.get_num_threads()
    backend.decoding = dataclasses.replace(before[0], partial_window_s=variant.window_s)
    backend._partial_encoder = int8_encoder if variant.int8 else backend.encoder
    torch.set_num_threads(variant.threads)
    try:
        yield
    finally:
        backend.decoding, backend._partial_encoder = before[0], before[1]
        torch.set_num_threads(before[2])


def clip_audio(batch: int, seconds: float) -> list[np.ndarray]:
    """The first ``seconds`` of ``batch`` English dev-full clips at least that long (so every row
    has new audio at its timed step and none re-uses its last encoding)."""
    clips = [c for c in dev_clips(full=True) if c.language == "en" and c.duration_s >= seconds + 0.5]
    if len(clips) < batch:
        raise SystemExit(f"only {len(clips)} English dev-full clips are {seconds} s long; ask for fewer rows")
    return [c.load()[: int(seconds * SAMPLE_RATE_HZ)] for c in clips[:batch]]


def time_partial(backend: WhisperBackend, timer: PhaseTimer, audios: list[np.ndarray]) -> dict[str, Any]:
    """Step every row at 1 s, 2 s, ... and time the last (batched) step."""
    states = [backend.new_utterance(UtteranceOptions(language="en")) for _ in audios]
    longest = max(a.size for a in audios)
    for end in range(SAMPLE_RATE_HZ, longest, SAMPLE_RATE_HZ):
        for st, a in zip(states, audios, strict=True):
            st.append_audio(a[st.num_samples: end])
        backend.step(states)
    for st, a in zip(states, audios, strict=True):
        st.append_audio(a[st.num_samples:])
    return timed_call(timer, lambda: backend.step(states))


def time_final(backend: WhisperBackend, timer: PhaseTimer, audios: list[np.ndarray]) -> dict[str, Any]:
    """One batched finalize of whole rows, with word timestamps."""
    states = [backend.new_utterance(UtteranceOptions(language="en", word_timestamps=True)) for _ in audios]
    for st, a in zip(states, audios, strict=True):
        st.append_audio(a)
    return timed_call(timer, lambda: backend.finalize(states))


def timed_call(timer: PhaseTimer, call: Callable[[], list[Any]]) -> dict[str, Any]:
    """CPU/wall ms per phase of one call; ``other`` is the call's total less the timed phases."""
    timer.reset()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = call()
    total_cpu, total_wall = (time.process_time() - cpu0) * 1000, (time.perf_counter() - wall0) * 1000
    cpu = {p: timer.cpu_ms.get(p, 0.0) for p in PHASES if p != "other"}
    wall = {p: timer.wall_ms.get(p, 0.0) for p in PHASES if p != "other"}
    cpu["other"], wall["other"] = total_cpu - sum(cpu.values()), total_wall - sum(wall.values())
    return {"cpu_ms": cpu, "wall_ms": wall, "total_cpu_ms": total_cpu, "total_wall_ms": total_wall,
            "steps": timer.counts.get("decode_steps", 0), "texts": [r.text for r in results]}


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-phase medians over repeats."""
    return {"cpu_ms": {p: statistics.median(r["cpu_ms"][p] for r in runs) for p in PHASES},
            "wall_ms": {p: statistics.median(r["wall_ms"][p] for r in runs) for p in PHASES},
            "total_cpu_ms": statistics.median(r["total_cpu_ms"] for r in runs),
            "total_wall_ms": statistics.median(r["total_wall_ms"] for r in runs),
            "decode_steps": runs[0]["steps"], "texts": runs[0]["texts"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--variants", default="0,10,5")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--partial-s", type=float, default=5.0)
    p.add_argument("--final-s", type=float, default=8.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    backend = WhisperBackend.from_embedded(args.model)
    backend.warmup()
    timer = instrument(backend)
    variants = {spec: Variant.parse(spec, args.threads) for spec in args.variants.split(",")}
    int8_encoder = quantize_linear_int8(backend.encoder)
    report: dict[str, Any] = {"model": backend.name, "threads": args.threads, "partial_s": args.partial_s,
                              "final_s": args.final_s, "rows": []}
    for batch in (int(b) for b in args.batches.split(",")):
        partial_audio, final_audio = clip_audio(batch, args.partial_s), clip_audio(batch, args.final_s)
        runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for _ in range(args.repeats):
            for name, variant in variants.items():
                with applied(backend, variant, int8_encoder):
                    runs[("partial", name)].append(time_partial(backend, timer, partial_audio))
                    runs[("final", name)].append(time_final(backend, timer, final_audio))
        for (kind, name), rows in runs.items():
            row = {"kind": kind, "variant": name, "batch": batch, **median_row(rows)}
            report["rows"].append(row)
            print_row(row)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def print_row(row: dict[str, Any]) -> None:
    cpu = row["cpu_ms"]
    phases = "  ".join(f"{p} {cpu[p]:6.1f}" for p in PHASES)
    print(f"{row['kind']:7s} {row['variant']:6s} B={row['batch']}  cpu {row['total_cpu_ms']:7.1f} ms "
          f"(wall {row['total_wall_ms']:7.1f})  {phases}  steps {row['decode_steps']}", flush=True)


if __name__ == "__main__":
    main()
