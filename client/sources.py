"""Audio sources of the clients: a PortAudio microphone, or a file played at real-time pace.

Both give mono float32 blocks at their native rate (when the protocol allows it)
from a blocking :meth:`read`, called from one capture thread.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streaming.protocol import MAX_SAMPLE_RATE_HZ as MAX_RATE_HZ
from streaming.protocol import MIN_SAMPLE_RATE_HZ as MIN_RATE_HZ

from .common import ClientError

__all__ = ["AudioSource", "SoundDeviceSource", "FileSource"]


class AudioSource(Protocol):
    """Where audio comes from: mono float32 blocks at ``sample_rate_hz``.

    ``read`` blocks until the next block is captured and returns ``None`` at the
    end of the stream (or after :meth:`close`); it is called from one capture thread.
    """

    sample_rate_hz: int

    def start(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class SoundDeviceSource:
    """A PortAudio input device (mono), at the device's native rate when the protocol allows it, else 16 kHz."""

    def __init__(self, device: int | str | None = None, sample_rate_hz: int | None = None, block_s: float = 0.1) -> None:
        import sounddevice as sd

        self._sd = sd
        info = sd.query_devices(device, "input")
        self.device_name = str(info["name"])
        rate = sample_rate_hz or int(info["default_samplerate"])
        self.sample_rate_hz = rate if MIN_RATE_HZ <= rate <= MAX_RATE_HZ else 16_000
        self.device = device
        self.block_frames = max(1, round(self.sample_rate_hz * block_s))
        self.overflows = 0
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self._stream: Any = None

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put(indata[:, 0].copy())

    def start(self) -> None:
        self._stream = self._sd.InputStream(device=self.device, channels=1, samplerate=self.sample_rate_hz,
                                            blocksize=self.block_frames, dtype="float32", callback=self._callback)
        self._stream.start()

    def read(self) -> np.ndarray | None:
        return self._queue.get()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        self._queue.put(None)


class FileSource:
    """An audio file played at real-time pace (``speed`` times faster; 0 = as fast as possible),
    at its native rate (mixed to mono), through the same path as a microphone."""

    def __init__(self, path: str | Path, speed: float = 1.0, block_s: float = 0.1) -> None:
        import soundfile as sf

        self._file = sf.SoundFile(str(path))
        if not MIN_RATE_HZ <= self._file.samplerate <= MAX_RATE_HZ:
            raise ClientError(f"{path}: sample rate {self._file.samplerate} Hz is outside 8000-48000 Hz")
        self.sample_rate_hz = int(self._file.samplerate)
        self.speed = speed
        self.block_frames = max(1, round(self.sample_rate_hz * block_s))
        self._position = 0
        self._t0 = 0.0
        self._closed = threading.Event()

    def start(self) -> None:
        self._t0 = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._closed.is_set():
            return None
        data = self._file.read(self.block_frames, dtype="float32", always_2d=True)
        if len(data) == 0:
            return None
        self._position += len(data)
        if self.speed > 0:
            # A block is "captured" once its last sample has been played.
            due = self._t0 + self._position / self.sample_rate_hz / self.speed
            if self._closed.wait(max(0.0, due - time.monotonic())):
                return None
        return data.mean(axis=1).astype(np.float32)

    def close(self) -> None:
        self._closed.set()
