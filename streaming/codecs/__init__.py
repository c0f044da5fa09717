"""Wire codecs, one per protocol, and the URL path that selects each (see :mod:`.base`)."""

from __future__ import annotations

from .base import Codec, Frame, Handshake, HandshakeRefused
from .deepgram import DeepgramCodec
from .openai_realtime import OpenAIRealtimeCodec
from .v1 import V1Codec

__all__ = ["CODECS", "Codec", "Frame", "Handshake", "HandshakeRefused", "codec_for_path"]

CODECS: dict[str, type[Codec]] = {codec.path: codec for codec in (V1Codec, OpenAIRealtimeCodec, DeepgramCodec)}
"""URL path → codec class (``streaming.http.STREAM_PATHS`` routes these paths here)."""


def codec_for_path(path: str) -> type[Codec]:
    """The codec of a stream path (one of ``streaming.http.STREAM_PATHS``)."""
    return CODECS[path]
