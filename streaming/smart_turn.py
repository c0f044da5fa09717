"""Smart Turn v3.2: the probability that a speaker has finished their turn, from the audio alone.

Why a model. A pause says only that the speaker stopped; whether they are done
("…for your country.") or thinking ("I'd like to, um") is in the words and the
intonation. Smart Turn v3.2 (Daily, BSD-2-Clause, the end-of-turn model of
pipecat's ``LocalSmartTurnAnalyzerV3``) is a Whisper-tiny encoder with a
classification head, exported to an 8.7 MB int8 ONNX file. ``scripts/setup.sh``
extracts that file from the pipecat-ai 1.14.0 wheel; nothing is downloaded at
run time.

The model takes the last 8 s of 16 kHz audio (zero-padded at the start when
shorter) as Whisper log-mel features: the 8 s waveform normalized to zero mean
and unit variance, 80 Slaney mel bins, 25 ms Hann frames every 10 ms, 800
frames, log10 clamped to 8 units below its peak and scaled to about [-1, 1]
(what ``WhisperFeatureExtractor(chunk_length=8)`` computes with
``do_normalize=True``). It returns the sigmoid probability that the turn is
complete. The features here are our own numpy code, checked against pipecat's
features and probabilities on real clips (``tests/smart_turn_reference.json``).

This module holds the model and its features only: it starts no threads and
knows no session. The engine calls :meth:`SmartTurnModel.score` from a worker
thread (onnxruntime's ``run`` is thread-safe); the policy that turns a
probability into an end of turn lives in ``streaming/turns.py``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODEL_FILE", "MODEL_SHA256", "SmartTurnModel", "TurnModelMissing", "default_model_path",
           "last_window", "load_turn_model", "log_mel_features"]

log = logging.getLogger("streaming.smart_turn")

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
"""SHA-256 of ``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx`` in pipecat-ai 1.14.0."""

SAMPLE_RATE_HZ = 16_000
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE_HZ
"""The model sees the last 8 s of the utterance (128 000 samples)."""
N_FFT = 400
"""25 ms analysis frames."""
HOP_SAMPLES = 160
"""10 ms between frames."""
N_MELS = 80
N_FRAMES = WINDOW_SAMPLES // HOP_SAMPLES
"""800 frames: Whisper's centred STFT gives one more, which it drops."""
_NORM_EPS = 1e-7
"""Added to the waveform's variance before dividing, as ``WhisperFeatureExtractor`` does."""


class TurnModelMissing(RuntimeError):
    """The Smart Turn model file is not where the configuration says."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"the Smart Turn model {path} is missing (turn_detection = \"smart\" needs it): run "
            f"scripts/setup.sh, which extracts {MODEL_FILE} from the pipecat-ai wheel, or set "
            f"[turn_model] path to a copy of it")
        self.path = path


def default_model_path() -> Path:
    """Where ``scripts/setup.sh`` puts the model: ``<venv>/share/streaming-asr/smart-turn-v3.2-cpu.onnx``."""
    return Path(sys.prefix) / "share" / "streaming-asr" / MODEL_FILE


def last_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of 16 kHz mono ``audio`` as float32, zero-padded at the start when shorter."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"the turn model takes mono audio (one dimension), got shape {audio.shape}")
    if audio.size >= WINDOW_SAMPLES:
        return audio[audio.size - WINDOW_SAMPLES:]
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    window[WINDOW_SAMPLES - audio.size:] = audio
    return window


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear to 1 kHz (15 mels), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel_per_hz = 3.0 / 200.0
    mels_per_log_hz = 27.0 / np.log(6.4)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * mels_per_log_hz
    return np.where(hz < 1000.0, hz * mel_per_hz, log_part)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_hz_to_slaney_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log_part = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel < 15.0, mel * 200.0 / 3.0, log_part)


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """Triangular Slaney-normalized mel filters, [N_MELS, N_FFT/2+1] float64, spanning 0–8 kHz."""
    edges_hz = _slaney_mel_to_hz(np.linspace(0.0, _hz_to_slaney_mel(SAMPLE_RATE_HZ / 2), N_MELS + 2))
    bins_hz = np.linspace(0.0, SAMPLE_RATE_HZ / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    # Each filter has unit area in Hz, so wide high-frequency bands do not dominate.
    return triangles * (2.0 / (upper - lower))


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """The periodic Hann window of one frame (float64)."""
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)


def log_mel_features(windows: np.ndarray) -> np.ndarray:
    """The model's input [B, 80, 800] (float32) for 8 s windows [B, 128000] (see :func:`last_window`)."""
    waves = np.asarray(windows, dtype=np.float64)
    if waves.ndim != 2 or waves.shape[1] != WINDOW_SAMPLES:
        raise ValueError(f"expected windows of shape [B, {WINDOW_SAMPLES}], got {waves.shape}")
    # The model was trained on loudness-normalized waveforms: zero mean, unit variance over the 8 s.
    waves = (waves - waves.mean(axis=1, keepdims=True)) / np.sqrt(waves.var(axis=1, keepdims=True) + _NORM_EPS)
    half = N_FFT // 2
    padded = np.pad(waves, ((0, 0), (half, half)), mode="reflect")  # centred frames
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=1)[:, ::HOP_SAMPLES][:, :N_FRAMES]
    spectrum = np.fft.rfft(frames * _hann_window(), axis=-1)  # [B, frames, bins]
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = np.einsum("mf,btf->bmt", _mel_filters(), power)
    log_mel = np.log10(np.maximum(mel, 1e-10))
    # Keep 8 log10 units (80 dB) below each window's own peak, then map to about [-1, 1].
    peak = log_mel.max(axis=(1, 2), keepdims=True)
    log_mel = np.maximum(log_mel, peak - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


class SmartTurnModel:
    """The Smart Turn v3.2 ONNX model: ``score`` clips of an utterance's audio, many in one run."""

    name = "smart-turn-v3.2"

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.threads = int(threads)
        self._session: Any = ort.InferenceSession(str(self.path), sess_options=options,
                                                  providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """The model input [B, 80, 800] for 16 kHz float32 mono clips (the last 8 s of each)."""
        return log_mel_features(np.stack([last_window(a) for a in audios]))

    def score(self, audios: Sequence[np.ndarray]) -> list[float]:
        """For each 16 kHz float32 mono clip, the probability (0–1) that the turn is complete; one run."""
        if len(audios) == 0:
            return []
        logits = self._session.run([self._output], {self._input: self.features(audios)})[0]
        # The export ends in a sigmoid: its "logits" are already probabilities, [B, 1].
        return [float(p) for p in np.asarray(logits).reshape(len(audios))]


def load_turn_model(options: Any) -> SmartTurnModel:
    """The model ``options`` (``TurnModelOptions``: ``path``, "" = default; ``threads``) names, warmed up."""
    path = Path(options.path).expanduser() if options.path else default_model_path()
    if not path.is_file():
        raise TurnModelMissing(path)
    t0 = time.perf_counter()
    model = SmartTurnModel(path, threads=options.threads)
    model.score([np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)])  # the first run allocates; pay it here
    log.info("turn model %s loaded from %s (%d thread%s) in %.2f s", model.name, path, model.threads,
             "" if model.threads == 1 else "s", time.perf_counter() - t0)
    return model
