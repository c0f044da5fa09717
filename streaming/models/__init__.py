"""Model backends behind one interface (:mod:`.base`), and the loader that picks one."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from .base import Backend
from .options import Qwen3Options, WhisperDecodingOptions

log = logging.getLogger("streaming.models")


class ModelLoadError(RuntimeError):
    """The requested model cannot be found or loaded; the message says what to do."""


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """``auto`` → float32 on CPU, bfloat16/float16 on GPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r} (use float32, float16, bfloat16 or auto)") from None


def model_type(name_or_path: str) -> str:
    """``whisper`` or ``qwen3_asr`` (from the embedded names, a local config.json, or the hub id)."""
    from .embedded import is_embedded

    if is_embedded(name_or_path):
        return "embedded-whisper"
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
    else:
        try:
            from transformers import AutoConfig

            kind = AutoConfig.from_pretrained(name_or_path).model_type
        except Exception as exc:  # noqa: BLE001 - the message below says what to do
            raise ModelLoadError(
                f"cannot load model {name_or_path!r}: not an embedded model (tiny.en, base), not a local "
                f"checkpoint folder, and the hub lookup failed ({exc.__class__.__name__}: {exc})") from exc
    if kind == "whisper":
        return "whisper"
    if kind.startswith("qwen3_asr"):
        return "qwen3_asr"
    raise ModelLoadError(f"model {name_or_path!r} has model_type {kind!r}; supported: whisper, qwen3_asr")


def load_backend(name: str, device: str = "auto", dtype: str = "auto", threads: int = 0,
                 window_s: int | None = None, whisper: WhisperDecodingOptions | None = None,
                 qwen3: Qwen3Options | None = None) -> Backend:
    """Load the backend for an embedded name, a local checkpoint folder or a hub id.

    ``whisper`` or ``qwen3`` (the config's ``[whisper]`` / ``[qwen3_asr]``) go to the backend of that
    kind; ``window_s``, when given, is the Qwen3-ASR default window instead of ``qwen3.window_s``.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    kind = model_type(name)
    log.info("loading %s model %r on %s (%s)", kind, name, device, str(torch_dtype).removeprefix("torch."))
    threads_arg = threads or None
    if kind == "embedded-whisper":
        from .whisper import WhisperBackend

        return WhisperBackend.from_embedded(name, device=device, dtype=torch_dtype, threads=threads_arg,
                                            decoding=whisper)
    if kind == "whisper":
        from .whisper import WhisperBackend

        return WhisperBackend.from_pretrained(name, device=device, dtype=torch_dtype, threads=threads_arg,
                                              decoding=whisper)
    from .qwen3_asr import Qwen3ASRBackend

    kwargs = dataclasses.asdict(qwen3 or Qwen3Options())
    if window_s:
        kwargs["window_s"] = window_s
    return Qwen3ASRBackend.from_pretrained(name, device=device, dtype=torch_dtype, threads=threads_arg, **kwargs)
