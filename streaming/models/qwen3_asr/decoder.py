"""The Qwen3-ASR decoder over ragged rows: a cached head per utterance, a recomputed tail, shared greedy loop.

Each row is ``[left pad][cached head] | [pad][tail]``: the cached heads
right-aligned in the batch cache, the tails right-aligned in the input, with
explicit positions so RoPE sees each utterance's own (see
:meth:`~streaming.models.decoding.RaggedBatch.prefill`). After the prefill the
committed part of each tail (uncached prompt head, audio of windows that
finished) joins the row's own cache; the rest is recomputed next step.

:meth:`RowDecoder.step` is the one decode-step boundary (:data:`~streaming.models.decoding.DecodeStep`):
another cache layout (static KV slots, CUDA graphs) replaces it and :meth:`RowDecoder.prefill`.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from streaming.models.decoding import (
    RaggedBatch,
    RepetitionGuard,
    Row,
    StopCriteria,
    TokenBudget,
    additive_mask,
    greedy_decode,
)
from streaming.models.qwen3_asr.state import Qwen3ASRState

LOOP_GUARD = RepetitionGuard(min_repeats=4, min_repeated_tokens=16, max_ngram=8, keep_one_copy=False)
"""Qwen3-ASR's decoder-loop rule: an n-gram (n <= 8) repeated back to back, at least 4 times and 16 tokens;
the row stops with the repeats kept. The guard sees the forced stable prefix too."""


def stop_criteria(eos_ids: Set[int], repetition_guard: bool) -> StopCriteria:
    """End of text, then the loop guard (if on), then the row's token budget."""
    rules = (LOOP_GUARD, TokenBudget()) if repetition_guard else (TokenBudget(),)
    return StopCriteria(frozenset(eos_ids), rules)


@dataclass
class DecodeRow:
    """One utterance's part of a decoder pass."""

    state: Qwen3ASRState
    tail_ids: list[int] | None
    tail_embeds: torch.Tensor
    """``(tail, hidden)``: what the row's cache does not hold (uncached head, audio, suffix, forced text)."""
    commit: int
    """Tail positions (uncached head + newly finished audio) that join the cache after this pass."""
    forced: list[int]
    max_new: int
    stats: dict[str, Any] = field(default_factory=dict)


def _keep_rows(cache: Any, rows: torch.Tensor) -> Any:
    """Finished rows leave the batch cache (measured: the live rows' tokens stay bit-identical)."""
    cache.reorder_cache(rows)
    return cache


def _left_pad(t: torch.Tensor | None, length: int, kv_shape: tuple[int, int], device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
    n_heads, head_dim = kv_shape
    if t is None:
        return torch.zeros(1, n_heads, length, head_dim, device=device, dtype=dtype)
    if t.shape[2] == length:
        return t
    return F.pad(t, (0, 0, length - t.shape[2], 0))


class RowDecoder:
    """The language model and head of a Qwen3-ASR model, decoding batches of :class:`DecodeRow`."""

    def __init__(self, language_model: Any, lm_head: Any, text_config: Any, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.language_model = language_model
        self.lm_head = lm_head
        self.embed = language_model.get_input_embeddings()
        self.n_layers = int(text_config.num_hidden_layers)
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        self.kv_shape = (int(text_config.num_key_value_heads), int(head_dim))
        """``(kv heads, head dim)`` of every layer's cache."""
        self.device = device
        self.dtype = dtype

    def tail(self, s: Qwen3ASRState, open_embeds: torch.Tensor | None, forced: list[int]
             ) -> tuple[torch.Tensor, int, dict[str, int]]:
        """Embeddings of what the cache does not hold, and how many of them join it afterwards."""
        parts: list[torch.Tensor] = []
        head_new = 0
        if s.cached_len == 0:  # nothing cached yet (dynamic kv or a slot): the prompt head goes first
            parts.append(self.embed_ids(s.head_ids))
            head_new = len(s.head_ids)
        fin = [w.embeds for w in s.windows[s.committed_windows:]]
        fin_tokens = sum(e.shape[0] for e in fin)
        parts.extend(e.to(self.dtype) for e in fin)
        open_tokens = 0
        if open_embeds is not None:
            parts.append(open_embeds.to(self.dtype))
            open_tokens = open_embeds.shape[0]
        parts.append(self.embed_ids(s.suffix_ids + forced))
        stats = {"decoder_head_positions": head_new, "decoder_audio_positions": fin_tokens + open_tokens,
                 "decoder_suffix_positions": len(s.suffix_ids), "decoder_text_positions": len(forced)}
        return torch.cat(parts), head_new + fin_tokens, stats

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.embed(torch.tensor(ids, dtype=torch.long, device=self.device))

    def _batch_cache(self, rows: list[DecodeRow], heads: list[int]) -> Any:
        """One cache holding every row's cached head, left-padded to the longest."""
        from transformers import DynamicCache

        cache = DynamicCache()
        hc = max(heads)
        if hc:
            for layer in range(self.n_layers):
                ks, vs = [], []
                for r, h in zip(rows, heads, strict=True):
                    k, v = r.state.kv[layer] if h else (None, None)  # type: ignore[index]
                    ks.append(_left_pad(k, hc, self.kv_shape, self.device, self.dtype))
                    vs.append(_left_pad(v, hc, self.kv_shape, self.device, self.dtype))
                cache.update(torch.cat(ks), torch.cat(vs), layer)
        return cache

    @torch.inference_mode()
    def prefill(self, rows: list[DecodeRow]) -> tuple[torch.Tensor, Any, RaggedBatch]:
        """Prefill every row's tail over its cached head in one padded batch; commit the new head.

        Returns the next-token logits ``(B, vocab)``, the batch cache and the ragged batch (which
        cache columns are real, each row's next position).
        """
        heads = [r.state.cached_len for r in rows]
        tails = [r.tail_embeds.shape[0] for r in rows]
        hc, tm = max(heads), max(tails)
        cache = self._batch_cache(rows, heads)
        x = torch.zeros(len(rows), tm, self.embed.weight.shape[1], device=self.device, dtype=self.dtype)
        for i, (r, t) in enumerate(zip(rows, tails, strict=True)):
            x[i, tm - t:] = r.tail_embeds
        batch, prefill = RaggedBatch.prefill(heads, tails, pad_new="left", device=self.device)
        logits = self.forward(x, prefill.allowed, prefill.positions, cache)
        # Keep what joins each row's cache: the old head plus the committed tail prefix
        # (uncached prompt head, audio of windows that finished). Everything after is recomputed next step.
        for i, (r, h, t) in enumerate(zip(rows, heads, tails, strict=True)):
            if r.commit:
                a, e = hc + tm - t, hc + tm - t + r.commit
                r.state.kv = [
                    (torch.cat([lay.keys[i:i + 1, :, hc - h:hc], lay.keys[i:i + 1, :, a:e]], dim=2),
                     torch.cat([lay.values[i:i + 1, :, hc - h:hc], lay.values[i:i + 1, :, a:e]], dim=2))
                    for lay in cache.layers
                ]
            r.state.committed_windows = len(r.state.windows)
        return logits, cache, batch

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits (float32) after the last input of every row; ``allowed`` is the ``[B, q, k]`` boolean mask."""
        out = self.language_model(inputs_embeds=x, attention_mask=additive_mask(allowed, self.dtype),
                                  position_ids=pos, cache=cache, use_cache=True)
        return self.lm_head(out.last_hidden_state[:, -1]).float()

    def step(self, input_ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
             cache: Any) -> tuple[torch.Tensor, Any]:
        """One decode step of the batch: ``[B, 1]`` ids and positions, ``[B, 1, K]`` mask -> logits, cache."""
        return self.forward(self.embed(input_ids), allowed, positions, cache), cache

    @torch.inference_mode()
    def decode(self, rows: list[DecodeRow], stop: StopCriteria) -> list[list[int]]:
        """Prefill, then greedy-decode all rows together until each stops (EOS, budget, a loop)."""
        logits, cache, batch = self.prefill(rows)
        decoded = greedy_decode(self.step, cache, batch, [Row(r.max_new, r.forced) for r in rows],
                                lambda sel: logits if sel is None else logits[sel], stop, select_rows=_keep_rows)
        return [d.tokens for d in decoded]
