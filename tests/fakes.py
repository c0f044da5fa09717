"""A deterministic stand-in model for fast tests of everything around the model."""

from __future__ import annotations

import time

from streaming.models.base import Backend, FinalResult, Hypothesis, OptionError, UtteranceOptions, UtteranceState
from streaming.stability import LocalAgreement


class CountingState(UtteranceState):
    def __init__(self, options: UtteranceOptions) -> None:
        super().__init__()
        self.options = options
        self.agreement: LocalAgreement[str] = LocalAgreement()

    def words(self) -> list[str]:
        # One "word" per half second of audio: text that grows as audio arrives.
        return [f"w{i}" for i in range(int(self.duration_s * 2))]


class CountingBackend(Backend):
    """'Transcribes' an utterance as w0 w1 … (one word per 0.5 s); optional compute delay."""

    name = "counting"
    multilingual = True

    def __init__(self, delay_s: float = 0.0, supports_window: bool = False) -> None:
        self.delay_s = delay_s
        self.supports_window = supports_window
        self.batches: list[tuple[str, int]] = []

    def validate_options(self, options: UtteranceOptions) -> None:
        self.check_task(options)
        if options.language == "xx":
            raise OptionError("language 'xx' is not supported")

    def new_utterance(self, options: UtteranceOptions) -> CountingState:
        return CountingState(options)

    def step(self, states: list[UtteranceState]) -> list[Hypothesis]:
        self.batches.append(("step", len(states)))
        time.sleep(self.delay_s)
        out = []
        for st in states:
            stable, tail = st.agreement.insert(st.words())
            out.append(Hypothesis(" ".join(stable), " ".join(tail), "en"))
        return out

    def finalize(self, states: list[UtteranceState]) -> list[FinalResult]:
        self.batches.append(("final", len(states)))
        time.sleep(self.delay_s)
        return [FinalResult(" ".join(st.words()), "en") for st in states]


POISON = "poison"
"""The ``context`` that marks an utterance whose final the stand-in fails (see :func:`poison_finals`)."""


def poison_finals(backend: CountingBackend) -> CountingBackend:
    """Make ``backend.finalize`` raise for any batch holding an utterance with ``context=POISON``."""
    real = backend.finalize

    def finalize(states: list[UtteranceState]) -> list[FinalResult]:
        if any(st.options.context == POISON for st in states):
            raise RuntimeError("poisoned utterance")
        return real(states)

    backend.finalize = finalize
    return backend
