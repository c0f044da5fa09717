"""API keys and browser origins, sans I/O: who may open a session or read load figures.

A client presents a key in one of three ways (first found wins):

* ``Authorization: Bearer KEY`` (any client that can set headers);
* a WebSocket subprotocol, because browsers cannot set headers on a WebSocket:
  ``new WebSocket(url, ["streaming-asr", "authorization.bearer.KEY"])`` (ours), or
  OpenAI Realtime's ``openai-insecure-api-key.KEY``; the server selects the
  other offered subprotocol and never echoes the key, unless the key was the
  only one offered (browsers fail a handshake whose answer selects none);
* ``?token=KEY`` in the URL (simplest, but URLs end up in proxy logs and history).

Keys are compared in constant time against every configured key and never
logged: :func:`key_id` (8 hex digits of the SHA-256) names a key in logs,
metrics and as the session's ``principal``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .config import ConfigError

SUBPROTOCOL = "streaming-asr"
"""The subprotocol a browser offers beside its key (and the one the server selects)."""
BEARER_PREFIXES = ("authorization.bearer.", "openai-insecure-api-key.")
"""Subprotocol prefixes that carry a key: ours first, then OpenAI Realtime's."""
DEEPGRAM_TOKEN_PROTOCOL = "token"
"""Deepgram's browser convention: subprotocols ``token, <key>`` (the server answers ``token``)."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_TOKEN_RE = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
"""RFC 7230 token characters: a key must be one so it fits in a subprotocol."""


class AuthConfigError(ConfigError):
    """Keys or exposure settings that cannot be served safely (bad keys file, open host without keys)."""


def key_id(key: str) -> str:
    """A short, non-reversible name for a key (logs, metrics, ``principal``)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


@dataclass(frozen=True)
class ApiKey:
    key: str
    max_sessions: int = 0
    """Concurrent sessions this key may hold; 0 = no per-key limit (only the server's)."""

    @property
    def id(self) -> str:
        return key_id(self.key)

    def __repr__(self) -> str:  # never show the secret, e.g. in a traceback or a test failure
        return f"ApiKey(id={self.id!r}, max_sessions={self.max_sessions})"


def validate_key(key: str, where: str = "") -> str:
    if not _TOKEN_RE.fullmatch(key):
        raise AuthConfigError(f"{where}an API key may hold only letters, digits and -._~!#$%&'*+^`| "
                              "(so it fits in a WebSocket subprotocol); make one with "
                              "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def parse_keys_file(text: str, source: str = "keys file") -> list[ApiKey]:
    """Parse lines ``KEY [max_sessions]``; ``#`` starts a comment (at the start or after a space).

    Raises :class:`AuthConfigError` naming the line (never the key).
    """
    keys: dict[str, ApiKey] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}: "
        fields = line.split()
        if len(fields) > 2:
            raise AuthConfigError(f"{where}expected 'KEY [max_sessions]', got {len(fields)} fields")
        key = validate_key(fields[0], where)
        limit = 0
        if len(fields) == 2:
            if not fields[1].isdigit():
                raise AuthConfigError(f"{where}max_sessions must be a whole number >= 0")
            limit = int(fields[1])
        if key in keys:
            raise AuthConfigError(f"{where}duplicate key (id {key_id(key)})")
        keys[key] = ApiKey(key, limit)
    return list(keys.values())


def configured_keys(api_keys: Sequence[str], keys_file_text: str | None, max_sessions_per_key: int,
                    source: str = "keys file") -> list[ApiKey]:
    """Keys from the option list and the keys file; a key without its own limit gets the default."""
    keys = [ApiKey(validate_key(k, "api_keys: "), 0) for k in api_keys]
    if keys_file_text is not None:
        keys += parse_keys_file(keys_file_text, source)
    merged: dict[str, ApiKey] = {}
    for k in keys:  # the file's own limit wins over a plain duplicate from the list
        if k.key not in merged or k.max_sessions:
            merged[k.key] = k
    return [ApiKey(k.key, k.max_sessions or max_sessions_per_key) for k in merged.values()]


def load_keys(api_keys: Sequence[str], api_keys_file: str, max_sessions_per_key: int) -> list[ApiKey]:
    """:func:`configured_keys` with the keys file read from disk."""
    text = None
    if api_keys_file:
        try:
            text = Path(api_keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"cannot read API keys file {api_keys_file}: {exc.strerror or exc}") from exc
    return configured_keys(api_keys, text, max_sessions_per_key, source=api_keys_file or "keys file")


class KeyRing:
    """The accepted keys; :meth:`match` compares a presented token with all of them in constant time."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = list(keys)
        self._digests = [(hashlib.sha256(k.key.encode()).digest(), k) for k in self.keys]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def match(self, token: str | None) -> ApiKey | None:
        """The key equal to ``token``, or None. Fixed-length digests, and every key is compared."""
        if token is None:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for candidate, key in self._digests:
            if hmac.compare_digest(digest, candidate):
                found = key
        return found


# ---- presenting a key ------------------------------------------------------------------------

def offered_subprotocols(headers: Mapping[str, str] | object) -> list[str]:
    """Every ``Sec-WebSocket-Protocol`` value (the header may repeat), split on commas."""
    get_all = getattr(headers, "get_all", None)
    values = get_all("Sec-WebSocket-Protocol") if get_all else [headers.get("Sec-WebSocket-Protocol") or ""]
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def extract_token(headers: Mapping[str, str] | object, query: str) -> tuple[str | None, str]:
    """(token, where it came from: ``header``, ``subprotocol``, ``query`` or ``none``)."""
    auth = (headers.get("Authorization") or "").strip()
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():  # Token: Deepgram's scheme
        return value.strip(), "header"
    offered = offered_subprotocols(headers)
    for proto in offered:
        for prefix in BEARER_PREFIXES:
            if proto.lower().startswith(prefix) and len(proto) > len(prefix):
                return proto[len(prefix):], "subprotocol"
    if len(offered) == 2 and offered[0].lower() == DEEPGRAM_TOKEN_PROTOCOL:
        return offered[1], "subprotocol"  # a browser's Deepgram client offers "token, <key>"
    tokens = parse_qs(query, keep_blank_values=False).get("token")
    if tokens:
        return tokens[0], "query"
    return None, "none"


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol to answer (None = no ``Sec-WebSocket-Protocol`` in the response).

    ``streaming-asr`` when offered; beside a key, the first other offered one
    (OpenAI clients offer ``realtime``); the key itself only when it was offered
    alone, because a browser fails a handshake that selects none of its offers.
    """
    if len(offered) == 2 and offered[0].lower() == DEEPGRAM_TOKEN_PROTOCOL:
        return offered[0]
    keyed = [p for p in offered if p.lower().startswith(BEARER_PREFIXES)]
    plain = [p for p in offered if p not in keyed]
    if SUBPROTOCOL in plain:
        return SUBPROTOCOL
    if keyed:
        return plain[0] if plain else keyed[0]
    return None


# ---- origins and exposure --------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if parts.hostname is None:
        return None
    return parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str], tls: bool = False) -> bool:
    """Whether a request with this ``Origin`` may go on (cross-site WebSocket hijacking guard).

    No ``Origin`` (non-browser clients) is allowed. ``allowed`` empty: the same
    host and port as the ``Host`` header, or localhost on any port. ``*``: any.
    Otherwise the origin must equal one entry (``scheme://host[:port]``).
    """
    if origin is None:
        return True
    origin = origin.strip()
    if "*" in allowed:
        return True
    if allowed:
        normal = origin.lower().rstrip("/")
        return any(normal == a.strip().lower().rstrip("/") for a in allowed)
    if origin.lower() == "null" or "://" not in origin:
        return False
    scheme, _, netloc = origin.partition("://")
    theirs = _host_port(netloc, scheme.lower())
    if theirs is None:
        return False
    if theirs[0].strip("[]") in LOOPBACK_NAMES:
        return True
    ours = _host_port(host or "", "https" if tls else "http")
    return ours is not None and theirs == ours


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys: Sequence[ApiKey], allow_unauthenticated: bool) -> None:
    """Refuse to serve a non-loopback address without keys unless explicitly allowed."""
    if keys or allow_unauthenticated or is_loopback(host):
        return
    raise AuthConfigError(
        f"refusing to listen on {host or 'all addresses'} without API keys: anyone who can reach it could "
        "use the server. Set keys with --api-key KEY (repeatable) or --api-keys-file FILE "
        "(or [server] api_keys / api_keys_file in the config), or pass --allow-unauthenticated "
        "to serve it open on purpose.")


# ---- decisions at the handshake --------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    """Short label for logs and the ``refused`` metric."""
    message: str


def authorize_session(ring: KeyRing, key: ApiKey | None, token_presented: bool,
                      held_sessions: int) -> Refusal | None:
    """Whether a WebSocket session may open: None, or why not (401 no/wrong key, 429 key at its limit)."""
    if not ring.enabled:
        return None
    if key is None:
        return unauthorized(token_presented)
    if key.max_sessions and held_sessions >= key.max_sessions:
        return Refusal(429, "key_limit", f"this API key holds its maximum of {key.max_sessions} sessions; "
                       "retry later")
    return None


def unauthorized(token_presented: bool) -> Refusal:
    message = "invalid API key" if token_presented else "an API key is required"
    return Refusal(401, "unauthorized", message + " (Authorization: Bearer KEY, subprotocol "
                   "authorization.bearer.KEY, or ?token=KEY)")
