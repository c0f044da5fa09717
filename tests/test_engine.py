"""The inference worker: batching, priorities, stale work, errors; with a stand-in model."""

import asyncio

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
