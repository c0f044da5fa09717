"""Smart turn detection end to end: real sockets, the real tiny.en model, the real Smart Turn model, real speech.

The turn model is deterministic and the VAD's frames are counted from the first sample, so a clip
gives the same pauses and scores on every run. The clips and cut points below were chosen from
what the model says about them (``python -m benchmarks turns`` and ``bench/turns/``), each with a
margin of at least 0.1 from the thresholds it is tested against. Where a result depends on what
arrives first (an eager decode or more speech), the client waits for the event before it sends
more audio, as an agent would; nothing here depends on this machine's speed.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from streaming.audio import float_to_pcm16
from streaming.evaluation import dev_clips
from tests.helpers import running_server

pytestmark = pytest.mark.slow
SR = 16_000
LEAD_S = 0.5


@pytest.fixture(scope="module")
def clips():
    return {c.id: c for c in dev_clips(full=True)}


def with_lead(audio: np.ndarray, tail_s: float = 0.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(LEAD_S * SR), np.float32), audio, np.zeros(int(tail_s * SR), np.float32)])


class Stream:
    """A protocol-v1 client that sends audio in steps and can wait for an event between them."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, **fields) -> Stream:
        ws = await websockets.connect(url, max_size=None, ping_timeout=120)
        stream = cls(ws)
        await ws.send(json.dumps({"type": "start", "sample_rate": SR, **fields}))
        ready = await stream.wait_for("ready")
        assert ready["options"]["turn_detection"] == fields.get("turn_detection", "silence")
        return stream

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.events.append(json.loads(frame))
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        self._new.set()

    async def send(self, audio: np.ndarray, chunk_s: float = 0.05) -> None:
        pcm, step = float_to_pcm16(audio), int(chunk_s * SR) * 2
        for i in range(0, len(pcm), step):
            await self.ws.send(pcm[i:i + step])

    async def wait_for(self, kind: str, timeout_s: float = 120.0) -> dict:
        async with asyncio.timeout(timeout_s):
            while True:
                for event in self.events:
                    assert event["type"] != "error", event
                    if event["type"] == kind:
                        return event
                self._new.clear()
                await self._new.wait()

    async def finish(self) -> list[dict]:
        await self.ws.send(json.dumps({"type": "stop"}))
        await self.wait_for("end")
        await self.ws.close()
        await self._reader
        return self.events

    def kinds(self, *wanted: str) -> list[str]:
        return [e["type"] for e in self.events if e["type"] in wanted]


TURN_EVENTS = ("speech_start", "eager_end_of_turn", "turn_resumed", "speech_end", "final")


async def test_eager_end_of_turn_retracted_by_more_speech(clips):
    """dctts_LJ001-0035 has one short pause inside its sentence, reached 2.98 s into the clip, where the
    model says 0.69 (eagerness high: eager at 0.5, end at 0.8), and 0.99 at its end. The client stops
    there until the eager event comes (speech resumes ~0.1 s later, before a decode would finish)."""
    audio = clips["dctts_LJ001-0035"].load()
    cut = int(3.0 * SR)
    with running_server() as url:
        stream = await Stream.open(url, turn_detection="smart", turn_eagerness="high", eager_end_of_turn=True,
                                   turn_max_silence_ms=10_000, partials=False)
        await stream.send(with_lead(audio[:cut]))
        eager = await stream.wait_for("eager_end_of_turn")
        await stream.send(audio[cut:])
        await stream.send(np.zeros(SR, np.float32))
        await stream.wait_for("final")
        events = await stream.finish()
    assert stream.kinds(*TURN_EVENTS) == ["speech_start", "eager_end_of_turn", "turn_resumed", "speech_end",
                                          "final"]
    final = next(e for e in events if e["type"] == "final")
    assert final["reason"] == "end_of_turn"
    assert eager["text"] and len(final["text"]) > len(eager["text"])
    assert final["utterance_id"] == eager["utterance_id"]


async def test_eager_end_of_turn_then_the_same_text_as_final(clips):
    """ljspeech_LJ001-0003's only pause is its end, where the model says 0.61 (eagerness high): an eager end
    of turn, then the maximum silence ends the turn, and the final is the eager decode."""
    audio = clips["ljspeech_LJ001-0003"].load()
    with running_server() as url:
        # A maximum silence that the wall clock cannot reach while the decode runs on a busy machine;
        # the stream audio reaches it once the client sends the rest of the silence.
        stream = await Stream.open(url, turn_detection="smart", turn_eagerness="high", eager_end_of_turn=True,
                                   turn_max_silence_ms=10_000)
        await stream.send(with_lead(audio, tail_s=0.4))
        eager = await stream.wait_for("eager_end_of_turn")
        await stream.send(np.zeros(10 * SR, np.float32))
        final = await stream.wait_for("final")
        await stream.finish()
    assert stream.kinds(*TURN_EVENTS) == ["speech_start", "eager_end_of_turn", "speech_end", "final"]
    assert final["reason"] == "max_silence"
    assert final["text"] == eager["text"] and "chinese" in final["text"].lower()


async def test_a_complete_turn_ends_at_the_pause_with_the_same_text_as_silence_mode(clips):
    """lib_left ends where the model says 0.94 (eagerness high: end at 0.8): the turn ends 150 ms into the
    silence, and the final is the text a silence-mode stream gets."""
    audio = with_lead(clips["lib_left"].load(), tail_s=0.3)
    texts = {}
    with running_server() as url:
        for mode in ("smart", "silence"):
            stream = await Stream.open(url, turn_detection=mode, turn_eagerness="high", turn_max_silence_ms=10_000)
            await stream.send(audio)
            if mode == "smart":
                await stream.wait_for("final")  # only the model can end it this early
            await stream.send(np.zeros(SR, np.float32))
            events = await stream.finish()
            finals = [e for e in events if e["type"] == "final" and e["text"]]
            assert len(finals) == 1
            texts[mode] = finals[0]["text"]
            assert finals[0]["reason"] == ("end_of_turn" if mode == "smart" else "endpoint")
    assert texts["smart"] == texts["silence"]


async def test_the_wall_clock_ends_a_turn_when_the_client_goes_quiet(clips):
    """librivox_0880 ends where the model says 0.08 (incomplete): with no more audio sent, the turn
    still ends once the maximum silence has passed on the wall clock."""
    audio = with_lead(clips["librivox_0880"].load(), tail_s=0.3)
    with running_server() as url:
        stream = await Stream.open(url, turn_detection="smart", turn_max_silence_ms=1500)
        await stream.send(audio)
        final = await stream.wait_for("final")  # no stop, no more audio: only the timer can end it
        await stream.finish()
    assert final["reason"] == "max_silence" and final["text"]


async def test_smart_mode_is_refused_with_a_clear_error_without_the_model(clips):
    with running_server() as url:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "turn_detection": "smart", "turn_eagerness": "eager"}))
            error = json.loads(await ws.recv())
    assert error["type"] == "error" and error["code"] == "invalid_option" and "turn_eagerness" in error["message"]
