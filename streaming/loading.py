"""Load the configured model backend (shared by ``serve``, the benchmarks and scripts)."""

from __future__ import annotations

import logging
import time

from .config import Config


def load_configured_backend(config: Config):
    """The backend ``config.model`` names, with its section's options (``[whisper]``/``[qwen3_asr]``), warmed up."""
    from .models import load_backend

    t0 = time.perf_counter()
    backend = load_backend(config.model.name, device=config.model.device, dtype=config.model.dtype,
                           threads=config.model.threads, window_s=config.session.window_s,
                           whisper=config.whisper, qwen3=config.qwen3_asr)
    backend.warmup()
    logging.getLogger("streaming").info("model %s ready in %.1f s", backend.name, time.perf_counter() - t0)
    return backend
