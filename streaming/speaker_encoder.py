"""Speaker embeddings: a 256-d unit vector per stretch of speech that is close for the same voice.

Why this model. Live speaker labels need a voice fingerprint per second or so of
audio that costs little next to the speech recognizer. The GE2E d-vector encoder
of Resemblyzer (Resemble AI, Apache-2.0; Wan et al. 2018, "Generalized
End-to-End Loss for Speaker Verification") is a 3-layer LSTM over 40 mel
channels, 17 MB, trained on about 2 000 hours of LibriSpeech, VoxCeleb 1 and 2.
``scripts/fetch_speaker_encoder.py`` extracts its weights from the resemblyzer
0.1.4 wheel; the package itself is not installed (it pulls librosa): the network
and its features are reimplemented here, in torch and numpy.

The network: ``LSTM(40 → 256, 3 layers)``, the last layer's final hidden state
through ``Linear(256, 256)`` and ReLU, L2-normalised. Its input is a 40-channel
mel power spectrogram (not log) of 16 kHz audio: 25 ms Hann frames (400
samples, n_fft 400, centred, zero-padded) every 10 ms, Slaney mel scale and
Slaney area normalisation, the way librosa's ``melspectrogram`` computes it.
Resemblyzer raises quiet audio to -30 dBFS first; so do we, per stretch.
It sees 1.6 s windows (160 frames); a stretch is cut into windows every 0.4 s.

This module holds the model and its features only: it starts no threads and
knows no session; the policy that turns vectors into speaker labels is
``streaming/speakers.py``. After :meth:`SpeakerEncoder.load` nothing changes, so
concurrent calls from several threads are safe.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["MODEL_FILE", "MODEL_SHA256", "SpeakerEncoder", "SpeakerWindow", "default_model_path",
           "mel_filterbank", "mel_spectrogram", "voiced_frames", "window_frames"]

MODEL_FILE = "resemblyzer-pretrained.pt"
MODEL_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
"""SHA-256 of ``resemblyzer/pretrained.pt`` in the resemblyzer 0.1.4 wheel."""

SAMPLE_RATE_HZ = 16_000
N_FFT = 400
"""25 ms analysis frames."""
HOP_SAMPLES = 160
"""10 ms between frames."""
N_MELS = 40
HIDDEN_SIZE = 256
EMBEDDING_SIZE = 256
N_LAYERS = 3
TARGET_DBFS = -30.0
"""Quieter stretches are raised to this RMS level before the features (never lowered), as Resemblyzer does."""
MIN_AUDIO_S = 0.4
"""Shorter audio, or less voiced audio than this, gives no window: too little voice to tell speakers apart."""
MAX_PAUSE_S = 0.2
"""Longer pauses (and background between words) are cut out before the windows are formed."""
VOICED_BELOW_PEAK_DB = 30.0
VOICED_ABOVE_FLOOR_DB = 6.0
SILENCE_DBFS = -90.0
"""Audio whose loud frames are quieter than this is silence: it gives no window."""


@dataclass(frozen=True)
class SpeakerWindow:
    """One window of a stretch of audio and its voice vector (unit norm, 256-d)."""

    start_s: float
    """Start, in seconds from the start of the audio given to :meth:`SpeakerEncoder.embed_windows`."""
    end_s: float
    vector: np.ndarray

    @property
    def centre_s(self) -> float:
        return (self.start_s + self.end_s) / 2


def default_model_path() -> Path:
    """Where ``make setup`` puts the weights: ``<venv>/share/streaming-asr/resemblyzer-pretrained.pt``."""
    return Path(sys.prefix) / "share" / "streaming-asr" / MODEL_FILE


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear_step_hz = 200.0 / 3
    break_hz = 1000.0
    break_mel = break_hz / linear_step_hz
    log_step = np.log(6.4) / 27.0
    mel = hz / linear_step_hz
    above = hz >= break_hz
    mel[above] = break_mel + np.log(hz[above] / break_hz) / log_step
    return mel


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear_step_hz = 200.0 / 3
    break_hz = 1000.0
    break_mel = break_hz / linear_step_hz
    log_step = np.log(6.4) / 27.0
    hz = mel * linear_step_hz
    above = mel >= break_mel
    hz[above] = break_hz * np.exp(log_step * (mel[above] - break_mel))
    return hz


@lru_cache(maxsize=4)
def mel_filterbank(sample_rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular Slaney-scale filters with Slaney (equal-area) normalisation, ``(n_mels, n_fft // 2 + 1)``."""
    fft_hz = np.linspace(0.0, sample_rate_hz / 2, n_fft // 2 + 1)
    edges_mel = np.linspace(_hz_to_slaney_mel(np.array([0.0]))[0],
                            _hz_to_slaney_mel(np.array([sample_rate_hz / 2]))[0], n_mels + 2)
    edges_hz = _slaney_mel_to_hz(edges_mel)
    widths_hz = np.diff(edges_hz)
    # Distance of every FFT bin from every filter edge; each triangle rises over one width, falls over the next.
    offsets = edges_hz[:, None] - fft_hz[None, :]
    rising = -offsets[:-2] / widths_hz[:-1, None]
    falling = offsets[2:] / widths_hz[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """Periodic Hann window of ``N_FFT`` samples (the one FFT-based spectrograms use)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    window.setflags(write=False)
    return window


def _frames(audio: np.ndarray) -> np.ndarray:
    """Centred 400-sample frames every 160 samples (zero-padded at both ends), ``(1 + len // 160, 400)``."""
    padded = np.pad(np.asarray(audio, dtype=np.float64).reshape(-1), N_FFT // 2)
    n_frames = 1 + (len(padded) - N_FFT) // HOP_SAMPLES
    return np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_SAMPLES][:n_frames]


def mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """Mel power spectrogram of 16 kHz ``audio``, ``(frames, 40)`` float32; frame ``k`` is centred on sample 160 k."""
    power = np.abs(np.fft.rfft(_frames(audio) * _hann_window(), axis=1)) ** 2
    return (power @ mel_filterbank().T).astype(np.float32)


def voiced_frames(audio: np.ndarray) -> np.ndarray:
    """Which frames of :func:`mel_spectrogram` to keep: speech, and pauses up to ``MAX_PAUSE_S`` within it.

    Windows of pause or background noise give vectors of no one's voice (the encoder was
    trained on speech with long silences cut out, as Resemblyzer cuts them). A frame is
    voiced when it is within ``VOICED_BELOW_PEAK_DB`` of the loud frames and
    ``VOICED_ABOVE_FLOOR_DB`` above the quiet ones; frames near a voiced one are kept too.
    """
    frames = _frames(audio)
    level_db = 10 * np.log10(np.maximum(np.mean(frames ** 2, axis=1), 1e-20))
    loud_db, quiet_db = np.percentile(level_db, [95, 10])
    voiced = level_db > max(loud_db - VOICED_BELOW_PEAK_DB, quiet_db + VOICED_ABOVE_FLOOR_DB)
    reach = int(round(MAX_PAUSE_S / 2 / (HOP_SAMPLES / SAMPLE_RATE_HZ)))
    kept = np.convolve(voiced.astype(np.int64), np.ones(2 * reach + 1, dtype=np.int64), mode="same") > 0
    if loud_db <= SILENCE_DBFS:
        kept[:] = False  # digital silence: no voice at all
    elif loud_db - quiet_db < VOICED_ABOVE_FLOOR_DB:
        kept[:] = True  # a level signal (all speech, or all noise): nothing to tell apart, keep it all
    return kept


def _raise_volume(audio: np.ndarray) -> np.ndarray:
    """``audio`` raised to ``TARGET_DBFS`` RMS when quieter (silence stays silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms <= 1e-9:
        return audio
    gain_db = TARGET_DBFS - 20 * np.log10(rms)
    return audio * np.float32(10 ** (gain_db / 20)) if gain_db > 0 else audio


def window_frames(n_frames: int, frames_per_window: int, hop_frames: int) -> list[tuple[int, int]]:
    """Frame ranges ``[start, end)`` of windows over ``n_frames``, every ``hop_frames``, the last one ending at the end.

    Audio shorter than one window gives one window over all of it. No window reaches past
    the audio, so none is padded with silence the encoder would hear as a voice.
    """
    if n_frames <= frames_per_window:
        return [(0, n_frames)]
    starts = list(range(0, n_frames - frames_per_window + 1, hop_frames))
    if starts[-1] + frames_per_window < n_frames:
        starts.append(n_frames - frames_per_window)
    return [(start, start + frames_per_window) for start in starts]


class SpeakerEncoder:
    """The GE2E d-vector network with its weights; :meth:`load` it once, call it from any thread."""

    def __init__(self, lstm, linear) -> None:  # torch.nn.LSTM, torch.nn.Linear: torch is imported lazily
        self._lstm = lstm
        self._linear = linear

    @classmethod
    def load(cls, path: str | Path | None = None) -> SpeakerEncoder:
        """Read the weights from ``path`` (default :func:`default_model_path`)."""
        import torch

        path = Path(path) if path is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"the speaker encoder weights {path} are missing: run `make setup` (scripts/"
                f"fetch_speaker_encoder.py extracts {MODEL_FILE} from the resemblyzer 0.1.4 wheel)")
        state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
        # The checkpoint also holds GE2E's training-only similarity scale and bias: not part of the encoder.
        lstm = torch.nn.LSTM(N_MELS, HIDDEN_SIZE, N_LAYERS, batch_first=True)
        lstm.load_state_dict(_submodule_state(state, "lstm."))
        linear = torch.nn.Linear(HIDDEN_SIZE, EMBEDDING_SIZE)
        linear.load_state_dict(_submodule_state(state, "linear."))
        for module in (lstm, linear):
            module.eval()
            module.requires_grad_(False)
        return cls(lstm, linear)

    def embed_windows(self, audio: np.ndarray, window_s: float = 1.6, hop_s: float = 0.4) -> list[SpeakerWindow]:
        """A voice vector for every ``window_s`` of 16 kHz ``audio``, every ``hop_s``; ``[]`` under 0.4 s of voice.

        Long pauses are cut out first (:func:`voiced_frames`); audio shorter than one window
        gives one window over all of it. All windows go through the network in one batch.
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        duration_s = len(audio) / SAMPLE_RATE_HZ
        if duration_s < MIN_AUDIO_S:
            return []
        # The centred STFT adds one frame past the end; windows cover the real frames only.
        kept = np.flatnonzero(voiced_frames(audio)[:-1])  # before the gain: silence must stay silence
        frame_s = HOP_SAMPLES / SAMPLE_RATE_HZ
        if len(kept) * frame_s < MIN_AUDIO_S:
            return []
        mel = mel_spectrogram(_raise_volume(audio))[kept]
        ranges = window_frames(len(kept), max(1, round(window_s / frame_s)), max(1, round(hop_s / frame_s)))
        vectors = self._forward(np.stack([mel[start:end] for start, end in ranges]))
        # A window's time is that of its first and last kept frame: it may span a pause cut out of it.
        return [SpeakerWindow(float(kept[start] * frame_s), float(min((kept[end - 1] + 1) * frame_s, duration_s)),
                              vector) for (start, end), vector in zip(ranges, vectors)]

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """One voice vector for all of ``audio``: the renormalised mean of its window vectors."""
        windows = self.embed_windows(audio)
        if not windows:
            raise ValueError(f"audio of {len(audio) / SAMPLE_RATE_HZ:.2f} s is too short to embed "
                             f"(at least {MIN_AUDIO_S} s)")
        return _unit(np.mean([w.vector for w in windows], axis=0))

    def _forward(self, mels: np.ndarray) -> np.ndarray:
        """Unit vectors ``(batch, 256)`` of equal-length mel windows ``(batch, frames, 40)``, in one pass."""
        import torch

        with torch.inference_mode():
            _, (hidden, _) = self._lstm(torch.from_numpy(mels))
            raw = torch.relu(self._linear(hidden[-1]))
            # ReLU could in principle zero every unit: clamp so such a vector stays zero instead of NaN.
            return (raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def _submodule_state(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)
