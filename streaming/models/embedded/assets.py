"""WhisperAssets: a transformers Whisper with the token ids and heads the backend needs to prompt and decode it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from streaming.models.embedded.convert import (
    _default_alignment_heads,
    _is_multilingual,
    _published_heads,
    _required_id,
    _token_id,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, WhisperForConditionalGeneration


@dataclass
class WhisperAssets:
    """A Whisper model with everything needed to prompt and decode it."""

    model: WhisperForConditionalGeneration
    """float32, ``eval()``, on CPU (callers may move it)."""
    tokenizer: PreTrainedTokenizerFast
    feature_extractor: WhisperFeatureExtractor
    name: str
    multilingual: bool
    lang_token_ids: dict[str, int]
    """``"en" -> id of <|en|>``; empty for English-only models."""
    sot_id: int
    eot_id: int
    transcribe_id: int | None
    """``None`` for English-only models, whose prompt has no task token."""
    translate_id: int | None
    no_timestamps_id: int
    sot_prev_id: int | None
    suppress_ids: list[int]
    """Suppressed at every step (non-speech symbols and unused special tokens)."""
    suppress_ids_begin: list[int]
    """Also suppressed at the first generated step (blank and end of text)."""
    alignment_heads: list[tuple[int, int]]
    """``(decoder layer, head)`` pairs whose cross-attention tracks time."""
    alignment_heads_known: bool = True
    """``False`` when the checkpoint declares no heads and none are published for it, so
    :attr:`alignment_heads` is the fallback (all heads of the last half of the decoder layers)."""


def whisper_assets_from_pretrained(model: WhisperForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                                   feature_extractor: WhisperFeatureExtractor, name: str) -> WhisperAssets:
    """Wrap any transformers Whisper (hub, local or tiny random) in :class:`WhisperAssets`."""
    gen = getattr(model, "generation_config", None)
    config = model.config
    declared = getattr(gen, "is_multilingual", None) if gen is not None else None
    multilingual = bool(declared) if declared is not None else _is_multilingual(config.vocab_size)

    lang_token_ids: dict[str, int] = {}
    if multilingual:
        lang_to_id = getattr(gen, "lang_to_id", None) or {}
        if lang_to_id:
            lang_token_ids = {tok.strip("<|>"): int(i) for tok, i in lang_to_id.items()}
        else:
            from transformers.models.whisper.tokenization_whisper import LANGUAGES

            lang_token_ids = {code: tid for code in LANGUAGES
                              if (tid := _token_id(tokenizer, f"<|{code}|>")) is not None}

    def pick(attr: str) -> list:
        value = getattr(gen, attr, None) if gen is not None else None
        if value is None:
            value = getattr(config, attr, None)
        return list(value or [])

    declared_heads = pick("alignment_heads") or _published_heads(name, config)
    heads = declared_heads or _default_alignment_heads(config)
    eot = _required_id(tokenizer, "<|endoftext|>")
    return WhisperAssets(
        model=model,
        tokenizer=tokenizer,
        feature_extractor=feature_extractor,
        name=name,
        multilingual=multilingual,
        lang_token_ids=lang_token_ids,
        sot_id=_required_id(tokenizer, "<|startoftranscript|>"),
        eot_id=eot,
        transcribe_id=_token_id(tokenizer, "<|transcribe|>") if multilingual else None,
        translate_id=_token_id(tokenizer, "<|translate|>") if multilingual else None,
        no_timestamps_id=_required_id(tokenizer, "<|notimestamps|>"),
        sot_prev_id=_token_id(tokenizer, "<|startofprev|>"),
        suppress_ids=[int(i) for i in pick("suppress_tokens")],
        suppress_ids_begin=[int(i) for i in pick("begin_suppress_tokens")],
        alignment_heads=[(int(a), int(b)) for a, b in heads],
        alignment_heads_known=bool(declared_heads),
    )
