"""Qwen3-ASR streaming backend: incremental encoder/decoder equal the offline model, bounded cost per step.

A tiny model with random weights runs the same code path as the real checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import pytest
import torch

from streaming.models.base import OptionError, UtteranceOptions
from streaming.models.qwen3_asr import (
    AUDIO_PAD,
    CLAMP_RANGE,
    FRAMES_PER_CHUNK,
    Qwen3ASRBackend,
    random_model,
)

SR = 16_000


@pytest.fixture(scope="module")
def tiny():
    model, tok = random_model("tiny", seed=0)
    # Larger random weights make greedy output vary from token to token (a sharper test of equality).
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model, tok


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 30 s of real speech, clips back to back."""
    from streaming.evaluation import dev_clips

    parts, total = [], 0
    for clip in dev_clips():
        a = clip.load()
        parts.append(a)
        total += len(a)
        if total > 30 * SR:
            break
    return np.concatenate(parts)[: 30 * SR]


def make_backend(tiny, **kw) -> Qwen3ASRBackend:
    model, tok = tiny
    kw.setdefault("repetition_guard", False)
    return Qwen3ASRBackend(model, tok, **kw)


def stream(backend, state, audio, chunk_sizes, on_step=None):
    """Feed ``audio`` in chunks (cycling ``chunk_sizes`` samples) and step after each."""
    i, k, hyps = 0, 0, []
    while i < len(audio):
        n = chunk_sizes[k % len(chunk_sizes)]
        state.append_audio(audio[i:i + n])
        i += n
        k += 1
        hyps.append(backend.step([state])[0])
        if on_step:
            on_step(state, hyps[-1])
    return hyps


def hf_audio_embeds(model, feats: torch.Tensor, window_s: int) -> torch.Tensor:
    """The transformers encoder on the whole feature matrix (the offline reference)."""
    x, mask = hf_inputs(feats)
    with hf_window(model, window_s), torch.no_grad():
        return model.get_audio_features(x, mask, return_dict=True).pooler_output


@contextlib.contextmanager
def hf_window(model, window_s: int):
    """Run the transformers model with an attention window of ``window_s`` seconds."""
    tower = model.model.audio_tower
    saved = tower.n_window_infer
    tower.n_window_infer = window_s * FRAMES_PER_CHUNK
    try:
        yield
    finally:
        tower.n_window_infer = saved


def hf_inputs(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features padded to whole 1 s chunks, batched, with their mask (as the processor makes them)."""
    n = feats.shape[1]
    pad = -n % FRAMES_PER_CHUNK
    x = torch.nn.functional.pad(feats, (0, pad))[None]
    mask = torch.zeros(1, n + pad, dtype=torch.long)
    mask[0, :n] = 1
    return x, mask


def full_ids(backend, state, n_audio: int, text: list[int]) -> list[int]:
    pad = backend.tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    return state.head_ids + [pad] * n_audio + state.suffix_ids + text


def hf_logits(backend, state, text: list[int]) -> torch.Tensor:
    """A fresh full prefill through the transformers model on the same features."""
    feats = state.features()
    model = backend.model
    x, mask = hf_inputs(feats)
    n_audio = sum(w.embeds.shape[0] for w in state.windows) + _open_tokens(state)
    ids = torch.tensor([full_ids(backend, state, n_audio, text)])
    with hf_window(model, state.window_s), torch.no_grad():
        return model(input_ids=ids, input_features=x, input_features_mask=mask).logits[0, -1]


def _open_tokens(state) -> int:
    from streaming.models.qwen3_asr import post_cnn_tokens

    done = len(state.windows) * state.window_frames
    return post_cnn_tokens(state.raw_frames.shape[1] - done)


# ---------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("window_s", [1, 2, 4, 8])
def test_incremental_encoder_equals_full_sequence(tiny, speech, window_s):
    backend = make_backend(tiny, max_new_tokens_per_step=1)
    state = backend.new_utterance(UtteranceOptions(window_s=window_s))
    audio = speech[: 20 * SR]
    # Uneven arrival: 0.37 s, 1.1 s, 0.05 s, 0.9 s ...
    stream(backend, state, audio, [5920, 17600, 800, 14400])
    assert len(state.windows) >= 20 // window_s - 1
    ref = hf_audio_embeds(backend.model, state.features(), window_s)
    got = torch.cat([w.embeds for w in state.windows])
    torch.testing.assert_close(got, ref[: got.shape[0]], rtol=1e-4, atol=1e-4)
    # The open window too (what the last step decoded from).
    n_open = _open_tokens(state)
    open_ref = ref[got.shape[0]:]
    assert open_ref.shape[0] == n_open


def test_finalized_windows_cover_whole_utterance(tiny, speech):
    backend = make_backend(tiny, max_new_tokens_per_step=1)
    state = backend.new_utterance(UtteranceOptions(window_s=3))
    stream(backend, state, speech[: 7 * SR + 1234], [16000])
    backend.finalize([state])
    feats = state.features()
    assert feats.shape[1] == (7 * SR + 1234) // 160  # as many frames as the offline extractor
    ref = hf_audio_embeds(backend.model, feats, 3)
    torch.testing.assert_close(torch.cat([w.embeds for w in state.windows]), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- features


def offline_raw_logmel(audio: np.ndarray) -> torch.Tensor:
    """log10 mel power exactly as ``Qwen3ASRFeatureExtractor`` computes it, before its clamp."""
    from transformers import Qwen3ASRFeatureExtractor

    fe = Qwen3ASRFeatureExtractor()
    wav = torch.from_numpy(audio)
    stft = torch.stft(wav, 400, 160, window=torch.hann_window(400), return_complex=True)
    mel = torch.from_numpy(fe.mel_filters).float().T @ (stft[..., :-1].abs() ** 2)
    return torch.clamp(mel, min=1e-10).log10()


def test_cached_features_never_stale(tiny, speech):
    """Every finished window keeps exactly the features the rule gives on the final audio."""
    backend = make_backend(tiny, max_new_tokens_per_step=1)
    state = backend.new_utterance(UtteranceOptions(window_s=2))
    audio = speech[: 12 * SR].copy()
    audio[9 * SR:] *= 4.0  # a louder passage raises the running max late
    snapshots = []
    stream(backend, state, audio, [7000, 13000],
           on_step=lambda s, h: snapshots.append([w.features.clone() for w in s.windows]))
    raw = offline_raw_logmel(audio)
    wf = state.window_frames
    for w, win in enumerate(state.windows):
        end = (w + 1) * wf
        floor = raw[:, :end].max().item()
        expect = (torch.maximum(raw[:, w * wf:end], torch.tensor(floor - CLAMP_RANGE)) + 4.0) / 4.0
        torch.testing.assert_close(win.features, expect, rtol=1e-4, atol=1e-4)
    # Once finished, a window's features never changed in later steps.
    for snap in snapshots:
        for w, f in enumerate(snap):
            assert torch.equal(f, state.windows[w].features)


def test_features_equal_offline_extractor_when_peak_comes_first(tiny, speech):
    """With the loudest frame in the first window the rule is exactly the offline extractor."""
    from transformers import Qwen3ASRFeatureExtractor

    backend = make_backend(tiny, max_new_tokens_per_step=1)
    audio = speech[: 6 * SR].copy()
    audio[: SR // 2] += 0.9 * np.sin(np.arange(SR // 2) * 0.3).astype(np.float32)
    state = backend.new_utterance(UtteranceOptions(window_s=1))
    stream(backend, state, audio, [16000])
    backend.finalize([state])
    ref = Qwen3ASRFeatureExtractor()(audio, sampling_rate=SR, padding="longest", n_window=0, return_tensors="pt")
    torch.testing.assert_close(state.features(), ref["input_features"][0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- decoder


def test_kept_cache_logits_equal_fresh_prefill(tiny, speech):
    backend = make_backend(tiny, max_new_tokens_per_step=3)
    state = backend.new_utterance(UtteranceOptions(window_s=2))
    audio = speech[: 14 * SR]
    checked = []

    def check(s, hyp):
        if s.duration_s in (3.0, 7.0, 12.0):
            # Another step's prefill over the kept head: same logits as one fresh full prefill.
            s.append_audio(np.zeros(0, np.float32))
            got = backend.prefill_logits([s])[0]
            ref = hf_logits(backend, s, list(s.agreement.stable))
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
            assert s.cached_len > len(s.head_ids) or s.duration_s < 4
            checked.append(s.duration_s)

    stream(backend, state, audio, [16000], on_step=check)
    assert checked == [3.0, 7.0, 12.0]


def test_batched_prefill_equals_single(tiny, speech):
    """Ragged utterances in one padded batch give each one's own logits."""
    backend = make_backend(tiny, max_new_tokens_per_step=2)
    singles, batch = [], []
    for i, (sec, w) in enumerate([(3.3, 1), (9.0, 4), (5.5, 2)]):
        for group in (singles, batch):
            s = backend.new_utterance(UtteranceOptions(window_s=w))
            stream(backend, s, speech[i * SR: i * SR + int(sec * SR)], [16000])
            group.append(s)
    for s in singles:
        s.append_audio(speech[:3000])
    for s in batch:
        s.append_audio(speech[:3000])
    ref = torch.stack([backend.prefill_logits([s])[0] for s in singles])
    got = backend.prefill_logits(batch)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_stream_finalized_equals_generate(tiny, speech):
    backend = make_backend(tiny, max_new_tokens_per_step=4)
    state = backend.new_utterance(UtteranceOptions(window_s=4))
    stream(backend, state, speech[: 9 * SR + 777], [11000, 16000])
    result = backend.finalize([state])[0]
    tokens = result.stats["tokens"]
    assert len(set(tokens)) > 3  # the random model says something varied

    model = backend.model
    feats = state.features()
    x, mask = hf_inputs(feats)
    n_audio = sum(w.embeds.shape[0] for w in state.windows)
    ids = torch.tensor([full_ids(backend, state, n_audio, [])])
    budget = backend.max_new_tokens(state.duration_s)
    with hf_window(model, 4):
        out = model.generate(input_ids=ids, input_features=x, input_features_mask=mask, do_sample=False,
                             max_new_tokens=budget, min_new_tokens=0)
    ref = out[0, ids.shape[1]:].tolist()
    while ref and ref[-1] in backend.eos_ids:
        ref.pop()
    assert tokens == ref


def test_batched_finalize_equals_single(tiny, speech):
    backend = make_backend(tiny, max_new_tokens_per_step=2)
    lens = [2.2, 6.0, 4.7]
    def run(batched: bool):
        states = []
        for i, sec in enumerate(lens):
            s = backend.new_utterance(UtteranceOptions(window_s=2))
            stream(backend, s, speech[i * SR: i * SR + int(sec * SR)], [16000])
            states.append(s)
        if batched:
            return [r.stats["tokens"] for r in backend.finalize(states)]
        return [backend.finalize([s])[0].stats["tokens"] for s in states]
    assert run(True) == run(False)


# ---------------------------------------------------------------------------- cost


def test_cost_per_step_bounded_over_long_stream(tiny, speech):
    backend = make_backend(tiny, max_new_tokens_per_step=2)
    window_s = 4
    state = backend.new_utterance(UtteranceOptions(window_s=window_s))
    audio = np.concatenate([speech, speech])[: 56 * SR]
    hyps = stream(backend, state, audio, [16000])
    stats = [h.stats for h in hyps[1:]]
    wf = window_s * FRAMES_PER_CHUNK
    # Encoder: at most the window that just finished plus the open one, whatever the stream length.
    assert max(s["encoder_frames"] for s in stats) <= wf + FRAMES_PER_CHUNK
    # Decoder audio positions recomputed: at most about one window (+ the one that just finished).
    assert max(s["decoder_audio_positions"] for s in stats) <= 13 * (window_s + 1)
    first, last = stats[: len(stats) // 3], stats[-len(stats) // 3:]
    non_text = lambda s: s["decoder_positions"] - s["decoder_text_positions"] - s["decoded_tokens"]
    assert max(non_text(s) for s in last) <= max(non_text(s) for s in first)
    assert max(s["encoder_frames"] for s in last) <= max(s["encoder_frames"] for s in first)
    # ...while the cache grows with the stream: the finished audio is never recomputed.
    assert stats[-1]["cached_positions"] > 13 * 50


# ---------------------------------------------------------------------------- options & text


def test_validate_options(tiny):
    backend = make_backend(tiny)
    for bad in (0, 9, 2.5, "4", True):
        with pytest.raises(OptionError):
            backend.validate_options(UtteranceOptions(window_s=bad))
    with pytest.raises(OptionError):
        backend.validate_options(UtteranceOptions(language="xx"))
    for ok in (1, 8, 4.0, None):
        backend.validate_options(UtteranceOptions(window_s=ok))
    backend.validate_options(UtteranceOptions(language="en"))
    backend.validate_options(UtteranceOptions(language="English"))


def test_prompt_layout_language_and_context(tiny):
    backend = make_backend(tiny)
    tok = backend.tokenizer
    s = backend.new_utterance(UtteranceOptions(language="de", context="Kubernetes Grafana"))
    head = tok.decode(s.head_ids)
    suffix = tok.decode(s.suffix_ids)
    assert head == "<|im_start|>system\nKubernetes Grafana<|im_end|>\n<|im_start|>user\n<|audio_start|>"
    assert suffix == "<|audio_end|><|im_end|>\n<|im_start|>assistant\nlanguage German<asr_text>"
    # Parsing: a forced language is reported as its code; text comes from the tokens after the prefix.
    text_ids = tok.encode(" hello world", add_special_tokens=False)
    assert backend._parse(s, text_ids) == ("de", "hello world")
    free = backend.new_utterance(UtteranceOptions())
    out = tok.encode("language English<asr_text>ask not", add_special_tokens=False)
    assert backend._parse(free, out) == ("en", "ask not")


def test_stable_text_is_monotone_and_stops_at_word_boundary(tiny):
    backend = make_backend(tiny)
    tok = backend.tokenizer
    s = backend.new_utterance(UtteranceOptions(language="en"))
    ids = tok.encode(" ask not what your country", add_special_tokens=False)
    s.agreement.insert(ids)
    stable, tail = s.agreement.insert(ids[:-1] + tok.encode(" county", add_special_tokens=False))
    hyp = backend._hypothesis(s, stable, tail)
    assert "ask not what your".startswith(hyp.stable_text)
    assert hyp.text.startswith("ask not what your")
    assert not hyp.stable_text.endswith("coun")


# ---------------------------------------------------------------------------- benchmark


def test_benchmark_runs_with_tiny_model(tmp_path):
    from benchmarks import qwen3 as bench_qwen3

    rc = bench_qwen3.main(["--arch", "tiny", "--stream-s", "6", "--windows", "1", "2", "--new-tokens", "2",
                           "--batch-sizes", "1", "3", "--realtime-s", "3", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "bench_qwen3.json").read_text())
    assert {r["mode"] for r in data["runs"]} >= {"window_1s", "window_2s", "refeed"}
    assert [r["batch"] for r in data["realtime"]] == [1, 3]
    assert (tmp_path / "bench_qwen3.png").stat().st_size > 1000


# ---------------------------------------------------------------------------- server


def test_session_over_loopback(tiny):
    """The tiny model behind the real server: ready, partials, finals, end; window_s 9 is refused."""
    from websockets.sync.client import connect

    from streaming.audio import float_to_pcm16
    from streaming.evaluation import dev_clips
    from benchmarks.loadgen import with_silence
    from tests.helpers import running_server

    backend = make_backend(tiny, repetition_guard=True, max_new_tokens_per_step=4)
    clip = {c.id: c for c in dev_clips()}["lib_left"].load()
    pcm = float_to_pcm16(with_silence(clip, 0.5, 1.5))
    with running_server(backend, step_s=0.5) as url:
        with connect(url, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "start", "language": "en", "window_s": 2}))
            ready = json.loads(ws.recv(timeout=10))
            assert ready["type"] == "ready" and ready["options"]["window_s"] == 2
            for i in range(0, len(pcm), 6400):  # 0.2 s of audio every 0.1 s: a client at 2x real time
                ws.send(pcm[i:i + 6400])
                time.sleep(0.1)
            ws.send(json.dumps({"type": "stop"}))
            events = []
            while True:
                ev = json.loads(ws.recv(timeout=60))
                events.append(ev)
                if ev["type"] == "end":
                    break
        types = [e["type"] for e in events]
        assert "partial" in types and "final" in types, types
        assert types.index("partial") < types.index("final")
        finals = [e for e in events if e["type"] == "final"]
        assert all(f["language"] == "en" for f in finals)
        assert any(f["text"] for f in finals)
        for p in (e for e in events if e["type"] == "partial"):
            assert p["text"].startswith(p["stable_text"])

        with connect(url, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "start", "window_s": 9}))
            ev = json.loads(ws.recv(timeout=10))
            assert ev["type"] == "error" and ev["code"] == "invalid_option", ev


def test_load_backend_takes_a_local_checkpoint_folder(tmp_path):
    """`--model FOLDER` with a saved Qwen3-ASR checkpoint goes through the same loader users hit."""
    from transformers import Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    from streaming.models import load_backend, model_type

    model, tok = random_model("tiny", seed=1)
    model.save_pretrained(tmp_path)
    Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tok).save_pretrained(tmp_path)
    assert model_type(str(tmp_path)) == "qwen3_asr"
    backend = load_backend(str(tmp_path), device="cpu", dtype="float32", window_s=2)
    assert backend.supports_window and backend.multilingual
    state = backend.new_utterance(UtteranceOptions(window_s=2))
    state.append_audio(np.random.default_rng(0).normal(0, 0.1, 2 * SR).astype(np.float32))
    hyp = backend.step([state])[0]
    final = backend.finalize([state])[0]
    assert isinstance(hyp.text, str) and isinstance(final.text, str)
    assert hyp.stats["encoder_frames"] > 0
