"""The model backends' own knobs (config sections ``[whisper]`` and ``[qwen3_asr]``), free of torch.

They are options dataclasses like those of :mod:`streaming.config`, so the TOML file and
``--set whisper.agreement_n=3`` reach them with the same range checks; the loader passes them to
the backend it builds (:func:`streaming.models.load_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass

from streaming.knobs import opt


@dataclass
class WhisperDecodingOptions:
    """Knobs of the Whisper backend's decoding; the defaults suit tiny/base on CPU."""

    tokens_per_s: float = opt(8.0, low=1.0, high=100.0)
    """Token cap per second of audio (loop guard); Whisper speech runs at ~3-5 tokens/s."""
    token_margin: int = opt(10, low=0, high=448)
    """Tokens allowed on top of ``tokens_per_s`` × duration."""
    max_tokens: int = opt(224, low=1, high=448)
    """Hard cap on text tokens per utterance (half of Whisper's 448 decoder positions)."""
    language_lock_s: float = opt(1.0, low=0.0, high=30.0)
    """Audio needed before a detected language is kept for the rest of the utterance."""
    no_speech_threshold: float = opt(0.6, low=0.0, high=1.0)
    """``<|nospeech|>`` probability above which a low-confidence decode counts as silence (Whisper's rule)."""
    logprob_threshold: float = opt(-1.0, low=-100.0, high=0.0)
    """Mean token log-probability below which a likely-silent decode is dropped."""
    silence_peak: float = opt(1e-3, low=0.0, high=1.0)
    """Utterances whose absolute peak stays below this are silent without running the model."""
    agreement_n: int = opt(2, low=1, high=8)
    """LocalAgreement-n: how many consecutive partials must agree before words become stable."""
    partial_window_s: float = opt(10.0, low=0.0, high=30.0)
    """Partials encode their audio padded to a multiple of this many seconds, not Whisper's 30 s
    (0 = the full 30 s); finals always take the full 30 s, so their text does not change. tiny.en on
    89 English dev-full clips: partials cost 0.40x the CPU of 30 s windows, their words differ from
    the 30 s ones' by 4.7 % WER, 55 instead of 42 of ~1370 stable words are later corrected by the
    final (5 s: 0.35x, 5.9 %, 55); see docs/performance.md."""
    partial_pad_s: float = opt(2.0, low=0.0, high=30.0)
    """Silence after the audio in a partial's window, at least (Whisper expects speech to end in silence;
    1 s: the same WER on dev-full, but one jfk partial ran on into a repeat of the clip; 2 s did not)."""
    final_window_s: float = opt(0.0, low=0.0, high=30.0)
    """Finals too encode a short window like partials (``partial_pad_s``, and the partials' int8
    encoder with ``quantize = "partials"``) padded to a multiple of this; 0 = the full 30 s (finals
    equal offline transcription). For smart turn detection's latency: tiny.en finals at 10 s cost
    0.4x the CPU, WER 6.78 % against 6.85 % over 89 English dev-full clips (docs/turn-taking.md)."""
    quantize: str = opt("partials", choices=("none", "partials", "encoder", "all"))
    """int8 linear layers: ``partials`` an int8 copy of the encoder for short-window partials on CPU (float32;
    finals unchanged; partials 0.77x the CPU, 3.4 % WER from float32's, 61 instead of 55 stable words
    corrected), ``encoder`` the encoder of every pass (finals 0.76x the CPU), ``all`` the encoder and the
    decoder (0.65x); both move final WER 6.85 -> 7.18 % on 89 English dev-full clips (CPU only)."""
    prompt_previous_text: bool = False
    """Whether the previous utterance's final text follows the context in the prompt. Off: on dev-full
    English it moved tiny.en's WER only from 6.85 % to 6.78 % (one word) while carrying mistakes
    over ("Queen of Clothes" made the next card "7 of Clothes"); see bench/words/hotwords.json."""


@dataclass
class Qwen3Options:
    """Knobs of the Qwen3-ASR backend (keyword arguments of ``Qwen3ASRBackend``; the same defaults)."""

    window_s: int = opt(4, low=1, high=8)
    """The model's default encoder attention window in whole seconds (``[session] window_s`` overrides it)."""
    max_utterance_s: float = opt(60.0, low=1.0, high=3600.0)
    """Longest utterance the backend takes; a session's ``[vad] max_utterance_s`` is capped by it."""
    max_new_tokens_per_step: int = opt(32, low=1, high=1024)
    """Most tokens one partial step may decode (bounds a step's cost)."""
    max_tokens_per_audio_s: float = opt(12.0, low=1.0, high=100.0)
    """Token cap per second of audio (loop guard)."""
    repetition_guard: bool = True
    """Stop a decode whose output ends in an n-gram repeated back to back (a decoding loop)."""
    kv_cache: str = opt("auto", choices=("auto", "static", "dynamic"))
    """Decoder KV: ``static`` preallocated slots (fixed shapes, CUDA graphs), ``dynamic`` per-step caches;
    ``auto`` = static on CUDA, dynamic on CPU."""
    max_streams: int = opt(256, low=1, high=4096)
    """KV slots of the static cache: utterances decoding at once (each holds max_utterance_s of positions)."""
    cuda_graphs: bool = True
    """Replay the static cache's decode step as CUDA graphs (CUDA only)."""
