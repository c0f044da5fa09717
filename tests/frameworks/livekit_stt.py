"""LiveKit Agents' own STT classes, unmodified, against our server: ``deepgram.STT`` and
``openai.STT(use_realtime=True)`` driven through their ``stream()`` API as an agent session drives them
(no room: frames pushed by hand at real-time pace), pointed at the server by ``base_url``.

Usage: ``.venv/frameworks/bin/python tests/frameworks/livekit_stt.py {deepgram,openai} --url http://HOST:PORT
--key K --rate R --part a.pcm [--part b.pcm] --expect N --out run.json`` (see tests/test_frameworks.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from driver import KeepWarnings, Run, answer, paced, parse_args, read_parts, wait_for_finals
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.agents.utils import http_context

NO_RETRY = APIConnectOptions(max_retry=0)
"""A failure must show, not be hidden by a reconnect that replays nothing."""


def frame(chunk: bytes, rate: int) -> rtc.AudioFrame:
    return rtc.AudioFrame(data=chunk, sample_rate=rate, num_channels=1, samples_per_channel=len(chunk) // 2)


async def collect(stream: stt.SpeechStream, run: Run) -> None:
    """Every speech event until the stream ends: finals (with words), interims, the kinds in order."""
    async for event in stream:
        run.events.append(event.type.value)
        if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
            alt = event.alternatives[0]
            run.finals.append(alt.text)
            run.words.append([[str(w), w.start_time, w.end_time] for w in alt.words or []])
        elif event.type == stt.SpeechEventType.INTERIM_TRANSCRIPT:
            run.interims.append(event.alternatives[0].text)


async def push(stream: stt.SpeechStream, parts: list[bytes], rate: int) -> None:
    for part in parts:
        async for chunk in paced(part, rate):
            stream.push_frame(frame(chunk, rate))
    stream.end_input()  # flush: LiveKit's deepgram sends Finalize, then CloseStream


async def deepgram(args, run: Run) -> None:
    """Ends by itself: after CloseStream the server sends the last finals and closes."""
    from livekit.plugins import deepgram as lk_deepgram

    async with aiohttp.ClientSession() as http:
        engine = lk_deepgram.STT(base_url=f"{args.url}/v1/listen", api_key=args.key, model="nova-3",
                                 language="en-US", sample_rate=args.rate, http_session=http)
        engine.on("error", lambda e: run.errors.append(repr(e.error)))
        stream = engine.stream(conn_options=NO_RETRY)
        reader = asyncio.create_task(collect(stream, run))
        await push(stream, read_parts(args.part), args.rate)
        try:
            await asyncio.wait_for(reader, args.timeout)
        except TimeoutError:
            run.errors.append("the stream did not end: the server never closed after CloseStream")
        await stream.aclose()


async def openai(args, run: Run) -> None:
    """Never ends by itself (LiveKit never commits; the server's VAD ends turns): closed once the
    expected finals came and a quiet second passed, as an agent session closes it."""
    from livekit.plugins import openai as lk_openai

    async with http_context.open():
        engine = lk_openai.STT(base_url=f"{args.url}/v1", api_key=args.key, use_realtime=True,
                               model="gpt-4o-transcribe", language="en")
        engine.on("error", lambda e: run.errors.append(repr(e.error)))
        stream = engine.stream(conn_options=NO_RETRY)
        reader = asyncio.create_task(collect(stream, run))
        await push(stream, read_parts(args.part), args.rate)
        await wait_for_finals(run, args.expect, args.timeout)
        if reader.done() and reader.exception():
            run.errors.append(repr(reader.exception()))
        await stream.aclose()
        await engine.aclose()


def main() -> None:
    args = parse_args(("deepgram", "openai"))
    run = Run()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().addHandler(KeepWarnings(run))
    started = time.monotonic()
    try:
        asyncio.run({"deepgram": deepgram, "openai": openai}[args.kind](args, run))
    except Exception as e:  # noqa: BLE001 - reported, the test fails on it
        run.errors.append(repr(e))
    answer(run, args.out, started)


if __name__ == "__main__":
    main()
