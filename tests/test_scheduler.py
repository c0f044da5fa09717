"""The batching policy, pure: tables of requests on a fake clock -> the batches it picks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.scheduler import Backlog, Requested, Scheduler, WorkKind

P, F = WorkKind.PARTIAL, WorkKind.FINAL


def make(*utterances: tuple[str, str], samples: int = 16_000, **kw) -> Scheduler:
    """A scheduler with ``(key, group)`` utterances open, each fed ``samples``."""
    sched = Scheduler(now_s=0.0, **kw)
    for key, group in utterances:
        sched.open(key, group)
        sched.feed(key, samples)
    return sched


def run(sched: Scheduler, now_s: float, cost_s: float = 0.1, failed=()) -> tuple[str, list] | None:
    """Take the next batch at ``now_s`` and finish it ``cost_s`` later: (kind, keys) or None."""
    batch = sched.next_batch(now_s)
    if batch is None:
        return None
    sched.done(batch, cost_s, failed, now_s + cost_s)
    return batch.kind.value, list(batch.keys)


def drain(sched: Scheduler, now_s: float = 0.0, cost_s: float = 0.1) -> list[tuple[str, list]]:
    out = []
    while (step := run(sched, now_s, cost_s)) is not None:
        out.append(step)
        now_s += cost_s
    return out


# ---- order and fairness ----------------------------------------------------------------------

@pytest.mark.parametrize(("requests", "max_batch", "expected"), [
    # finals first, whatever the order they were asked in
    ([("a", P), ("b", P), ("c", F)], 8, [("final", ["c"]), ("partial", ["a", "b"])]),
    ([("a", P), ("b", F), ("c", P), ("d", F)], 8, [("final", ["b", "d"]), ("partial", ["a", "c"])]),
    # at most max_batch, oldest first within a kind (each its own group here)
    ([("a", F), ("b", F), ("c", F)], 2, [("final", ["a", "b"]), ("final", ["c"])]),
    ([("a", P), ("b", P), ("c", P), ("d", F)], 2,
     [("final", ["d"]), ("partial", ["a", "b"]), ("partial", ["c"])]),
])
def test_finals_before_partials_then_oldest_first(requests, max_batch, expected):
    sched = make(*[(key, key) for key, _ in requests], max_batch=max_batch)
    for i, (key, kind) in enumerate(requests):
        sched.request(key, kind, i * 0.01)
    assert drain(sched, now_s=0.1) == expected


@pytest.mark.parametrize(("max_batch", "expected"), [
    # the flooding group gets one turn per round; calm asked last but goes second
    (1, [["f0"], ["c0"], ["f1"], ["f2"], ["f3"]]),
    # one item per group first (calm included), then the batch is filled oldest first
    (3, [["f0", "c0", "f1"], ["f2", "f3"]]),
])
def test_a_flooding_group_gets_one_turn_per_round(max_batch, expected):
    flood = [(f"f{i}", "flood") for i in range(4)]
    sched = make(*flood, ("c0", "calm"), max_batch=max_batch)
    for i, (key, _) in enumerate(flood):
        sched.request(key, F, i * 0.01)
    sched.request("c0", F, 0.5)
    assert [keys for _, keys in drain(sched, now_s=1.0)] == expected


def test_round_robin_counts_turns_across_groups_not_requests():
    """Three groups, one flooding: every round serves each waiting group once."""
    sched = make(*[(f"x{i}", "x") for i in range(3)], ("y0", "y"), ("y1", "y"), ("z0", "z"), max_batch=1)
    for i, key in enumerate(["x0", "x1", "x2", "y0", "y1", "z0"]):
        sched.request(key, F, i * 0.01)
    order = [keys[0] for _, keys in drain(sched, now_s=1.0)]
    assert order == ["x0", "y0", "z0", "x1", "y1", "x2"]


# ---- batch sizing ----------------------------------------------------------------------------

@pytest.mark.parametrize(("measured_item_s", "partial_batch_s", "limit"), [
    (0.0, 0.5, 8),    # not measured yet: max_batch
    (0.3, 0.5, 1),    # one item already takes most of the budget
    (0.1, 0.5, 5),
    (0.01, 0.5, 8),   # cheap (a GPU): capped by max_batch
    (2.0, 0.5, 1),    # never below one
])
def test_partial_batches_sized_from_measured_cost(measured_item_s, partial_batch_s, limit):
    keys = [(f"u{i}", f"g{i}") for i in range(10)]
    sched = make(*keys, max_batch=8, partial_batch_s=partial_batch_s)
    if measured_item_s:
        sched.request("u0", P, 0.0)
        assert run(sched, 0.0, cost_s=measured_item_s) == ("partial", ["u0"])
    for key, _ in keys:
        sched.request(key, P, 1.0)
    assert sched.batch_limit(P) == limit
    assert sched.batch_limit(F) == 8  # finals always take max_batch
    assert len(sched.next_batch(10.0).items) == min(limit, 10)


def test_item_cost_is_a_moving_average_per_kind():
    sched = make(("a", "a"), ("b", "b"))
    for cost_s, expected in [(0.4, 0.2), (0.8, 0.7 * 0.2 + 0.3 * 0.4)]:
        sched.request("a", P, 0.0)
        sched.request("b", P, 0.0)
        run(sched, 0.0, cost_s=cost_s)
        assert sched.item_s(P) == pytest.approx(expected)
    assert sched.item_s(F) == 0.0
    sched.request("a", F, 1.0)
    run(sched, 1.0, cost_s=0.5)
    assert sched.item_s(F) == pytest.approx(0.5)


# ---- stale and duplicate work ----------------------------------------------------------------

def test_one_waiting_partial_per_utterance():
    sched = make(("a", "a"))
    assert sched.request("a", P, 0.0).status is Requested.QUEUED
    assert sched.request("a", P, 0.1).status is Requested.JOINED
    assert sched.shed.coalesced == 1
    batch = sched.next_batch(0.2)
    assert batch.items[0].waited_s == pytest.approx(0.2)  # the first request's age: it was not renewed
    # While it runs, a new request waits for the next batch, not this one.
    sched.feed("a", 8_000)
    assert sched.request("a", P, 0.3).status is Requested.QUEUED
    assert sched.next_batch(0.3) is None
    sched.done(batch, 0.2, [], 0.4)
    assert [item.samples for item in sched.next_batch(0.4).items] == [8_000]  # all audio fed meanwhile


def test_a_final_drops_the_waiting_partial_and_later_partials_are_stale():
    sched = make(("a", "a"), ("b", "b"))
    sched.request("a", P, 0.0)
    outcome = sched.request("a", F, 0.1)
    assert outcome.status is Requested.QUEUED and outcome.dropped_partial
    assert sched.request("a", P, 0.2).status is Requested.STALE
    assert sched.request("a", F, 0.2).status is Requested.JOINED   # a second final shares the first
    assert sched.shed.dropped == 2
    assert drain(sched, now_s=0.3) == [("final", ["a"])]            # no partial of a is ever decoded
    assert "a" not in sched and "b" in sched                        # the final closed the utterance


def test_a_final_while_its_partial_runs_waits_for_it_and_takes_the_new_audio():
    sched = make(("a", "a"))
    sched.request("a", P, 0.0)
    partial = sched.next_batch(0.0)
    sched.feed("a", 4_000)
    assert not sched.request("a", F, 0.1).dropped_partial   # the running partial is not stale work
    assert sched.next_batch(0.1) is None                    # one batch per utterance at a time
    sched.done(partial, 0.2, [], 0.2)
    final = sched.next_batch(0.2)
    assert (final.kind, [i.samples for i in final.items]) == (F, [4_000])


def test_samples_are_counted_per_batch():
    sched = make(("a", "a"), samples=0)
    for now_s, fed in [(0.0, 16_000), (1.0, 8_000), (2.0, 0)]:
        sched.feed("a", fed)
        sched.request("a", P, now_s)
        batch = sched.next_batch(now_s)
        assert [item.samples for item in batch.items] == [fed]
        sched.done(batch, 0.1, [], now_s + 0.1)


def test_failed_items_close_their_utterance_and_measure_nothing_when_all_fail():
    sched = make(("a", "a"), ("b", "b"))
    sched.request("a", P, 0.0)
    sched.request("b", P, 0.0)
    batch = sched.next_batch(0.0)
    assert sched.done(batch, 0.4, ["b"], 0.4) == ["b"]
    assert "a" in sched and "b" not in sched
    assert sched.item_s(P) == pytest.approx(0.2)            # half failed: still a measurement
    sched.request("a", P, 1.0)
    assert sched.done(sched.next_batch(1.0), 9.0, ["a"], 10.0) == ["a"]
    assert sched.item_s(P) == pytest.approx(0.2)            # all failed: no measurement


def test_discarded_while_running_is_left_out_of_done():
    sched = make(("a", "a"))
    sched.request("a", F, 0.0)
    batch = sched.next_batch(0.0)
    assert sched.discard("a") and not sched.discard("a")
    sched.open("a", "a")  # a new utterance of the same key is not the one that ran
    assert sched.done(batch, 0.1, [], 0.1) == []
    assert "a" in sched


@pytest.mark.parametrize(("call", "error"), [
    (lambda s: s.open("a", "g"), ValueError),
    (lambda s: s.request("nope", P, 0.0), KeyError),
    (lambda s: s.feed("a", -1), ValueError),
    (lambda s: Scheduler(max_batch=0), ValueError),
    (lambda s: Scheduler(partial_shed_s=0), ValueError),
])
def test_bad_calls_raise_clear_errors(call, error):
    sched = make(("a", "g"))
    with pytest.raises(error):
        call(sched)
    assert sched.feed("gone", 10) is False  # audio for a finished utterance is not an error


# ---- partial degradation under overload ------------------------------------------------------

def overloaded(shed_s: float = 1.0) -> Scheduler:
    """Utterance f's final has waited 1.5 s (the worker was busy); p has a partial asked at 1.2 s."""
    sched = make(("f", "f"), ("p", "p"), ("q", "q"), partial_shed_s=shed_s)
    sched.request("f", F, 0.0)
    sched.request("p", P, 1.2)
    return sched


def test_finals_never_wait_for_partials_even_when_shedding():
    sched = overloaded()
    assert sched.shedding(1.5)
    assert run(sched, 1.5) == ("final", ["f"])


@pytest.mark.parametrize(("now_s", "runs", "deferred"), [
    (1.6, None, 1),                     # shedding until 1.5 + 1.0 and p waited only 0.4 s: held
    (2.2, ("partial", ["p"]), 0),       # p has waited 1.0 s: it runs (with all its audio)
    (2.7, ("partial", ["p"]), 0),       # shedding over
])
def test_partials_are_held_until_they_waited_the_shed_time(now_s, runs, deferred):
    sched = overloaded()
    run(sched, 1.5, cost_s=0.0)      # the late final: overload seen at 1.5
    assert run(sched, now_s) == runs
    assert sched.shed.deferred == deferred


def test_the_worker_is_told_when_a_held_partial_may_run():
    sched = overloaded()
    run(sched, 1.5, cost_s=0.0)
    sched.request("q", P, 1.9)
    assert sched.next_batch(1.6) is None
    assert sched.next_wake_s(1.6) == pytest.approx(2.2)   # p's turn comes first
    assert run(sched, 2.2) == ("partial", ["p"])
    assert sched.next_wake_s(2.3) == pytest.approx(2.5)   # then shedding ends before q's 2.9
    assert sched.next_wake_s(3.0) is None                 # not shedding: nothing held
    assert make(("a", "a")).next_wake_s(0.0) is None


def test_a_held_partial_coalesces_its_requests_and_a_final_drops_it():
    sched = overloaded()
    run(sched, 1.5, cost_s=0.0)
    sched.next_batch(1.6)
    sched.feed("p", 16_000)
    assert sched.request("p", P, 1.8).status is Requested.JOINED
    assert sched.request("p", F, 1.9).dropped_partial
    assert run(sched, 1.9) == ("final", ["p"])            # the final goes at once, shedding or not
    assert (sched.shed.coalesced, sched.shed.deferred, sched.shed.dropped) == (1, 1, 1)


@pytest.mark.parametrize(("waiting_finals", "final_item_s", "final_age_s", "sheds"), [
    (1, 0.0, 0.5, False),   # a final waiting briefly: normal
    (1, 0.0, 1.01, True),   # the oldest final waited more than partial_shed_s
    (3, 0.3, 0.0, False),   # 0.9 s of final work ahead
    (4, 0.3, 0.0, True),    # 1.2 s of final work ahead: shed before any final is late
    (0, 0.9, 0.0, False),   # partials only never trigger shedding
])
def test_what_counts_as_overload(waiting_finals, final_item_s, final_age_s, sheds):
    keys = [(f"u{i}", f"g{i}") for i in range(6)]
    sched = make(*keys)
    if final_item_s:
        sched.request("u5", F, 0.0)
        run(sched, 0.0, cost_s=final_item_s)
    for key, _ in keys[:waiting_finals]:
        sched.request(key, F, 10.0)
    sched.request("u4", P, 10.0)  # partials waiting do not count
    now_s = 10.0 + final_age_s
    assert sched.shedding(now_s) is sheds
    assert sched.load(now_s).shedding is sheds


def test_shedding_lasts_the_shed_time_after_the_overload_ends():
    sched = make(("f", "f"), ("p", "p"), partial_shed_s=0.5)
    sched.request("f", F, 0.0)
    assert not sched.shedding(0.5) and sched.shedding(0.51)
    run(sched, 0.6, cost_s=0.1)        # the final goes; overload last seen at 0.6
    sched.request("p", P, 0.7)
    assert sched.shedding(1.0) and sched.next_batch(1.0) is None
    assert not sched.shedding(1.11)
    assert run(sched, 1.11) == ("partial", ["p"])


# ---- load figures ----------------------------------------------------------------------------

@pytest.mark.parametrize(("batches", "now_s", "busy_fraction"), [
    ([], 5.0, 0.0),
    ([(0.0, 1.0)], 2.0, 0.5),                    # younger than the window: over its age
    ([(0.0, 5.0)], 10.0, 0.5),
    ([(0.0, 5.0), (6.0, 9.0)], 10.0, 0.8),
    ([(0.0, 5.0)], 14.0, 0.1),                   # window 4..14: one second of it was busy
    ([(0.0, 5.0)], 20.0, 0.0),                   # left the window
    ([(0.0, 10.0), (10.0, 20.0)], 20.0, 1.0),
])
def test_busy_fraction_over_the_window(batches, now_s, busy_fraction):
    sched = make(("a", "a"), window_s=10.0)
    for start_s, end_s in batches:
        sched.request("a", P, start_s)
        batch = sched.next_batch(start_s)
        sched.done(batch, end_s - start_s, [], end_s)
    assert sched.busy_fraction(now_s) == pytest.approx(busy_fraction)
    assert sched.load(now_s).busy_fraction == pytest.approx(busy_fraction)


def test_the_running_batch_counts_as_busy():
    sched = make(("a", "a"), window_s=10.0)
    sched.request("a", F, 0.0)
    sched.next_batch(6.0)
    assert sched.busy_fraction(10.0) == pytest.approx(0.4)
    assert sched.load(10.0).running == 1


def test_load_figures():
    sched = make(("a", "s1"), ("b", "s1"), ("c", "s2"), ("d", "s3"))
    sched.request("c", P, 0.0)
    run(sched, 0.0, cost_s=0.2)        # partial item 0.2 s
    sched.request("d", F, 0.0)
    run(sched, 0.0, cost_s=0.5)        # final item 0.5 s; d is closed
    sched.request("a", F, 1.0)
    sched.request("b", P, 1.5)
    sched.request("c", P, 2.0)
    load = sched.load(3.0)
    assert (load.final_wait_s, load.partial_wait_s) == (pytest.approx(2.0), pytest.approx(1.5))
    assert (load.pending_finals, load.pending_partials, load.running) == (1, 2, 0)
    assert (load.final_item_s, load.partial_item_s) == (pytest.approx(0.5), pytest.approx(0.2))
    assert load.work_ahead_s == pytest.approx(0.5 + 2 * 0.2)
    assert (load.utterances, load.groups) == (3, 2)
    assert sched.oldest_wait_s(F, 3.0) == pytest.approx(2.0) and sched.pending == 3


def test_backlog_of_a_group():
    sched = make(("a", "s1"), ("b", "s1"), ("c", "s2"))
    assert sched.backlog("s1") == Backlog(0, 0.0)          # audio without a request: just buffered
    sched.request("a", P, 0.0)
    sched.request("b", F, 0.0)
    assert sched.backlog("s1") == Backlog(1, 2.0)
    batch = sched.next_batch(0.0)                          # b's final runs: taken audio is not ahead
    assert batch.keys == ("b",) and sched.backlog("s1") == Backlog(1, 1.0)
    sched.done(batch, 0.1, [], 0.1)
    assert sched.backlog("s1") == Backlog(0, 1.0) and sched.backlog("s2") == Backlog(0, 0.0)


# ---- invariants under any sequence of calls ---------------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["feed", "partial", "final", "discard", "open", "step"]),
                         st.integers(0, 5), st.integers(0, 2)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_invariants_hold_for_any_sequence(ops):
    sched = Scheduler(max_batch=3, now_s=0.0)
    now_s, opened, running, fed = 0.0, set(), None, {}
    for op, n, group in ops:
        key = f"u{n}"
        now_s += 0.3
        if op == "open" and key not in sched:
            sched.open(key, group)
            opened.add(key)
            fed[key] = 0
        elif op == "feed" and sched.feed(key, 100):
            fed[key] += 100
        elif op in ("partial", "final") and key in sched:
            sched.request(key, P if op == "partial" else F, now_s)
        elif op == "discard":
            sched.discard(key)
        elif op == "step":
            if running is not None:
                sched.done(running, 0.2, [], now_s)
                running = None
            finals_ready = sched.load(now_s).pending_finals
            running = sched.next_batch(now_s)
            if running is not None:
                assert 1 <= len(running.items) <= 3
                assert len(set(running.keys)) == len(running.keys)
                if finals_ready:
                    assert running.kind is F   # never a partial batch while a final is ready
                for item in running.items:
                    assert item.samples == fed[item.key]  # every sample fed is handed over once
                    fed[item.key] = 0
        load = sched.load(now_s)
        assert 0.0 <= load.busy_fraction <= 1.0
        assert load.pending_finals + load.pending_partials == sched.pending
        assert load.final_wait_s >= 0 and load.partial_wait_s >= 0
