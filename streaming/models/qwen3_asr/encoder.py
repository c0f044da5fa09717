"""Windowed encoding: every state's finished and open attention windows, packed into one encoder pass.

A finished window's output never changes, so it is computed once and kept in
the state; a step encodes only the open window (plus a window that just
finished). All windows of all utterances go through the conv front end as one
batch of 1 s chunks and through the layers as one packed sequence with
``cu_seqlens`` (one segment per window): no padding, and the attention is
block-diagonal exactly as in the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streaming.models.qwen3_asr.features import FRAMES_PER_CHUNK, LogMel, post_cnn_tokens
from streaming.models.qwen3_asr.state import Qwen3ASRState, Window, extend_frames


@dataclass
class EncodeJob:
    """One window of one utterance to encode."""

    state: Qwen3ASRState
    window: int
    features: torch.Tensor
    finished: bool
    """A finished window joins ``state.windows`` for good; the open one is re-encoded next step."""


def encode_jobs(states: list[Qwen3ASRState], logmel: LogMel, final: bool) -> list[EncodeJob]:
    """Bring every state's mel frames up to date; the windows that need the encoder (all, if ``final``)."""
    jobs: list[EncodeJob] = []
    for s in states:
        extend_frames(s, logmel, final)
        n = s.raw_frames.shape[1]
        wf = s.window_frames
        n_finished = n // wf if not final else -(-n // wf)
        for w in range(len(s.windows), n_finished):
            end = min((w + 1) * wf, n)
            jobs.append(EncodeJob(s, w, s.window_features(w, end), True))
        if not final and n > n_finished * wf:
            jobs.append(EncodeJob(s, n_finished, s.window_features(n_finished, n), False))
    return jobs


class WindowEncoder:
    """The audio tower and projector of a Qwen3-ASR model, run on packed windows."""

    def __init__(self, tower: Any, projector: Any, logmel: LogMel, device: torch.device, dtype: torch.dtype) -> None:
        self.tower = tower
        self.projector = projector
        self.logmel = logmel
        self.device = device
        self.dtype = dtype

    @torch.inference_mode()
    def encode_windows(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Projected audio embeddings ``(tokens, hidden)`` of independent attention windows, in one pass.

        Each entry is ``(n_mels, frames)`` with at most one window of frames, starting on a window boundary.
        """
        enc = self.tower
        chunks, valid, seg_tokens = [], [], []
        for feats in features:
            n = feats.shape[1]
            n_chunks = -(-n // FRAMES_PER_CHUNK)
            padded = F.pad(feats, (0, n_chunks * FRAMES_PER_CHUNK - n))
            chunks.append(padded.view(feats.shape[0], n_chunks, FRAMES_PER_CHUNK).permute(1, 0, 2))
            lens = [min(FRAMES_PER_CHUNK, n - i * FRAMES_PER_CHUNK) for i in range(n_chunks)]
            valid.extend(post_cnn_tokens(x) for x in lens)
            seg_tokens.append(post_cnn_tokens(n))
        x = torch.cat(chunks).unsqueeze(1).to(self.device, self.dtype)  # (chunks, 1, mels, 100)
        x = F.gelu(enc.conv2d1(x))
        x = F.gelu(enc.conv2d2(x))
        x = F.gelu(enc.conv2d3(x))
        c, ch, fr, t = x.shape
        x = enc.conv_out(x.permute(0, 3, 1, 2).reshape(c, t, ch * fr))
        x = x + enc.positional_embedding.positional_embedding[:t].to(x.dtype)
        keep = torch.arange(t, device=x.device)[None, :] < torch.tensor(valid, device=x.device)[:, None]
        hidden = x[keep]  # packed (tokens, d)
        cu = torch.tensor([0, *np.cumsum(seg_tokens).tolist()], device=x.device, dtype=torch.int32)
        for layer in enc.layers:
            hidden = layer(hidden, cu, max_seqlen=max(seg_tokens))[0]
        hidden = self.projector(enc.ln_post(hidden))
        return list(torch.split(hidden, seg_tokens))

    def encode(self, states: list[Qwen3ASRState], final: bool) -> dict[int, dict[str, Any]]:
        """Bring every state's finished windows up to date and encode its open window.

        Returns, by ``id(state)``, the open window's embeddings (``"open"``, ``None`` if none) and
        how many frames and windows went through the encoder.
        """
        jobs = encode_jobs(states, self.logmel, final)
        out = [] if not jobs else self.encode_windows([j.features for j in jobs])
        per_state: dict[int, dict[str, Any]] = {id(s): {"open": None, "frames": 0, "windows": 0} for s in states}
        for job, emb in zip(jobs, out, strict=True):
            info = per_state[id(job.state)]
            info["frames"] += job.features.shape[1]
            info["windows"] += 1
            if job.finished:
                job.state.windows.append(Window(job.features, emb))
            else:
                info["open"] = emb
        return per_state
