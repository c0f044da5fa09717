"""API keys and origins: the pure rules as tables, then the handshake over real loopback sockets."""

import asyncio
import hmac
import json
import logging
import urllib.request

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from streaming import auth
from streaming.auth import (ApiKey, AuthConfigError, KeyRing, authorize_session, check_exposure, configured_keys,
                            extract_token, key_id, origin_allowed, parse_keys_file, select_subprotocol)
from tests.fakes import CountingBackend
from tests.helpers import background_server

KEY = "k3y-Alpha_0123456789abcdef"
OTHER = "k3y-Bravo_0123456789abcdef"

# ---- presenting a key -------------------------------------------------------------------------

TOKENS = [
    # (headers, query) -> (token, source)
    ({}, "", (None, "none")),
    ({"Authorization": f"Bearer {KEY}"}, "", (KEY, "header")),
    ({"Authorization": f"bearer   {KEY}  "}, "", (KEY, "header")),
    ({"Authorization": f"Basic {KEY}"}, "", (None, "none")),
    ({"Authorization": "Bearer "}, "", (None, "none")),
    ({"Sec-WebSocket-Protocol": f"streaming-asr, authorization.bearer.{KEY}"}, "", (KEY, "subprotocol")),
    ({"Sec-WebSocket-Protocol": f"realtime, openai-insecure-api-key.{KEY}, openai-beta.realtime-v1"}, "",
     (KEY, "subprotocol")),
    ({"Sec-WebSocket-Protocol": "authorization.bearer."}, "", (None, "none")),
    ({"Sec-WebSocket-Protocol": "streaming-asr"}, "", (None, "none")),
    ({}, f"token={KEY}", (KEY, "query")),
    ({}, f"lang=en&token={KEY}&x=1", (KEY, "query")),
    ({}, "token=", (None, "none")),
    ({}, "token=a%2Bb", ("a+b", "query")),
    # first found wins: header, then subprotocol, then query
    ({"Authorization": f"Bearer {KEY}", "Sec-WebSocket-Protocol": f"authorization.bearer.{OTHER}"},
     f"token={OTHER}", (KEY, "header")),
    ({"Sec-WebSocket-Protocol": f"authorization.bearer.{KEY}"}, f"token={OTHER}", (KEY, "subprotocol")),
    # Deepgram: the Token scheme, and a browser's subprotocols "token, <key>"
    ({"Authorization": f"Token {KEY}"}, "", (KEY, "header")),
    ({"Authorization": f"token {KEY}"}, "", (KEY, "header")),
    ({"Sec-WebSocket-Protocol": f"token, {KEY}"}, "", (KEY, "subprotocol")),
    ({"Sec-WebSocket-Protocol": "token"}, "", (None, "none")),
    ({"Authorization": "Token "}, "", (None, "none")),
]


@pytest.mark.parametrize("headers,query,expected", TOKENS)
def test_extract_token(headers, query, expected):
    assert extract_token(Headers(headers), query) == expected
    assert extract_token(headers, query) == expected  # a plain mapping works too


def test_subprotocol_header_may_repeat():
    headers = Headers([("Sec-WebSocket-Protocol", "streaming-asr"),
                       ("Sec-WebSocket-Protocol", f"authorization.bearer.{KEY}")])
    assert extract_token(headers, "") == (KEY, "subprotocol")


SUBPROTOCOLS = [
    ([], None),
    (["streaming-asr"], "streaming-asr"),
    (["graphql-ws"], None),  # we do not pretend to speak what we do not know
    ([f"authorization.bearer.{KEY}", "streaming-asr"], "streaming-asr"),
    (["realtime", f"openai-insecure-api-key.{KEY}", "openai-beta.realtime-v1"], "realtime"),
    ([f"authorization.bearer.{KEY}"], f"authorization.bearer.{KEY}"),  # alone: a browser needs an answer
    (["token", KEY], "token"),  # Deepgram's browser convention: answer "token", never the key
]


@pytest.mark.parametrize("offered,expected", SUBPROTOCOLS)
def test_select_subprotocol_never_echoes_the_key_unless_alone(offered, expected):
    assert select_subprotocol(offered) == expected


# ---- keys --------------------------------------------------------------------------------------

KEY_FILES = [
    ("", []),
    ("# only a comment\n\n   \n", []),
    (f"{KEY}\n", [ApiKey(KEY, 0)]),
    (f"  {KEY}   3  \n{OTHER} 0", [ApiKey(KEY, 3), ApiKey(OTHER, 0)]),
    (f"{KEY} 2 # the CI runner\n# {OTHER}\n", [ApiKey(KEY, 2)]),
    (f"{KEY}#notacomment 1\n", [ApiKey(f"{KEY}#notacomment", 1)]),
    (f"{KEY}\r\n{OTHER}\r\n", [ApiKey(KEY, 0), ApiKey(OTHER, 0)]),
]


@pytest.mark.parametrize("text,expected", KEY_FILES)
def test_parse_keys_file(text, expected):
    assert parse_keys_file(text) == expected


BAD_KEY_FILES = [
    (f"{KEY} 2 3\n", "keys:1: expected 'KEY [max_sessions]'"),
    (f"\n{KEY} two\n", "keys:2: max_sessions must be a whole number"),
    (f"{KEY} -1\n", "keys:1: max_sessions"),
    (f"{KEY}\n{KEY} 2\n", "keys:2: duplicate key"),
    ("key/with/slash\n", "keys:1: an API key may hold only"),
    ("kéy\n", "keys:1: an API key may hold only"),
]


@pytest.mark.parametrize("text,message", BAD_KEY_FILES)
def test_bad_keys_file_names_the_line_never_the_key(text, message):
    with pytest.raises(AuthConfigError) as err:
        parse_keys_file(text, "keys")
    assert message in str(err.value)
    assert KEY not in str(err.value)


def test_configured_keys_default_limit_and_file_limit():
    keys = configured_keys([KEY, OTHER], f"{OTHER} 5\nthird-key-0000000000\n", max_sessions_per_key=2)
    assert {k.key: k.max_sessions for k in keys} == {KEY: 2, OTHER: 5, "third-key-0000000000": 2}


def test_key_id_is_short_and_not_the_key():
    assert len(key_id(KEY)) == 8 and int(key_id(KEY), 16) >= 0
    assert key_id(KEY) != key_id(OTHER) and key_id(KEY) not in KEY
    assert KEY not in repr(ApiKey(KEY, 1))


def test_keyring_matches_exactly_and_compares_every_key(monkeypatch):
    ring = KeyRing([ApiKey(KEY), ApiKey(OTHER, 2)])
    assert ring.match(KEY).key == KEY and ring.match(OTHER).max_sessions == 2
    for wrong in (None, "", KEY[:-1], KEY + "x", KEY.upper(), " " + KEY, "ķey"):
        assert ring.match(wrong) is None
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    for token in (KEY, "x", "y" * 1000):
        calls.clear()
        ring.match(token)
        # every key, always, over fixed-length digests: no early exit, no length leak
        assert calls == [(32, 32), (32, 32)]
    assert not KeyRing([]).enabled and KeyRing([]).match(KEY) is None


AUTHORIZE = [
    # (keys, presented key, token presented, held) -> status or None
    ([], None, False, 0, None),
    ([], None, True, 99, None),
    ([ApiKey(KEY)], None, False, 0, 401),
    ([ApiKey(KEY)], None, True, 0, 401),
    ([ApiKey(KEY)], ApiKey(KEY), True, 100, None),  # 0 = no per-key limit
    ([ApiKey(KEY, 2)], ApiKey(KEY, 2), True, 1, None),
    ([ApiKey(KEY, 2)], ApiKey(KEY, 2), True, 2, 429),
]


@pytest.mark.parametrize("keys,key,presented,held,expected", AUTHORIZE)
def test_authorize_session(keys, key, presented, held, expected):
    refusal = authorize_session(KeyRing(keys), key, presented, held)
    assert (refusal.status if refusal else None) == expected
    if expected == 401:
        assert ("invalid" in refusal.message) == presented


# ---- origins and exposure ---------------------------------------------------------------------

ORIGINS = [
    # (origin, host, allowed, tls) -> allowed?
    (None, "example.com", [], False, True),  # non-browser clients send none
    ("http://example.com:8765", "example.com:8765", [], False, True),
    ("http://EXAMPLE.com:8765", "example.com:8765", [], False, True),
    ("https://example.com", "example.com", [], True, True),
    ("https://example.com", "example.com:443", [], True, True),
    ("http://example.com", "example.com:80", [], False, True),
    ("http://example.com:9999", "example.com:8765", [], False, False),
    ("http://evil.com:8765", "example.com:8765", [], False, False),
    ("http://example.com.evil.com", "example.com", [], False, False),
    ("http://localhost:3000", "example.com:8765", [], False, True),
    ("http://127.0.0.1:5173", "10.0.0.2:8765", [], False, True),
    ("http://[::1]:8080", "example.com", [], False, True),
    ("null", "example.com", [], False, False),
    ("file://", "example.com", [], False, False),
    ("garbage", "example.com", [], False, False),
    ("http://example.com:notaport", "example.com", [], False, False),
    ("http://evil.com", "example.com", ["*"], False, True),
    ("https://app.example.com", "api.example.com", ["https://app.example.com"], True, True),
    ("https://app.example.com/", "api.example.com", ["HTTPS://APP.example.com"], True, True),
    ("http://app.example.com", "api.example.com", ["https://app.example.com"], False, False),
    ("http://localhost:3000", "example.com", ["https://app.example.com"], False, False),  # a list is exact
    ("null", "example.com", ["null"], False, True),
]


@pytest.mark.parametrize("origin,host,allowed,tls,expected", ORIGINS)
def test_origin_rule(origin, host, allowed, tls, expected):
    assert origin_allowed(origin, host, allowed, tls=tls) is expected


EXPOSURE = [
    ("127.0.0.1", False, False, True),
    ("localhost", False, False, True),
    ("::1", False, False, True),
    ("127.0.0.2", False, False, True),
    ("0.0.0.0", False, False, False),
    ("", False, False, False),
    ("192.168.1.5", False, False, False),
    ("myhost.example", False, False, False),
    ("0.0.0.0", True, False, True),
    ("0.0.0.0", False, True, True),
]


@pytest.mark.parametrize("host,has_keys,allow_open,ok", EXPOSURE)
def test_open_host_needs_keys_or_explicit_consent(host, has_keys, allow_open, ok):
    keys = [ApiKey(KEY)] if has_keys else []
    if ok:
        check_exposure(host, keys, allow_open)
    else:
        with pytest.raises(AuthConfigError, match="--api-key KEY.*--api-keys-file.*--allow-unauthenticated"):
            check_exposure(host, keys, allow_open)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_keys_file_parser_gives_keys_or_a_clear_error(text):
    try:
        keys = parse_keys_file(text)
    except AuthConfigError as exc:
        assert str(exc).startswith("keys file:")
        return
    assert len({k.key for k in keys}) == len(keys)
    assert all(k.key and k.max_sessions >= 0 and not any(c.isspace() for c in k.key) for k in keys)


@settings(max_examples=300, deadline=None)
@given(auth_header=st.text(max_size=80), proto=st.text(max_size=80), query=st.text(max_size=80),
       origin=st.one_of(st.none(), st.text(max_size=60)), host=st.text(max_size=40))
def test_rules_never_raise(auth_header, proto, query, origin, host):
    token, source = extract_token({"Authorization": auth_header, "Sec-WebSocket-Protocol": proto}, query)
    assert (token is None) == (source == "none")
    KeyRing([ApiKey(KEY)]).match(token)
    assert isinstance(origin_allowed(origin, host, []), bool)


# ---- over real sockets --------------------------------------------------------------------

def own_log(caplog) -> str:
    """What the server's own loggers wrote (websockets' DEBUG log prints raw headers by design)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("streaming"))


async def open_session(url, **kwargs):
    """Connect, send start, return (ws, first event)."""
    ws = await websockets.connect(url, **kwargs)
    await ws.send(json.dumps({"type": "start"}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 10))


async def refused_status(url, **kwargs):
    with pytest.raises(InvalidStatus) as err:
        await websockets.connect(url, **kwargs)
    return err.value.response


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# test keys\n{OTHER} 1   # limited\n")
    with background_server(CountingBackend(), api_keys=[KEY], api_keys_file=str(keys_file)) as handle:
        yield handle


async def test_without_or_with_a_wrong_key_the_handshake_is_401(keyed_server, caplog):
    caplog.set_level(logging.DEBUG)
    url = keyed_server.url
    for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer wrong-key"}},
                   {"subprotocols": ["streaming-asr", "authorization.bearer.wrong"]}):
        response = await refused_status(url, **kwargs)
        assert response.status_code == 401, kwargs
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await refused_status(url + "?token=wrong")
    assert response.status_code == 401 and b"invalid API key" in response.body
    ours = own_log(caplog)
    assert "unauthorized" in ours and "wrong" not in ours


async def test_each_convention_opens_a_session(keyed_server, caplog):
    caplog.set_level(logging.DEBUG)
    url = keyed_server.url
    conventions = [
        ({"additional_headers": {"Authorization": f"Bearer {KEY}"}}, url, None),
        ({"subprotocols": ["streaming-asr", f"authorization.bearer.{KEY}"]}, url, "streaming-asr"),
        ({"subprotocols": ["realtime", f"openai-insecure-api-key.{KEY}"]}, url, "realtime"),
        ({}, f"{url}?token={KEY}", None),
    ]
    for kwargs, target, selected in conventions:
        ws, event = await open_session(target, **kwargs)
        try:
            assert event["type"] == "ready", (kwargs, event)
            assert ws.subprotocol == selected  # never the key
        finally:
            await ws.close()
    ours = own_log(caplog) + repr([vars(r) for r in caplog.records if r.name.startswith("streaming")])
    assert KEY not in ours
    # Sessions know their key by id only (the session log line carries it as ``principal``).
    principals = {getattr(r, "principal", None) for r in caplog.records}
    assert key_id(KEY) in principals


async def test_foreign_origin_is_403_and_own_origin_passes(keyed_server):
    url = keyed_server.url
    port = keyed_server.server.port
    headers = {"Authorization": f"Bearer {KEY}"}
    response = await refused_status(url, origin="http://evil.example", additional_headers=headers)
    assert response.status_code == 403
    for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000"):
        ws, event = await open_session(url, origin=origin, additional_headers=headers)
        await ws.close()
        assert event["type"] == "ready"


async def test_a_key_at_its_session_limit_is_429(keyed_server):
    url = keyed_server.url
    limited = {"additional_headers": {"Authorization": f"Bearer {OTHER}"}}
    ws, event = await open_session(url, **limited)
    assert event["type"] == "ready"
    response = await refused_status(url, **limited)
    assert response.status_code == 429
    # Another key is not affected.
    other, event = await open_session(url, additional_headers={"Authorization": f"Bearer {KEY}"})
    assert event["type"] == "ready"
    await other.close()
    await ws.close()
    for _ in range(500):
        if not keyed_server.server.sessions:
            break
        await asyncio.sleep(0.02)
    ws, event = await open_session(url, **limited)
    assert event["type"] == "ready"
    await ws.close()


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_info_shows_load_only_with_a_key_and_metrics_needs_one(keyed_server):
    base = keyed_server.url.replace("ws://", "http://").removesuffix("/v1/stream")
    status, body = await asyncio.to_thread(_get, base + "/v1/info")
    info = json.loads(body)
    assert status == 200 and info["model"] == "counting" and info["auth"]["required"] is True
    assert "sessions" not in info and "engine" not in info
    status, body = await asyncio.to_thread(_get, base + "/v1/info", {"Authorization": f"Bearer {KEY}"})
    assert "sessions" in json.loads(body) and "engine" in json.loads(body)
    assert (await asyncio.to_thread(_get, base + "/metrics"))[0] == 401
    status, body = await asyncio.to_thread(_get, f"{base}/metrics?token={KEY}")
    assert status == 200 and b"asr_sessions_active" in body
    # The demo and health stay public.
    assert (await asyncio.to_thread(_get, base + "/healthz"))[0] == 200
    assert (await asyncio.to_thread(_get, base + "/"))[0] == 200


def test_open_host_without_keys_refuses_to_start():
    with pytest.raises(RuntimeError, match="refusing to listen on 0.0.0.0 without API keys"):
        with background_server(CountingBackend(), host="0.0.0.0"):
            pass


async def test_unreadable_keys_file_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot read API keys file"):
        with background_server(CountingBackend(), api_keys_file=str(tmp_path / "missing.txt")):
            pass


def test_cli_refuses_an_open_host_before_loading_the_model_and_help_explains_auth():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "streaming", "serve", "--host", "0.0.0.0", "--port", "0"],
                          cwd=repo, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "without API keys" in proc.stderr and "--api-key" in proc.stderr and "--allow-unauthenticated" in proc.stderr
    out = subprocess.run([sys.executable, "-m", "streaming", "serve", "--help"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--api-key", "--api-keys-file", "--max-sessions-per-key", "--allowed-origin",
                 "--allow-unauthenticated", "--info-public", "--log-format", "authorization.bearer."):
        assert flag in out
