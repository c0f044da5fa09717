"""The Whisper backend's speed options: short-window partials and int8 quantization; finals never change."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from streaming.evaluation import dev_clips, normalize_english, wer
from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions
from streaming.models.options import WhisperDecodingOptions
from streaming.models.whisper import LogMel, WhisperBackend, encode_window, partial_window_s


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    from tests.helpers import one_torch_thread

    with one_torch_thread():
        yield


from tests.helpers import noise as _noise  # noqa: E402 - seeded Gaussian noise at 16 kHz


@pytest.fixture(scope="module")
def random_assets():
    """A random 2-layer Whisper (d_model 64) with the real English tokenizer; large weights so text varies."""
    from streaming.models.embedded import EMBEDDED_MODELS
    from tests.helpers import random_whisper_assets

    try:
        tokenizer_json = EMBEDDED_MODELS["tiny.en"].sources().tokenizer_json
    except Exception as exc:  # noqa: BLE001 - the model package may be absent on a bare machine
        pytest.skip(f"embedded tiny.en tokenizer unavailable: {exc}")
    return random_whisper_assets(tokenizer_json)


def _backend(assets, **fields) -> WhisperBackend:
    return WhisperBackend(assets, decoding=dataclasses.replace(WhisperDecodingOptions(), **fields))


def _state(backend: WhisperBackend, audio: np.ndarray, **options):
    st = backend.new_utterance(UtteranceOptions(**options))
    st.append_audio(audio)
    return st


def _positions(st) -> int:
    """Encoder positions of the state's cached encoding (50 per second of window)."""
    return int(st.encoded[1].shape[0])


def _words(final) -> list[tuple[str, float, float, float]]:
    return [(w.word, w.start_s, w.end_s, w.probability) for w in final.words or []]


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("duration_s", "step_s", "pad_s", "expected_s"), [
    (0.0, 5.0, 1.0, 5.0),
    (4.0, 5.0, 1.0, 5.0),  # exactly one step: no second one for rounding noise
    (4.01, 5.0, 1.0, 10.0),
    (3.0, 10.0, 1.0, 10.0),
    (9.5, 10.0, 0.0, 10.0),
    (27.0, 10.0, 1.0, 30.0),  # never past Whisper's 30 s
    (29.9, 5.0, 1.0, 30.0),
    (2.0, 2.5, 0.0, 2.5),
    (2.0, 0.0, 1.0, 30.0),  # 0: the full window
])
def test_partial_window_rounds_audio_and_pad_up_to_a_step(duration_s, step_s, pad_s, expected_s):
    assert partial_window_s(duration_s, step_s, pad_s) == expected_s


@pytest.mark.parametrize("args", [(-1.0, 5.0, 1.0), (1.0, -5.0, 1.0), (1.0, 5.0, -1.0)])
def test_partial_window_refuses_negative_sizes(args):
    with pytest.raises(ValueError, match="non-negative"):
        partial_window_s(*args)


def test_log_mel_window_is_the_start_of_the_30_s_features():
    from transformers import WhisperFeatureExtractor

    log_mel = LogMel(WhisperFeatureExtractor(), torch.device("cpu"))
    audios = [_noise(0.3, seed=1), _noise(2.0, seed=2), _noise(3.9, seed=3)]
    full = log_mel(audios)
    for frames in (400, 500, 1000, 2998):
        short = log_mel(audios, frames)
        assert short.shape == (3, 80, frames)
        assert torch.equal(short, full[:, :, :frames])
    assert torch.equal(log_mel(audios, 3000), full)
    with pytest.raises(ValueError, match="at least one frame"):
        log_mel(audios, 0)


def test_encode_window_is_the_encoder_with_fewer_positions(random_assets):
    encoder = random_assets.model.get_encoder()
    feats = torch.randn(2, 80, 3000)
    with torch.inference_mode():
        assert torch.allclose(encode_window(encoder, feats), encoder(feats).last_hidden_state, atol=1e-5)
        short = encode_window(encoder, feats[:, :, :500])
        assert short.shape == (2, 250, 64)
        with pytest.raises(ValueError, match="longer than the encoder's window"):
            encode_window(encoder, torch.randn(1, 80, 3002))


# ---------------------------------------------------------------- the backend, random weights


def test_partials_encode_a_short_window_and_finals_the_full_one(random_assets):
    backend = _backend(random_assets, partial_window_s=5.0, partial_pad_s=1.0)
    st = _state(backend, _noise(2.0, seed=4))
    backend.step([st])
    assert _positions(st) == 250  # 2 s + 1 s of silence: a 5 s window
    st.append_audio(_noise(2.5, seed=5))
    backend.step([st])
    assert _positions(st) == 500  # 4.5 s + 1 s: 10 s
    final = backend.finalize([st])[0]
    fresh = _backend(random_assets, partial_window_s=0.0)
    assert final.text == fresh.finalize([_state(fresh, st.audio)])[0].text
    assert final.text


def test_short_window_finals_reuse_the_last_partials_encoding(random_assets):
    """final_window_s: a final encodes the partials' window, so right after a partial over the same audio
    (smart turn detection asks for one at the pause) it skips the encoder and gives a fresh final's text."""
    backend = _backend(random_assets, partial_window_s=5.0, partial_pad_s=1.0, final_window_s=5.0)
    runs = []
    run_encoder = backend._run_encoder
    backend._run_encoder = lambda feats: runs.append(feats.shape[-1]) or run_encoder(feats)
    st = _state(backend, _noise(2.0, seed=4))
    backend.step([st])
    final = backend.finalize([st])[0]
    assert runs == [500]  # one encoder pass of a 5 s window (500 mel frames), shared by partial and final
    fresh = backend.finalize([_state(backend, _noise(2.0, seed=4))])[0]
    assert runs == [500, 500] and final.text == fresh.text
    assert backend.final_reuses_partial
    assert not _backend(random_assets, partial_window_s=5.0, final_window_s=0.0).final_reuses_partial


def test_finals_are_identical_with_short_window_partials_on_and_off(random_assets):
    audio = np.concatenate([_noise(3.3, seed=6), _noise(1.4, seed=7, level=0.3)])
    finals, partials = {}, {}
    for window_s in (0.0, 5.0, 2.0):
        backend = _backend(random_assets, partial_window_s=window_s)
        st = backend.new_utterance(UtteranceOptions(word_timestamps=True))
        texts = []
        for start in range(0, audio.size, SAMPLE_RATE_HZ // 2):
            st.append_audio(audio[start:start + SAMPLE_RATE_HZ // 2])
            texts.append(backend.step([st])[0].text)
        final = backend.finalize([st])[0]
        finals[window_s] = (final.text, _words(final))
        partials[window_s] = texts
    assert finals[0.0][0] and finals[0.0][1]
    assert finals[5.0] == finals[0.0] and finals[2.0] == finals[0.0]
    assert partials[2.0] != partials[0.0]  # the window did change the partials of this random model


@pytest.mark.parametrize("quantize", ["none", "partials"])
def test_a_batch_shares_its_longest_rows_window(random_assets, quantize):
    """Rows decode as if alone when they share a window (int8 too: its activation scales are per row)."""
    backend = _backend(random_assets, partial_window_s=5.0, quantize=quantize)
    same_window = [_state(backend, _noise(d, seed=10 + i)) for i, d in enumerate((0.5, 1.5, 3.0))]
    single = copy.deepcopy(same_window)
    batched = backend.step(same_window)
    alone = [backend.step([st])[0] for st in single]
    assert [h.text for h in batched] == [h.text for h in alone]
    mixed = [_state(backend, _noise(1.0, seed=20)), _state(backend, _noise(6.0, seed=21))]
    backend.step(mixed)
    assert [_positions(st) for st in mixed] == [500, 500]  # 6 s + 1 s pad: both rows take 10 s


def test_an_undecided_language_is_read_over_the_full_window(random_assets):
    tok = random_assets.tokenizer
    langs = {code: tok.convert_tokens_to_ids(f"<|{code}|>") for code in ("en", "fr", "de")}
    assets = dataclasses.replace(random_assets, model=copy.deepcopy(random_assets.model), multilingual=True,
                                 lang_token_ids=langs, transcribe_id=tok.convert_tokens_to_ids("<|transcribe|>"),
                                 name="tiny-random-ml")
    backend = _backend(assets, partial_window_s=5.0)
    undecided, given = _state(backend, _noise(1.5, seed=30)), _state(backend, _noise(1.5, seed=30), language="de")
    backend.step([undecided])
    backend.step([given])
    assert undecided.language_locked and _positions(undecided) == 1500
    assert _positions(given) == 250
    backend.step([undecided])  # locked now: later partials take the short window
    assert _positions(undecided) == 250


def test_quantized_partial_encoder_leaves_finals_and_the_assets_alone(random_assets):
    plain = _backend(random_assets, partial_window_s=5.0, quantize="none")
    quantized = _backend(random_assets, partial_window_s=5.0, quantize="partials")
    linear = quantized._partial_encoder.layers[0].fc1
    assert "quantized" in type(linear).__module__
    assert type(quantized.encoder.layers[0].fc1) is torch.nn.Linear
    audio = _noise(2.5, seed=40)
    st = _state(quantized, audio)
    assert quantized.step([st])[0].stats["tokens"] > 0
    assert quantized.finalize([st])[0].text == plain.finalize([_state(plain, audio)])[0].text
    whole = _backend(random_assets, quantize="all")
    assert "quantized" in type(whole.decoder.layers[0].fc1).__module__
    assert type(random_assets.model.get_encoder().layers[0].fc1) is torch.nn.Linear  # other backends keep float32
    assert whole.finalize([_state(whole, audio)])[0].stats["tokens"] > 0


def test_quantize_needs_float32_on_cpu_and_the_default_gives_way(random_assets):
    for quantize in ("encoder", "all"):
        with pytest.raises(ValueError, match="int8 for float32 on CPU"):
            WhisperBackend(random_assets, dtype=torch.float16, decoding=WhisperDecodingOptions(quantize=quantize))
    assert random_assets.model.dtype == torch.float32  # refused before the shared model was cast
    assert WhisperDecodingOptions().quantize == "partials"
    half = WhisperBackend(dataclasses.replace(random_assets, model=copy.deepcopy(random_assets.model)),
                          dtype=torch.float16)
    assert half._partial_encoder is half.encoder  # no int8 kernels for float16: the default keeps the encoder


# ---------------------------------------------------------------- the real tiny.en on real speech


@pytest.fixture(scope="module")
def tiny_en_assets():
    from streaming.models.embedded import load_embedded_whisper

    try:
        return load_embedded_whisper("tiny.en")
    except Exception as exc:  # noqa: BLE001 - the package may be absent on a bare machine
        pytest.skip(f"embedded tiny.en unavailable: {exc}")


def _stream(backend: WhisperBackend, audio: np.ndarray, step_s: float = 1.0):
    """Partials every ``step_s`` (stable, full text) and the final of one utterance."""
    st = backend.new_utterance(UtteranceOptions(language="en", word_timestamps=True))
    chunk = int(step_s * SAMPLE_RATE_HZ)
    partials = []
    for start in range(0, audio.size, chunk):
        st.append_audio(audio[start:start + chunk])
        hyp = backend.step([st])[0]
        partials.append((hyp.stable_text, hyp.text))
    return partials, backend.finalize([st])[0]


@pytest.mark.slow
def test_tiny_en_short_window_partials_follow_the_full_window_and_finals_stay_identical(tiny_en_assets):
    clips = {c.id: c for c in dev_clips()}
    for clip_id in ("jfk", "lib_left"):
        audio = clips[clip_id].load()
        full_partials, full_final = _stream(_backend(tiny_en_assets, partial_window_s=0.0), audio)
        short_partials, short_final = _stream(_backend(tiny_en_assets, quantize="none"), audio)  # default window
        assert short_final.text == full_final.text and _words(short_final) == _words(full_final)
        # The whole clip: the same words (a short window drops some commas the full one writes).
        assert wer([full_partials[-1][1]], [short_partials[-1][1]]) == 0.0, (full_partials[-1], short_partials[-1])
        texts_full, texts_short = [t for _, t in full_partials], [t for _, t in short_partials]
        assert wer(texts_full, texts_short) <= 0.10, (texts_full, texts_short)
        # What LocalAgreement made stable are the final's first words (punctuation aside), most of them.
        stable, final = normalize_english(short_partials[-1][0]), normalize_english(full_final.text)
        assert final.startswith(stable) and len(stable.split()) >= 0.6 * len(final.split()), (stable, final)


@pytest.mark.slow
def test_tiny_en_with_int8_partials_still_streams_jfk(tiny_en_assets):
    clip = next(c for c in dev_clips() if c.id == "jfk")
    partials, final = _stream(_backend(tiny_en_assets, quantize="partials"), clip.load())
    assert final.text == ("And so my fellow Americans ask not what your country can do for you, "
                          "ask what you can do for your country.")
    assert wer([clip.text], [partials[-1][1]]) <= 0.10, partials[-1]
