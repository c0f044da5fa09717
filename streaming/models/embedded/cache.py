"""The converted-weights cache: one safetensors file per model, keyed by its sources, written atomically."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import WhisperConfig

logger = logging.getLogger(__name__)

CACHE_FORMAT = "embedded-whisper-1"
"""Bumped whenever the conversion changes, so old cache files are never reused."""


def default_cache_dir() -> Path:
    """``$STREAMING_CACHE_DIR`` or ``~/.cache/streaming-asr``."""
    env = os.environ.get("STREAMING_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "streaming-asr"


def _read_cache(path: Path) -> tuple[dict[str, torch.Tensor], WhisperConfig] | None:
    """The cached state dict and config, or ``None`` when absent or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    from safetensors import safe_open
    from transformers import WhisperConfig

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT:
                logger.warning("ignoring cache %s: format %r", path, metadata.get("format"))
                return None
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        config = WhisperConfig(**json.loads(metadata["config"]))
    except Exception as exc:  # a corrupt cache must never stop the model from loading
        logger.warning("ignoring unreadable cache %s (%s: %s); converting again", path, type(exc).__name__, exc)
        return None
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state, config


def _write_cache(path: Path, state: dict[str, torch.Tensor], config: WhisperConfig) -> None:
    """Write the converted weights atomically (temp file + rename) and drop stale entries of the same model."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state.items() if k != "proj_out.weight"}  # tied, stored once
    metadata = {"format": CACHE_FORMAT, "config": config.to_json_string(use_diff=False)}
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
        save_file(tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:  # e.g. a read-only home: loading still works, only slower next time
        logger.warning("could not write model cache %s: %s", path, exc)
        return
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for stale in path.parent.glob(f"{prefix}*.safetensors"):
        if stale != path and stale.name.rsplit("-", 1)[0] + "-" == prefix:
            stale.unlink(missing_ok=True)
    logger.info("cached converted model at %s", path)
