"""One Qwen3-ASR utterance's streaming state: audio, stable mel frames, finished windows, decoder head cache."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from streaming.models.base import Hypothesis, UtteranceOptions, UtteranceState
from streaming.models.qwen3_asr.features import FRAMES_PER_CHUNK, MIN_SAMPLES, LogMel
from streaming.stability import LocalAgreement


@dataclass
class Window:
    """A finished encoder window: its features and projected audio embeddings, fixed for good."""

    features: torch.Tensor  # (n_mels, frames)
    embeds: torch.Tensor  # (tokens, hidden)


class Qwen3ASRState(UtteranceState):
    """One utterance: audio, stable log-mel frames, finished encoder windows, decoder head cache."""

    def __init__(self, options: UtteranceOptions, window_s: int, head_ids: list[int],
                 suffix_ids: list[int], n_mels: int) -> None:
        super().__init__()
        self.options = options
        self.window_s = window_s
        self.head_ids = head_ids
        """``<|im_start|>system\\n{context}<|im_end|>\\n<|im_start|>user\\n<|audio_start|>``."""
        self.suffix_ids = suffix_ids
        """``<|audio_end|><|im_end|>\\n<|im_start|>assistant\\n`` (+ ``language X<asr_text>`` if forced)."""
        self.raw_frames = torch.zeros(n_mels, 0)
        """log10 mel of every stable frame so far (before the clamp)."""
        self.prefix_max: list[float] = []
        """``prefix_max[t]`` = max of ``raw_frames[:, :t + 1]``: the clamp reference of each window."""
        self.windows: list[Window] = []
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        """Decoder KV cache over ``[head_ids][audio tokens of windows[:committed]]``, per layer ``(1, kvh, H, d)``."""
        self.committed_windows = 0
        self.slot: int | None = None
        """KV slot of the static path (``kv_cache="static"``), taken at the first decode."""
        self.slot_len = 0
        """Committed positions in the slot: the static path's ``kv``."""
        self.release_slot: weakref.finalize | None = None
        """Gives the slot back; runs by itself if the state is dropped before its final."""
        self.agreement: LocalAgreement[int] = LocalAgreement(n=2)
        self.last_hypothesis: Hypothesis | None = None
        self._frames_at_last_step = -1
        self.rebuilds = 0

    # features -----------------------------------------------------------------
    @property
    def window_frames(self) -> int:
        return self.window_s * FRAMES_PER_CHUNK

    @property
    def cached_len(self) -> int:
        """Decoder positions held in the KV cache (the slot's committed length on the static path)."""
        if self.slot is not None:
            return self.slot_len
        return 0 if self.kv is None else self.kv[0][0].shape[-2]

    def window_features(self, w: int, end: int) -> torch.Tensor:
        """Clamped features of window ``w`` over frames up to ``end`` (frozen floor = max over ``[0, end)``)."""
        start = w * self.window_frames
        return LogMel.normalise(self.raw_frames[:, start:end], self.prefix_max[end - 1])

    def features(self) -> torch.Tensor:
        """The full feature matrix this utterance was decoded with (finished windows + open one)."""
        parts = [w.features for w in self.windows]
        n_done = len(self.windows) * self.window_frames
        if self.raw_frames.shape[1] > n_done:
            parts.append(self.window_features(len(self.windows), self.raw_frames.shape[1]))
        return torch.cat(parts, dim=1)


def extend_frames(state: Qwen3ASRState, logmel: LogMel, final: bool) -> None:
    """Compute the mel frames that became stable (all of them when ``final``)."""
    audio = state.audio
    if final and len(audio) < MIN_SAMPLES:
        # The offline extractor zero-pads short clips; rebuild everything from the padded audio.
        state.pad_audio(MIN_SAMPLES)
        audio = state.audio
        state.raw_frames = state.raw_frames[:, :0]
        state.prefix_max = []
        state.windows = []
        state.kv = None
        state.slot_len = 0
        state.committed_windows = 0
        state.rebuilds += 1
    have = state.raw_frames.shape[1]
    want = LogMel.total_frames(len(audio)) if final else LogMel.stable_frames(len(audio))
    if want <= have:
        return
    new = logmel.raw(audio, have, want, final)
    state.raw_frames = torch.cat([state.raw_frames, new], dim=1)
    running = state.prefix_max[-1] if state.prefix_max else -math.inf
    for v in new.max(dim=0).values.tolist():
        running = max(running, v)
        state.prefix_max.append(running)
