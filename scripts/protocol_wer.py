#!/usr/bin/env python
"""The same clips through every endpoint: protocol v1, OpenAI Realtime (official SDK), Deepgram live
(official SDK) and OpenAI file transcription (official SDK); WER per endpoint and whether each
endpoint's text equals v1's.

    .venv/bin/python scripts/protocol_wer.py                      # dev.jsonl English clips
    .venv/bin/python scripts/protocol_wer.py --manifest ../shared/eval/dev-full.jsonl --out bench/protocols/wer-full.json

Every endpoint gets the same 16 kHz audio (OpenAI Realtime: resampled to 24 kHz, as its clients send
it, so it is compared with v1 given the same 24 kHz bytes) and the server's default VAD settings
(the OpenAI session asks for them: prefix_padding_ms 150, silence_duration_ms 600), with 1.5 s of
silence after each clip so server-side endpointing ends the last utterance.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client import transcribe  # noqa: E402
from streaming.audio import float_to_pcm16  # noqa: E402
from streaming.config import Config  # noqa: E402
from streaming.evaluation import dev_clips, load_manifest, wer  # noqa: E402
from streaming.models import load_backend  # noqa: E402
from streaming.server import BackgroundServer  # noqa: E402

TRAIL_S = 1.5
CHUNK_S = 0.1


def padded(audio: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(4_800, np.float32), audio, np.zeros(int(TRAIL_S * 16_000), np.float32)])


async def via_v1(url: str, audio: np.ndarray, rate: int = 16_000) -> str:
    pcm = float_to_pcm16(to_rate(audio, rate))
    return (await transcribe(pcm, url=url, language="en", sample_rate=rate)).text


def to_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    return audio if rate == 16_000 else soxr.resample(audio, 16_000, rate).astype(np.float32)


async def via_openai_realtime(http: str, audio: np.ndarray) -> str:
    from openai import AsyncOpenAI

    pcm = float_to_pcm16(to_rate(audio, 24_000))
    step = int(24_000 * CHUNK_S) * 2
    client = AsyncOpenAI(base_url=f"{http}/v1", api_key="k")
    committed, completed = [], {}
    async with client.realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24_000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 150,
                               "silence_duration_ms": 600}}}})
        for i in range(0, len(pcm), step):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + step]).decode())
        # Like LiveKit, never commit: the server's VAD ends every turn in the trailing silence.
        while True:
            settled = bool(committed) and len(completed) == len(committed)
            try:
                event = await asyncio.wait_for(conn.recv(), timeout=3.0 if settled else 120.0)
            except TimeoutError:
                break
            if event.type == "input_audio_buffer.committed":
                committed.append(event.item_id)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                completed[event.item_id] = event.transcript
            elif event.type == "error":
                raise RuntimeError(event.error.message)
    return " ".join(t for t in (completed[i].strip() for i in committed) if t)


async def via_deepgram(http: str, ws: str, audio: np.ndarray) -> str:
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    pcm = float_to_pcm16(audio)
    step = int(16_000 * CHUNK_S) * 2
    client = AsyncDeepgramClient(api_key="k", environment=DeepgramClientEnvironment(
        base=http, production=ws, agent=ws, agent_rest=http))
    finals = []
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="16000", language="en-US",
                                        interim_results="true", punctuate="true") as socket:
        async def send() -> None:
            for i in range(0, len(pcm), step):
                await socket.send_media(pcm[i:i + step])
            await socket.send_finalize()
            await socket.send_close_stream()

        sender = asyncio.create_task(send())
        async for message in socket:
            if getattr(message, "type", None) == "Results" and message.is_final:
                finals.append(message.channel.alternatives[0].transcript)
        await sender
    return " ".join(t for t in (f.strip() for f in finals) if t)


async def via_file(http: str, audio: np.ndarray) -> str:
    from openai import AsyncOpenAI

    buffer = io.BytesIO()
    sf.write(buffer, audio, 16_000, format="WAV", subtype="PCM_16")
    client = AsyncOpenAI(base_url=f"{http}/v1", api_key="k")
    result = await client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", buffer.getvalue()),
                                                      language="en")
    return result.text


ENDPOINTS = ("v1", "v1_24k", "openai_realtime", "deepgram", "file")
BASELINE = {"openai_realtime": "v1_24k"}
"""What each endpoint's text is compared with: v1 given the same bytes (OpenAI clients send 24 kHz)."""


async def run(url: str, clips) -> dict:
    http = url.replace("ws://", "http://").rsplit("/v1/", 1)[0]
    ws = http.replace("http://", "ws://")
    rows = []
    for clip in clips:
        audio = padded(clip.load())
        row = {"id": clip.id, "reference": clip.text}
        for name in ENDPOINTS:
            started = time.monotonic()
            if name == "v1":
                text = await via_v1(url, audio)
            elif name == "v1_24k":
                text = await via_v1(url, audio, 24_000)
            elif name == "openai_realtime":
                text = await via_openai_realtime(http, audio)
            elif name == "deepgram":
                text = await via_deepgram(http, ws, audio)
            else:
                text = await via_file(http, audio)
            row[name] = text
            row[f"{name}_s"] = round(time.monotonic() - started, 2)
        rows.append(row)
        same = {n: row[n] == row[BASELINE.get(n, "v1")] for n in ENDPOINTS[1:]}
        print(f"{clip.id:16s} v1: {row['v1'][:60]!r}  same text as v1: {same}", flush=True)
    summary = {name: {"wer": round(wer([r["reference"] for r in rows], [r[name] for r in rows]), 4),
                      "compared_with": BASELINE.get(name, "v1"),
                      "same_text": sum(r[name] == r[BASELINE.get(name, "v1")] for r in rows)}
               for name in ENDPOINTS}
    return {"clips": len(rows), "endpoints": summary, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="JSONL manifest (default: ../shared/eval/dev.jsonl)")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--out", default="bench/protocols/wer.json")
    args = parser.parse_args()
    clips = load_manifest(args.manifest) if args.manifest else dev_clips()
    clips = [c for c in clips if c.language == "en"]
    config = Config()
    config.server.port = 0
    config.model.name = args.model
    with BackgroundServer(load_backend(args.model), config) as server:
        result = asyncio.run(run(server.url, clips))
    result["model"] = args.model
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for name, figures in result["endpoints"].items():
        print(f"{name:16s} WER {100 * figures['wer']:.2f} %   same text as {figures['compared_with']}: "
              f"{figures['same_text']}/{result['clips']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
