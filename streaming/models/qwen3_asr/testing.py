"""Qwen3-ASR models with random weights and the real code path, and a small tokenizer: tests and benchmarks."""

from __future__ import annotations

from typing import Any

import torch

from streaming.models.qwen3_asr.text import (
    ASR_TEXT,
    AUDIO_END,
    AUDIO_PAD,
    AUDIO_START,
    ENDOFTEXT,
    IM_END,
    IM_START,
)

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
