"""Qwen3-ASR log-mel features computed frame by frame, and the conv front end's token count.

The clamp rule ("floor frozen per window") is described in the package docstring;
:meth:`LogMel.normalise` applies it with the reference max a window was given.
"""

from __future__ import annotations

import numpy as np
import torch

HOP_SAMPLES = 160
"""STFT hop: one mel frame per 10 ms."""
N_FFT = 400
FRAMES_PER_CHUNK = 100
"""Mel frames per conv chunk (``2 * n_window``): one second."""
TOKENS_PER_CHUNK = 13
"""Audio tokens after the conv front end for a full 1 s chunk."""
MIN_SAMPLES = 8_000
"""The feature extractor zero-pads shorter clips to this length (0.5 s)."""
CLAMP_RANGE = 8.0
"""log10 dynamic range kept below the running max (80 dB)."""


def post_cnn_tokens(n_frames: int) -> int:
    """Audio tokens the conv front end makes from ``n_frames`` mel frames (1 s chunks)."""
    full, rest = divmod(n_frames, FRAMES_PER_CHUNK)
    tokens = full * TOKENS_PER_CHUNK
    if rest:
        for _ in range(3):
            rest = (rest - 1) // 2 + 1
        tokens += rest
    return tokens


class LogMel:
    """Qwen3-ASR log-mel features computed incrementally, frame by frame.

    Same maths as ``Qwen3ASRFeatureExtractor`` (Hann 400, hop 160, Slaney mel
    0-8 kHz, log10 clamp 1e-10) but each frame from exactly its own samples, so
    a frame computed once never changes.
    """

    def __init__(self, mel_filters: np.ndarray) -> None:
        self.mel_filters = torch.from_numpy(np.asarray(mel_filters, dtype=np.float32))  # (201, n_mels)
        self.window = torch.hann_window(N_FFT)

    @staticmethod
    def stable_frames(n_samples: int) -> int:
        """Frames whose samples have all arrived (centre ``t * 160``, needs ``t * 160 + 200`` samples)."""
        if n_samples < N_FFT:
            return 0
        return min((n_samples - N_FFT // 2) // HOP_SAMPLES + 1, n_samples // HOP_SAMPLES)

    @staticmethod
    def total_frames(n_samples: int) -> int:
        """Frames of the whole (closed) utterance, as the offline extractor makes them."""
        return n_samples // HOP_SAMPLES

    def raw(self, audio: np.ndarray, start: int, end: int, final: bool) -> torch.Tensor:
        """log10 mel power of frames ``[start, end)``, shape ``(n_mels, end - start)``.

        ``final`` allows the last frames that reflect-pad past the end of ``audio``.
        """
        if end <= start:
            return torch.zeros(self.mel_filters.shape[1], 0)
        half = N_FFT // 2
        lo = start * HOP_SAMPLES - half
        hi = (end - 1) * HOP_SAMPLES + half
        x = torch.from_numpy(audio[max(lo, 0):min(hi, len(audio))].astype(np.float32, copy=False))
        if lo < 0:  # torch.stft(center=True) reflect-pads the start
            x = torch.cat([torch.from_numpy(audio[1:1 - lo][::-1].copy()), x])
        if hi > len(audio):
            if not final:
                raise ValueError("frame needs samples that have not arrived")
            n = hi - len(audio)
            x = torch.cat([x, torch.from_numpy(audio[-1 - n:-1][::-1].copy())])
        frames = x.unfold(0, N_FFT, HOP_SAMPLES) * self.window  # (n, 400)
        power = torch.fft.rfft(frames, dim=-1).abs() ** 2  # (n, 201)
        mel = power @ self.mel_filters  # (n, n_mels)
        return torch.clamp(mel, min=1e-10).log10().T.contiguous()

    @staticmethod
    def normalise(raw: torch.Tensor, max_log: float) -> torch.Tensor:
        """The extractor's clamp and scaling, with ``max_log`` as the reference max."""
        return (torch.maximum(raw, torch.tensor(max_log - CLAMP_RANGE)) + 4.0) / 4.0
