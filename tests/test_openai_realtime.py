"""OpenAI Realtime transcription at ``/v1/realtime`` end to end: the official ``openai`` SDK and raw clients
that behave like LiveKit's and Pipecat's STT classes, against a real server with the real model.

Each run's transcript is compared with what protocol v1 (``/v1/stream``) gives for the same audio with the
same endpointing options: the codec must add nothing and lose nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import soxr
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import (ConversationItemAdded, ConversationItemInputAudioTranscriptionCompletedEvent,
                                   InputAudioBufferCommittedEvent, InputAudioBufferSpeechStartedEvent,
                                   InputAudioBufferSpeechStoppedEvent, SessionCreatedEvent, SessionUpdatedEvent)

from streaming.evaluation import dev_clips
from benchmarks.loadgen import with_silence
from tests.helpers import running_server, v1_final_texts

pytestmark = pytest.mark.slow

RATE = 24_000
CHUNK_S = 0.05
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def url():
    with running_server() as ws_url:
        yield ws_url


@pytest.fixture(scope="module")
def clips():
    return {c.id: c for c in dev_clips()}


def http_base(ws_url: str) -> str:
    return f"http://{urlsplit(ws_url).netloc}/v1"


def realtime_url(ws_url: str, query: str = "intent=transcription&model=gpt-4o-transcribe") -> str:
    return f"ws://{urlsplit(ws_url).netloc}/v1/realtime" + (f"?{query}" if query else "")


def pcm24(audio16: np.ndarray) -> bytes:
    """16 kHz float samples → 24 kHz PCM16, as LiveKit and Pipecat send it."""
    return (np.clip(soxr.resample(audio16, 16_000, RATE), -1, 1) * 32767).astype("<i2").tobytes()


def appends(pcm: bytes, chunk_s: float = CHUNK_S) -> list[dict]:
    step = int(RATE * chunk_s) * 2
    return [{"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i:i + step]).decode()}
            for i in range(0, len(pcm), step)]


async def pump(send: Callable[[dict], Awaitable[None]], events: list[dict], pace_s: float = 0.0) -> None:
    for event in events:
        await send(event)
        await asyncio.sleep(pace_s)  # 0: yield only (the server's backpressure paces us)


async def collect(recv: Callable[[], Awaitable[Any]], seen: Turns, sending: asyncio.Task, turns: int,
                  parse: Callable[[Any], dict] = json.loads) -> list[Any]:
    """Read events while ``sending`` runs and after, until ``turns`` items are complete; the raw events."""
    raw: list[Any] = []
    while not (sending.done() and seen.done(turns)):
        if sending.done():
            got = await recv()
        else:
            reading = asyncio.ensure_future(recv())
            await asyncio.wait({reading, sending}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()  # cancelling a receive loses nothing (websockets and the SDK say so)
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
                continue
            got = reading.result()
        raw.append(got)
        seen.see(parse(got))
    await sending  # its exception, if any
    return raw


def sdk_sender(conn) -> Callable[[dict], Awaitable[None]]:
    """Send through the SDK's own typed helpers (GA and beta connections have the same ones)."""
    async def send(event: dict) -> None:
        if event["type"] == "input_audio_buffer.append":
            await conn.input_audio_buffer.append(audio=event["audio"])
        elif event["type"] == "input_audio_buffer.commit":
            await conn.input_audio_buffer.commit()
        else:
            await conn.send(event)

    return send


async def ws_sender(ws) -> Callable[[dict], Awaitable[None]]:
    async def send(event: dict) -> None:
        await ws.send(json.dumps(event))

    return send


@dataclass
class Turns:
    """What a client saw of its turns: every event in order, and the transcript pieces per item."""

    events: list[dict] = field(default_factory=list)
    deltas: dict[str, str] = field(default_factory=dict)
    completed: dict[str, str] = field(default_factory=dict)
    committed: list[dict] = field(default_factory=list)

    def see(self, event: dict) -> None:
        self.events.append(event)
        kind = event["type"]
        assert kind != "error", event
        if kind == "input_audio_buffer.committed":
            self.committed.append(event)
        elif kind.endswith("input_audio_transcription.delta"):
            assert event["item_id"] not in self.completed  # no delta after the item's completion
            self.deltas[event["item_id"]] = self.deltas.get(event["item_id"], "") + event["delta"]
        elif kind.endswith("input_audio_transcription.completed"):
            self.completed[event["item_id"]] = event["transcript"]

    def done(self, turns: int) -> bool:
        return len(self.completed) >= turns and len(self.completed) == len(self.committed)

    @property
    def text(self) -> str:
        """The transcripts in commit order, non-empty ones joined."""
        return " ".join(t for t in (self.completed[e["item_id"]] for e in self.committed) if t)

    def check_items(self) -> None:
        """Items chain; every item that had deltas was completed.

        Deltas only ever extend what the client shows (they are pieces, never a replacement). The
        completed transcript is a fresh decode of the whole turn and is the one that counts: under load
        the stable prefix of a short early partial can differ from it ("Like" before "What your
        country…"), so a prefix relation is not promised here; the codec's rule that it never sends
        a delta contradicting the final it already has is in the table tests.
        """
        ids = [e["item_id"] for e in self.committed]
        assert len(set(ids)) == len(ids)
        assert [e["previous_item_id"] for e in self.committed] == [None, *ids[:-1]]
        for item_id, shown in self.deltas.items():
            assert item_id in self.completed and shown.strip(), (item_id, shown)
        ids_seen = [e["event_id"] for e in self.events]
        assert len(set(ids_seen)) == len(ids_seen)


async def v1_finals(ws_url: str, parts: list[bytes], finalize_each: bool = False, **fields) -> list[str]:
    """The final texts protocol v1 gives for the same 24 kHz bytes with the same options (100 ms chunks)."""
    return await v1_final_texts(ws_url, parts, sample_rate=RATE, chunk_s=0.1, finalize_each=finalize_each, **fields)


VAD_FIELDS = {"endpointing": True, "speech_threshold": 0.5}
"""What the codec's Start asks for besides pre-roll and silence (OpenAI's defaults)."""


def ga_session(turn_detection: dict | None) -> dict:
    return {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": RATE},
        "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": ""},
        "turn_detection": turn_detection}}}


# ---- the official SDK -----------------------------------------------------------------------------


async def test_sdk_server_vad_turns_match_v1(url, clips):
    pcm = pcm24(with_silence(clips["jfk"].load(), lead_s=0.3, trail_s=1.5))
    finals = await v1_finals(url, [pcm], **VAD_FIELDS, preroll_ms=300, endpoint_silence_ms=600)
    expected, turns = " ".join(finals), len(finals)
    client = AsyncOpenAI(base_url=http_base(url), api_key="k")
    seen = Turns()
    async with asyncio.timeout(TIMEOUT_S):
        async with client.realtime.connect(model="gpt-4o-transcribe",
                                           extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session=ga_session(
                {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 600}))
            sending = asyncio.create_task(pump(sdk_sender(conn), appends(pcm)))
            typed = [type(e) for e in await collect(conn.recv, seen, sending, turns, parse=lambda e: e.to_dict())]
    seen.check_items()
    assert seen.text == expected
    # The SDK parsed every event into its own GA type.
    assert typed[:2] == [SessionCreatedEvent, SessionUpdatedEvent]
    for kind in (InputAudioBufferSpeechStartedEvent, InputAudioBufferSpeechStoppedEvent,
                 InputAudioBufferCommittedEvent, ConversationItemAdded,
                 ConversationItemInputAudioTranscriptionCompletedEvent):
        assert typed.count(kind) == turns, kind
    assert seen.events[1]["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 600


async def test_sdk_manual_commits_match_v1(url, clips):
    """turn_detection null: one item per commit, no VAD events; a commit with no audio is an error only."""
    parts = [pcm24(with_silence(clips[c].load(), lead_s=0.2, trail_s=0.5)) for c in ("cards_001", "goforward")]
    expected = await v1_finals(url, parts, finalize_each=True, endpointing=False, preroll_ms=300)
    client = AsyncOpenAI(base_url=http_base(url), api_key="k")
    seen = Turns()
    async with asyncio.timeout(TIMEOUT_S):
        async with client.realtime.connect(model="gpt-4o-transcribe",
                                           extra_query={"intent": "transcription"}) as conn:
            assert (await conn.recv()).type == "session.created"  # Pipecat waits for it
            await conn.session.update(session=ga_session(None))
            updated = await conn.recv()
            assert updated.type == "session.updated" and updated.session.audio.input.turn_detection is None
            await conn.input_audio_buffer.commit(event_id="too_soon")
            error = (await conn.recv()).to_dict()
            assert error["type"] == "error"
            assert error["error"]["code"] == "input_audio_buffer_commit_empty"
            assert error["error"]["event_id"] == "too_soon"
            events = [e for part in parts for e in (*appends(part), {"type": "input_audio_buffer.commit"})]
            sending = asyncio.create_task(pump(sdk_sender(conn), events))
            await collect(conn.recv, seen, sending, len(parts), parse=lambda e: e.to_dict())
    seen.check_items()
    kinds = {e["type"] for e in seen.events}
    assert not kinds & {"input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"}
    assert [seen.completed[e["item_id"]] for e in seen.committed] == expected


async def test_sdk_beta_dialect(url, clips):
    """The SDK's retained beta interface (it sends ``OpenAI-Beta: realtime=v1``): the beta update shape,
    answered with the beta event names. That interface always derives ``wss://`` from ``base_url``, so a
    plain server is named by ``websocket_base_url``."""
    pcm = pcm24(with_silence(clips["cards_002"].load(), lead_s=0.3, trail_s=1.5))
    finals = await v1_finals(url, [pcm], **VAD_FIELDS, preroll_ms=300, endpoint_silence_ms=500)
    expected, turns = " ".join(finals), len(finals)
    client = AsyncOpenAI(base_url=http_base(url), websocket_base_url=http_base(url).replace("http", "ws", 1),
                         api_key="k")
    seen = Turns()
    async with asyncio.timeout(TIMEOUT_S):
        async with client.beta.realtime.connect(model="gpt-4o-transcribe",
                                                extra_query={"intent": "transcription"}) as conn:
            created = json.loads(await conn.recv_bytes())
            assert created["type"] == "transcription_session.created"
            assert created["session"]["input_audio_format"] == "pcm16"
            await conn.transcription_session.update(session={
                "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                   "silence_duration_ms": 500}})
            updated = json.loads(await conn.recv_bytes())
            assert updated["type"] == "transcription_session.updated"
            assert updated["session"]["input_audio_transcription"]["model"] == "whisper-1"
            sending = asyncio.create_task(pump(sdk_sender(conn), appends(pcm)))
            await collect(conn.recv_bytes, seen, sending, turns)
    seen.check_items()
    assert seen.text == expected
    assert "conversation.item.created" in {e["type"] for e in seen.events}
    assert "conversation.item.added" not in {e["type"] for e in seen.events}


# ---- raw clients that behave like the voice frameworks' STT classes -----------------------------------------


async def test_livekit_style_client(url, clips):
    """GA shape, Bearer auth, session.update before session.created, 50 ms chunks in real time, never commits."""
    pcm = pcm24(with_silence(clips["jfk"].load(), lead_s=0.3, trail_s=1.5))
    finals = await v1_finals(url, [pcm], **VAD_FIELDS, preroll_ms=600, endpoint_silence_ms=350)
    expected, turns = " ".join(finals), len(finals)
    seen = Turns()
    headers = {"Authorization": "Bearer k", "User-Agent": "LiveKit Agents"}
    async with asyncio.timeout(TIMEOUT_S):
        async with websockets.connect(realtime_url(url, "intent=transcription&model=gpt-4o-mini-transcribe"),
                                      additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": ga_session(
                {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 600, "silence_duration_ms": 350})}))
            sending = asyncio.create_task(pump(await ws_sender(ws), appends(pcm), pace_s=CHUNK_S))
            await collect(ws.recv, seen, sending, turns)
    seen.check_items()
    assert seen.text == expected
    assert [e["type"] for e in seen.events[:2]] == ["session.created", "session.updated"]
    assert any(seen.deltas.values())  # real-time pace: words showed before the turns ended


async def test_pipecat_style_client(url, clips):
    """No query string, waits for session.created, turn_detection null, commits when its own VAD says stop."""
    parts = [pcm24(with_silence(clips[c].load(), lead_s=0.2, trail_s=0.3)) for c in ("cards_003", "onetwothree")]
    expected = await v1_finals(url, parts, finalize_each=True, endpointing=False, preroll_ms=300)
    seen = Turns()
    async with asyncio.timeout(TIMEOUT_S):
        async with websockets.connect(realtime_url(url, ""), additional_headers={"Authorization": "Bearer k"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "session.update", "session": ga_session(None)}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            events = [e for part in parts
                      for e in (*appends(part, chunk_s=0.02), {"type": "input_audio_buffer.commit"})]
            sending = asyncio.create_task(pump(await ws_sender(ws), events))
            await collect(ws.recv, seen, sending, len(parts))
    seen.check_items()
    assert [seen.completed[e["item_id"]] for e in seen.committed] == expected
