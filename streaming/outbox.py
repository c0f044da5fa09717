"""Events waiting to be sent to one client, sans I/O.

A client that reads slowly must not make the server hold ever more memory,
and must never lose a final. So the outbox is bounded in events and in bytes,
and a partial that has not been sent yet is *replaced* by the next partial of
the same utterance (a partial replaces the previous one on the client anyway):
a slow reader gets fewer, fresher partials. A partial that does not fit is
dropped; any other event that does not fit means the client is too slow, and
:meth:`Outbox.put` says so — the shell then closes the session. The newer
partial takes the place at the end of the queue (the old one is left as a
tombstone), so events still leave in ``seq`` order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outgoing:
    """One encoded event and what the shell needs to know about it after sending."""

    frame: str | bytes
    kind: str
    """The event's ``type``."""
    utterance_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Shell bookkeeping (e.g. when the audio behind it arrived, for latency metrics)."""
    replaced: bool = False
    """A newer partial of the same utterance was queued after it: skip it."""

    @property
    def size(self) -> int:
        return len(self.frame)


class Outbox:
    """A bounded FIFO of :class:`Outgoing` with partial coalescing (see the module docstring)."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._items: deque[Outgoing] = deque()
        self._partials: dict[int | None, Outgoing] = {}
        """Unsent partial of each utterance, also in ``_items``."""
        self.bytes = 0
        self._tombstones = 0
        self.replaced = 0
        """Partials replaced by a newer one before they were sent."""
        self.dropped = 0
        """Partials dropped because the outbox was full."""

    def __len__(self) -> int:
        return len(self._items) - self._tombstones

    def put(self, item: Outgoing) -> bool:
        """Queue ``item``; False when it is not a partial and does not fit (the client is too slow)."""
        unsent = self._partials.get(item.utterance_id) if item.kind == "partial" else None
        if unsent is not None:
            self.bytes -= unsent.size
            unsent.replaced, unsent.frame = True, b""
            self._tombstones += 1
            if self._tombstones > 64 and self._tombstones * 2 > len(self._items):
                self._items = deque(i for i in self._items if not i.replaced)
                self._tombstones = 0
            self.replaced += 1
            item.meta = {**unsent.meta, **item.meta}
            del self._partials[item.utterance_id]
        elif len(self) >= self.max_events or self.bytes + item.size > self.max_bytes:
            if item.kind == "partial":
                self.dropped += 1
                return True
            return False
        self._items.append(item)
        self.bytes += item.size
        if item.kind == "partial":
            self._partials[item.utterance_id] = item
        return True

    def pop(self) -> Outgoing | None:
        """The oldest item, or None when empty."""
        while self._items:
            item = self._items.popleft()
            if item.replaced:
                self._tombstones -= 1
                continue
            self.bytes -= item.size
            if item.kind == "partial" and self._partials.get(item.utterance_id) is item:
                del self._partials[item.utterance_id]
            return item
        return None

    def clear(self) -> None:
        self._items.clear()
        self._partials.clear()
        self._tombstones = 0
        self.bytes = 0
