"""Deepgram live (``/v1/listen``) against the real server and model: the official deepgram-sdk 7, a
LiveKit-style raw client, µ-law 8 kHz, a refused handshake and the idle close.

The finals must say what protocol v1 (``/v1/stream``) says for the same audio: one core,
so the protocol never changes the text.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

import numpy as np
import pytest
import websockets

from streaming.audio import G711_TABLES, float_to_pcm16
from streaming.codecs.deepgram import NET_0001_REASON
from streaming.codecs.deepgram_query import MIN_ENDPOINTING_MS
from streaming.evaluation import dev_clips
from benchmarks.loadgen import with_silence
from tests.helpers import background_server, v1_final_texts

pytestmark = pytest.mark.slow
dg = pytest.importorskip("deepgram")
from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results  # noqa: E402

KEY = "deepgram-live-test-key"
CHUNK_S = 0.05
"""LiveKit's and Pipecat's audio chunk."""


@pytest.fixture(scope="module")
def server():
    with background_server(api_keys=[KEY]) as handle:
        yield handle


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """Two clips with a pause between: several utterances (16 kHz float32)."""
    clips = {c.id: c for c in dev_clips()}
    gap = np.zeros(32_000, np.float32)
    return with_silence(np.concatenate([clips["jfk"].load(), gap, clips["lib_left"].load()]), 0.3, 1.5)


def base(server) -> tuple[str, str]:
    port = server.server.port
    return f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"


def chunks(data: bytes, bytes_per_s: int) -> list[bytes]:
    step = int(CHUNK_S * bytes_per_s)
    return [data[i:i + step] for i in range(0, len(data), step)]


def to_mulaw(samples: np.ndarray) -> bytes:
    """Standard G.711 µ-law bytes: each sample's nearest code in the decoder's own table."""
    table = G711_TABLES["mulaw"]
    order = np.argsort(table)
    values = table[order]
    at = np.clip(np.searchsorted(values, samples), 1, values.size - 1)
    nearer_left = np.abs(samples - values[at - 1]) <= np.abs(samples - values[at])
    return order[np.where(nearer_left, at - 1, at)].astype(np.uint8).tobytes()


async def v1_text(server, data: bytes, sample_rate: int, encoding: str, **fields) -> str:
    """The joined final texts protocol v1 gives for ``data`` (the same 50 ms chunks)."""
    ws_url, _ = base(server)
    return " ".join(await v1_final_texts(f"{ws_url}/v1/stream", [data], sample_rate=sample_rate, encoding=encoding,
                                         chunk_s=CHUNK_S, api_key=KEY, **fields))


def final_texts(messages: list[dict]) -> list[str]:
    return [m["channel"]["alternatives"][0]["transcript"] for m in messages
            if m["type"] == "Results" and m["is_final"] and m["channel"]["alternatives"][0]["transcript"]]


def check_final_words(messages: list[dict]) -> None:
    """Every final with text has words, in order, inside [start, start + duration]."""
    for m in messages:
        if m["type"] != "Results" or not m["is_final"]:
            continue
        alt = m["channel"]["alternatives"][0]
        if not alt["transcript"]:
            continue
        got = alt["words"]
        assert got, m
        lo, hi = m["start"], m["start"] + m["duration"] + 1e-3
        assert all(lo <= w["start"] <= w["end"] <= hi for w in got), m
        assert all(a["start"] <= b["start"] for a, b in zip(got, got[1:])), m
        assert all(w["word"] == w["word"].lower() and w["punctuated_word"] for w in got), m


async def test_official_sdk_gets_what_v1_gives(server, audio):
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    pcm = float_to_pcm16(audio)
    ws_url, http_url = base(server)
    client = AsyncDeepgramClient(api_key=KEY, environment=DeepgramClientEnvironment(
        base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url))
    received = []
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="16000",
                                        interim_results="true", punctuate="true", smart_format="true",
                                        vad_events="true", utterance_end_ms="1000") as socket:
        async def send():
            for chunk in chunks(pcm, 32_000):
                await socket.send_media(chunk)
            await socket.send_finalize()
            await socket.send_close_stream()
        sender = asyncio.create_task(send())
        async with asyncio.timeout(180):
            async for message in socket:  # until the server closes after Metadata
                received.append(message)
        await sender
    kinds = [type(m).__name__ for m in received]
    assert "ListenV1Results" in kinds and kinds[-1] == "ListenV1Metadata", kinds
    assert "ListenV1SpeechStarted" in kinds and "ListenV1UtteranceEnd" in kinds, kinds
    messages = [m.model_dump() if not isinstance(m, dict) else m for m in received]
    assert all(not isinstance(m, dict) for m in received), "the SDK could not read a message"
    results = [m for m in received if isinstance(m, ListenV1Results)]
    assert {r.metadata.request_id for r in results} == {received[-1].request_id}
    assert isinstance(received[-1], ListenV1Metadata) and abs(received[-1].duration - audio.size / 16_000) < 0.01
    check_final_words(messages)
    reference = await v1_text(server, pcm, 16_000, "pcm_s16le")
    assert " ".join(final_texts(messages)) == reference
    print("deepgram sdk finals:", final_texts(messages))


async def test_livekit_style_client(server, audio):
    """What LiveKit's deepgram.STT does: its query, KeepAlive at once and every 5 s, real-time 50 ms chunks,
    Finalize then CloseStream, then it waits for the server to close."""
    query = urlencode({"model": "nova-3", "punctuate": "true", "smart_format": "true", "no_delay": "true",
                       "interim_results": "true", "encoding": "linear16", "vad_events": "true",
                       "sample_rate": "16000", "channels": "1", "endpointing": "25", "filler_words": "true",
                       "profanity_filter": "false", "numerals": "false", "mip_opt_out": "false",
                       "language": "en-US"})
    ws_url, _ = base(server)
    pcm = float_to_pcm16(audio)
    async with websockets.connect(f"{ws_url}/v1/listen?{query}",
                                  additional_headers={"Authorization": f"Token {KEY}"}) as ws:
        async def keepalive():
            while True:
                await ws.send(json.dumps({"type": "KeepAlive"}))
                await asyncio.sleep(5)

        async def send():
            t0 = time.perf_counter()
            for i, chunk in enumerate(chunks(pcm, 32_000)):
                await ws.send(chunk)
                await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK_S - time.perf_counter()))
            await ws.send(json.dumps({"type": "Finalize"}))
            await ws.send(json.dumps({"type": "CloseStream"}))

        pinger, sender = asyncio.create_task(keepalive()), asyncio.create_task(send())
        messages = []
        try:
            async with asyncio.timeout(120):
                async for frame in ws:
                    messages.append(json.loads(frame))
        finally:
            pinger.cancel()
        await sender
        assert ws.close_code == 1000
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "Metadata" and "Error" not in kinds, kinds
    assert kinds.index("SpeechStarted") < min(i for i, m in enumerate(messages)
                                              if m["type"] == "Results" and m["channel"]["alternatives"][0]["words"])
    results = [m for m in messages if m["type"] == "Results"]
    for m in results:  # every key LiveKit reads
        assert isinstance(m["metadata"]["request_id"], str) and isinstance(m["is_final"], bool)
        assert isinstance(m["speech_final"], bool)
        alt = m["channel"]["alternatives"][0]
        assert isinstance(alt["transcript"], str) and isinstance(alt["confidence"], float | int)
        assert all({"start", "end", "word", "punctuated_word", "confidence"} <= set(w) for w in alt["words"])
    assert any(not m["is_final"] for m in results)  # interims in real time
    assert sum(m["speech_final"] for m in results if m["is_final"]) >= 2  # the pause ended an utterance
    check_final_words(messages)
    # endpointing=25 is raised to the floor: v1 with that silence gives the same finals
    reference = await v1_text(server, pcm, 16_000, "pcm_s16le", endpoint_silence_ms=MIN_ENDPOINTING_MS)
    assert " ".join(final_texts(messages)) == reference
    print("livekit-style finals:", final_texts(messages))


async def test_mulaw_8k(server, audio):
    import soxr

    mulaw = to_mulaw(soxr.resample(audio, 16_000, 8_000).astype(np.float32))
    ws_url, _ = base(server)
    async with websockets.connect(f"{ws_url}/v1/listen?encoding=mulaw&sample_rate=8000&model=nova-3",
                                  additional_headers={"Authorization": f"Token {KEY}"}, max_size=None) as ws:
        for chunk in chunks(mulaw, 8_000):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = []
        async with asyncio.timeout(180):
            async for frame in ws:
                messages.append(json.loads(frame))
        assert ws.close_code == 1000
    assert messages[-1]["type"] == "Metadata" and abs(messages[-1]["duration"] - len(mulaw) / 8000) < 0.01
    check_final_words(messages)
    texts = final_texts(messages)
    assert texts and " ".join(texts) == await v1_text(server, mulaw, 8_000, "mulaw")
    print("mulaw 8k finals:", texts)


def two_legs() -> tuple[np.ndarray, np.ndarray]:
    """A call's two legs of equal length: jfk on channel 0, then lib_left answers on channel 1."""
    clips = {c.id: c for c in dev_clips()}
    jfk, lib = clips["jfk"].load(), clips["lib_left"].load()
    left = np.concatenate([np.zeros(8_000, np.float32), jfk, np.zeros(lib.size + 32_000, np.float32)])
    right = np.concatenate([np.zeros(8_000 + jfk.size + 16_000, np.float32), lib, np.zeros(16_000, np.float32)])
    return left, right


async def test_multichannel_sdk_gets_each_leg_apart_with_channel_index(server):
    """``multichannel=true&channels=2``: the official SDK reads ``channel_index: [c, 2]`` on every result, and
    each leg's finals say what v1 says for that leg streamed alone."""
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    legs = two_legs()
    pcm = float_to_pcm16(np.stack(legs, axis=1).reshape(-1))
    ws_url, http_url = base(server)
    client = AsyncDeepgramClient(api_key=KEY, environment=DeepgramClientEnvironment(
        base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url))
    received = []
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="16000", channels="2",
                                        multichannel="true", interim_results="true", vad_events="true",
                                        utterance_end_ms="1000") as socket:
        async def send():
            for chunk in chunks(pcm, 64_000):
                await socket.send_media(chunk)
            await socket.send_close_stream()
        sender = asyncio.create_task(send())
        async with asyncio.timeout(180):
            async for message in socket:
                received.append(message)
        await sender
    assert all(not isinstance(m, dict) for m in received), "the SDK could not read a message"
    results = [m for m in received if isinstance(m, ListenV1Results)]
    assert results and all(r.channel_index[1] == 2 and r.channel_index[0] in (0, 1) for r in results)
    assert isinstance(received[-1], ListenV1Metadata) and received[-1].channels == 2
    messages = [m.model_dump() for m in received]
    check_final_words(messages)
    for channel, leg in enumerate(legs):
        mine = [m for m in messages if m["type"] == "Results" and m["channel_index"][0] == channel]
        reference = await v1_text(server, float_to_pcm16(leg), 16_000, "pcm_s16le")
        assert reference and " ".join(final_texts(mine)) == reference
        print(f"channel {channel} finals:", final_texts(mine))
    ends = [m for m in messages if m["type"] == "UtteranceEnd"]
    assert {tuple(m["channel"]) for m in ends} <= {(0, 2), (1, 2)} and ends


async def test_two_channels_without_multichannel_are_mixed_down(server):
    legs = two_legs()
    query = "encoding=linear16&sample_rate=16000&channels=2"
    ws_url, _ = base(server)
    messages = []
    async with websockets.connect(f"{ws_url}/v1/listen?{query}",
                                  additional_headers={"Authorization": f"Token {KEY}"}) as ws:
        for chunk in chunks(float_to_pcm16(np.stack(legs, axis=1).reshape(-1)), 64_000):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
        async with asyncio.timeout(180):
            async for frame in ws:
                messages.append(json.loads(frame))
    assert all(m["channel_index"] == [0, 1] for m in messages if m["type"] == "Results")
    assert messages[-1]["type"] == "Metadata" and messages[-1]["channels"] == 2
    mixed = (legs[0] + legs[1]) / 2
    reference = await v1_text(server, float_to_pcm16(mixed), 16_000, "pcm_s16le")
    assert reference and " ".join(final_texts(messages)) == reference


async def test_nine_channels_refused_with_400(server):
    ws_url, _ = base(server)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{ws_url}/v1/listen?encoding=linear16&sample_rate=16000&channels=9",
                                      additional_headers={"Authorization": f"Token {KEY}"}):
            pass
    assert refused.value.response.status_code == 400
    assert b"channels must be from 1 to 8" in refused.value.response.body


async def test_ten_seconds_idle_closes_1011_net_0001(server):
    ws_url, _ = base(server)
    t0 = time.monotonic()
    async with websockets.connect(f"{ws_url}/v1/listen", additional_headers={"Authorization": f"Token {KEY}"}) as ws:
        await ws.send(json.dumps({"type": "KeepAlive"}))
        messages = []
        with pytest.raises(websockets.ConnectionClosedError):
            async with asyncio.timeout(40):
                async for frame in ws:
                    messages.append(frame)
        elapsed = time.monotonic() - t0
        assert messages == []  # Deepgram says it in the close frame only
        assert ws.close_code == 1011 and ws.close_reason == NET_0001_REASON
    assert elapsed >= 9.5  # the KeepAlive counted: 10 s from it, not less
