"""The per-client outbox: bounded, partials coalesced, finals never dropped."""

import pytest

from streaming.outbox import Outbox, Outgoing


def ev(kind: str, uid: int | None = 0, text: str = "x") -> Outgoing:
    return Outgoing(f'{{"type":"{kind}","text":"{text}"}}', kind, uid)


def drain(box: Outbox) -> list[tuple[str, str]]:
    out = []
    while (item := box.pop()) is not None:
        out.append((item.kind, item.frame.split('"text":"')[1].rstrip('"}')))
    return out


@pytest.mark.parametrize("puts, expected", [
    # A newer partial of the same utterance replaces the unsent one, in place.
    ([ev("partial", 0, "a"), ev("partial", 0, "ab"), ev("partial", 0, "abc")], [("partial", "abc")]),
    # Partials of different utterances are kept apart; the newer one goes where it was queued,
    # so events leave in the order (seq) they were made.
    ([ev("partial", 0, "a"), ev("final", 9, "f"), ev("partial", 1, "b"), ev("partial", 0, "a2")],
     [("final", "f"), ("partial", "b"), ("partial", "a2")]),
    # A final is never coalesced.
    ([ev("final", 0, "f0"), ev("final", 1, "f1")], [("final", "f0"), ("final", "f1")]),
])
def test_coalescing_table(puts, expected):
    box = Outbox(max_events=100, max_bytes=1 << 20)
    assert all(box.put(p) for p in puts)
    assert drain(box) == expected
    assert box.bytes == 0


def test_a_sent_partial_is_not_replaced():
    box = Outbox(100, 1 << 20)
    box.put(ev("partial", 0, "a"))
    assert box.pop().kind == "partial"
    box.put(ev("partial", 0, "ab"))
    assert drain(box) == [("partial", "ab")]


def test_full_outbox_drops_partials_and_refuses_other_events():
    box = Outbox(max_events=2, max_bytes=1 << 20)
    assert box.put(ev("final", 0)) and box.put(ev("final", 1))
    assert box.put(ev("partial", 2))        # dropped, not an overflow
    assert box.dropped == 1 and len(box) == 2
    assert not box.put(ev("final", 2))      # a final that does not fit: the client is too slow


def test_byte_bound():
    big = Outgoing("x" * 600, "error")
    box = Outbox(max_events=100, max_bytes=1000)
    assert box.put(big)
    assert not box.put(Outgoing("y" * 600, "error"))
    assert box.bytes == 600
    box.clear()
    assert box.bytes == 0 and box.pop() is None


def test_replacement_keeps_byte_count_right():
    box = Outbox(100, 1 << 20)
    box.put(ev("partial", 0, "a"))
    box.put(ev("partial", 0, "a much longer partial"))
    assert box.bytes == len(ev("partial", 0, "a much longer partial").frame)
    assert box.replaced == 1


def test_many_replacements_keep_the_queue_small():
    box = Outbox(100, 1 << 20)
    box.put(ev("final", 0, "f"))
    for i in range(1000):
        box.put(ev("partial", 1, f"p{i}"))
    assert len(box._items) < 200 and len(box) == 2
    assert drain(box) == [("final", "f"), ("partial", "p999")]
