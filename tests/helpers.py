"""Test helpers: real servers on free loopback ports, in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from functools import lru_cache

import websockets

from streaming.config import Config
from streaming.models.base import Backend
from streaming.server import BackgroundServer


@lru_cache(maxsize=2)
def embedded_backend(name: str = "tiny.en") -> Backend:
    """The real embedded model, loaded once per test process."""
    from streaming.models import load_backend

    backend = load_backend(name, device="cpu")
    backend.warmup()
    return backend


def make_config(config: Config | None = None, **overrides) -> Config:
    """A loopback config on a free port; ``overrides`` set fields of any section by name."""
    config = dataclasses.replace(config) if config else Config()
    # Test servers admit by count (max_sessions) unless a test asks for admission by capacity
    # (tests/test_admission.py): what this shared machine can hold is no other test's business.
    server = config.server
    config.server = dataclasses.replace(server, host="127.0.0.1", port=0, load_admission=False,
                                        capacity_streams=server.capacity_streams or server.max_sessions)
    for key, value in overrides.items():
        for section in ("session", "vad", "server", "engine", "model"):
            obj = getattr(config, section)
            if hasattr(obj, key):
                setattr(config, section, dataclasses.replace(obj, **{key: value}))
                break
        else:
            raise TypeError(f"unknown option {key}")
    return config


@contextlib.contextmanager
def running_server(backend: Backend | None = None, config: Config | None = None, **overrides) -> Iterator[str]:
    """Run a server on 127.0.0.1:<free port> (default: embedded tiny.en); yield its ws URL; always stop it."""
    with background_server(backend, config, **overrides) as handle:
        yield handle.url


@contextlib.contextmanager
def background_server(backend: Backend | None = None, config: Config | None = None,
                      **overrides) -> Iterator[BackgroundServer]:
    """Like :func:`running_server`, yielding the handle (``.url``, ``.server``)."""
    with BackgroundServer(backend or embedded_backend(), make_config(config, **overrides)) as handle:
        yield handle


async def collect_until_close(ws, timeout: float = 30) -> list[dict]:
    """Every JSON event a client receives until the server closes (or ``timeout``)."""
    events = []
    try:
        async with asyncio.timeout(timeout):
            async for frame in ws:
                events.append(json.loads(frame))
    except websockets.ConnectionClosed:
        pass
    return events


async def wait_until(predicate, timeout: float = 30.0) -> None:
    """Poll a condition on a server in another thread (its state has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def v1_final_texts(ws_url: str, parts: list[bytes], *, sample_rate: int, encoding: str = "pcm_s16le",
                         chunk_s: float = 0.05, finalize_each: bool = False, api_key: str | None = None,
                         **fields) -> list[str]:
    """The non-empty final texts protocol v1 gives for ``parts`` on one connection (``chunk_s`` chunks,
    as fast as the server reads; with ``finalize_each`` a finalize after each part, as a client's
    Finalize or commit). The reference every compatibility endpoint is compared with; any error fails."""
    from streaming.audio import BYTES_PER_SAMPLE

    step = max(1, int(sample_rate * chunk_s)) * BYTES_PER_SAMPLE[encoding]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    texts: list[str] = []
    async with websockets.connect(ws_url, additional_headers=headers, max_size=None, ping_timeout=120) as ws:
        async def send() -> None:
            await ws.send(json.dumps({"type": "start", "sample_rate": sample_rate, "encoding": encoding, **fields}))
            for part in parts:
                for i in range(0, len(part), step):
                    await ws.send(part[i:i + step])
                if finalize_each:
                    await ws.send(json.dumps({"type": "finalize"}))
            await ws.send(json.dumps({"type": "stop"}))

        async def read() -> None:
            async for frame in ws:
                event = json.loads(frame)
                assert event["type"] != "error", event
                if event["type"] == "final" and event["text"]:
                    texts.append(event["text"])

        async with asyncio.timeout(180):
            await asyncio.gather(send(), read())
    return texts


def random_whisper_assets(tokenizer_json):
    """A random 2-layer Whisper (d_model 64) with the real English Whisper tokenizer at ``tokenizer_json``.

    Weights are drawn with a large std so the greedy output depends on the audio and varies
    (the default init decodes every input as one repeated token); seeded, so it is the same model each time.
    """
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from streaming.models.embedded import whisper_assets_from_pretrained

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    config = WhisperConfig(vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, num_mel_bins=80, init_std=0.3, decoder_start_token_id=50257,
                           eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    return whisper_assets_from_pretrained(model, tokenizer, WhisperFeatureExtractor(), "tiny-random")


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run single-threaded: on a shared 2-core box, OpenMP spinning makes 2 threads several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def noise(seconds: float, seed: int, level: float = 0.1):
    """Seeded Gaussian noise at 16 kHz (float32): audio that is not speech, the same every run."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
