"""The voice frameworks' own STT classes, unmodified, against the real server and model: LiveKit Agents
``deepgram.STT`` and ``openai.STT(use_realtime=True)``, Pipecat ``DeepgramSTTService`` and
``OpenAIRealtimeSTTService`` (versions pinned in ``scripts/setup.sh``), each pointed at the server by its
base-URL argument and fed two dev clips at real-time pace.

The frameworks live in their own interpreter (``.venv/frameworks``: Pipecat pins soxr, soundfile and
protobuf below what the server runs on), so each class runs in a driver script (``tests/frameworks/``)
that gets the server's URL and the exact PCM bytes and answers in JSON. Each driver's finals must be
the finals protocol v1 (``/v1/stream``) gives for the same bytes with the options the class asks for:
no driver resamples (each class gets audio at its own rate), so equality is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streaming.audio import float_to_pcm16
from streaming.codecs.deepgram_query import MIN_ENDPOINTING_MS
from streaming.evaluation import dev_clips
from benchmarks.loadgen import with_silence
from tests.helpers import background_server, v1_final_texts
from tests.test_openai_realtime import VAD_FIELDS, pcm24

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "frameworks" / "bin" / "python"
DRIVERS = Path(__file__).parent / "frameworks"
MODULES = ("livekit.agents", "livekit.plugins.deepgram", "livekit.plugins.openai", "pipecat", "deepgram")
KEY = "frameworks-test-key"
CLIPS = ("lib_left", "cards_001")  # two turns, a long and a short one (kept short: real-time pacing)
DRIVER_TIMEOUT_S = 90
"""How long a driver waits for the finals it expects (then it closes and the comparison fails)."""


def frameworks_missing() -> str | None:
    """Why the framework drivers cannot run here, or None."""
    if not PYTHON.exists():
        return f"{PYTHON.relative_to(ROOT)} missing (scripts/setup.sh test makes it)"
    check = "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in sys.argv[1:]) else 1)"
    if subprocess.run([str(PYTHON), "-c", check, *MODULES], capture_output=True).returncode:
        return f"the framework packages are not installed in {PYTHON.relative_to(ROOT)}"
    return None


@pytest.fixture(scope="module")
def server():
    if reason := frameworks_missing():
        pytest.skip(reason)
    with background_server(api_keys=[KEY]) as handle:
        yield handle


@pytest.fixture(scope="module")
def turns() -> list[np.ndarray]:
    """Two turns (16 kHz float32), each with the pause around it that ends a turn for every class."""
    clips = {c.id: c for c in dev_clips()}
    return [with_silence(clips[name].load(), lead_s=0.3, trail_s=1.5) for name in CLIPS]


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.server.port}"


async def v1_finals(server, parts: list[bytes], rate: int, finalize_each: bool = False, **fields) -> list[str]:
    """The non-empty final texts v1 gives for ``parts`` (50 ms chunks; see ``v1_final_texts``)."""
    return await v1_final_texts(f"ws://127.0.0.1:{server.server.port}/v1/stream", parts, sample_rate=rate,
                                finalize_each=finalize_each, api_key=KEY, **fields)


async def drive(script: str, kind: str, server, parts: list[bytes], rate: int, expect: int, tmp_path: Path) -> dict:
    """Run one framework class in its own interpreter over ``parts`` (one per turn); its JSON answer."""
    args = []
    for i, part in enumerate(parts):
        path = tmp_path / f"part{i}.pcm"
        path.write_bytes(part)
        args += ["--part", str(path)]
    out = tmp_path / "run.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = await asyncio.create_subprocess_exec(
        str(PYTHON), str(DRIVERS / script), kind, "--url", base_url(server), "--key", KEY, "--rate", str(rate),
        *args, "--expect", str(expect), "--timeout", str(DRIVER_TIMEOUT_S), "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    async with asyncio.timeout(DRIVER_TIMEOUT_S + 120):
        output, _ = await proc.communicate()
    assert proc.returncode == 0 and out.exists(), output.decode(errors="replace")[-4000:]
    run = json.loads(out.read_text())
    print(f"{script} {kind}: {run['seconds']} s, finals {run['finals']}")
    assert run["errors"] == [], (run["errors"], output.decode(errors="replace")[-4000:])
    assert run["warnings"] == [], run["warnings"]  # a message the class could not read is logged, not raised
    return run


async def test_livekit_deepgram_stt(server, turns, tmp_path):
    """Its query (endpointing=25, smart_format, no_delay, vad_events, filler_words…), KeepAlive, 50 ms
    chunks, Finalize + CloseStream at the end, then it waits for our close: the stream must end by itself."""
    pcm = float_to_pcm16(np.concatenate(turns))
    # endpointing=25 is raised to the floor: v1 with that silence
    expected = await v1_finals(server, [pcm], 16_000, endpoint_silence_ms=MIN_ENDPOINTING_MS)
    run = await drive("livekit_stt.py", "deepgram", server, [pcm], 16_000, len(expected), tmp_path)
    assert run["finals"] == expected
    kinds = run["events"]
    assert kinds[0] == "start_of_speech" and kinds.count("end_of_speech") >= len(CLIPS), kinds
    assert run["interims"], "real-time pace: interim transcripts before the finals"
    for words in run["words"]:  # LiveKit's own TimedStrings, read from our words
        assert words and all(start <= end for _, start, end in words), words
        assert [w[1] for w in words] == sorted(w[1] for w in words), words


async def test_livekit_openai_realtime_stt(server, turns, tmp_path):
    """GA session.update before session.created, server VAD (threshold 0.5, prefix 600 ms, silence
    350 ms), it never commits: our VAD ends every turn."""
    pcm = pcm24(np.concatenate(turns))
    expected = await v1_finals(server, [pcm], 24_000, **VAD_FIELDS, preroll_ms=600, endpoint_silence_ms=350)
    run = await drive("livekit_stt.py", "openai", server, [pcm], 24_000, len(expected), tmp_path)
    assert run["finals"] == expected
    assert run["events"].count("start_of_speech") == run["events"].count("end_of_speech") >= len(CLIPS)
    assert run["interims"], "real-time pace: deltas before the turns ended"


async def test_pipecat_deepgram_stt(server, turns, tmp_path):
    """Through deepgram-sdk 7 (typed Results), no endpointing or vad_events asked, Finalize on the
    VAD's stop after each turn, CloseStream only after the finals."""
    parts = [float_to_pcm16(t) for t in turns]
    expected = await v1_finals(server, parts, 16_000, finalize_each=True)
    run = await drive("pipecat_stt.py", "deepgram", server, parts, 16_000, len(expected), tmp_path)
    assert run["finals"] == expected
    assert run["interims"], "real-time pace: InterimTranscriptionFrames before the finals"


async def test_pipecat_openai_realtime_stt(server, turns, tmp_path):
    """Waits for session.created, turn_detection null, input_audio_buffer.commit on the VAD's stop:
    one TranscriptionFrame per turn."""
    parts = [pcm24(t) for t in turns]
    expected = await v1_finals(server, parts, 24_000, finalize_each=True, endpointing=False, preroll_ms=300)
    run = await drive("pipecat_stt.py", "openai", server, parts, 24_000, len(expected), tmp_path)
    assert run["finals"] == expected and len(expected) == len(CLIPS)
    assert run["interims"], "real-time pace: each delta shown as an InterimTranscriptionFrame"
    assert set(run["completed"]) == set(run["shown"]) and len(run["completed"]) == len(CLIPS)
    retracted = {item: (shown, run["completed"][item]) for item, shown in run["shown"].items()
                 if not run["completed"][item].startswith(shown)}
    if retracted:  # timing-dependent (about 2 runs in 3 here), so not a strict xfail
        pytest.xfail(f"known: the deltas shown are not a prefix of the completed transcript: {retracted} "
                     "(a Partial's stable_text is not kept by the utterance's Final)")
