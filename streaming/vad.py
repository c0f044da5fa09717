"""Voice-activity detection and endpointing, as a pure state machine over samples.

``Endpointer.feed(samples)`` takes 16 kHz float32 audio and returns events:
an utterance opens after ``speech_start_ms`` of voiced frames within
``speech_window_ms`` (with ``preroll_ms`` of earlier audio so first words are
not clipped), receives every frame while open, and closes after
``endpoint_silence_ms`` of unvoiced frames, on :meth:`Endpointer.force_end`,
at the end of the stream, or at a quiet point once it nears
``max_utterance_s``. Audio outside utterances is never passed on, so silence
never reaches the model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import VadOptions

SAMPLE_RATE_HZ = 16_000
SILENCE_FLOOR_DBFS = -55.0
"""Frames quieter than this are unvoiced whatever webrtcvad says (it flags faint hiss)."""


@dataclass(frozen=True)
class UtteranceStarted:
    utterance_id: int
    start_sample: int
    audio: np.ndarray
    """Pre-roll plus the voiced frames that opened the utterance."""


@dataclass(frozen=True)
class UtteranceAudio:
    utterance_id: int
    audio: np.ndarray


@dataclass(frozen=True)
class UtteranceEnded:
    utterance_id: int
    end_sample: int
    """End of the last voiced frame (or the cut point)."""
    reason: str
    """``endpoint``, ``max_length``, ``forced`` or ``stream_end``."""


VadEvent = UtteranceStarted | UtteranceAudio | UtteranceEnded


def webrtc_classifier(aggressiveness: int) -> Callable[[np.ndarray], bool]:
    """A frame classifier backed by webrtcvad (16-bit PCM, 16 kHz, 10/20/30 ms frames)."""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)

    def is_speech(frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return vad.is_speech(pcm, SAMPLE_RATE_HZ)

    return is_speech


def frame_dbfs(frame: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if frame.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))


class Endpointer:
    """Splits a sample stream into utterances (see the module docstring)."""

    def __init__(self, options: VadOptions, classify: Callable[[np.ndarray], bool] | None = None) -> None:
        if options.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30")
        self.options = options
        self.classify = classify or webrtc_classifier(options.aggressiveness)
        self.frame_samples = SAMPLE_RATE_HZ * options.frame_ms // 1000
        self._buffer = np.zeros(0, dtype=np.float32)
        self._position = 0
        """Samples consumed into whole frames so far (stream position)."""
        window = max(1, options.speech_window_ms // options.frame_ms)
        self._recent: deque[tuple[int, np.ndarray, bool]] = deque(maxlen=window)
        preroll = max(0, options.preroll_ms // options.frame_ms)
        self._preroll: deque[tuple[int, np.ndarray]] = deque(maxlen=preroll)
        self._next_id = 0
        self._open_id: int | None = None
        self._open_start = 0
        self._silence_frames = 0
        self._last_voiced_end = 0
        self._energies: list[float] = []

    @property
    def in_utterance(self) -> bool:
        return self._open_id is not None

    @property
    def position_samples(self) -> int:
        """Samples fed so far, including an incomplete trailing frame."""
        return self._position + self._buffer.size

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Consume samples; return the events their whole frames caused."""
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32, copy=False)])
        events: list[VadEvent] = []
        n = self.frame_samples
        whole = self._buffer.size // n * n
        for offset in range(0, whole, n):
            self._frame(self._buffer[offset:offset + n], events)
        self._buffer = self._buffer[whole:]
        return events

    def force_end(self) -> list[VadEvent]:
        """End the open utterance now (client ``finalize``); pending partial frame included."""
        return self._drain_partial_frame() + self._close("forced", include_tail=True)

    def flush(self) -> list[VadEvent]:
        """End of stream: classify the incomplete last frame, close any open utterance."""
        return self._drain_partial_frame() + self._close("stream_end", include_tail=True)

    def _drain_partial_frame(self) -> list[VadEvent]:
        events: list[VadEvent] = []
        if self._buffer.size:
            padded = np.zeros(self.frame_samples, dtype=np.float32)
            padded[: self._buffer.size] = self._buffer
            size = self._buffer.size
            self._buffer = np.zeros(0, dtype=np.float32)
            self._frame(padded, events, real_samples=size)
        return events

    def _frame(self, frame: np.ndarray, events: list[VadEvent], real_samples: int | None = None) -> None:
        size = self.frame_samples if real_samples is None else real_samples
        start = self._position
        self._position += size
        energy = frame_dbfs(frame[:size])
        voiced = energy > SILENCE_FLOOR_DBFS and self.classify(frame)
        audio = frame[:size].copy()
        if self._open_id is None:
            if len(self._recent) == self._recent.maxlen:
                # The oldest frame leaves the recent window into the pre-roll ring.
                s, a, _ = self._recent[0]
                self._preroll.append((s, a))
            self._recent.append((start, audio, voiced))
            voiced_ms = sum(v for _, _, v in self._recent) * self.options.frame_ms
            if voiced and voiced_ms >= self.options.speech_start_ms:
                self._open(events)
            return
        events.append(UtteranceAudio(self._open_id, audio))
        self._energies.append(energy)
        if voiced:
            self._silence_frames = 0
            self._last_voiced_end = self._position
        else:
            self._silence_frames += 1
        if self._silence_frames * self.options.frame_ms >= self.options.endpoint_silence_ms:
            events.extend(self._close("endpoint"))
        elif self._should_cut(energy, voiced):
            cut_at = self._position
            events.extend(self._close("max_length", end_sample=cut_at))

    def _open(self, events: list[VadEvent]) -> None:
        # Start at the first voiced frame of the recent window, minus the pre-roll.
        frames = [(s, a) for s, a in self._preroll] + [(s, a) for s, a, _ in self._recent]
        first_voiced = next(s for s, _, v in self._recent if v)
        preroll_start = first_voiced - self.options.preroll_ms * SAMPLE_RATE_HZ // 1000
        kept = [(s, a) for s, a in frames if s >= preroll_start]
        start = kept[0][0] if kept else first_voiced
        audio = np.concatenate([a for _, a in kept]) if kept else np.zeros(0, dtype=np.float32)
        self._open_id = self._next_id
        self._next_id += 1
        self._open_start = start
        self._silence_frames = 0
        self._last_voiced_end = self._position
        self._energies = [frame_dbfs(a) for _, a in kept]
        self._recent.clear()
        self._preroll.clear()
        events.append(UtteranceStarted(self._open_id, start, audio))

    def _should_cut(self, energy: float, voiced: bool) -> bool:
        """Near ``max_utterance_s``, cut at the first pause or unusually quiet frame; at the limit, cut."""
        length_s = (self._position - self._open_start) / SAMPLE_RATE_HZ
        limit = self.options.max_utterance_s
        if length_s >= limit:
            return True
        zone_start = max(limit * 0.7, limit - 5.0)
        if length_s < zone_start:
            return False
        if not voiced:
            return True
        # A frame 12 dB below the utterance's typical level is a breath or a word boundary.
        return energy <= float(np.median(self._energies)) - 12.0

    def _close(self, reason: str, end_sample: int | None = None, include_tail: bool = False) -> list[VadEvent]:
        if self._open_id is None:
            return []
        if end_sample is None:
            end_sample = self._position if include_tail else self._last_voiced_end
        event = UtteranceEnded(self._open_id, max(end_sample, self._open_start), reason)
        self._open_id = None
        self._silence_frames = 0
        self._energies = []
        self._recent.clear()
        return [event]
