"""The buffer and publisher-confirm rules of one link, without a broker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miros_rabbitmq.transport.outbox import (
    DROP_OLDEST,
    Message,
    Outbox,
    Outcome,
)


def msg(n: int, size: int = 10, *, droppable: bool = False) -> Message:
    return Message("x", "k", b"%d:" % n + b"." * max(0, size - len(b"%d:" % n)),
                   droppable=droppable, batchable=True)


def number(message: Message) -> int:
    return int(message.body.split(b":")[0])


def send_all(box: Outbox) -> list[tuple[int, int]]:
    """Take every queued message: [(tag, number)]."""
    sent = []
    while (taken := box.take()) is not None:
        sent.append((taken[0], number(taken[1])))
    return sent


def test_messages_are_kept_until_confirmed_and_tags_count_from_one() -> None:
    box = Outbox()
    for n in range(5):
        assert box.offer(msg(n)) == (Outcome.ACCEPTED, 0)
    assert send_all(box) == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
    assert box.pending == 5 and box.in_flight == 5 and box.pending_bytes == 50
    assert box.confirm(3, multiple=True) == 3
    assert box.pending == 2 and box.pending_bytes == 20
    assert box.confirm(5, multiple=False) == 1  # out of order: kept until 4 settles
    assert box.confirm(4, multiple=False) == 1
    assert box.is_empty() and box.pending_bytes == 0 and box.confirmed == 5


def test_unknown_and_repeated_confirms_change_nothing() -> None:
    box = Outbox()
    box.offer(msg(1))
    send_all(box)
    assert box.confirm(7, multiple=False) == 0
    assert box.confirm(1, multiple=False) == 1
    assert box.confirm(1, multiple=False) == 0
    assert box.confirm(1, multiple=True) == 0
    assert box.confirmed == 1


def test_a_nack_resends_in_original_order_before_anything_newer() -> None:
    box = Outbox()
    for n in range(6):
        box.offer(msg(n))
    send_all(box)  # tags 1..6
    box.offer(msg(6))  # queued, not sent
    assert box.nack(3, multiple=True) == 3  # 0, 1, 2 refused
    assert box.nack(5, multiple=False) == 1  # 4 refused
    assert [number(m) for m in box.queued] == [0, 1, 2, 4, 6]
    assert box.nacked == 4 and box.pending == 7


def test_a_nack_after_a_nack_keeps_each_batch_in_its_order() -> None:
    box = Outbox()
    for n in range(4):
        box.offer(msg(n))
    send_all(box)
    box.nack(2, multiple=True)
    assert [number(m) for m in box.queued] == [0, 1]
    assert send_all(box) == [(5, 0), (6, 1)]
    box.confirm(6, multiple=True)
    assert box.is_empty()


def test_a_lost_channel_requeues_in_flight_in_order_and_restarts_tags() -> None:
    box = Outbox()
    for n in range(4):
        box.offer(msg(n))
    box.take()
    box.take()  # 0, 1 in flight; 2, 3 queued
    assert box.confirm(1, multiple=False) == 1
    assert box.requeue_in_flight() == 1
    assert [number(m) for m in box.queued] == [1, 2, 3]
    box.restart_tags()
    assert send_all(box) == [(1, 1), (2, 2), (3, 3)]
    assert box.resent == 1


def test_drop_new_refuses_past_the_byte_bound() -> None:
    box = Outbox(max_bytes=100)
    for n in range(10):
        assert box.offer(msg(n))[0] is Outcome.ACCEPTED
    assert box.offer(msg(10))[0] is Outcome.OVERFLOW
    assert box.dropped_full == 1 and box.pending == 10
    assert [number(m) for m in box.queued] == list(range(10))


def test_drop_oldest_makes_room_from_the_queue_not_from_the_wire() -> None:
    box = Outbox(max_bytes=100, policy=DROP_OLDEST)
    for n in range(10):
        box.offer(msg(n))
    box.take()
    box.take()  # 0, 1 in flight: on the wire, cannot be taken back
    assert box.offer(msg(10)) == (Outcome.ACCEPTED, 1)
    assert [number(m) for m in box.queued] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert box.dropped_oldest == 1 and box.pending_bytes == 100


def test_drop_oldest_with_everything_in_flight_refuses() -> None:
    box = Outbox(max_messages=2, policy=DROP_OLDEST)
    box.offer(msg(0))
    box.offer(msg(1))
    send_all(box)
    assert box.offer(msg(2))[0] is Outcome.OVERFLOW


def test_a_message_larger_than_the_bound_fits_an_empty_buffer() -> None:
    box = Outbox(max_bytes=10)
    assert box.offer(msg(0, size=50))[0] is Outcome.ACCEPTED
    assert box.offer(msg(1, size=5))[0] is Outcome.OVERFLOW


def test_snoop_lines_give_way_early() -> None:
    box = Outbox(snoop_limit=3)
    for n in range(3):
        box.offer(msg(n))
    assert box.offer(msg(9, droppable=True))[0] is Outcome.SNOOP
    assert box.offer(msg(10))[0] is Outcome.ACCEPTED  # events still go in
    assert box.dropped_snoop == 1


def test_window_marks_have_hysteresis() -> None:
    box = Outbox(window=10)
    for n in range(10):
        box.offer(msg(n))
    assert box.full() and not box.drained_below_low_water()
    send_all(box)
    box.confirm(3, multiple=True)  # 6 left: not full, not drained yet
    assert not box.full() and not box.drained_below_low_water()
    box.confirm(5, multiple=True)
    assert box.drained_below_low_water()


def test_bad_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="drop_new"):
        Outbox(policy="drop_everything")


def test_outcome_is_true_only_when_accepted() -> None:
    assert Outcome.ACCEPTED
    assert not any([Outcome.OVERFLOW, Outcome.SNOOP, Outcome.BLOCKED, Outcome.CLOSED])


def test_a_multiple_confirm_costs_what_it_settles() -> None:
    """O(1) per confirm: a multiple confirm pops only what it settles (no rescans)."""
    box = Outbox(window=1 << 30)
    for n in range(50_000):
        box.offer(msg(n))
    send_all(box)
    for tag in range(1, 50_001):
        box.confirm(tag, multiple=True)  # each one settles exactly one: linear in total
    assert box.is_empty() and box.confirmed == 50_000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["offer", "take", "ack", "ackm", "nack", "nackm",
                                           "lose"]), st.integers(0, 30)), max_size=120))
def test_every_message_is_confirmed_once_whatever_happens(ops) -> None:
    """Model check: offered messages are confirmed exactly once; nothing is invented."""
    box = Outbox()
    offered = 0
    confirmed: list[int] = []
    in_flight: dict[int, int] = {}  # tag -> number, the model
    for op, value in ops:
        if op == "offer":
            box.offer(msg(offered))
            offered += 1
        elif op == "take":
            taken = box.take()
            if taken is not None:
                in_flight[taken[0]] = number(taken[1])
        elif op in ("ack", "ackm", "nack", "nackm") and in_flight:
            tags = sorted(in_flight)
            tag = tags[value % len(tags)]
            multiple = op.endswith("m")
            hit = [t for t in tags if t <= tag] if multiple else [tag]
            if op.startswith("ack"):
                assert box.confirm(tag, multiple=multiple) == len(hit)
                confirmed += [in_flight[t] for t in hit]
            else:
                assert box.nack(tag, multiple=multiple) == len(hit)
            for t in hit:
                del in_flight[t]
        elif op == "lose":
            box.requeue_in_flight()
            in_flight.clear()
    while (taken := box.take()) is not None:
        in_flight[taken[0]] = number(taken[1])
    if in_flight:
        box.confirm(max(in_flight), multiple=True)
        confirmed += list(in_flight.values())
    assert box.is_empty() and box.pending_bytes == 0
    assert sorted(confirmed) == list(range(offered))


# ------------------------------------------------------------------ batches (one publish, one tag)
def test_messages_queued_together_leave_as_one_batch_under_one_tag() -> None:
    box = Outbox()
    for n in range(5):
        box.offer(msg(n))
    tag, batch = box.take_batch(3, 1 << 20)
    assert tag == 1 and [number(m) for m in batch] == [0, 1, 2]
    tag, batch = box.take_batch(3, 1 << 20)
    assert tag == 2 and [number(m) for m in batch] == [3, 4]
    assert box.take_batch(3, 1 << 20) is None
    assert box.in_flight == 5 and box.pending == 5
    assert box.confirm(1, multiple=False) == 3  # one confirm settles the whole batch
    assert box.pending == 2 and box.pending_bytes == 20
    assert box.confirm(2, multiple=True) == 2 and box.is_empty()


def test_a_batch_keeps_to_one_exchange_route_and_kind_and_to_its_bounds() -> None:
    box = Outbox()

    def offer(exchange: str, key: str, body: bytes, *, droppable: bool = False,
              batchable: bool = True) -> None:
        box.offer(Message(exchange, key, body, droppable=droppable, batchable=batchable))

    offer("x", "k", b"a")
    offer("x", "k", b"b")
    offer("x", "other", b"c")  # another routing key: a new batch
    offer("x", "other", b"d", droppable=True)  # a snoop line: another kind
    offer("y", "other", b"e", droppable=True)  # another exchange
    offer("y", "other", b"f" * 100, droppable=True)  # over the byte bound
    offer("y", "other", b"g" * 100, droppable=True)
    offer("y", "other", b"h", batchable=False)  # a body that may hold a newline: alone
    offer("y", "other", b"i", batchable=False)
    offer("y", "other", b"j")
    bodies = []
    while (taken := box.take_batch(10, 50)) is not None:
        bodies.append([m.body[:1] for m in taken[1]])
    # a message larger than the bound still leaves, alone
    assert bodies == [[b"a", b"b"], [b"c"], [b"d"], [b"e"], [b"f"], [b"g"], [b"h"], [b"i"],
                      [b"j"]]


def test_a_nacked_or_lost_batch_comes_back_message_by_message_in_order() -> None:
    box = Outbox()
    for n in range(6):
        box.offer(msg(n))
    box.take_batch(3, 1 << 20)  # tag 1: 0 1 2
    box.take_batch(3, 1 << 20)  # tag 2: 3 4 5
    assert box.nack(2, multiple=False) == 3
    assert box.confirm(1, multiple=False) == 3
    assert [number(m) for m in box.queued] == [3, 4, 5]
    tag, batch = box.take_batch(2, 1 << 20)
    assert tag == 3 and [number(m) for m in batch] == [3, 4]
    assert box.requeue_in_flight() == 2  # the channel is gone
    assert [number(m) for m in box.queued] == [3, 4, 5]
    assert box.pending == 3 and box.pending_bytes == 30


def test_batch_framing_round_trips_tokens() -> None:
    from cryptography.fernet import Fernet

    from miros_rabbitmq.wire.batch import join_tokens, split_tokens

    tokens = [Fernet(Fernet.generate_key()).encrypt(b"x" * n) for n in (0, 1, 100)]
    assert split_tokens(join_tokens(tokens)) == tokens
    assert join_tokens(tokens[:1]) == tokens[0]  # one token: the body is the token
    assert split_tokens(tokens[0]) == [tokens[0]]
    assert all(b"\n" not in token for token in tokens)  # url-safe base64: no separator
