"""The Smart Turn v3.2 end-of-turn model: features and probabilities as pipecat computes them, its
8 s window rules, loading, and how it judges complete and cut-off turns of real speech."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from streaming.config import TurnModelOptions
from streaming.evaluation import Clip, dev_clips
from streaming.smart_turn import (MODEL_FILE, MODEL_SHA256, N_FRAMES, N_MELS, WINDOW_SAMPLES, SmartTurnModel,
                                  TurnModelMissing, default_model_path, last_window, load_turn_model,
                                  log_mel_features)

REFERENCE = json.loads((Path(__file__).with_name("smart_turn_reference.json")).read_text(encoding="utf-8"))
SILENCE_200_MS = np.zeros(3200, dtype=np.float32)


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    """The installed model; set-up puts it there, so a missing file fails (TurnModelMissing says why)."""
    return load_turn_model(TurnModelOptions())


@pytest.fixture(scope="module")
def clips() -> dict[str, Clip]:
    return {c.id: c for c in dev_clips(full=True)}


def _reference_audio(clips: dict[str, Clip], case: dict) -> np.ndarray:
    return clips[case["clip"]].load()[case["start_sample"]:case["end_sample"]]


# --- set-up and loading ---------------------------------------------------------------------------

def test_setup_installed_the_model_file():
    path = default_model_path()
    assert path.name == MODEL_FILE and path.parent.parts[-2:] == ("share", "streaming-asr")
    assert path.is_file(), f"{path} is missing: run scripts/setup.sh (it extracts it from the pipecat-ai wheel)"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MODEL_SHA256


def test_a_missing_file_says_where_and_how_to_fix_it(tmp_path):
    missing = tmp_path / "nowhere" / MODEL_FILE
    with pytest.raises(TurnModelMissing) as caught:
        load_turn_model(TurnModelOptions(path=str(missing)))
    message = str(caught.value)
    assert str(missing) in message and "scripts/setup.sh" in message and "[turn_model] path" in message
    assert caught.value.path == missing


def test_load_logs_the_model_and_its_path(caplog):
    with caplog.at_level(logging.INFO, logger="streaming.smart_turn"):
        loaded = load_turn_model(TurnModelOptions(path="", threads=2))
    assert loaded.name == "smart-turn-v3.2" and loaded.path == default_model_path() and loaded.threads == 2
    assert any("smart-turn-v3.2" in r.getMessage() and str(default_model_path()) in r.getMessage()
               for r in caplog.records)


# --- the 8 s window -------------------------------------------------------------------------------

@pytest.mark.parametrize("samples, kept, zeros_before", [
    (0, 0, WINDOW_SAMPLES),
    (1, 1, WINDOW_SAMPLES - 1),
    (16_000, 16_000, WINDOW_SAMPLES - 16_000),     # 1 s: padded at the start
    (WINDOW_SAMPLES - 1, WINDOW_SAMPLES - 1, 1),
    (WINDOW_SAMPLES, WINDOW_SAMPLES, 0),           # exactly 8 s: as is
    (WINDOW_SAMPLES + 1, WINDOW_SAMPLES, 0),       # longer: the last 8 s
    (3 * WINDOW_SAMPLES + 7, WINDOW_SAMPLES, 0),
])
def test_window_is_the_last_8_s_padded_at_the_start(samples, kept, zeros_before):
    audio = np.arange(1, samples + 1, dtype=np.float32)  # no zeros inside the audio
    window = last_window(audio)
    assert window.shape == (WINDOW_SAMPLES,) and window.dtype == np.float32
    assert not window[:zeros_before].any()
    np.testing.assert_array_equal(window[zeros_before:], audio[samples - kept:])


@pytest.mark.parametrize("shape", [(2, 100), (1, 1, 100)])
def test_window_refuses_audio_that_is_not_mono(shape):
    with pytest.raises(ValueError, match="mono"):
        last_window(np.zeros(shape, dtype=np.float32))


def test_features_refuse_windows_of_another_length():
    with pytest.raises(ValueError, match="128000"):
        log_mel_features(np.zeros((1, WINDOW_SAMPLES - 1)))


def test_silence_gives_the_floor_everywhere():
    # Zero mean/unit variance leaves silence at zero; log10 of the 1e-10 floor is -10 -> (-10 + 4) / 4.
    features = log_mel_features(np.zeros((2, WINDOW_SAMPLES)))
    assert features.shape == (2, N_MELS, N_FRAMES) and features.dtype == np.float32
    np.testing.assert_array_equal(features, -1.5)


def test_features_match_transformers_whisper_extractor():
    """A second, independent reference: ``WhisperFeatureExtractor(chunk_length=8)`` with ``do_normalize``."""
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(7)
    t_s = np.arange(40_000) / 16_000
    windows = np.stack([last_window((0.1 * rng.standard_normal(40_000)).astype(np.float32)),
                        last_window((0.3 * np.sin(2 * np.pi * 440 * t_s)).astype(np.float32)),
                        last_window((0.05 * rng.standard_normal(200_000)).astype(np.float32))])
    extractor = WhisperFeatureExtractor(feature_size=N_MELS, chunk_length=8)
    expected = extractor(list(windows), sampling_rate=16_000, do_normalize=True, padding="max_length",
                         max_length=WINDOW_SAMPLES, truncation=True, return_tensors="np").input_features
    np.testing.assert_allclose(log_mel_features(windows), expected, atol=1e-4, rtol=0)


# --- equality with pipecat ------------------------------------------------------------------------

def _case_id(case: dict) -> str:
    return f"{case['clip']}[{case['start_sample']}:{case['end_sample']}]"


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=_case_id)
def test_features_and_probability_match_pipecat(model, clips, case):
    audio = _reference_audio(clips, case)
    features = model.features([audio])[0].astype(np.float64)
    assert features.mean() == pytest.approx(case["feature_mean"], abs=1e-5)
    assert features.std() == pytest.approx(case["feature_std"], abs=1e-5)
    at = np.array([[mel, frame] for mel, frame, _ in case["feature_samples"]])
    np.testing.assert_allclose(features[at[:, 0], at[:, 1]], [v for _, _, v in case["feature_samples"]],
                               atol=1e-4, rtol=0)
    assert model.score([audio])[0] == pytest.approx(case["probability"], abs=1e-4)


def test_one_batch_of_all_reference_clips_matches_pipecat(model, clips):
    audios = [_reference_audio(clips, case) for case in REFERENCE["cases"]]
    assert {a.size < WINDOW_SAMPLES for a in audios} == {True, False}  # padded and truncated ones together
    np.testing.assert_allclose(model.score(audios), [case["probability"] for case in REFERENCE["cases"]],
                               atol=1e-4, rtol=0)


# --- scoring rules on the model -------------------------------------------------------------------

def test_short_audio_scores_as_if_padded_with_silence_at_the_start(model, clips):
    speech = clips["jfk"].load()[:51_200]  # "And so my fellow Americans", 3.2 s
    padded = np.concatenate([np.zeros(WINDOW_SAMPLES - speech.size, dtype=np.float32), speech])
    assert model.score([speech]) == model.score([padded])


def test_long_audio_scores_its_last_8_s(model, clips):
    audio = clips["jfk"].load()  # 11 s
    assert audio.size > WINDOW_SAMPLES
    assert model.score([audio]) == model.score([audio[-WINDOW_SAMPLES:]])
    assert model.score([audio]) != model.score([audio[:WINDOW_SAMPLES]])


def test_a_batch_of_different_lengths_scores_as_one_by_one(model, clips):
    audio = clips["jfk"].load()
    audios = [audio[:8_000], audio[:51_200], audio[:WINDOW_SAMPLES], audio, np.zeros(0, dtype=np.float32)]
    batched = model.score(audios)
    singles = [model.score([a])[0] for a in audios]
    assert len(batched) == len(audios)
    np.testing.assert_allclose(batched, singles, atol=1e-6, rtol=0)
    assert all(0.0 <= p <= 1.0 for p in batched)


def test_nothing_to_score_is_no_run(model):
    assert model.score([]) == []


# --- real turns -----------------------------------------------------------------------------------

def _turn_cases(clip: Clip, backend) -> tuple[np.ndarray, np.ndarray]:
    """(complete, hesitation) audio of one clip, cut at word ends the project's backend finds."""
    from streaming.results import UtteranceOptions

    audio = clip.load()
    state = backend.new_utterance(UtteranceOptions(language="en", word_timestamps=True))
    state.append_audio(audio)
    words = backend.finalize([state])[0].words
    assert words and len(words) >= 4, f"{clip.id}: the backend found {words!r}"
    # The cut nearest the middle among boundaries 40-60 % of the way through the words.
    boundaries = [k for k in range(1, len(words)) if 0.4 <= k / len(words) <= 0.6]
    middle = min(boundaries, key=lambda k: abs(k / len(words) - 0.5))

    def upto(end_s: float) -> np.ndarray:
        return np.concatenate([audio[:round(end_s * 16_000)], SILENCE_200_MS])

    return upto(words[-1].end_s), upto(words[middle - 1].end_s)


@pytest.mark.slow
def test_real_turns_complete_versus_cut_in_the_middle(model):
    """On the first 30 English dev-full clips of >= 6 words (tiny.en word times, +200 ms of silence):
    measured 28/30 = 0.93 of complete turns scored >= 0.5, 14/30 = 0.47 of mid-sentence cuts < 0.5, and
    a complete turn outscores a cut in 79 % of (complete, cut) pairs. Mid-sentence cuts of fluent read
    speech (LJSpeech, LibriVox, TTS) often sound final to the model, hence the low hesitation rate; a
    higher threshold trades one for the other (0.9: 0.83 / 0.63). Asserted with a margin below that."""
    from streaming.config import Config
    from streaming.loading import load_configured_backend

    backend = load_configured_backend(Config())
    chosen = [c for c in dev_clips(full=True) if c.language == "en" and len(c.text.split()) >= 6][:30]
    assert len(chosen) == 30
    complete, cut = [], []
    for clip in chosen:
        p_complete, p_cut = model.score(list(_turn_cases(clip, backend)))
        complete.append(p_complete)
        cut.append(p_cut)
    complete_rate = np.mean(np.array(complete) >= 0.5)
    hesitation_rate = np.mean(np.array(cut) < 0.5)
    ranked = np.mean([(c > h) + 0.5 * (c == h) for c in complete for h in cut])
    summary = f"complete {complete_rate:.2f}, hesitation {hesitation_rate:.2f}, ranking {ranked:.2f}"
    assert complete_rate >= 0.8, summary
    assert hesitation_rate >= 0.3, summary
    assert ranked >= 0.65, summary
    assert np.mean(complete) > np.mean(cut) + 0.15, summary
