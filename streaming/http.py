"""Plain-HTTP routing, sans I/O: a request's method, target and headers → an endpoint or an answer.

The server shell asks :func:`route` first; whatever a client sends (odd
methods, bodies, traversal, NUL bytes, huge paths) ends here as a 4xx
:class:`Reply`, never as an exception. Only :data:`ENDPOINTS` and static file
names made of plain segments get through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

MAX_TARGET_BYTES = 2048
"""Longest request target (path and query) served; longer gets 414."""
MAX_SEGMENT_BYTES = 255
ALLOWED_METHODS = ("GET", "HEAD")
STREAM_PATH = "/v1/stream"
STREAM_PATHS = (STREAM_PATH, "/v1/realtime", "/v1/listen")
"""WebSocket paths: protocol v1, OpenAI Realtime, Deepgram live (``streaming.codecs`` picks the codec)."""
ENDPOINTS = {**dict.fromkeys(STREAM_PATHS, "stream"), "/healthz": "healthz", "/readyz": "readyz", "/v1/info": "info",
             "/metrics": "metrics"}
INDEX_PATHS = ("/", "/overlay", "/index.html")

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""A static path segment: plain characters, not starting with a dot (no ``..``, no dotfiles)."""

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 414: "URI Too Long", 426: "Upgrade Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, before serialization."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def text_reply(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, text.encode() + b"\n", headers=headers)


@dataclass(frozen=True)
class Route:
    """Where a request goes: an endpoint of :data:`ENDPOINTS` or ``static`` with a safe relative ``name``."""

    endpoint: str
    query: str = ""
    name: str = ""
    head: bool = False
    """HEAD: answer with the headers of the GET, no body."""
    extra: dict = field(default_factory=dict, compare=False)


def static_name(path: str) -> str | None:
    """The web-folder-relative file name for a URL path, or None if it is not a plain name.

    Percent-decoding happens once, before the check, so ``%2e%2e%2f`` is ``../``.
    """
    if path in INDEX_PATHS:
        return "index.html"
    name = unquote(path, errors="strict") if "%" in path else path
    if not name.startswith("/"):
        return None
    segments = name[1:].split("/")
    for seg in segments:
        if len(seg.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES or not _SEGMENT_RE.fullmatch(seg):
            return None
    return "/".join(segments)


def has_body(headers: Mapping[str, str]) -> bool:
    return "Transfer-Encoding" in headers or (headers.get("Content-Length") or "0").strip() not in ("0", "")


def route(method: str, target: str, headers: Mapping[str, str]) -> Route | Reply:
    """Decide what a request is; a :class:`Reply` answers it right away (400/404/405/414/426)."""
    if len(target.encode("utf-8", "surrogatepass")) > MAX_TARGET_BYTES:
        return text_reply(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
    if method not in ALLOWED_METHODS:
        return text_reply(405, f"method {method[:16]} not allowed", headers=(("Allow", ", ".join(ALLOWED_METHODS)),))
    if has_body(headers):
        return text_reply(400, "a GET or HEAD request has no body")
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    head = method == "HEAD"
    endpoint = ENDPOINTS.get(path)
    if endpoint == "stream":
        if head or (headers.get("Upgrade") or "").lower() != "websocket":
            return text_reply(426, f"use a WebSocket client for {path}", headers=(("Upgrade", "websocket"),))
        return Route("stream", query)
    if endpoint is not None:
        return Route(endpoint, query, head=head)
    try:
        name = static_name(path)
    except UnicodeDecodeError:
        name = None
    if name is None:
        return text_reply(404, "not found")
    return Route("static", query, name=name, head=head)


def serialize_headers(reply: Reply) -> list[tuple[str, str]]:
    """The response headers of ``reply`` (Content-Length of the full body, also for HEAD)."""
    return [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))),
            ("Cache-Control", "no-cache"), ("Connection", "close"), *reply.headers]
