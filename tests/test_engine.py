"""The inference worker: batching, priorities, stale work, errors; with a stand-in model."""

import asyncio
import threading

import numpy as np
import pytest

from streaming.engine import Engine, EngineClosed
from streaming.models.base import UtteranceOptions
from tests.fakes import POISON, CountingBackend, poison_finals

SECOND = np.zeros(16000, np.float32)


@pytest.fixture
def engine_factory():
    engines = []

    def make(**kw):
        backend = CountingBackend(delay_s=kw.pop("delay_s", 0.05))
        engine = Engine(backend, **kw)
        engine.start()
        engines.append(engine)
        return engine, backend

    yield make
    for e in engines:
        e.stop()


async def test_requests_of_many_sessions_are_batched(engine_factory):
    engine, backend = engine_factory(max_batch=8, delay_s=0.2)
    for i in range(6):
        engine.open(i, UtteranceOptions())
        engine.feed(i, SECOND)
    finals = await asyncio.gather(*(engine.request_final(i) for i in range(6)))
    assert [f.text for f in finals] == ["w0 w1"] * 6
    assert max(n for kind, n in backend.batches) >= 5   # the first may have started alone
    assert engine.utterances == 0                        # finished utterances are released


async def test_finals_go_before_partials(engine_factory):
    engine, backend = engine_factory(max_batch=2, delay_s=0.1)
    for i in range(5):
        engine.open(i, UtteranceOptions())
        engine.feed(i, SECOND)
    partials = [engine.request_partial(i) for i in range(4)]
    final = engine.request_final(4)
    await final
    done_partials = sum(p.done() for p in partials)
    assert done_partials <= 2  # at most the batch already running when the final arrived
    await asyncio.gather(*partials)


async def test_audio_fed_while_waiting_is_included_and_stale_partial_dropped(engine_factory):
    engine, backend = engine_factory(delay_s=0.2)
    engine.open("a", UtteranceOptions())
    engine.feed("a", SECOND)
    engine.open("b", UtteranceOptions())
    engine.feed("b", SECOND)
    first = engine.request_partial("b")      # occupies the worker
    await asyncio.sleep(0.05)
    p = engine.request_partial("a")
    assert engine.request_partial("a") is p  # one pending partial per utterance
    engine.feed("a", SECOND)
    final = engine.request_final("a")        # the utterance ends: its pending partial is stale
    assert await p is None
    assert (await final).text == "w0 w1 w2 w3"
    await first
    assert (engine.stats.partials_coalesced, engine.stats.partials_dropped) == (1, 1)


async def test_partial_batches_sized_by_measured_cost(engine_factory):
    engine, backend = engine_factory(max_batch=8, delay_s=0.3, partial_batch_s=0.5)
    for i in range(4):
        engine.open(i, UtteranceOptions())
        engine.feed(i, SECOND)
    await engine.request_partial(0)           # measures ~0.3 s per item
    await asyncio.gather(*(engine.request_partial(i) for i in range(4)))
    assert [n for kind, n in backend.batches if kind == "step"][1:] == [1, 1, 1, 1]


async def test_discard_and_stop_fail_waiters(engine_factory):
    engine, backend = engine_factory(delay_s=0.3)
    engine.open("busy", UtteranceOptions())
    engine.feed("busy", SECOND)
    busy = engine.request_final("busy")
    await asyncio.sleep(0.05)
    engine.open("x", UtteranceOptions())
    fut = engine.request_final("x")
    engine.discard("x")
    with pytest.raises(EngineClosed):
        await fut
    with pytest.raises(EngineClosed):
        await engine.request_partial("never-opened")
    await busy


async def test_backend_errors_reach_the_waiters(engine_factory):
    engine, backend = engine_factory()

    def boom(states):
        raise RuntimeError("model exploded")

    backend.finalize = boom
    engine.open("a", UtteranceOptions())
    with pytest.raises(RuntimeError, match="exploded"):
        await engine.request_final("a")
    assert engine.stats.errors == 1
    # The worker survives.
    engine.open("b", UtteranceOptions())
    engine.feed("b", SECOND)
    assert (await engine.request_partial("b")).text == "w0 w1"


async def test_one_poisoned_utterance_fails_alone_in_its_batch(engine_factory):
    """A batch that raises is retried item by item: only the marked utterance fails."""
    engine, backend = engine_factory(max_batch=8, delay_s=0.0)
    poison_finals(backend)
    keys = [f"s{i}" for i in range(5)]
    for key in keys:
        engine.open(key, UtteranceOptions(context=POISON if key == "s2" else None), group=key)
        engine.feed(key, SECOND)
    futures = [engine.request_final(key) for key in keys]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(outcomes[2], RuntimeError)
    assert [o.text for i, o in enumerate(outcomes) if i != 2] == ["w0 w1"] * 4
    assert engine.stats.errors == 1
    assert engine.utterances == 0


async def test_round_robin_between_sessions_not_oldest_first(engine_factory):
    """A session with many finals queued gets one turn per batch, like every other session."""
    engine, backend = engine_factory(max_batch=1, delay_s=0.05)
    flood = [("flood", i) for i in range(6)]
    for key in flood:
        engine.open(key, UtteranceOptions(), group="flood")
        engine.feed(key, SECOND)
    flood_futures = [engine.request_final(key) for key in flood]
    await asyncio.sleep(0.01)  # the first flood final is running now
    engine.open(("calm", 0), UtteranceOptions(), group="calm")
    engine.feed(("calm", 0), SECOND)
    calm = engine.request_final(("calm", 0))
    order = []
    for name, fut in [("calm", calm)] + [(f"flood{i}", f) for i, f in enumerate(flood_futures)]:
        fut.add_done_callback(lambda _f, n=name: order.append(n))
    await asyncio.gather(calm, *flood_futures)
    # At most the running flood batch and one more go before the calm session's final.
    assert order.index("calm") <= 2, order


async def test_backlog_counts_a_sessions_waiting_work(engine_factory):
    engine, backend = engine_factory(delay_s=0.2)
    engine.open(("a", 0), UtteranceOptions(), group="a")
    engine.feed(("a", 0), SECOND)
    assert engine.backlog("a").finals == 0 and engine.backlog("a").audio_s == 0.0  # no request: just buffered
    partial = engine.request_partial(("a", 0))
    engine.open(("a", 1), UtteranceOptions(), group="a")
    engine.feed(("a", 1), SECOND)
    final = engine.request_final(("a", 1))
    assert engine.backlog("a").finals == 1
    assert engine.backlog("b").finals == 0
    await asyncio.gather(partial, final)
    assert engine.backlog("a") == engine.backlog("b")


class GatedBackend(CountingBackend):
    """Each backend call waits at a gate the test opens, so a test knows what runs when."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def _gate(self) -> None:
        self.started.set()
        assert self.release.wait(10), "the test never opened the gate"

    def step(self, states):
        self._gate()
        return super().step(states)

    def finalize(self, states):
        self._gate()
        return super().finalize(states)


@pytest.fixture
def gated_engine():
    backend = GatedBackend()
    engine = Engine(backend, max_batch=8, partial_shed_s=0.1)
    engine.start()
    yield engine, backend
    backend.release.set()
    engine.stop()


async def wait_for(predicate, timeout_s: float = 10.0) -> None:
    """Poll a figure the worker thread changes (no event to wait on); fails on timeout."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_load_figures_of_a_running_engine(gated_engine):
    engine, backend = gated_engine
    batches = []
    engine.on_batch = lambda kind, size, seconds: batches.append((kind, size))
    for key in ("a", "b"):
        engine.open(key, UtteranceOptions(), group=key)
        engine.feed(key, SECOND)
    final = engine.request_final("a")
    assert await asyncio.to_thread(backend.started.wait, 10)
    partial = engine.request_partial("b")
    load = engine.load()
    assert (load.running, load.pending_finals, load.pending_partials) == (1, 0, 1)
    assert (load.utterances, load.groups) == (2, 2)
    assert load.busy_fraction > 0 and load.partial_wait_s >= 0
    backend.release.set()
    assert (await final).text == "w0 w1" and (await partial).text == "w0 w1"
    load = engine.load()
    assert load.final_item_s > 0 and load.partial_item_s > 0 and load.running == 0
    assert engine.utterances == 1 and batches == [("final", 1), ("partial", 1)]


async def test_partials_degrade_under_overload_and_finals_do_not(gated_engine):
    """A final left waiting past partial_shed_s: the next partial is held, then decodes all audio."""
    engine, backend = gated_engine
    order = []
    for key in ("slow", "late", "p"):
        engine.open(key, UtteranceOptions(), group=key)
        engine.feed(key, SECOND)
    running = engine.request_final("slow")
    assert await asyncio.to_thread(backend.started.wait, 10)
    late = engine.request_final("late")
    await wait_for(lambda: engine.load().shedding)      # "late" has waited over 0.1 s
    partial = engine.request_partial("p")
    engine.feed("p", SECOND)
    for name, fut in [("late", late), ("p", partial)]:
        fut.add_done_callback(lambda _f, n=name: order.append(n))
    backend.release.set()
    await asyncio.gather(running, late)
    hypothesis = await partial                          # woken by the scheduler's wake time
    assert order == ["late", "p"]
    assert engine.stats.partials_deferred == 1
    assert hypothesis is not None and backend.batches[-1] == ("step", 1)


async def test_a_failed_partial_fails_what_its_utterance_still_waits_for(gated_engine):
    engine, backend = gated_engine
    real_step = backend.step

    def broken(states):
        real_step(states)
        raise RuntimeError("model exploded")

    backend.step = broken
    engine.open("a", UtteranceOptions())
    engine.feed("a", SECOND)
    partial = engine.request_partial("a")
    assert await asyncio.to_thread(backend.started.wait, 10)
    final = engine.request_final("a")                    # waits for the running partial
    backend.release.set()
    for fut in (partial, final):
        with pytest.raises(RuntimeError, match="exploded"):
            await fut
    assert engine.utterances == 0 and engine.stats.errors == 1
