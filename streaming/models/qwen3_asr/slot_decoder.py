"""The Qwen3-ASR decoder on static KV slots: :class:`RowDecoder`'s interface, the slot cache underneath.

Each utterance takes a slot of the pool at its first decode and keeps it until
its final (or until the state is dropped: a GC finalizer gives it back, so an
abandoned utterance never leaks a slot). The slot holds the same committed KV
the dynamic path keeps in ``state.kv`` (prompt head + finished audio windows),
at the same positions; a step prefills the rest of the tail after it and decodes
on the shared greedy loop with the bucketed (CUDA-graph) step. The tail, the
commit rule and the stop rules are :class:`RowDecoder`'s own, so both paths
give the same tokens (``tests/test_static_decode.py``).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

from streaming.models.decoding import StopCriteria
from streaming.models.qwen3_asr.decoder import DecodeRow, RowDecoder
from streaming.models.qwen3_asr.state import Qwen3ASRState
from streaming.models.qwen3_asr.static_decode import (
    KVSlotPool,
    SlotDecoding,
    SlotRow,
    slot_len_for,
    streams_that_fit,
)

log = logging.getLogger(__name__)


class SlotRowDecoder(RowDecoder):
    """A :class:`RowDecoder` whose rows keep their decoder KV in a :class:`KVSlotPool` slot."""

    def __init__(self, language_model: Any, lm_head: Any, text_config: Any, device: torch.device,
                 dtype: torch.dtype, max_streams: int, max_utterance_s: float, max_tokens_per_audio_s: float,
                 cuda_graphs: bool = True) -> None:
        super().__init__(language_model, lm_head, text_config, device, dtype)
        max_len = slot_len_for(max_utterance_s, max_tokens_per_audio_s)
        if device.type == "cuda":  # the default max_streams must not exhaust a smaller GPU
            need = KVSlotPool.slot_bytes(self.n_layers, *self.kv_shape, max_len, dtype)
            fit = streams_that_fit(max_streams, need, torch.cuda.mem_get_info(device)[0])
            if fit < max_streams:
                log.warning("KV slots: %d of max_streams=%d fit in 60%% of free GPU memory (%.0f MiB each)",
                            fit, max_streams, need / 2**20)
            max_streams = fit
        self.slots = SlotDecoding(language_model, lm_head, max_streams, max_len, cuda_graphs=cuda_graphs)
        log.info("KV slots: %d x %d positions (%.1f GiB)", max_streams, max_len,
                 max_streams * self.pool.bytes_per_slot() / 2**30)

    @property
    def pool(self) -> Any:
        return self.slots.pool

    def _slot_of(self, s: Qwen3ASRState) -> int:
        """The utterance's slot, taken now if it has none (:class:`KVPoolFullError` when all are live)."""
        if s.slot is None:
            s.slot = self.pool.alloc()
            s.slot_len = 0
            s.release_slot = weakref.finalize(s, self.pool.release_later, s.slot)
        return s.slot

    @torch.inference_mode()
    def decode(self, rows: list[DecodeRow], stop: StopCriteria) -> list[list[int]]:
        """Prefill each tail into its slot after the committed KV, then the shared greedy loop."""
        slot_rows = [SlotRow(self._slot_of(r.state), r.state.slot_len, r.tail_embeds, r.max_new) for r in rows]
        decoded = self.slots.decode(slot_rows, stop, [r.forced for r in rows])
        for r in rows:  # what joins the cache: the uncached prompt head and audio of finished windows
            r.state.slot_len += r.commit
            r.state.committed_windows = len(r.state.windows)
        return [d.tokens for d in decoded]

    def prefill(self, rows: list[DecodeRow]) -> tuple[torch.Tensor, Any, Any]:
        raise NotImplementedError("the slot decoder prefills inside decode(); prefill() is the dynamic path's")

    @staticmethod
    def release(s: Qwen3ASRState) -> None:
        """The utterance is over: its slot serves the next one (freed at the pool's next alloc)."""
        if s.release_slot is not None:
            s.release_slot()
            s.release_slot, s.slot, s.slot_len = None, None, 0

    def warmup(self) -> None:
        """Capture every CUDA graph now (largest first), so no request pays for a capture."""
        self.slots.warmup()
