"""Qwen3 text decoding over static KV slots: fixed-shape tensors a CUDA graph can capture.

The dynamic path (``RowDecoder.prefill``) builds a padded ``DynamicCache``
every step and grows it by concatenation per token, so shapes change at every
token and each step copies every row's head. Here each utterance owns a *slot*
of a pool preallocated once: per layer ``[slots, kv_heads, max_len + 1,
head_dim]``. Slot position ``p`` is decoder position ``p`` (RoPE included), so
committed KV never moves: a step prefills its tail at ``[committed, ...)`` and
decodes after it; whatever lies past the committed length is overwritten by the
next step. The last column is a scratch row that idle rows write into.

The decode step runs over the *slot rows themselves*, rows ``[0, batch)`` of
the pool: attention reads a contiguous slice, no gather, with a length mask per
row; rows not decoding write to the scratch column and their output is ignored.
Slots are handed out lowest first so the active rows stay packed. Shapes depend
only on the (batch, length) bucket, so one graph per bucket pair is captured
(``streaming.models.qwen3_asr.cuda_graphs``). The greedy loop and its stop rules are
the shared one (:func:`streaming.models.decoding.greedy_decode`); only the
prefill and the ``DecodeStep`` are ours.

Why not transformers' ``StaticCache``: its layers keep one ``cumulative_length``
for the whole batch (``index_copy_`` at the same positions for every row), so
ragged rows (different committed heads, different stop times) cannot share a
step. Instead the step calls the model's own submodules (RMSNorms, q/k norms,
projections, MLP, rotary embedding, ``apply_rotary_pos_emb``) with our cache, so
the weights and the maths stay the model's. GQA is done by grouping the queries
of a KV head (``[B, kv_heads, n_rep * q_len, d]``) rather than repeating K/V,
so attention reads each cached key once, with any SDPA kernel.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from streaming.models.decoding import Decoded, RaggedBatch, Row, StopCriteria, greedy_decode

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Padded batch sizes of the decode step (one CUDA graph each, per length bucket)."""


class KVPoolFullError(RuntimeError):
    """Every slot of the pool holds a live utterance."""


class SlotOverflowError(ValueError):
    """An utterance needs more decoder positions than a slot holds."""


def length_buckets(max_len: int, smallest: int = 128) -> tuple[int, ...]:
    """Key lengths the decode step attends over: powers of two from ``smallest``, then ``max_len``."""
    out, n = [], smallest
    while n < max_len:
        out.append(n)
        n *= 2
    return (*out, max_len)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= ``n`` (buckets ascending)."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


class KVSlotPool:
    """Preallocated per-layer K/V, one slot per live utterance, with its committed length."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if slots < 1 or max_len < 2:
            raise ValueError(f"a KV pool needs >= 1 slot and max_len >= 2, got {slots} and {max_len}")
        self.slots, self.max_len = int(slots), int(max_len)
        shape = (n_layers, self.slots, kv_heads, self.max_len + 1, head_dim)
        # Zeros, not empty: masked-out keys must still be finite (0 * NaN would poison a softmax row).
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * self.slots
        """Committed positions per slot (KV valid at ``[0, length)``)."""
        self._free = list(range(self.slots))  # a heap: lowest slot first keeps active rows packed
        self._used: set[int] = set()
        self._released: collections.deque[int] = collections.deque()  # freed from other threads (GC)

    @property
    def scratch(self) -> int:
        """The column idle rows write into; never attended by a live row."""
        return self.max_len

    @property
    def in_use(self) -> int:
        self._drain()
        return len(self._used)

    def bytes_per_slot(self) -> int:
        """Device memory one slot holds (K and V, all layers)."""
        return 2 * self.keys[:, 0].numel() * self.keys.element_size()

    @staticmethod
    def slot_bytes(n_layers: int, kv_heads: int, head_dim: int, max_len: int, dtype: torch.dtype) -> int:
        """What :meth:`bytes_per_slot` will be, before allocating."""
        return 2 * n_layers * kv_heads * (max_len + 1) * head_dim * torch.empty(0, dtype=dtype).element_size()

    def alloc(self) -> int:
        """A free slot, lowest first, with length 0."""
        self._drain()
        if not self._free:
            raise KVPoolFullError(f"all {self.slots} KV slots hold live utterances (max_streams={self.slots})")
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        self.lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        """Give a slot back (its stale KV is overwritten by the next owner)."""
        if slot not in self._used:
            raise ValueError(f"KV slot {slot} is not allocated")
        self._used.discard(slot)
        self.lengths[slot] = 0
        heapq.heappush(self._free, slot)

    def release_later(self, slot: int) -> None:
        """Free ``slot`` at the next ``alloc`` (safe from any thread, e.g. a GC finalizer)."""
        self._released.append(slot)

    def _drain(self) -> None:
        while self._released:
            slot = self._released.popleft()
            if slot in self._used:
                self.free(slot)

    def check_room(self, slot: int, end: int) -> None:
        """Raise :class:`SlotOverflowError` unless positions ``[0, end)`` fit in a slot."""
        if end > self.max_len:
            raise SlotOverflowError(f"utterance needs {end} decoder positions, a KV slot holds {self.max_len} "
                                    f"(slot {slot}); raise max_len or shorten the context/utterance")

    def write(self, slot: int, start: int, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
        """Write per-layer prefill KV ``(kv_heads, t, head_dim)`` at positions ``[start, start + t)``."""
        t = keys[0].shape[-2]
        self.check_room(slot, start + t)
        for layer, (k, v) in enumerate(zip(keys, values)):
            self.keys[layer, slot, :, start:start + t] = k
            self.values[layer, slot, :, start:start + t] = v


@dataclass
class SlotRow:
    """One utterance's work in a decode call: the tail to prefill after its committed KV, and a budget."""

    slot: int
    start: int
    """Committed positions already in the slot; the tail goes at ``[start, start + len(tail))``."""
    tail_embeds: torch.Tensor
    """``(t, hidden)`` input embeddings of what the slot does not hold yet."""
    max_new: int
    """Greedy tokens at most (cut to the room left in the slot)."""


class StaticDecoder:
    """The Qwen3 text decoder's prefill and fixed-shape decode step over a :class:`KVSlotPool`."""

    def __init__(self, decoder: Any, lm_head: torch.nn.Module, pool: KVSlotPool,
                 batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
                 len_buckets: Sequence[int] | None = None) -> None:
        from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

        self.decoder, self.lm_head, self.pool = decoder, lm_head, pool
        self._rope = apply_rotary_pos_emb
        attn = decoder.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_rep = attn.num_key_value_groups
        self.scale = attn.scaling
        self.batch_buckets = tuple(b for b in sorted(batch_buckets) if b < pool.slots) + (pool.slots,)
        self.len_buckets = tuple(len_buckets or length_buckets(pool.max_len))
        if self.len_buckets[-1] != pool.max_len:
            raise ValueError(f"the largest length bucket must be max_len={pool.max_len}, got {self.len_buckets}")
        self.device = pool.keys.device

    # attention -------------------------------------------------------------------------------------
    def _qkv(self, layer: Any, h: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed, rotated q ``(B, heads, s, d)`` and k, v ``(B, kv_heads, s, d)`` of ``h (B, s, hidden)``."""
        attn = layer.self_attn
        shape = (*h.shape[:-1], -1, self.head_dim)
        q = attn.q_norm(attn.q_proj(h).view(shape)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(h).view(shape)).transpose(1, 2)
        v = attn.v_proj(h).view(shape).transpose(1, 2)
        q, k = self._rope(q, k, *cos_sin)
        return q, k, v

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor
                ) -> torch.Tensor:
        """GQA attention of ``q (B, heads, s, d)`` over ``keys (B, kv_heads, L, d)``; ``allowed (B, s, L)``."""
        b, heads, s, d = q.shape
        kvh = heads // self.n_rep
        qg = q.reshape(b, kvh, self.n_rep * s, d)  # head h reads KV head h // n_rep, as repeat_kv lays it out
        mask = allowed[:, None, None].expand(b, 1, self.n_rep, s, allowed.shape[-1])
        out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask.reshape(b, 1, self.n_rep * s, -1),
                                             scale=self.scale)
        return out.reshape(b, heads, s, d).transpose(1, 2).reshape(b, s, heads * d)

    def _block(self, layer: Any, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual + o_proj, then the MLP half of a decoder layer."""
        x = x + layer.self_attn.o_proj(attn_out)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    # prefill -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, rows: Sequence[SlotRow]) -> torch.Tensor:
        """Write every row's tail KV into its slot; the next-token logits after each tail ``(B, vocab)``.

        Ragged tails are left-aligned and padded; pad queries write to the scratch column. Runs eagerly
        (its shape follows the tails). Rows are processed in slot order: when their slots are one
        contiguous range (all streams stepping together) attention reads the pool in place, else a
        gathered copy of the rows' slots.
        """
        pool = self.pool
        if len({r.slot for r in rows}) != len(rows):
            raise ValueError("two rows of one call share a KV slot")
        for r in rows:
            if r.tail_embeds.shape[0] < 1:
                raise ValueError("every row needs at least one tail position to prefill")
            pool.check_room(r.slot, r.start + r.tail_embeds.shape[0])
        order = sorted(range(len(rows)), key=lambda i: rows[i].slot)
        logits = self._prefill_sorted([rows[i] for i in order])
        back = torch.empty(len(rows), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(rows))
        return logits[back.to(logits.device)]

    def _prefill_sorted(self, rows: list[SlotRow]) -> torch.Tensor:
        pool, dev = self.pool, self.device
        b, lens = len(rows), [r.tail_embeds.shape[0] for r in rows]
        tm, span = max(lens), max(r.start + t for r, t in zip(rows, lens))
        x = torch.nn.utils.rnn.pad_sequence([r.tail_embeds for r in rows], batch_first=True)
        x = x.to(dev, pool.keys.dtype)
        pos = torch.full((b, tm), pool.scratch, dtype=torch.long)
        for i, (r, t) in enumerate(zip(rows, lens)):
            pos[i, :t] = torch.arange(r.start, r.start + t)
        pos = pos.to(dev)
        first = rows[0].slot
        packed = rows[-1].slot - first == b - 1
        slots = torch.tensor([r.slot for r in rows], dtype=torch.long, device=dev)

        def read(cache: torch.Tensor) -> torch.Tensor:
            return cache[first:first + b, :, :span] if packed else cache[:, :, :span].index_select(0, slots)

        allowed = torch.arange(span, device=dev)[None, None, :] <= pos[:, :, None]  # pads see everything: no NaN
        cos_sin = self.decoder.rotary_emb(x, pos)
        for li, layer in enumerate(self.decoder.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos_sin)
            kc, vc = pool.keys[li], pool.values[li]
            kc[slots[:, None], :, pos] = k.transpose(1, 2)  # (B, tm, kvh, d) at each row's own positions
            vc[slots[:, None], :, pos] = v.transpose(1, 2)
            x = self._block(layer, x, self._attend(q, read(kc), read(vc), allowed))
        last = x[torch.arange(b, device=dev), torch.tensor(lens, device=dev) - 1]
        return self.lm_head(self.decoder.norm(last)).float()

    # decode step -------------------------------------------------------------------------------------
    def step(self, tokens: torch.Tensor, write_pos: torch.Tensor, key_len: int) -> torch.Tensor:
        """One decoder step for slot rows ``[0, B)``: the fixed-shape body a CUDA graph captures.

        ``tokens (B,)`` are the rows' last tokens, ``write_pos (B,)`` their positions (the scratch column
        for rows not decoding); keys ``[0, key_len)`` are read, masked to ``<= write_pos``. Returns the
        next-token logits ``(B, vocab)`` float. No host sync, no shape that depends on values.
        """
        pool = self.pool
        b = tokens.shape[0]
        x = self.decoder.embed_tokens(tokens)[:, None]  # (B, 1, hidden)
        cos_sin = self.decoder.rotary_emb(x, write_pos[:, None])
        allowed = (torch.arange(key_len, device=x.device)[None, :] <= write_pos[:, None])[:, None]  # (B, 1, L)
        idx = write_pos.view(b, 1, 1, 1).expand(b, pool.keys.shape[2], 1, self.head_dim)
        for li, layer in enumerate(self.decoder.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos_sin)
            kc, vc = pool.keys[li, :b], pool.values[li, :b]
            kc.scatter_(2, idx, k)
            vc.scatter_(2, idx, v)
            x = self._block(layer, x, self._attend(q, kc[:, :, :key_len], vc[:, :, :key_len], allowed))
        return self.lm_head(self.decoder.norm(x[:, 0])).float()

    def shape_for(self, rows_end: int, pos_end: int) -> tuple[int, int]:
        """The (batch, key length) bucket of a step over slot rows ``[0, rows_end)`` up to ``pos_end``."""
        return bucket_for(rows_end, self.batch_buckets), bucket_for(pos_end, self.len_buckets)


StepFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``(tokens (B,), write_pos (B,), key_len) -> logits (B, vocab)`` on the device: eager or a graph replay.

Inputs are host tensors; a graph's logits are its static output, valid until the next replay."""


def eager_step(decoder: StaticDecoder) -> StepFn:
    """The static step run eagerly (CPU, or CUDA without graphs): same shapes, same buckets."""

    @torch.inference_mode()
    def run(tokens: torch.Tensor, write_pos: torch.Tensor, key_len: int) -> torch.Tensor:
        dev = decoder.device
        return decoder.step(tokens.to(dev), write_pos.to(dev), key_len)

    return run


@dataclass
class SlotBatch:
    """The ``past`` the shared greedy loop carries on the static path: which slot each batch row owns."""

    slots: list[int]


def streams_that_fit(requested: int, slot_bytes: int, free_bytes: int, fraction: float = 0.6) -> int:
    """Slots to allocate: ``requested``, or fewer if they would take more than ``fraction`` of free memory.

    The rest stays for the weights' activations, the encoder and the CUDA graphs' pool.
    """
    fit = int(fraction * free_bytes) // max(1, slot_bytes)
    if fit < 1:
        raise MemoryError(f"one KV slot needs {slot_bytes / 2**20:.0f} MiB, only {free_bytes / 2**20:.0f} MiB "
                          f"free: lower max_utterance_s or use kv_cache='dynamic'")
    return min(int(requested), fit)


def slot_len_for(max_utterance_s: float, max_tokens_per_audio_s: float, audio_tokens_per_s: int = 13,
                 prompt_tokens: int = 320, granule: int = 128) -> int:
    """Positions a slot needs for the longest utterance: prompt (context included), audio, text budget."""
    need = prompt_tokens + audio_tokens_per_s * max_utterance_s + 16 + max_tokens_per_audio_s * max_utterance_s
    return int(-(-int(need) // granule) * granule)


class SlotDecoding:
    """What a backend holds for the static path: the pool, the static decoder and its step runner.

    On CUDA the step replays CUDA graphs (``cuda_graphs=True``); elsewhere it runs the same bucketed
    step eagerly, so CPU tests exercise the shapes the GPU runs.
    """

    def __init__(self, decoder: Any, lm_head: torch.nn.Module, max_streams: int, max_len: int,
                 cuda_graphs: bool = True, batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
                 len_buckets: Sequence[int] | None = None) -> None:
        weight = lm_head.weight
        attn = decoder.layers[0].self_attn
        self.pool = KVSlotPool(len(decoder.layers), decoder.config.num_key_value_heads, attn.head_dim,
                               max_streams, max_len, dtype=weight.dtype, device=weight.device)
        self.decoder = StaticDecoder(decoder, lm_head, self.pool, batch_buckets, len_buckets)
        self.graphs = None
        if cuda_graphs and weight.device.type == "cuda":
            from streaming.models.qwen3_asr.cuda_graphs import CudaGraphDecoder

            self.graphs = CudaGraphDecoder(self.decoder)
        self.step_fn: StepFn = self.graphs or eager_step(self.decoder)

    def decode(self, rows: Sequence[SlotRow], stop: StopCriteria,
               guard_prefixes: Sequence[Sequence[int]] | None = None) -> list[Decoded]:
        """Prefill every row into its slot, then the shared greedy loop (:mod:`streaming.models.decoding`).

        A row's budget is cut to the room left in its slot; finished rows leave the batch, so a step
        covers slot rows up to the highest live one.
        """
        if not rows:
            return []
        logits = self.decoder.prefill(rows)
        ends = [r.start + r.tail_embeds.shape[0] for r in rows]
        # The loop's RaggedBatch: only next_positions matter here (the slots hold the keys, the step
        # builds its own length mask); it stays on the host, so building a step's inputs never syncs.
        batch = RaggedBatch(torch.ones(len(rows), 1, dtype=torch.bool), torch.tensor(ends, dtype=torch.long))
        prefixes = guard_prefixes or [()] * len(rows)
        limits = [Row(min(r.max_new, self.pool.max_len - e + 1), tuple(p)) for r, e, p in zip(rows, ends, prefixes)]
        return greedy_decode(self.step, SlotBatch([r.slot for r in rows]), batch, limits,
                             lambda sel: logits if sel is None else logits[sel.to(logits.device)], stop,
                             select_rows=self.select)

    def step(self, input_ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, past: SlotBatch
             ) -> tuple[torch.Tensor, SlotBatch]:
        """The loop's :data:`~streaming.models.decoding.DecodeStep`: one bucketed step over the slot rows."""
        del allowed  # the step masks by each slot row's own position
        b, key_len = self.decoder.shape_for(max(past.slots) + 1, int(positions.max()) + 1)
        tokens = torch.zeros(b, dtype=torch.long)
        write = torch.full((b,), self.pool.scratch, dtype=torch.long)
        rows = torch.tensor(past.slots, dtype=torch.long)
        tokens[rows] = input_ids[:, 0].cpu()
        write[rows] = positions[:, 0].cpu()
        logits = self.step_fn(tokens, write, key_len)
        return logits[rows.to(logits.device)], past

    @staticmethod
    def select(past: SlotBatch, rows: torch.Tensor) -> SlotBatch:
        """The loop's ``select_rows``: finished rows leave the batch (their slots keep their KV)."""
        return SlotBatch([past.slots[i] for i in rows.tolist()])

    def warmup(self) -> None:
        """Capture every graph up front, so no request pays for a capture."""
        if self.graphs is not None:
            self.graphs.capture_all()
