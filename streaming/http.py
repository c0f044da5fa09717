"""Plain-HTTP routing, sans I/O: a request's method, target and headers → an endpoint or an answer.

The server shell asks :func:`route` first; whatever a client sends (odd
methods, bodies, traversal, NUL bytes, huge paths) ends here as a 4xx
:class:`Reply`, never as an exception. Only :data:`ENDPOINTS` and static file
names made of plain segments get through. Only :data:`POST_ENDPOINTS` take a
request body; :func:`body_framing` says how it is delimited.
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
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"
POST_ENDPOINTS = {TRANSCRIPTIONS_PATH: "transcriptions", TRANSLATIONS_PATH: "translations"}
"""Paths served to POST only, the only requests whose body is read (OpenAI's file transcription)."""
INDEX_PATHS = ("/", "/overlay", "/index.html")

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""A static path segment: plain characters, not starting with a dot (no ``..``, no dotfiles)."""

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           414: "URI Too Long", 415: "Unsupported Media Type", 426: "Upgrade Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable"}


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
    lengths = {v.strip() for v in ",".join(header_values(headers, "Content-Length")).split(",")}
    return "Transfer-Encoding" in headers or not lengths <= {"0", ""}


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of a header (websockets' ``Headers.get`` raises when a client repeats one)."""
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        return get_all(name)
    value = headers.get(name)
    return [] if value is None else [value]


@dataclass(frozen=True)
class BodyFraming:
    """How a request body is delimited: ``length`` bytes, or ``chunked`` (RFC 9112 §6)."""

    chunked: bool = False
    length: int = 0


def body_framing(headers: Mapping[str, str]) -> BodyFraming | Reply:
    """The body's framing from its headers, or the answer to a body that cannot be read safely.

    Both ``Transfer-Encoding`` and ``Content-Length``, several different lengths, or a
    coding other than plain ``chunked`` are refused (request smuggling, RFC 9112 §6.3).
    """
    lengths, codings = header_values(headers, "Content-Length"), header_values(headers, "Transfer-Encoding")
    if codings:
        if lengths:
            return text_reply(400, "a request has Transfer-Encoding or Content-Length, not both")
        if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
            return text_reply(501, "only Transfer-Encoding: chunked is supported")
        return BodyFraming(chunked=True)
    if not lengths:
        return text_reply(411, "a request body needs Content-Length (or Transfer-Encoding: chunked)")
    values = {v.strip() for v in ",".join(lengths).split(",")}
    length = values.pop() if len(values) == 1 else ""
    if not (length.isascii() and length.isdigit()) or len(length) > 18:
        return text_reply(400, "invalid Content-Length")
    return BodyFraming(length=int(length))


def route(method: str, target: str, headers: Mapping[str, str]) -> Route | Reply:
    """Decide what a request is; a :class:`Reply` answers it right away (400/404/405/414/426).

    A POST to :data:`POST_ENDPOINTS` is a :class:`Route` whatever its body; the endpoint reads it.
    """
    if len(target.encode("utf-8", "surrogatepass")) > MAX_TARGET_BYTES:
        return text_reply(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    if path in POST_ENDPOINTS:
        if method != "POST":
            return text_reply(405, f"method {method[:16]} not allowed", headers=(("Allow", "POST"),))
        return Route(POST_ENDPOINTS[path], query)
    if method not in ALLOWED_METHODS:
        return text_reply(405, f"method {method[:16]} not allowed", headers=(("Allow", ", ".join(ALLOWED_METHODS)),))
    if has_body(headers):
        return text_reply(400, "a GET or HEAD request has no body")
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
