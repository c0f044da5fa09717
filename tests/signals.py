"""Synthetic non-speech signals for the VAD and end-to-end noise tests (16 kHz mono float32).

Each generator is deterministic for a given ``seed``; levels are RMS in dBFS
(0 dBFS = a full-scale RMS of 1.0). :data:`NOISE_TABLE` is the table the tests
and ``scripts/noise_table.py`` run over.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SR = 16_000


def _at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x * (10 ** (dbfs / 20) / max(rms, 1e-12))).astype(np.float32)


def _n(seconds: float) -> int:
    return int(round(seconds * SR))


def silence(seconds: float) -> np.ndarray:
    """Digital silence."""
    return np.zeros(_n(seconds), np.float32)


def white_noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """Gaussian white noise (flat spectrum)."""
    return _at_dbfs(np.random.default_rng(seed).standard_normal(_n(seconds)), dbfs)


def _coloured(seconds: float, dbfs: float, seed: int, exponent: float) -> np.ndarray:
    """Noise with power ∝ 1/f**exponent (shaped in the frequency domain, DC removed)."""
    n = _n(seconds)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    spec = spec / f ** (exponent / 2)
    spec[0] = 0
    return _at_dbfs(np.fft.irfft(spec, n), dbfs)


def pink_noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """Pink noise: −3 dB per octave."""
    return _coloured(seconds, dbfs, seed, 1.0)


def brown_noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """Brown (red) noise: −6 dB per octave."""
    return _coloured(seconds, dbfs, seed, 2.0)


def hum(seconds: float, dbfs: float, mains_hz: float = 50.0, harmonics: int = 8) -> np.ndarray:
    """Mains hum: the fundamental and odd/even harmonics falling off as 1/k (rectifier buzz)."""
    t = np.arange(_n(seconds)) / SR
    x = sum(np.sin(2 * np.pi * mains_hz * k * t + 0.3 * k) / k for k in range(1, harmonics + 1))
    return _at_dbfs(np.asarray(x), dbfs)


def clicks(seconds: float, peak_dbfs: float, rate_hz: float = 4.0, seed: int = 0) -> np.ndarray:
    """Sparse clicks: single-sample impulses with a 1 ms decaying ring, at random times."""
    rng = np.random.default_rng(seed)
    x = np.zeros(_n(seconds))
    ring = np.exp(-np.arange(16) / 3.0) * np.cos(np.pi * np.arange(16) / 2)
    for pos in rng.integers(0, x.size - ring.size, int(seconds * rate_hz)):
        x[pos:pos + ring.size] += ring * rng.choice([-1, 1])
    return (x * 10 ** (peak_dbfs / 20)).astype(np.float32)


def keyboard(seconds: float, peak_dbfs: float, keys_per_s: float = 8.0, seed: int = 0) -> np.ndarray:
    """Typing: bursts of band-passed noise (~40 ms, a press and a release click) at a typing rhythm."""
    rng = np.random.default_rng(seed)
    x = np.zeros(_n(seconds))
    t = 0.05
    while t < seconds - 0.1:
        for offset, gain in ((0.0, 1.0), (rng.uniform(0.04, 0.09), 0.5)):  # press, release
            length = _n(rng.uniform(0.01, 0.03))
            burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
            burst = np.convolve(burst, [1, 0, -1], mode="same")  # crude band-pass: no DC, less top end
            pos = _n(t + offset)
            x[pos:pos + length] += gain * burst[: x.size - pos]
        t += rng.exponential(1 / keys_per_s) + 0.03
    peak = float(np.abs(x).max()) or 1.0
    return (x / peak * 10 ** (peak_dbfs / 20)).astype(np.float32)


def the_issue_sequence() -> np.ndarray:
    """The reported failure: 6 s digital silence, 6 s room noise (σ = 30/32768), 4 s loud white noise (σ = 3000/32768)."""
    rng = np.random.default_rng(0)
    return np.concatenate([
        silence(6.0),
        (rng.normal(0, 30 / 32768, _n(6.0))).astype(np.float32),
        (rng.normal(0, 3000 / 32768, _n(4.0))).astype(np.float32),
    ])


LEVELS_DBFS = (-50.0, -40.0, -30.0, -20.0, -10.0)

NOISE_TABLE: dict[str, Callable[[float], np.ndarray]] = {
    "white": lambda db: white_noise(4.0, db),
    "pink": lambda db: pink_noise(4.0, db),
    "brown": lambda db: brown_noise(4.0, db),
    "hum50": lambda db: hum(4.0, db, 50.0),
    "hum60": lambda db: hum(4.0, db, 60.0),
    "clicks": lambda db: clicks(4.0, db + 10.0),  # peak level: an impulse's RMS is far below its peak
    "keyboard": lambda db: keyboard(4.0, db + 10.0),
}
"""Signal name → generator of 4 s of it at a level (dBFS; clicks and typing use level + 10 dB as peak)."""


def noise_cases(levels: tuple[float, ...] = LEVELS_DBFS) -> list[tuple[str, float]]:
    """Every (signal, level) pair of the table, plus digital silence once."""
    return [("silence", 0.0)] + [(name, db) for name in NOISE_TABLE for db in levels]


def make_signal(name: str, dbfs: float) -> np.ndarray:
    return silence(4.0) if name == "silence" else NOISE_TABLE[name](dbfs)
