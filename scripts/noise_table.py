"""Text the real server produces for each non-speech signal × level, with and without the Silero gate.

    .venv/bin/python scripts/noise_table.py

Streams each signal of ``tests/signals.py`` (4 s, as fast as possible) to a loopback
server with the embedded tiny.en model, once with webrtcvad alone
(``speech_threshold=0``) and once with the defaults, and prints one row per case.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loadgen import stream_audio  # noqa: E402
from tests.helpers import running_server  # noqa: E402
from tests.signals import make_signal, noise_cases, the_issue_sequence  # noqa: E402


async def texts(threshold: float) -> dict[str, tuple[str, int, int]]:
    """Per case: (final text, partial events, utterances opened)."""
    out = {}
    with running_server(speech_threshold=threshold) as url:
        for name, db in noise_cases():
            r = await stream_audio(url, make_signal(name, db), speed=0)
            out[f"{name} {db:+.0f}"] = (r.text, len(r.of_type("partial")), len(r.of_type("speech_start")))
        r = await stream_audio(url, the_issue_sequence(), speed=0)
        out["issue sequence"] = (r.text, len(r.of_type("partial")), len(r.of_type("speech_start")))
    return out


async def main() -> None:
    before, after = await texts(0.0), await texts(0.5)
    print(f"{'signal dBFS':16s} | {'webrtcvad alone: final, partials, utterances':44s} | with the Silero gate")
    for key in before:
        b, a = before[key], after[key]
        print(f"{key:16s} | {json.dumps(b[0]) + f', {b[1]}, {b[2]}':44s} | {json.dumps(a[0])}, {a[1]}, {a[2]}")


if __name__ == "__main__":
    asyncio.run(main())
