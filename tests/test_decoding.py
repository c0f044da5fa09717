"""The shared ragged-batch greedy loop: outputs of both backends equal the ones recorded before it existed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions

REFERENCE = Path(__file__).with_name("decoding_reference.json")
"""Outputs of both backends recorded with their own decoding loops, before the shared loop replaced them."""

WHISPER_CLIPS = ("jfk", "lib_left", "librivox_0870")
STEP_S = 1.5
"""Audio between two partial steps of the Whisper trace."""

# --------------------------------------------------------------------------- traces (also used to record)


def whisper_trace() -> dict[str, Any]:
    """Partials and finals of Whisper tiny.en on three dev clips (plus one with a context), batched together."""
    from streaming.evaluation import dev_clips
    from streaming.models.whisper import WhisperBackend

    backend = WhisperBackend.from_embedded("tiny.en")
    clips = {c.id: c.load() for c in dev_clips() if c.id in WHISPER_CLIPS}
    jobs = [(cid, UtteranceOptions(word_timestamps=(cid == "jfk"))) for cid in WHISPER_CLIPS]
    jobs.append(("jfk", UtteranceOptions(context="Americans, country")))
    states = [backend.new_utterance(opts) for _, opts in jobs]
    chunk = int(STEP_S * SAMPLE_RATE_HZ)
    steps: list[list[dict[str, Any]]] = []
    longest = max(len(clips[cid]) for cid, _ in jobs)
    for start in range(0, longest, chunk):
        live = [(st, clips[cid]) for st, (cid, _) in zip(states, jobs, strict=True) if start < len(clips[cid])]
        for st, audio in live:
            st.append_audio(audio[start:start + chunk])
        hyps = backend.step([st for st, _ in live])
        steps.append([{"stable": h.stable_text, "unstable": h.unstable_text, "tokens": h.stats["tokens"],
                       "stop": h.stats["stop"]} for h in hyps])
    finals = [{"text": f.text, "stop": f.stats["stop"], "tokens": f.stats["tokens"],
               "words": [[w.word, w.start_s, w.end_s, w.probability] for w in f.words or []]}
              for f in backend.finalize(states)]
    return {"steps": steps, "finals": finals}


def random_whisper_trace() -> dict[str, Any]:
    """A random 2-layer Whisper (real English tokenizer) on noise and speech: its decodes hit the caps and loops."""
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from streaming.evaluation import dev_clips
    from streaming.models.embedded import EMBEDDED_MODELS, whisper_assets_from_pretrained
    from streaming.models.whisper import WhisperBackend

    tokenizer_json = EMBEDDED_MODELS["tiny.en"].sources().tokenizer_json
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    config = WhisperConfig(vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, num_mel_bins=80, init_std=0.3, decoder_start_token_id=50257,
                           eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    backend = WhisperBackend(whisper_assets_from_pretrained(model, tokenizer, WhisperFeatureExtractor(), "tiny-random"))
    rng = np.random.default_rng(0)
    speech = dev_clips()[0].load()
    audios = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8_000, 32_000, 64_000)] + [speech]
    options = [UtteranceOptions(), UtteranceOptions(context="Gutenberg"), UtteranceOptions(),
               UtteranceOptions(word_timestamps=True)]
    states = [backend.new_utterance(o) for o in options]
    steps: list[list[dict[str, Any]]] = []
    for fraction in (0.5, 1.0):
        for st, audio in zip(states, audios, strict=True):
            st.append_audio(audio[st.num_samples:int(fraction * len(audio))])
        steps.append([{"stable": h.stable_text, "unstable": h.unstable_text, "tokens": h.stats["tokens"],
                       "stop": h.stats["stop"]} for h in backend.step(states)])
    finals = [{"text": f.text, "stop": f.stats["stop"], "tokens": f.stats["tokens"],
               "avg_logprob": f.stats["avg_logprob"], "no_speech_prob": f.stats["no_speech_prob"],
               "words": [[w.word, w.start_s, w.end_s, w.probability] for w in f.words or []]}
              for f in backend.finalize(states)]
    return {"steps": steps, "finals": finals}


def qwen3_trace(repetition_guard: bool) -> dict[str, Any]:
    """Steps and finals of the tiny random Qwen3-ASR on real speech: three ragged utterances in one batch."""
    from streaming.evaluation import dev_clips
    from streaming.models.qwen3_asr import Qwen3ASRBackend, random_model

    model, tok = random_model("tiny", seed=0)
    with torch.no_grad():  # as tests/test_qwen3_asr.py: sharper weights make the greedy output vary
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    backend = Qwen3ASRBackend(model, tok, repetition_guard=repetition_guard, max_new_tokens_per_step=24)
    speech = np.concatenate([c.load() for c in dev_clips()[:3]])
    options = [UtteranceOptions(window_s=1), UtteranceOptions(window_s=2, context="hello world"),
               UtteranceOptions(window_s=4, language="en")]
    states = [backend.new_utterance(o) for o in options]
    offsets = [0, 3 * SAMPLE_RATE_HZ, 7 * SAMPLE_RATE_HZ]
    chunks = [5920, 17600, 800, 14400]  # uneven arrival, different for every row
    steps: list[list[dict[str, Any]]] = []
    for k in range(8):
        for i, st in enumerate(states):
            n = chunks[(k + i) % len(chunks)]
            start = offsets[i] + len(st.audio)
            st.append_audio(speech[start:start + n])
        hyps = backend.step(states)
        steps.append([{"stable": h.stable_text, "unstable": h.unstable_text, "language": h.language,
                       "decoded": h.stats.get("decoded_tokens"), "stable_ids": list(st.agreement.stable)}
                      for h, st in zip(hyps, states, strict=True)])
    finals = [{"text": f.text, "language": f.language, "tokens": f.stats["tokens"]}
              for f in backend.finalize(states)]
    return {"steps": steps, "finals": finals}


def traces() -> dict[str, Any]:
    """Every trace, single-threaded (thread count changes float reduction order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"qwen3": qwen3_trace(True), "qwen3_no_guard": qwen3_trace(False),
                "random_whisper": random_whisper_trace(), "whisper": whisper_trace()}
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    # Record: .venv/bin/python -m tests.test_decoding record
    if sys.argv[1:] == ["record"]:
        REFERENCE.write_text(json.dumps(traces(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
