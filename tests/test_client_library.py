"""The client library (client.StreamingClient, transcribe): pure parts with tables, then over real servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import msgpack
import numpy as np
import pytest
import websockets

from client import (
    Cleared, Disconnected, End, Error, Final, OtherEvent, Partial, Ready, Reconnected, SpeechEnd, SpeechStart,
    StreamClosed, StreamingClient, TranscriptionError, Word, transcribe,
)
from client.continuity import Outbox, StreamMapper
from client.events import Codec, is_retryable, parse_event, start_message
from client.options import split_options
from streaming.audio import float_to_pcm16
from streaming.protocol import ERROR_CODES, protocol_facts

# --- typed events -----------------------------------------------------------------------------------

WORDS = [{"word": "Hi", "start_s": 0.1, "end_s": 0.3, "probability": 0.9}]
MESSAGES = [
    ({"type": "ready", "seq": 0, "session_id": "s1", "model": "m", "protocol": 1, "options": {"words": True}},
     Ready(0, "s1", "m", 1, {"words": True})),
    ({"type": "speech_start", "seq": 1, "utterance_id": 0, "start_s": 0.25}, SpeechStart(1, 0, 0.25)),
    ({"type": "partial", "seq": 2, "utterance_id": 0, "text": "hi th", "stable_text": "hi", "start_s": 0.25,
      "end_s": 1.0}, Partial(2, 0, "hi th", "hi", 0.25, 1.0)),
    ({"type": "speech_end", "seq": 3, "utterance_id": 0, "end_s": 1.5}, SpeechEnd(3, 0, 1.5)),
    ({"type": "final", "seq": 4, "utterance_id": 0, "text": "Hi.", "language": "en", "start_s": 0.25, "end_s": 1.5},
     Final(4, 0, "Hi.", "en", 0.25, 1.5)),
    ({"type": "final", "seq": 4, "utterance_id": 0, "text": "Hi.", "language": None, "start_s": 0.25, "end_s": 1.5,
      "words": WORDS, "word_timing": "cross-attention DTW"},
     Final(4, 0, "Hi.", None, 0.25, 1.5, (Word("Hi", 0.1, 0.3, 0.9),), "cross-attention DTW")),
    ({"type": "cleared", "seq": 5, "utterance_id": 1, "at_s": 2.0}, Cleared(5, 1, 2.0)),
    ({"type": "cleared", "seq": 5, "utterance_id": None, "at_s": 2.0}, Cleared(5, None, 2.0)),
    ({"type": "error", "seq": 6, "code": "bad_message", "message": "no", "fatal": False},
     Error(6, "bad_message", "no", False)),
    ({"type": "end", "seq": 7, "utterances": 1, "audio_s": 3.0}, End(7, 1, 3.0)),
]


@pytest.mark.parametrize("message, typed", MESSAGES, ids=[f"{m['type']}-{i}" for i, (m, _) in enumerate(MESSAGES)])
def test_each_v1_message_is_a_typed_event_and_back(message: dict, typed: object) -> None:
    event = parse_event(message)
    assert event == typed
    assert event.to_message() == message  # nothing lost or added


def test_unknown_and_unreadable_messages_are_other_events_never_errors() -> None:
    newer = {"type": "speaker_change", "seq": 3, "speaker": 2}
    assert parse_event(newer) == OtherEvent("speaker_change", 3, newer)
    assert parse_event(newer).to_message() == newer
    broken = {"type": "final", "seq": 4, "text": "no utterance id"}
    assert isinstance(parse_event(broken), OtherEvent)
    assert isinstance(parse_event({"type": "partial", "seq": 1, "utterance_id": "0", "text": "", "stable_text": "",
                                   "start_s": 0, "end_s": 1}), OtherEvent)
    assert parse_event({"seq": 1}).type == "None"


def test_fields_a_newer_server_adds_are_kept() -> None:
    message = {"type": "final", "seq": 4, "utterance_id": 0, "text": "a", "language": "en", "start_s": 0.0,
               "end_s": 1.0, "reason": "endpoint"}
    event = parse_event(message)
    assert isinstance(event, Final) and event.extra == {"reason": "endpoint"}
    assert event.to_message() == message


def test_codec_speaks_the_shared_v1_encoding() -> None:
    start = start_message(8000, encoding="mulaw", words=True, endpointing=False, context="Dashwood")
    assert start == {"type": "start", "sample_rate": 8000, "encoding": "mulaw", "partials": True, "words": True,
                     "context": "Dashwood", "endpointing": False}
    assert "words" not in start_message(16_000) and "endpointing" not in start_message(16_000)
    assert json.loads(Codec().control(start)) == start
    assert msgpack.unpackb(Codec(use_msgpack=True).control(start)) == start
    assert Codec(use_msgpack=True).event(msgpack.packb({"type": "end", "seq": 1})) == {"type": "end", "seq": 1}
    with pytest.raises(ValueError):
        Codec().event("not json")


def test_retryable_codes_are_the_protocol_facts() -> None:
    facts = protocol_facts()["error_codes"]
    assert {code for code in ERROR_CODES if is_retryable(code)} == {c for c, f in facts.items() if f["retryable"]}
    assert is_retryable("shutting_down") and not is_retryable("invalid_option")


def test_keyword_options_split_into_stream_connection_and_extra_start_fields() -> None:
    stream, connection = split_options({"language": "en", "api_key": "k", "endpoint_silence_ms": 300,
                                        "start_fields": {"step_s": 0.5}})
    assert stream.language == "en" and connection.api_key == "k"
    assert stream.start_message()["endpoint_silence_ms"] == 300 and stream.start_message()["step_s"] == 0.5


# --- continuity across reconnects --------------------------------------------------------------------


def test_first_connection_passes_events_through() -> None:
    mapper = StreamMapper(16_000)
    mapper.connected(0)
    stream = [typed for i, (_, typed) in enumerate(MESSAGES) if i in (0, 1, 2, 3, 4)]
    assert [mapper.map(e) for e in stream] == stream  # the server's own numbering and times


def test_later_connections_continue_seq_ids_and_times() -> None:
    mapper = StreamMapper(100)
    mapper.connected(0)
    for event in (Ready(0, "a", "m", 1, {}), SpeechStart(1, 0, 0.5), Final(2, 0, "one", "en", 0.5, 1.0),
                  SpeechStart(3, 1, 2.0), Partial(4, 1, "tw", "", 2.0, 2.5)):  # utterance 1 is cut
        mapper.map(event)
    assert mapper.next_uid == 1
    mapper.connected(150)  # replay from 1.5 s: the audio after the last final
    got = [mapper.map(e) for e in (
        SpeechStart(1, 0, 0.5), Final(2, 0, "two", "en", 0.5, 1.0, (Word("two", 0.5, 0.9, 1.0),), "dtw"),
        Cleared(3, 1, 2.0), End(4, 2, 3.0))]
    assert got == [SpeechStart(5, 1, 2.0), Final(6, 1, "two", "en", 2.0, 2.5, (Word("two", 2.0, 2.4, 1.0),), "dtw"),
                   Cleared(7, 2, 3.5), End(8, 3, 4.5)]
    assert mapper.next_uid == 3
    assert mapper.covered_position(Final(2, 0, "", None, 0.5, 1.0)) == 250  # connection time → stream samples


def _outbox(**kw) -> Outbox:
    return Outbox("pcm_s16le", max_unsent=kw.get("max_unsent", 1000), max_replay=kw.get("max_replay", 1000))


def _samples(frame: bytes) -> list[int]:
    return np.frombuffer(frame, "<i2").tolist()


def drain(outbox: Outbox, max_samples: int = 1000) -> list:
    out = []
    while (item := outbox.next_frame(max_samples)) is not None:
        out.append(_samples(item) if isinstance(item, bytes) else item["type"])
    return out


def test_outbox_keeps_controls_in_their_place_in_the_audio() -> None:
    box = _outbox()
    box.push(np.arange(0, 4, dtype="<i2").tobytes())
    box.control({"type": "finalize"})
    box.push(np.arange(4, 6, dtype="<i2").tobytes()[:3])  # one and a half samples
    assert drain(box) == [[0, 1, 2, 3], "finalize", [4]]
    box.push(np.arange(4, 6, dtype="<i2").tobytes()[3:])  # the rest of sample 5
    box.control({"type": "clear"})
    assert drain(box, max_samples=1) == [[5], "clear"]


def test_outbox_replays_what_no_final_covered_and_its_controls() -> None:
    box = _outbox()
    box.push(np.arange(10, dtype="<i2").tobytes())
    box.control({"type": "finalize"})   # at sample 10
    box.push(np.arange(10, 20, dtype="<i2").tobytes())
    box.control({"type": "clear"})      # at sample 20
    drain(box)
    box.ack(10)  # the finalize's final ended at sample 10: it is done
    assert box.rewind() == 10
    assert drain(box) == [list(range(10, 20)), "clear"]  # the clear goes again, the finalize does not
    box.ack(20)
    assert box.rewind() == 20 and drain(box) == [] and box.unacknowledged == 0


def test_outbox_drops_the_oldest_unsent_audio_past_its_bound() -> None:
    box = _outbox(max_unsent=5)
    assert box.push(np.arange(8, dtype="<i2").tobytes()) == 3
    assert drain(box) == [[3, 4, 5, 6, 7]]


def test_the_client_library_imports_no_model_code() -> None:
    code = ("import sys, client, client.mic, client.file, client.streaming_client, benchmarks.loadgen; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'ctranslate2')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_send_after_the_stream_is_over_is_refused() -> None:
    from tests.test_clients import free_port

    with pytest.raises(OSError):
        async with StreamingClient(f"ws://127.0.0.1:{free_port()}/v1/stream"):
            pass  # retry_first_connect is off: entering fails fast
    client = StreamingClient(f"ws://127.0.0.1:{free_port()}/v1/stream")
    await client.close()
    assert client.outcome == "closed"
    with pytest.raises(StreamClosed):
        await client.send(b"\x00\x00")


# --- over real servers (real model, real speech) ------------------------------------------------------


@pytest.fixture(scope="module")
def clips():
    from streaming.evaluation import dev_clips

    return {c.id: c for c in dev_clips()}


@pytest.fixture(scope="module")
def server_url():
    from tests.helpers import running_server

    with running_server() as url:
        yield url


def speech(clips, *ids: str, gap_s: float = 1.5) -> np.ndarray:
    gap = np.zeros(round(gap_s * 16_000), np.float32)
    return np.concatenate([part for i in ids for part in (clips[i].load(16_000), gap)])


async def paced(audio: np.ndarray, speed: float, chunk: int = 1600):
    """Chunks of ``audio`` at ``speed`` times real time."""
    t0 = time.monotonic()
    for i in range(0, len(audio), chunk):
        yield audio[i:i + chunk]
        await asyncio.sleep(max(0.0, t0 + (i + chunk) / 16_000 / speed - time.monotonic()))


def words_of(finals: list[Final]) -> list[str]:
    from streaming.evaluation import normalize_english

    return normalize_english(" ".join(f.text for f in finals)).split()


@pytest.mark.slow
async def test_typed_events_in_protocol_order_with_words(server_url: str, clips) -> None:
    audio = speech(clips, "lib_left", "goforward")
    async with asyncio.timeout(120):
        result = await transcribe(paced(audio, speed=1.0), url=server_url, words=True)
    events = result.events
    assert isinstance(events[0], Ready) and isinstance(events[-1], End)
    assert [e.seq for e in events] == list(range(len(events)))
    finals = result.finals
    assert [f.utterance_id for f in finals] == list(range(len(finals))) and len(finals) >= 2
    for final in finals:
        mine = [e for e in events if getattr(e, "utterance_id", None) == final.utterance_id]
        kinds = [type(e) for e in mine]
        assert kinds[0] is SpeechStart and kinds[-1] is Final and SpeechEnd in kinds
        assert kinds.index(SpeechEnd) > max((i for i, k in enumerate(kinds) if k is Partial), default=0)
        assert final.words and final.word_timing
        assert all(final.start_s - 0.05 <= w.start_s <= w.end_s <= final.end_s + 0.05 for w in final.words)
        assert " ".join(w.word for w in final.words) == final.text.strip()
    assert any(isinstance(e, Partial) for e in events)
    assert isinstance(events[-1], End) and events[-1].utterances == len(finals)


async def raw_protocol_finals(url: str, audio: np.ndarray) -> list[str]:
    """The same stream, written against the wire protocol by hand (no client library)."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16_000, "encoding": "pcm_s16le"}))
        for i in range(0, len(audio), 1600):
            await ws.send(float_to_pcm16(audio[i:i + 1600]))
        await ws.send(json.dumps({"type": "stop"}))
        events = [json.loads(frame) async for frame in ws]
    assert events[-1]["type"] == "end"
    return [e["text"] for e in events if e["type"] == "final"]


@pytest.mark.slow
async def test_transcribe_gives_the_text_of_the_raw_protocol(server_url: str, clips) -> None:
    audio = speech(clips, "jfk")
    async with asyncio.timeout(120):
        raw = await raw_protocol_finals(server_url, audio)
        result = await transcribe(audio, url=server_url)
        as_msgpack = await transcribe(audio, url=server_url, use_msgpack=True)
    assert [f.text for f in result.finals] == raw == [f.text for f in as_msgpack.finals]
    assert result.text == " ".join(t.strip() for t in raw)
    assert "ask not what your country" in result.text


@pytest.mark.slow
async def test_manual_mode_finalize_and_clear(server_url: str, clips) -> None:
    """``endpointing=False``: only finalize ends an utterance; clear drops the open one (a typed Cleared)."""
    audio = clips["lib_left"].load(16_000)
    async with asyncio.timeout(120):
        async with StreamingClient(server_url, endpointing=False) as client:
            await client.send(np.zeros(8000, np.float32))
            await client.send(audio[:32_000])
            await client.clear()  # mid-sentence: dropped, no final
            await client.send(np.zeros(8000, np.float32))
            await client.send(audio)
            await client.send(np.zeros(24_000, np.float32))  # a pause that manual mode does not end on
            await client.finalize()
            await client.send(np.zeros(8000, np.float32))
            await client.stop()
            events = [e async for e in client.events()]
            assert [e async for e in client.events()] == []  # over: a second reading ends at once
    cleared = [e for e in events if isinstance(e, Cleared)]
    finals = [e for e in events if isinstance(e, Final)]
    assert len(cleared) == 1 and cleared[0].utterance_id == 0 and cleared[0].at_s == pytest.approx(2.5, abs=0.01)
    assert [f.utterance_id for f in finals] == [1] and "curtain on the left" in finals[0].text
    assert finals[0].end_s == pytest.approx(3.0 + len(audio) / 16_000 + 1.5, abs=0.05)  # ended by finalize
    assert isinstance(events[-1], End) and client.outcome == "ended"


@pytest.mark.slow
async def test_a_fatal_error_is_a_typed_event_and_ends_the_stream(server_url: str) -> None:
    async with StreamingClient(server_url, endpoint_silence_ms=5) as client:  # out of range: 100-5000
        events = [e async for e in client.events()]
    assert [type(e) for e in events] == [Error]
    assert events[0].code == "invalid_option" and events[0].fatal and "endpoint_silence_ms" in events[0].message
    assert client.outcome == "error" and client.error == events[0] and client.close_code == 1008
    with pytest.raises(TranscriptionError) as refused:
        await transcribe(np.zeros(1600, np.float32), url=server_url, encoding="pcm_f32le", sample_rate=4000)
    assert refused.value.error is not None and refused.value.error.code == "unsupported_sample_rate"


@pytest.mark.slow
async def test_api_key_is_sent_as_a_bearer_header(clips) -> None:
    from tests.helpers import running_server
    from websockets.exceptions import InvalidStatus

    with running_server(api_keys=["library-test-key-0000"]) as url:
        with pytest.raises(InvalidStatus):
            await transcribe(np.zeros(1600, np.float32), url=url)
        result = await transcribe(speech(clips, "goforward"), url=url, api_key="library-test-key-0000")
    assert "forward" in result.text.lower()


@pytest.mark.slow
async def test_reconnect_replays_the_audio_a_crashed_server_never_finalized(clips) -> None:
    """Kill the server mid-utterance, start a new one on the same port: every word comes once."""
    from tests.test_clients import ARTIFACTS, ServerProcess, free_port

    ARTIFACTS.mkdir(exist_ok=True)
    audio = speech(clips, "lib_left", "librivox_0870", "librivox_0890")
    server = ServerProcess(free_port())
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    await asyncio.to_thread(server.start)
    events, killed_at = [], None
    try:
        async with asyncio.timeout(240):
            reference = await transcribe(audio, url=url)  # the same audio, uninterrupted
            async with StreamingClient(url, stop_timeout_s=60, ping_interval_s=5, ping_timeout_s=5) as client:
                async def pump() -> None:
                    async for chunk in paced(audio, speed=1.5):
                        await client.send(chunk)
                    await client.stop()

                pumping = asyncio.create_task(pump())
                async for event in client.events():
                    events.append(event)
                    finals = [e for e in events if isinstance(e, Final)]
                    if killed_at is None and isinstance(event, SpeechStart) and finals:
                        killed_at = event.start_s  # mid-stream, inside an utterance with no final yet
                        server.kill()
                        await asyncio.to_thread(server.start)
                await pumping
    finally:
        server.kill()
    assert killed_at is not None and client.outcome == "ended", events[-3:]
    assert any(isinstance(e, Disconnected) for e in events) and any(isinstance(e, Reconnected) for e in events)
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.utterance_id for f in finals] == list(range(len(finals)))  # one id line, no gaps or repeats
    assert all(a.end_s <= b.start_s for a, b in zip(finals, finals[1:]))  # one time line
    assert any(f.start_s >= killed_at - 0.5 for f in finals)  # the cut utterance was decoded again
    assert Counter(words_of(finals)) == Counter(words_of(reference.finals)), (finals, reference.finals)


@pytest.mark.slow
async def test_a_draining_server_is_retried_and_nothing_is_lost(clips) -> None:
    """A graceful restart: ``shutting_down`` is retryable; the finals so far plus the new server's cover it all."""
    from streaming.evaluation import normalize_english, wer
    from streaming.server import BackgroundServer
    from tests.helpers import embedded_backend, make_config
    from tests.test_clients import free_port

    port = free_port()
    audio = speech(clips, "lib_left", "goforward", "librivox_0890")
    events, restarted = [], False
    servers = [BackgroundServer(embedded_backend(), make_config(port=port))]
    try:
        async with asyncio.timeout(180):
            async with StreamingClient(servers[0].url, stop_timeout_s=60) as client:
                async def pump() -> None:
                    async for chunk in paced(audio, speed=2.0):
                        await client.send(chunk)
                    await client.stop()

                pumping = asyncio.create_task(pump())
                async for event in client.events():
                    events.append(event)
                    if not restarted and isinstance(event, Final):
                        restarted = True
                        await asyncio.to_thread(servers.pop().close)  # drains: shutting_down
                        servers.append(await asyncio.to_thread(BackgroundServer, embedded_backend(),
                                                               make_config(port=port)))
                await pumping
    finally:
        for server in servers:
            server.close()
    lost = [e for e in events if isinstance(e, Disconnected)]
    assert lost and lost[0].code == "shutting_down" and lost[0].retry_in_s is not None
    assert client.outcome == "ended" and any(isinstance(e, Reconnected) for e in events)
    reference = " ".join(clips[i].text for i in ("lib_left", "goforward", "librivox_0890"))
    hypothesis = " ".join(e.text for e in events if isinstance(e, Final))
    assert wer([normalize_english(reference)], [normalize_english(hypothesis)]) <= 0.15, hypothesis


async def test_an_overloaded_server_is_retried_no_sooner_than_it_says() -> None:
    """``overloaded`` carries ``retry_after_s``: the client's next try waits at least that (capped), not its backoff."""
    from streaming.server import BackgroundServer
    from tests.fakes import CountingBackend
    from tests.helpers import make_config

    with BackgroundServer(CountingBackend(), make_config(capacity_streams=1)) as server:
        async with websockets.connect(server.url) as holder:  # takes the only stream of capacity
            await holder.send(json.dumps({"type": "start", "sample_rate": 16000}))
            assert json.loads(await holder.recv())["type"] == "ready"
            async with asyncio.timeout(30):
                async with StreamingClient(server.url) as client:
                    async for event in client.events():
                        if isinstance(event, Disconnected):
                            break
                    await client.close()
    assert event.code == "overloaded" and event.retry_in_s is not None
    # With no session ended yet the server's hint is its longest (30 s), far past the client's own backoff.
    assert event.retry_in_s > client.options.backoff.max_s
