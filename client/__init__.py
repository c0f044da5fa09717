"""Clients of the streaming ASR server (protocol v1), with no model code: no torch import.

:class:`StreamingClient` streams audio and yields typed events (:mod:`client.events`),
reconnecting with replay; :func:`transcribe` does a whole stream in one call. The
command-line clients (``python -m client.mic``, ``python -m client.file``) use them.
"""

from .events import (
    AudioDropped, Cleared, ClientEvent, Disconnected, EagerEndOfTurn, End, Error, Final, GaveUp, OtherEvent, Partial,
    Ready, Reconnected, ServerEvent, SpeechEnd, SpeechStart, StreamEvent, TurnResumed, Word,
)
from .options import ConnectionOptions, StreamOptions
from .streaming_client import StreamClosed, StreamingClient
from .transcribe import Transcript, TranscriptionError, transcribe

__all__ = [
    "StreamingClient", "StreamOptions", "ConnectionOptions", "StreamClosed", "transcribe", "Transcript",
    "TranscriptionError", "Ready", "SpeechStart", "Partial", "SpeechEnd", "Final", "Cleared", "Error", "End",
    "OtherEvent", "Disconnected", "Reconnected", "AudioDropped", "GaveUp", "ServerEvent", "ClientEvent",
    "StreamEvent", "Word", "EagerEndOfTurn", "TurnResumed",
]
