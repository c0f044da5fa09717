"""Wire codecs, one per protocol, and the URL path that selects each (see :mod:`.base`)."""

from __future__ import annotations

from .base import Codec, Frame, Handshake, HandshakeRefused

__all__ = ["CODECS", "Codec", "Frame", "Handshake", "HandshakeRefused", "codec_for_path"]


def _registry() -> dict[str, type[Codec]]:
    from .v1 import V1Codec

    codecs: list[type[Codec]] = [V1Codec]
    try:  # the compatibility codecs land one by one; each registers by its path
        from .openai_realtime import OpenAIRealtimeCodec

        codecs.append(OpenAIRealtimeCodec)
    except ImportError:
        pass
    try:
        from .deepgram import DeepgramCodec

        codecs.append(DeepgramCodec)
    except ImportError:
        pass
    return {codec.path: codec for codec in codecs}


CODECS: dict[str, type[Codec]] = _registry()
"""URL path → codec class."""


def codec_for_path(path: str) -> type[Codec] | None:
    return CODECS.get(path)
