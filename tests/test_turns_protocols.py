"""Smart turn detection through the compatibility endpoints, end to end: the official ``openai`` SDK's
realtime client (``semantic_vad``) and the official ``deepgram-sdk`` live client (``turn_detection=smart``)
against a real server with the real tiny.en model and the real Smart Turn model.

As in ``tests/test_turns_e2e.py``, the turn model is deterministic and the VAD's frames are counted from
the first sample, so a clip gives the same pauses and scores every run (each clip here gets 0.5 s of
leading silence). What the model says (``CLIP_SCORES``, read from the server's turn model on these
streams), against the end thresholds of ``streaming.turns.EAGERNESS`` (high 0.8, medium 0.93, low 0.95):

- ``lib_left`` ends at 0.94: eagerness high ends the turn 150 ms into the silence;
- ``librivox_0880`` ends at 0.08: only the maximum silence ends the turn;
- ``ljspeech_LJ001-0029`` pauses after "on the whole," (reached 1.66 s into the clip, speech confirmed
  again ~0.15 s later) at 0.90, between high's and low's thresholds, and ends at 0.97;
- ``dctts_LJ001-0035`` pauses once at 0.69, below every threshold, and ends at 0.99.

Nothing here depends on this machine's speed: where an outcome depends on whether the model's answer
arrives before more audio, the client waits for the answer before it sends more, and maximum silences
are long enough that the wall clock cannot end a turn while the client waits, except in the test about
the wall clock. Deepgram streams send ``KeepAlive`` while they wait, as LiveKit does, so a slow answer
cannot run into Deepgram's 10 s idle close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np
import pytest
from openai import AsyncOpenAI

from streaming.audio import float_to_pcm16
from streaming.codecs.openai_events import SEMANTIC_MAX_WAIT_MS
from streaming.evaluation import dev_clips
from streaming.turns import EAGERNESS
from tests.helpers import background_server
from tests.test_openai_realtime import Turns, appends, ga_session, pcm24, sdk_sender

pytestmark = pytest.mark.slow
pytest.importorskip("deepgram")

SR = 16_000
LEAD_S = 0.5
CHUNK_S = 0.05
TIMEOUT_S = 120.0
"""Only catches hangs: every wait here is for something the server owes at once."""
KEEPALIVE_S = 3.0
LONGEST_MAX_SILENCE_MS = 10_000
"""``utterance_end_ms`` for the Deepgram streams: the wall clock never ends a turn while the client waits."""
CLIP_SCORES = {"lib_left": {"end": 0.94}, "librivox_0880": {"end": 0.08},
               "ljspeech_LJ001-0029": {"pause": 0.90, "end": 0.97}, "dctts_LJ001-0035": {"pause": 0.69, "end": 0.99}}
"""The turn model's probability at each clip's inner pause and at its end."""
LJ29_PAUSE_S = 1.66
"""Where ``ljspeech_LJ001-0029``'s pause is reached (clip time); the VAD confirms speech again by 1.85 s."""
LJ29_CUTS_S = (1.70, 1.78)
"""Cut points past that pause and before the speech is confirmed again: a client that stops there leaves
the pause to the model's answer."""


@pytest.fixture(scope="module")
def server():
    with background_server() as handle:
        yield handle


@pytest.fixture(scope="module")
def clips():
    return {c.id: c for c in dev_clips(full=True)}


def with_lead(audio: np.ndarray, tail_s: float = 0.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(LEAD_S * SR), np.float32), audio, np.zeros(int(tail_s * SR), np.float32)])


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def test_the_clip_scores_these_tests_rely_on_sit_where_they_must_against_the_thresholds():
    """Which eagerness ends which turn: the tests below are only about the protocols if these hold."""
    high, medium, low = (EAGERNESS[e].end for e in ("high", "medium", "low"))
    assert CLIP_SCORES["lib_left"]["end"] >= high + 0.1
    assert CLIP_SCORES["librivox_0880"]["end"] < high - 0.1
    assert high + 0.05 <= CLIP_SCORES["ljspeech_LJ001-0029"]["pause"] <= low - 0.04
    assert CLIP_SCORES["ljspeech_LJ001-0029"]["end"] >= low
    assert CLIP_SCORES["dctts_LJ001-0035"]["pause"] < high - 0.1
    assert CLIP_SCORES["dctts_LJ001-0035"]["end"] >= low
    assert LJ29_PAUSE_S < min(LJ29_CUTS_S)
    assert SEMANTIC_MAX_WAIT_MS["high"] == 2000 and SEMANTIC_MAX_WAIT_MS["medium"] == 4000
    assert medium > CLIP_SCORES["librivox_0880"]["end"]


# ---- OpenAI Realtime: semantic_vad -------------------------------------------------------------------


def sdk_client(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://{urlsplit(server.url).netloc}/v1", api_key="k")


async def recv_until(conn, seen: Turns, done: Callable[[Turns], bool]) -> None:
    """Read the SDK's events into ``seen`` until ``done`` holds (each parsed by the SDK into its own type)."""
    while not done(seen):
        event = await conn.recv()
        assert not isinstance(event, dict), f"the SDK could not read {event}"
        seen.see(event.to_dict())


async def realtime_turn(server, turn_detection: dict, pcm: bytes) -> tuple[Turns, float]:
    """One transcription session: the update, ``pcm`` appended at once, then nothing until one turn
    completes; what the client saw and the seconds from its first append to the completion.

    Then a barrier: a second silence and the same update again. The session handles a client's events in
    order, so any turn that audio started would show before the second ``session.updated``.
    """
    seen = Turns()
    async with asyncio.timeout(TIMEOUT_S):
        async with sdk_client(server).realtime.connect(model="gpt-4o-transcribe",
                                                       extra_query={"intent": "transcription"}) as conn:
            session = ga_session(turn_detection)
            await conn.session.update(session=session)
            await recv_until(conn, seen, lambda s: s.events and s.events[-1]["type"] == "session.updated")
            send = sdk_sender(conn)
            t0 = time.monotonic()
            for event in appends(pcm):
                await send(event)
            await recv_until(conn, seen, lambda s: s.done(1))
            elapsed_s = time.monotonic() - t0
            for event in appends(pcm24(silence(1.0))):
                await send(event)
            await conn.session.update(session=session)
            await recv_until(conn, seen, lambda s: [e["type"] for e in s.events].count("session.updated") == 2)
    seen.check_items()
    return seen, elapsed_s


def echoed_turn_detection(seen: Turns) -> dict:
    updated = next(e for e in seen.events if e["type"] == "session.updated")
    return updated["session"]["audio"]["input"]["turn_detection"]


async def test_semantic_vad_ends_a_complete_turn_with_the_server_vad_text(server, clips):
    """semantic_vad (eagerness high) ends lib_left's turn at the pause (0.3 s of silence is all there is,
    less than the 2 s maximum wait); one item, with the transcript server_vad gives the same audio."""
    audio = clips["lib_left"].load()
    smart, _ = await realtime_turn(server, {"type": "semantic_vad", "eagerness": "high"},
                                   pcm24(with_lead(audio, tail_s=0.3)))
    assert echoed_turn_detection(smart)["type"] == "semantic_vad"
    assert echoed_turn_detection(smart)["eagerness"] == "high"
    reference, _ = await realtime_turn(server, {"type": "server_vad"}, pcm24(with_lead(audio, tail_s=1.3)))
    assert echoed_turn_detection(reference)["type"] == "server_vad"
    for seen in (smart, reference):
        kinds = [e["type"] for e in seen.events]
        assert len(seen.committed) == len(seen.completed) == 1
        assert kinds.count("input_audio_buffer.speech_started") == kinds.count("input_audio_buffer.speech_stopped") == 1
    assert smart.text and smart.text == reference.text
    assert "wizard" in smart.text.lower()


@pytest.mark.parametrize("eagerness", ["high", "medium"])
async def test_semantic_vad_ends_an_unfinished_turn_at_its_maximum_wait(server, clips, eagerness):
    """librivox_0880 ends where the model says 0.08, below the end threshold: with no more audio after
    0.3 s of silence, the turn still completes once the eagerness's maximum wait (high 2 s, medium 4 s:
    not the server's default) has passed on the wall clock, with the transcript server_vad gives."""
    audio = clips["librivox_0880"].load()
    seen, elapsed_s = await realtime_turn(server, {"type": "semantic_vad", "eagerness": eagerness},
                                          pcm24(with_lead(audio, tail_s=0.3)))
    assert echoed_turn_detection(seen) == {"type": "semantic_vad", "eagerness": eagerness}
    assert len(seen.committed) == len(seen.completed) == 1
    reference, _ = await realtime_turn(server, {"type": "server_vad"}, pcm24(with_lead(audio, tail_s=1.3)))
    assert seen.text and seen.text == reference.text
    assert "young man" in seen.text.lower()
    # The server cannot reach the pause before the client sent it, and then waits the maximum less the
    # pause: a lower bound only (a slow machine makes it longer, never shorter).
    assert elapsed_s >= (SEMANTIC_MAX_WAIT_MS[eagerness] - 150) / 1000


# ---- Deepgram live: turn_detection=smart ---------------------------------------------------------------


class Listen:
    """A Deepgram live stream through the official SDK: audio sent in steps, messages read meanwhile,
    ``KeepAlive`` every few seconds."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.messages: list[dict] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._pinger = asyncio.create_task(self._keepalive())

    async def _read(self) -> None:
        async for message in self.socket:  # until the server closes after Metadata
            assert not isinstance(message, dict | bytes), f"the SDK could not read {message}"
            self.messages.append(message.model_dump())
            self._new.set()
        self._new.set()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            await self.socket.send_keep_alive()

    async def send(self, audio: np.ndarray, pace_s: float = 0.0) -> None:
        """``audio`` in 50 ms chunks; ``pace_s`` between chunks (0: as fast as the server reads)."""
        pcm, step = float_to_pcm16(audio), int(CHUNK_S * SR) * 2
        for i in range(0, len(pcm), step):
            await self.socket.send_media(pcm[i:i + step])
            await asyncio.sleep(pace_s)

    async def wait_for_speech_finals(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while len(speech_finals(self.messages)) < count:
                if self._reader.done():
                    await self._reader  # its exception, if any
                    raise AssertionError(f"the server closed the stream: {self.messages}")
                self._new.clear()
                await self._new.wait()

    async def close(self) -> list[dict]:
        self._pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pinger
        await self.socket.send_close_stream()
        async with asyncio.timeout(TIMEOUT_S):
            await self._reader
        assert self.messages and self.messages[-1]["type"] == "Metadata", self.messages
        assert "Error" not in {m["type"] for m in self.messages}, self.messages
        return self.messages


def listen(server, **query: str):
    """The SDK's live connection to ``server`` with Deepgram's own parameters and this server's extensions
    (``turn_detection``, ``turn_eagerness``) as additional query parameters."""
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    port = server.server.port
    ws_url, http_url = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    client = AsyncDeepgramClient(api_key="k", environment=DeepgramClientEnvironment(
        base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url))
    extensions = {k: query.pop(k) for k in ("turn_detection", "turn_eagerness") if k in query}
    return client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="16000",
                                    interim_results="true", **query,
                                    request_options={"additional_query_parameters": extensions})


def smart(eagerness: str) -> dict[str, str]:
    """Query parameters of a smart-mode stream whose turns the wall clock cannot end while the client waits."""
    return {"turn_detection": "smart", "turn_eagerness": eagerness, "utterance_end_ms": str(LONGEST_MAX_SILENCE_MS)}


def speech_finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "Results" and m["speech_final"]]


def transcript(message: dict) -> str:
    return message["channel"]["alternatives"][0]["transcript"]


def check_finals(messages: list[dict]) -> None:
    """Every final with text has words inside its span, in order; ``speech_final`` only on finals."""
    for m in messages:
        if m["type"] != "Results":
            continue
        assert m["is_final"] or not m["speech_final"], m
        if not m["is_final"] or not transcript(m):
            continue
        words = m["channel"]["alternatives"][0]["words"]
        assert words, m
        lo, hi = m["start"], m["start"] + m["duration"] + 1e-3
        assert all(lo <= w["start"] <= w["end"] <= hi for w in words), m
        assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:])), m
        assert all(w["punctuated_word"] and w["word"] == w["word"].lower() for w in words), m


def final_texts(messages: list[dict]) -> list[str]:
    return [transcript(m) for m in messages if m["type"] == "Results" and m["is_final"] and transcript(m)]


async def two_turns(server, audio: np.ndarray, cut_s: float) -> list[dict]:
    """``ljspeech_LJ001-0029`` with eagerness high, the client stopping at ``cut_s`` (in the pause) until
    the model's end of turn came, then sending the rest; every message of the stream."""
    cut = int(cut_s * SR)
    async with listen(server, **smart("high")) as socket:
        stream = Listen(socket)
        await stream.send(with_lead(audio[:cut]))
        await stream.wait_for_speech_finals(1)
        await stream.send(np.concatenate([audio[cut:], silence(0.3)]))
        await stream.wait_for_speech_finals(2)  # the second part ends where the model says complete too
        await stream.send(silence(1.0))
        return await stream.close()


async def test_deepgram_smart_gives_one_speech_final_with_the_silence_mode_text(server, clips):
    """lib_left in smart mode: the model ends the turn 150 ms into the silence (the client waits for it:
    0.3 s of audio cannot reach the 10 s maximum), one final with ``speech_final``, then ``UtteranceEnd``;
    its transcript is what silence mode gives the same clip."""
    audio = clips["lib_left"].load()
    async with listen(server, **smart("high")) as socket:
        stream = Listen(socket)
        await stream.send(with_lead(audio, tail_s=0.3))
        await stream.wait_for_speech_finals(1)
        await stream.send(silence(1.0))
        smart_mode = await stream.close()
    async with listen(server, turn_detection="silence") as socket:
        stream = Listen(socket)
        await stream.send(with_lead(audio, tail_s=1.3))
        await stream.wait_for_speech_finals(1)  # the endpoint (600 ms), not the end of the stream
        reference = await stream.close()
    for messages in (smart_mode, reference):
        check_finals(messages)
        (final,) = speech_finals(messages)
        assert final["is_final"] and not final["from_finalize"]
        assert final_texts(messages) == [transcript(final)]
    (final,) = speech_finals(smart_mode)
    assert transcript(final) == transcript(speech_finals(reference)[0])
    assert "wizard" in transcript(final).lower()
    kinds = [m["type"] for m in smart_mode]
    assert kinds.count("UtteranceEnd") == 1 and kinds.index("UtteranceEnd") > smart_mode.index(final)


@pytest.mark.parametrize(("clip_id", "eagerness", "words"), [
    ("ljspeech_LJ001-0029", "low", ("whole", "italy")),
    ("dctts_LJ001-0035", "high", ("discarded", "letter")),
])
async def test_deepgram_keeps_a_pause_the_model_calls_unfinished_in_one_turn(server, clips, clip_id, eagerness,
                                                                             words):
    """At real-time pace, a pause scored below the eagerness's end threshold (LJ001-0029's 0.90 with low,
    dctts's 0.69 even with high) does not end the turn, whatever the timing: one ``speech_final`` result
    with the words on both sides of the pause, and interim results before it."""
    audio = clips[clip_id].load()
    async with listen(server, **smart(eagerness)) as socket:
        stream = Listen(socket)
        await stream.send(with_lead(audio, tail_s=0.3), pace_s=CHUNK_S)
        await stream.wait_for_speech_finals(1)  # the model's end of turn at the clip's end
        await stream.send(silence(1.0))
        messages = await stream.close()
    check_finals(messages)
    (final,) = speech_finals(messages)
    assert final_texts(messages) == [transcript(final)]
    assert all(word in transcript(final).lower() for word in words)
    assert any(m["type"] == "Results" and not m["is_final"] for m in messages)  # interims in real time


async def test_deepgram_high_eagerness_ends_the_turn_at_a_pause_the_model_calls_complete(server, clips):
    """LJ001-0029 with eagerness high (end at 0.8): its pause (0.90) ends the turn. The client stops in
    the pause until that ``speech_final`` (the score must come before the speech resumes), then sends the
    rest: two turns, each with one ``speech_final`` result, split at the pause."""
    messages = await two_turns(server, clips["ljspeech_LJ001-0029"].load(), sum(LJ29_CUTS_S) / 2)
    check_finals(messages)
    first, second = speech_finals(messages)
    assert final_texts(messages) == [transcript(first), transcript(second)]
    assert "whole" in transcript(first).lower() and "italy" not in transcript(first).lower()
    assert "italy" in transcript(second).lower() and "whole" not in transcript(second).lower()
    assert first["start"] + first["duration"] <= second["start"]
    assert first["start"] + first["duration"] <= LEAD_S + LJ29_PAUSE_S  # the first turn's audio ends at the pause


async def test_the_turn_after_an_end_of_turn_starts_where_its_audio_says(server, clips):
    """The same audio, the client waiting for the model's answer at two points of the same pause: the
    turn after it must start at the same place (its pre-roll comes from the audio, not the clock)."""
    audio = clips["ljspeech_LJ001-0029"].load()
    seconds = []
    for cut_s in LJ29_CUTS_S:
        messages = await two_turns(server, audio, cut_s)
        first, second = speech_finals(messages)
        seconds.append((first["start"], first["duration"], second["start"], transcript(second)))
    assert seconds[0] == seconds[1]
