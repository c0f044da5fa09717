"""The start-up self-benchmark: time the backend's partial step and final on a few seconds of speech.

:func:`measure_costs` runs the model, so the server calls it in a worker thread
before it is ready (and not at all when ``capacity_streams`` is configured);
:func:`streaming.capacity.capacity_from_costs` turns the figures into streams.
The audio is a dev clip when the evaluation folder is there (real speech: the
decoder runs as many tokens as it will in service), else a synthetic burst
whose decode is cheaper than speech; the engine's live per-item costs correct
the estimate once real traffic runs (see ``capacity.Admission``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from .capacity import Costs
from .results import SAMPLE_RATE_HZ, UtteranceOptions

if TYPE_CHECKING:
    from .models.base import Backend

log = logging.getLogger("streaming.capacity")
PARTIAL_AUDIO_S = 3.0
"""Audio of the utterance a timed partial decodes (mid-utterance: partials re-decode all of it)."""
FINAL_AUDIO_S = 6.0
"""Audio of the utterance a timed final decodes (about the average utterance)."""
PROBE_BATCH = 3
"""The small partial batch timed besides batch 1 (what batching saves per utterance)."""


def probe_audio(seconds: float = FINAL_AUDIO_S) -> tuple[np.ndarray, str]:
    """``seconds`` of speech to time the model on, and where it came from."""
    from .evaluation import dev_clips

    try:
        clips = sorted((c for c in dev_clips() if c.language == "en"), key=lambda c: -c.duration_s)
        if clips:
            audio = clips[0].load()
            if audio.size >= seconds * SAMPLE_RATE_HZ:
                return audio[: int(seconds * SAMPLE_RATE_HZ)], f"dev clip {clips[0].id}"
    except (OSError, ValueError, KeyError) as exc:  # no evaluation folder here: synthetic audio will do
        log.debug("no dev clip for the capacity probe: %r", exc)
    return synthetic_audio(seconds), "synthetic"


def synthetic_audio(seconds: float) -> np.ndarray:
    """Noise shaped like speech in loudness (syllable-rate bursts), so the model runs and is not skipped as silent."""
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    noise = np.random.default_rng(0).standard_normal(n)
    return (0.1 * envelope * noise).astype(np.float32)


def measure_costs(backend: Backend, audio: np.ndarray | None = None, batch: int = PROBE_BATCH) -> Costs:
    """Time one partial (batch 1), a partial batch of ``batch`` and one final (about 2 s for tiny.en on 2 cores)."""
    if audio is None:
        audio, _ = probe_audio()
    partial_audio = audio[: int(PARTIAL_AUDIO_S * SAMPLE_RATE_HZ)]
    # The better of two runs each: the first call of a new shape also pays one-off set-up costs.
    partial_s = _best_of_two(backend, "step", partial_audio, 1)
    batch_s = _best_of_two(backend, "step", partial_audio, batch) if batch > 1 else 0.0
    final_s = _best_of_two(backend, "finalize", audio, 1)
    return Costs(partial_s=partial_s, final_s=final_s, batch=batch if batch > 1 else 1, partial_batch_s=batch_s)


def _states(backend: Backend, audio: np.ndarray, count: int) -> list:
    """``count`` fresh utterances holding ``audio`` (fresh: a partial changes its utterance's state)."""
    states = []
    for _ in range(count):
        state = backend.new_utterance(UtteranceOptions())
        state.append_audio(audio)
        states.append(state)
    return states


def _best_of_two(backend: Backend, method: str, audio: np.ndarray, count: int) -> float:
    """Seconds ``backend.step`` or ``.finalize`` takes on ``count`` fresh utterances of ``audio``, best of two."""
    call = getattr(backend, method)
    best_s = float("inf")
    for _ in range(2):
        states = _states(backend, audio, count)
        t0 = time.perf_counter()
        call(states)
        best_s = min(best_s, time.perf_counter() - t0)
    return max(best_s, 1e-6)
