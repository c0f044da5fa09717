"""Whose turn it is, from protocol-v1 messages: the turn indicator of the clients, pure.

:func:`next_turn` maps (turn, message) to the next turn, with the same rules as ``web/turns.js``
(the browser's copy; tests/test_clients.py holds the one table both are tested with):

- ``speaking``: the user holds the turn: after ``speech_start``, ``turn_resumed`` and while
  partials of an open utterance arrive;
- ``thinking``: the server judges a pause or owes the final: after ``eager_end_of_turn`` (its
  ``text`` is the tentative answer-to-be, ``eager_text``) or ``speech_end``;
- ``your_turn``: the utterance's final arrived, the agent's cue to answer;
- ``idle``: before any speech, after ``cleared`` (no final follows) and after ``end``.

A length cut (reason ``max_length``) splits one turn into two utterances, so it keeps ``speaking``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONTINUING_REASONS = frozenset({"max_length"})
"""``speech_end``/``final`` reasons after which the user still holds the turn (every other reason ends it)."""

LABELS = {"idle": "idle", "speaking": "speaking", "thinking": "thinking", "your_turn": "your turn"}
"""What a person reads for each state."""


@dataclass(frozen=True)
class Turn:
    """The indicator's state: ``state`` (a key of :data:`LABELS`) for utterance ``utterance_id``."""

    state: str = "idle"
    utterance_id: int | None = None
    eager_text: str = ""
    """The text of an ``eager_end_of_turn`` not yet taken back (show it as tentative)."""
    reason: str | None = None
    """The final's ``reason`` in ``your_turn`` (``None`` when the server did not say)."""


IDLE = Turn()


def next_turn(turn: Turn, message: Mapping[str, Any]) -> Turn:
    """The turn after one v1 server message (a dict as on the wire); unknown messages change nothing."""
    kind = message.get("type")
    uid = message.get("utterance_id")
    if kind in ("ready", "end", "cleared"):
        return IDLE  # ready: a new connection numbers utterances from 0 again
    if kind in ("speech_start", "turn_resumed"):
        return Turn("speaking", uid)
    if kind == "partial":
        # A partial decoded before the pause may arrive after eager_end_of_turn: it takes nothing back.
        return turn if turn.state == "thinking" and uid == turn.utterance_id else Turn("speaking", uid)
    if kind == "eager_end_of_turn":
        return Turn("thinking", uid, str(message.get("text") or "").strip())
    if kind == "speech_end":
        if message.get("reason") in CONTINUING_REASONS:
            return Turn("speaking", uid)
        return Turn("thinking", uid, turn.eager_text if uid == turn.utterance_id else "")
    if kind == "final":
        if isinstance(uid, int) and isinstance(turn.utterance_id, int) and uid < turn.utterance_id:
            return turn  # an earlier utterance's final, decoded while the user already speaks again
        reason = message.get("reason")
        return Turn("speaking", uid) if reason in CONTINUING_REASONS else Turn("your_turn", uid, "", reason)
    return turn


def indicator(turn: Turn, partial: str = "") -> tuple[str, str]:
    """``(head, text)`` of the terminal line: ``[speaking]`` + the partial, ``[thinking]`` + ``eager: …``
    (or the last partial), ``[your turn]`` alone; no head while idle."""
    if turn.state == "idle":
        return "", partial
    head = f"[{LABELS[turn.state]}]"
    if turn.state == "your_turn":
        return head, ""
    return head, f"eager: {turn.eager_text}" if turn.eager_text else partial
