"""CTranslate2 Whisper -> transformers Whisper: dims, state dict, config, generation config, alignment heads.

Inverts the name mapping of CTranslate2's ``WhisperLoader`` and refuses any
variable or flag it cannot map, so a silently ignored setting never changes
the computation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from streaming.models.embedded.ct2_format import Ct2Model
from streaming.models.embedded.errors import Ct2FormatError, EmbeddedModelError

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

_CT2_GELU = 3
"""``common_spec.Activation.GELU``: the only activation Whisper uses."""

_SCALAR_VARIABLES = frozenset({
    "encoder/num_heads", "decoder/num_heads", "decoder/activation", "decoder/alibi",
    "decoder/alignment_heads", "decoder/alignment_layer", "decoder/pre_norm",
    "decoder/scale_embeddings", "decoder/start_from_zero_embedding",
    # Written by newer ctranslate2 converters; meaningless while decoder/alibi is 0.
    "decoder/alibi_use_positive_positions", "decoder/scale_alibi",
})
"""Rank-0 spec attributes; validated or used for dims, never model weights.

Any other variable left unmapped is an error: a silently ignored flag could
change the computation.
"""

_NON_LANGUAGE_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                          "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")


@dataclass(frozen=True)
class WhisperDims:
    """Architecture sizes read back from the tensors of a CTranslate2 Whisper model."""

    n_mels: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int


def _count_layers(ct2: Ct2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise Ct2FormatError(f"{prefix} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def whisper_dims(ct2: Ct2Model) -> WhisperDims:
    """Read the architecture from tensor shapes and the scalar attributes."""
    if ct2.spec_name != "WhisperSpec":
        raise Ct2FormatError(f"model.bin holds a {ct2.spec_name!r}, not a WhisperSpec")
    conv1 = ct2.get("encoder/conv1/weight")
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    return WhisperDims(
        n_mels=n_mels,
        d_model=d_model,
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_heads=ct2.scalar("encoder/num_heads"),
        decoder_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        vocab_size=int(ct2.get("decoder/embeddings/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
    )


def _check_scalars(ct2: Ct2Model) -> None:
    """Refuse models whose computation differs from what HF Whisper does."""
    expected = {"decoder/activation": _CT2_GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0}
    for name, want in expected.items():
        if ct2.has(name) and (got := ct2.scalar(name)) != want:
            raise Ct2FormatError(f"{name} = {got}, but a transformers Whisper needs {want}")


def ct2_whisper_state_dict(ct2: Ct2Model) -> dict[str, torch.Tensor]:
    """Map every CTranslate2 Whisper variable to its transformers name, as float32.

    Inverts ``WhisperLoader``/``BartLoader`` of ``ctranslate2.converters.transformers``:
    self-attention q/k/v are fused in ``linear_0`` (k has no bias in Whisper; CT2 stores
    zeros there), cross-attention has ``linear_0`` = q and ``linear_1`` = fused k/v, the
    last linear is the output projection, and ``decoder/projection/weight`` is an alias
    of the token embedding. Raises if a stored tensor would be left unused.
    """
    _check_scalars(ct2)
    dims = whisper_dims(ct2)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        tensor = ct2.get(name)
        used.add(name)
        if not tensor.is_floating_point():
            raise Ct2FormatError(f"{name!r} is {tensor.dtype}, expected a float tensor")
        return tensor.to(torch.float32)

    def linear(hf: str, ct: str, bias: bool = True) -> None:
        out[f"{hf}.weight"] = take(f"{ct}/weight")
        if bias:
            out[f"{hf}.bias"] = take(f"{ct}/bias")

    def layer_norm(hf: str, ct: str) -> None:
        out[f"{hf}.weight"] = take(f"{ct}/gamma")
        out[f"{hf}.bias"] = take(f"{ct}/beta")

    def split_rows(ct: str, parts: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        weight, bias = take(f"{ct}/weight"), take(f"{ct}/bias")
        if weight.shape[0] != parts * dims.d_model or bias.shape[0] != parts * dims.d_model:
            raise Ct2FormatError(f"{ct}: fused shape {tuple(weight.shape)} is not {parts} x d_model")
        return list(weight.split(dims.d_model)), list(bias.split(dims.d_model))

    def qkv(hf: str, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        # k_proj has no bias in Whisper; CT2 fuses zeros in its place, which are dropped here.
        for proj, w in zip(("q_proj", "k_proj", "v_proj"), weights, strict=True):
            out[f"{hf}.{proj}.weight"] = w.contiguous()
        out[f"{hf}.q_proj.bias"] = biases[0].contiguous()
        out[f"{hf}.v_proj.bias"] = biases[2].contiguous()

    def ffn(hf: str, ct: str) -> None:
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        layer_norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

    def self_attention(hf: str, ct: str) -> None:
        """Self-attention (fused q/k/v in CT2) and its layer norm; the same in encoder and decoder layers."""
        qkv(f"{hf}.self_attn", *split_rows(f"{ct}/self_attention/linear_0", 3))
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        layer_norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")

    enc = "model.encoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    out[f"{enc}.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    layer_norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(dims.encoder_layers):
        hf, ct = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        self_attention(hf, ct)
        ffn(hf, ct)

    dec = "model.decoder"
    out[f"{dec}.embed_tokens.weight"] = take("decoder/embeddings/weight")
    out[f"{dec}.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    layer_norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(dims.decoder_layers):
        hf, ct = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        self_attention(hf, ct)
        (q_w,), (q_b,) = split_rows(f"{ct}/attention/linear_0", 1)
        (k_w, v_w), (k_b, v_b) = split_rows(f"{ct}/attention/linear_1", 2)
        qkv(f"{hf}.encoder_attn", [q_w, k_w, v_w], [q_b, k_b, v_b])
        linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
        layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        ffn(hf, ct)

    # The output projection is tied to the embedding (an alias in the file, or a copy).
    projection = ct2.get("decoder/projection/weight")
    if not torch.equal(projection, ct2.get("decoder/embeddings/weight")):
        raise Ct2FormatError("decoder/projection/weight differs from the embedding; Whisper ties them")
    if ct2.has("decoder/projection/bias") and bool(ct2.get("decoder/projection/bias").any()):
        raise Ct2FormatError("decoder/projection/bias is non-zero; Whisper's output projection has no bias")
    used.update({"decoder/projection/weight", "decoder/projection/bias"})
    out["proj_out.weight"] = out[f"{dec}.embed_tokens.weight"]

    unused = sorted(set(ct2.variables) - used - _SCALAR_VARIABLES)
    if unused:
        raise Ct2FormatError(f"model.bin variables with no transformers counterpart: {unused[:5]}")
    return out


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int | None:
    """Id of a special token, or ``None`` if the vocabulary lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(token_id)


def _required_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = _token_id(tokenizer, token)
    if token_id is None:
        raise EmbeddedModelError(f"tokenizer has no {token} token; not a Whisper tokenizer")
    return token_id


def _whisper_config(dims: WhisperDims, ct2_config: dict, tokenizer: PreTrainedTokenizerFast) -> WhisperConfig:
    """A transformers config for the dims read from model.bin and the CT2 config.json."""
    from transformers import WhisperConfig

    eot = _required_id(tokenizer, "<|endoftext|>")
    return WhisperConfig(
        vocab_size=dims.vocab_size, num_mel_bins=dims.n_mels, d_model=dims.d_model,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads, decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn, decoder_ffn_dim=dims.decoder_ffn,
        max_source_positions=dims.max_source_positions, max_target_positions=dims.max_target_positions,
        decoder_start_token_id=_required_id(tokenizer, "<|startoftranscript|>"),
        eos_token_id=eot, bos_token_id=eot, pad_token_id=eot,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        scale_embedding=False, activation_function="gelu", tie_word_embeddings=True,
    )


def _is_multilingual(vocab_size: int) -> bool:
    """English-only Whisper vocabularies have 51864 tokens, multilingual ones 51865 or more."""
    return vocab_size >= 51865


def _generation_config(config: WhisperConfig, ct2_config: dict, tokenizer: PreTrainedTokenizerFast,
                       name: str = "") -> GenerationConfig:
    """A generation config so that ``model.generate`` and :func:`whisper_assets_from_pretrained` agree.

    It carries the alignment heads (word timestamps) of the CT2 config, else the ones openai/whisper
    publishes for ``name``, else none (then the backend falls back and says so).
    """
    from transformers import GenerationConfig

    multilingual = _is_multilingual(config.vocab_size)
    lang_to_id: dict[str, int] = {}
    task_to_id: dict[str, int] = {}
    if multilingual:
        # The CT2 config's lang_ids are authoritative for multilingual models (tiny.en's are
        # copied from a multilingual vocabulary and off by one, so they are ignored there).
        for token_id in ct2_config.get("lang_ids") or []:
            token = tokenizer.convert_ids_to_tokens(int(token_id))
            if token and token.startswith("<|") and token not in _NON_LANGUAGE_SPECIALS:
                lang_to_id[token] = int(token_id)
        task_to_id = {task: tid for task in ("transcribe", "translate")
                      if (tid := _token_id(tokenizer, f"<|{task}|>")) is not None}
    heads = ct2_config.get("alignment_heads") or _published_heads(name, config) or None
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
        alignment_heads=[[int(a), int(b)] for a, b in heads] if heads else None,
        no_timestamps_token_id=_required_id(tokenizer, "<|notimestamps|>"),
        is_multilingual=multilingual, lang_to_id=lang_to_id, task_to_id=task_to_id,
        forced_decoder_ids=None,
    )


def _published_heads(name: str, config: WhisperConfig) -> list[tuple[int, int]] | None:
    """openai/whisper's published alignment heads for a checkpoint called ``name``, if they fit its shape."""
    from streaming.models.timing import published_alignment_heads

    try:
        return published_alignment_heads(name, config.decoder_layers, config.decoder_attention_heads)
    except ValueError:  # a different architecture that happens to share the name
        return None


def _default_alignment_heads(config: WhisperConfig) -> list[tuple[int, int]]:
    """All heads of the last half of the decoder layers (CTranslate2's fallback)."""
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(heads)]


def _build_model(config: WhisperConfig, state: dict[str, torch.Tensor]) -> WhisperForConditionalGeneration:
    """Instantiate without random init (meta device) and assign every tensor from ``state``."""
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        raise Ct2FormatError(f"converted weights do not fit a transformers Whisper: {exc}") from exc
    model.tie_weights()
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise Ct2FormatError(f"tensors left without weights after conversion: {left[:5]}")
    return model.to(torch.float32).eval()
