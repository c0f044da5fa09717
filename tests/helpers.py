"""Test helpers: real servers on free loopback ports, in a background thread."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from functools import lru_cache

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
    config.server = dataclasses.replace(config.server, host="127.0.0.1", port=0)
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
