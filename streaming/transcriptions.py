"""OpenAI's file transcription endpoint, sans I/O: the multipart form in, the response body out.

``POST /v1/audio/transcriptions`` (OpenAI's ``audio.transcriptions.create``) sends
``multipart/form-data``: :func:`parse_multipart` splits it into parts within
limits, :func:`parse_form` validates the fields into a :class:`TranscriptionRequest`,
and :func:`format_response` turns a :class:`Transcript` (one :class:`Segment` per
utterance the endpointer cut) into ``json``, ``text``, ``srt``, ``vtt`` or
``verbose_json``. Every refusal is a :class:`TranscriptionError`, answered in
OpenAI's error shape by :func:`error_reply`. The I/O (reading the body, decoding
audio, the engine) is :mod:`streaming.file_jobs`.

``verbose_json`` segments carry OpenAI's keys; the ones this server does not
compute are plain: ``tokens`` is empty, ``temperature`` 0 (greedy decoding),
``no_speech_prob`` 0 (a segment exists only where the VAD confirmed speech) and
``avg_logprob`` the mean log probability of the segment's words when word timings
were asked, else 0.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from functools import cache
from urllib.parse import unquote

from client.subtitles import CueTimeline, format_subtitles

from .config import MAX_CONTEXT_CHARS
from .http import Reply
from .results import Word, join_text

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
MAX_PARTS = 32
"""Most parts in one form (the fields OpenAI defines, a few times over)."""
MAX_PART_HEADER_BYTES = 8192
"""Longest header block of one part."""
MAX_FIELD_BYTES = 4 * MAX_CONTEXT_CHARS + 64
"""Largest text field (the prompt: :data:`~streaming.config.MAX_CONTEXT_CHARS` characters of UTF-8)."""
_FIELDS = ("file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities",
           "stream", "chunking_strategy")
_LISTS = ("timestamp_granularities",)
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM_RE = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


class TranscriptionError(Exception):
    """A request this endpoint refuses: ``status`` with OpenAI's ``message``, ``param`` and ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_reply(error: TranscriptionError) -> Reply:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "server_error" if error.status >= 500 and error.status != 501 else "invalid_request_error"
    body = {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}
    return Reply(error.status, json.dumps(body).encode(), "application/json")


def _invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> TranscriptionError:
    return TranscriptionError(400, message, param, code)


# ---- multipart/form-data (RFC 7578) -------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """One part of a form: a field ``name``, its bytes, and the file's name and type for a file."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=1; b="x y"`` → (lowercase value, params with lowercase names, quotes undone)."""
    head, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for name, raw in _PARAM_RE.findall(value[len(head):]):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        name = name.lower()
        if name.endswith("*"):  # RFC 8187: charset'language'percent-encoded, e.g. filename*=UTF-8''a%20b
            charset, _, rest = raw.partition("'")
            raw = unquote(rest.partition("'")[2], encoding=charset or "utf-8", errors="replace")
            name = name[:-1]
        params[name] = raw
    return head.strip().lower(), params


def form_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; refuses any other type."""
    kind, params = header_params(content_type or "")
    if kind != "multipart/form-data":
        raise _invalid(f"Content-Type must be multipart/form-data, not {kind or 'missing'!r}", code=None)
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or not boundary.isascii() or any(c in boundary for c in "\r\n"):
        raise _invalid("multipart/form-data needs a boundary of 1-70 characters", code=None)
    return boundary.encode("ascii")


def parse_multipart(body: bytes, boundary: bytes) -> list[Part]:
    """The parts of a ``multipart/form-data`` body, in order; a malformed body is a 400."""
    delimiter = b"--" + boundary
    pos = body.find(delimiter)
    if pos < 0 or (pos > 0 and body[pos - 2:pos] != b"\r\n"):
        raise _invalid("the form does not contain its boundary", code=None)
    parts: list[Part] = []
    pos += len(delimiter)
    while not body.startswith(b"--", pos):
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise _invalid("malformed multipart boundary line", code=None)
        end = body.find(b"\r\n" + delimiter, line_end + 2)
        if end < 0:
            raise _invalid("the form ends before its closing boundary", code=None)
        if len(parts) == MAX_PARTS:
            raise _invalid(f"the form has more than {MAX_PARTS} parts", code=None)
        parts.append(_part(body[line_end + 2:end] if end > line_end else b""))
        pos = end + 2 + len(delimiter)
    return parts


def _part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):
        head, data = b"", raw[2:]
    else:
        head, sep, data = raw.partition(b"\r\n\r\n")
        if not sep:
            raise _invalid("a form part has no blank line after its headers", code=None)
    if len(head) > MAX_PART_HEADER_BYTES:
        raise _invalid(f"a form part's headers are longer than {MAX_PART_HEADER_BYTES} bytes", code=None)
    try:
        text = head.decode("utf-8")  # browsers send file names as raw UTF-8
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    headers: dict[str, str] = {}
    for line in text.split("\r\n") if text else ():
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise _invalid("malformed form part header", code=None)
        headers[name.lower()] = value.strip()
    disposition, params = header_params(headers.get("content-disposition", ""))
    if disposition != "form-data" or "name" not in params:
        raise _invalid("a form part needs Content-Disposition: form-data with a name", code=None)
    return Part(params["name"], data, params.get("filename"), headers.get("content-type"))


# ---- the form's fields ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TranscriptionRequest:
    """A validated transcription form (``model`` is accepted and ignored: the server has one model)."""

    audio: bytes
    filename: str = ""
    content_type: str | None = None
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    """Accepted for compatibility; decoding is greedy."""
    granularities: tuple[str, ...] = ("segment",)
    """What ``verbose_json`` lists: ``segment`` and/or ``word``."""
    task: str = "transcribe"
    """Set by the endpoint, not the form: ``translate`` at ``POST /v1/audio/translations`` (English text)."""

    @property
    def words(self) -> bool:
        return self.response_format == "verbose_json" and "word" in self.granularities


def parse_form(parts: list[Part]) -> TranscriptionRequest:
    """Validate the fields of a transcription form (OpenAI's names; ``name[]`` for list fields)."""
    fields: dict[str, list[Part]] = {}
    for part in parts:
        name = part.name[:-2] if part.name.endswith("[]") else part.name
        if name not in _FIELDS:
            raise _invalid(f"Unrecognized request argument supplied: {part.name[:64]}", part.name[:64], None)
        if fields.get(name) and name not in _LISTS:
            raise _invalid(f"{name} is given more than once", name)
        fields.setdefault(name, []).append(part)
    if "file" not in fields:
        raise _invalid("an audio file is required: the form has no 'file' part", "file", "missing_required_parameter")
    file = fields["file"][0]
    if not file.data:
        raise _invalid("the audio file is empty", "file")
    text = {name: _text(name, got[0]) for name, got in fields.items() if name not in _LISTS and name != "file"}
    response_format = text.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise _invalid(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {response_format[:32]!r}",
                       "response_format")
    granularities = tuple(dict.fromkeys(_text("timestamp_granularities", p)
                                        for p in fields.get("timestamp_granularities", [])))
    if any(g not in GRANULARITIES for g in granularities):
        raise _invalid("timestamp_granularities[] must be word and/or segment", "timestamp_granularities")
    if granularities and response_format != "verbose_json":
        raise _invalid("timestamp_granularities[] needs response_format verbose_json", "timestamp_granularities")
    if text.get("stream", "false") != "false":
        raise _invalid("streaming transcription (stream=true) is not supported; stream audio over "
                       "/v1/realtime or /v1/stream instead", "stream")
    if text.get("chunking_strategy", "auto") != "auto":
        raise _invalid("chunking_strategy must be auto (the server's VAD cuts the audio)", "chunking_strategy")
    language, prompt = text.get("language") or None, text.get("prompt") or None
    if language is not None and not (len(language) <= 16 and language.replace("-", "").isalnum()):
        raise _invalid("language must be an ISO-639-1 code such as en", "language")
    if prompt is not None and len(prompt) > MAX_CONTEXT_CHARS:
        raise _invalid(f"prompt is longer than {MAX_CONTEXT_CHARS} characters", "prompt")
    return TranscriptionRequest(
        audio=file.data, filename=file.filename or "", content_type=file.content_type,
        model=text.get("model") or None, language=language, prompt=prompt, response_format=response_format,
        temperature=_temperature(text.get("temperature")), granularities=granularities or ("segment",))


def _text(name: str, part: Part) -> str:
    if len(part.data) > MAX_FIELD_BYTES:
        raise _invalid(f"{name} is longer than {MAX_FIELD_BYTES} bytes", name)
    try:
        return part.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _invalid(f"{name} is not UTF-8 text", name) from None


def _temperature(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:
        raise _invalid("temperature must be a number between 0 and 1", "temperature")
    return temperature


# ---- responses ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """One utterance of the file: its time span (file seconds), text and words (file time)."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True)
class Transcript:
    duration_s: float
    language: str | None
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        text = ""
        for segment in self.segments:
            text = join_text(text, segment.text)
        return text


def format_response(transcript: Transcript, request: TranscriptionRequest) -> Reply:
    """The 200 answer in the requested ``response_format``."""
    fmt = request.response_format
    if fmt == "text":
        return Reply(200, (transcript.text + "\n").encode())
    if fmt in ("srt", "vtt"):
        timeline = CueTimeline()
        cues = [c for s in transcript.segments if (c := timeline.add(s.start_s, s.end_s, s.text)) is not None]
        kind = "text/vtt; charset=utf-8" if fmt == "vtt" else "application/x-subrip; charset=utf-8"
        return Reply(200, format_subtitles(cues, fmt).encode(), kind)
    usage = {"type": "duration", "seconds": math.ceil(transcript.duration_s)}
    body: dict = {"text": transcript.text, "usage": usage}
    if fmt == "verbose_json":
        body = {"task": request.task, "language": language_name(transcript.language),
                "duration": round(transcript.duration_s, 3), "text": transcript.text}
        if "segment" in request.granularities:
            body["segments"] = [_segment(i, s) for i, s in enumerate(transcript.segments)]
        if "word" in request.granularities:
            body["words"] = [{"word": w.word, "start": _s(w.start_s), "end": _s(w.end_s)}
                             for s in transcript.segments for w in s.words or ()]
        body["usage"] = usage
    return Reply(200, json.dumps(body, ensure_ascii=False).encode(), "application/json")


def _segment(index: int, segment: Segment) -> dict:
    words = segment.words or ()
    logprob = sum(math.log(max(w.probability, 1e-12)) for w in words) / len(words) if words else 0.0
    data = segment.text.encode()
    return {"id": index, "seek": round(segment.start_s * 100), "start": _s(segment.start_s), "end": _s(segment.end_s),
            "text": " " + segment.text, "tokens": [], "temperature": 0.0, "avg_logprob": round(logprob, 4),
            "compression_ratio": round(len(data) / len(zlib.compress(data)), 4) if data else 0.0,
            "no_speech_prob": 0.0}


def _s(seconds: float) -> float:
    return round(seconds, 3)


def language_name(code: str | None) -> str:
    """OpenAI names the language in ``verbose_json`` (``english``); unknown codes stay as they are."""
    return _language_names().get((code or "").lower(), code or "")


@cache
def _language_names() -> dict[str, str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return dict(LANGUAGES)
