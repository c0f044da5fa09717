"""Qwen3ASRBackend: the incremental encoder, the kept decoder cache and LocalAgreement tied together.

**Agreement policy.** LocalAgreement-2 on token ids (``streaming.stability``): tokens two consecutive
hypotheses agree on become stable and are forced as the decoder prefix from then on (see the package
docstring for why). **Word timestamps.** No forced aligner is loaded, so a final that asks for words gets
them spread over the utterance by character length, and its ``word_timing`` says they are an estimate.
"""

from __future__ import annotations

import copy

from typing import Any

import numpy as np
import torch

from streaming.models.base import (
    SAMPLE_RATE_HZ,
    Backend,
    FinalResult,
    Hypothesis,
    OptionError,
    UtteranceOptions,
    UtteranceState,
)
from streaming.models.qwen3_asr.decoder import DecodeRow, RowDecoder, stop_criteria
from streaming.models.qwen3_asr.encoder import WindowEncoder
from streaming.models.qwen3_asr.features import LogMel
from streaming.models.qwen3_asr.slot_decoder import SlotRowDecoder
from streaming.models.qwen3_asr.state import Qwen3ASRState
from streaming.models.qwen3_asr.text import ENDOFTEXT, IM_END, Qwen3Text
from streaming.models.timing import TIMING_ESTIMATED, estimated_words

HUB_NAMES = {"0.6b": "Qwen/Qwen3-ASR-0.6B-hf", "1.7b": "Qwen/Qwen3-ASR-1.7B-hf"}


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


class Qwen3ASRBackend(Backend):
    """Qwen3-ASR (0.6B / 1.7B) with an incremental encoder and a kept decoder cache."""

    multilingual = True
    supports_window = True

    def __init__(self, model: Any, processor_or_tokenizer: Any, device: str = "cpu",
                 dtype: torch.dtype | str | None = None, window_s: int = 4, threads: int | None = None,
                 max_utterance_s: float = 60.0, max_new_tokens_per_step: int = 32,
                 max_tokens_per_audio_s: float = 12.0, repetition_guard: bool = True,
                 kv_cache: str = "auto", max_streams: int = 256, cuda_graphs: bool = True,
                 name: str = "qwen3-asr") -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(_resolve_device(device))
        self.dtype = _resolve_dtype(dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        self.text = Qwen3Text(self.tokenizer)
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
        self.window_encoder = WindowEncoder(self.encoder, self.projector, self.logmel, self.device, self.dtype)
        self.row_decoder = self._row_decoder(kv_cache, max_streams, cuda_graphs)
        self.ids = self.text.ids
        eos = cfg.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = {int(e) for e in eos if e is not None}
        """End-of-text ids, read at every decode (tests may swap them)."""
        self.eos_ids |= {self.ids[IM_END], self.ids[ENDOFTEXT]} - {None, self.tokenizer.unk_token_id}
        self.language_names = self.text.language_names

    # construction ---------------------------------------------------------------
    def _row_decoder(self, kv_cache: str, max_streams: int, cuda_graphs: bool) -> RowDecoder:
        """Static KV slots (+ CUDA graphs) by default on CUDA; the dynamic cache elsewhere (CPU unchanged)."""
        if kv_cache not in ("auto", "static", "dynamic"):
            raise ValueError(f"kv_cache must be auto, static or dynamic, got {kv_cache!r}")
        tc = self.model.config.text_config
        if kv_cache == "static" or (kv_cache == "auto" and self.device.type == "cuda"):
            return SlotRowDecoder(self.decoder, self.lm_head, tc, self.device, self.dtype, int(max_streams),
                                  self.max_utterance_s, self.max_tokens_per_audio_s, cuda_graphs=cuda_graphs)
        return RowDecoder(self.decoder, self.lm_head, tc, self.device, self.dtype)

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
        self.check_task(options)
        w = options.window_s
        if w is not None:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or float(w) != int(w) or not 1 <= w <= 8:
                raise OptionError(f"window_s must be a whole number of seconds from 1 to 8, got {w!r}")
        if options.language is not None and self.text.language_name(options.language) is None:
            raise OptionError(f"unsupported language {options.language!r}")

    def prompt_ids(self, options: UtteranceOptions) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio tokens, as the official chat template lays them out."""
        return self.text.prompt_ids(options)

    def new_utterance(self, options: UtteranceOptions) -> Qwen3ASRState:
        self.validate_options(options)
        head, suffix = self.prompt_ids(options)
        window_s = int(options.window_s or self.default_window_s)
        return Qwen3ASRState(options, window_s, head, suffix, self.logmel.mel_filters.shape[1])

    def max_new_tokens(self, duration_s: float) -> int:
        """Decode budget of a whole utterance: a guard against repetition loops."""
        return int(16 + self.max_tokens_per_audio_s * duration_s)

    # encoder and decoder ------------------------------------------------------------------
    def encode_windows(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Projected audio embeddings of independent attention windows, packed into one pass."""
        return self.window_encoder.encode_windows(features)

    def _rows(self, states: list[Qwen3ASRState], final: bool) -> list[DecodeRow]:
        """Encode what changed and build each utterance's decoder tail."""
        enc = self.window_encoder.encode(states, final=final)
        rows = []
        for s in states:
            forced = [] if final else list(s.agreement.stable)
            emb, commit, stats = self.row_decoder.tail(s, enc[id(s)]["open"], forced)
            stats.update(encoder_frames=enc[id(s)]["frames"], encoder_windows=enc[id(s)]["windows"])
            if final:
                budget = self.max_new_tokens(s.duration_s)
            else:
                budget = min(self.max_new_tokens_per_step, self.max_new_tokens(s.duration_s) - len(forced))
            rows.append(DecodeRow(s, None, emb, commit, forced, max(0, budget), stats))
        return rows

    def _prefill(self, rows: list[DecodeRow]) -> tuple[torch.Tensor, Any, Any]:
        """Logits, batch cache and ragged batch after the rows' prefill (:meth:`RowDecoder.prefill`)."""
        return self.row_decoder.prefill(rows)

    def _decode(self, rows: list[DecodeRow]) -> list[list[int]]:
        """Every row's new tokens: prefill, then the shared greedy loop with this backend's stop rules."""
        return self.row_decoder.decode(rows, stop_criteria(self.eos_ids, self.repetition_guard))

    def _forward(self, x: torch.Tensor, allowed: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.row_decoder.forward(x, allowed, pos, cache)

    def prefill_logits(self, states: list[UtteranceState], final: bool = False) -> torch.Tensor:
        """Next-token logits after the (cached head + recomputed tail) prefill of a step; for tests."""
        return self._prefill(self._rows(list(states), final))[0]  # type: ignore[arg-type]

    def n_kv_shape(self) -> tuple[int, int]:
        return self.row_decoder.kv_shape

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
            for r, new in zip(rows, new_tokens, strict=True):
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
        for r, toks in zip(rows, self._decode(rows), strict=True):
            s = r.state
            language, text = self._parse(s, toks)
            results[id(s)] = self._final(s, text, language, {**r.stats, "tokens": toks, "decoded_tokens": len(toks)})
            SlotRowDecoder.release(s)
        return [results[id(s)] for s in sts]

    def finalize_open(self, states: list[UtteranceState]) -> list[FinalResult]:
        """Finals of copies: a final pads the audio and closes the open window, and the utterance
        goes on. The static KV path cannot copy a slot, so it has no eager decodes (``supports_eager``)."""
        if not self.supports_eager:
            raise NotImplementedError("eager decodes need the dynamic KV cache")
        return self.finalize([copy.deepcopy(s) for s in states])

    @property
    def supports_eager(self) -> bool:
        return not isinstance(self.row_decoder, SlotRowDecoder)

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
        if isinstance(self.row_decoder, SlotRowDecoder):
            self.row_decoder.warmup()

    # text ------------------------------------------------------------------------------
    def _parse(self, s: Qwen3ASRState, toks: list[int]) -> tuple[str | None, str]:
        """(language code, text) of a final's output tokens."""
        return self.text.parse(s.options.language, toks)

    def _hypothesis(self, s: Qwen3ASRState, stable: list[int], tail: list[int]) -> Hypothesis:
        return self.text.hypothesis(s.options.language, stable, tail)
