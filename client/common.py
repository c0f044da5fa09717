"""Pieces shared by the clients: caption state, terminal display, reconnect
backoff, the replay buffer, client-side latency and ``/v1/info``.

Everything but :class:`TerminalDisplay` and :func:`fetch_info` is pure (no
sockets, files or clocks of its own), so it is unit-tested with plain values.
The wire codec and the typed events are in :mod:`client.events`.
"""

from __future__ import annotations

import bisect
import json
import random
import shutil
import ssl
import sys
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from .events import Final, Partial, StreamEvent

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"

class ClientError(Exception):
    """A problem the user must fix (bad option, unsupported feature); reconnecting will not help."""


# --- /v1/info ----------------------------------------------------------------


def info_url(stream_url: str) -> str:
    """``ws://host:port/v1/stream`` → ``http://host:port/v1/info`` (``wss`` → ``https``)."""
    parts = urllib.parse.urlsplit(stream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/v1/info", "", ""))


def fetch_info(stream_url: str, timeout_s: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """GET the server's ``/v1/info`` (raises ``OSError``/``ValueError`` when unreachable or not JSON)."""
    with urllib.request.urlopen(info_url(stream_url), timeout=timeout_s, context=ssl_context) as response:
        info = json.loads(response.read().decode("utf-8"))
    if not isinstance(info, dict):
        raise ValueError("/v1/info is not a JSON object")
    return info


def window_supported(info: dict[str, Any]) -> bool | None:
    """Whether ``/v1/info`` says ``window_s`` may be set; ``None`` when it does not say."""
    for key in ("supports_window", "supports_window_s", "window_s_supported"):
        if isinstance(info.get(key), bool):
            return info[key]
    options = info.get("options")
    if isinstance(options, dict) and "window_s" in options:
        spec = options["window_s"]
        if isinstance(spec, dict) and isinstance(spec.get("supported"), bool):
            return spec["supported"]
        return spec is not None
    return None


# --- captions ----------------------------------------------------------------


@dataclass
class CaptionUpdate:
    """What a display must do after one event: print ``new_finals`` for good, then show ``partial``."""

    new_finals: list[str] = field(default_factory=list)
    partial: str = ""
    changed: bool = False
    status: str = ""
    """A short head of the in-place line (the turn indicator, ``[speaking]``); kept when the text is cut."""


@dataclass
class CaptionState:
    """Event → display state: finals (never change) and the open utterance's partial."""

    finals: list[str] = field(default_factory=list)
    partial: str = ""

    def apply(self, event: StreamEvent) -> CaptionUpdate:
        update = CaptionUpdate(partial=self.partial)
        if isinstance(event, Partial):
            self.partial = event.text.strip()
            update.changed = True
        elif isinstance(event, Final):
            text = event.text.strip()
            self.partial = ""
            if text and event.speaker is not None:
                text = f"[speaker {event.speaker}] {text}"
            if text:
                self.finals.append(text)
                update.new_finals.append(text)
            update.changed = True
        update.partial = self.partial
        return update

    def reset_partial(self) -> CaptionUpdate:
        """The connection is gone: its open partial will not be finalized by that connection."""
        self.partial = ""
        return CaptionUpdate(partial="", changed=True)

    @property
    def transcript(self) -> str:
        return "\n".join(self.finals)


def fit_line(text: str, width: int) -> str:
    """The tail of ``text`` that fits one terminal line of ``width`` columns (newest words matter)."""
    text = " ".join(text.split())
    if width <= 1 or len(text) < width:
        return text[: max(width - 1, 0)]
    return "…" + text[-(width - 2):]


class TerminalDisplay:
    """Prints finals as permanent lines; on a TTY also shows the partial in place on one line."""

    def __init__(self, out: TextIO = sys.stdout, interactive: bool | None = None) -> None:
        self.out = out
        self.interactive = out.isatty() if interactive is None else interactive
        self._partial_shown = False

    def show(self, update: CaptionUpdate) -> None:
        if not update.changed:
            return
        if self.interactive:
            self._clear()
        for line in update.new_finals:
            self.out.write(line + "\n")
        if self.interactive and (update.partial or update.status):
            width = shutil.get_terminal_size((80, 24)).columns
            line = fit_line(update.partial, width)
            if update.status:
                text = fit_line(update.partial, width - len(update.status) - 1)
                line = f"{update.status} {text}".rstrip()[: max(width - 1, 0)]
            # Grey italic, so the tentative text is told apart from finals.
            self.out.write("\x1b[2;3m" + line + "\x1b[0m")
            self._partial_shown = True
        self.out.flush()

    def _clear(self) -> None:
        if self._partial_shown:
            self.out.write("\r\x1b[K")
            self._partial_shown = False

    def clear(self) -> None:
        """Remove the partial line (e.g. before printing a notice to the same terminal)."""
        if self.interactive:
            self._clear()
            self.out.flush()


# --- reconnecting -------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential reconnect delays: ``initial_s * factor**attempt``, capped, with ± ``jitter`` fraction."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 5.0
    jitter: float = 0.1

    def delay_s(self, attempt: int, rand: random.Random | None = None) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(attempt, 0))
        if self.jitter <= 0:
            return base
        r = (rand or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + r))


class ReplayBuffer:
    """Captured audio not yet known to be transcribed, by absolute sample position.

    Positions count every sample captured since the client started (including
    dropped ones), so they map to wall-clock time. The buffer holds the
    contiguous range ``[acked_pos, captured_pos)``; ``sent_pos`` splits it into
    audio sent on the current connection and audio still to send. A ``final``
    acknowledges audio up to its end (:meth:`ack`); after a reconnect,
    :meth:`rewind` makes the unacknowledged audio go out again, so an utterance
    cut by a server crash is transcribed by the next server.

    Two bounds keep memory flat: unsent audio beyond ``max_unsent`` samples is
    dropped oldest first (reported, it is lost), and sent-but-unacknowledged
    audio is kept for at most ``max_replay`` samples (long silences give no
    finals, so there is nothing to acknowledge them).
    """

    def __init__(self, max_unsent: int, max_replay: int, dtype: npt.DTypeLike = np.float32) -> None:
        self.max_unsent = max_unsent
        self.max_replay = max_replay
        self.dtype = np.dtype(dtype)
        """Sample type of the blocks (float32 samples, or the encoded samples of a wire encoding)."""
        self._blocks: deque[np.ndarray] = deque()
        self.acked_pos = 0
        self.sent_pos = 0
        self.captured_pos = 0
        self.dropped_unsent = 0
        """Samples lost since the last :meth:`take_dropped` (never sent to any server)."""

    @property
    def unsent(self) -> int:
        return self.captured_pos - self.sent_pos

    def append(self, block: np.ndarray) -> None:
        self._blocks.append(np.asarray(block, dtype=self.dtype))
        self.captured_pos += len(block)
        if self.unsent > self.max_unsent:
            lost = self.unsent - self.max_unsent
            self.dropped_unsent += lost
            self.sent_pos += lost
            self._trim_to(self.sent_pos)

    def take_unsent(self, max_samples: int | None = None) -> tuple[int, np.ndarray]:
        """``(position, samples)`` of the next audio to send (at most ``max_samples``); marks it sent."""
        n = self.unsent if max_samples is None else min(self.unsent, max_samples)
        start = self.sent_pos
        samples = self._slice(start, start + n)
        self.sent_pos += n
        self._trim_to(max(self.acked_pos, self.sent_pos - self.max_replay))
        return start, samples

    def ack(self, position: int) -> None:
        """Audio before ``position`` is transcribed (a final covered it): never resend it."""
        self._trim_to(min(max(position, self.acked_pos), self.sent_pos))

    def rewind(self) -> int:
        """A new connection starts: unacknowledged audio goes out again. Returns its first position."""
        self.sent_pos = self.acked_pos
        return self.acked_pos

    def take_dropped(self) -> int:
        dropped, self.dropped_unsent = self.dropped_unsent, 0
        return dropped

    def _trim_to(self, position: int) -> None:
        while self._blocks and position > self.acked_pos:
            first = self._blocks[0]
            cut = position - self.acked_pos
            if cut >= len(first):
                self._blocks.popleft()
                self.acked_pos += len(first)
            else:
                self._blocks[0] = first[cut:]
                self.acked_pos += cut

    def _slice(self, start: int, stop: int) -> np.ndarray:
        parts, pos = [], self.acked_pos
        for block in self._blocks:
            lo, hi = max(start, pos), min(stop, pos + len(block))
            if lo < hi:
                parts.append(block[lo - pos: hi - pos])
            pos += len(block)
            if pos >= stop:
                break
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)


# --- latency -------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class LatencyTracker:
    """Client-side latency: when a sample was captured vs when its text arrived.

    ``first_partial`` latency: from the capture of an utterance's first sample
    (``start_s``) to the arrival of its first partial. ``final`` latency: from the
    capture of its last sample (``end_s``) to the arrival of its final. Times are
    any monotonic clock in seconds, passed in by the caller.
    """

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._ends: list[int] = []
        self._times: list[float] = []
        self._seen_partial: set[int] = set()
        self.first_partial_s: list[float] = []
        self.final_s: list[float] = []

    def captured(self, end_pos: int, at_s: float) -> None:
        """Samples up to ``end_pos`` (exclusive) were captured at time ``at_s``."""
        self._ends.append(end_pos)
        self._times.append(at_s)

    def capture_time(self, position: int) -> float | None:
        i = bisect.bisect_right(self._ends, position)
        if i >= len(self._ends):
            return None
        # The block ending at _ends[i] was captured at _times[i]; earlier samples of it earlier.
        return self._times[i] - (self._ends[i] - position) / self.sample_rate_hz

    def on_event(self, event: StreamEvent, now_s: float) -> float | None:
        """Record the latency an event shows (its times are positions in the whole captured stream)."""
        rate = self.sample_rate_hz
        if isinstance(event, Partial) and event.utterance_id not in self._seen_partial:
            self._seen_partial.add(event.utterance_id)
            t = self.capture_time(round(event.start_s * rate))
            if t is not None:
                self.first_partial_s.append(now_s - t)
                return self.first_partial_s[-1]
        elif isinstance(event, Final):
            t = self.capture_time(round(event.end_s * rate) - 1)
            if t is not None:
                self.final_s.append(now_s - t)
                return self.final_s[-1]
        return None

    def summary(self) -> str:
        def part(name: str, values: list[float]) -> str:
            if not values:
                return f"{name}: n/a"
            return (f"{name}: median {percentile(values, 50):.2f} s, p90 {percentile(values, 90):.2f} s "
                    f"(n={len(values)})")

        return f"latency — {part('first partial', self.first_partial_s)}; {part('final after speech end', self.final_s)}"
