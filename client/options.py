"""Options of a :class:`~client.streaming_client.StreamingClient`: what the stream asks for, how it connects."""

from __future__ import annotations

import argparse
import re
import ssl as ssl_module
from dataclasses import dataclass, field, fields
from typing import Any

from streaming.config import VadOptions
from streaming.knobs import knobs

from .common import Backoff
from .events import start_message


@dataclass
class StreamOptions:
    """The ``start`` fields (``docs/protocol.md``); ``start_fields`` holds any others (e.g. ``step_s``)."""

    sample_rate: int = 16_000
    encoding: str = "pcm_s16le"
    language: str | None = None
    partials: bool = True
    words: bool = False
    """Finals carry ``words`` (word timings)."""
    context: str | None = None
    endpointing: bool = True
    """False = manual mode: only ``finalize`` and ``stop`` end an utterance."""
    window_s: int | None = None
    turn_detection: str | None = None
    """``silence``, ``smart`` or ``manual``; ``None`` = the server's default."""
    turn_eagerness: str | None = None
    """Smart mode: ``low``, ``medium``, ``high`` or ``auto``; ``None`` = the server's default."""
    eager_end_of_turn: bool = False
    """Smart mode: ask for ``eager_end_of_turn`` (and ``turn_resumed``) events."""
    start_fields: dict[str, Any] = field(default_factory=dict)

    def start_message(self) -> dict[str, Any]:
        return start_message(self.sample_rate, encoding=self.encoding, language=self.language,
                             window_s=self.window_s, partials=self.partials, words=self.words,
                             context=self.context, endpointing=self.endpointing,
                             extra={**turn_fields(self.turn_detection, self.turn_eagerness, self.eager_end_of_turn),
                                    **self.start_fields})


def turn_fields(turn_detection: str | None = None, turn_eagerness: str | None = None,
                eager_end_of_turn: bool = False) -> dict[str, Any]:
    """The turn-taking ``start`` fields that are set (unset ones are left to the server's defaults)."""
    out: dict[str, Any] = {}
    if turn_detection is not None:
        out["turn_detection"] = turn_detection
    if turn_eagerness is not None:
        out["turn_eagerness"] = turn_eagerness
    if eager_end_of_turn:
        out["eager_end_of_turn"] = True
    return out


def add_turn_arguments(parser: argparse.ArgumentParser) -> None:
    """``--turn-detection``, ``--turn-eagerness`` and ``--eager``: choices and help from the server's options."""
    vad = knobs(VadOptions)

    def doc(name: str) -> str:
        return re.sub(r"``(.+?)``", r"\1", " ".join(vad[name].doc.split())).removesuffix(".").replace("%", "%%")

    group = parser.add_argument_group("turn taking", "How the server decides that the speaker finished a turn "
                                      "(start fields; unset = the server's defaults).")
    group.add_argument("--turn-detection", choices=vad["turn_detection"].rules.choices,
                       help=f"{doc('turn_detection')} (default: the server's, usually {vad['turn_detection'].default})")
    group.add_argument("--turn-eagerness", choices=vad["turn_eagerness"].rules.choices,
                       help=f"{doc('turn_eagerness')} (default: the server's, usually {vad['turn_eagerness'].default})")
    group.add_argument("--eager", dest="eager_end_of_turn", action="store_true",
                       help=f"{doc('eager_end_of_turn')}. Shown as [thinking] eager: TEXT until the final")


@dataclass
class ConnectionOptions:
    """How the client connects, buffers and reconnects."""

    api_key: str | None = None
    """Sent as ``Authorization: Bearer``."""
    reconnect: bool = True
    """After a lost connection or a retryable error: reconnect and replay (else the stream ends)."""
    retry_first_connect: bool = False
    """Keep trying when the first connection fails (a live source waits for the server); else entering raises."""
    use_msgpack: bool = False
    max_buffer_s: float = 120.0
    """Unsent audio kept (while disconnected); beyond it the oldest is dropped (:class:`AudioDropped`)."""
    replay_s: float = 30.0
    """Sent audio kept until a final covers it, to send again after a reconnect."""
    max_ahead_s: float = 1.0
    """:meth:`StreamingClient.send` waits while more unsent audio than this is queued (backpressure)."""
    max_frame_s: float = 0.5
    connect_timeout_s: float = 10.0
    """Limit for opening a connection and getting ``ready``."""
    stop_timeout_s: float = 15.0
    """After :meth:`StreamingClient.stop`: how long the server has to send ``end``."""
    backoff: Backoff = field(default_factory=Backoff)
    ssl: ssl_module.SSLContext | None = None
    insecure: bool = False
    """Accept any TLS certificate (self-signed test servers)."""
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 60.0
    """Long: a server that pauses reading (backpressure) does not answer pings meanwhile."""
    close_timeout_s: float = 5.0


def split_options(options: dict[str, Any]) -> tuple[StreamOptions, ConnectionOptions]:
    """Keyword options → the two option objects; names of neither are extra start fields."""
    stream_names = {f.name for f in fields(StreamOptions)}
    connection_names = {f.name for f in fields(ConnectionOptions)}
    extra = {k: v for k, v in options.items() if k not in stream_names | connection_names}
    stream = StreamOptions(**{k: v for k, v in options.items() if k in stream_names and k != "start_fields"},
                           start_fields={**options.get("start_fields", {}), **extra})
    return stream, ConnectionOptions(**{k: v for k, v in options.items() if k in connection_names})
