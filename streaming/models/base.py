"""The one small interface every model backend implements.

The engine owns a backend and calls it from its worker thread only, so a
backend never needs locks. A backend works on *utterances*: the audio between
two VAD endpoints (or a ``max_utterance_s`` cut). For each utterance the engine
asks for a state with :meth:`Backend.new_utterance`, appends audio to it as it
arrives, asks for partial hypotheses with :meth:`Backend.step` (batched over
many utterances of many sessions) and for the final text with
:meth:`Backend.finalize` (batched too). The engine and the server never branch
on which backend they hold.
"""

from __future__ import annotations

import abc

import numpy as np

from streaming.results import (SAMPLE_RATE_HZ, FinalResult, Hypothesis, OptionError, UtteranceOptions, Word,
                               join_text)

__all__ = ["SAMPLE_RATE_HZ", "Backend", "FinalResult", "Hypothesis", "OptionError", "UtteranceOptions",
           "UtteranceState", "Word", "join_text"]


class UtteranceState:
    """Per-utterance backend state: the audio so far; backends add caches and a stability buffer.

    Appending is cheap (chunks are kept); :attr:`audio` joins them lazily, once per model call.
    """

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._audio = np.zeros(0, dtype=np.float32)
        self.num_samples = 0
        self.peak = 0.0
        """Largest absolute sample so far (a cheap silence check)."""

    def append_audio(self, samples: np.ndarray) -> None:
        """Append mono float32 16 kHz samples to the utterance."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size:
            self._chunks.append(samples)
            self.num_samples += samples.size
            self.peak = max(self.peak, float(np.abs(samples).max()))

    @property
    def audio(self) -> np.ndarray:
        """All samples so far."""
        if self._chunks:
            self._audio = np.concatenate([self._audio, *self._chunks])
            self._chunks.clear()
        return self._audio

    def pad_audio(self, num_samples: int) -> None:
        """Zero-pad the utterance to at least ``num_samples`` (models with a minimum input length)."""
        missing = num_samples - self.num_samples
        if missing > 0:
            self.append_audio(np.zeros(missing, dtype=np.float32))

    @property
    def duration_s(self) -> float:
        """Audio held so far, in seconds."""
        return self.num_samples / SAMPLE_RATE_HZ


class Backend(abc.ABC):
    """A speech-recognition model behind the engine."""

    name: str = "backend"
    """Short model name reported to clients in ``ready``."""
    multilingual: bool = False
    supports_window: bool = False
    """Whether ``window_s`` means anything for this backend."""
    max_utterance_s: float = 30.0
    """Longest utterance this backend can decode in one piece."""
    supports_translate: bool = False
    """Whether ``task = "translate"`` (English text from any spoken language) works."""
    supports_eager: bool = True
    """Whether :meth:`finalize_open` works (eager ends of turn; smart turn detection works without it)."""
    final_reuses_partial: bool = False
    """Whether a final right after a partial over the same audio reuses that partial's work. Smart turn
    detection asks for a partial at each pause only then: otherwise that partial holds the worker
    while the turn model decides, and a final that comes at once waits for it."""

    def validate_options(self, options: UtteranceOptions) -> None:
        """Raise :class:`OptionError` if this backend cannot honour ``options`` (overrides call
        :meth:`check_task` too)."""
        self.check_task(options)

    def check_task(self, options: UtteranceOptions) -> None:
        """The ``task`` check every backend shares: ``translate`` needs :attr:`supports_translate`."""
        if options.task not in ("transcribe", "translate"):
            raise OptionError(f"task must be 'transcribe' or 'translate', got {options.task!r}")
        if options.task == "translate" and not self.supports_translate:
            raise OptionError(f"{self.name} cannot translate (task 'translate' needs a multilingual Whisper "
                              "model, such as the embedded 'base')")

    @abc.abstractmethod
    def new_utterance(self, options: UtteranceOptions) -> UtteranceState:
        """Create the state of a new, empty utterance."""

    @abc.abstractmethod
    def step(self, states: list[UtteranceState]) -> list[Hypothesis]:
        """Compute a partial hypothesis for each open utterance (one batch)."""

    @abc.abstractmethod
    def finalize(self, states: list[UtteranceState]) -> list[FinalResult]:
        """Compute the final text of each closed utterance (one batch)."""

    def finalize_open(self, states: list[UtteranceState]) -> list[FinalResult]:
        """The final of each utterance as it stands, leaving it open for more audio (smart turn
        detection's eager end of turn). It must equal what :meth:`finalize` would return now, since
        it becomes the final when no audio follows. The default is :meth:`finalize`, right for a
        backend whose finalize keeps the state usable; one that releases resources overrides it."""
        return self.finalize(states)

    def warmup(self) -> None:
        """Run one tiny pass so the first real request is not slow."""
