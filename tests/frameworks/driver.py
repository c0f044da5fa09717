"""What the framework drivers share: their command line, the audio parts, real-time pacing, the log
lines kept, and the JSON answer.

The drivers run in the frameworks' own interpreter (``.venv/frameworks``, made by ``scripts/setup.sh
test``: Pipecat pins soxr, soundfile and protobuf below what the server runs on), so this module imports
nothing from the project and nothing outside the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

FRAME_S = 0.02
"""A microphone frame, as a transport hands them to the STT classes (they re-chunk to 50 ms)."""


@dataclass
class Run:
    """What one framework STT class gave: its finals in order and everything that says how it went."""

    finals: list[str] = field(default_factory=list)
    interims: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    """The kinds of what it emitted, in order (speech events or frame names)."""
    shown: dict[str, str] = field(default_factory=dict)
    """OpenAI Realtime: per item_id, its deltas joined (what a client that appends them shows)."""
    completed: dict[str, str] = field(default_factory=dict)
    """OpenAI Realtime: per item_id, its completed transcript."""
    words: list[list[list]] = field(default_factory=list)
    """Per final: [text, start, end] per word, where the class gives words."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Log lines at WARNING and above: a message the class could not read shows here."""
    seconds: float = 0.0


def parse_args(kinds: tuple[str, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=kinds)
    parser.add_argument("--url", required=True, help="the server's base, http://HOST:PORT")
    parser.add_argument("--key", required=True)
    parser.add_argument("--rate", type=int, required=True, help="sample rate of the parts")
    parser.add_argument("--part", action="append", required=True, help="a raw PCM16 mono file, one per turn")
    parser.add_argument("--expect", type=int, required=True, help="finals to wait for before closing")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", required=True, help="where the JSON answer goes")
    return parser.parse_args()


def read_parts(paths: list[str]) -> list[bytes]:
    parts = []
    for path in paths:
        with open(path, "rb") as f:
            parts.append(f.read())
    return parts


async def paced(pcm: bytes, rate: int) -> AsyncIterator[bytes]:
    """``pcm`` in microphone frames at real-time pace (against the loop clock, so no drift)."""
    step = int(rate * FRAME_S) * 2
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, len(pcm), step):
        yield pcm[i:i + step]
        await asyncio.sleep(max(0.0, t0 + (i // step + 1) * FRAME_S - loop.time()))


async def wait_for_finals(run: Run, expect: int, timeout: float, quiet_s: float = 1.0) -> None:
    """Until ``expect`` finals came and then ``quiet_s`` without a new one (a class that never ends by
    itself is closed then), or ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen, quiet_since = -1, loop.time()
    while loop.time() < deadline:
        if len(run.finals) != seen:
            seen, quiet_since = len(run.finals), loop.time()
        if seen >= expect and loop.time() - quiet_since >= quiet_s:
            return
        await asyncio.sleep(0.05)


class KeepWarnings(logging.Handler):
    """Standard-library log records at WARNING and above, into ``run.warnings``."""

    def __init__(self, run: Run) -> None:
        super().__init__(logging.WARNING)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({record.exc_info[1]!r})"
        self.run.warnings.append(text)


def answer(run: Run, path: str, started: float) -> None:
    run.seconds = round(time.monotonic() - started, 2)
    with open(path, "w") as f:
        json.dump(asdict(run), f)
