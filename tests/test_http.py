"""Plain HTTP: the router as a table (pure), then the server over raw loopback sockets."""

import asyncio
import logging
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.http import MAX_TARGET_BYTES, Reply, Route, route, static_name
from tests.fakes import CountingBackend
from tests.helpers import background_server

WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade"}

# (method, target, headers) -> status of the Reply, or (endpoint, name) of the Route.
ROUTES = [
    ("GET", "/", {}, ("static", "index.html")),
    ("GET", "/overlay", {}, ("static", "index.html")),
    ("GET", "/index.html", {}, ("static", "index.html")),
    ("GET", "/app.js", {}, ("static", "app.js")),
    ("GET", "/app.js?v=3", {}, ("static", "app.js")),
    ("GET", "/sub/dir/file-1_x.css", {}, ("static", "sub/dir/file-1_x.css")),
    ("GET", "/v1/info", {}, ("info", "")),
    ("GET", "/healthz", {}, ("healthz", "")),
    ("GET", "/readyz", {}, ("readyz", "")),
    ("GET", "/metrics", {}, ("metrics", "")),
    ("GET", "/v1/stream", WS_HEADERS, ("stream", "")),
    ("GET", "/v1/stream?token=abc", WS_HEADERS, ("stream", "")),
    ("GET", "/v1/stream", {}, 426),
    ("HEAD", "/v1/stream", WS_HEADERS, 426),
    ("HEAD", "/", {}, ("static", "index.html")),
    ("HEAD", "/healthz", {}, ("healthz", "")),
    # methods
    ("POST", "/", {}, 405),
    ("POST", "/v1/stream", {**WS_HEADERS, "Content-Length": "5"}, 405),
    ("PUT", "/app.js", {"Content-Length": "3"}, 405),
    ("DELETE", "/v1/info", {}, 405),
    ("OPTIONS", "*", {}, 405),
    ("get", "/", {}, 405),
    ("BREW", "/", {}, 405),
    # bodies on GET / HEAD
    ("GET", "/", {"Content-Length": "12"}, 400),
    ("GET", "/v1/stream", {**WS_HEADERS, "Transfer-Encoding": "chunked"}, 400),
    ("GET", "/", {"Content-Length": "0"}, ("static", "index.html")),
    # traversal and odd paths: never a file outside the web folder, never an exception
    ("GET", "/../pyproject.toml", {}, 404),
    ("GET", "/..", {}, 404),
    ("GET", "/a/../../etc/passwd", {}, 404),
    ("GET", "/%2e%2e%2fpyproject.toml", {}, 404),
    ("GET", "/%2E%2E/%2E%2E/etc/passwd", {}, 404),
    ("GET", "/..%2f..%2fetc%2fpasswd", {}, 404),
    ("GET", "/%252e%252e%252fetc", {}, 404),
    ("GET", "/....//....//etc/passwd", {}, 404),
    ("GET", "/....", {}, 404),
    ("GET", "/..\\..\\pyproject.toml", {}, 404),
    ("GET", "/%5c..%5cpyproject.toml", {}, 404),
    ("GET", "//etc/passwd", {}, 404),
    ("GET", "/%2fetc%2fpasswd", {}, 404),
    ("GET", "/C:/Windows/win.ini", {}, 404),
    ("GET", "/app.js%00.html", {}, 404),
    ("GET", "/%00", {}, 404),
    ("GET", "/.git/config", {}, 404),
    ("GET", "/.env", {}, 404),
    ("GET", "/a//b", {}, 404),
    ("GET", "/dir/", {}, 404),
    ("GET", "/%ff%fe", {}, 404),
    ("GET", "/%zz", {}, 404),
    ("GET", "/" + "a" * 256, {}, 404),
    ("GET", "/" + "a" * 255, {}, ("static", "a" * 255)),
    ("GET", "/" + "a/" * 1100 + "x", {}, 414),
    ("GET", "/" + "x" * 10_000, {}, 414),
    ("GET", "/?" + "q" * MAX_TARGET_BYTES, {}, 414),
    ("GET", "http://example.com/", {}, 404),
    ("GET", "*", {}, 404),
]


@pytest.mark.parametrize("method,target,headers,expected", ROUTES, ids=[f"{m} {t[:40]}" for m, t, _, _ in ROUTES])
def test_route_table(method, target, headers, expected):
    result = route(method, target, headers)
    if isinstance(expected, int):
        assert isinstance(result, Reply) and result.status == expected, result
        if expected == 405:
            assert ("Allow", "GET, HEAD") in result.headers
    else:
        assert isinstance(result, Route), result
        assert (result.endpoint, result.name) == expected
        assert result.head == (method == "HEAD")


def test_static_names_are_plain_segments():
    assert static_name("/a/b.js") == "a/b.js"
    assert static_name("/a%2Fb.js") == "a/b.js"  # decoded once, then checked
    assert static_name("relative") is None


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "POST", "X"]), target=st.text(max_size=300),
       length=st.one_of(st.none(), st.text(max_size=5)))
def test_route_never_raises(method, target, length):
    headers = {} if length is None else {"Content-Length": length}
    result = route(method, target, headers)
    assert isinstance(result, (Reply, Route))
    if isinstance(result, Route) and result.endpoint == "static":
        # Whatever came in, a served name is plain relative segments.
        assert all(seg and not seg.startswith(".") and "\\" not in seg and "\x00" not in seg
                   for seg in result.name.split("/"))


# ---- over real sockets --------------------------------------------------------------------

async def raw_http(port: int, request: bytes, timeout_s: float = 10) -> bytes:
    """Send bytes, read the whole answer until the server closes."""
    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(request)
            chunks = []
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)

    return await asyncio.to_thread(exchange)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    web = tmp_path_factory.mktemp("web")
    (web / "index.html").write_text("<!doctype html><title>demo</title>")
    (web / "app.js").write_text("export {}")
    (web.parent / "secret.txt").write_text("top secret")
    with background_server(CountingBackend(), web_dir=str(web)) as handle:
        yield handle


def request_bytes(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


RAW_CASES = [
    # (request, status, body must contain)
    (request_bytes("POST", "/v1/stream", "Content-Type: application/json", body=b'{"type": "start"}'), 405, b""),
    (request_bytes("POST", "/", body=b"x" * 5000), 405, b""),
    (request_bytes("PUT", "/app.js", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n", 405, b""),
    (request_bytes("DELETE", "/v1/info"), 405, b""),
    (request_bytes("GET", "/", body=b"abc"), 400, b""),
    (request_bytes("GET", "/app.js%00.html"), 404, b""),
    (request_bytes("GET", "/%00"), 404, b""),
    (request_bytes("GET", "/" + "a" * 256), 404, b""),
    (request_bytes("GET", "/" + "b" * 3000), 414, b""),
    (request_bytes("GET", "/" + "c" * 10_000), 414, b""),
    (request_bytes("GET", "/../secret.txt"), 404, b""),
    (request_bytes("GET", "/%2e%2e%2fsecret.txt"), 404, b""),
    (request_bytes("GET", "/....//secret.txt"), 404, b""),
    (request_bytes("GET", "/..%5csecret.txt"), 404, b""),
    (request_bytes("GET", "/app.js"), 200, b"export {}"),
    (b"GARBAGE\r\n\r\n", 400, b""),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, b""),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, b""),
    (request_bytes("GET", "/", "X-Big: " + "h" * 9000), 431, b""),
]


@pytest.mark.parametrize("raw,status,contains", RAW_CASES, ids=[r[:30].decode("latin-1") for r, _, _ in RAW_CASES])
async def test_raw_requests_get_an_answer_and_no_traceback(web_server, caplog, raw, status, contains):
    caplog.set_level(logging.DEBUG)
    answer = await raw_http(web_server.server.port, raw)
    got, headers, body = parse_answer(answer)
    assert got == status, answer[:300]
    assert contains in body and b"top secret" not in body
    if status == 405:
        assert headers["allow"] == "GET, HEAD"
    assert int(headers["content-length"]) == len(body)
    for record in caplog.records:
        assert record.exc_info is None and "Traceback" not in record.getMessage(), record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()


async def test_head_has_headers_and_no_body(web_server):
    port = web_server.server.port
    get = parse_answer(await raw_http(port, request_bytes("GET", "/app.js")))
    head = parse_answer(await raw_http(port, request_bytes("HEAD", "/app.js")))
    assert head[0] == get[0] == 200
    assert head[2] == b"" and get[2] == b"export {}"
    assert head[1]["content-length"] == get[1]["content-length"] == "9"
    assert head[1]["content-type"].startswith("text/javascript")
    status, _, body = parse_answer(await raw_http(port, request_bytes("HEAD", "/healthz")))
    assert status == 200 and body == b""


async def test_healthz_alive_and_readyz_tracks_capacity_and_drain():
    import json

    import websockets

    with background_server(CountingBackend(), max_sessions=1) as handle:
        port = handle.server.port

        async def status(path):
            return parse_answer(await raw_http(port, request_bytes("GET", path)))[0]

        assert await status("/readyz") == 200 and await status("/healthz") == 200
        async with websockets.connect(handle.url) as ws:
            await ws.send(json.dumps({"type": "start"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            assert await status("/readyz") == 503  # full
            assert await status("/healthz") == 200
        for _ in range(500):  # the session is released after the socket closes
            if not handle.server.sessions:
                break
            await asyncio.sleep(0.02)
        assert await status("/readyz") == 200
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handle.server.drain(timeout_s=1), handle.loop))
        assert await status("/readyz") == 503  # draining
        assert await status("/healthz") == 200  # but alive
