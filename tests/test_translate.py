"""Live translation (``task: "translate"``): which backends take it, the Whisper prompt it makes, and
(slow) the embedded multilingual ``base`` translating real speech over v1 and ``POST /v1/audio/translations``."""

from __future__ import annotations

import io
import json

import pytest
import soundfile as sf
import websockets

from streaming.evaluation import chrf, dev_clips, load_translations
from streaming.results import OptionError, UtteranceOptions
from tests.fakes import CountingBackend
from tests.helpers import background_server, collect_until_close, embedded_backend, running_server
from benchmarks.loadgen import stream_audio, with_silence

SPANISH = "picovoice_es"


class Translating(CountingBackend):
    supports_translate = True


@pytest.mark.parametrize("backend,task,refused", [
    (CountingBackend(), "transcribe", None),
    (CountingBackend(), "translate", "cannot translate"),
    (Translating(), "translate", None),
    (Translating(), "summarize", "task must be 'transcribe' or 'translate'"),
])
def test_the_task_check_every_backend_shares(backend, task, refused):
    options = UtteranceOptions(task=task)
    if refused is None:
        backend.validate_options(options)
    else:
        with pytest.raises(OptionError, match=refused):
            backend.validate_options(options)


def test_the_references_cover_every_non_english_dev_clip():
    refs = load_translations()
    non_english = {c.id for c in dev_clips(full=True) if c.language != "en"}
    assert set(refs) == non_english and all(refs.values())


def test_chrf_scores_closeness():
    ref = ["The room behind this portal was used as a mortuary."]
    assert chrf(ref, ref) == pytest.approx(100.0)
    assert chrf(ref, ["The rear of this portal was used as a light hall."]) > chrf(ref, ["Hello there."])


@pytest.mark.slow
def test_tiny_en_refuses_and_base_prompts_the_translate_task():
    with pytest.raises(OptionError, match="cannot translate"):
        embedded_backend("tiny.en").validate_options(UtteranceOptions(task="translate"))
    base = embedded_backend("base")
    assert base.supports_translate and not embedded_backend("tiny.en").supports_translate
    for task, token in (("translate", "<|translate|>"), ("transcribe", "<|transcribe|>")):
        st = base.new_utterance(UtteranceOptions(language="es", task=task))
        prompt = base.tokenizer.convert_ids_to_tokens(base._sot_sequence(st))
        assert prompt == ["<|startoftranscript|>", "<|es|>", token, "<|notimestamps|>"]


@pytest.mark.slow
async def test_a_spanish_stream_with_task_translate_gives_english_finals():
    clip = next(c for c in dev_clips(full=True) if c.id == SPANISH)
    reference = load_translations()[SPANISH]
    audio = with_silence(clip.load(), 0.3, 1.0)
    with running_server(embedded_backend("base")) as url:
        translated = await stream_audio(url, audio, speed=0, start_fields={"task": "translate"})
        transcribed = await stream_audio(url, audio, speed=0)
    assert not translated.errors and translated.finals
    assert {f["language"] for f in translated.finals if f["text"]} == {"es"}  # still the source language
    # English words, not the Spanish ones the same audio transcribes to (measured chrF 50; offline 50).
    assert chrf([reference], [translated.text]) >= 35, translated.text
    assert chrf([reference], [transcribed.text]) < 25, transcribed.text
    assert "arenas" in transcribed.text.lower() and "arenas" not in translated.text.lower()


@pytest.mark.slow
async def test_task_translate_on_an_english_only_model_is_an_invalid_option():
    with running_server() as url:  # tiny.en
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "task": "translate"}))
            events = await collect_until_close(ws)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_option"
    assert "cannot translate" in events[-1]["message"]


@pytest.mark.slow
async def test_openai_translations_endpoint_and_info():
    from openai import AsyncOpenAI, BadRequestError

    clip = next(c for c in dev_clips(full=True) if c.id == SPANISH)
    data = io.BytesIO()
    sf.write(data, with_silence(clip.load(), 0.3, 0.5), 16_000, format="WAV")

    def upload() -> io.BytesIO:
        file = io.BytesIO(data.getvalue())
        file.name = "es.wav"
        return file

    with background_server(embedded_backend("base")) as handle:
        base = f"http://127.0.0.1:{handle.server.port}/v1"
        client = AsyncOpenAI(base_url=base, api_key="k", max_retries=0)
        result = await client.audio.translations.create(model="whisper-1", file=upload())
        verbose = await client.audio.translations.create(model="whisper-1", file=upload(),
                                                         response_format="verbose_json")
        assert handle.server.info()["supports_translate"] is True
        transcribed = await client.audio.transcriptions.create(model="whisper-1", file=upload())
    assert "arenas" in transcribed.text.lower(), transcribed  # the transcription endpoint beside it is unchanged
    assert chrf([load_translations()[SPANISH]], [result.text]) >= 35, result.text
    assert verbose.task == "translate" and verbose.language == "spanish" and verbose.text == result.text
    with background_server() as handle:  # tiny.en
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{handle.server.port}/v1", api_key="k", max_retries=0)
        with pytest.raises(BadRequestError, match="cannot translate"):
            await client.audio.translations.create(model="whisper-1", file=upload())
        assert handle.server.info()["supports_translate"] is False
