"""wss:// and https:// with a self-signed certificate made in the test."""

import asyncio
import json
import shutil
import ssl
import subprocess
import urllib.request

import pytest
import websockets

from streaming.audio import float_to_pcm16
from streaming.evaluation import dev_clips
from benchmarks.loadgen import with_silence
from tests.fakes import CountingBackend
from tests.helpers import background_server


def make_certificate(folder) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 / localhost (openssl CLI, else the cryptography package)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if shutil.which("openssl"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        return str(cert), str(key)
    x509 = pytest.importorskip("cryptography.x509", reason="needs the openssl CLI or the cryptography package")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(cert), str(key)


async def test_wss_stream_and_https_demo(tmp_path):
    certfile, keyfile = make_certificate(tmp_path)
    client_ctx = ssl.create_default_context(cafile=certfile)
    audio = with_silence({c.id: c for c in dev_clips()}["lib_left"].load(), 0.5, 1.0)
    with background_server(CountingBackend(), certfile=certfile, keyfile=keyfile) as handle:
        assert handle.url.startswith("wss://127.0.0.1:")
        async with websockets.connect(handle.url, ssl=client_ctx) as ws:
            await ws.send(json.dumps({"type": "start"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            for i in range(0, audio.size, 1600):
                await ws.send(float_to_pcm16(audio[i:i + 1600]))
            await ws.send(json.dumps({"type": "stop"}))
            events = []
            async with asyncio.timeout(30):
                async for frame in ws:
                    events.append(json.loads(frame))
        finals = [e for e in events if e["type"] == "final"]
        assert events[-1]["type"] == "end" and ws.close_code == 1000
        assert len(finals) == 1 and finals[0]["text"].startswith("w0 w1")

        base = handle.url.replace("wss://", "https://").removesuffix("/v1/stream")

        def get(path):
            with urllib.request.urlopen(base + path, context=client_ctx, timeout=10) as resp:
                return resp.status, resp.headers.get("Content-Type"), resp.read()

        status, kind, body = await asyncio.to_thread(get, "/")
        assert status == 200 and kind.startswith("text/html") and b"<" in body
        # A client that does not trust the certificate is refused by TLS, not served in the clear.
        with pytest.raises(ssl.SSLError):
            async with websockets.connect(handle.url, ssl=ssl.create_default_context()):
                pass
