"""The shared ragged-batch greedy loop (streaming.models.decoding): masks and positions of ragged rows,
stop rules and the loop guard as tables, the loop with fake and toy models, and both backends' outputs
equal to the ones recorded before the shared loop existed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.models.base import SAMPLE_RATE_HZ, UtteranceOptions
from streaming.models.decoding import (
    Decoded,
    RaggedBatch,
    RepetitionGuard,
    Row,
    Stop,
    StopCriteria,
    SuppressTokens,
    TokenBudget,
    additive_mask,
    greedy_decode,
    push_token,
)
from streaming.models.qwen3_asr import LOOP_GUARD as QWEN3_GUARD
from streaming.models.whisper import LOOP_GUARD as WHISPER_GUARD

REFERENCE = Path(__file__).with_name("decoding_reference.json")
"""Outputs of both backends recorded with their own decoding loops, before the shared loop replaced them."""

WHISPER_CLIPS = ("jfk", "lib_left", "librivox_0870")
STEP_S = 1.5
"""Audio between two partial steps of the Whisper trace."""

T, F = True, False

# --------------------------------------------------------------------------- ragged batches


@pytest.mark.parametrize(("cached", "new", "pad", "valid", "positions", "allowed", "last", "next_positions"), [
    # Whisper's layout: no cache, prompts right-padded; a padding query sees the real tokens and itself.
    ([0, 0], [3, 1], "right",
     [[T, T, T], [T, F, F]],
     [[0, 1, 2], [0, 1, 2]],
     [[[T, F, F], [T, T, F], [T, T, T]],
      [[T, F, F], [T, T, F], [T, F, T]]],
     [2, 0], [3, 1]),
    # Qwen3's layout: cached heads right-aligned in the cache, tails right-aligned in the input.
    ([2, 0], [1, 3], "left",
     [[T, T, F, F, T], [F, F, T, T, T]],
     [[2, 2, 2], [0, 1, 2]],
     [[[T, T, T, F, F], [T, T, F, T, F], [T, T, F, F, T]],
      [[F, F, T, F, F], [F, F, T, T, F], [F, F, T, T, T]]],
     [2, 2], [3, 3]),
    ([1, 3], [2, 2], "left",
     [[F, F, T, T, T], [T, T, T, T, T]],
     [[1, 2], [3, 4]],
     [[[F, F, T, T, F], [F, F, T, T, T]],
      [[T, T, T, T, F], [T, T, T, T, T]]],
     [1, 1], [3, 5]),
])
def test_prefill_masks_and_positions(cached, new, pad, valid, positions, allowed, last, next_positions) -> None:
    batch, prefill = RaggedBatch.prefill(cached, new, pad_new=pad)
    assert batch.valid.tolist() == valid
    assert prefill.positions.tolist() == positions
    assert prefill.allowed.tolist() == allowed
    assert prefill.last.tolist() == last
    assert batch.next_positions.tolist() == next_positions


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=5),
       pad=st.sampled_from(["left", "right"]))
def test_prefill_every_real_query_sees_exactly_its_row_so_far(rows, pad) -> None:
    cached, new = [c for c, _ in rows], [n for _, n in rows]
    batch, prefill = RaggedBatch.prefill(cached, new, pad_new=pad)
    p, w = max(cached), max(new)
    for b, (c, n) in enumerate(rows):
        cache_cols = list(range(p - c, p))
        first = w - n if pad == "left" else 0
        new_cols = [p + first + j for j in range(n)]
        assert [k for k in range(p + w) if batch.valid[b, k]] == cache_cols + new_cols
        assert [int(prefill.positions[b, first + j]) for j in range(n)] == list(range(c, c + n))
        for j in range(n):
            seen = [k for k in range(p + w) if prefill.allowed[b, first + j, k]]
            assert seen == cache_cols + new_cols[: j + 1]
        assert bool(prefill.allowed[b].any(dim=-1).all())  # no fully masked query, padding included
        assert int(prefill.last[b]) == first + n - 1 and int(batch.next_positions[b]) == c + n


def test_advance_and_select() -> None:
    batch, _ = RaggedBatch.prefill([0, 2, 1], [2, 1, 1], pad_new="left")
    positions, allowed = batch.advance()
    assert positions.tolist() == [[2], [3], [2]]
    assert allowed.shape == (3, 1, 5) and allowed[:, 0, -1].all()
    assert allowed[:, 0].tolist() == batch.valid.tolist()
    kept = batch.select(torch.tensor([2, 0]))
    assert kept.next_positions.tolist() == [3, 3]
    assert kept.valid.tolist() == [batch.valid[2].tolist(), batch.valid[0].tolist()]


def test_additive_mask() -> None:
    mask = additive_mask(torch.tensor([[[True, False]]]), torch.float32)
    assert mask.shape == (1, 1, 1, 2)
    assert mask[0, 0, 0].tolist() == [0.0, torch.finfo(torch.float32).min]


def test_prefill_refuses_bad_lengths() -> None:
    with pytest.raises(ValueError, match="one cached and one new"):
        RaggedBatch.prefill([0], [1, 2])
    with pytest.raises(ValueError, match=">= 1 new"):
        RaggedBatch.prefill([0, 1], [1, 0])


# --------------------------------------------------------------------------- stop rules


@pytest.mark.parametrize(("tokens", "whisper", "qwen3"), [
    ([], None, None),
    ([1, 2, 3, 4], None, None),
    ([5] * 11, None, None),  # could be speech ("no no no ...")
    ([9, 8] + [5] * 12, 3, None),  # Whisper: 12 single repeats, one kept
    ([5] * 15, 1, None),
    ([5] * 16, 1, 1),  # Qwen3: 16 single repeats
    ([1, 2, 3] + [7, 8] * 6, 5, None),
    ([7, 8] * 8, 2, 2),
    ([1] + [4, 5, 6, 7] * 3, 5, None),
    ([4, 5, 6, 7] * 4, 4, 4),  # Qwen3 finds n=4 although n=3 needs more tokens (18) than n=4 (16)
    ([1, 2, 3, 4, 5, 6, 7, 8, 9] * 3, 9, None),  # Whisper: n <= 12, 3 copies; Qwen3: n <= 8
    ([1, 2, 3, 4, 5, 6, 7, 8] * 4, 8, 8),
])
def test_repetition_guards(tokens, whisper, qwen3) -> None:
    assert WHISPER_GUARD.find(tokens) == whisper
    assert QWEN3_GUARD.find(tokens) == qwen3


@pytest.mark.parametrize(("guard", "prefix", "tokens", "stop"), [
    (WHISPER_GUARD, (), [9, 8] + [5] * 12, Stop("loop", 3)),
    (WHISPER_GUARD, (), [9, 8] + [5] * 11, None),
    (WHISPER_GUARD, (5,) * 10, [5, 5], Stop("loop", 0)),  # the one kept copy is in the prefix
    (RepetitionGuard(3, 12, 12, keep_one_copy=True), (1,) * 3 + (5,) * 10, [5, 5, 5], Stop("loop", 0)),
    (RepetitionGuard(3, 12, 12, keep_one_copy=True), (1,), [2] + [5] * 12, Stop("loop", 2)),
    (QWEN3_GUARD, (5,) * 10, [5] * 6, Stop("loop", 6)),  # the forced prefix counts; nothing is cut
    (QWEN3_GUARD, (5,) * 10, [5] * 5, None),
])
def test_guard_sees_the_prefix(guard, prefix, tokens, stop) -> None:
    assert guard.check(list(tokens), Row(100, prefix)) == stop


@pytest.mark.parametrize(("token", "before", "max_tokens", "tokens", "stop"), [
    (0, [1, 2], 5, [1, 2], "eos"),  # EOS is never appended
    (3, [1, 2], 5, [1, 2, 3], ""),
    (3, [1, 2], 3, [1, 2, 3], "cap"),
    (5, [5] * 11, 100, [5], "loop"),  # the loop guard comes before the budget and cuts
    (5, [5] * 11, 12, [5], "loop"),
])
def test_push_token(token, before, max_tokens, tokens, stop) -> None:
    out = Decoded(list(before), token_logprobs=[-0.5] * len(before), logprob_sum=-0.5 * len(before))
    rules = StopCriteria(frozenset({0}), (WHISPER_GUARD, TokenBudget()))
    push_token(out, Row(max_tokens), token, -1.0, rules)
    assert (out.tokens, out.stop) == (tokens, stop)
    assert len(out.token_logprobs) == len(out.tokens)
    assert out.logprob_sum == -0.5 * len(before) - (0.0 if stop == "eos" else 1.0)  # cut tokens still count


def test_suppress_tokens_first_step_then_every_step() -> None:
    every = torch.tensor([False, True, False])
    first = torch.tensor([True, True, False])
    f = SuppressTokens(every, first)
    assert f(torch.zeros(1, 3), 0).isinf().tolist() == [[True, True, False]]
    assert f(torch.zeros(1, 3), 1).isinf().tolist() == [[False, True, False]]
    assert SuppressTokens(every)(torch.zeros(1, 3), 0).isinf().tolist() == [[False, True, False]]


# --------------------------------------------------------------------------- the loop, fake model

VOCAB = 10
EOS = 0


class ScriptedModel:
    """A fake step function: row ``r`` emits ``scripts[r]`` token by token; records every call."""

    def __init__(self, scripts: list[list[int]]) -> None:
        self.scripts = scripts
        self.calls: list[dict[str, Any]] = []
        self.prefill_rows: list[int] | None = None

    def logits(self, rows: list[int], t: int) -> torch.Tensor:
        out = torch.full((len(rows), VOCAB), -5.0)
        for i, r in enumerate(rows):
            script = self.scripts[r]
            out[i, script[t] if t < len(script) else EOS] = 5.0
        return out

    def prefill_logits(self, sel: torch.Tensor | None) -> torch.Tensor:
        rows = list(range(len(self.scripts))) if sel is None else sel.tolist()
        self.prefill_rows = rows
        return self.logits(rows, 0)

    def step(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
             past: tuple[list[int], int]) -> tuple[torch.Tensor, Any]:
        rows, t = past
        self.calls.append({"rows": list(rows), "ids": ids[:, 0].tolist(), "positions": positions[:, 0].tolist(),
                           "keys": allowed.shape[-1]})
        return self.logits(rows, t + 1), (rows, t + 1)


def select(past: tuple[list[int], int], sel: torch.Tensor) -> tuple[list[int], int]:
    rows, t = past
    return [rows[j] for j in sel.tolist()], t


def run(scripts: list[list[int]], budgets: list[int], compact: bool, prompts: list[int] | None = None):
    model = ScriptedModel(scripts)
    batch, _ = RaggedBatch.prefill([0] * len(scripts), prompts or [1] * len(scripts), pad_new="right")
    out = greedy_decode(model.step, (list(range(len(scripts))), 0), batch, [Row(b) for b in budgets],
                        model.prefill_logits, StopCriteria(frozenset({EOS}), (WHISPER_GUARD, TokenBudget())),
                        with_logprobs=True, select_rows=select if compact else None)
    return out, model


@pytest.mark.parametrize("compact", [True, False])
def test_greedy_stops_each_row_by_its_own_rule(compact: bool) -> None:
    scripts = [[3, 4, EOS], [5, 6, 7, 8, 9], [2] * 30, [1, 1]]
    out, model = run(scripts, budgets=[10, 3, 50, 0], compact=compact, prompts=[2, 1, 3, 1])
    assert [(d.tokens, d.stop) for d in out] == [([3, 4], "eos"), ([5, 6, 7], "cap"), ([2], "loop"), ([], "cap")]
    assert all(len(d.token_logprobs) == len(d.tokens) for d in out)
    assert out[2].logprob_sum < out[2].token_logprobs[0]  # the cut repeats still count in the sum
    assert model.prefill_rows == ([0, 1, 2] if compact else [0, 1, 2, 3])  # a row without budget costs nothing
    first = model.calls[0]
    assert first["ids"][:3] == [3, 5, 2] and first["positions"][:3] == [2, 1, 3]
    assert [c["keys"] for c in model.calls] == list(range(4, 4 + len(model.calls)))  # one column per step
    if compact:  # finished rows leave the batch: row 1 after its 3rd token, row 0 at its EOS
        assert [c["rows"] for c in model.calls] == [[0, 1, 2], [0, 1, 2]] + [[2]] * 9
    else:  # fixed shape: every row stays to the end
        assert all(c["rows"] == [0, 1, 2, 3] for c in model.calls) and len(model.calls) == 11


def test_greedy_with_no_budget_anywhere_runs_nothing() -> None:
    out, model = run([[1], [2]], budgets=[0, 0], compact=True)
    assert [(d.tokens, d.stop) for d in out] == [([], "cap"), ([], "cap")]
    assert model.prefill_rows is None and model.calls == []


# --------------------------------------------------------------------------- the loop, toy attention model


class ToyLM:
    """One causal attention layer with learned positions and a KV cache: enough to show ragged rows
    computing what they compute alone (float64, so equal means equal)."""

    def __init__(self, vocab: int = 17, dim: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(vocab, dim, generator=g, dtype=torch.float64)
        self.pos = torch.randn(64, dim, generator=g, dtype=torch.float64)
        self.wq, self.wk, self.wv = (torch.randn(dim, dim, generator=g, dtype=torch.float64) for _ in range(3))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple]:
        x = self.emb[ids] + self.pos[positions]  # [B, q, d]
        k, v = x @ self.wk, x @ self.wv
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        scores = (x @ self.wq) @ k.transpose(1, 2) + additive_mask(allowed, torch.float64)[:, 0]
        h = x + scores.softmax(-1) @ v
        return h @ self.emb.T, (k, v)  # logits after every input

    def step(self, ids, positions, allowed, past):
        logits, past = self.forward(ids, positions, allowed, past)
        return logits[:, -1], past

    @staticmethod
    def select(past, rows):
        return past[0][rows], past[1][rows]

    def decode(self, prompts: list[list[int]], budgets: list[int], pad: str) -> list[Decoded]:
        batch, prefill = RaggedBatch.prefill([0] * len(prompts), [len(p) for p in prompts], pad_new=pad)
        width = prefill.positions.shape[1]
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            at = width - len(p) if pad == "left" else 0
            ids[i, at:at + len(p)] = torch.tensor(p)
        logits, past = self.forward(ids, prefill.positions, prefill.allowed, None)
        last = logits[torch.arange(len(prompts)), prefill.last]  # each row's last real input
        return greedy_decode(self.step, past, batch, [Row(b) for b in budgets],
                             lambda sel: last if sel is None else last[sel],
                             StopCriteria(frozenset({0}), (TokenBudget(),)), select_rows=self.select)


@pytest.mark.parametrize("pad", ["left", "right"])
def test_ragged_rows_decode_as_they_do_alone(pad: str) -> None:
    lm = ToyLM()
    prompts = [[3, 4, 5, 6, 7], [8], [9, 10, 11], [12, 13]]
    budgets = [6, 9, 3, 12]
    together = lm.decode(prompts, budgets, pad)
    alone = [lm.decode([p], [b], pad)[0] for p, b in zip(prompts, budgets, strict=True)]
    assert [d.tokens for d in together] == [d.tokens for d in alone]
    assert [d.stop for d in together] == [d.stop for d in alone]
    assert len({len(d.tokens) for d in together}) > 1  # rows really finished at different steps


# --------------------------------------------------------------------------- traces (also used to record)


def whisper_trace() -> dict[str, Any]:
    """Partials and finals of Whisper tiny.en on three dev clips (plus one with a context), batched together."""
    from streaming.evaluation import dev_clips
    from streaming.models.options import WhisperDecodingOptions
    from streaming.models.whisper import WhisperBackend

    # Partials over the full 30 s window, as when the reference was recorded.
    backend = WhisperBackend.from_embedded("tiny.en", decoding=WhisperDecodingOptions(partial_window_s=0.0,
                                                                                   quantize="none"))
    clips = {c.id: c.load() for c in dev_clips() if c.id in WHISPER_CLIPS}
    jobs = [(cid, UtteranceOptions(word_timestamps=(cid == "jfk"))) for cid in WHISPER_CLIPS]
    jobs.append(("jfk", UtteranceOptions(context="Americans, country")))
    states = [backend.new_utterance(opts) for _, opts in jobs]
    chunk = int(STEP_S * SAMPLE_RATE_HZ)
    steps: list[list[dict[str, Any]]] = []
    longest = max(len(clips[cid]) for cid, _ in jobs)
    for start in range(0, longest, chunk):
        live = [(st, clips[cid]) for st, (cid, _) in zip(states, jobs, strict=True) if start < len(clips[cid])]
        for st, audio in live:
            st.append_audio(audio[start:start + chunk])
        hyps = backend.step([st for st, _ in live])
        steps.append([{"stable": h.stable_text, "unstable": h.unstable_text, "tokens": h.stats["tokens"],
                       "stop": h.stats["stop"]} for h in hyps])
    finals = [{"text": f.text, "stop": f.stats["stop"], "tokens": f.stats["tokens"],
               "words": [[w.word, w.start_s, w.end_s, w.probability] for w in f.words or []]}
              for f in backend.finalize(states)]
    return {"steps": steps, "finals": finals}


def random_whisper_trace() -> dict[str, Any]:
    """A random 2-layer Whisper (real English tokenizer) on noise and speech: its decodes hit the caps and loops."""
    from streaming.evaluation import dev_clips
    from streaming.models.embedded import EMBEDDED_MODELS
    from streaming.models.options import WhisperDecodingOptions
    from streaming.models.whisper import WhisperBackend
    from tests.helpers import random_whisper_assets

    assets = random_whisper_assets(EMBEDDED_MODELS["tiny.en"].sources().tokenizer_json)
    backend = WhisperBackend(assets, decoding=WhisperDecodingOptions(partial_window_s=0.0, quantize="none"))
    rng = np.random.default_rng(0)
    speech = dev_clips()[0].load()
    audios = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8_000, 32_000, 64_000)] + [speech]
    options = [UtteranceOptions(), UtteranceOptions(context="Gutenberg"), UtteranceOptions(),
               UtteranceOptions(word_timestamps=True)]
    states = [backend.new_utterance(o) for o in options]
    steps: list[list[dict[str, Any]]] = []
    for fraction in (0.5, 1.0):
        for st, audio in zip(states, audios, strict=True):
            st.append_audio(audio[st.num_samples:int(fraction * len(audio))])
        steps.append([{"stable": h.stable_text, "unstable": h.unstable_text, "tokens": h.stats["tokens"],
                       "stop": h.stats["stop"]} for h in backend.step(states)])
    finals = [{"text": f.text, "stop": f.stats["stop"], "tokens": f.stats["tokens"],
               "avg_logprob": f.stats["avg_logprob"], "no_speech_prob": f.stats["no_speech_prob"],
               "words": [[w.word, w.start_s, w.end_s, w.probability] for w in f.words or []]}
              for f in backend.finalize(states)]
    return {"steps": steps, "finals": finals}


def qwen3_trace(repetition_guard: bool) -> dict[str, Any]:
    """Steps and finals of the tiny random Qwen3-ASR on real speech: three ragged utterances in one batch."""
    from streaming.evaluation import dev_clips
    from streaming.models.qwen3_asr import Qwen3ASRBackend, random_model

    model, tok = random_model("tiny", seed=0)
    with torch.no_grad():  # as tests/test_qwen3_asr.py: sharper weights make the greedy output vary
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    backend = Qwen3ASRBackend(model, tok, repetition_guard=repetition_guard, max_new_tokens_per_step=24)
    speech = np.concatenate([c.load() for c in dev_clips()[:3]])
    options = [UtteranceOptions(window_s=1), UtteranceOptions(window_s=2, context="hello world"),
               UtteranceOptions(window_s=4, language="en")]
    states = [backend.new_utterance(o) for o in options]
    offsets = [0, 3 * SAMPLE_RATE_HZ, 7 * SAMPLE_RATE_HZ]
    chunks = [5920, 17600, 800, 14400]  # uneven arrival, different for every row
    steps: list[list[dict[str, Any]]] = []
    for k in range(8):
        for i, st in enumerate(states):
            n = chunks[(k + i) % len(chunks)]
            start = offsets[i] + len(st.audio)
            st.append_audio(speech[start:start + n])
        hyps = backend.step(states)
        steps.append([{"stable": h.stable_text, "unstable": h.unstable_text, "language": h.language,
                       "decoded": h.stats.get("decoded_tokens"), "stable_ids": list(st.agreement.stable)}
                      for h, st in zip(hyps, states, strict=True)])
    finals = [{"text": f.text, "language": f.language, "tokens": f.stats["tokens"]}
              for f in backend.finalize(states)]
    return {"steps": steps, "finals": finals}


def traces() -> dict[str, Any]:
    """Every trace, single-threaded (thread count changes float reduction order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"qwen3": qwen3_trace(True), "qwen3_no_guard": qwen3_trace(False),
                "random_whisper": random_whisper_trace(), "whisper": whisper_trace()}
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_both_backends_decode_as_before_the_shared_loop() -> None:
    """Whisper tiny.en partials/finals/word times and the tiny Qwen3's tokens equal the recorded reference."""
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    got = json.loads(json.dumps(traces()))  # the same float round trip as the recording
    for name in reference:
        assert got[name] == reference[name], name


if __name__ == "__main__":
    # Record: .venv/bin/python -m tests.test_decoding record
    if sys.argv[1:] == ["record"]:
        REFERENCE.write_text(json.dumps(traces(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
