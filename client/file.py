"""Transcribe an audio file through the streaming server, as if it were live.

    python -m client.file CLIP.wav [--url ws://127.0.0.1:8765/v1/stream] [--speed 1.0] [--json]

The file is sent at its native sample rate (declared in ``start``) as
``pcm_s16le``, at real-time pace by default. The partial updates in place on
one terminal line, finals are printed as permanent lines (the transcript);
``--json`` prints every server event as one JSON line. It uses the same
streaming code as ``client.mic`` (:class:`client.StreamingClient`, so it also survives a
server restart).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from client.common import DEFAULT_URL, ClientError
from client.mic import MicClient, MicOptions, Output
from client.sources import FileSource
from client.subtitles import SubtitleWriter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client.file",
        description="Stream an audio file to the streaming ASR server and print its transcript.",
        epilog="Any format libsndfile reads (wav, flac, ogg…), 8-48 kHz, mixed to mono. "
               "Exit status: 0 when the server sent end, 1 on timeout, 2 on a server or usage error.")
    parser.add_argument("file", help="audio file to transcribe")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server stream URL (default {DEFAULT_URL})")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="pace: 1 = real time (default), 2 = twice as fast, 0 = as fast as possible")
    parser.add_argument("--json", action="store_true", help="print every server event as a JSON line")
    parser.add_argument("--language", help="language code, e.g. en (default: the server's)")
    parser.add_argument("--msgpack", action="store_true", help="speak msgpack instead of JSON")
    parser.add_argument("--diarize", action="store_true",
                        help="speaker labels: each final is shown as [speaker N] text (servers with supports_diarize)")
    parser.add_argument("--api-key", help="API key, sent as Authorization: Bearer (servers started with keys)")
    parser.add_argument("--srt", metavar="FILE", help="also write SRT subtitles")
    parser.add_argument("--vtt", metavar="FILE", help="also write WebVTT subtitles")
    parser.add_argument("--timeout-s", type=float, default=300.0,
                        help="after the last audio: how long to wait for the server's end (default %(default)s)")
    parser.add_argument("--insecure", action="store_true", help="accept any TLS certificate (wss:// test servers)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.speed < 0:
        print("error: --speed must be >= 0", file=sys.stderr)
        return 2
    try:
        source = FileSource(args.file, speed=args.speed)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # libsndfile's errors name the problem well enough
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    options = MicOptions(url=args.url, language=args.language, diarize=args.diarize, use_msgpack=args.msgpack,
                         api_key=args.api_key,
                         stop_timeout_s=args.timeout_s, insecure=args.insecure, retry_first_connect=False)
    writers = [SubtitleWriter(path, fmt) for path, fmt in ((args.srt, "srt"), (args.vtt, "vtt")) if path]
    output = Output(json_mode=args.json, subtitles=writers, name="file")
    client = MicClient(source, options, output)
    try:
        return asyncio.run(client.run())
    except KeyboardInterrupt:
        return 130
    finally:
        output.close()


if __name__ == "__main__":
    sys.exit(main())
