"""Admission by capacity, sans I/O: capacity from costs, the load gate's hysteresis, decisions (fake clock)."""

from dataclasses import dataclass, replace

import pytest

from streaming.capacity import (Admission, CapacityPolicy, Costs, LoadGate, capacity_from_costs, load_at,
                                partial_batch_size)


@dataclass
class Load:
    """A hand-made ``EngineLoad``: the figures ``Engine.load()`` reports."""

    busy_fraction: float = 0.0
    final_wait_s: float = 0.0
    partial_wait_s: float = 0.0
    pending_finals: int = 0
    pending_partials: int = 0
    final_item_s: float = 0.0
    partial_item_s: float = 0.0
    utterances: int = 0
    groups: int = 0


IDLE = Load()
POLICY = CapacityPolicy()


# ---- capacity from costs --------------------------------------------------------------------------

@pytest.mark.parametrize("costs,streams,limited_by", [
    # tiny.en on 2 quiet cores is about this: partial 150 ms, batch of 3 in 330 ms, final 250 ms.
    (Costs(0.15, 0.25, batch=3, partial_batch_s=0.33), 5, "busy"),
    # The same without batching gains (only batch 1 timed).
    (Costs(0.15, 0.25), 4, "busy"),
    # Slower partials: a batch of two no longer fits in partial_batch_s, so no batching gain.
    (Costs(0.3, 0.4, batch=3, partial_batch_s=0.8), 2, "busy"),
    # A final that alone takes longer than the latency target: still one stream, said so.
    (Costs(0.1, 2.0), 1, "latency"),
    # A model too slow even for one stream still serves one.
    (Costs(2.0, 3.0), 1, "busy"),
    # A fast GPU-like model hits the hard cap.
    (Costs(0.01, 0.02, batch=3, partial_batch_s=0.012), 32, "max_streams"),
])
def test_capacity_from_costs(costs, streams, limited_by):
    estimate = capacity_from_costs(costs, POLICY)
    assert (estimate.streams, estimate.limited_by) == (streams, limited_by)
    if limited_by == "busy" and streams > 1:
        assert estimate.busy_fraction <= POLICY.max_busy_fraction
        assert load_at(costs, streams + 1, POLICY)[1] > POLICY.max_busy_fraction


def test_busy_formula():
    """busy = streams × (partial step of the batch / batch / step_s + final / utterance_s)."""
    costs = Costs(0.2, 0.3, batch=3, partial_batch_s=0.35)  # marginal 75 ms per extra utterance
    batch, busy, latency_s = load_at(costs, 2, POLICY)
    assert batch == 2
    assert busy == pytest.approx(2 * (0.275 / 2 / 1.0 + 0.3 / 6.0))
    assert latency_s == pytest.approx(0.275 + 0.3)


@pytest.mark.parametrize("streams,expected", [(1, 1), (2, 2), (4, 4), (5, 5), (6, 5), (20, 5)])
def test_partial_batch_fits_in_partial_batch_s(streams, expected):
    costs = Costs(0.2, 0.3, batch=3, partial_batch_s=0.34)  # 70 ms per extra utterance: 5 fit in 0.5 s
    assert partial_batch_size(costs, streams, POLICY) == expected


def test_capacity_grows_with_looser_targets_and_shrinks_with_short_steps():
    costs = Costs(0.1, 0.2)
    base = capacity_from_costs(costs, POLICY).streams
    assert capacity_from_costs(costs, replace(POLICY, max_busy_fraction=1.0)).streams > base
    assert capacity_from_costs(costs, replace(POLICY, step_s=0.5)).streams < base


@pytest.mark.parametrize("bad", [dict(partial_s=0, final_s=1), dict(partial_s=1, final_s=-1),
                                 dict(partial_s=float("nan"), final_s=1), dict(partial_s=1, final_s=1, batch=3)])
def test_costs_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        Costs(**bad)


# ---- the load gate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("load,healthy,why", [
    (IDLE, True, ""),
    (Load(busy_fraction=0.84), True, ""),
    (Load(busy_fraction=0.85), False, "model busy 85%"),
    (Load(final_wait_s=0.75), False, "a final has waited 0.75 s"),
    (Load(final_wait_s=0.7), True, ""),
    (Load(partial_wait_s=1.5), False, "a partial has waited 1.50 s"),
])
def test_gate_closes_at_once(load, healthy, why):
    gate = LoadGate(POLICY)
    gate.observe(load, now_s=0.0)
    assert gate.healthy is healthy
    assert gate.reason.startswith(why)


def test_gate_reopens_only_after_the_load_stays_low():
    gate = LoadGate(POLICY)
    steps = [  # (now_s, load, healthy afterwards)
        (0.0, Load(busy_fraction=0.9), False),
        (1.0, Load(busy_fraction=0.8), False),   # under the limit but not by the margin: stays closed
        (2.0, Load(busy_fraction=0.7), False),   # clearly low: the hold starts
        (4.0, Load(busy_fraction=0.7), False),   # 2 s of 3
        (4.5, Load(busy_fraction=0.8), False),   # back up: the hold starts again later
        (5.0, Load(busy_fraction=0.6), False),
        (7.9, Load(busy_fraction=0.6), False),
        (8.0, Load(busy_fraction=0.6), True),    # 3 s low: open
        (8.5, Load(busy_fraction=0.8), True),    # open again: only the limit itself closes it
        (9.0, Load(final_wait_s=1.0), False),
    ]
    for now_s, load, healthy in steps:
        gate.observe(load, now_s)
        assert gate.healthy is healthy, (now_s, load)


def test_gate_retry_after_covers_the_backlog_and_the_hold():
    gate = LoadGate(POLICY)
    gate.observe(Load(busy_fraction=0.9, pending_finals=10, final_item_s=0.4, pending_partials=5,
                      partial_item_s=0.2), now_s=0.0)
    assert gate.retry_after_s(0.0) == pytest.approx(5.0 + 3.0)  # 10 × 0.4 + 5 × 0.2 queued, then the hold
    gate = LoadGate(POLICY)
    gate.observe(Load(busy_fraction=1.0), now_s=0.0)  # nothing queued: the 10 s busy window must fall to 75 %
    assert gate.retry_after_s(0.0) == pytest.approx(2.5 + 3.0)
    gate.observe(Load(busy_fraction=0.5), now_s=1.0)  # low from here: what is left of the hold
    gate.observe(Load(busy_fraction=0.5), now_s=2.0)
    assert gate.retry_after_s(2.0) == pytest.approx(2.0)


# ---- decisions ----------------------------------------------------------------------------------------

def test_configured_capacity_admits_up_to_it_then_refuses_with_retry_after():
    admission = Admission(POLICY, configured=2)
    assert admission.source == "configured" and admission.capacity == 2
    assert admission.decide(0, 0.0).admit and admission.decide(1, 0.0).admit
    refused = admission.decide(2, 0.0)
    assert not refused.admit and "all 2 streams" in refused.reason
    assert refused.retry_after_s == pytest.approx(30.0)  # 60 s default session length / 2 in use


@pytest.mark.parametrize("closed_s,in_use,retry_s", [
    ([], 2, 30.0), ([], 8, 7.5), ([], 100, 1.0),        # no session closed yet: a 60 s guess; bounded below
    ([10.0], 2, 5.0), ([10.0, 10.0], 4, 2.5),            # sessions of 10 s: one of 4 ends in about 2.5 s
    ([3600.0], 1, 30.0),                                 # bounded above
])
def test_retry_after_from_session_lengths(closed_s, in_use, retry_s):
    admission = Admission(replace(POLICY, max_streams=200), configured=in_use)
    for duration_s in closed_s:
        admission.session_closed(duration_s)
    assert admission.decide(in_use, 0.0).retry_after_s == pytest.approx(retry_s)


def test_unhealthy_load_refuses_below_capacity_and_recovers():
    admission = Admission(POLICY, configured=4)
    admission.observe(Load(final_wait_s=2.0, pending_finals=3, final_item_s=0.5), now_s=0.0)
    refused = admission.decide(1, 0.0)
    assert not refused.admit and "final has waited" in refused.reason
    assert refused.retry_after_s == pytest.approx(4.5)  # 1.5 s of queued finals, then the 3 s hold
    assert admission.describe(1)["available"] == 0 and not admission.describe(1)["healthy"]
    for now_s in (1.0, 2.0, 3.0, 4.0):
        admission.observe(IDLE, now_s)
    assert admission.decide(1, 4.0).admit
    assert admission.describe(1)["available"] == 3


def test_an_unhealthy_load_never_refuses_the_first_stream():
    admission = Admission(POLICY, configured=4)
    admission.observe(Load(busy_fraction=1.0, final_wait_s=5.0), now_s=0.0)
    assert admission.decide(0, 0.0).admit
    assert not admission.decide(1, 0.0).admit


def test_configured_capacity_is_capped_and_never_recalibrated():
    admission = Admission(replace(POLICY, max_streams=3), configured=10)
    assert admission.capacity == 3
    for now_s in range(0, 60, 5):
        admission.observe(Load(partial_item_s=5.0, final_item_s=5.0), float(now_s))
    assert admission.capacity == 3


def test_measured_capacity_follows_sustained_live_costs_only():
    admission = Admission(POLICY, costs=Costs(0.15, 0.25))
    assert (admission.source, admission.capacity) == ("measured", 4)
    slow = Load(partial_item_s=0.3, final_item_s=0.5)  # live speech costs twice the probe: 2 streams
    fast = Load(partial_item_s=0.05, final_item_s=0.1)
    steps = [(0.0, slow, 4), (5.0, slow, 4), (9.0, fast, 4),  # a swing the other way restarts the hold
             (10.0, slow, 4), (19.0, slow, 4), (20.0, slow, 2),
             (21.0, IDLE, 2),                                   # nothing measured: no change
             (22.0, Load(partial_item_s=0.3, final_item_s=0.5), 2)]
    for now_s, load, capacity in steps:
        admission.observe(load, now_s)
        assert admission.capacity == capacity, now_s
    assert admission.describe(0)["estimate"]["busy_fraction"] <= POLICY.max_busy_fraction


def test_describe_has_the_info_fields():
    admission = Admission(POLICY, costs=Costs(0.15, 0.25, batch=3, partial_batch_s=0.33))
    info = admission.describe(2)
    assert info["streams"] == 5 and info["in_use"] == 2 and info["available"] == 3
    assert info["source"] == "measured"
    assert info["measured"] == {"partial_ms": 150.0, "final_ms": 250.0, "partial_batch": 3,
                                "partial_batch_ms": 330.0}
    assert Admission(POLICY, configured=3).describe(5)["available"] == 0


def test_admission_needs_a_capacity():
    with pytest.raises(ValueError):
        Admission(POLICY)
