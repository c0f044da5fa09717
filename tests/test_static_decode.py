"""Static KV slots: the fixed-shape decode gives the dynamic decoder's tokens; slots, buckets, CUDA graphs.

The tiny random Qwen3-ASR model in float32 runs the real layer code; its decoder weights are scaled up
so greedy tokens change from step to step (a sharp test of equality).
"""

from __future__ import annotations

import json

import pytest
import torch

from streaming.models.base import UtteranceOptions
from streaming.models.decoding import StopCriteria
from streaming.models.qwen3_asr import Qwen3ASRBackend, _DecodeRow, random_model
from streaming.models.qwen3_asr.slot_decoder import SlotRowDecoder
from streaming.models.qwen3_asr.static_decode import (
    KVPoolFullError,
    KVSlotPool,
    SlotDecoding,
    SlotOverflowError,
    SlotRow,
    StaticDecoder,
    bucket_for,
    length_buckets,
    slot_len_for,
    streams_that_fit,
)



def until(eos_ids) -> StopCriteria:
    """End of text or the row's budget (the shared loop's default rules)."""
    return StopCriteria(frozenset(eos_ids))


def tokens(decoded) -> list[list[int]]:
    return [d.tokens for d in decoded]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: on a shared 2-core machine, torch's second thread only adds contention (15x slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def backend() -> Qwen3ASRBackend:
    model, tok = random_model("tiny", seed=0)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return Qwen3ASRBackend(model, tok, repetition_guard=False)


def make_slots(backend: Qwen3ASRBackend, slots: int = 8, max_len: int = 256) -> SlotDecoding:
    len_buckets = tuple(sorted({b for b in (64, 128) if b < max_len} | {max_len}))
    return SlotDecoding(backend.decoder, backend.lm_head, max_streams=slots, max_len=max_len,
                        batch_buckets=(1, 2, 4), len_buckets=len_buckets)


def tails(backend: Qwen3ASRBackend, lengths: list[int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = backend.embed.weight.shape[1]
    return [torch.randn(n, hidden, generator=g) for n in lengths]


def dynamic_rounds(backend, rounds, eos_ids):
    """The backend's own batched dynamic decode over ``rounds`` of (tails, commits, budgets)."""
    states = [backend.new_utterance(UtteranceOptions()) for _ in rounds[0][0]]
    saved, backend.eos_ids = backend.eos_ids, eos_ids
    try:
        out = []
        for ts, commits, budgets in rounds:
            rows = [_DecodeRow(s, None, t, c, [], m) for s, t, c, m in zip(states, ts, commits, budgets)]
            out.append(backend._decode(rows))
        return out
    finally:
        backend.eos_ids = saved


def static_rounds(sd: SlotDecoding, slots, rounds, eos_ids):
    """The same rounds through the slots: each round's committed prefix stays in the slot."""
    committed = [0] * len(slots)
    out = []
    for ts, commits, budgets in rounds:
        rows = [SlotRow(s, committed[i], t, budgets[i]) for i, (s, t) in enumerate(zip(slots, ts))]
        out.append(tokens(sd.decode(rows, until(eos_ids))))
        committed = [c + k for c, k in zip(committed, commits)]
    return out


def ragged_rounds(backend):
    """Three steps of three rows: different tail lengths, commits and budgets."""
    return [(tails(backend, [5 + 7 * i + r for i in range(3)], seed=r), [2 + i + r for i in range(3)],
             [6, 9, 12]) for r in range(3)]


def test_static_tokens_equal_dynamic_for_ragged_rows(backend):
    rounds = ragged_rounds(backend)
    free_run = dynamic_rounds(backend, rounds, backend.eos_ids)
    # A token the model does emit becomes EOS, so rows stop at different times before their budgets.
    eos = {free_run[1][1][2]}
    want = dynamic_rounds(backend, rounds, eos)
    sd = make_slots(backend)
    slots = [sd.pool.alloc() for _ in range(3)]
    got = static_rounds(sd, slots, rounds, eos)
    assert got == want
    lengths = [len(t) for r in want for t in r]
    assert len(set(lengths)) >= 3 and min(lengths) < 6  # ragged stops, some by EOS
    assert all(len(t) for t in want[0])


def test_prefill_logits_match_dynamic(backend):
    ts = tails(backend, [3, 11, 7], seed=5)
    states = [backend.new_utterance(UtteranceOptions()) for _ in ts]
    rows = [_DecodeRow(s, None, t, 0, [], 1) for s, t in zip(states, ts)]
    want = backend._prefill(rows)[0]
    sd = make_slots(backend)
    got = sd.decoder.prefill([SlotRow(sd.pool.alloc(), 0, t, 1) for t in ts])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_slots_in_any_order_and_scattered(backend):
    """Rows may sit in any slots (idle ones between them): same tokens as packed slots."""
    rounds = ragged_rounds(backend)
    packed = make_slots(backend)
    want = static_rounds(packed, [packed.pool.alloc() for _ in range(3)], rounds, backend.eos_ids)
    sd = make_slots(backend)
    taken = [sd.pool.alloc() for _ in range(6)]
    assert taken == list(range(6))  # lowest first
    assert static_rounds(sd, [5, 0, 3], rounds, backend.eos_ids) == want


def test_freed_slot_reused_gives_same_result(backend):
    rounds = ragged_rounds(backend)
    sd = make_slots(backend, slots=3)
    slots = [sd.pool.alloc() for _ in range(3)]
    first = static_rounds(sd, slots, rounds, backend.eos_ids)
    for s in slots:
        sd.pool.free(s)
    reused = [sd.pool.alloc() for _ in range(3)]
    assert sorted(reused) == sorted(slots)  # the dirty slots themselves
    assert static_rounds(sd, reused[::-1], rounds, backend.eos_ids) == first


def test_idle_slot_kv_untouched_by_others_decoding(backend):
    sd = make_slots(backend)
    a, b = sd.pool.alloc(), sd.pool.alloc()
    sd.decode([SlotRow(a, 0, tails(backend, [9], 1)[0], 1)], until(backend.eos_ids))
    before = (sd.pool.keys[:, a, :, :9].clone(), sd.pool.values[:, a, :, :9].clone())
    sd.decode([SlotRow(b, 0, tails(backend, [20], 2)[0], 30)], until(backend.eos_ids))
    assert torch.equal(sd.pool.keys[:, a, :, :9], before[0])
    assert torch.equal(sd.pool.values[:, a, :, :9], before[1])


def test_pool_full_gives_clear_error_and_free_makes_room():
    pool = KVSlotPool(n_layers=1, kv_heads=1, head_dim=4, slots=2, max_len=8)
    assert [pool.alloc(), pool.alloc()] == [0, 1]
    with pytest.raises(KVPoolFullError, match=r"all 2 KV slots .*max_streams=2"):
        pool.alloc()
    pool.free(0)
    assert pool.alloc() == 0
    with pytest.raises(ValueError, match="not allocated"):
        pool.free(5)


def test_release_later_frees_at_next_alloc():
    pool = KVSlotPool(n_layers=1, kv_heads=1, head_dim=4, slots=1, max_len=8)
    slot = pool.alloc()
    pool.release_later(slot)
    assert pool.in_use == 0 and pool.alloc() == slot


def test_pool_write_places_prefill_kv_and_checks_room():
    pool = KVSlotPool(n_layers=2, kv_heads=2, head_dim=4, slots=2, max_len=8)
    k = [torch.full((2, 3, 4), float(layer + 1)) for layer in range(2)]
    pool.write(1, 2, k, [-t for t in k])
    assert torch.equal(pool.keys[1, 1, :, 2:5], k[1]) and torch.equal(pool.values[0, 1, :, 2:5], -k[0])
    assert float(pool.keys[:, 0].abs().sum()) == 0.0 and float(pool.keys[:, 1, :, :2].abs().sum()) == 0.0
    with pytest.raises(SlotOverflowError, match="needs 9 decoder positions, a KV slot holds 8"):
        pool.write(0, 6, k, k)


def test_tail_past_max_len_is_refused(backend):
    sd = make_slots(backend, max_len=64)
    with pytest.raises(SlotOverflowError, match="needs 70 decoder positions"):
        sd.decoder.prefill([SlotRow(sd.pool.alloc(), 60, tails(backend, [10], 0)[0], 4)])


def test_decode_budget_cut_to_slot_room(backend):
    sd = make_slots(backend, max_len=64)
    out = sd.decode([SlotRow(sd.pool.alloc(), 0, tails(backend, [60], 3)[0], 100)], until(()))
    assert len(out[0].tokens) == 64 - 60 + 1  # the last token is never written back, so it needs no room


@pytest.mark.parametrize("n, buckets, want", [(1, (1, 2, 4), 1), (3, (1, 2, 4), 4), (4, (1, 2, 4), 4),
                                              (129, (128, 256), 256)])
def test_bucket_for(n, buckets, want):
    assert bucket_for(n, buckets) == want


def test_bucket_for_too_big():
    with pytest.raises(ValueError, match="exceeds the largest bucket 4"):
        bucket_for(5, (1, 2, 4))


@pytest.mark.parametrize("max_len, want", [(128, (128,)), (300, (128, 256, 300)), (1024, (128, 256, 512, 1024))])
def test_length_buckets(max_len, want):
    assert length_buckets(max_len) == want


def test_batch_buckets_end_at_pool_size(backend):
    sd = make_slots(backend, slots=3)
    assert sd.decoder.batch_buckets == (1, 2, 3)
    assert sd.decoder.shape_for(3, 65) == (3, 128)
    with pytest.raises(ValueError, match="largest length bucket must be max_len"):
        StaticDecoder(backend.decoder, backend.lm_head, sd.pool, len_buckets=(64, 128))


def test_slot_len_for_sizes_a_minute_of_speech():
    n = slot_len_for(60.0, 12.0)
    assert n % 128 == 0 and n >= 320 + 13 * 60 + 16 + 12 * 60


@pytest.mark.parametrize("requested, slot_mib, free_mib, want", [
    (256, 220, 139_000, 256),  # 0.6B, a minute per slot, on an H200: all of them
    (256, 220, 24_000, 65),  # a 24 GB card: what fits in 60 % of it
    (4, 1, 1_000, 4),
])
def test_streams_that_fit(requested, slot_mib, free_mib, want):
    assert streams_that_fit(requested, slot_mib * 2**20, free_mib * 2**20) == want


def test_streams_that_fit_none_is_a_clear_error():
    with pytest.raises(MemoryError, match="one KV slot needs 220 MiB, only 100 MiB free"):
        streams_that_fit(8, 220 * 2**20, 100 * 2**20)


def test_slot_bytes_matches_the_allocated_pool():
    pool = KVSlotPool(n_layers=3, kv_heads=2, head_dim=8, slots=2, max_len=10, dtype=torch.bfloat16)
    assert KVSlotPool.slot_bytes(3, 2, 8, 10, torch.bfloat16) == pool.bytes_per_slot() == 2 * 3 * 2 * 11 * 8 * 2


def test_shared_rows_refused(backend):
    sd = make_slots(backend)
    slot = sd.pool.alloc()
    t = tails(backend, [4], 0)[0]
    with pytest.raises(ValueError, match="share a KV slot"):
        sd.decode([SlotRow(slot, 0, t, 2), SlotRow(slot, 0, t, 2)], until(()))


# --------------------------------------------------------------------------- CUDA only

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_backend(dtype: torch.dtype, **kw) -> Qwen3ASRBackend:
    model, tok = random_model("tiny", seed=0)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    kw.setdefault("kv_cache", "dynamic")
    return Qwen3ASRBackend(model, tok, device="cuda", dtype=dtype, repetition_guard=False, **kw)


@cuda
def test_cuda_graph_replay_equals_eager():
    be = cuda_backend(torch.float32)
    rounds = ragged_rounds(be)
    eager = SlotDecoding(be.decoder, be.lm_head, 8, 256, cuda_graphs=False, len_buckets=(64, 128, 256))
    graphs = SlotDecoding(be.decoder, be.lm_head, 8, 256, cuda_graphs=True, len_buckets=(64, 128, 256))
    slots = [[d.pool.alloc() for _ in range(3)] for d in (eager, graphs)]
    want = static_rounds(eager, slots[0], rounds, be.eos_ids)
    assert static_rounds(graphs, slots[1], rounds, be.eos_ids) == want
    assert graphs.graphs.captured  # the steps really were replays
    assert want == dynamic_rounds(be, rounds, be.eos_ids)


@cuda
def test_cuda_bf16_tokens_mostly_equal_float32():
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        be = cuda_backend(dtype)
        sd = SlotDecoding(be.decoder, be.lm_head, 8, 256, len_buckets=(64, 128, 256))
        rows = [SlotRow(sd.pool.alloc(), 0, t.to(dtype), 1) for t in tails(be, [5, 12, 19, 33], seed=7)]
        results.append(tokens(sd.decode(rows, until(()))))
    # Long greedy runs drift apart once one near-tie flips; the first token of each tail is compared.
    same = sum(a == b for a, b in zip(results[0], results[1]))
    assert same >= 3, results


# --------------------------------------------------------------------------- benchmark smoke


@pytest.mark.slow
def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    from benchmarks import qwen3_gpu

    rc = qwen3_gpu.main(["--arch", "tiny", "--device", "cpu", "--dtype", "float32", "--batch-sizes", "1", "2",
                         "--context", "40", "--iters", "3", "--streams", "2", "--seconds", "4", "--clip-s", "1.5",
                         "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "qwen3_gpu.json").read_text())
    modes = {r["mode"] for r in report["steps"]}
    assert modes == {"dynamic", "static"}  # no graphs without CUDA
    assert all(r["ms_median"] > 0 for r in report["steps"])
    run = report["streams"][0]
    assert run["streams"] == 2 and run["finals"] >= 2 and run["final_latency_s_p95"] > 0
    assert (tmp_path / "qwen3_gpu.png").stat().st_size > 0


# --------------------------------------------------------------------------- the backend on slots


def speech(seconds: float) -> list:
    from streaming.evaluation import dev_clips

    return [c.load()[: int(seconds * 16_000)] for c in dev_clips()[:3]]


def run_backend(backend: Qwen3ASRBackend, clips, chunk_s: list[float], n_steps: int):
    """Three utterances of different lengths stepped as one batch in uneven chunks, then finalized."""
    states = [backend.new_utterance(UtteranceOptions(window_s=w)) for w in (1, 2, 4)]
    pos, steps = [0] * len(states), []
    for k in range(n_steps):
        for i, (s, a) in enumerate(zip(states, clips)):
            n = int(chunk_s[(k + i) % len(chunk_s)] * 16_000)
            s.append_audio(a[pos[i]:pos[i] + n])
            pos[i] += n
        steps.append([(h.stable_text, h.unstable_text, h.stats.get("decoded_tokens")) for h in backend.step(states)])
    finals = backend.finalize(states)
    return steps, [(f.text, f.stats.get("tokens")) for f in finals]


def slotted_pair(backend: Qwen3ASRBackend, **kw) -> tuple[Qwen3ASRBackend, Qwen3ASRBackend]:
    """The same weights behind the dynamic cache and behind KV slots (short finals: a fast test)."""
    kw = dict(repetition_guard=False, max_tokens_per_audio_s=4.0, **kw)
    return (Qwen3ASRBackend(backend.model, backend.tokenizer, **kw),
            Qwen3ASRBackend(backend.model, backend.tokenizer, kv_cache="static", max_streams=4, **kw))


def pool_of(backend: Qwen3ASRBackend) -> KVSlotPool:
    return backend.row_decoder.pool


def test_backend_on_slots_equals_dynamic_backend(backend):
    dynamic, slotted = slotted_pair(backend)
    # CPU default ("auto"): the dynamic cache, so nothing changes for CI.
    assert not isinstance(dynamic.row_decoder, SlotRowDecoder) and isinstance(slotted.row_decoder, SlotRowDecoder)
    clips = speech(4.0)
    want = run_backend(dynamic, clips, [0.5, 0.9, 0.3], n_steps=6)
    assert run_backend(slotted, clips, [0.5, 0.9, 0.3], n_steps=6) == want
    assert pool_of(slotted).in_use == 0  # finalize gave every slot back
    assert any(f[0] or f[1] for f in want[1]) and any(any(h[2] for h in step) for step in want[0])


@pytest.mark.slow
def test_backend_on_slots_equals_dynamic_backend_long(backend):
    """Longer utterances, the repetition guard on, and every slot reused by the next run."""
    dynamic, slotted = slotted_pair(backend, window_s=2)
    dynamic.repetition_guard = slotted.repetition_guard = True
    clips = speech(9.0)
    want = run_backend(dynamic, clips, [0.5, 0.9, 0.3], n_steps=12)
    assert run_backend(slotted, clips, [0.5, 0.9, 0.3], n_steps=12) == want
    assert run_backend(slotted, clips, [0.5, 0.9, 0.3], n_steps=12) == want


def test_backend_slot_freed_when_utterance_dropped(backend):
    import gc

    slotted = Qwen3ASRBackend(backend.model, backend.tokenizer, repetition_guard=False, kv_cache="static",
                              max_streams=1)
    s = slotted.new_utterance(UtteranceOptions())
    s.append_audio(speech(2.0)[0])
    slotted.step([s])
    assert pool_of(slotted).in_use == 1
    del s
    gc.collect()
    t = slotted.new_utterance(UtteranceOptions())  # the only slot is free again: no KVPoolFullError
    t.append_audio(speech(2.0)[1])
    assert slotted.step([t])[0] is not None and pool_of(slotted).in_use == 1


def test_backend_more_utterances_than_slots_is_a_clear_error(backend):
    slotted = Qwen3ASRBackend(backend.model, backend.tokenizer, kv_cache="static", max_streams=1)
    states = [slotted.new_utterance(UtteranceOptions()) for _ in range(2)]
    for s, a in zip(states, speech(1.0)):
        s.append_audio(a)
    with pytest.raises(KVPoolFullError, match="max_streams=1"):
        slotted.step(states)


def test_backend_refuses_unknown_kv_cache(backend):
    with pytest.raises(ValueError, match="kv_cache must be auto, static or dynamic"):
        Qwen3ASRBackend(backend.model, backend.tokenizer, kv_cache="paged")


@cuda
def test_cuda_backend_defaults_to_slots_and_graphs_with_the_dynamic_results():
    dynamic = cuda_backend(torch.float32, max_tokens_per_audio_s=4.0)
    auto = Qwen3ASRBackend(dynamic.model, dynamic.tokenizer, device="cuda", dtype=torch.float32,
                           repetition_guard=False, max_tokens_per_audio_s=4.0, max_streams=8)
    assert isinstance(auto.row_decoder, SlotRowDecoder) and auto.row_decoder.slots.graphs is not None
    auto.warmup()  # captures every (batch, length) bucket
    assert len(auto.row_decoder.slots.graphs.captured) == 4 * len(auto.row_decoder.slots.decoder.len_buckets)
    clips = speech(4.0)
    assert run_backend(auto, clips, [0.5, 0.9, 0.3], n_steps=6) == run_backend(dynamic, clips, [0.5, 0.9, 0.3],
                                                                                n_steps=6)
