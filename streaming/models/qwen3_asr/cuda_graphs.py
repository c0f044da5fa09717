"""The static decode step replayed as CUDA graphs, one per (batch, key length) bucket.

A 0.6B decode step is ~30 layers x ~15 small kernels: at batch 1 launching
them costs more than running them, so the step is captured once per bucket
with ``torch.cuda.CUDAGraph`` (manual capture after a warm-up on a side
stream) and replayed with its inputs copied into static buffers. All graphs
share one memory pool: they are replayed one at a time and their only output
(the logits) is read before the next replay. The capture writes only the scratch
column (every row idle), so it never touches a live slot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from streaming.models.qwen3_asr.static_decode import StaticDecoder

log = logging.getLogger(__name__)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor
    write_pos: torch.Tensor
    logits: torch.Tensor


class CudaGraphDecoder:
    """A ``StepFn`` that replays a captured graph of :meth:`StaticDecoder.step` for the call's bucket."""

    def __init__(self, decoder: StaticDecoder, warmup_iters: int = 2) -> None:
        if decoder.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the KV pool on a CUDA device, it is on {decoder.device}")
        self.decoder = decoder
        self.warmup_iters = int(warmup_iters)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self.capture_s = 0.0

    @property
    def captured(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def capture_all(self, max_batch: int | None = None) -> None:
        """Capture every bucket pair now (largest first, so smaller graphs reuse the pool's blocks)."""
        d = self.decoder
        for b in sorted((b for b in d.batch_buckets if max_batch is None or b <= max_batch), reverse=True):
            for key_len in sorted(d.len_buckets, reverse=True):
                self._graph(b, key_len)

    @torch.inference_mode()
    def _graph(self, batch: int, key_len: int) -> _Graph:
        g = self._graphs.get((batch, key_len))
        if g is not None:
            return g
        t0 = time.perf_counter()
        dev, scratch = self.decoder.device, self.decoder.pool.scratch
        tokens = torch.zeros(batch, dtype=torch.long, device=dev)
        write_pos = torch.full((batch,), scratch, dtype=torch.long, device=dev)
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up: lazy inits and kernel selection happen outside the capture
            for _ in range(self.warmup_iters):
                self.decoder.step(tokens, write_pos, key_len)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self.decoder.step(tokens, write_pos, key_len)
        g = self._graphs[(batch, key_len)] = _Graph(graph, tokens, write_pos, logits)
        self.capture_s += time.perf_counter() - t0
        log.debug("captured decode step batch=%d key_len=%d in %.0f ms", batch, key_len,
                  1000 * (time.perf_counter() - t0))
        return g

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, write_pos: torch.Tensor, key_len: int) -> torch.Tensor:
        g = self._graph(tokens.shape[0], key_len)
        g.tokens.copy_(tokens, non_blocking=True)
        g.write_pos.copy_(write_pos, non_blocking=True)
        g.graph.replay()
        return g.logits  # the graph's static output: the caller gathers its rows before the next replay
