"""Voice-activity detection and endpointing, as a pure state machine over samples.

``Endpointer.feed(samples)`` takes 16 kHz float32 audio and returns events:
an utterance opens after ``speech_start_ms`` of voiced frames within
``speech_window_ms`` (with ``preroll_ms`` of earlier audio so first words are
not clipped), receives every frame while open, and closes after
``endpoint_silence_ms`` of unvoiced frames, on :meth:`Endpointer.force_end`,
at the end of the stream, or at a quiet point once it nears
``max_utterance_s``. Audio outside utterances is never passed on, so silence
never reaches the model.

Two verdicts per frame. *Voiced*: louder than :data:`SILENCE_FLOOR_DBFS` and
webrtcvad calls it speech; it locates speech finely (where utterances start and
end, as before). *Confirmed*: Silero VAD (:mod:`.neural_vad`, where the choice is
explained) called a chunk speech (probability ≥ ``speech_threshold``) within the
last ``speech_hold_ms``. An utterance opens only on a confirmed frame, and while
open only frames that are voiced *and* confirmed hold it open. webrtcvad alone
calls loud broadband noise, hum and typing speech: utterances opened on them and
Whisper filled them with hallucinations ("You"); the confirmation stops
non-speech here, before any backend. Silero lags onsets by 0.1-0.3 s (more on
hoarse speech), so an utterance confirmed late still starts at webrtcvad's
onset, up to :data:`CONFIRM_LOOKBACK_MS` before the recent window; the hold
bridges Silero's dips inside speech, so noise right after speech adds at most
``speech_hold_ms`` before the endpoint runs. The classifier is injectable:
tests pass scripted per-frame callables (every voiced frame confirmed), the
default is :class:`SpeechClassifier`, which sees every sample in order.

With ``turn_detection = "smart"`` an open utterance does not end at ``endpoint_silence_ms``:
its silence reaching ``turn_pause_ms`` is reported once (:class:`UtterancePaused`), speech after
it is reported (:class:`UtteranceResumed`), and :meth:`Endpointer.end_turn` ends it when the
turn model (or the wall clock) decides; ``turn_max_silence_ms`` of stream silence ends it in any
case (reason ``max_silence``). :mod:`streaming.turns` has the policy. ``manual`` ends nothing at pauses.

Per-frame work is vectorized over a feed (frame energies, the int16 conversion,
one Silero call for all the feed's chunks) and the audio events of one feed are
merged per utterance. One 1 MiB pcm_s16le frame (32.8 s of 16 kHz speech) costs
~26 ms with webrtcvad alone (~80 ms before vectorizing) and ~120 ms with
Silero on the 2-core dev machine (``scripts/vad_cost.py``; see :mod:`.neural_vad`).
"""

from __future__ import annotations

import dataclasses

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol, runtime_checkable

import numpy as np

from .config import VadOptions

SAMPLE_RATE_HZ = 16_000
SILENCE_FLOOR_DBFS = -55.0
"""Frames quieter than this are unvoiced whatever webrtcvad says (it flags faint hiss)."""
CONFIRM_LOOKBACK_MS = 1000
"""How far before the recent window a late-confirmed utterance may start: Silero lags webrtcvad at
onsets (0.1-0.3 s typically, over 1 s for hoarse speech), and the words before its verdict count."""


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
    """``endpoint``, ``end_of_turn``, ``max_silence``, ``max_length``, ``forced`` or ``stream_end``."""


@dataclass(frozen=True)
class UtterancePaused:
    """Smart turn detection: the open utterance's silence reached ``turn_pause_ms`` (once per pause)."""

    utterance_id: int
    at_sample: int
    """Stream position when the pause was reached (the utterance's audio so far ends here)."""
    speech_end_sample: int
    """End of the last voiced frame before the pause."""


@dataclass(frozen=True)
class UtteranceResumed:
    """Smart turn detection: speech came back after a reported pause; the utterance goes on."""

    utterance_id: int
    at_sample: int
    """Start of the voiced frame that resumed it."""


VadEvent = UtteranceStarted | UtteranceAudio | UtteranceEnded | UtterancePaused | UtteranceResumed


FrameClassifier = Callable[[np.ndarray], bool]
"""Per-frame verdict (scripted classifiers in tests); only asked about frames above the silence floor."""


@runtime_checkable
class StreamClassifier(Protocol):
    """Classifies the consecutive frames of one stream; may keep state across calls."""

    def classify_frames(self, frames: np.ndarray,
                        last_frame_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(voiced, confirmed)`` booleans for ``frames`` [n, frame_samples], the next frames in order.

        *voiced* locates speech frame by frame (where utterances start and end);
        *confirmed* says a speech model has recently agreed that there is speech
        at all: an utterance opens only on a confirmed frame, and stays open only
        on frames that are both. ``last_frame_samples``: the last frame holds only
        this many real samples (zero-padded: the stream's tail at ``flush``/``force_end``).
        """
        ...


def webrtc_classifier(aggressiveness: int) -> FrameClassifier:
    """A frame classifier backed by webrtcvad (16-bit PCM, 16 kHz, 10/20/30 ms frames)."""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)

    def is_speech(frame: np.ndarray) -> bool:
        return vad.is_speech(to_pcm16(frame).tobytes(), SAMPLE_RATE_HZ)

    return is_speech


class SpeechClassifier:
    """webrtcvad locates (voiced frames), Silero VAD confirms.

    A frame is confirmed when a Silero chunk with probability ≥ ``speech_threshold``
    ended within the last ``speech_hold_ms``; ``speech_threshold`` 0 = webrtcvad alone
    (every frame confirmed, the model never loaded).
    """

    def __init__(self, aggressiveness: int, speech_threshold: float, speech_hold_ms: int) -> None:
        import webrtcvad

        self._webrtc = webrtcvad.Vad(aggressiveness)
        self.speech_threshold = speech_threshold
        self.hold_samples = speech_hold_ms * SAMPLE_RATE_HZ // 1000
        self._last_speech_end = -(1 << 62)
        """End sample of the latest chunk Silero called speech."""
        self._silero = None
        self.can_change_threshold = speech_threshold > 0
        """Whether ``speech_threshold`` may change mid-stream (Silero is loaded: only its cut-off moves)."""
        if speech_threshold > 0:
            from .neural_vad import SileroStream

            self._silero = SileroStream()

    def classify_frames(self, frames: np.ndarray,
                        last_frame_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        n, size = frames.shape
        pcm = to_pcm16(frames)
        voiced = np.fromiter((self._webrtc.is_speech(row.tobytes(), SAMPLE_RATE_HZ) for row in pcm), bool, n)
        if self._silero is None:
            return voiced, np.ones(n, bool)
        from .neural_vad import latest_speech_end

        real = frames.reshape(-1)
        if last_frame_samples is not None:
            real = real[: real.size - size + last_frame_samples]
        start, first_chunk = self._silero.samples, self._silero.chunks
        probs = self._silero.feed(real)
        frame_ends = np.minimum(start + size * np.arange(1, n + 1), start + real.size)
        speech_ends = latest_speech_end(frame_ends, first_chunk, probs >= self.speech_threshold,
                                        self._last_speech_end)
        self._last_speech_end = int(speech_ends[-1])  # every chunk scored so far ends by the last frame's end
        return voiced, frame_ends - speech_ends < self.hold_samples


def default_classifier(options: VadOptions) -> StreamClassifier:
    return SpeechClassifier(options.aggressiveness, options.speech_threshold, options.speech_hold_ms)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


def frame_dbfs(frame: np.ndarray) -> float:
    return float(frames_dbfs(frame[None, :])[0])


def frames_dbfs(frames: np.ndarray) -> np.ndarray:
    """RMS level (dBFS) of each row of ``frames`` [n, samples] (-200 for an empty or silent row)."""
    if frames.shape[1] == 0:
        return np.full(frames.shape[0], -200.0)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


class Endpointer:
    """Splits a sample stream into utterances (see the module docstring)."""

    def __init__(self, options: VadOptions, classify: FrameClassifier | StreamClassifier | None = None) -> None:
        if options.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30")
        self.options = options
        self.classify = classify if classify is not None else default_classifier(options)
        self.frame_samples = SAMPLE_RATE_HZ * options.frame_ms // 1000
        self._buffer = np.zeros(0, dtype=np.float32)
        self._position = 0
        """Samples consumed into whole frames so far (stream position)."""
        window = max(1, options.speech_window_ms // options.frame_ms)
        self._recent: deque[tuple[int, np.ndarray, bool]] = deque(maxlen=window)
        preroll = max(0, (options.preroll_ms + CONFIRM_LOOKBACK_MS) // options.frame_ms)
        self._preroll: deque[tuple[int, np.ndarray]] = deque(maxlen=preroll)
        """Frames that left the recent window: the pre-roll, plus the look-back for a late confirmation."""
        self._pending_start: int | None = None
        """First voiced frame of a would-be utterance that waits for confirmation."""
        self._next_id = 0
        self._open_id: int | None = None
        self._open_start = 0
        self._silence_frames = 0
        self._last_voiced_end = 0
        self._paused = False
        """Smart mode: an :class:`UtterancePaused` was reported for the current pause."""
        self._energies: list[float] = []
        self._since_voiced: deque[tuple[int, np.ndarray, bool, bool]] = deque(maxlen=window + preroll)
        """The open utterance's frames after its last voiced one (start, audio, voiced, confirmed): when the
        turn ends in that silence they become the idle state's, as if it had ended at its last voiced frame."""

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
        n = self.frame_samples
        whole = self._buffer.size // n * n
        frames = self._buffer[:whole].reshape(-1, n)
        self._buffer = self._buffer[whole:]
        return self._frames(frames)

    def force_end(self) -> list[VadEvent]:
        """End the open utterance now (client ``finalize``); pending partial frame included."""
        return self._drain_partial_frame() + self._close("forced", include_tail=True)

    def end_turn(self, reason: str = "end_of_turn") -> list[VadEvent]:
        """Smart mode: end the open utterance at its last voiced frame (the turn model or the wall
        clock decided during a pause). The frames after it were silence: they stay out of this
        utterance, and the next one's pre-roll may reach back into them, so where it starts does not
        depend on when the decision came."""
        return self._close(reason, replay_silence=True)

    @property
    def paused(self) -> bool:
        """Smart mode: the open utterance is in a reported pause."""
        return self._open_id is not None and self._paused

    def fixed_changes(self, options: VadOptions) -> list[str]:
        """Fields of ``options`` that differ from the current ones and cannot change mid-stream."""
        live = {"endpoint_silence_ms", "endpointing", "max_utterance_s", "preroll_ms", "turn_detection",
                "turn_eagerness", "turn_pause_ms", "turn_max_silence_ms", "eager_end_of_turn"}
        if getattr(self.classify, "can_change_threshold", False):
            live.add("speech_threshold")
        return [f.name for f in dataclasses.fields(options)
                if f.name not in live and getattr(options, f.name) != getattr(self.options, f.name)]

    def reconfigure(self, options: VadOptions) -> None:
        """Apply new options from the next frame on (check :meth:`fixed_changes` first)."""
        if options.preroll_ms != self.options.preroll_ms:
            frames = max(0, (options.preroll_ms + CONFIRM_LOOKBACK_MS) // options.frame_ms)
            self._preroll = deque(self._preroll, maxlen=frames)
            self._since_voiced = deque(self._since_voiced, maxlen=self._recent.maxlen + frames)
        if options.speech_threshold != self.options.speech_threshold:
            self.classify.speech_threshold = options.speech_threshold
        self.options = options

    def clear(self) -> None:
        """Forget the open utterance (client ``clear``); the stream position keeps counting, so later
        times stay stream times. Less than a frame of unclassified audio stays for the next frame."""
        self._open_id = None
        self._pending_start = None
        self._silence_frames = 0
        self._paused = False
        self._energies = []
        self._recent.clear()
        self._preroll.clear()
        self._since_voiced.clear()

    def flush(self) -> list[VadEvent]:
        """End of stream: classify the incomplete last frame, close any open utterance."""
        return self._drain_partial_frame() + self._close("stream_end", include_tail=True)

    def _drain_partial_frame(self) -> list[VadEvent]:
        if not self._buffer.size:
            return []
        padded = np.zeros((1, self.frame_samples), dtype=np.float32)
        size = self._buffer.size
        padded[0, :size] = self._buffer
        self._buffer = np.zeros(0, dtype=np.float32)
        return self._frames(padded, last_frame_samples=size)

    def _frames(self, frames: np.ndarray, last_frame_samples: int | None = None) -> list[VadEvent]:
        """Classify consecutive frames in one go, then run the state machine frame by frame."""
        if not len(frames):
            return []
        sizes = np.full(len(frames), self.frame_samples)
        if last_frame_samples is not None:
            sizes[-1] = last_frame_samples
        energies = frames_dbfs(frames)
        if last_frame_samples is not None:
            energies[-1] = frame_dbfs(frames[-1, :last_frame_samples])
        loud = energies > SILENCE_FLOOR_DBFS
        if isinstance(self.classify, StreamClassifier):
            voiced, confirmed = self.classify.classify_frames(frames, last_frame_samples)
            voiced = loud & voiced
        else:
            voiced = np.array([bool(is_loud) and bool(self.classify(f)) for f, is_loud in zip(frames, loud)])
            confirmed = voiced
        events: list[VadEvent] = []
        for frame, size, energy, is_voiced, is_confirmed in zip(
                frames, sizes.tolist(), energies.tolist(), voiced.tolist(), confirmed.tolist()):
            self._frame(frame[:size], energy, is_voiced, is_confirmed, events)
        return _merge_audio(events)

    def _frame(self, audio: np.ndarray, energy: float, voiced: bool, confirmed: bool, events: list[VadEvent]) -> None:
        start = self._position
        self._position += audio.size
        audio = audio.copy()
        if self._open_id is None:
            self._idle_frame(start, audio, voiced, confirmed, events)
            return
        events.append(UtteranceAudio(self._open_id, audio))
        self._energies.append(energy)
        speech = voiced and confirmed
        if speech:
            if self._paused:
                self._paused = False
                events.append(UtteranceResumed(self._open_id, start))
            self._silence_frames = 0
            self._last_voiced_end = self._position
            self._since_voiced.clear()
        else:
            self._silence_frames += 1
            self._since_voiced.append((start, audio, voiced, confirmed))
        silence_ms = self._silence_frames * self.options.frame_ms
        smart = self.options.turn_detection == "smart"
        if self._endpointing and silence_ms >= (self.options.turn_max_silence_ms if smart
                                               else self.options.endpoint_silence_ms):
            events.extend(self._close("max_silence", replay_silence=True) if smart else self._close("endpoint"))
        elif smart and not self._paused and silence_ms >= self.options.turn_pause_ms:
            self._paused = True
            events.append(UtterancePaused(self._open_id, self._position, self._last_voiced_end))
        elif self._should_cut(energy, speech):
            cut_at = self._position
            events.extend(self._close("max_length", end_sample=cut_at))

    def _idle_frame(self, start: int, audio: np.ndarray, voiced: bool, confirmed: bool,
                    events: list[VadEvent]) -> None:
        """A frame outside any utterance (``start`` its first sample): may open one."""
        if len(self._recent) == self._recent.maxlen:
            # The oldest frame leaves the recent window into the pre-roll ring.
            s, a, _ = self._recent[0]
            self._preroll.append((s, a))
        self._recent.append((start, audio, voiced))
        if self._pending_start is not None and self._pending_start < self._lookback_start(start + audio.size):
            self._pending_start = None  # too old to be the onset of what may be confirmed now
        voiced_ms = sum(v for _, _, v in self._recent) * self.options.frame_ms
        if voiced and voiced_ms >= self.options.speech_start_ms:
            if confirmed:
                self._open(events)
            elif self._pending_start is None:
                # Voiced enough but not (yet) confirmed: remember where it began, in case
                # the speech model agrees a little later (it lags onsets by up to ~0.3 s).
                self._pending_start = next(s for s, _, v in self._recent if v)

    @property
    def _endpointing(self) -> bool:
        """Whether pauses end utterances (not manual mode)."""
        return self.options.endpointing and self.options.turn_detection != "manual"

    def _open(self, events: list[VadEvent]) -> None:
        # Start at the first voiced frame of the recent window, minus the pre-roll.
        frames = [(s, a) for s, a in self._preroll] + [(s, a) for s, a, _ in self._recent]
        first_voiced = next(s for s, _, v in self._recent if v)
        if self._pending_start is not None:
            first_voiced = min(first_voiced, self._pending_start)
            self._pending_start = None
        preroll_start = first_voiced - self.options.preroll_ms * SAMPLE_RATE_HZ // 1000
        kept = [(s, a) for s, a in frames if s >= preroll_start]
        start = kept[0][0] if kept else first_voiced
        audio = np.concatenate([a for _, a in kept]) if kept else np.zeros(0, dtype=np.float32)
        self._open_id = self._next_id
        self._next_id += 1
        self._open_start = start
        self._silence_frames = 0
        self._paused = False
        self._last_voiced_end = self._position
        self._energies = [frame_dbfs(a) for _, a in kept]
        self._recent.clear()
        self._preroll.clear()
        self._since_voiced.clear()
        events.append(UtteranceStarted(self._open_id, start, audio))

    def _lookback_start(self, position: int) -> int:
        """Earliest start an utterance opened at ``position`` may have (before the pre-roll)."""
        return position - (self.options.speech_window_ms + CONFIRM_LOOKBACK_MS) * SAMPLE_RATE_HZ // 1000

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

    def _close(self, reason: str, end_sample: int | None = None, include_tail: bool = False,
               replay_silence: bool = False) -> list[VadEvent]:
        """End the open utterance. ``replay_silence``: it ends at its last voiced frame and the frames
        after it go through the idle state machine (none of them can open an utterance: none was
        voiced and confirmed), so the idle state is the same whenever the end is decided."""
        if self._open_id is None:
            return []
        if end_sample is None:
            # In a reported pause the utterance's audio ends at the pause: the tail after it is silence.
            end_sample = self._position if include_tail and not self._paused else self._last_voiced_end
        event = UtteranceEnded(self._open_id, max(end_sample, self._open_start), reason)
        self._open_id = None
        self._paused = False
        self._silence_frames = 0
        self._energies = []
        self._recent.clear()
        tail = list(self._since_voiced) if replay_silence else []
        self._since_voiced.clear()
        opened: list[VadEvent] = []
        for start, audio, voiced, confirmed in tail:
            if start >= end_sample:
                self._idle_frame(start, audio, voiced, confirmed, opened)
        assert not opened, "a frame of the silence after an utterance opened another"
        return [event]


def _merge_audio(events: list[VadEvent]) -> list[VadEvent]:
    """Join consecutive audio events of the same utterance (one per feed instead of one per frame)."""
    merged: list[VadEvent] = []
    for uid, group in groupby(events, key=lambda e: e.utterance_id if isinstance(e, UtteranceAudio) else None):
        group = list(group)
        if uid is None or len(group) == 1:
            merged.extend(group)
        else:
            merged.append(UtteranceAudio(uid, np.concatenate([e.audio for e in group])))
    return merged
