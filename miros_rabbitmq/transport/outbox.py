"""The outgoing buffer of one broker link and its publisher-confirm bookkeeping.

Plain code: no pika, no threads, no clock. :class:`~miros_rabbitmq.transport.link.BrokerLink`
holds one :class:`Outbox` under its lock and asks it what to keep, what to
send next, what to send again and what to drop. The rules:

* A message is kept from :meth:`Outbox.offer` until the broker confirms it.
  *queued* messages wait to be sent; *in flight* ones were sent on the
  current channel and wait for their confirm (delivery tags 1, 2, 3, ... per
  channel, so the in-flight list is indexed by tag: every confirm, single or
  ``multiple``, costs O(1) amortized; nothing is rescanned).
* Messages queued one behind the other for the same exchange and routing key
  leave as one publish (:meth:`Outbox.take_batch`, framing in
  :mod:`miros_rabbitmq.wire.batch`): one delivery tag, one confirm, settled
  together; counts and bounds stay per message.
* A ``nack`` puts the nacked messages back at the front of the queue, in
  their original order; they are sent again before anything newer.
* A lost channel puts everything in flight back at the front of the queue,
  in order (:meth:`requeue_in_flight`); the next channel numbers from 1.
* Bounds: ``max_bytes`` (bodies of queued + in-flight messages) and,
  optionally, ``max_messages``. Beyond them the ``policy`` decides:
  ``drop_new`` refuses the new message, ``drop_oldest`` drops the oldest
  *queued* ones to make room (a message in flight is on the wire already).
* Droppable messages (snoop lines) give way early: refused once
  ``snoop_limit`` messages are pending, so they never hold back events.
* Flow control marks: :meth:`full` (at ``window`` messages or
  ``window_bytes``) and :meth:`drained_below_low_water` (half of each). The
  link makes senders wait between the two while it is connected.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

__all__ = [
    "ACCEPTED",
    "DROP_NEW",
    "DROP_OLDEST",
    "Message",
    "Outbox",
    "Outcome",
    "REFUSED_FULL",
    "REFUSED_SNOOP",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_WINDOW",
    "DEFAULT_WINDOW_BYTES",
    "DEFAULT_SNOOP_LIMIT",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # minutes of typical traffic for a peer that is down
DEFAULT_WINDOW = 8192  # messages in flight or queued before a sender waits (link up)
DEFAULT_WINDOW_BYTES = 16 * 1024 * 1024
DEFAULT_SNOOP_LIMIT = 1024

DROP_NEW = "drop_new"
DROP_OLDEST = "drop_oldest"



class Outcome(enum.Enum):
    """What became of one message offered to a link; true only when accepted."""

    ACCEPTED = "accepted"
    OVERFLOW = "overflow"  # the buffer bound was reached (policy drop_new)
    SNOOP = "snoop"  # a droppable message gave way
    BLOCKED = "blocked"  # the link stayed full (or broker-blocked) for max_block seconds
    CLOSED = "closed"  # the link is closing

    def __bool__(self) -> bool:
        return self is Outcome.ACCEPTED


ACCEPTED = Outcome.ACCEPTED
REFUSED_FULL = Outcome.OVERFLOW
REFUSED_SNOOP = Outcome.SNOOP


@dataclass(slots=True)
class Message:
    exchange: str
    routing_key: str
    body: bytes
    persistent: bool = True
    droppable: bool = False
    #: its body may share a publish with others (tokens: they never contain a newline)
    batchable: bool = False
    order: int = 0  # set by the outbox: the order messages were offered in


class Outbox:
    """Queued and in-flight messages of one link (not thread-safe: the link locks)."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, max_messages: int | None = None,
                 policy: str = DROP_NEW, window: int = DEFAULT_WINDOW,
                 window_bytes: int = DEFAULT_WINDOW_BYTES,
                 snoop_limit: int = DEFAULT_SNOOP_LIMIT) -> None:
        if policy not in (DROP_NEW, DROP_OLDEST):
            raise ValueError(f"overflow policy must be {DROP_NEW!r} or {DROP_OLDEST!r}, "
                             f"got {policy!r}")
        if max_bytes <= 0 or (max_messages is not None and max_messages <= 0):
            raise ValueError("buffer bounds must be positive")
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.policy = policy
        self.window = max(1, min(window, max_messages) if max_messages else window)
        self.window_bytes = min(window_bytes, max_bytes)
        self.snoop_limit = snoop_limit
        self.queued: collections.deque[Message] = collections.deque()
        # in-flight batches by tag: _in_flight[i] has tag _first_tag + i (a batch
        # is one publish); None marks one confirmed out of order (skipped when
        # it reaches the front)
        self._in_flight: collections.deque[list[Message] | None] = collections.deque()
        self._first_tag = 1
        self._next_tag = 1
        self._in_flight_count = 0
        self._offered = 0
        self.pending_bytes = 0
        # counters of what happened, for stats()
        self.confirmed = 0
        self.nacked = 0
        self.resent = 0
        self.dropped_full = 0
        self.dropped_oldest = 0
        self.dropped_snoop = 0

    # ------------------------------------------------------------------ sizes
    @property
    def pending(self) -> int:
        """Messages not yet confirmed (queued + in flight)."""
        return len(self.queued) + self._in_flight_count

    @property
    def in_flight(self) -> int:
        return self._in_flight_count

    def is_empty(self) -> bool:
        return not self.queued and not self._in_flight_count

    def full(self) -> bool:
        """At the high-water mark: a connected link makes its senders wait."""
        return self.pending >= self.window or self.pending_bytes >= self.window_bytes

    def drained_below_low_water(self) -> bool:
        return self.pending <= self.window // 2 and self.pending_bytes <= self.window_bytes // 2

    # ------------------------------------------------------------------ adding
    def offer(self, message: Message) -> tuple[Outcome, int]:
        """Queue ``message``: returns (outcome, how many older messages were dropped)."""
        if message.droppable and self.pending >= self.snoop_limit:
            self.dropped_snoop += 1
            return REFUSED_SNOOP, 0
        dropped = 0
        while self._over(len(message.body)):
            if self.policy == DROP_OLDEST and self.queued:
                oldest = self.queued.popleft()
                self.pending_bytes -= len(oldest.body)
                self.dropped_oldest += 1
                dropped += 1
                continue
            self.dropped_full += 1
            return REFUSED_FULL, dropped
        self._offered += 1
        message.order = self._offered
        self.queued.append(message)
        self.pending_bytes += len(message.body)
        return ACCEPTED, dropped

    def _over(self, size: int) -> bool:
        if self.max_messages is not None and self.pending >= self.max_messages:
            return True
        # one message larger than the whole bound still goes into an empty buffer
        return self.pending_bytes + size > self.max_bytes and self.pending > 0

    # ------------------------------------------------------------------ sending
    def take(self) -> tuple[int, Message] | None:
        """The next queued message, now in flight with its delivery tag; None when none."""
        taken = self.take_batch(1, 0)
        return None if taken is None else (taken[0], taken[1][0])

    def take_batch(self, max_count: int, max_bytes: int) -> tuple[int, list[Message]] | None:
        """The next queued messages that may travel as one publish, under one delivery tag.

        The batch is the first queued message and those right behind it with
        the same exchange, routing key and flags, at most ``max_count`` of
        them and ``max_bytes`` of bodies (the first one goes whatever its
        size); only ``batchable`` messages are batched. The confirm of the
        tag settles all of them; a nack or a lost channel puts each one back,
        in order. None when nothing is queued.
        """
        queued = self.queued
        if not queued:
            return None
        first = queued.popleft()
        batch = [first]
        size = len(first.body)
        while first.batchable and queued and len(batch) < max_count:
            following = queued[0]
            if (not following.batchable
                    or following.exchange != first.exchange
                    or following.routing_key != first.routing_key
                    or following.persistent != first.persistent
                    or following.droppable != first.droppable
                    or size + len(following.body) > max_bytes):
                break
            batch.append(queued.popleft())
            size += len(following.body)
        tag = self._next_tag
        self._next_tag += 1
        self._in_flight.append(batch)
        self._in_flight_count += len(batch)
        return tag, batch

    # ------------------------------------------------------------------ confirms
    def confirm(self, tag: int, *, multiple: bool) -> int:
        """The broker took ``tag`` (and every earlier one if ``multiple``): forget them."""
        settled = self._settle(tag, multiple)
        self.confirmed += len(settled)
        return len(settled)

    def nack(self, tag: int, *, multiple: bool) -> int:
        """The broker refused them: back to the front of the queue, in their order."""
        settled = self._settle(tag, multiple, keep_bytes=True)
        self.nacked += len(settled)
        self.resent += len(settled)
        self._put_back(settled)
        return len(settled)

    def _put_back(self, messages: list[Message]) -> None:
        """Back into the queue, everything in the order it was offered in.

        Only messages sent again earlier can be older than these, and they are
        at the front: the merge touches those few, not the whole queue.
        """
        if not messages:
            return
        newest = messages[-1].order
        older: list[Message] = []
        while self.queued and self.queued[0].order < newest:
            older.append(self.queued.popleft())
        merged = sorted(older + messages, key=lambda m: m.order)
        self.queued.extendleft(reversed(merged))

    def _settle(self, tag: int, multiple: bool, *, keep_bytes: bool = False) -> list[Message]:
        settled: list[Message] = []
        flight = self._in_flight
        if multiple:
            while flight and self._first_tag <= tag:
                batch = flight.popleft()
                self._first_tag += 1
                if batch is not None:
                    settled.extend(batch)
        else:
            index = tag - self._first_tag
            if 0 <= index < len(flight):
                batch = flight[index]
                if batch is not None:
                    settled.extend(batch)
                    flight[index] = None
            while flight and flight[0] is None:  # confirmed out of order, now at the front
                flight.popleft()
                self._first_tag += 1
        self._in_flight_count -= len(settled)
        if not keep_bytes:
            self.pending_bytes -= sum(len(m.body) for m in settled)
        return settled

    def requeue_in_flight(self) -> int:
        """The channel is gone: what was in flight is sent again first, in order."""
        returned = [m for batch in self._in_flight if batch is not None for m in batch]
        self._in_flight.clear()
        self._in_flight_count = 0
        self._first_tag = self._next_tag = 1  # a new channel numbers from 1
        self.resent += len(returned)
        self._put_back(returned)
        return len(returned)

    def restart_tags(self) -> None:
        """A new channel opened: its first publish has tag 1 (nothing may be in flight)."""
        if self._in_flight_count:
            self.requeue_in_flight()
        self._in_flight.clear()
        self._first_tag = self._next_tag = 1

    def discard(self) -> int:
        """Drop everything pending (the link is closing); returns how many."""
        count = self.pending
        self.queued.clear()
        self._in_flight.clear()
        self._in_flight_count = 0
        self.pending_bytes = 0
        return count
