"""The WebSocket server: a thin I/O shell around :class:`Session` and the :class:`Engine`.

It moves frames between sockets and sessions, carries out the sessions'
actions (send, engine work, close), enforces connection-level limits (session
count, frame size, idle and slow clients), serves the browser demo and
``/v1/info`` / ``/healthz`` over plain HTTP, and drains gracefully on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import auth, http
from .config import Config, session_field_info
from .engine import Engine, EngineClosed
from .evaluation import REPO_ROOT
from .handshake import HttpServerConnection, to_response
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from .models.base import Backend, FinalResult
from .protocol import PROTOCOL_VERSION, ProtocolError, encode_event
from .session import (Action, Close, FeedAudio, ModelInfo, OpenUtterance, RequestFinal, RequestPartial, Send,
                      Session)

log = logging.getLogger("streaming.server")
STREAM_PATH = "/v1/stream"


class StreamingServer:
    """Serves sessions for one backend; use :meth:`start` / :meth:`drain` / :meth:`stop`."""

    def __init__(self, backend: Backend, config: Config) -> None:
        self.backend = backend
        self.config = config
        self.engine = Engine(backend, max_batch=config.engine.max_batch, threads=config.model.threads,
                             partial_batch_s=config.engine.partial_batch_s)
        self.model_info = ModelInfo(backend.name, backend.supports_window, backend.max_utterance_s,
                                    backend.validate_options)
        self.web_dir = Path(config.server.web_dir) if config.server.web_dir else REPO_ROOT / "web"
        self.sessions: dict[str, _Connection] = {}
        self.draining = False
        self.started_at = time.time()
        self.sessions_total = 0
        self._server = None
        opts = config.server
        self.keyring = auth.KeyRing(auth.load_keys(opts.api_keys, opts.api_keys_file, opts.max_sessions_per_key))
        self.metrics = ServerMetrics(lambda: self.engine.pending, lambda: self.engine.stats.busy_s,
                                     model=backend.name)
        self.engine.on_batch = self.metrics.batch

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
        self.engine.start()
        self._server = await serve(
            self._handle, opts.host, opts.port, process_request=self._process_request,
            create_connection=HttpServerConnection,
            select_subprotocol=lambda _conn, offered: auth.select_subprotocol(offered),
            # The protocol's own limit sends an error event first; this is the hard stop.
            max_size=max(opts.max_message_bytes * 4, 1 << 16), ssl=ssl_context,
            ping_interval=20, ping_timeout=20, max_queue=64)

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
        for conn in list(self.sessions.values()):
            conn.execute(conn.session.fail(ProtocolError("shutting_down", "the server is shutting down")))
        deadline = time.monotonic() + timeout_s
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.to_thread(self.engine.stop)

    # ---- HTTP ----------------------------------------------------------------------------------

    def info(self, include_load: bool = True) -> dict[str, Any]:
        """Model facts for anyone; load figures (sessions, engine) only when ``include_load``."""
        cfg = self.config
        facts: dict[str, Any] = {
            "model": self.backend.name, "protocol": PROTOCOL_VERSION, "multilingual": self.backend.multilingual,
            "supports_window": self.backend.supports_window, "max_utterance_s": self.backend.max_utterance_s,
            "defaults": {"language": cfg.session.language, "step_s": cfg.session.step_s,
                         "window_s": cfg.session.window_s, "endpoint_silence_ms": cfg.vad.endpoint_silence_ms},
            "start_fields": session_field_info(),
            "limits": {"max_sessions": cfg.server.max_sessions, "max_message_bytes": cfg.server.max_message_bytes,
                       "idle_timeout_s": cfg.server.idle_timeout_s},
            "auth": {"required": self.keyring.enabled, "subprotocol": auth.SUBPROTOCOL,
                     "subprotocol_prefix": auth.BEARER_PREFIXES[0]},
        }
        if include_load:
            facts.update({
                "sessions": len(self.sessions), "sessions_total": self.sessions_total,
                "engine": {"pending": self.engine.pending, "batches": self.engine.stats.batches,
                           "busy_s": round(self.engine.stats.busy_s, 2)},
                "uptime_s": round(time.time() - self.started_at, 1), "draining": self.draining,
            })
        return facts

    @property
    def ready(self) -> bool:
        """Whether a new session would be accepted now (``/readyz``)."""
        return not self.draining and len(self.sessions) < self.config.server.max_sessions

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
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
            if refusal is not None:
                return self._refuse(decision, refusal, source)
            connection.principal = key.id if key is not None else None
            return None
        if endpoint == "healthz":
            return self._reply(decision, http.text_reply(200, "ok"))
        if endpoint == "readyz":
            ready = self.ready
            return self._reply(decision, http.text_reply(200 if ready else 503, "ready" if ready else
                                                         "draining" if self.draining else "full"))
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
        session = Session(session_id, self.config, self.model_info)
        if self.draining or len(self.sessions) >= self.config.server.max_sessions:
            code = "shutting_down" if self.draining else "too_many_sessions"
            message = ("the server is shutting down" if self.draining else
                       f"the server holds its maximum of {self.config.server.max_sessions} sessions; retry later")
            log.warning("session %s refused: %s", session_id, code)
            conn = _Connection(self, ws, session)
            conn.execute(session.fail(ProtocolError(code, message)))
            await conn.finished()
            return
        conn = _Connection(self, ws, session)
        self.sessions[session_id] = conn
        self.sessions_total += 1
        peer = ws.remote_address[0] if ws.remote_address else "?"
        log.info("session %s opened from %s (%d open)", session_id, peer, len(self.sessions))
        try:
            await conn.run()
        finally:
            self.sessions.pop(session_id, None)
            conn.release()
            log.info("session %s closed: %s; %.1f s of audio, %d utterance(s)", session_id, conn.close_reason,
                     session.audio_samples / 16_000, session.utterance_count)


class _Connection:
    """One WebSocket bound to one Session: executes its actions and owns its send queue."""

    def __init__(self, server: StreamingServer, ws: ServerConnection, session: Session) -> None:
        self.server = server
        self.ws = ws
        self.session = session
        self.engine = server.engine
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.close_reason = "client went away"
        self._sender = asyncio.create_task(self._send_loop())
        self._open_keys: set[tuple[str, int]] = set()
        self._closed = asyncio.Event()

    async def run(self) -> None:
        idle = self.server.config.server.idle_timeout_s
        try:
            while not self.session.closed:
                try:
                    async with asyncio.timeout(idle):
                        frame = await self.ws.recv()
                except TimeoutError:
                    self.execute(self.session.fail(ProtocolError(
                        "idle_timeout", f"no message for {idle:.0f} s")))
                    break
                self.execute(self.session.receive(frame))
        except ConnectionClosed:
            if not self.session.closed:
                self.close_reason = "client went away"
                log.info("session %s: client disconnected without stop", self.session.session_id)
                self._closed.set()
        await self.finished()

    async def finished(self) -> None:
        """Wait until the session has sent its last event and closed (or the peer vanished)."""
        await self._closed.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._sender, timeout=5)
        self._sender.cancel()

    def release(self) -> None:
        for key in self._open_keys:
            self.engine.discard(key)
        self._open_keys.clear()
        self._sender.cancel()

    # ---- actions -------------------------------------------------------------------------------

    def execute(self, actions: list[Action]) -> None:
        sid = self.session.session_id
        for action in actions:
            if isinstance(action, Send):
                self._enqueue(action.event)
            elif isinstance(action, FeedAudio):
                self.engine.feed((sid, action.utterance_id), action.audio)
            elif isinstance(action, OpenUtterance):
                key = (sid, action.utterance_id)
                self._open_keys.add(key)
                self.engine.open(key, action.options)
            elif isinstance(action, RequestPartial):
                future = self.engine.request_partial((sid, action.utterance_id))
                future.add_done_callback(lambda f, u=action.utterance_id: self._on_partial(u, f))
            elif isinstance(action, RequestFinal):
                future = self.engine.request_final((sid, action.utterance_id))
                future.add_done_callback(lambda f, u=action.utterance_id: self._on_final(u, f))
            elif isinstance(action, Close):
                self.close_reason = f"{action.code} {action.reason}"
                self.outbox.put_nowait(action)

    def _on_partial(self, utterance_id: int, future: asyncio.Future) -> None:
        if future.cancelled() or isinstance(future.exception(), EngineClosed):
            return
        if future.exception() is not None:
            self._internal_error(future.exception())
            return
        self.execute(self.session.partial_ready(utterance_id, future.result()))

    def _on_final(self, utterance_id: int, future: asyncio.Future) -> None:
        key = (self.session.session_id, utterance_id)
        self._open_keys.discard(key)
        if future.cancelled() or isinstance(future.exception(), EngineClosed):
            return
        exc = future.exception()
        if exc is not None:
            log.error("session %s: final of utterance %d failed: %r", self.session.session_id, utterance_id, exc)
            # The utterance is still owed: answer it empty so the stream can go on and end in order.
            self.execute(self.session.final_ready(utterance_id, FinalResult(text="", language=None)))
            self._internal_error(exc)
            return
        self.execute(self.session.final_ready(utterance_id, future.result()))

    def _internal_error(self, exc: BaseException) -> None:
        log.error("session %s: engine error: %r", self.session.session_id, exc)
        self.execute(self.session.fail(ProtocolError("internal_error", f"inference failed: {exc}")))

    def _enqueue(self, event: dict[str, Any]) -> None:
        limit = self.server.config.server.send_queue_events
        if self.outbox.qsize() >= limit:
            if event["type"] == "partial":
                return  # partials are replaced by the next one anyway
            log.warning("session %s: client reads too slowly (%d events queued); closing",
                        self.session.session_id, self.outbox.qsize())
            self.close_reason = "1008 slow_client"
            self.session.abandon()
            self.outbox.put_nowait(Close(1008, "slow_client"))
            return
        self.outbox.put_nowait(encode_event(event, self.session.wire))

    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, Close):
                    await self.ws.close(item.code, item.reason)
                    return
                await self.ws.send(item)
        except ConnectionClosed:
            pass
        finally:
            self._closed.set()


def _response(status: int, content_type: str, body: bytes) -> Response:
    return to_response(http.Reply(status, body, content_type))


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
