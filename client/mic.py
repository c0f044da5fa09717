"""Live captions from a microphone (or a file played at real-time pace).

    python -m client.mic [--url ws://127.0.0.1:8765/v1/stream] [--device N] [--srt out.srt]

Shows the open utterance's partial in place on one terminal line and each
final as a permanent line (``--json`` prints the server's events instead);
``--srt``/``--vtt`` write subtitles as finals arrive. If the server goes away
the client keeps capturing into a bounded buffer, reconnects with exponential
backoff and sends the audio when the server is back: audio not yet covered by
a final is sent again, so a crash loses no utterance. Ctrl-C sends ``stop`` and
waits (bounded) for the last final.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from client.common import (
    DEFAULT_URL,
    RETRYABLE_ERROR_CODES,
    Backoff,
    CaptionState,
    ClientError,
    Codec,
    LatencyTracker,
    ReplayBuffer,
    TerminalDisplay,
    fetch_info,
    start_message,
    to_pcm_s16le,
    window_supported,
)
from client.subtitles import SubtitleWriter

MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 48_000
"""Sample rates a ``start`` may declare (protocol v1)."""


# --- audio sources -------------------------------------------------------------


class AudioSource(Protocol):
    """Where audio comes from: mono float32 blocks at ``sample_rate_hz``.

    ``read`` blocks until the next block is captured and returns ``None`` at the
    end of the stream (or after :meth:`close`); it is called from one capture thread.
    """

    sample_rate_hz: int

    def start(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class SoundDeviceSource:
    """A PortAudio input device (mono), at the device's native rate when the protocol allows it, else 16 kHz."""

    def __init__(self, device: int | str | None = None, sample_rate_hz: int | None = None, block_s: float = 0.1) -> None:
        import sounddevice as sd

        self._sd = sd
        info = sd.query_devices(device, "input")
        self.device_name = str(info["name"])
        rate = sample_rate_hz or int(info["default_samplerate"])
        self.sample_rate_hz = rate if MIN_RATE_HZ <= rate <= MAX_RATE_HZ else 16_000
        self.device = device
        self.block_frames = max(1, round(self.sample_rate_hz * block_s))
        self.overflows = 0
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self._stream: Any = None

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put(indata[:, 0].copy())

    def start(self) -> None:
        self._stream = self._sd.InputStream(device=self.device, channels=1, samplerate=self.sample_rate_hz,
                                            blocksize=self.block_frames, dtype="float32", callback=self._callback)
        self._stream.start()

    def read(self) -> np.ndarray | None:
        return self._queue.get()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        self._queue.put(None)


class FileSource:
    """An audio file played at real-time pace (``speed`` times faster; 0 = as fast as possible),
    at its native rate (mixed to mono), through the same path as a microphone."""

    def __init__(self, path: str | Path, speed: float = 1.0, block_s: float = 0.1) -> None:
        import soundfile as sf

        self._file = sf.SoundFile(str(path))
        if not MIN_RATE_HZ <= self._file.samplerate <= MAX_RATE_HZ:
            raise ClientError(f"{path}: sample rate {self._file.samplerate} Hz is outside 8000-48000 Hz")
        self.sample_rate_hz = int(self._file.samplerate)
        self.speed = speed
        self.block_frames = max(1, round(self.sample_rate_hz * block_s))
        self._position = 0
        self._t0 = 0.0
        self._closed = threading.Event()

    def start(self) -> None:
        self._t0 = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._closed.is_set():
            return None
        data = self._file.read(self.block_frames, dtype="float32", always_2d=True)
        if len(data) == 0:
            return None
        self._position += len(data)
        if self.speed > 0:
            # A block is "captured" once its last sample has been played.
            due = self._t0 + self._position / self.sample_rate_hz / self.speed
            if self._closed.wait(max(0.0, due - time.monotonic())):
                return None
        return data.mean(axis=1).astype(np.float32)

    def close(self) -> None:
        self._closed.set()


# --- output ------------------------------------------------------------------------


class Output:
    """Where events go: the terminal (captions or JSON lines), subtitle files and stderr notices."""

    def __init__(self, json_mode: bool = False, subtitles: list[SubtitleWriter] | None = None,
                 display: TerminalDisplay | None = None, name: str = "mic") -> None:
        self.json_mode = json_mode
        self.name = name
        self.subtitles = subtitles or []
        self.display = display or TerminalDisplay(sys.stdout, interactive=False if json_mode else None)
        self.captions = CaptionState()

    def event(self, event: dict[str, Any], offset_s: float) -> None:
        """One server event; ``offset_s`` is where this connection's stream time 0 lies in the whole capture."""
        if self.json_mode:
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            self.display.show(self.captions.apply(event))
        if event.get("type") == "final":
            for writer in self.subtitles:
                writer.add(offset_s + float(event["start_s"]), offset_s + float(event["end_s"]), str(event["text"]))

    def connection_lost(self) -> None:
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
    use_msgpack: bool = False
    """Speak msgpack instead of JSON."""
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


class MicClient:
    """Streams an :class:`AudioSource` to the server across reconnects; events go to an :class:`Output`."""

    MAX_FRAME_S = 0.5
    """Largest audio frame sent (a backlog after a reconnect is sent in pieces)."""

    def __init__(self, source: AudioSource, options: MicOptions, output: Output) -> None:
        self.source = source
        self.options = options
        self.output = output
        rate = source.sample_rate_hz
        self.buffer = ReplayBuffer(max_unsent=round(options.max_buffer_s * rate), max_replay=round(options.replay_s * rate))
        self.latency = LatencyTracker(rate)
        self.codec = Codec(options.use_msgpack)
        self.connections = 0
        self.exit_code: int | None = None
        self._finishing = False
        self._wake = asyncio.Event()
        self._give_up = asyncio.Event()
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dropping = False

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
        self.buffer.append(block)
        self.latency.captured(self.buffer.captured_pos, captured_at_s)
        dropped = self.buffer.take_dropped()
        if dropped and not self._dropping:
            self._dropping = True
            self.output.notice(f"buffer full ({self.options.max_buffer_s:g} s): dropping the oldest audio "
                               "until the server is back")
        self._wake.set()

    # -- control

    def finish(self) -> None:
        """Stop capturing: send what is left, then ``stop``; wait at most ``stop_timeout_s`` more."""
        if self._finishing:
            return
        self._finishing = True
        self.source.close()
        self._arm_give_up()
        self._wake.set()

    def _arm_give_up(self) -> None:
        assert self._loop is not None
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
        self._give_up_timer = self._loop.call_later(self.options.stop_timeout_s, self._give_up.set)

    def _on_sigint(self) -> None:
        if self._finishing:
            self.output.notice("second Ctrl-C: exiting without waiting")
            self._give_up.set()
        else:
            self.output.notice("stopping: waiting for the last final (Ctrl-C again to quit now)")
            self.finish()

    async def run(self) -> int:
        """Capture and stream until the input ends or Ctrl-C; returns the process exit code."""
        self._loop = asyncio.get_running_loop()
        try:
            self._loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
        self.source.start()
        threading.Thread(target=self._capture, name="audio-capture", daemon=True).start()
        try:
            return await self._connect_loop()
        finally:
            self.source.close()
            try:
                self._loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError):
                pass

    async def _connect_loop(self) -> int:
        attempt = 0
        while True:
            try:
                outcome = await self._session()
            except (OSError, WebSocketException, asyncio.TimeoutError) as exc:
                outcome = "lost"
                reason = _describe(exc)
                if self.connections == 0 and not self.options.retry_first_connect:
                    self.output.notice(f"cannot connect to {self.options.url}: {reason}")
                    return 1
                if self.connections == 0 and attempt == 0:
                    self.output.notice(f"cannot connect to {self.options.url}: {reason}; retrying")
                elif attempt == 0:
                    self.output.notice(f"connection lost: {reason}; reconnecting")
            else:
                if outcome == "ready-lost":
                    attempt = 0  # the last try got through: start the schedule over
                    outcome = "lost"
            if outcome in ("done", "fatal", "gave-up"):
                return {"done": 0, "fatal": 2, "gave-up": 1}[outcome]
            self.output.connection_lost()
            if self._give_up.is_set():
                return self._report_give_up()
            delay = self.options.backoff.delay_s(attempt)
            attempt += 1
            try:
                await asyncio.wait_for(self._give_up.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if self._give_up.is_set():
                return self._report_give_up()

    def _report_give_up(self) -> int:
        unsent = self.buffer.captured_pos - self.buffer.acked_pos
        self.output.notice(f"gave up after {self.options.stop_timeout_s:g} s without the server's end: "
                           f"{unsent / self.source.sample_rate_hz:.1f} s of audio may lack a final")
        return 1

    async def _session(self) -> str:
        """One connection: ``done`` (got ``end``), ``fatal``, ``gave-up``, or ``ready-lost`` (reconnect)."""
        opts = self.options
        ssl_context = _ssl_context(opts) if opts.url.startswith("wss:") else None
        async with asyncio.timeout(opts.connect_timeout_s):
            ws = await connect(opts.url, ssl=ssl_context, max_size=2**22, ping_interval=10, ping_timeout=10,
                               open_timeout=None)
        async with ws:
            start = start_message(self.source.sample_rate_hz, language=opts.language, window_s=opts.window_s)
            await ws.send(self.codec.control(start))
            async with asyncio.timeout(opts.connect_timeout_s):
                ready = self.codec.event(await ws.recv())
            if ready.get("type") == "error":
                return self._on_error(ready, before_ready=True)
            if ready.get("type") != "ready":
                raise WebSocketException(f"expected ready, got {ready.get('type')!r}")
            connection = self.connections
            self.connections += 1
            base_pos = self.buffer.rewind()
            pending_s = self.buffer.unsent / self.source.sample_rate_hz
            if connection > 0:
                self.output.notice(f"reconnected (session {ready.get('session_id')}); "
                                   f"sending {pending_s:.1f} s of audio not yet transcribed")
            if self._dropping:
                self._dropping = False
            self.output.event(ready, base_pos / self.source.sample_rate_hz)
            sender = asyncio.create_task(self._send_loop(ws))
            receiver = asyncio.create_task(self._receive_loop(ws, base_pos, connection))
            give_up = asyncio.create_task(self._give_up.wait())
            try:
                await asyncio.wait({receiver, give_up}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sender, give_up):
                    task.cancel()
                if not receiver.done():
                    receiver.cancel()
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                exc = sender.exception()
                if not isinstance(exc, ConnectionClosed):
                    raise exc  # a bug, not a network problem
            if not receiver.done() or receiver.cancelled():
                self._report_give_up()
                return "gave-up"
            try:
                return receiver.result()
            except ConnectionClosed as exc:
                self.output.notice(f"connection lost: {_describe(exc)}; reconnecting")
                return "ready-lost"

    async def _send_loop(self, ws: ClientConnection) -> None:
        max_frame = round(self.MAX_FRAME_S * self.source.sample_rate_hz)
        while True:
            if self.buffer.unsent:
                _, samples = self.buffer.take_unsent(max_frame)
                await ws.send(self.codec.audio(to_pcm_s16le(samples)))
                continue
            if self._finishing:
                await ws.send(self.codec.control({"type": "stop"}))
                self._arm_give_up()  # the server now has stop_timeout_s to send the last final
                return
            self._wake.clear()
            await self._wake.wait()

    async def _receive_loop(self, ws: ClientConnection, base_pos: int, connection: int) -> str:
        rate = self.source.sample_rate_hz
        async for frame in ws:
            event = self.codec.event(frame)
            self.latency.on_event(event, base_pos, connection, time.monotonic())
            self.output.event(event, base_pos / rate)
            kind = event.get("type")
            if kind == "final":
                self.buffer.ack(base_pos + round(float(event["end_s"]) * rate))
            elif kind == "end":
                return "done"
            elif kind == "error":
                outcome = self._on_error(event, before_ready=False)
                if outcome != "continue":
                    return outcome
        self.output.notice("the server closed the connection without end; reconnecting")
        return "ready-lost"

    def _on_error(self, event: dict[str, Any], before_ready: bool) -> str:
        code, message = event.get("code"), event.get("message", "")
        if not event.get("fatal", True):
            self.output.notice(f"server warning {code}: {message}")
            return "continue"
        if code in RETRYABLE_ERROR_CODES:
            self.output.notice(f"server error {code}: {message}; reconnecting")
            return "lost" if before_ready else "ready-lost"
        self.output.notice(f"server error {code}: {message}")
        return "fatal"


def _ssl_context(options: MicOptions) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text


# --- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client.mic",
        description="Live captions from a microphone (or a file at real-time pace) via the streaming ASR server.",
        epilog="Partials are shown in place on one line (on a terminal), finals as permanent lines. "
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
    parser.add_argument("--max-buffer-s", type=float, default=MicOptions.max_buffer_s,
                        help="audio kept while disconnected; older audio is dropped (default %(default)s)")
    parser.add_argument("--stop-timeout-s", type=float, default=MicOptions.stop_timeout_s,
                        help="how long to wait for the last final after Ctrl-C or end of input (default %(default)s)")
    parser.add_argument("--insecure", action="store_true", help="accept any TLS certificate (wss:// test servers)")
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
    options = MicOptions(url=args.url, language=args.language, window_s=args.window_s, use_msgpack=args.msgpack,
                         max_buffer_s=args.max_buffer_s, stop_timeout_s=args.stop_timeout_s, insecure=args.insecure)
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
    output = Output(json_mode=args.json, subtitles=writers)
    client = MicClient(source, options, output)
    try:
        code = asyncio.run(client.run())
    except KeyboardInterrupt:
        code = 130
    finally:
        output.close()
    print(f"[mic] {client.latency.summary()}", file=sys.stderr)
    return code


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
