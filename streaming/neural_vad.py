"""Silero VAD speech probabilities over a 16 kHz stream: the endpointer's second opinion.

Why here. webrtcvad (a GMM over six sub-band energies) calls loud broadband
noise, hum and typing "speech": the endpointer then opens an utterance on it and
Whisper, which always writes something, hallucinates ("You"). Banning words or
tuning Whisper's no-speech rule treats one model's symptom; a gate before the
model (the endpointer's frame classifier) keeps non-speech away from *every*
backend (Whisper, Qwen3-ASR), saves their compute, and keeps noise after an
utterance from holding it open (webrtcvad would keep it voiced up to the
``max_utterance_s`` cut). Silero VAD is a small trained network (STFT, four
convolutions, one LSTM) that separates speech from stationary and impulsive
noise at any level: on the tests' signal table (white/pink/brown noise −50 to
−10 dBFS, 50/60 Hz hum, clicks, typing), streamed from silence, its probability
stays below 0.43 while speech is mostly above 0.9. Known gap: right after speech
or loud noise, loud 60 Hz hum with harmonics keeps it in its speech state
(p > 0.99 at −10 dBFS). It confirms webrtcvad rather than replacing it because
webrtcvad places onsets and ends more tightly (see :mod:`.vad`): Silero lags
onsets and dips inside words.

The model runs through onnxruntime on the *sequence* export shipped in the
``silero-vad`` wheel (``silero_vad_16k_sequence.onnx``): all whole 512-sample
chunks of one feed go in one call, the LSTM state (h, c) and the 64-sample
context carry over between calls, so the result does not depend on how the
stream was cut into feeds (bit-exact with the per-chunk streaming model).
The ``silero_vad`` package itself is never imported: its ``__init__`` imports
torch and sets torch's process-wide thread count to 1, which would slow the
model backends.

Frames and chunks. The endpointer's frames are 30 ms (480 samples), Silero's
chunks 32 ms (512). A frame sees the chunks that ended at or before the frame's
end (:func:`latest_speech_end`), so a verdict never waits for future audio and
lags the audio by under 32 ms.

Cost (``scripts/vad_cost.py`` on the 2-core AMD EPYC dev machine, one
onnxruntime thread): ~93 µs per chunk when a feed holds many chunks (2.9 ms of
CPU per second of audio), ~144 µs per chunk in 100 ms feeds (4.5 ms per second:
0.45 % of a core per real-time stream), ~270 µs in 32 ms feeds. One 1 MiB
pcm_s16le frame (32.8 s of 16 kHz audio) costs ~93 ms of Silero; the whole
frame pipeline (decode, endpointer with webrtcvad and Silero) ~120 ms, against
~26 ms with ``speech_threshold = 0``. That is over the 100 ms a frame may hold
the event loop: the model's convolutions dominate (a numpy port was no faster),
so frames that large want the endpointer off the loop (a shell change).

Measured effect (``scripts/vad_wer.py``, final-only, dev-full English, 89 clips):
WER 6.98 % with webrtcvad alone, 6.72 % with the confirmation; 86 clips get the
same utterances; as a plain AND instead, 8.68 %.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

CHUNK_SAMPLES = 512
"""Silero v5+ at 16 kHz: one probability per 512 samples (32 ms)."""
CONTEXT_SAMPLES = 64
"""Samples of the previous chunk prefixed to each chunk, as the streaming model does."""
MODEL_FILE = "silero_vad_16k_sequence.onnx"


def model_path() -> Path:
    """The sequence model inside the installed ``silero-vad`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise RuntimeError(f"silero-vad is installed but {path} is missing")
    return path


@lru_cache(maxsize=1)
def _session():  # -> onnxruntime.InferenceSession
    """One model per process; ``run`` is thread-safe and every stream keeps its own state."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the event loop's thread: leave the cores to the model backend
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path()), sess_options=options, providers=["CPUExecutionProvider"])


class SileroStream:
    """Speech probability of a 16 kHz stream, per 512-sample chunk, fed in pieces of any size."""

    def __init__(self) -> None:
        self._session = _session()
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._pending = np.zeros(0, np.float32)
        self.samples = 0
        """Samples fed so far."""
        self.chunks = 0
        """Whole chunks scored so far (chunk k covers samples [512k, 512(k+1)))."""
        self.last_prob = 0.0
        """Probability of the latest whole chunk (0 before the first)."""

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Append samples; return the probabilities of the chunks they completed, in order."""
        audio = np.concatenate([self._pending, np.asarray(samples, np.float32).reshape(-1)])
        self.samples += samples.size
        n = audio.size // CHUNK_SAMPLES
        self._pending = audio[n * CHUNK_SAMPLES:]
        if n == 0:
            return np.zeros(0, np.float32)
        chunks = audio[: n * CHUNK_SAMPLES].reshape(n, CHUNK_SAMPLES)
        contexts = np.empty((n, CONTEXT_SAMPLES), np.float32)
        contexts[0] = self._context
        contexts[1:] = chunks[:-1, -CONTEXT_SAMPLES:]
        self._context = chunks[-1, -CONTEXT_SAMPLES:].copy()
        probs, self._h, self._c = self._session.run(
            ["speech_probs", "hn", "cn"],
            {"input": np.concatenate([contexts, chunks], axis=1), "h": self._h, "c": self._c})
        probs = np.asarray(probs, np.float32).reshape(-1)
        self.chunks += n
        self.last_prob = float(probs[-1])
        return probs


def latest_speech_end(frame_ends: np.ndarray, first_chunk: int, is_speech: np.ndarray, before: int) -> np.ndarray:
    """For each frame, the end sample of the latest speech chunk that ended at or before the frame's end.

    ``is_speech`` covers the chunks ``first_chunk, first_chunk + 1, …``; ``before`` is the
    answer for earlier chunks (the latest speech chunk's end before them, or a large negative).
    A frame never waits for a chunk that is not complete yet (under 32 ms of lag).
    """
    speech_ends = (first_chunk + 1 + np.flatnonzero(is_speech)) * CHUNK_SAMPLES
    idx = np.searchsorted(speech_ends, np.asarray(frame_ends, np.int64), side="right")
    table = np.concatenate([[before], speech_ends]).astype(np.int64)
    return table[idx]
