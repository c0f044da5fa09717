"""Qwen3-ASR as a true streaming backend: cached encoder windows and a kept decoder KV cache.

The official toolkit "streams" by re-running ALL audio so far every chunk, with
the previous text minus its last 5 tokens as a prefix and no cache, so every
step costs more than the last. Here each step costs the same however long the
utterance runs, because the model allows it:

* **Encoder.** Log-mel frames go through the conv front end in 1 s chunks (100
  frames -> 13 tokens, positions restart per chunk), then through transformer
  layers whose attention is block-diagonal over windows of ``window_s`` seconds
  aligned to the utterance start (``n_window_infer`` in transformers; we pass
  the windows as ``cu_seqlens`` so each utterance picks its own ``window_s``).
  A finished window's output never changes, so it is computed once and cached;
  a step encodes only the open window (plus a window that just finished).
* **Decoder.** The layout is always the one the model was trained on::

      [prompt head .. <|audio_start|>][audio tokens][<|audio_end|><|im_end|>\\n
       <|im_start|>assistant\\n][language X<asr_text>][text]

  The decoder is causal, so the KV cache over ``[prompt head][finished audio
  windows]`` stays valid when audio is appended. A step re-prefills only the
  open window's audio tokens, the suffix and the forced stable text, then
  decodes greedily. (Feeding chunks as separate chat turns breaks the trained
  layout and was measured at 56 % error, so we never do that.)

**Feature rule (streaming-stable, "floor frozen per window").** The feature
extractor clamps log-mel to ``max(x, x.max() - 8)`` with the max over the whole
input, which moves as louder audio arrives. We instead clamp the frames of
encoder window ``w`` with the running max over frames ``[0, end of w)``: the
floor of a finished window is frozen when it finishes, the open window uses
the max so far. Values only differ from offline where a mel bin is more than
80 dB below the loudest frame seen so far (digital silence, empty bands of
band-limited audio), and the cost per step stays bounded (the offline-exact
alternative has to rebuild every cached window and the decoder cache whenever
the max rises over a clamped value). STFT frames use torch's centring with
reflect padding; a frame is computed once all 400 of its samples are present
(the last one or two frames, which reflect at the end, only at ``finalize``).

**Agreement policy.** LocalAgreement-2 on token ids (``streaming.stability``):
tokens two consecutive hypotheses agree on become stable and are forced as the
decoder prefix from then on. Unlike the official "all but the last k tokens"
rule it never commits a token the model has produced only once, so stable text
is not retracted when the next second of audio disambiguates a word, and
forcing the stable tokens keeps the new text consistent with what was shown.
The reported ``stable_text`` stops at the last confirmed word boundary so a
caption never shows half a word as final.

**Word timestamps.** No forced aligner is loaded, so a final that asks for
words gets them spread over the utterance by character length, and its
``word_timing`` says they are an estimate.

**Batching.** ``step``/``finalize`` take many utterances of ragged lengths.
Encoder: all windows of all utterances are *packed* into one sequence (the
conv front end runs on all 1 s chunks as one batch, the layers get
``cu_seqlens`` with one segment per window), so there is no padding at all and
the attention is block-diagonal exactly as in the model. Decoder: *padding
plus an explicit 4-D mask*; each row is ``[left pad][cached head] | [pad][tail]``
(the cached heads right-aligned in the batch cache, the tails right-aligned in
the input), with explicit ``position_ids`` so RoPE sees each utterance's own
positions, and pad queries attending only to themselves so no row is fully
masked. Packing the decoder would need a varlen kernel (flash-attention) that
CPU torch does not have; padding costs at most one window of positions per
row, while the padded KV copy of the heads is the same memory traffic the
attention itself reads. Measured in ``streaming.bench_qwen3``.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streaming.models.base import (
    SAMPLE_RATE_HZ,
    Backend,
    FinalResult,
    Hypothesis,
    OptionError,
    UtteranceOptions,
    UtteranceState,
)
from streaming.models.decoding import (
    RaggedBatch,
    RepetitionGuard,
    Row,
    StopCriteria,
    TokenBudget,
    additive_mask,
    greedy_decode,
)
from streaming.models.timing import TIMING_ESTIMATED, estimated_words
from streaming.stability import LocalAgreement

log = logging.getLogger(__name__)

HOP_SAMPLES = 160
"""STFT hop: one mel frame per 10 ms."""
N_FFT = 400
FRAMES_PER_CHUNK = 100
"""Mel frames per conv chunk (``2 * n_window``): one second."""
TOKENS_PER_CHUNK = 13
"""Audio tokens after the conv front end for a full 1 s chunk."""
MIN_SAMPLES = 8_000
"""The feature extractor zero-pads shorter clips to this length (0.5 s)."""
CLAMP_RANGE = 8.0
"""log10 dynamic range kept below the running max (80 dB)."""

AUDIO_START = "<|audio_start|>"
AUDIO_END = "<|audio_end|>"
AUDIO_PAD = "<|audio_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
ASR_TEXT = "<asr_text>"

HUB_NAMES = {"0.6b": "Qwen/Qwen3-ASR-0.6B-hf", "1.7b": "Qwen/Qwen3-ASR-1.7B-hf"}


def _language_names() -> dict[str, str]:
    from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

    return dict(LANGUAGE_CODE_TO_NAME)


def post_cnn_tokens(n_frames: int) -> int:
    """Audio tokens the conv front end makes from ``n_frames`` mel frames (1 s chunks)."""
    full, rest = divmod(n_frames, FRAMES_PER_CHUNK)
    tokens = full * TOKENS_PER_CHUNK
    if rest:
        for _ in range(3):
            rest = (rest - 1) // 2 + 1
        tokens += rest
    return tokens


# --------------------------------------------------------------------------- features


class LogMel:
    """Qwen3-ASR log-mel features computed incrementally, frame by frame.

    Same maths as ``Qwen3ASRFeatureExtractor`` (Hann 400, hop 160, Slaney mel
    0-8 kHz, log10 clamp 1e-10) but each frame from exactly its own samples, so
    a frame computed once never changes.
    """

    def __init__(self, mel_filters: np.ndarray) -> None:
        self.mel_filters = torch.from_numpy(np.asarray(mel_filters, dtype=np.float32))  # (201, n_mels)
        self.window = torch.hann_window(N_FFT)

    @staticmethod
    def stable_frames(n_samples: int) -> int:
        """Frames whose samples have all arrived (centre ``t * 160``, needs ``t * 160 + 200`` samples)."""
        if n_samples < N_FFT:
            return 0
        return min((n_samples - N_FFT // 2) // HOP_SAMPLES + 1, n_samples // HOP_SAMPLES)

    @staticmethod
    def total_frames(n_samples: int) -> int:
        """Frames of the whole (closed) utterance, as the offline extractor makes them."""
        return n_samples // HOP_SAMPLES

    def raw(self, audio: np.ndarray, start: int, end: int, final: bool) -> torch.Tensor:
        """log10 mel power of frames ``[start, end)``, shape ``(n_mels, end - start)``.

        ``final`` allows the last frames that reflect-pad past the end of ``audio``.
        """
        if end <= start:
            return torch.zeros(self.mel_filters.shape[1], 0)
        half = N_FFT // 2
        lo = start * HOP_SAMPLES - half
        hi = (end - 1) * HOP_SAMPLES + half
        x = torch.from_numpy(audio[max(lo, 0):min(hi, len(audio))].astype(np.float32, copy=False))
        if lo < 0:  # torch.stft(center=True) reflect-pads the start
            x = torch.cat([torch.from_numpy(audio[1:1 - lo][::-1].copy()), x])
        if hi > len(audio):
            if not final:
                raise ValueError("frame needs samples that have not arrived")
            n = hi - len(audio)
            x = torch.cat([x, torch.from_numpy(audio[-1 - n:-1][::-1].copy())])
        frames = x.unfold(0, N_FFT, HOP_SAMPLES) * self.window  # (n, 400)
        power = torch.fft.rfft(frames, dim=-1).abs() ** 2  # (n, 201)
        mel = power @ self.mel_filters  # (n, n_mels)
        return torch.clamp(mel, min=1e-10).log10().T.contiguous()

    @staticmethod
    def normalise(raw: torch.Tensor, max_log: float) -> torch.Tensor:
        """The extractor's clamp and scaling, with ``max_log`` as the reference max."""
        return (torch.maximum(raw, torch.tensor(max_log - CLAMP_RANGE)) + 4.0) / 4.0


# --------------------------------------------------------------------------- state


@dataclass
class _Window:
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
        self.windows: list[_Window] = []
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        """Decoder KV cache over ``[head_ids][audio tokens of windows[:committed]]``, per layer ``(1, kvh, H, d)``."""
        self.committed_windows = 0
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
        """Decoder positions held in the KV cache."""
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


def _extend_frames(state: Qwen3ASRState, logmel: LogMel, final: bool) -> None:
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


# --------------------------------------------------------------------------- backend


@dataclass
class _EncodeJob:
    state: Qwen3ASRState
    window: int
    features: torch.Tensor
    finished: bool


@dataclass
class _DecodeRow:
    state: Qwen3ASRState
    tail_ids: list[int] | None
    tail_embeds: torch.Tensor
    commit: int
    """Tail positions (uncached head + newly finished audio) that join the cache after this pass."""
    forced: list[int]
    max_new: int
    stats: dict[str, Any] = field(default_factory=dict)


class Qwen3ASRBackend(Backend):
    """Qwen3-ASR (0.6B / 1.7B) with an incremental encoder and a kept decoder cache."""

    multilingual = True
    supports_window = True

    def __init__(self, model: Any, processor_or_tokenizer: Any, device: str = "cpu",
                 dtype: torch.dtype | str | None = None, window_s: int = 4, threads: int | None = None,
                 max_utterance_s: float = 60.0, max_new_tokens_per_step: int = 32,
                 max_tokens_per_audio_s: float = 12.0, repetition_guard: bool = True,
                 name: str = "qwen3-asr") -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(_resolve_device(device))
        self.dtype = _resolve_dtype(dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        fe = getattr(processor_or_tokenizer, "feature_extractor", None)
        if fe is None:
            from transformers import Qwen3ASRFeatureExtractor

            fe = Qwen3ASRFeatureExtractor(feature_size=model.config.audio_config.num_mel_bins)
        self.logmel = LogMel(fe.mel_filters)
        self.name = name
        self.max_utterance_s = float(max_utterance_s)
        self.default_window_s = int(window_s)
        self.validate_options(UtteranceOptions(window_s=self.default_window_s))
        self.max_new_tokens_per_step = int(max_new_tokens_per_step)
        self.max_tokens_per_audio_s = float(max_tokens_per_audio_s)
        self.repetition_guard = repetition_guard

        cfg = model.config
        self.encoder = model.model.audio_tower
        self.projector = model.model.multi_modal_projector
        self.decoder = model.model.language_model
        self.lm_head = model.lm_head
        self.embed = self.decoder.get_input_embeddings()
        self.n_layers = cfg.text_config.num_hidden_layers
        tok = self.tokenizer
        self.ids = {t: tok.convert_tokens_to_ids(t) for t in
                    (AUDIO_START, AUDIO_END, AUDIO_PAD, IM_START, IM_END, ENDOFTEXT, ASR_TEXT)}
        eos = cfg.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = {int(e) for e in eos if e is not None}
        self.eos_ids |= {self.ids[IM_END], self.ids[ENDOFTEXT]} - {None, tok.unk_token_id}
        self.language_names = _language_names()
        self._name_to_code = {v.lower(): k for k, v in self.language_names.items()}

    # construction ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str = HUB_NAMES["0.6b"], device: str = "auto",
                        dtype: str | torch.dtype | None = "auto", window_s: int = 4,
                        threads: int | None = None, **kwargs: Any) -> Qwen3ASRBackend:
        """Load a transformers-format Qwen3-ASR checkpoint (local folder or hub id)."""
        from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration

        if threads:
            torch.set_num_threads(int(threads))
        dev = torch.device(_resolve_device(device))
        torch_dtype = _resolve_dtype(dtype, dev)
        processor = AutoProcessor.from_pretrained(name_or_path)
        model = Qwen3ASRForConditionalGeneration.from_pretrained(name_or_path, dtype=torch_dtype)
        short = str(name_or_path).rstrip("/").split("/")[-1]
        return cls(model, processor, device=str(dev), dtype=torch_dtype, window_s=window_s,
                   threads=threads, name=short, **kwargs)

    # options ----------------------------------------------------------------------
    def validate_options(self, options: UtteranceOptions) -> None:
        w = options.window_s
        if w is not None:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or float(w) != int(w) or not 1 <= w <= 8:
                raise OptionError(f"window_s must be a whole number of seconds from 1 to 8, got {w!r}")
        if options.language is not None and self._language_name(options.language) is None:
            raise OptionError(f"unsupported language {options.language!r}")

    def _language_name(self, language: str) -> str | None:
        lang = language.strip()
        if lang.lower() in self._name_to_code:
            return self.language_names[self._name_to_code[lang.lower()]]
        return self.language_names.get(lang.lower())

    def _language_code(self, name: str | None) -> str | None:
        if not name:
            return None
        return self._name_to_code.get(name.strip().lower(), name.strip())

    def prompt_ids(self, options: UtteranceOptions) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio tokens, as the official chat template lays them out."""
        context = options.context or ""
        head = f"{IM_START}system\n{context}{IM_END}\n{IM_START}user\n{AUDIO_START}"
        suffix = f"{AUDIO_END}{IM_END}\n{IM_START}assistant\n"
        if options.language:
            suffix += f"language {self._language_name(options.language)}{ASR_TEXT}"
        enc = self.tokenizer
        return (enc.encode(head, add_special_tokens=False), enc.encode(suffix, add_special_tokens=False))

    def new_utterance(self, options: UtteranceOptions) -> Qwen3ASRState:
        self.validate_options(options)
        head, suffix = self.prompt_ids(options)
        window_s = int(options.window_s or self.default_window_s)
        return Qwen3ASRState(options, window_s, head, suffix, self.logmel.mel_filters.shape[1])

    def max_new_tokens(self, duration_s: float) -> int:
        """Decode budget of a whole utterance: a guard against repetition loops."""
        return int(16 + self.max_tokens_per_audio_s * duration_s)

    # encoder ------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_windows(self, jobs: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Projected audio embeddings of independent attention windows, packed into one pass.

        Each job is ``(features (n_mels, frames), _)`` with at most one window of frames, starting on a
        window boundary. Returns ``(tokens, hidden)`` per job.
        """
        enc = self.encoder
        chunks, valid, seg_tokens = [], [], []
        for feats, _ in jobs:
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

    def _encode(self, states: list[Qwen3ASRState], final: bool) -> dict[int, dict[str, Any]]:
        """Bring every state's finished windows up to date and encode its open window."""
        jobs: list[_EncodeJob] = []
        for s in states:
            _extend_frames(s, self.logmel, final)
            n = s.raw_frames.shape[1]
            wf = s.window_frames
            n_finished = n // wf if not final else -(-n // wf)
            for w in range(len(s.windows), n_finished):
                end = min((w + 1) * wf, n)
                jobs.append(_EncodeJob(s, w, s.window_features(w, end), True))
            if not final and n > n_finished * wf:
                jobs.append(_EncodeJob(s, n_finished, s.window_features(n_finished, n), False))
        out = [] if not jobs else self.encode_windows([(j.features, j.window) for j in jobs])
        per_state: dict[int, dict[str, Any]] = {id(s): {"open": None, "frames": 0, "windows": 0} for s in states}
        for job, emb in zip(jobs, out):
            info = per_state[id(job.state)]
            info["frames"] += job.features.shape[1]
            info["windows"] += 1
            if job.finished:
                job.state.windows.append(_Window(job.features, emb))
            else:
                info["open"] = emb
        return per_state

    # decoder ------------------------------------------------------------------------
    def _tail(self, s: Qwen3ASRState, open_embeds: torch.Tensor | None, forced: list[int]
              ) -> tuple[torch.Tensor, int, dict[str, int]]:
        """Embeddings of what the cache does not hold, and how many of them join it afterwards."""
        parts: list[torch.Tensor] = []
        head_new = 0
        if s.kv is None:
            parts.append(self._embed_ids(s.head_ids))
            head_new = len(s.head_ids)
        fin = [w.embeds for w in s.windows[s.committed_windows:]]
        fin_tokens = sum(e.shape[0] for e in fin)
        parts.extend(e.to(self.dtype) for e in fin)
        open_tokens = 0
        if open_embeds is not None:
            parts.append(open_embeds.to(self.dtype))
            open_tokens = open_embeds.shape[0]
        parts.append(self._embed_ids(s.suffix_ids + forced))
        stats = {"decoder_head_positions": head_new, "decoder_audio_positions": fin_tokens + open_tokens,
                 "decoder_suffix_positions": len(s.suffix_ids), "decoder_text_positions": len(forced)}
        return torch.cat(parts), head_new + fin_tokens, stats

    def _embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.embed(torch.tensor(ids, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def _prefill(self, rows: list[_DecodeRow]) -> tuple[torch.Tensor, Any, RaggedBatch]:
        """Prefill every row's tail over its cached head in one padded batch; commit the new head.

        Returns the next-token logits ``(B, vocab)``, the batch cache and the ragged batch (which
        cache columns are real, each row's next position).
        """
        from transformers import DynamicCache

        b = len(rows)
        heads = [r.state.cached_len for r in rows]
        tails = [r.tail_embeds.shape[0] for r in rows]
        hc, tm = max(heads), max(tails)
        cache = DynamicCache()
        if hc:
            kv_shape = self.n_kv_shape()
            for layer in range(self.n_layers):
                ks, vs = [], []
                for r, h in zip(rows, heads):
                    k, v = r.state.kv[layer] if h else (None, None)
                    ks.append(_left_pad(k, hc, kv_shape, self.device, self.dtype))
                    vs.append(_left_pad(v, hc, kv_shape, self.device, self.dtype))
                cache.update(torch.cat(ks), torch.cat(vs), layer)
        hidden = self.embed.weight.shape[1]
        x = torch.zeros(b, tm, hidden, device=self.device, dtype=self.dtype)
        for i, (r, t) in enumerate(zip(rows, tails)):
            x[i, tm - t:] = r.tail_embeds
        batch, prefill = RaggedBatch.prefill(heads, tails, pad_new="left", device=self.device)
        logits = self._forward(x, prefill.allowed, prefill.positions, cache)
        # Keep what joins each row's cache: the old head plus the committed tail prefix
        # (uncached prompt head, audio of windows that finished). Everything after is recomputed next step.
        for i, (r, h, t) in enumerate(zip(rows, heads, tails)):
            if r.commit:
                a, e = hc + tm - t, hc + tm - t + r.commit
                r.state.kv = [
                    (torch.cat([lay.keys[i:i + 1, :, hc - h:hc], lay.keys[i:i + 1, :, a:e]], dim=2),
                     torch.cat([lay.values[i:i + 1, :, hc - h:hc], lay.values[i:i + 1, :, a:e]], dim=2))
                    for lay in cache.layers
                ]
            r.state.committed_windows = len(r.state.windows)
        return logits, cache, batch

    @torch.inference_mode()
    def _decode(self, rows: list[_DecodeRow]) -> list[list[int]]:
        """Prefill, then greedy-decode all rows together until EOS, budget or a repetition loop."""
        logits, cache, batch = self._prefill(rows)
        rules = (LOOP_GUARD, TokenBudget()) if self.repetition_guard else (TokenBudget(),)
        decoded = greedy_decode(self.decode_step, cache, batch, [Row(r.max_new, r.forced) for r in rows],
                                lambda sel: logits if sel is None else logits[sel],
                                StopCriteria(frozenset(self.eos_ids), rules), select_rows=_keep_rows)
        return [d.tokens for d in decoded]

    def decode_step(self, input_ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                    cache: Any) -> tuple[torch.Tensor, Any]:
        """One decoder step of the batch: next-token logits and the cache (:data:`~.decoding.DecodeStep`)."""
        return self._forward(self.embed(input_ids), allowed, positions, cache), cache

    def _rows(self, states: list[Qwen3ASRState], final: bool) -> list[_DecodeRow]:
        """Encode what changed and build each utterance's decoder tail."""
        enc = self._encode(states, final=final)
        rows = []
        for s in states:
            forced = [] if final else list(s.agreement.stable)
            emb, commit, stats = self._tail(s, enc[id(s)]["open"], forced)
            stats.update(encoder_frames=enc[id(s)]["frames"], encoder_windows=enc[id(s)]["windows"])
            if final:
                budget = self.max_new_tokens(s.duration_s)
            else:
                budget = min(self.max_new_tokens_per_step, self.max_new_tokens(s.duration_s) - len(forced))
            rows.append(_DecodeRow(s, None, emb, commit, forced, max(0, budget), stats))
        return rows

    def prefill_logits(self, states: list[UtteranceState], final: bool = False) -> torch.Tensor:
        """Next-token logits after the (cached head + recomputed tail) prefill of a step; for tests."""
        return self._prefill(self._rows(list(states), final))[0]  # type: ignore[arg-type]

    def n_kv_shape(self) -> tuple[int, int]:
        tc = self.model.config.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return tc.num_key_value_heads, head_dim

    def _forward(self, x: torch.Tensor, allowed: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.decoder(inputs_embeds=x, attention_mask=additive_mask(allowed, self.dtype), position_ids=pos,
                           cache=cache, use_cache=True)
        return self.lm_head(out.last_hidden_state[:, -1]).float()

    # step / finalize ------------------------------------------------------------------------
    def step(self, states: list[UtteranceState]) -> list[Hypothesis]:
        sts: list[Qwen3ASRState] = list(states)  # type: ignore[arg-type]
        results: dict[int, Hypothesis] = {}
        todo = []
        for s in sts:
            frames = LogMel.stable_frames(len(s.audio))
            if frames == 0:
                results[id(s)] = Hypothesis("", "", stats={"encoder_frames": 0, "decoder_positions": 0})
            elif frames == s._frames_at_last_step and s.last_hypothesis is not None:
                results[id(s)] = s.last_hypothesis
            else:
                s._frames_at_last_step = frames
                todo.append(s)
        if todo:
            rows = self._rows(todo, final=False)
            new_tokens = self._decode(rows)
            for r, new in zip(rows, new_tokens):
                s = r.state
                stable, tail = s.agreement.insert(r.forced + new)
                hyp = self._hypothesis(s, stable, tail)
                hyp.stats.update(r.stats, decoder_positions=r.tail_embeds.shape[0] + len(new),
                                 decoded_tokens=len(new), cached_positions=s.cached_len,
                                 audio_s=round(s.duration_s, 3))
                s.last_hypothesis = hyp
                results[id(s)] = hyp
        return [results[id(s)] for s in sts]

    def finalize(self, states: list[UtteranceState]) -> list[FinalResult]:
        sts: list[Qwen3ASRState] = list(states)  # type: ignore[arg-type]
        live = [s for s in sts if len(s.audio) > 0]
        results: dict[int, FinalResult] = {id(s): self._final(s, "", None, {}) for s in sts}
        if not live:
            return [results[id(s)] for s in sts]
        rows = self._rows(live, final=True)
        for r, toks in zip(rows, self._decode(rows)):
            s = r.state
            language, text = self._parse(s, toks)
            results[id(s)] = self._final(s, text, language, {**r.stats, "tokens": toks, "decoded_tokens": len(toks)})
        return [results[id(s)] for s in sts]

    @staticmethod
    def _final(s: Qwen3ASRState, text: str, language: str | None, stats: dict[str, Any]) -> FinalResult:
        """A final; with word timestamps asked, words spread over the utterance (no forced aligner here)."""
        if not s.options.word_timestamps:
            return FinalResult(text, language, stats=stats)
        return FinalResult(text, language, stats=stats, words=estimated_words(text, 0.0, s.duration_s),
                           word_timing=TIMING_ESTIMATED)

    def warmup(self) -> None:
        s = self.new_utterance(UtteranceOptions(window_s=1))
        s.append_audio(np.zeros(SAMPLE_RATE_HZ, dtype=np.float32))
        saved, self.max_new_tokens_per_step = self.max_new_tokens_per_step, 1
        try:
            self.step([s])
        finally:
            self.max_new_tokens_per_step = saved

    # text ------------------------------------------------------------------------------
    def _split_output(self, s: Qwen3ASRState, toks: list[int]) -> tuple[str | None, list[int]]:
        """(language name, text tokens) of an assistant output ``language X<asr_text>text``."""
        if s.options.language:
            return self._language_name(s.options.language), toks
        marker = self.ids[ASR_TEXT]
        if marker is not None and marker in toks:
            k = toks.index(marker)
            head = self.tokenizer.decode(toks[:k], skip_special_tokens=True).strip()
            name = head[len("language "):].strip() if head.lower().startswith("language ") else head
            if name.lower() == "none":
                name = ""
            return (name or None), toks[k + 1:]
        return None, []  # still inside the language tag: no text yet

    def _parse(self, s: Qwen3ASRState, toks: list[int]) -> tuple[str | None, str]:
        name, text_toks = self._split_output(s, toks)
        text = self.tokenizer.decode(text_toks, skip_special_tokens=True).strip()
        return self._language_code(name), text

    def _hypothesis(self, s: Qwen3ASRState, stable: list[int], tail: list[int]) -> Hypothesis:
        full = stable + tail
        name, text_toks = self._split_output(s, full)
        offset = len(full) - len(text_toks)
        n_stable = max(0, len(stable) - offset)
        # Report stable text only up to a confirmed word boundary, so no half word is ever final.
        cut = 0
        for j in range(n_stable, 0, -1):
            if self._boundary_before(text_toks, j, next_stable=j < n_stable):
                cut = j
                break
        dec = self.tokenizer.decode
        stable_text = dec(text_toks[:cut], skip_special_tokens=True).strip()
        unstable_text = dec(text_toks[cut:], skip_special_tokens=True).strip()
        language = self._language_code(name) if offset <= len(stable) else None
        return Hypothesis(stable_text, unstable_text, language=language)

    def _boundary_before(self, toks: list[int], j: int, next_stable: bool) -> bool:
        """Whether a word surely ends between ``toks[j - 1]`` and ``toks[j]``."""
        prev = self.tokenizer.decode(toks[j - 1:j])
        if "\ufffd" in prev or not prev:
            return False
        c = prev[-1]
        if _is_cjk(c) or not (c.isalnum() or c == "'"):
            return True
        if not next_stable:
            return False
        nxt = self.tokenizer.decode(toks[j:j + 1])
        return nxt[:1].isspace()


def _is_cjk(c: str) -> bool:
    return "CJK" in unicodedata.name(c, "") or "HIRAGANA" in unicodedata.name(c, "") \
        or "KATAKANA" in unicodedata.name(c, "") or "HANGUL" in unicodedata.name(c, "")


LOOP_GUARD = RepetitionGuard(min_repeats=4, min_repeated_tokens=16, max_ngram=8, keep_one_copy=False)
"""Qwen3-ASR's decoder-loop rule: an n-gram (n <= 8) repeated back to back, at least 4 times and 16 tokens;
the row stops with the repeats kept. The guard sees the forced stable prefix too."""


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


def _resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


# --------------------------------------------------------------------------- random models (tests, benchmarks)

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(audio=dict(encoder_layers=2, d_model=64, encoder_attention_heads=4, encoder_ffn_dim=128,
                            output_dim=64, downsample_hidden_size=16),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=None)),
    "0.6b": dict(audio=dict(encoder_layers=18, d_model=896, encoder_attention_heads=14, encoder_ffn_dim=3584,
                            output_dim=1024, downsample_hidden_size=480),
                 text=dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128, vocab_size=151_936)),
    "1.7b": dict(audio=dict(encoder_layers=24, d_model=1024, encoder_attention_heads=16, encoder_ffn_dim=4096,
                            output_dim=2048, downsample_hidden_size=480),
                 text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128, vocab_size=151_936)),
}
"""Real Qwen3-ASR sizes (and a tiny one) for models with random weights."""

_TOKENIZER_CORPUS = (
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country "
    "language english chinese german french the quick brown fox jumps over the lazy dog speech recognition "
    "streaming server window seconds hello world one two three four five six seven eight nine ten "
)


def tiny_tokenizer() -> Any:
    """A small byte-level BPE tokenizer with the Qwen3-ASR special tokens (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [ENDOFTEXT, IM_START, IM_END, AUDIO_START, AUDIO_END, AUDIO_PAD, ASR_TEXT]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TOKENIZER_CORPUS] * 4, trainer)
    # Named like the real checkpoint's tokenizer, so Qwen3ASRProcessor accepts it too.
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   extra_special_tokens={"audio_token": AUDIO_PAD, "audio_bos_token": AUDIO_START,
                                                         "audio_eos_token": AUDIO_END})


def random_model(arch: str = "tiny", tokenizer: Any = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                 n_window_infer: int = 800) -> tuple[Any, Any]:
    """A Qwen3-ASR model with random weights and the real code path, plus a tokenizer for it."""
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    tokenizer = tokenizer or tiny_tokenizer()
    spec = ARCHITECTURES[arch]
    text = dict(spec["text"])
    text["vocab_size"] = text["vocab_size"] or len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_PAD, IM_END, ENDOFTEXT)}
    config = Qwen3ASRConfig(
        audio_config=dict(spec["audio"], num_mel_bins=128, n_window=50, n_window_infer=n_window_infer),
        text_config=dict(text, max_position_embeddings=65536, tie_word_embeddings=True, rope_theta=1_000_000),
        audio_token_id=ids[AUDIO_PAD], pad_token_id=ids[ENDOFTEXT],
        eos_token_id=(ids[ENDOFTEXT], ids[IM_END]),
    )
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config).to(dtype).eval()
    return model, tokenizer
