"""Smart turn detection, pure: what a pause means, and the bookkeeping of one utterance's pauses.

In ``turn_detection = "smart"`` the endpointer reports a *pause* once an open utterance's
silence reaches ``turn_pause_ms`` (:class:`~streaming.vad.UtterancePaused`), and a *resume*
when speech comes back. At a pause the session asks the end-of-turn model (Smart Turn,
:mod:`streaming.smart_turn`, run by the engine off the event loop) for the probability that
the turn is complete, over the last :data:`SCORE_AUDIO_S` of the utterance. :func:`decide`
turns that probability into one of three answers with the thresholds of the session's
``turn_eagerness`` (:data:`EAGERNESS`):

- ``END``: the turn ends now (reason ``end_of_turn``);
- ``EAGER``: probably the end, not sure enough: with ``eager_end_of_turn`` on, decode now and
  send ``eager_end_of_turn`` (``turn_resumed`` takes it back when speech follows);
- ``WAIT``: keep the turn open until speech resumes or the pause reaches ``turn_max_silence_ms``
  (counted in stream audio by the endpointer, and on the wall clock by a timer while the
  client sends nothing), which ends it with reason ``max_silence``.

With ``turn_prefetch`` (the default) the decode starts at the pause, beside the model's scoring,
whatever the answer will be: a turn the model ends then has its final as soon as that decode is
done (the engine hands it over), instead of waiting for the answer and then for a decoder.

While a pause is judged the utterance's new audio is *held*, not fed to the model: if the turn
ends, the utterance's audio ends at the pause, so the final is exactly the decode an eager end
of turn made of it; if speech resumes, the held audio is fed first and nothing is lost.

:class:`PauseTracker` is that bookkeeping for one open utterance (which pause is current, the
held audio, whether an eager text went out, the audio the model scores); it has no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np

SAMPLE_RATE_HZ = 16_000
SCORE_AUDIO_S = 8.0
"""The end-of-turn model reads at most the last 8 s of the utterance."""


@dataclass(frozen=True)
class TurnThresholds:
    """Probabilities of "turn complete" at which a pause ends the turn or sends an eager end of turn."""

    end: float
    eager: float


EAGERNESS: dict[str, TurnThresholds] = {
    "low": TurnThresholds(end=0.95, eager=0.8),
    "medium": TurnThresholds(end=0.93, eager=0.7),
    "high": TurnThresholds(end=0.8, eager=0.5),
}
"""``turn_eagerness`` → thresholds (``auto`` = ``medium``). Higher eagerness ends more turns at the
first pause and cuts people off more often. Chosen on the benchmark's 71 English hesitation cases
(a 500-800 ms pause inserted mid-sentence) and their complete twins, scored at a 150 ms pause
(docs/turn-taking.md): Smart Turn v3.2 calls a mid-sentence cut of read speech complete often, so
the end thresholds sit high (0.8 / 0.93 / 0.95: 20 / 10 / 8 % false ends, 79 / 76 / 75 % of complete
turns ended at the first pause; the rest wait for ``turn_max_silence_ms``)."""


def thresholds(eagerness: str) -> TurnThresholds:
    """The thresholds of a ``turn_eagerness`` value (``auto`` is ``medium``)."""
    return EAGERNESS["medium" if eagerness == "auto" else eagerness]


class Decision(Enum):
    END = "end"
    EAGER = "eager"
    WAIT = "wait"


def decide(probability: float, eagerness: str, eager: bool) -> Decision:
    """What a pause whose turn-complete probability is ``probability`` means (see the module docstring)."""
    limits = thresholds(eagerness)
    if probability >= limits.end:
        return Decision.END
    if eager and probability >= limits.eager:
        return Decision.EAGER
    return Decision.WAIT


class PauseTracker:
    """One open utterance's pauses: the current one, the audio held during it, the scored tail."""

    def __init__(self) -> None:
        self.pause = 0
        """Number of the current (or latest) pause; results for an older one are stale."""
        self.paused = False
        self.at_sample = 0
        """Stream position where the current pause was reached."""
        self.eager_asked = False
        """An eager decode was requested for the current pause."""
        self.eager_sent = False
        """``eager_end_of_turn`` went out for the current pause (a resume must retract it)."""
        self.eager_wanted = False
        """The model's answer for the current pause was ``EAGER``: send the text once the decode is in."""
        self.eager_text: str | None = None
        """The current pause's decode, when it finished before the model's answer (prefetch)."""
        self._held: list[np.ndarray] = []
        self._tail: deque[np.ndarray] = deque()
        self._tail_samples = 0

    def fed(self, audio: np.ndarray) -> None:
        """Audio fed to the model: keep the last :data:`SCORE_AUDIO_S` for scoring."""
        self._tail.append(audio)
        self._tail_samples += audio.size
        limit = int(SCORE_AUDIO_S * SAMPLE_RATE_HZ)
        while self._tail and self._tail_samples - self._tail[0].size >= limit:
            self._tail_samples -= self._tail.popleft().size

    def hold(self, audio: np.ndarray) -> None:
        """Audio that arrived during the pause: kept back until the pause is resolved."""
        self._held.append(audio)

    def begin(self, at_sample: int) -> int:
        """A pause was reached at ``at_sample``; returns its number."""
        self.pause += 1
        self.paused, self.at_sample = True, at_sample
        self.eager_asked = self.eager_sent = self.eager_wanted = False
        self.eager_text = None
        return self.pause

    def current(self, pause: int) -> bool:
        """Whether ``pause`` is the pause being judged now (a result for it still counts)."""
        return self.paused and pause == self.pause

    def resume(self) -> tuple[list[np.ndarray], bool]:
        """Speech came back: the held audio (to feed, in order) and whether an eager text must be retracted."""
        held, retract = self._held, self.eager_sent
        self._held = []
        self.paused = self.eager_asked = self.eager_sent = self.eager_wanted = False
        self.eager_text = None
        return held, retract

    def end(self) -> None:
        """The utterance ended: the held audio was silence after the pause and is dropped."""
        self._held = []
        self.paused = False

    def score_audio(self) -> np.ndarray:
        """The utterance audio the model scores: its last :data:`SCORE_AUDIO_S` fed so far."""
        if not self._tail:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(list(self._tail))
        return audio[-int(SCORE_AUDIO_S * SAMPLE_RATE_HZ):]
