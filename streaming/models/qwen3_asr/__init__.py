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
attention itself reads. Measured in ``benchmarks/qwen3.py``.

Modules, one job each: :mod:`.features` (log-mel frames, conv token counts),
:mod:`.state` (one utterance), :mod:`.encoder` (packed windows),
:mod:`.decoder` (ragged rows on :mod:`streaming.models.decoding`'s shared
greedy loop), :mod:`.text` (prompts, language names, parsing),
:mod:`.backend` (:class:`Qwen3ASRBackend` tying them), :mod:`.testing`
(random models and a tiny tokenizer for tests and benchmarks).
"""

from streaming.models.qwen3_asr.backend import HUB_NAMES, Qwen3ASRBackend, _resolve_device, _resolve_dtype
from streaming.models.qwen3_asr.decoder import LOOP_GUARD, DecodeRow, RowDecoder, stop_criteria
from streaming.models.qwen3_asr.encoder import EncodeJob, WindowEncoder, encode_jobs
from streaming.models.qwen3_asr.features import (
    CLAMP_RANGE,
    FRAMES_PER_CHUNK,
    HOP_SAMPLES,
    MIN_SAMPLES,
    N_FFT,
    TOKENS_PER_CHUNK,
    LogMel,
    post_cnn_tokens,
)
from streaming.models.qwen3_asr.state import Qwen3ASRState, Window, extend_frames
from streaming.models.qwen3_asr.testing import ARCHITECTURES, random_model, tiny_tokenizer
from streaming.models.qwen3_asr.text import (
    ASR_TEXT,
    AUDIO_END,
    AUDIO_PAD,
    AUDIO_START,
    ENDOFTEXT,
    IM_END,
    IM_START,
    Qwen3Text,
    is_cjk,
    language_names,
)

_DecodeRow = DecodeRow  # the name tests/test_static_decode.py imports

__all__ = [
    "ARCHITECTURES", "ASR_TEXT", "AUDIO_END", "AUDIO_PAD", "AUDIO_START", "CLAMP_RANGE", "ENDOFTEXT",
    "FRAMES_PER_CHUNK", "HOP_SAMPLES", "HUB_NAMES", "IM_END", "IM_START", "LOOP_GUARD", "MIN_SAMPLES", "N_FFT",
    "TOKENS_PER_CHUNK", "DecodeRow", "EncodeJob", "LogMel", "Qwen3ASRBackend", "Qwen3ASRState", "Qwen3Text",
    "RowDecoder", "Window", "WindowEncoder", "_DecodeRow", "_resolve_device", "_resolve_dtype", "encode_jobs",
    "extend_frames", "is_cjk", "language_names", "post_cnn_tokens", "random_model", "stop_criteria",
    "tiny_tokenizer",
]
