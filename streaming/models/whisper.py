"""Any transformers Whisper model behind the :class:`~streaming.models.base.Backend` interface.

Partials re-decode the whole open utterance every step (greedy, the already
stable tokens forced as a prefix) and LocalAgreement-2 over words decides what
becomes stable. Finals are one full greedy decode without forced prefix, as in
offline transcription. Encoder passes are batched over all utterances of a
call; the greedy decoder is batched over rows of different prompt lengths with
one KV cache and a per-row attention mask.

Whisper's encoder only accepts 30 s of features, so every pass costs a full
encoder run whatever the utterance length: this is why ``max_utterance_s`` is
30 and why batching the encoder over sessions matters.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from streaming.models import timing
from streaming.models.base import (
    SAMPLE_RATE_HZ,
    Backend,
    FinalResult,
    Hypothesis,
    OptionError,
    UtteranceOptions,
    UtteranceState,
    Word,
)
from streaming.models.decoding import (
    RaggedBatch,
    RepetitionGuard,
    Row,
    StopCriteria,
    SuppressTokens,
    TokenBudget,
    additive_mask,
    greedy_decode,
)
from streaming.models.options import WhisperDecodingOptions  # defined torch-free (the config reads it); re-exported
from streaming.stability import LocalAgreement

if TYPE_CHECKING:
    from streaming.models.embedded import WhisperAssets

log = logging.getLogger(__name__)

# Scripts written without spaces between words: stability units are characters there.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue", "bo", "km"})
_BPE_SPACES = frozenset("ĠĊĉ")
"""How byte-level BPE token strings spell a space, a newline and a tab."""


@dataclass
class _Decoded:
    """One row's greedy decode."""

    tokens: list[int]
    """Generated text tokens (forced prefix excluded, EOT excluded)."""
    stop: str
    """``"eot"``, ``"cap"`` or ``"loop"``."""
    no_speech_prob: float
    avg_logprob: float
    token_logprobs: list[float]
    """Log-probability of each of :attr:`tokens` when it was chosen."""


def _no_work() -> dict[str, Any]:
    """Stats of a row answered without running the model (silence)."""
    return {"encoder_ms": 0.0, "decode_ms": 0.0, "tokens": 0}


class WhisperUtteranceState(UtteranceState):
    """Audio of one open utterance plus its stability buffer and cached encoder output."""

    def __init__(self, options: UtteranceOptions, language: str | None, agreement_n: int) -> None:
        super().__init__()
        self.options = options
        self.language = language
        """Given, detected-and-locked, or ``None`` while still undecided."""
        self.language_locked = language is not None
        self.agreement: LocalAgreement[str] = LocalAgreement(n=agreement_n)
        self.stable_tokens: list[int] = []
        """Token ids of the stable words, forced as prefix of every partial decode."""
        self.encoded: tuple[int, torch.Tensor] | None = None
        """(samples encoded, encoder output [1500, d]) so a finalize right after a step skips the encoder."""
        self.context_tokens: list[int] = []
        """``<|startofprev|>`` and the prompt's text tokens, placed before the start-of-transcript
        prefix of every decode of this utterance (partials and final alike); empty without context."""


class LogMel:
    """Whisper's log-mel features with torch's STFT, padded to the 30 s the encoder requires.

    Matches ``WhisperFeatureExtractor`` (zero-padding to 30 s, reflect-centred
    frames, dynamic range of 8 log10 units) but only transforms the audio that
    exists: frames past the end of the audio are pure silence and are filled in.
    A shorter ``frames`` (a partial's window) gives the first frames of the same
    30 s features, as long as the audio ends inside the window.
    """

    def __init__(self, feature_extractor: Any, device: torch.device) -> None:
        self.n_fft = int(feature_extractor.n_fft)
        self.hop = int(feature_extractor.hop_length)
        self.frames = int(feature_extractor.nb_max_frames)
        self.max_samples = int(feature_extractor.n_samples)
        self.device = device
        filters = np.asarray(feature_extractor.mel_filters, dtype=np.float32)  # [n_fft/2+1, n_mels]
        self.mel = torch.from_numpy(filters).T.contiguous().to(device)
        self.window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32, device=device)

    def __call__(self, audios: list[np.ndarray], frames: int | None = None) -> torch.Tensor:
        """Features [B, n_mels, frames] (float32) of each audio, truncated to ``frames`` (default 30 s)."""
        frames = self.frames if frames is None else min(int(frames), self.frames)
        if frames < 1:
            raise ValueError(f"a feature window has at least one frame, got {frames}")
        audios = [a[: min(self.max_samples, frames * self.hop)] for a in audios]
        longest = max(a.size for a in audios)
        half = self.n_fft // 2
        # Enough zeros after the audio that every frame touching it is computed
        # without the reflect padding at the end; later frames are silence.
        length = self.hop * math.ceil((longest + half) / self.hop) + half
        length = min(length, self.max_samples)
        wave = torch.zeros(len(audios), length, dtype=torch.float32)
        for i, a in enumerate(audios):
            wave[i, : a.size] = torch.from_numpy(a)
        wave = wave.to(self.device)
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)
        power = stft.real.square() + stft.imag.square()  # [B, n_fft/2+1, T]
        if length < self.max_samples:
            computed = (length - half) // self.hop + 1  # frames whose window ends inside `length`
        else:
            computed = self.frames  # a full 30 s: the same reflect padding as the extractor
        computed = min(computed, frames)
        mel = torch.matmul(self.mel, power[:, :, :computed])
        log_spec = torch.clamp(mel, min=1e-10).log10()
        feats = torch.full((len(audios), self.mel.shape[0], frames), -10.0, device=self.device)
        feats[:, :, :computed] = log_spec
        peak = feats.amax(dim=(1, 2), keepdim=True)
        feats = torch.maximum(feats, peak - 8.0)
        return (feats + 4.0) / 4.0


def quantize_linear_int8(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose linear layers are int8 (dynamic quantization: activations scaled per call)."""
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao, not gone
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def encode_window(encoder: torch.nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """A Whisper encoder's output [B, T/2, d] for features of any length T up to 30 s ([B, n_mels, T]).

    transformers' forward refuses anything but 3000 frames, so this runs the same
    modules itself: conv stem, the first T/2 positional embeddings, the layers.
    """
    hidden = torch.nn.functional.gelu(encoder.conv1(feats))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    if hidden.shape[1] > encoder.embed_positions.num_embeddings:
        raise ValueError(f"{feats.shape[-1]} frames is longer than the encoder's window")
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def partial_window_s(duration_s: float, window_step_s: float, pad_s: float, max_s: float = 30.0) -> float:
    """Seconds of features a partial encodes: its audio and ``pad_s`` of silence, rounded up to ``window_step_s``.

    The encoder's cost grows with its input, and Whisper is trained on 30 s of
    which speech is followed by silence, so a partial takes a shorter window
    that still ends in silence. ``window_step_s`` 0 is the full ``max_s``.
    """
    if window_step_s < 0 or pad_s < 0 or duration_s < 0:
        raise ValueError(f"a window needs non-negative sizes, got {duration_s=} {window_step_s=} {pad_s=}")
    if window_step_s == 0:
        return max_s
    steps = math.ceil((duration_s + pad_s) / window_step_s - 1e-9)  # 4 s + 1 s is one 5 s step, not two
    return min(max_s, window_step_s * max(1, steps))


LOOP_GUARD = RepetitionGuard(min_repeats=3, min_repeated_tokens=12, max_ngram=12, keep_one_copy=True)
"""Whisper's decoder-loop rule: an n-gram repeated back-to-back at the end (12x for single tokens,
6x for pairs, 4x for triples, 3x for longer ones) is a loop; one copy is kept."""


def find_loop(tokens: list[int], max_ngram: int = 12) -> int | None:
    """Length to truncate ``tokens`` to if they end in a repetition loop (:data:`LOOP_GUARD`), else ``None``."""
    return dataclasses.replace(LOOP_GUARD, max_ngram=max_ngram).find(tokens)


class WhisperBackend(Backend):
    """Streaming Whisper: batched re-decoding for partials, a clean full decode for finals.

    Call it from one thread only (the engine's worker), as every backend;
    ``threads`` sets torch's process-wide intra-op thread count.
    ``UtteranceOptions.context`` (hotwords, terms) is a prompt, as openai/whisper's
    ``initial_prompt``: ``<|startofprev|>`` and its tokens before the
    start-of-transcript prefix, truncated to its last 223 tokens; the
    transcript is only what the model writes after the prefix.
    ``previous_text`` follows it only with ``prompt_previous_text``.
    Stats: ``encoder_ms`` and ``decode_ms`` are wall times of the whole batch,
    ``tokens`` the row's generated tokens, ``batch`` the number of rows decoded.
    """

    supports_window = False
    max_utterance_s = 30.0

    @property
    def final_reuses_partial(self) -> bool:  # type: ignore[override]
        """A final encodes the partials' window (``final_window_s`` = ``partial_window_s``), so right after
        a partial of the same audio it skips the encoder (:meth:`_encode`)."""
        return self.decoding.final_window_s == self.decoding.partial_window_s

    def __init__(self, assets: WhisperAssets, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 threads: int | None = None, decoding: WhisperDecodingOptions | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        if threads:
            torch.set_num_threads(int(threads))
        self.decoding = decoding or WhisperDecodingOptions()
        self.assets = assets
        self.name = assets.name if assets.name.startswith("whisper") else f"whisper-{assets.name}"
        self.multilingual = bool(assets.multilingual)
        self.tokenizer = assets.tokenizer
        quantize = self.decoding.quantize
        int8_ok = self.device.type == "cpu" and dtype == torch.float32
        if quantize in ("encoder", "all") and not int8_ok:
            raise ValueError(f"quantize={quantize!r} is int8 for float32 on CPU; got {dtype} on {self.device}")
        if quantize == "partials" and not int8_ok:
            quantize = "none"  # the default: torch's int8 kernels are CPU ones, so a GPU keeps its float encoder
        self.model = assets.model.to(device=self.device, dtype=dtype).eval()
        if quantize in ("encoder", "all"):
            self.model = copy.deepcopy(self.model)  # the assets' model stays float32 for other backends
            self.model.model.encoder = quantize_linear_int8(self.model.model.encoder)
            if quantize == "all":
                self.model.model.decoder = quantize_linear_int8(self.model.model.decoder)
        self.encoder = self.model.get_encoder()
        self.decoder = self.model.get_decoder()
        self._partial_encoder = quantize_linear_int8(self.encoder) if quantize == "partials" else self.encoder
        """The encoder of short-window partials (an int8 copy with ``quantize="partials"`` on CPU)."""
        self.proj_weight = self.model.get_output_embeddings().weight  # [V, d]
        # On CPU a vector times a contiguous [d, V] matrix is ~3x faster than
        # F.linear's path for one row (measured with MKL); costs one copy of the
        # projection (80 MB for tiny.en, 106 MB for base).
        self._proj_t = self.proj_weight.detach().T.contiguous() if self.device.type == "cpu" else None
        self.log_mel = LogMel(assets.feature_extractor, self.device)
        self._encoder_stride = int(self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0])
        """Mel frames per encoder position (2): windows are whole multiples of it."""

        self.sot_id = int(assets.sot_id)
        self.eot_id = int(assets.eot_id)
        self.transcribe_id = assets.transcribe_id
        self.translate_id = assets.translate_id
        self.no_timestamps_id = int(assets.no_timestamps_id)
        self.lang_token_ids = dict(assets.lang_token_ids) if self.multilingual else {}
        self._lang_codes = list(self.lang_token_ids)
        self._lang_ids = torch.tensor([self.lang_token_ids[c] for c in self._lang_codes], dtype=torch.long,
                                      device=self.device)
        self.no_speech_id = self._find_no_speech_id()
        self.sot_prev_id = assets.sot_prev_id
        self.max_positions = int(self.model.config.max_target_positions)
        """Decoder positions (448): context, prefix and text tokens together must fit."""

        vocab = self.proj_weight.shape[0]
        # Text tokens are those below EOT; every special token (SOT, languages,
        # tasks, timestamps) is suppressed, plus the model's non-speech symbols.
        suppress = torch.zeros(vocab, dtype=torch.bool)
        suppress[self.eot_id + 1:] = True
        suppress[[i for i in assets.suppress_ids if 0 <= i < vocab]] = True
        suppress[self.eot_id] = False
        self._suppress = suppress.to(self.device)
        begin = suppress.clone()
        begin[[i for i in assets.suppress_ids_begin if 0 <= i < vocab]] = True
        self._suppress_begin = begin.to(self.device)
        self._id_text: dict[int, str] = {}
        self.alignment_heads = list(assets.alignment_heads)
        self.word_timing = timing.TIMING_ALIGNMENT_HEADS if assets.alignment_heads_known \
            else timing.TIMING_FALLBACK_HEADS
        """What :attr:`FinalResult.word_timing` says: known alignment heads, or the fallback."""

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_embedded(cls, name: str = "tiny.en", *, cache_dir: str | Path | None = None, use_cache: bool = True,
                      **kw: Any) -> WhisperBackend:
        """A backend on one of the Whisper models shipped with the project (no network)."""
        from streaming.models.embedded import load_embedded_whisper

        return cls(load_embedded_whisper(name, cache_dir=cache_dir, use_cache=use_cache), **kw)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, threads: int | None = None,
                        decoding: WhisperDecodingOptions | None = None, **hf_kwargs: Any) -> WhisperBackend:
        """A backend on a transformers Whisper checkpoint (local folder or hub id; ``hf_kwargs`` go to transformers)."""
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

        from streaming.models.embedded import whisper_assets_from_pretrained

        model = WhisperForConditionalGeneration.from_pretrained(str(name_or_path), **hf_kwargs)
        tokenizer = WhisperTokenizerFast.from_pretrained(str(name_or_path), **hf_kwargs)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(str(name_or_path), **hf_kwargs)
        name = Path(str(name_or_path).rstrip("/")).name.removeprefix("whisper-")
        assets = whisper_assets_from_pretrained(model, tokenizer, feature_extractor, name)
        return cls(assets, device=device, dtype=dtype, threads=threads, decoding=decoding)

    # ------------------------------------------------------------------ Backend API

    @property
    def supports_translate(self) -> bool:  # type: ignore[override]
        """Multilingual checkpoints have ``<|translate|>``: English text from any language."""
        return self.multilingual and self.translate_id is not None

    def validate_options(self, options: UtteranceOptions) -> None:
        self.check_task(options)
        self._check_context(options)
        if options.window_s is not None:
            raise OptionError(f"{self.name} has no encoder window; window_s is not supported")
        lang = options.language
        if lang is None:
            return
        if not self.multilingual:
            if lang != "en":
                raise OptionError(f"{self.name} is English-only; language {lang!r} is not supported")
            return
        if lang not in self.lang_token_ids:
            raise OptionError(f"unknown language {lang!r} for {self.name}")

    def _check_context(self, options: UtteranceOptions) -> None:
        if options.context and options.context.strip() and self.sot_prev_id is None:
            raise OptionError(f"{self.name}'s tokenizer has no <|startofprev|> token; context is not supported")

    def new_utterance(self, options: UtteranceOptions) -> WhisperUtteranceState:
        self.validate_options(options)
        language = options.language if self.multilingual else "en"
        st = WhisperUtteranceState(options, language, self.decoding.agreement_n)
        st.context_tokens = self._context_tokens(options)
        return st

    def _audible(self, states: list[WhisperUtteranceState]) -> list[int]:
        """Indices of the states with audio above the silence peak; the others skip the model."""
        return [i for i, st in enumerate(states) if st.num_samples and st.peak >= self.decoding.silence_peak]

    def step(self, states: list[WhisperUtteranceState]) -> list[Hypothesis]:  # type: ignore[override]
        active = self._audible(states)
        results: list[Hypothesis | None] = [
            None if i in active else Hypothesis(self._decode_text(st.stable_tokens), "", st.language, _no_work())
            for i, st in enumerate(states)]
        if active:
            rows = [states[i] for i in active]
            with torch.inference_mode():
                frames = self._partial_frames(rows)
                enc, enc_ms = self._encode(rows, frames)
                t0 = time.perf_counter()
                self._detect_language(rows, enc, lock=True)
                prompts = [self._prompt(st) + st.stable_tokens for st in rows]
                caps = [max(0, self._token_cap(st) - len(st.stable_tokens)) for st in rows]
                decoded = self._greedy(enc, prompts, caps, self._suppress)
                dec_ms = (time.perf_counter() - t0) * 1000
            for i, st, d in zip(active, rows, decoded, strict=True):
                stats = {"encoder_ms": enc_ms, "decode_ms": dec_ms, "tokens": len(d.tokens), "batch": len(rows),
                         "stable_tokens": len(st.stable_tokens), "stop": d.stop}
                results[i] = self._agree(st, d, stats)
        return results  # type: ignore[return-value]

    def finalize(self, states: list[WhisperUtteranceState]) -> list[FinalResult]:  # type: ignore[override]
        active = self._audible(states)
        results: list[FinalResult | None] = [
            None if i in active else self._final("", st, _no_work(), []) for i, st in enumerate(states)]
        if active:
            rows = [states[i] for i in active]
            with torch.inference_mode():
                enc, enc_ms = self._encode(rows, self._short_frames(rows, self.decoding.final_window_s))
                t0 = time.perf_counter()
                self._detect_language(rows, enc, lock=False)
                prompts = [self._prompt(st) for st in rows]
                caps = [self._token_cap(st) for st in rows]
                cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = \
                    [] if any(st.options.word_timestamps for st in rows) else None
                decoded = self._greedy(enc, prompts, caps, self._suppress, self._suppress_begin, cross_kv)
                dec_ms = (time.perf_counter() - t0) * 1000
                tokens = [[] if self._is_silence(d) else d.tokens for d in decoded]
                # Word timings cost one more (short) decoder pass, only for the rows that ask for them.
                timed = [k for k, st in enumerate(rows) if st.options.word_timestamps and tokens[k]]
                t0 = time.perf_counter()
                words: dict[int, list[Word]] = {}
                if timed and cross_kv:
                    sel = torch.tensor(timed, device=self.device)
                    aligned = self._align_words([rows[k] for k in timed], enc.index_select(0, sel),
                                                [tokens[k] for k in timed],
                                                [decoded[k].token_logprobs for k in timed],
                                                [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in cross_kv])
                    words = dict(zip(timed, aligned, strict=True))
                align_ms = (time.perf_counter() - t0) * 1000
            for k, (i, st, d) in enumerate(zip(active, rows, decoded, strict=True)):
                stats = {"encoder_ms": enc_ms, "decode_ms": dec_ms, "tokens": len(d.tokens), "batch": len(rows),
                         "stop": d.stop, "no_speech_prob": round(d.no_speech_prob, 3),
                         "avg_logprob": round(d.avg_logprob, 3)}
                if k in words:
                    stats["align_ms"] = align_ms
                results[i] = self._final(self._final_text(tokens[k]), st, stats, words.get(k, []))
                st.encoded = None  # the utterance is closed: free the encoder output
        return results  # type: ignore[return-value]

    def _final(self, text: str, st: WhisperUtteranceState, stats: dict[str, Any], words: list[Word]) -> FinalResult:
        """A final, with its words when the utterance asked for word timestamps."""
        if not st.options.word_timestamps:
            return FinalResult(text, st.language, stats)
        return FinalResult(text, st.language, stats, words=words, word_timing=self.word_timing)

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        st = self.new_utterance(UtteranceOptions(language="en" if not self.multilingual else None))
        st.append_audio((0.05 * rng.standard_normal(SAMPLE_RATE_HZ)).astype(np.float32))
        self.step([st])
        self.finalize([st])

    # ------------------------------------------------------------------ internals

    def _find_no_speech_id(self) -> int | None:
        unk = self.tokenizer.unk_token_id
        for token in ("<|nospeech|>", "<|nocaptions|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != unk and tid < self.proj_weight.shape[0]:
                return tid
        return None

    def _token_cap(self, st: WhisperUtteranceState) -> int:
        d = self.decoding
        room = self.max_positions - len(st.context_tokens) - len(self._sot_sequence(st))
        return min(d.max_tokens, int(st.duration_s * d.tokens_per_s) + d.token_margin, room)

    def _context_tokens(self, options: UtteranceOptions) -> list[int]:
        """``<|startofprev|>`` + the prompt tokens: the context, then (optionally) the previous text.

        At most half the decoder positions less one (223 of 448), as openai/whisper:
        the context's last tokens, then as many of the previous text's last tokens
        as fit. Special tokens a client spells out in the text are dropped.
        """
        limit = self.max_positions // 2 - 1
        context = self._text_tokens(options.context)[-limit:]
        previous = self._text_tokens(options.previous_text) if self.decoding.prompt_previous_text else []
        room = limit - len(context)
        tokens = context + (previous[len(previous) - room:] if room > 0 and previous else [])
        if not tokens or self.sot_prev_id is None:
            return []
        return [self.sot_prev_id, *tokens]

    def _text_tokens(self, text: str | None) -> list[int]:
        if not text or not text.strip():
            return []
        ids = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        return [int(t) for t in ids if t < self.eot_id]

    def _prompt(self, st: WhisperUtteranceState) -> list[int]:
        """What every decode of ``st`` starts from: its context tokens and the start-of-transcript prefix."""
        return st.context_tokens + self._sot_sequence(st)

    def _sot_sequence(self, st: WhisperUtteranceState) -> list[int]:
        """``<|startoftranscript|>`` [language, task] ``<|notimestamps|>``."""
        prompt = [self.sot_id]
        if self.multilingual:
            prompt.append(self.lang_token_ids[st.language or "en"])
            task_id = self.translate_id if st.options.task == "translate" else self.transcribe_id
            if task_id is not None:
                prompt.append(int(task_id))
        prompt.append(self.no_timestamps_id)
        return prompt

    def _encode(self, states: list[WhisperUtteranceState], frames: int | None = None) -> tuple[torch.Tensor, float]:
        """Encoder outputs [B, frames/2, d] for ``states`` (default 30 s: [B, 1500, d]).

        An encoding is reused when neither the audio nor the window changed (a
        final right after a partial over the full window skips the encoder).
        """
        t0 = time.perf_counter()
        frames = self.log_mel.frames if frames is None else frames
        positions = frames // self._encoder_stride
        todo = [st for st in states if st.encoded is None or st.encoded[0] != st.num_samples
                or st.encoded[1].shape[0] != positions]
        if todo:
            feats = self.log_mel([st.audio for st in todo], frames).to(self.dtype)
            out = self._run_encoder(feats)
            for st, row in zip(todo, out, strict=True):
                st.encoded = (st.num_samples, row)
        enc = torch.stack([st.encoded[1] for st in states])  # type: ignore[index]
        return enc, (time.perf_counter() - t0) * 1000

    def _run_encoder(self, feats: torch.Tensor) -> torch.Tensor:
        """Encoder output [B, T/2, d] of features [B, n_mels, T]: the full window through transformers'
        own forward (finals as ever), a short one (partials) through :func:`encode_window`."""
        if feats.shape[-1] == self.log_mel.frames:
            return self.encoder(feats).last_hidden_state
        if self._partial_encoder is self.encoder:
            return encode_window(self.encoder, feats)
        # int8 scales each activation tensor by its own range: one row at a time, so that a row's
        # partial does not depend on the rows batched with it.
        return torch.cat([encode_window(self._partial_encoder, row[None]) for row in feats])

    def _partial_frames(self, states: list[WhisperUtteranceState]) -> int:
        """Mel frames a batch of partials encodes: the longest row's window, the full 30 s while a
        language is undecided (the language a partial locks is the final's, so it is read as a final would)."""
        return self._short_frames(states, self.decoding.partial_window_s)

    def _short_frames(self, states: list[WhisperUtteranceState], window_step_s: float) -> int:
        """Mel frames of a short window of ``window_step_s`` steps over the batch's longest row (0 = 30 s)."""
        full = self.log_mel.frames
        if window_step_s == 0 or any(not st.language_locked for st in states):
            return full
        d = self.decoding
        max_s = self.log_mel.max_samples / SAMPLE_RATE_HZ
        window = partial_window_s(max(st.duration_s for st in states), window_step_s, d.partial_pad_s, max_s)
        frames = math.ceil(window * full / max_s / self._encoder_stride) * self._encoder_stride
        return min(full, frames)

    def _detect_language(self, states: list[WhisperUtteranceState], enc: torch.Tensor, lock: bool) -> None:
        """Pick the language of undecided rows from the decoder's first step over language tokens.

        Partials (``lock``) keep a language once ``language_lock_s`` of audio chose it; a final
        (``lock`` false) detects it again over its whole audio unless the session fixed it, as an
        offline decode of the utterance would (a second of speech can pass for another language)."""
        rows = [i for i, st in enumerate(states)
                if not st.language_locked or (not lock and st.options.language is None)]
        if not rows or not self.multilingual:
            return
        idx = torch.tensor(rows, device=self.device)
        ids = torch.full((len(rows), 1), self.sot_id, dtype=torch.long, device=self.device)
        hidden = self.decoder(input_ids=ids, encoder_hidden_states=enc.index_select(0, idx),
                              use_cache=False).last_hidden_state[:, -1]
        lang_logits = torch.nn.functional.linear(hidden, self.proj_weight.index_select(0, self._lang_ids))
        best = lang_logits.float().argmax(dim=-1).tolist()
        for r, b in zip(rows, best, strict=True):
            st = states[r]
            st.language = self._lang_codes[b]
            if not lock or st.duration_s >= self.decoding.language_lock_s:
                st.language_locked = True

    def _greedy(self, enc: torch.Tensor, prompts: list[list[int]], caps: list[int], suppress: torch.Tensor,
                suppress_begin: torch.Tensor | None = None,
                cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[_Decoded]:
        """Batched greedy decoding of rows with prompts of different lengths (:mod:`.decoding`).

        The prompts are right-padded into one prefill; the cache then holds
        padding columns that a per-row mask hides, and each row's positions
        count only its real tokens, so every row computes exactly what it would
        alone. Rows that finish are dropped from the cache. ``cross_kv``, when
        given, receives each layer's cross-attention keys and values of all rows.
        """
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        B = len(prompts)
        dev = self.device
        batch, prefill = RaggedBatch.prefill([0] * B, [len(p) for p in prompts], pad_new="right", device=dev)
        ids = torch.full(prefill.positions.shape, self.eot_id, dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        hidden = self.decoder(input_ids=ids, encoder_hidden_states=enc, cache=cache, use_cache=True,
                              position_ids=prefill.positions,
                              attention_mask=self._additive(prefill.allowed)).last_hidden_state
        if cross_kv is not None:  # reordering below makes new tensors: these stay whole
            cross_kv.extend((layer.keys, layer.values) for layer in cache.cross_attention_cache.layers)

        # No-speech probability: the distribution right after <|startoftranscript|> (after any context).
        no_speech = [0.0] * B
        if self.no_speech_id is not None:
            sot_at = torch.tensor([p.index(self.sot_id) for p in prompts], device=dev)
            sot_logits = self._logits(hidden[torch.arange(B, device=dev), sot_at])
            no_speech = sot_logits.softmax(-1)[:, self.no_speech_id].tolist()
        last = hidden[torch.arange(B, device=dev), prefill.last]  # [B, d]

        def step(ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                 past: Any) -> tuple[torch.Tensor, Any]:
            cache, enc = past
            hidden = self.decoder(input_ids=ids, encoder_hidden_states=enc, cache=cache, use_cache=True,
                                  position_ids=positions, attention_mask=self._additive(allowed)).last_hidden_state
            return self._logits(hidden[:, -1]), past

        def select(past: Any, rows: torch.Tensor) -> Any:
            cache, enc = past
            cache.reorder_cache(rows)
            return cache, enc[rows]

        stop = StopCriteria(frozenset({self.eot_id}), (LOOP_GUARD, TokenBudget()))
        decoded = greedy_decode(step, (cache, enc), batch, [Row(cap) for cap in caps],
                                lambda rows: self._logits(last if rows is None else last[rows]), stop,
                                logit_filter=SuppressTokens(suppress, suppress_begin), with_logprobs=True,
                                select_rows=select)
        return [_Decoded(d.tokens, "eot" if d.stop == "eos" else d.stop, float(no_speech[r]),
                         d.logprob_sum / max(1, len(d.tokens)), d.token_logprobs) for r, d in enumerate(decoded)]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (float32) of hidden states [B, d]: the costliest part of a decoder step."""
        if self._proj_t is None:
            return torch.nn.functional.linear(hidden, self.proj_weight).float()
        if hidden.shape[0] == 1:
            return (hidden @ self._proj_t).float()
        return (self.proj_weight @ hidden.T).T.float()

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """[B, q, k] booleans → the [B, 1, q, k] additive mask the attention layers take as-is."""
        return additive_mask(allowed, self.dtype)

    def _is_silence(self, d: _Decoded) -> bool:
        return (d.no_speech_prob > self.decoding.no_speech_threshold
                and d.avg_logprob < self.decoding.logprob_threshold) or not d.tokens

    def _decode_text(self, tokens: list[int]) -> str:
        if not tokens:
            return ""
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def _final_text(self, tokens: list[int]) -> str:
        """The final's text: the decoded tokens with whitespace runs made single spaces (words join back to it)."""
        return " ".join(self._decode_text(tokens).split())

    def _align_words(self, states: list[WhisperUtteranceState], enc: torch.Tensor, tokens: list[list[int]],
                     token_logprobs: list[list[float]], cross_kv: list[tuple[torch.Tensor, torch.Tensor]],
                     ) -> list[list[Word]]:
        """Word times of each row's final tokens from one batched, teacher-forced decoder pass.

        As openai/whisper does: the sequence is the start-of-transcript prefix (no
        context prompt), the tokens and end-of-text; the alignment heads' attention
        logits over the row's real frames go to :mod:`streaming.models.timing`.
        ``cross_kv`` are the rows' cross-attention keys/values from the decode, so
        the pass costs only the few text positions. A word's probability is the
        mean of its tokens' probabilities in that decode.
        """
        seqs = [self._sot_sequence(st) + toks + [self.eot_id] for st, toks in zip(states, tokens, strict=True)]
        frames = [max(1, min(st.num_samples, self.log_mel.max_samples) // self.log_mel.hop // 2) for st in states]
        qk = self._alignment_logits(enc, seqs, cross_kv, max(frames))
        out = []
        for r, (st, toks) in enumerate(zip(states, tokens, strict=True)):
            first = len(seqs[r]) - len(toks) - 2  # position of the last prefix token: it predicts toks[0]
            scores = timing.alignment_matrix(qk[r, :, first: first + len(toks) + 1, : frames[r]].numpy())
            bounds = timing.token_boundaries_s(scores)
            spans = self._word_spans(toks, st.language in UNSPACED_LANGUAGES)
            texts = [self.tokenizer.decode(toks[a:b]) for a, b in spans]
            punctuation = [timing.is_punctuation(self.tokenizer.decode([t])) for t in toks]
            probs = np.exp(token_logprobs[r]).tolist()
            out.append(timing.build_words(texts, spans, bounds, probs, st.duration_s, punctuation))
        return out

    def _alignment_logits(self, enc: torch.Tensor, seqs: list[list[int]],
                          cross_kv: list[tuple[torch.Tensor, torch.Tensor]], num_frames: int) -> torch.Tensor:
        """Cross-attention logits of the alignment heads [B, heads, T, frames] (float32, CPU).

        Rows are right-padded; causal attention keeps padding out of the real
        positions. Pre-hooks on the cross-attention layers take their queries and
        compute q·k for the alignment heads only, over the first ``num_frames``
        frames, so the softmax can be taken over the audio alone (as openai/whisper does).
        """
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        dev = self.device
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.eot_id, dtype=torch.long, device=dev)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        cols = torch.arange(width, device=dev)
        causal = (cols[None, :] <= cols[:, None])[None].expand(len(seqs), width, width)
        cross = DynamicCache()
        for layer, (keys, values) in enumerate(cross_kv):
            cross.update(keys, values, layer)
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.alignment_heads:
            by_layer.setdefault(layer, []).append(head)
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            heads = by_layer[layer]
            q = (module.q_proj(hidden) * module.scaling).unflatten(-1, (-1, module.head_dim))[:, :, heads]
            k = cross_kv[layer][0][:, heads, :num_frames]  # [B, h, F, d]: k_proj of the audio, from the decode
            captured[layer] = torch.einsum("bthd,bhfd->bhtf", q.float(), k.float())

        layers = self.decoder.layers
        hooks = [layers[layer].encoder_attn.register_forward_pre_hook(
            lambda m, a, kw, layer=layer: capture(layer, m, a, kw), with_kwargs=True) for layer in by_layer]
        try:
            # The cache already holds the cross-attention keys/values: `enc` is not projected again.
            self.decoder(input_ids=ids, encoder_hidden_states=enc, cache=EncoderDecoderCache(DynamicCache(), cross),
                         use_cache=True, position_ids=cols[None].expand(len(seqs), width),
                         attention_mask=self._additive(causal))
        finally:
            for hook in hooks:
                hook.remove()
        return torch.cat([captured[layer] for layer in by_layer], dim=1).cpu()

    def _word_spans(self, tokens: list[int], unspaced: bool) -> list[tuple[int, int]]:
        """Token ranges of the words of ``tokens``: a leading space starts a word; characters in unspaced scripts."""
        if unspaced:
            spans, start = [], 0
            for _, group in self._units(tokens, unspaced=True):
                spans.append((start, start + len(group)))
                start += len(group)
            return spans
        pieces = [self._token_text(t) for t in tokens]
        return timing.word_token_spans([p[:1] in _BPE_SPACES for p in pieces],
                                       [bool(p) and all(c in _BPE_SPACES for c in p) for p in pieces])

    def _token_text(self, tok: int) -> str:
        text = self._id_text.get(tok)
        if text is None:
            text = self.tokenizer.convert_ids_to_tokens(tok) or ""
            self._id_text[tok] = text
        return text

    def _units(self, tokens: list[int], unspaced: bool) -> list[tuple[str, list[int]]]:
        """Group tokens into stability units: words (a token with a leading space starts one),
        or for unspaced scripts the shortest groups that decode to whole characters."""
        units: list[tuple[str, list[int]]] = []
        group: list[int] = []
        for tok in tokens:
            starts_word = self._token_text(tok).startswith("Ġ")  # byte-level BPE marks a leading space so
            if group and (starts_word or (unspaced and "\ufffd" not in self.tokenizer.decode(group))):
                units.append((self.tokenizer.decode(group), group))
                group = []
            group.append(tok)
        if group:
            units.append((self.tokenizer.decode(group), group))
        return units

    def _agree(self, st: WhisperUtteranceState, d: _Decoded, stats: dict[str, Any]) -> Hypothesis:
        """Feed one partial decode to LocalAgreement and grow the stable tokens accordingly."""
        tokens = [] if self._is_silence(d) else d.tokens
        units = self._units(tokens, st.language in UNSPACED_LANGUAGES)
        # The last unit may still change (a suffix, its punctuation, or cut by
        # the cap), so it never takes part in the agreement.
        candidates = units[:-1]
        before = len(st.agreement.stable)
        stable, _ = st.agreement.insert(st.agreement.stable + [u for u, _ in candidates])
        grown = len(stable) - before
        for _, toks in candidates[:grown]:
            st.stable_tokens.extend(toks)
        rest = [t for _, toks in units[grown:] for t in toks]
        stable_text = self._decode_text(st.stable_tokens)
        full = self._decode_text(st.stable_tokens + rest)
        if full.startswith(stable_text):
            unstable_text = full[len(stable_text):].strip()
        else:
            unstable_text = self._decode_text(rest)
        stats["new_stable_units"] = grown
        return Hypothesis(stable_text, unstable_text, st.language, stats)
