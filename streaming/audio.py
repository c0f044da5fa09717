"""Audio framing: raw client PCM bytes → float32 samples at 16 kHz.

Pure logic (no I/O). Frames may end in the middle of a sample; the stray bytes
are kept and completed by the next frame, so no audio is ever dropped.
"""

from __future__ import annotations

import numpy as np
import soxr

from .protocol import ProtocolError

TARGET_RATE_HZ = 16_000
BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}
"""Bytes of one sample in each encoding of ``start``."""


def _mulaw_table() -> np.ndarray:
    """ITU-T G.711 µ-law: byte → linear value (16-bit scale), the standard expansion."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + 0x84) << exponent
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """ITU-T G.711 A-law: byte → linear value (16-bit scale), the standard expansion."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.float32)


G711_TABLES = {"mulaw": _mulaw_table() / 32768.0, "alaw": _alaw_table() / 32768.0}
"""Each G.711 byte's sample value in [-1, 1]."""


class PcmDecoder:
    """Decodes a byte stream of little-endian PCM into float32 samples in [-1, 1]; interleaved
    ``channels`` > 1 are mixed down to mono (their mean), as Deepgram does without ``multichannel``."""

    def __init__(self, encoding: str, channels: int = 1) -> None:
        if encoding not in BYTES_PER_SAMPLE:
            raise ValueError(f"unknown encoding {encoding!r}")
        self.encoding = encoding
        self.channels = channels
        self.sample_bytes = BYTES_PER_SAMPLE[encoding]
        self.frame_bytes = self.sample_bytes * channels
        """One sample of every channel."""
        self._pending = b""

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete sample (or frame of samples) waiting for the next call."""
        return len(self._pending)

    def decode(self, data: bytes) -> np.ndarray:
        """Decode whole samples of every channel; keep a trailing partial frame for next time.

        Raises ``ProtocolError("invalid_audio")`` for NaN or infinite floats.
        """
        buf = self._pending + data if self._pending else data
        usable = len(buf) - len(buf) % self.frame_bytes
        self._pending = buf[usable:]
        whole = buf[:usable] if usable < len(buf) else buf
        if self.encoding == "pcm_s16le":
            samples = pcm16_to_float(whole)
        elif self.encoding in G711_TABLES:
            samples = G711_TABLES[self.encoding][np.frombuffer(whole, dtype=np.uint8)]
        else:
            samples = np.frombuffer(whole, dtype="<f4").astype(np.float32)
            if samples.size and not np.isfinite(samples).all():
                raise ProtocolError("invalid_audio", "pcm_f32le audio contains NaN or infinite samples")
            samples = np.clip(samples, -1.0, 1.0)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return samples


class ChannelSplitter:
    """Interleaved PCM bytes of ``channels`` channels → one mono byte stream per channel, whole
    frames only (a frame split across two calls waits for the rest): ``multichannel`` streams."""

    def __init__(self, encoding: str, channels: int) -> None:
        self.sample_bytes = BYTES_PER_SAMPLE[encoding]
        self.channels = channels
        self.frame_bytes = self.sample_bytes * channels
        self._pending = b""

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def split(self, data: bytes) -> list[bytes]:
        """Each channel's bytes of the whole frames received so far (in the same encoding)."""
        buf = self._pending + data if self._pending else data
        usable = len(buf) - len(buf) % self.frame_bytes
        self._pending = buf[usable:]
        frames = np.frombuffer(buf, dtype=np.uint8, count=usable).reshape(-1, self.channels, self.sample_bytes)
        return [frames[:, c, :].tobytes() for c in range(self.channels)]

    def drop_pending(self) -> int:
        """Forget the bytes of an incomplete frame (the stream ended inside it); how many there were."""
        dropped, self._pending = len(self._pending), b""
        return dropped


class Resampler:
    """Streaming resampler to 16 kHz (identity when the input already is 16 kHz)."""

    def __init__(self, input_rate_hz: int, output_rate_hz: int = TARGET_RATE_HZ) -> None:
        self.input_rate_hz = input_rate_hz
        self.output_rate_hz = output_rate_hz
        self._stream = (None if input_rate_hz == output_rate_hz
                        else soxr.ResampleStream(input_rate_hz, output_rate_hz, 1, dtype="float32", quality="HQ"))

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk; ``last=True`` flushes the filter's tail."""
        if self._stream is None:
            return samples.astype(np.float32, copy=False)
        return self._stream.resample_chunk(samples.astype(np.float32, copy=False), last=last)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM → float32 in [-1, 1) (divide by 32768: the one conversion everyone uses)."""
    return np.frombuffer(data, dtype="<i2", count=len(data) // 2).astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Encode float32 samples in [-1, 1] as little-endian 16-bit PCM, rounding to the nearest step
    (clients, tests and the browser's ``floatToPcm16`` all round the same way)."""
    scaled = np.rint(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0)
    return scaled.astype("<i2").tobytes()
