"""Live captions from a microphone (or a file played at real-time pace).

    python -m client.mic [--url ws://127.0.0.1:8765/v1/stream] [--device N] [--srt out.srt]

Shows the open utterance's partial in place on one terminal line and each
final as a permanent line (``--json`` prints the server's events instead); the
in-place line starts with the turn indicator (``[speaking]``, ``[thinking]``
with the eager text of ``--eager``, ``[your turn]``: :mod:`client.turns`);
``--srt``/``--vtt`` write subtitles as finals arrive. If the server goes away
the client keeps capturing into a bounded buffer, reconnects with exponential
backoff and sends the audio when the server is back: audio not yet covered by
a final is sent again, so a crash loses no utterance. Ctrl-C sends ``stop`` and
waits (bounded) for the last final.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.exceptions import WebSocketException

from client.common import (
    DEFAULT_URL,
    Backoff,
    CaptionState,
    ClientError,
    LatencyTracker,
    TerminalDisplay,
    fetch_info,
    window_supported,
)
from client.events import AudioDropped, ClientEvent, Disconnected, Error, Final, GaveUp, Ready, Reconnected, StreamEvent
from client.options import add_turn_arguments, turn_fields
from client.streaming_client import StreamClosed, StreamingClient, describe
from client.sources import AudioSource, FileSource, SoundDeviceSource
from client.subtitles import SubtitleWriter
from client.turns import IDLE, indicator, next_turn


# --- output ------------------------------------------------------------------------


class Output:
    """Where events go: the terminal (captions or JSON lines), subtitle files and stderr notices.

    With ``turns`` the in-place line (terminals only) leads with the turn indicator."""

    def __init__(self, json_mode: bool = False, subtitles: list[SubtitleWriter] | None = None,
                 display: TerminalDisplay | None = None, name: str = "mic", turns: bool = False) -> None:
        self.json_mode = json_mode
        self.name = name
        self.subtitles = subtitles or []
        self.display = display or TerminalDisplay(sys.stdout, interactive=False if json_mode else None)
        self.captions = CaptionState()
        self.turns = turns
        self.turn = IDLE

    def event(self, event: StreamEvent) -> None:
        """One event of the stream (times are positions in the whole capture, across reconnects)."""
        if isinstance(event, ClientEvent):
            return
        if self.json_mode:
            sys.stdout.write(json.dumps(event.to_message(), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            update = self.captions.apply(event)
            if self.turns:
                turn = next_turn(self.turn, event.to_message())
                update.changed = update.changed or turn != self.turn
                self.turn = turn
                update.status, update.partial = indicator(turn, update.partial)
            self.display.show(update)
        if isinstance(event, Final):
            for writer in self.subtitles:
                writer.add(event.start_s, event.end_s, event.text)

    def connection_lost(self) -> None:
        self.turn = IDLE  # the next connection's ready starts from idle too
        if not self.json_mode:
            self.display.show(self.captions.reset_partial())

    def notice(self, message: str) -> None:
        self.display.clear()
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.display.clear()
        for writer in self.subtitles:
            writer.close()


# --- the client ----------------------------------------------------------------------


@dataclass
class MicOptions:
    """How the client talks to the server; the CLI fills these."""

    url: str = DEFAULT_URL
    """The server's stream endpoint (``ws://`` or ``wss://``)."""
    language: str | None = None
    """``language`` of the ``start`` message; ``None`` = the server's default."""
    window_s: int | None = None
    """Encoder attention window (only models that support it)."""
    turn_detection: str | None = None
    """``turn_detection`` of the ``start`` message (``silence``/``smart``/``manual``); ``None`` = the server's."""
    turn_eagerness: str | None = None
    """Smart mode: ``turn_eagerness`` (``low``/``medium``/``high``/``auto``); ``None`` = the server's."""
    eager_end_of_turn: bool = False
    """Smart mode: ask for ``eager_end_of_turn``/``turn_resumed`` (shown as ``[thinking] eager: …``)."""
    diarize: bool = False
    """Ask for speaker labels: finals are shown as ``[speaker N] text``."""
    use_msgpack: bool = False
    """Speak msgpack instead of JSON."""
    api_key: str | None = None
    """Sent as ``Authorization: Bearer`` (or put ``?token=`` in the URL)."""
    max_buffer_s: float = 120.0
    """Audio kept while disconnected; beyond this the oldest is dropped (with a warning)."""
    replay_s: float = 30.0
    """Sent audio kept until a final covers it, to resend after a reconnect."""
    stop_timeout_s: float = 15.0
    """After Ctrl-C or end of input: how long to wait for the last final and ``end``."""
    connect_timeout_s: float = 10.0
    """Limit for opening a connection and getting ``ready``."""
    backoff: Backoff = field(default_factory=Backoff)
    insecure: bool = False
    """Accept any TLS certificate (self-signed test servers)."""
    retry_first_connect: bool = True
    """Keep trying when the very first connection fails (a live source should wait for the server)."""


EXIT_CODES = {"ended": 0, "error": 2, "gave_up": 1, "failed": 1, "closed": 1}
"""Process exit status for each :attr:`StreamingClient.outcome`."""


class MicClient:
    """Streams an :class:`AudioSource` through a :class:`StreamingClient`; events go to an :class:`Output`."""

    def __init__(self, source: AudioSource, options: MicOptions, output: Output) -> None:
        self.source = source
        self.options = options
        self.output = output
        self.latency = LatencyTracker(source.sample_rate_hz)
        self.client: StreamingClient | None = None
        self._captured = 0
        self._finishing = False
        self._loss_announced = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- capture thread → event loop

    def _capture(self) -> None:
        while True:
            try:
                block = self.source.read()
            except Exception as exc:  # a broken device: report it, then finish like end of input
                self._post(self.output.notice, f"audio capture failed: {exc!r}")
                block = None
            if not self._post(self._on_block, block, time.monotonic()) or block is None:
                return

    def _post(self, callback: Any, *args: Any) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the client is exiting
            return False
        return True

    def _on_block(self, block: np.ndarray | None, captured_at_s: float) -> None:
        if block is None:
            self.finish()
            return
        assert self.client is not None
        with contextlib.suppress(StreamClosed):  # the stream is over: nothing more to send
            self.client.send_nowait(block)
            self._captured += len(block)
            self.latency.captured(self._captured, captured_at_s)

    # -- control

    def finish(self) -> None:
        """Stop capturing: send what is left, then ``stop``; wait at most ``stop_timeout_s`` more."""
        if self._finishing:
            return
        self._finishing = True
        self.source.close()
        assert self._loop is not None and self.client is not None
        self._loop.create_task(self.client.stop())

    def _on_sigint(self) -> None:
        if self._finishing:
            self.output.notice("second Ctrl-C: exiting without waiting")
            assert self._loop is not None and self.client is not None
            self._loop.create_task(self.client.close())
        else:
            self.output.notice("stopping: waiting for the last final (Ctrl-C again to quit now)")
            self.finish()

    async def run(self) -> int:
        """Capture and stream until the input ends or Ctrl-C; returns the process exit code."""
        self._loop = asyncio.get_running_loop()
        opts = self.options
        self.client = StreamingClient(
            opts.url, sample_rate=self.source.sample_rate_hz, language=opts.language, window_s=opts.window_s,
            use_msgpack=opts.use_msgpack, api_key=opts.api_key, max_buffer_s=opts.max_buffer_s,
            replay_s=opts.replay_s, stop_timeout_s=opts.stop_timeout_s, connect_timeout_s=opts.connect_timeout_s,
            backoff=opts.backoff, insecure=opts.insecure, retry_first_connect=opts.retry_first_connect,
            ping_interval_s=10, ping_timeout_s=10,  # real-time audio: a dead server is noticed fast
            **turn_fields(opts.turn_detection, opts.turn_eagerness, opts.eager_end_of_turn),
            **({"diarize": True} if opts.diarize else {}))
        try:
            self._loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
        self.source.start()
        threading.Thread(target=self._capture, name="audio-capture", daemon=True).start()
        try:
            try:
                await self.client.__aenter__()
            except (OSError, WebSocketException, TimeoutError) as exc:
                self.output.notice(f"cannot connect to {opts.url}: {describe(exc)}")
                return 1
            try:
                async for event in self.client.events():
                    self.latency.on_event(event, time.monotonic())
                    self.output.event(event)
                    self._notice(event)
            finally:
                await self.client.close()
            return EXIT_CODES[self.client.outcome or "closed"]
        finally:
            self.source.close()
            try:
                self._loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError):
                pass

    def _notice(self, event: StreamEvent) -> None:
        """What the user should read on stderr about the connection and server errors."""
        notice = self.output.notice
        if isinstance(event, Disconnected):
            self.output.connection_lost()
            if event.retry_in_s is None:
                notice(f"connection lost: {event.reason}")
            elif not self._loss_announced:  # once per outage, not once per attempt
                self._loss_announced = True
                if not event.connected_before:
                    notice(f"cannot connect to {self.options.url}: {event.reason}; retrying")
                elif event.code:
                    notice(f"{event.reason}; reconnecting")
                else:
                    notice(f"connection lost: {event.reason}; reconnecting")
        elif isinstance(event, Reconnected):
            self._loss_announced = False
            notice(f"reconnected (session {event.session_id}); "
                   f"sending {event.replay_s:.1f} s of audio not yet transcribed")
        elif isinstance(event, AudioDropped):
            notice(f"buffer full ({event.buffer_s:g} s): dropping the oldest audio until the server is back")
        elif isinstance(event, GaveUp):
            notice(f"gave up after {event.timeout_s:g} s without the server's end: "
                   f"{event.unacknowledged_s:.1f} s of audio may lack a final")
        elif isinstance(event, Error):
            notice(f"server {'error' if event.fatal else 'warning'} {event.code}: {event.message}")
        elif isinstance(event, Ready):
            self._loss_announced = False


def _ssl_context(options: MicOptions) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client.mic",
        description="Live captions from a microphone (or a file at real-time pace) via the streaming ASR server.",
        epilog="Partials are shown in place on one line (on a terminal), finals as permanent lines; the line "
               "starts with the turn indicator: [speaking] while you hold the turn, [thinking] while the server "
               "judges a pause or owes the final (with --eager: the tentative text), [your turn] after the final. "
               "If the server goes away the client buffers audio, reconnects with backoff and sends it when "
               "the server is back. Ctrl-C sends stop and waits for the last final.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server stream URL (default {DEFAULT_URL})")
    parser.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    parser.add_argument("--device", help="input device: index or name substring (default: the system default)")
    parser.add_argument("--sample-rate", type=int, help="capture rate in Hz (default: the device's native rate)")
    parser.add_argument("--input", metavar="FILE", help="play FILE at real-time pace instead of using a microphone")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="with --input: playback speed (2 = twice real time, 0 = as fast as possible)")
    parser.add_argument("--language", help="language code, e.g. en (default: the server's)")
    parser.add_argument("--window-s", type=int, help="encoder attention window in seconds (models that support it)")
    parser.add_argument("--json", action="store_true", help="print every server event as a JSON line")
    parser.add_argument("--srt", metavar="FILE", help="write SRT subtitles as finals arrive")
    parser.add_argument("--vtt", metavar="FILE", help="write WebVTT subtitles as finals arrive")
    parser.add_argument("--msgpack", action="store_true", help="speak msgpack instead of JSON")
    parser.add_argument("--diarize", action="store_true",
                        help="speaker labels: each final is shown as [speaker N] text (servers with supports_diarize)")
    parser.add_argument("--api-key", help="API key, sent as Authorization: Bearer (servers started with keys)")
    parser.add_argument("--max-buffer-s", type=float, default=MicOptions.max_buffer_s,
                        help="audio kept while disconnected; older audio is dropped (default %(default)s)")
    parser.add_argument("--stop-timeout-s", type=float, default=MicOptions.stop_timeout_s,
                        help="how long to wait for the last final after Ctrl-C or end of input (default %(default)s)")
    parser.add_argument("--insecure", action="store_true", help="accept any TLS certificate (wss:// test servers)")
    add_turn_arguments(parser)
    return parser


def _device_arg(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_devices:
        import sounddevice as sd

        devices = sd.query_devices()
        print(devices if len(devices) else "no audio devices found")
        return 0
    options = options_from_args(args)
    try:
        if args.window_s is not None:
            _check_window_supported(options)
        if args.input:
            source: AudioSource = FileSource(args.input, speed=args.speed)
        else:
            source = SoundDeviceSource(_device_arg(args.device), args.sample_rate)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # PortAudio errors and unreadable files are user-facing here
        print(f"error: cannot open audio input: {exc}", file=sys.stderr)
        return 2
    writers = [SubtitleWriter(path, fmt) for path, fmt in ((args.srt, "srt"), (args.vtt, "vtt")) if path]
    output = Output(json_mode=args.json, subtitles=writers, turns=True)
    client = MicClient(source, options, output)
    try:
        code = asyncio.run(client.run())
    except KeyboardInterrupt:
        code = 130
    finally:
        output.close()
    print(f"[mic] {client.latency.summary()}", file=sys.stderr)
    return code


def options_from_args(args: argparse.Namespace) -> MicOptions:
    """The parsed flags of :func:`build_parser` as :class:`MicOptions`."""
    return MicOptions(url=args.url, language=args.language, window_s=args.window_s,
                      turn_detection=args.turn_detection, turn_eagerness=args.turn_eagerness,
                      eager_end_of_turn=args.eager_end_of_turn, diarize=args.diarize, use_msgpack=args.msgpack,
                      api_key=args.api_key,
                      max_buffer_s=args.max_buffer_s, stop_timeout_s=args.stop_timeout_s, insecure=args.insecure)


def _check_window_supported(options: MicOptions) -> None:
    """Refuse ``--window-s`` up front when ``/v1/info`` says the model has no such knob."""
    try:
        info = fetch_info(options.url, ssl_context=_ssl_context(options) if options.url.startswith("wss:") else None)
    except (OSError, ValueError):
        return  # cannot ask: send it and let the server's error say why
    if window_supported(info) is False:
        raise ClientError(f"--window-s is not supported by the server's model ({info.get('model', '?')})")


if __name__ == "__main__":
    sys.exit(main())
