"""CPU and memory of this process and of the machine, read from the OS (``/proc`` on Linux, psutil if present).

A :class:`Snapshot` is taken at two moments; :func:`usage` turns the pair into percentages.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    """Counters at one moment: wall clock, this process's CPU seconds, the machine's CPU ticks, RSS."""

    wall_s: float
    process_cpu_s: float
    machine_busy_ticks: int | None
    machine_total_ticks: int | None
    rss_bytes: int | None


def _machine_ticks() -> tuple[int | None, int | None]:
    """(busy, total) jiffies over all CPUs from ``/proc/stat``; (None, None) where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None, None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def _rss_bytes() -> int | None:
    """This process's resident memory (psutil, else ``/proc/self/statm``)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def snapshot() -> Snapshot:
    """The counters now (every thread of this process: with an in-process server, the server too)."""
    times = os.times()
    busy, total = _machine_ticks()
    return Snapshot(time.perf_counter(), times.user + times.system, busy, total, _rss_bytes())


def usage(before: Snapshot, after: Snapshot) -> dict[str, float | None]:
    """CPU between two snapshots and memory at the second.

    ``cpu_process_percent`` is of one core (200 = two cores busy, as ``top`` shows it);
    ``cpu_machine_percent`` is of all cores (100 = every core busy, whoever used it).
    """
    wall = after.wall_s - before.wall_s
    process = 100 * (after.process_cpu_s - before.process_cpu_s) / wall if wall > 0 else None
    machine = None
    if before.machine_total_ticks is not None and after.machine_total_ticks is not None:
        total = after.machine_total_ticks - before.machine_total_ticks
        if total > 0:
            machine = 100 * (after.machine_busy_ticks - before.machine_busy_ticks) / total
    return {"cpu_process_percent": None if process is None else round(process, 1),
            "cpu_machine_percent": None if machine is None else round(machine, 1),
            "rss_mb": None if after.rss_bytes is None else round(after.rss_bytes / 2**20, 1)}
