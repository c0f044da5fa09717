"""The WebSocket server: a thin I/O shell around :class:`Session` and the :class:`Engine`.

It moves frames between sockets and sessions, carries out the sessions'
actions (send, engine work, close), enforces connection-level limits (session
count, frame size, idle and slow clients), serves the browser demo and
``/v1/info`` / ``/healthz`` over plain HTTP, and drains gracefully on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import mimetypes
import ssl
import threading
import time
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.http11 import Request, Response

from . import auth, http
from .admission import AdmissionControl
from .channels import ChannelSessions
from .config import Config, session_field_info
from .engine import Engine, EngineClosed
from .evaluation import REPO_ROOT
from .file_jobs import FileJobLimits, TranscriptionService
from .handshake import HttpServerConnection, to_response
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from . import events as ev
from .codecs import Codec, Handshake, HandshakeRefused, codec_for_path
from .link import Link, LinkAction, Send
from .outbox import Outbox, Outgoing
from .protocol import ProtocolError, protocol_facts
from .results import FinalResult
from .session import (Close, DiscardUtterance, EmbedSpeakers, FeedAudio, ModelInfo, OpenUtterance, RequestEager, RequestFinal,
                      RequestPartial, ScoreTurn, Wake)

if TYPE_CHECKING:
    from .models.base import Backend

log = logging.getLogger("streaming.server")
_OFFLOAD_FRAME_BYTES = 32 * 1024
"""Frames from this size (1 s of 16 kHz s16 audio) are handled off the event loop."""
STREAM_PATH = "/v1/stream"


class StreamingServer:
    """Serves sessions for one backend; use :meth:`start` / :meth:`drain` / :meth:`stop`."""

    def __init__(self, backend: Backend, config: Config) -> None:
        self.backend = backend
        self.config = config
        self.turn_model = _load_turn_model(config)
        """The end-of-turn model of ``turn_detection = "smart"`` (None: not installed; smart is refused)."""
        self.speaker_encoder = _load_speaker_encoder()
        """The speaker encoder of ``diarize`` (None: not installed; diarize is refused)."""
        self.engine = Engine(backend, max_batch=config.engine.max_batch, threads=config.model.threads,
                             partial_batch_s=config.engine.partial_batch_s, partial_shed_s=config.engine.partial_shed_s,
                             turn_model=self.turn_model, speaker_encoder=self.speaker_encoder)
        self.model_info = ModelInfo(backend.name, backend.supports_window, backend.max_utterance_s,
                                    backend.validate_options, turn_model=self.turn_model is not None,
                                    eager_decodes=backend.supports_eager,
                                    final_reuses_partial=backend.final_reuses_partial,
                                    speaker_encoder=self.speaker_encoder is not None)
        self.web_dir = Path(config.server.web_dir) if config.server.web_dir else REPO_ROOT / "web"
        self.sessions: dict[str, _Connection] = {}
        """Started sessions (admitted at their ``start``)."""
        self.pending: dict[str, _Connection] = {}
        """Connections that have not sent ``start`` yet, oldest first."""
        self.draining = False
        self.started_at = time.time()
        self.sessions_total = 0
        self._server = None
        opts = config.server
        self.keyring = auth.KeyRing(auth.load_keys(opts.api_keys, opts.api_keys_file, opts.max_sessions_per_key))
        self.metrics = ServerMetrics(lambda: self.engine.pending, lambda: self.engine.stats.busy_s,
                                     model=backend.name)
        self.engine.on_batch = self.metrics.batch
        self.admission = AdmissionControl(self.engine, config, on_capacity=self.metrics.set_capacity)
        """Admission by capacity (``overloaded``): measured at :meth:`start` unless configured."""
        self.loop_lag = LoopLagMonitor(observe=self.metrics.event_loop_lag)
        limits = FileJobLimits(opts.max_upload_bytes, opts.max_file_audio_s, opts.max_file_jobs, opts.upload_timeout_s)
        self.transcriptions = TranscriptionService(self.engine, config, metrics=self.metrics, limits=limits)
        """``POST /v1/audio/transcriptions``: files cut by the sessions' VAD, decoded by the same engine."""

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        opts = self.config.server
        auth.check_exposure(opts.host, self.keyring.keys, opts.allow_unauthenticated)
        if self.keyring.enabled:
            log.info("API keys required (%d key(s): %s)", len(self.keyring.keys),
                     ", ".join(k.id for k in self.keyring.keys))
        ssl_context = None
        if opts.certfile:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(opts.certfile, opts.keyfile or None)
        await self.admission.start(self.backend)  # before the engine runs: the probe has the model alone
        self.engine.start()
        self._server = await serve(
            self._handle, opts.host, opts.port, process_request=self._process_request,
            create_connection=type("Connection", (HttpServerConnection,),
                                   {"request_head_timeout_s": opts.request_head_timeout_s}),
            select_subprotocol=lambda _conn, offered: auth.select_subprotocol(offered),
            # The protocol's own limit sends an error event first; this is the hard stop.
            max_size=max(opts.max_message_bytes * 4, 1 << 16), ssl=ssl_context,
            # A small receive queue: frames waiting in it are memory too (backpressure stops reading).
            # Keepalive pings are the connection's own (_Connection._keepalive): websockets' would
            # drop a client whose pong waits behind audio the server chose not to read yet.
            ping_interval=None, ping_timeout=None, max_queue=8, close_timeout=opts.close_timeout_s,
            # websockets' open_timeout would also cut process_request, which a file transcription
            # outlives; HttpServerConnection bounds the request head itself (request_head_timeout_s).
            open_timeout=None)
        self.loop_lag.start()
        # The model and its libraries leave ~350,000 long-lived objects; a full garbage
        # collection over them took 360 ms on the event loop (the worst stall a flood of small
        # frames caused). Frozen, later collections scan only what the server makes afterwards.
        gc.collect()
        gc.freeze()

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.server.certfile else "ws"
        return f"{scheme}://{self.config.server.host}:{self.port}{STREAM_PATH}"

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop accepting sessions; let open ones finish their pending finals, then close them."""
        self.draining = True
        timeout_s = self.config.server.drain_timeout_s if timeout_s is None else timeout_s
        if self.sessions:
            log.info("draining %d session(s), up to %.0f s", len(self.sessions), timeout_s)
        for conn in list(self.pending.values()):
            conn.refuse(ProtocolError("shutting_down", "the server is shutting down"))
        for conn in list(self.sessions.values()):
            conn.fail(ProtocolError("shutting_down", "the server is shutting down"))
        deadline = time.monotonic() + timeout_s
        while (self.sessions or self.pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.loop_lag.stop()
        self.admission.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.to_thread(self.engine.stop)

    # ---- HTTP ----------------------------------------------------------------------------------

    def info(self, include_load: bool = True) -> dict[str, Any]:
        """Model facts for anyone; load figures (sessions, engine) only when ``include_load``."""
        cfg = self.config
        facts: dict[str, Any] = {
            "model": self.backend.name, "protocol": protocol_facts(), "multilingual": self.backend.multilingual,
            "supports_translate": self.backend.supports_translate,
            "supports_diarize": self.speaker_encoder is not None,
            "supports_window": self.backend.supports_window, "max_utterance_s": self.backend.max_utterance_s,
            "defaults": {"language": cfg.session.language, "step_s": cfg.session.step_s,
                         "window_s": cfg.session.window_s, "endpoint_silence_ms": cfg.vad.endpoint_silence_ms,
                         "turn_detection": cfg.vad.turn_detection, "turn_eagerness": cfg.vad.turn_eagerness,
                         "eager_end_of_turn": cfg.vad.eager_end_of_turn},
            "start_fields": session_field_info(),
            "turn_detection": {"modes": ["silence", "manual"] + (["smart"] if self.turn_model else []),
                               "turn_model": self.turn_model.name if self.turn_model else None,
                               "eager_end_of_turn": bool(self.turn_model) and self.backend.supports_eager},
            "limits": {"max_sessions": cfg.server.max_sessions, "max_message_bytes": cfg.server.max_message_bytes,
                       "idle_timeout_s": cfg.server.idle_timeout_s},
            "auth": {"required": self.keyring.enabled, "subprotocol": auth.SUBPROTOCOL,
                     "subprotocol_prefix": auth.BEARER_PREFIXES[0]},
        }
        if include_load:
            facts.update({
                "sessions": len(self.sessions), "sessions_total": self.sessions_total,
                "connections_waiting_to_start": len(self.pending),
                "engine": {"pending": self.engine.pending, "batches": self.engine.stats.batches,
                           "busy_s": round(self.engine.stats.busy_s, 2)},
                "capacity": self.admission.describe(len(self.sessions)),
                "event_loop_lag_max_s": round(self.loop_lag.max_lag_s, 4),
                "uptime_s": round(time.time() - self.started_at, 1), "draining": self.draining,
            })
        return facts

    @property
    def ready(self) -> bool:
        """Whether a new session would be accepted now (``/readyz``)."""
        return not self.readiness()

    def readiness(self) -> str:
        """Why a new session would be refused now ("" = it would be accepted): ``/readyz``'s body."""
        if self.draining:
            return "draining"
        if len(self.sessions) >= self.config.server.max_sessions:
            return f"full: {len(self.sessions)} of max_sessions {self.config.server.max_sessions} open"
        refusal = self.admission.refusal(len(self.sessions))
        return "" if refusal is None else f"full: {refusal.message}"

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer plain HTTP, or vet a WebSocket handshake (origin, key, per-key limit): None = accept."""
        decision = http.route(request.method, request.path, request.headers)
        if isinstance(decision, http.Reply):
            return to_response(decision)
        opts = self.config.server
        headers = request.headers
        if not auth.origin_allowed(headers.get("Origin"), headers.get("Host"), opts.allowed_origins,
                                   tls=bool(opts.certfile)):
            return self._refuse(decision, auth.Refusal(403, "forbidden_origin", "origin not allowed"))
        token, source = auth.extract_token(headers, decision.query)
        key = self.keyring.match(token)
        authorized = key is not None or not self.keyring.enabled
        endpoint = decision.endpoint
        if endpoint == "stream":
            held = self._sessions_of(key.id) if key is not None else 0
            refusal = auth.authorize_session(self.keyring, key, token is not None, held)
            if refusal is not None:  # the key first, as the emulated services do: no key, no details
                return self._refuse(decision, refusal, source)
            path = request.path.partition("?")[0]
            handshake = Handshake(path, decision.query, request.headers)
            try:
                codec_for_path(path).check_handshake(handshake)
            except HandshakeRefused as exc:
                log.warning("refused %s: %s", path, exc.message)
                return self._reply(decision, http.text_reply(exc.status, exc.message))
            connection.handshake = handshake
            connection.principal = key.id if key is not None else None
            return None
        if endpoint in ("transcriptions", "translations"):
            if not authorized:
                return self._refuse(decision, auth.unauthorized(token is not None), source)
            principal = key.id if key is not None else None
            task = "translate" if endpoint == "translations" else "transcribe"
            return self._reply(decision, await self.transcriptions.handle(connection, headers, principal, task))
        if endpoint == "healthz":
            return self._reply(decision, http.text_reply(200, "ok"))
        if endpoint == "readyz":
            why = self.readiness()
            return self._reply(decision, http.text_reply(503 if why else 200, why or "ready"))
        if endpoint == "info":
            body = json.dumps(self.info(include_load=authorized or opts.info_public)).encode()
            return self._reply(decision, http.Reply(200, body, "application/json"))
        if endpoint == "metrics":
            if not (authorized or opts.info_public):
                return self._refuse(decision, auth.unauthorized(token is not None), source)
            return self._reply(decision, http.Reply(200, self.metrics.render(), METRICS_CONTENT_TYPE))
        return self._static(decision)

    def _sessions_of(self, principal: str) -> int:
        """Connections (started sessions and those waiting to start) that hold this key."""
        conns = [*self.sessions.values(), *getattr(self, "pending", {}).values()]
        return sum(1 for c in conns if getattr(c, "principal", None) == principal)

    def _refuse(self, route: http.Route, refusal: auth.Refusal, source: str = "none") -> Response:
        if route.endpoint == "stream":
            self.metrics.session_refused(refusal.reason)
        log.warning("refused %s: %s (%d; key from %s)", route.endpoint, refusal.reason, refusal.status, source)
        extra = (("WWW-Authenticate", 'Bearer realm="streaming-asr"'),) if refusal.status == 401 else ()
        return self._reply(route, http.text_reply(refusal.status, refusal.message, headers=extra))

    @staticmethod
    def _reply(route: http.Route, reply: http.Reply) -> Response:
        return to_response(reply, head=route.head)

    def _static(self, route: http.Route) -> Response:
        """A file of the web folder; ``route.name`` is already a plain relative name (see ``http.route``)."""
        root = self.web_dir.resolve()
        try:
            target = (root / route.name).resolve()
            found = target.is_relative_to(root) and target.is_file()
            body = target.read_bytes() if found else b""
        except (OSError, ValueError):  # a name the file system refuses is simply not there
            found = False
        if not found:
            return self._reply(route, http.text_reply(404, "not found"))
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix in (".js", ".mjs"):
            kind = "text/javascript"
        kind += "; charset=utf-8" if kind.startswith("text/") else ""
        return self._reply(route, http.Reply(200, body, kind))

    # ---- WebSocket sessions -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        session_id = uuid.uuid4().hex[:12]
        conn = _Connection(self, ws, session_id)
        peer = ws.remote_address[0] if ws.remote_address else "?"
        refusal = self._admission_error(conn)  # checked again at start; refused early when it is clear
        if refusal is not None:
            conn.refuse(refusal)
            try:
                await conn.finished()
            finally:
                conn.release()  # its sender and pinger end with it
            return
        # Connections that have not started are bounded apart from sessions; when too many
        # wait, the oldest is closed (a socket that never sends start cannot lock anyone out).
        self.pending[session_id] = conn
        if len(self.pending) > self.config.server.max_pending_connections:
            oldest = self.pending.pop(next(iter(self.pending)))
            log.warning("session %s: too many connections waiting to start; closing the oldest", oldest.session_id)
            oldest.refuse(ProtocolError("idle_timeout", "too many connections waiting to start; send start at once"))
        log.debug("session %s: connection from %s (%d waiting to start)", session_id, peer, len(self.pending))
        try:
            await conn.run()
        finally:
            self.pending.pop(session_id, None)
            started = self.sessions.pop(session_id, None) is not None
            conn.release()
            if started:
                conn.log_closed()
                self.admission.session_closed(time.monotonic() - conn.opened_at)

    def _admission_error(self, conn: _Connection) -> ProtocolError | None:
        if self.draining:
            return ProtocolError("shutting_down", "the server is shutting down")
        limit = self.config.server.max_sessions
        if len(self.sessions) >= limit:
            log.warning("session %s refused: too_many_sessions (%d open)", conn.session_id, len(self.sessions))
            return ProtocolError("too_many_sessions", f"the server holds its maximum of {limit} sessions; retry later")
        refusal = self.admission.refusal(len(self.sessions))
        if refusal is not None:
            log.warning("session %s refused: overloaded (%d open): %s", conn.session_id, len(self.sessions),
                        refusal.message)
        return refusal

    def _admit(self, conn: _Connection) -> ProtocolError | None:
        """Called by a session at its ``start``: take it from the waiting connections into the sessions."""
        refusal = self._admission_error(conn)
        if refusal is not None:
            self.metrics.session_refused(refusal.code)
            return refusal
        self.pending.pop(conn.session_id, None)
        self.sessions[conn.session_id] = conn
        self.sessions_total += 1
        self.metrics.session_opened()
        peer = conn.ws.remote_address[0] if conn.ws.remote_address else "?"
        log.info("session %s opened from %s (%d open)", conn.session_id, peer, len(self.sessions))
        return None


class _Connection:
    """One WebSocket bound to one Session: reads frames (with backpressure), executes the
    session's actions, and owns the outbox and the task that sends it."""

    def __init__(self, server: StreamingServer, ws: ServerConnection, session_id: str) -> None:
        self.server = server
        self.ws = ws
        self.session_id = session_id
        self.options = server.config.server
        self.principal: str | None = getattr(ws, "principal", None)
        """The API key id the handshake authenticated (None without auth)."""
        handshake: Handshake = getattr(ws, "handshake", None) or Handshake(STREAM_PATH)
        codec: Codec = codec_for_path(handshake.path)(session_id, server.backend.name, handshake)
        self.session = ChannelSessions(session_id, server.config, server.model_info,
                                       admit=lambda: server._admit(self))
        self.link = Link(codec, self.session, self.options.max_message_bytes)
        self.idle_timeout_s = codec.idle_timeout_s or self.options.idle_timeout_s
        self.engine = server.engine
        self.metrics = server.metrics
        self.outbox = Outbox(self.options.send_queue_events, self.options.send_queue_bytes)
        self.close_reason = "client went away"
        self.outcome = "client_gone"
        self.opened_at = time.monotonic()
        self._wake = asyncio.Event()
        """Set when the outbox has something to send."""
        self._progress = asyncio.Event()
        """Set when the engine delivers a result for this session (backpressure waits on it)."""
        self._closing: Close | None = None
        self._closed = asyncio.Event()
        self._open_keys: set[tuple[str, int]] = set()
        self._turn_timer: asyncio.TimerHandle | None = None
        self._frame_at = self.opened_at
        self._in_thread = False
        self._deferred: list[Callable[[], list[LinkAction] | None]] = []
        """When the frame being handled arrived (latency metrics are measured from there)."""
        self._started_at: dict[int, float] = {}
        self._ended_at: dict[int, float] = {}
        self._first_partial_sent: set[int] = set()
        self._sender = asyncio.create_task(self._send_loop())
        self._paused = False
        """Not reading the socket on purpose (backpressure)."""
        self._pinger = asyncio.create_task(self._keepalive()) if self.options.ping_interval_s > 0 else None

    # ---- reading -------------------------------------------------------------------------------

    async def run(self) -> None:
        alive_at = self.opened_at
        try:
            self.execute(self.link.open())
            while not self.session.closed:
                deadline, error = self._deadline(alive_at)
                try:
                    async with asyncio.timeout_at(deadline):
                        frame = await self.ws.recv()
                except TimeoutError:
                    self.fail(error)
                    break
                self._frame_at = time.monotonic()
                samples_before = self.session.audio_samples
                self.execute(await self._receive(frame))
                self._run_deferred()
                if self.session.audio_samples > samples_before:
                    self.metrics.audio_in((self.session.audio_samples - samples_before) / 16_000)
                if self.link.last_valid_message is not None:
                    alive_at = self._frame_at
                if await self._pace():
                    alive_at = max(alive_at, time.monotonic())
        except ConnectionClosed:
            if not self.session.closed:
                log.info("session %s: client disconnected without stop", self.session_id)
            if self._closing is None or self.ws.state is State.CLOSED:
                self._sender.cancel()  # nobody to send to any more
                self._closed.set()
        await self.finished()

    async def _receive(self, frame: str | bytes) -> list[LinkAction]:
        """The session's handling of one frame; a large frame is handled in a thread.

        Decoding, resampling and voice activity detection of one 1 MiB frame (32 s of
        audio) take about 200 ms, most of it the neural VAD, which releases the GIL:
        off the loop, other sessions go on meanwhile. Results the engine delivers
        in the meantime wait in ``_deferred``, so the session is only ever touched
        by one thread at a time.
        """
        if len(frame) < _OFFLOAD_FRAME_BYTES:
            return self.link.receive(frame)
        self._in_thread = True
        try:
            return await asyncio.to_thread(self.link.receive, frame)
        finally:
            self._in_thread = False

    def _session_call(self, call: Callable[[], list[LinkAction] | None]) -> None:
        """Run a session method now and carry out its actions, or after the frame being handled in a thread."""
        if self._in_thread:
            self._deferred.append(call)
            return
        self.execute(call() or [])

    def _run_deferred(self) -> None:
        while self._deferred:
            self.execute(self._deferred.pop(0)() or [])

    def fail(self, error: ProtocolError) -> None:
        """End the session with ``error`` (its speech so far still gets its finals)."""
        self._session_call(lambda: self.link.fail(error))

    def _deadline(self, alive_at: float) -> tuple[float | None, ProtocolError]:
        """When the next read gives up, and with which error."""
        opts = self.options
        loop_now = asyncio.get_running_loop().time()
        to_loop = lambda t: loop_now + (t - time.monotonic())  # noqa: E731 - monotonic → loop clock
        state = self.session.state
        if state == "awaiting_start":
            return to_loop(self.opened_at + opts.start_timeout_s), ProtocolError(
                "idle_timeout", f"no start message within {opts.start_timeout_s:g} s")
        if state != "streaming":
            return None, ProtocolError("idle_timeout", "")  # draining: wait for the finals
        idle_end = alive_at + self.idle_timeout_s
        session_end = self.opened_at + opts.max_session_s
        if session_end <= idle_end:
            return to_loop(session_end), ProtocolError(
                "session_too_long", f"the session reached the maximum duration of {opts.max_session_s:g} s")
        return to_loop(idle_end), ProtocolError(
            "idle_timeout", f"no audio or keepalive for {self.idle_timeout_s:g} s")

    async def _pace(self) -> bool:
        """Yield to other sessions, then wait while this session's engine backlog is over its bounds.

        Not reading is the backpressure: the socket's buffers fill and a client that sends
        faster than the engine decodes is slowed down by TCP, not by server memory.
        Returns whether it had to wait.
        """
        await asyncio.sleep(0)  # a flood of small frames must not starve the other sessions
        waited = False
        while not self.session.closed and self._over_backlog():
            waited = self._paused = True
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # re-check even if a result was lost with its session
                    await self._progress.wait()
        self._paused = False
        return waited

    def _over_backlog(self) -> bool:
        backlog = self.engine.backlog(self.session_id)
        return (backlog.finals >= self.options.max_pending_finals
                or backlog.audio_s > self.options.max_audio_ahead_s)

    async def finished(self) -> None:
        """Wait until the session has sent its last event and closed (or the peer vanished)."""
        await self._closed.wait()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._sender, timeout=self.options.close_timeout_s + 1)

    def release(self) -> None:
        self._set_turn_timer(None)
        for key in self._open_keys:
            self.engine.discard(key)
        self._open_keys.clear()
        self._sender.cancel()
        if self._pinger is not None:
            self._pinger.cancel()

    async def _keepalive(self) -> None:
        """Ping every ``ping_interval_s``; a peer whose pong does not come within ``ping_timeout_s``
        of reading time is dead and its connection aborted. While the server is not reading on
        purpose (backpressure), the pong may be waiting behind audio, so that time does not count."""
        loop = asyncio.get_running_loop()
        timeout = self.options.ping_timeout_s
        try:
            while True:
                await asyncio.sleep(self.options.ping_interval_s)
                try:
                    async with asyncio.timeout(timeout):
                        pong = await self.ws.ping()
                except TimeoutError:
                    pong = None  # it does not even take the ping: dead (or not reading at all)
                deadline = loop.time() + timeout
                while pong is not None and not pong.done():
                    if self._paused:
                        deadline = loop.time() + timeout
                    if loop.time() >= deadline:
                        pong = None
                        break
                    await asyncio.wait({pong}, timeout=min(0.5, deadline - loop.time()))
                if pong is None:
                    log.warning("session %s: no pong within %g s; dropping the connection", self.session_id, timeout)
                    self.outcome = "ping_timeout"
                    self.close_reason = "no pong (dead peer)"
                    self.ws.transport.abort()
                    return
        except (ConnectionClosed, asyncio.CancelledError):
            return

    def refuse(self, error: ProtocolError) -> None:
        """End a connection that has not started (limits, shutdown, eviction)."""
        self.metrics.session_refused(error.code)
        self.fail(error)

    def log_closed(self) -> None:
        duration = time.monotonic() - self.opened_at
        audio_s = self.session.audio_samples / 16_000
        self.metrics.session_closed(self.outcome, duration, audio_s, self.session.utterance_count)
        log.info("session %s closed: %s; %.1f s, %.1f s of audio, %d utterance(s)", self.session_id,
                 self.close_reason, duration, audio_s, self.session.utterance_count,
                 extra={"event": "session_closed", "session_id": self.session_id, "outcome": self.outcome,
                        "duration_s": round(duration, 3), "audio_s": round(audio_s, 3),
                        "utterances": self.session.utterance_count, "principal": self.principal})

    # ---- actions -------------------------------------------------------------------------------

    def execute(self, actions: list[LinkAction]) -> None:
        sid = self.session_id
        for action in actions:
            if isinstance(action, Send):
                self._enqueue(action)
            elif isinstance(action, FeedAudio):
                self.engine.feed((sid, action.utterance_id), action.audio)
            elif isinstance(action, OpenUtterance):
                key = (sid, action.utterance_id)
                self._open_keys.add(key)
                self.engine.open(key, action.options, group=sid)
            elif isinstance(action, RequestPartial):
                future = self.engine.request_partial((sid, action.utterance_id))
                future.add_done_callback(lambda f, u=action.utterance_id: self._on_partial(u, f))
            elif isinstance(action, RequestFinal):
                future = self.engine.request_final((sid, action.utterance_id))
                future.add_done_callback(lambda f, u=action.utterance_id: self._on_final(u, f))
            elif isinstance(action, DiscardUtterance):
                key = (sid, action.utterance_id)
                self._open_keys.discard(key)
                self.engine.discard(key)
            elif isinstance(action, ScoreTurn):
                future = self.engine.score_turn(action.audio)
                future.add_done_callback(lambda f, a=action: self._on_turn_score(a, f))
            elif isinstance(action, RequestEager):
                future = self.engine.request_eager((sid, action.utterance_id))
                future.add_done_callback(lambda f, a=action: self._on_eager(a, f))
            elif isinstance(action, EmbedSpeakers):
                future = self.engine.embed_speakers(action.audio)
                future.add_done_callback(lambda f, u=action.utterance_id: self._on_speakers(u, f))
            elif isinstance(action, Wake):
                self._set_turn_timer(action.after_s)
            elif isinstance(action, Close):
                self.close_reason = f"{action.code} {action.reason}"
                self.outcome = "completed" if action.code == 1000 else action.reason
                self._closing = action
                self._wake.set()

    def _on_partial(self, utterance_id: int, future: asyncio.Future) -> None:
        self._progress.set()
        if future.cancelled() or isinstance(future.exception(), EngineClosed):
            return
        if future.exception() is not None:
            self._internal_error(future.exception())
            return
        self._session_call(lambda: self.link.partial_ready(utterance_id, future.result()))

    def _on_turn_score(self, action: ScoreTurn, future: asyncio.Future) -> None:
        """The end-of-turn model's answer; a failure leaves the pause to its maximum silence."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and not isinstance(exc, EngineClosed):
            log.warning("session %s: end-of-turn model failed: %r", self.session_id, exc)
        probability = None if exc is not None else future.result()
        self._session_call(lambda: self.link.turn_scored(action.utterance_id, action.pause, probability))

    def _on_speakers(self, utterance_id: int, future: asyncio.Future) -> None:
        """The speaker encoder's windows; a failure still lets the final go out (with the previous speaker)."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and not isinstance(exc, EngineClosed):
            log.warning("session %s: speaker encoder failed: %r", self.session_id, exc)
        windows = None if exc is not None else future.result()
        self._session_call(lambda: self.link.speakers_ready(utterance_id, windows))

    def _on_eager(self, action: RequestEager, future: asyncio.Future) -> None:
        self._progress.set()
        if future.cancelled() or isinstance(future.exception(), EngineClosed):
            return
        if future.exception() is not None:
            self._internal_error(future.exception())
            return
        self._session_call(lambda: self.link.eager_ready(action.utterance_id, action.pause, future.result()))

    def _set_turn_timer(self, after_s: float | None) -> None:
        """The session's wall-clock timer (smart turn detection's maximum silence): one at a time."""
        if self._turn_timer is not None:
            self._turn_timer.cancel()
            self._turn_timer = None
        if after_s is not None:
            self._turn_timer = asyncio.get_running_loop().call_later(
                after_s, lambda: self._session_call(self.link.wake))

    def _on_final(self, utterance_id: int, future: asyncio.Future) -> None:
        self._progress.set()
        key = (self.session_id, utterance_id)
        self._open_keys.discard(key)
        if future.cancelled() or isinstance(future.exception(), EngineClosed):
            return
        exc = future.exception()
        if exc is not None:
            log.error("session %s: final of utterance %d failed: %r", self.session_id, utterance_id, exc)
            # The session ends with internal_error; the utterance is still owed, so it is answered
            # empty and the finals before it still go out, in order, before the error.
            self._internal_error(exc)
            self._session_call(lambda: self.link.final_ready(utterance_id, FinalResult(text="", language=None)))
            return
        self._session_call(lambda: self.link.final_ready(utterance_id, future.result()))

    def _internal_error(self, exc: BaseException) -> None:
        log.error("session %s: engine error: %r", self.session_id, exc)
        self.fail(ProtocolError("internal_error", f"inference failed: {exc}"))

    # ---- sending -------------------------------------------------------------------------------

    def _enqueue(self, send: Send) -> None:
        if self._closing is not None and self._closing.reason == "slow_client":
            return
        event, frame = send.event, send.frame
        meta: dict[str, Any] = {}
        if isinstance(event, ev.SpeechStarted):
            self._started_at[event.utterance_id] = self._frame_at
        elif isinstance(event, ev.SpeechEnded):
            self._ended_at[event.utterance_id] = self._frame_at
        elif (isinstance(event, ev.Partial) and event.utterance_id not in self._first_partial_sent
              and event.utterance_id in self._started_at):
            meta["first_partial_from"] = self._started_at[event.utterance_id]
        elif isinstance(event, ev.Final):
            meta["final_from"] = self._ended_at.pop(event.utterance_id, None)
            self._started_at.pop(event.utterance_id, None)
        elif isinstance(event, ev.Error):
            self.metrics.error(event.code)
        # Only a frame the codec marks "partial" may be replaced by a newer one while both wait
        # (full-text partials); append-only deltas of a partial never are.
        kind = "final" if isinstance(event, ev.Final) and frame.kind != "partial" else frame.kind
        uid = frame.utterance_id if frame.utterance_id is not None else getattr(event, "utterance_id", None)
        if self.outbox.put(Outgoing(frame.data, kind, uid, meta)):
            self._wake.set()
            return
        self._slow_client(f"{len(self.outbox)} events ({self.outbox.bytes} bytes) unsent")

    def _slow_client(self, why: str) -> None:
        """A client that does not read: close it now, aborting the transport if it will not take the close."""
        log.warning("session %s: client reads too slowly (%s); closing", self.session_id, why)
        self.metrics.error("slow_client")
        self._session_call(self.link.abandon)
        self.outbox.clear()
        self.close_reason = "1008 slow_client"
        self.outcome = "slow_client"
        self._closing = Close(1008, "slow_client")
        self._sender.cancel()  # it may be stuck writing to a socket nobody reads
        self._sender = asyncio.create_task(self._close_transport(self._closing))

    async def _send_loop(self) -> None:
        try:
            while True:
                item = self.outbox.pop()
                if item is None:
                    if self._closing is not None:
                        await self._close_transport(self._closing)
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    async with asyncio.timeout(self.options.send_timeout_s):
                        await self.ws.send(item.frame)
                except TimeoutError:
                    self._slow_client(f"a send waited {self.options.send_timeout_s:g} s")
                    return
                self._sent(item)
        except ConnectionClosed:
            self._closed.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug in sending must still end the session
            log.exception("session %s: send failed", self.session_id)
            self.ws.transport.abort()
            self._closed.set()

    def _sent(self, item: Outgoing) -> None:
        now = time.monotonic()
        if "first_partial_from" in item.meta:
            self._first_partial_sent.add(item.utterance_id)
            self.metrics.first_partial_latency(now - item.meta["first_partial_from"])
        elif item.kind == "final":
            self._first_partial_sent.discard(item.utterance_id)
            if item.meta.get("final_from") is not None:
                self.metrics.final_latency(now - item.meta["final_from"])

    async def _close_transport(self, close: Close) -> None:
        """The close handshake, bounded: a client that does not take it has its transport aborted."""
        try:
            async with asyncio.timeout(self.options.close_timeout_s):
                await self.ws.close(close.code, close.reason)
        except TimeoutError:
            log.warning("session %s: close handshake not completed in %g s; aborting the connection",
                        self.session_id, self.options.close_timeout_s)
            self.ws.transport.abort()
        except ConnectionClosed:
            pass
        finally:
            self._closed.set()


async def run_server(backend: Backend, config: Config, ready: asyncio.Future | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None), then drain and stop."""
    server = StreamingServer(backend, config)
    await server.start()
    if ready is not None:
        ready.set_result(server)
    stop = stop or _signal_event()
    try:
        await stop.wait()
    finally:
        await server.drain()
        await server.stop()


class LoopLagMonitor:
    """Measures how late the event loop runs a timer: the worst stall any input caused.

    A task sleeps ``interval_s`` again and again; the time beyond that it took to
    wake up is the loop's lag (model work never runs on the loop, so a lag is the
    server's own parsing, VAD or sending holding it up).
    """

    def __init__(self, interval_s: float = 0.02, observe: Callable[[float], None] | None = None) -> None:
        self.interval_s = interval_s
        self.observe = observe
        self.max_lag_s = 0.0
        self.last_lag_s = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def reset(self) -> float:
        """Return the worst lag so far and start counting again."""
        worst, self.max_lag_s = self.max_lag_s, 0.0
        return worst

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval_s)
            self.last_lag_s = max(0.0, loop.time() - t0 - self.interval_s)
            self.max_lag_s = max(self.max_lag_s, self.last_lag_s)
            if self.observe is not None:
                self.observe(self.last_lag_s)


class BackgroundServer:
    """A :class:`StreamingServer` on its own event loop in a background thread.

    For tests and the benchmark, whose clients run in the foreground.
    ``config.server.port`` 0 picks a free port; :attr:`url` is the stream URL.
    """

    def __init__(self, backend: Backend, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

        async def main() -> None:
            try:
                self.server = StreamingServer(backend, config)
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                self._started.set()
                return
            self._stop = asyncio.Event()
            self._started.set()
            await self._stop.wait()
            await self.server.drain(timeout_s=5)
            await self.server.stop()

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(main()),
                                       name="server-loop", daemon=True)
        self.thread.start()
        if not self._started.wait(120) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        self.url = self.server.url

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        self.loop.close()

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _signal_event() -> asyncio.Event:
    import signal

    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, event.set)
    return event


def _load_speaker_encoder():
    """The speaker encoder of ``diarize``, or None (logged) when its weights are not installed."""
    from .speaker_encoder import SpeakerEncoder

    try:
        return SpeakerEncoder.load()
    except FileNotFoundError as exc:
        log.warning("diarize is unavailable: %s", exc)
        return None


def _load_turn_model(config: Config):
    """The configured end-of-turn model, or None (logged) when its file is not installed."""
    from .smart_turn import TurnModelMissing, load_turn_model

    try:
        return load_turn_model(config.turn_model)
    except TurnModelMissing as exc:
        log.warning("turn_detection 'smart' is unavailable: %s", exc)
        return None
