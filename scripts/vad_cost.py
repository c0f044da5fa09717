"""What the endpointer's frame pipeline costs on the event loop: µs per second of audio, and one 1 MiB frame.

    .venv/bin/python scripts/vad_cost.py

Feeds real speech (dev clips, repeated) through PCM decoding, resampling and
:class:`streaming.vad.Endpointer`, with webrtcvad alone (``speech_threshold=0``)
and with the Silero second opinion (the default), in 100 ms feeds (a real-time
client) and in one 1 MiB pcm_s16le frame (32.8 s, the largest frame the server takes).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.audio import PcmDecoder, Resampler, float_to_pcm16  # noqa: E402
from streaming.config import VadOptions  # noqa: E402
from streaming.evaluation import dev_clips  # noqa: E402
from streaming.neural_vad import SileroStream  # noqa: E402
from streaming.vad import Endpointer  # noqa: E402

MIB = 1 << 20


def pipeline_ms(pcm: bytes, options: VadOptions, feed_bytes: int, repeats: int = 5) -> float:
    """Median wall time (ms) to push ``pcm`` through decode → resample → endpointer in ``feed_bytes`` pieces."""
    times = []
    for _ in range(repeats):
        ep, dec, rs = Endpointer(options), PcmDecoder("pcm_s16le"), Resampler(16_000)
        t0 = time.perf_counter()
        for i in range(0, len(pcm), feed_bytes):
            ep.feed(rs.process(dec.decode(pcm[i:i + feed_bytes])))
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    speech = np.concatenate([c.load() for c in dev_clips() if c.language == "en"])
    audio = np.resize(speech, MIB // 2)  # 1 MiB of s16 = 524288 samples = 32.8 s
    pcm = float_to_pcm16(audio)[:MIB]
    seconds = audio.size / 16_000
    print(f"audio: {seconds:.1f} s of English dev speech, {len(pcm)} bytes")
    for name, threshold in (("webrtcvad alone", 0.0), ("webrtcvad + silero", 0.5)):
        options = dataclasses.replace(VadOptions(), speech_threshold=threshold)
        one = pipeline_ms(pcm, options, MIB)
        rt = pipeline_ms(pcm, options, 3200, repeats=3)
        print(f"{name:20s} one 1 MiB frame: {one:6.1f} ms   100 ms feeds: {rt / seconds * 1000:6.0f} µs per s of audio")
    for feed in (MIB // 2, 1600, 512):
        times = []
        for _ in range(3):
            stream = SileroStream()
            t0 = time.perf_counter()
            for i in range(0, audio.size, feed):
                stream.feed(audio[i:i + feed])
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"silero alone, feeds of {feed:6d} samples: {t / seconds * 1e6:6.0f} µs per s of audio"
              f" ({t / (audio.size // 512) * 1e6:.0f} µs per chunk)")


if __name__ == "__main__":
    main()
