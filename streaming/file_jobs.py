"""File transcription jobs: an uploaded file → 16 kHz audio → utterances → the shared engine → a transcript.

:class:`TranscriptionService` answers ``POST /v1/audio/transcriptions`` for the
server: it reads the form (:mod:`streaming.transcriptions`), decodes the file
with ``soundfile`` (WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF… whatever the installed
libsndfile reads: 1.2 reads MP3), downmixes it to mono, resamples it with the
sessions' :class:`~streaming.audio.Resampler`, and cuts it with the sessions'
:class:`~streaming.vad.Endpointer` and classifier, so a file gets the utterances
the same audio streamed would get. Each utterance is opened in the server's
:class:`~streaming.engine.Engine` under the job's group, so the file's finals are
batched with everyone else's work and take round-robin turns with the sessions.

Decoding, resampling and VAD run in a worker thread (:func:`asyncio.to_thread`),
one utterance at a time, so the engine decodes the first utterances while the
rest of the file is still being cut; at most ``engine.max_batch`` utterances of
one job wait in the engine at once. A client that hangs up stops its job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .audio import Resampler
from .config import Config, VadOptions
from .engine import Engine, EngineClosed
from .handshake import BodyError
from .http import Reply, header_values
from .results import SAMPLE_RATE_HZ, FinalResult, OptionError, UtteranceOptions
from .results import estimate_words
from .transcriptions import (Segment, Transcript, TranscriptionError, TranscriptionRequest, error_reply,
                             form_boundary, format_response, parse_form, parse_multipart)
from .vad import (Endpointer, StreamClassifier, UtteranceAudio, UtteranceEnded, UtteranceStarted, VadEvent,
                  default_classifier)

log = logging.getLogger("streaming.file_jobs")

DECODE_BLOCK_S = 10.0
"""Audio decoded, resampled and given to the endpointer at a time."""
FORM_OVERHEAD_BYTES = 64 * 1024
"""Room in the request body for the form's other fields and part headers, beyond the file itself."""


@dataclass(frozen=True)
class FileJobLimits:
    """Bounds of the file endpoint (OpenAI's own upload limit is 25 MB)."""

    max_upload_bytes: int = 25 * 1024 * 1024
    """Largest audio file; a larger one gets 413."""
    max_audio_s: float = 4 * 3600.0
    """Longest audio (a small compressed file can hold hours); longer gets 400."""
    max_jobs: int = 4
    """Files transcribed at once; one more gets 429."""
    body_timeout_s: float = 120.0
    """Time to receive the whole request body; slower gets 408."""


class Upload(Protocol):
    """What a job needs of its connection (:class:`streaming.handshake.HttpServerConnection`)."""

    async def read_body(self, max_bytes: int) -> bytes: ...

    @property
    def lost(self) -> asyncio.Future[None]: ...


# ---- audio (runs in a worker thread) --------------------------------------------------------------

class AudioFile:
    """An uploaded file opened with ``soundfile``; :meth:`blocks` gives it as mono 16 kHz float32."""

    def __init__(self, data: bytes, max_audio_s: float = float("inf")) -> None:
        import soundfile as sf

        self._sf = sf
        try:
            self._file = sf.SoundFile(io.BytesIO(data))
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
            raise _undecodable(exc) from None
        self.rate_hz = self._file.samplerate
        self.format = self._file.format
        self.max_audio_s = max_audio_s
        self.samples = 0
        """Frames decoded so far (at the file's rate)."""
        if self._file.frames > 0 and self._file.frames / self.rate_hz > max_audio_s:
            raise _too_long(max_audio_s)

    @property
    def duration_s(self) -> float:
        return self.samples / self.rate_hz

    def blocks(self, block_s: float = DECODE_BLOCK_S) -> Iterator[np.ndarray]:
        """The whole file, mono, resampled to 16 kHz, in blocks of about ``block_s``."""
        resampler = Resampler(self.rate_hz)
        frames = max(1, int(block_s * self.rate_hz))
        while True:
            try:
                block = self._file.read(frames, dtype="float32", always_2d=True)
            except (self._sf.SoundFileError, RuntimeError) as exc:
                raise _undecodable(exc) from None
            self.samples += len(block)
            if self.duration_s > self.max_audio_s:
                raise _too_long(self.max_audio_s)
            last = len(block) < frames
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            if not np.isfinite(mono).all():
                raise TranscriptionError(400, "the audio file holds NaN or infinite samples", "file", "invalid_value")
            out = resampler.process(np.clip(mono, -1.0, 1.0), last=last)
            if out.size:
                yield out
            if last:
                return


def _undecodable(exc: BaseException) -> TranscriptionError:
    why = getattr(exc, "error_string", None) or str(exc)  # libsndfile's own words, without the stream's repr
    return TranscriptionError(400, f"could not decode the audio file ({why.rstrip('.')}); send WAV, FLAC, "
                              "OGG (Vorbis, Opus), MP3 or AIFF", "file", "invalid_value")


def _too_long(max_audio_s: float) -> TranscriptionError:
    return TranscriptionError(400, f"the audio is longer than {max_audio_s:g} s", "file", "invalid_value")


@dataclass(frozen=True)
class Utterance:
    """One utterance the endpointer cut from the file (16 kHz samples from the file's start)."""

    index: int
    start_sample: int
    end_sample: int
    audio: np.ndarray


def cut_utterances(blocks: Iterable[np.ndarray], endpointer: Endpointer) -> Iterator[Utterance]:
    """The utterances of a stream of 16 kHz audio, each as soon as it has ended (pure, no I/O)."""
    starts: dict[int, int] = {}
    audio: dict[int, list[np.ndarray]] = {}
    def batches() -> Iterator[list[VadEvent]]:
        for block in blocks:
            yield endpointer.feed(block)
        yield endpointer.flush()  # after the last block (an utterance still open at the end of the file)

    for events in batches():
        for event in events:
            if isinstance(event, UtteranceStarted):
                starts[event.utterance_id] = event.start_sample
                audio[event.utterance_id] = [event.audio]
            elif isinstance(event, UtteranceAudio):
                audio[event.utterance_id].append(event.audio)
            elif isinstance(event, UtteranceEnded):
                uid = event.utterance_id
                yield Utterance(uid, starts.pop(uid), event.end_sample, np.concatenate(audio.pop(uid)))


# ---- the service (event loop) ---------------------------------------------------------------------

class TranscriptionService:
    """Answers file transcription requests with the server's engine, VAD options and classifier."""

    def __init__(self, engine: Engine, config: Config,
                 classifier: Callable[[VadOptions], StreamClassifier] = default_classifier,
                 metrics: Any = None, limits: FileJobLimits = FileJobLimits()) -> None:
        self.engine = engine
        self.config = config
        self.classifier = classifier
        self.metrics = metrics
        self.limits = limits
        backend = engine.backend
        # A file has no turns to take: smart turn detection (live sessions) cuts it at endpoint_silence_ms.
        turns = "silence" if config.vad.turn_detection == "smart" else config.vad.turn_detection
        self.vad = dataclasses.replace(config.vad, turn_detection=turns,
                                       max_utterance_s=min(config.vad.max_utterance_s, backend.max_utterance_s))
        self.jobs = 0
        """Jobs running now."""
        self._ids = itertools.count(1)

    async def handle(self, connection: Upload, headers: Any, principal: str | None = None,
                     task: str = "transcribe") -> Reply:
        """The answer to one authorized request (``headers``: the request's): 200 or an OpenAI error;
        ``task`` is ``translate`` for ``POST /v1/audio/translations`` (English text from any language)."""
        if self.jobs >= self.limits.max_jobs:
            return error_reply(TranscriptionError(
                429, f"the server is transcribing its maximum of {self.limits.max_jobs} files; retry later",
                code="rate_limit_exceeded"))
        self.jobs += 1
        job = f"file-{next(self._ids)}"
        started = time.monotonic()
        try:
            reply, audio_s, utterances = await self._run(job, connection, headers, task)
        except TranscriptionError as exc:
            log.info("transcription %s refused: %d %s", job, exc.status, exc.message,
                     extra={"event": "transcription", "job": job, "status": exc.status, "principal": principal})
            self._count(exc.status)
            return error_reply(exc)
        finally:
            self.jobs -= 1
        log.info("transcription %s: %.1f s of audio, %d utterance(s) in %.2f s", job, audio_s, utterances,
                 time.monotonic() - started, extra={"event": "transcription", "job": job, "status": reply.status,
                                                    "audio_s": round(audio_s, 3), "principal": principal})
        self._count(reply.status)
        return reply

    def _count(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.transcription(status)

    async def _run(self, job: str, connection: Upload, headers: Any, task: str) -> tuple[Reply, float, int]:
        content_types = header_values(headers, "Content-Type")
        boundary = form_boundary(content_types[0] if len(content_types) == 1 else None)
        body = await self._read_body(connection)
        request = dataclasses.replace(parse_form(await asyncio.to_thread(parse_multipart, body, boundary)), task=task)
        del body
        if len(request.audio) > self.limits.max_upload_bytes:
            raise _file_too_large(self.limits.max_upload_bytes)
        session = self.config.session
        # The sessions' defaults, as a stream that sets nothing gets them (previous_text stays unset: the
        # utterances are decoded at once, not in turn, and no backend uses it).
        options = UtteranceOptions(language=request.language or session.language, window_s=session.window_s,
                                   context=request.prompt or session.context, word_timestamps=request.words,
                                   task=task)
        try:
            self.engine.backend.validate_options(options)
        except OptionError as exc:
            raise TranscriptionError(400, str(exc), None, "invalid_value") from None  # the message names the option
        work = asyncio.ensure_future(self._transcribe(job, request, options))
        await asyncio.wait([work, connection.lost], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the client hung up: nobody waits for this any more
            work.cancel()
            raise TranscriptionError(400, "the client went away")
        transcript = work.result()
        if self.metrics is not None:
            self.metrics.audio_in(transcript.duration_s)
        reply = await asyncio.to_thread(format_response, transcript, request)  # hours of words: a big JSON
        return reply, transcript.duration_s, len(transcript.segments)

    async def _read_body(self, connection: Upload) -> bytes:
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                return await connection.read_body(self.limits.max_upload_bytes + FORM_OVERHEAD_BYTES)
        except TimeoutError:
            raise TranscriptionError(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s",
                                     code=None) from None
        except BodyError as exc:
            if exc.status == 413:
                raise _file_too_large(self.limits.max_upload_bytes) from None
            raise TranscriptionError(exc.status, exc.message, code=None) from None

    async def _transcribe(self, job: str, request: TranscriptionRequest, options: UtteranceOptions) -> Transcript:
        """Cut the file in a thread, one utterance at a time, and decode each in the engine."""
        def prepare() -> tuple[AudioFile, Endpointer]:  # opening the file and the VAD model take a while
            return (AudioFile(request.audio, self.limits.max_audio_s),
                    Endpointer(self.vad, classify=self.classifier(self.vad)))

        audio, endpointer = await asyncio.to_thread(prepare)
        utterances = cut_utterances(audio.blocks(), endpointer)
        room = asyncio.Semaphore(max(1, self.engine.max_batch))
        cut: list[Utterance] = []
        finals: list[asyncio.Future[FinalResult]] = []
        keys: list[tuple[str, int]] = []
        try:
            while True:
                await room.acquire()
                utterance = await asyncio.to_thread(next, utterances, None)
                if utterance is None:
                    break
                key = (job, utterance.index)
                self.engine.open(key, options, group=job)
                keys.append(key)
                self.engine.feed(key, utterance.audio)
                final = self.engine.request_final(key)
                final.add_done_callback(lambda _f: room.release())
                cut.append(utterance)
                finals.append(final)
            results = await asyncio.gather(*finals)
        except EngineClosed:
            raise TranscriptionError(503, "the server is shutting down", code=None) from None
        except (TranscriptionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - a failed inference is the server's fault, said as such
            log.error("transcription %s failed: %r", job, exc)
            raise TranscriptionError(500, f"inference failed: {exc}", code=None) from None
        finally:
            for key in keys:
                self.engine.discard(key)  # no-op for the finished ones
        return _transcript(audio.duration_s, options, cut, results)


def _transcript(duration_s: float, options: UtteranceOptions, utterances: list[Utterance],
                results: list[FinalResult]) -> Transcript:
    """Segments in file time: the utterance's span, its text, its words shifted from utterance time
    (estimated over the span, as the sessions do, when the backend gives none)."""
    segments = []
    for utt, res in zip(utterances, results, strict=True):
        text = res.text.strip()
        if not text:
            continue
        start_s, end_s = utt.start_sample / SAMPLE_RATE_HZ, utt.end_sample / SAMPLE_RATE_HZ
        words = None
        if res.words is not None:
            words = tuple(w.shifted(start_s) for w in res.words)
        elif options.word_timestamps:
            words = estimate_words(text, start_s, end_s)
        segments.append(Segment(start_s, end_s, text, words))
    detected = next((r.language for r in results if r.language and r.text.strip()), None)
    return Transcript(duration_s, detected or options.language, tuple(segments))


def _file_too_large(max_bytes: int) -> TranscriptionError:
    return TranscriptionError(413, f"the audio file is larger than {max_bytes // (1024 * 1024)} MiB "
                              f"({max_bytes} bytes)", "file", "file_too_large")
