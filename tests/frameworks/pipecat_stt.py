"""Pipecat's own STT services, unmodified, against our server: ``DeepgramSTTService`` and
``OpenAIRealtimeSTTService`` in a real pipeline (``PipelineWorker`` + ``WorkerRunner``, no transport),
pointed at the server by ``base_url``.

The frames are what a transport and a VAD processor would push: ``InputAudioRawFrame`` microphone
frames at real-time pace, a ``VADUserStartedSpeakingFrame`` before each turn's audio and a
``VADUserStoppedSpeakingFrame`` after it (the services act on these: Deepgram sends ``Finalize``,
OpenAI ``input_audio_buffer.commit``, its default with ``turn_detection`` null). The pipeline runs at
the parts' rate, so neither service resamples and the server gets exactly the test's bytes.

Usage: ``.venv/frameworks/bin/python tests/frameworks/pipecat_stt.py {deepgram,openai} --url http://HOST:PORT
--key K --rate R --part a.pcm [--part b.pcm] --expect N --out run.json`` (see tests/test_frameworks.py).
"""

from __future__ import annotations

import asyncio
import sys
import time

from driver import Run, answer, paced, parse_args, read_parts, wait_for_finals
from loguru import logger
from pipecat.frames.frames import (EndFrame, ErrorFrame, Frame, InputAudioRawFrame, InterimTranscriptionFrame,
                                   TranscriptionFrame, VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

READY_TIMEOUT_S = 15.0


class Collect(FrameProcessor):
    """Writes down what reaches it (transcriptions downstream, errors upstream) and passes it on."""

    def __init__(self, run: Run, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run = run

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        item = frame.result.get("item_id") if isinstance(getattr(frame, "result", None), dict) else None
        if isinstance(frame, TranscriptionFrame):
            self.run.events.append(type(frame).__name__)
            self.run.finals.append(frame.text)
            if item is not None:
                self.run.completed[item] = frame.text
        elif isinstance(frame, InterimTranscriptionFrame):
            self.run.events.append(type(frame).__name__)
            self.run.interims.append(frame.text)
            if item is not None:
                self.run.shown[item] = self.run.shown.get(item, "") + frame.text
        elif isinstance(frame, ErrorFrame):
            self.run.errors.append(f"ErrorFrame: {frame.error}")
        await self.push_frame(frame, direction)


def service(kind: str, args):
    if kind == "deepgram":
        from pipecat.services.deepgram.stt import DeepgramSTTService

        # No path: the SDK appends /v1/listen.
        return DeepgramSTTService(api_key=args.key, base_url=args.url.replace("http", "ws", 1))
    from pipecat.services.openai.stt import OpenAIRealtimeSTTService

    return OpenAIRealtimeSTTService(api_key=args.key, base_url=args.url.replace("http", "ws", 1) + "/v1/realtime")


async def ready(stt, kind: str) -> None:
    """The OpenAI service sends its session.update only on session.created; a transport's first audio
    comes long after that, so the driver waits for the service's own flag (set on session.updated)."""
    if kind != "openai":
        return
    async with asyncio.timeout(READY_TIMEOUT_S):
        while not stt._session_ready:
            await asyncio.sleep(0.02)


async def drive(kind: str, args, run: Run) -> None:
    stt = service(kind, args)
    pipeline = Pipeline([Collect(run), stt, Collect(run)])
    worker = PipelineWorker(pipeline, cancel_on_idle_timeout=False, enable_rtvi=False,
                            params=PipelineParams(audio_in_sample_rate=args.rate))
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), READY_TIMEOUT_S)
    await ready(stt, kind)
    for part in read_parts(args.part):
        await worker.queue_frame(VADUserStartedSpeakingFrame())
        async for chunk in paced(part, args.rate):
            await worker.queue_frame(InputAudioRawFrame(audio=chunk, sample_rate=args.rate, num_channels=1))
        await worker.queue_frame(VADUserStoppedSpeakingFrame())
    # EndFrame closes the stream at once (Deepgram: CloseStream and no more reading): finals first.
    await wait_for_finals(run, args.expect, args.timeout)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, args.timeout)


def main() -> None:
    args = parse_args(("deepgram", "openai"))
    run = Run()
    logger.remove()
    logger.add(lambda m: run.warnings.append(m.record["name"] + ": " + m.record["message"]), level="WARNING")
    logger.add(sys.stderr, level="WARNING")
    started = time.monotonic()
    try:
        asyncio.run(drive(args.kind, args, run))
    except Exception as e:  # noqa: BLE001 - reported, the test fails on it
        run.errors.append(repr(e))
    answer(run, args.out, started)


if __name__ == "__main__":
    main()
