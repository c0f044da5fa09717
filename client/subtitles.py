"""Subtitles (SRT and WebVTT) from ``final`` events: formatting, parsing and a flushing writer.

Formatting and parsing are pure functions over :class:`Cue` objects; only
:class:`SubtitleWriter` touches a file. Cues are made monotonic here (each starts
no earlier than the previous one ends), because players reject or misorder
overlapping cues and stream times can jitter across reconnects.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

SubtitleFormat = Literal["srt", "vtt"]

MIN_CUE_S = 0.5
"""A cue shorter than this is stretched so it is readable (and never zero-length)."""
LINE_CHARS = 42
"""Line width for wrapping cue text: the common broadcast limit."""


@dataclass(frozen=True)
class Cue:
    """One subtitle: ``text`` shown from ``start_s`` to ``end_s`` (seconds)."""

    start_s: float
    end_s: float
    text: str


def format_timestamp(seconds: float, fmt: SubtitleFormat) -> str:
    """``HH:MM:SS,mmm`` for SRT, ``HH:MM:SS.mmm`` for VTT."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    sep = "," if fmt == "srt" else "."
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def parse_timestamp(text: str) -> float:
    """Inverse of :func:`format_timestamp` (accepts ``,`` or ``.`` and VTT's optional hours)."""
    m = re.fullmatch(r"(?:(\d+):)?(\d{2}):(\d{2})[,.](\d{3})", text.strip())
    if not m:
        raise ValueError(f"not a subtitle timestamp: {text!r}")
    hours = int(m.group(1) or 0)
    return hours * 3600 + int(m.group(2)) * 60 + int(m.group(3)) + int(m.group(4)) / 1000


def wrap_text(text: str, width: int = LINE_CHARS) -> str:
    """Cue text wrapped to ``width`` characters; never empty lines (a blank line ends a cue)."""
    lines = textwrap.wrap(" ".join(text.split()), width=width, break_long_words=False)
    return "\n".join(lines)


def _safe_text(text: str, fmt: SubtitleFormat) -> str:
    text = wrap_text(text)
    if fmt == "vtt":
        # "-->" would end the cue text parsing; & and < are markup in VTT.
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace("-->", "--&gt;")
    return text


def format_cue(index: int, cue: Cue, fmt: SubtitleFormat) -> str:
    """One cue block, ending with the blank line that separates cues. ``index`` starts at 1."""
    times = f"{format_timestamp(cue.start_s, fmt)} --> {format_timestamp(cue.end_s, fmt)}"
    return f"{index}\n{times}\n{_safe_text(cue.text, fmt)}\n\n"


def file_header(fmt: SubtitleFormat) -> str:
    return "WEBVTT\n\n" if fmt == "vtt" else ""


def format_subtitles(cues: list[Cue], fmt: SubtitleFormat) -> str:
    """A whole SRT or VTT document."""
    return file_header(fmt) + "".join(format_cue(i, c, fmt) for i, c in enumerate(cues, 1))


class CueTimeline:
    """Turns finals into monotonic, non-overlapping cues (pure state, no I/O)."""

    def __init__(self, min_cue_s: float = MIN_CUE_S) -> None:
        self.min_cue_s = min_cue_s
        self.last_end_s = 0.0

    def add(self, start_s: float, end_s: float, text: str) -> Cue | None:
        """The cue for one final, or ``None`` when its text is empty."""
        text = " ".join(text.split())
        if not text:
            return None
        start_s = max(start_s, self.last_end_s)
        end_s = max(end_s, start_s + self.min_cue_s)
        self.last_end_s = end_s
        return Cue(start_s, end_s, text)


def parse_subtitles(document: str, fmt: SubtitleFormat) -> list[Cue]:
    """Parse an SRT or VTT document strictly enough to catch malformed output.

    Raises :class:`ValueError` on a missing header (VTT), a bad index (SRT: 1, 2, 3…),
    a bad timing line or an empty cue.
    """
    document = document.replace("\r\n", "\n")
    blocks = [b for b in re.split(r"\n{2,}", document.strip("\n")) if b.strip()]
    if fmt == "vtt":
        if not blocks or not blocks[0].startswith("WEBVTT"):
            raise ValueError("VTT file does not start with WEBVTT")
        blocks = blocks[1:]
    cues = []
    for number, block in enumerate(blocks, 1):
        lines = block.split("\n")
        if fmt == "srt":
            if lines[0].strip() != str(number):
                raise ValueError(f"SRT cue {number} has index {lines[0]!r}")
            lines = lines[1:]
        elif "-->" not in lines[0]:
            lines = lines[1:]  # optional VTT cue identifier
        if not lines or "-->" not in lines[0]:
            raise ValueError(f"cue {number} has no timing line: {block!r}")
        start, _, end = lines[0].partition("-->")
        start_s, end_s = parse_timestamp(start), parse_timestamp(end.split()[0])
        text = " ".join(line.strip() for line in lines[1:] if line.strip())
        if not text:
            raise ValueError(f"cue {number} has no text")
        if end_s <= start_s:
            raise ValueError(f"cue {number} ends before it starts")
        if fmt == "vtt":
            text = text.replace("&lt;", "<").replace("--&gt;", "-->").replace("&amp;", "&")
        cues.append(Cue(start_s, end_s, text))
    return cues


class SubtitleWriter:
    """Appends cues to an SRT or VTT file as finals arrive, flushed after each cue,
    so the file is valid (and playable) at any moment, even if the client is killed."""

    def __init__(self, path: str | Path, fmt: SubtitleFormat | None = None) -> None:
        self.path = Path(path)
        self.fmt: SubtitleFormat = fmt or ("vtt" if self.path.suffix.lower() == ".vtt" else "srt")
        self.timeline = CueTimeline()
        self.count = 0
        self._file: TextIO = self.path.open("w", encoding="utf-8", newline="\n")
        self._file.write(file_header(self.fmt))
        self._file.flush()

    def add(self, start_s: float, end_s: float, text: str) -> Cue | None:
        cue = self.timeline.add(start_s, end_s, text)
        if cue is not None:
            self.count += 1
            self._file.write(format_cue(self.count, cue, self.fmt))
            self._file.flush()
        return cue

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SubtitleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
