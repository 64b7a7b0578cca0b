"""BrokerLink: one connection to one broker, its I/O thread, publishing and reconnects.

A link owns one TCP connection, one publishing channel (confirm mode), one
channel per consumer, and one I/O thread running pika's select loop. Other
threads hand it work through :meth:`BrokerLink.publish` and
:meth:`BrokerLink.call_soon`. A publish made while the loop waits for the
network goes out at once on the caller's thread (it joins the loop, see
:class:`~miros_rabbitmq.transport._pika_glue.SharedLoop`); otherwise it is
queued and the loop is woken through pika's thread-safe callback pipe.

What is kept, resent and dropped is decided by the link's
:class:`~miros_rabbitmq.transport.outbox.Outbox`; this module only does the
I/O and the waiting:

* :meth:`publish` never waits. It refuses only past the hard bounds (bytes,
  optional message count) or for a droppable message past the snoop limit.
* :meth:`wait_for_room` is the flow control: while the link is connected and
  its window is full (or the broker said ``connection.blocked``), the caller
  waits until confirms bring it under the low-water mark, up to a timeout.
  A link that is down never makes anyone wait; an I/O thread never waits.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from miros_rabbitmq.transport._pika_glue import (
    PERSISTENT,
    TRANSIENT,
    GlueConnection,
    SharedLoop,
    describe_error,
    is_auth_error,
    is_nack,
    mark_io_thread,
    on_io_thread,
)
from miros_rabbitmq.transport.address import BrokerAddress, ssl_options
from miros_rabbitmq.transport.consumer import Consumer
from miros_rabbitmq.transport.outbox import (
    DEFAULT_MAX_BYTES,
    DEFAULT_WINDOW,
    DROP_NEW,
    Message,
    Outbox,
    Outcome,
)
from miros_rabbitmq.wire.batch import BATCH_MAX_BYTES, BATCH_MAX_TOKENS, join_tokens
from miros_rabbitmq.wire.names import DEFAULT_HEARTBEAT

__all__ = ["BrokerLink", "LinkStats", "RECONNECT_MIN_DELAY", "RECONNECT_MAX_DELAY"]

logger = logging.getLogger(__name__)

RECONNECT_MIN_DELAY = 0.1
RECONNECT_MAX_DELAY = 10.0
DRAIN_EVENTS = 1024  # messages the I/O thread publishes per pass of its loop (then reads)
OVERFLOW_LOG_INTERVAL = 10.0


@dataclass
class LinkStats:
    """A snapshot of a link's counters."""

    published: int = 0  # messages handed to the broker
    publishes: int = 0  # AMQP publishes that carried them (several per batch)
    direct: int = 0  # of which written on the caller's thread, not the I/O thread's
    confirmed: int = 0
    nacked: int = 0
    resent: int = 0
    dropped_overflow: int = 0  # refused new messages (buffer full, policy drop_new)
    dropped_oldest: int = 0  # older queued messages dropped for new ones (drop_oldest)
    dropped_blocked: int = 0  # refused after waiting max_block for room
    dropped_snoop: int = 0
    dropped_closed: int = 0
    waits: int = 0  # how often a sender waited for room (flow control)
    reconnects: int = 0
    connect_failures: int = 0
    buffered_writes: int = 0  # writes that went through pika's buffer, not straight out


class BrokerLink:
    """One connection to one broker, its I/O thread, its outgoing buffer."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        heartbeat: int = DEFAULT_HEARTBEAT,
        max_buffer: int | None = None,
        max_buffer_bytes: int = DEFAULT_MAX_BYTES,
        overflow_policy: str = DROP_NEW,
        window: int = DEFAULT_WINDOW,
        exchanges: Iterable[tuple[str, str]] = (),
        identity: tuple[Any, ...] | None = None,
        alternates: Sequence[BrokerAddress] = (),
    ) -> None:
        # cluster mode: the nodes of one cluster, tried in turn; ``address`` is
        # the one in use. The outbox and its resend rules do not care which.
        self.addresses: tuple[BrokerAddress, ...] = (address, *alternates)
        self._node = 0
        self.failovers = 0
        self.cluster_name: str | None = None
        self.address = address
        self.heartbeat = heartbeat
        self.auth_failed = threading.Event()
        self.connected = threading.Event()
        self.identity = identity if identity is not None else address.identity()
        self.last_error: str | None = None
        self._outbox = Outbox(max_bytes=max_buffer_bytes, max_messages=max_buffer,
                              policy=overflow_policy, window=window)
        self._counts = LinkStats()  # the link's own counters; the outbox keeps the rest
        self._last_overflow_log = float("-inf")
        self._exchanges: dict[str, str] = dict(exchanges)
        self._consumers: list[Consumer] = []
        self._lock = threading.Lock()
        # one condition for "something changed": confirms, (dis)connects, closing
        self._changed = threading.Condition(self._lock)
        self._waiters = 0  # senders waiting for room (confirms notify only then)
        self._blocked = False  # the broker sent connection.blocked
        self._wake_pending = False
        self._closing = False
        self._ioloop = SharedLoop()
        self._connection: Any = None
        self._pub_channel: Any = None
        self._pub_ready = False
        self._pub_failures = 0  # publishing channels lost in a row (backoff)
        self._attempt = 0
        self._reconnect_timer: Any = None
        self._state_listeners: list[Callable[[BrokerLink, bool], None]] = []
        self._thread = threading.Thread(
            target=self._run, name=f"miros-rabbitmq-io-{address.hostport}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "connected" if self.connected.is_set() else "disconnected"
        return f"BrokerLink({self.address.url!r}, {state}, buffered={self.buffered})"

    # -- any thread
    @property
    def buffered(self) -> int:
        """Messages not yet confirmed by the broker."""
        return self._outbox.pending

    @property
    def buffered_bytes(self) -> int:
        return self._outbox.pending_bytes

    @property
    def blocked(self) -> bool:
        """True while the broker holds this connection (memory or disk alarm)."""
        return self._blocked

    @property
    def max_buffer_bytes(self) -> int:
        return self._outbox.max_bytes

    @property
    def stats(self) -> LinkStats:
        with self._lock:
            box = self._outbox
            counts = self._counts
            return LinkStats(
                published=counts.published, publishes=counts.publishes,
                direct=counts.direct,
                confirmed=box.confirmed, nacked=box.nacked, resent=box.resent,
                dropped_overflow=box.dropped_full, dropped_oldest=box.dropped_oldest,
                dropped_blocked=counts.dropped_blocked, dropped_snoop=box.dropped_snoop,
                dropped_closed=counts.dropped_closed, waits=counts.waits,
                reconnects=counts.reconnects, connect_failures=counts.connect_failures,
                buffered_writes=getattr(self._connection, "buffered_writes", 0))

    def publish(self, exchange: str, routing_key: str, body: bytes, *,
                persistent: bool = True, droppable: bool = False,
                batchable: bool = False) -> Outcome:
        """Hand a message to the link; never waits. The outcome is true when accepted.

        It is kept until the broker confirms it. When the I/O thread is
        waiting for the network and nothing is queued before this message, it
        is written to the socket at once on the caller's thread; otherwise it
        is queued for the I/O thread. ``droppable`` messages (instrumentation)
        give way early, so they never hold back events. ``batchable``
        messages queued one behind the other may leave as one publish, their
        bodies joined by a newline (:mod:`miros_rabbitmq.wire.batch`): only for
        bodies that never contain one (tokens) and receivers that split them.
        """
        message = Message(exchange, routing_key, body, persistent, droppable, batchable)
        joined = self._pub_ready and self._ioloop.try_join()  # never waits
        try:
            with self._lock:
                if self._closing:
                    self._counts.dropped_closed += 1
                    return Outcome.CLOSED
                outcome, dropped_oldest = self._outbox.offer(message)
                if not outcome:
                    overflowed = outcome is Outcome.OVERFLOW
                    direct = wake = False
                else:
                    overflowed = dropped_oldest > 0
                    # Nothing may overtake what is already queued. And only a message
                    # that finds nothing unconfirmed goes at once, alone: one sent
                    # while others still wait for their confirm is part of a stream,
                    # and the I/O thread sends what piled up meanwhile as one batch
                    # (wire/batch.py), which costs the broker and the receiver far
                    # less than a publish per message.
                    direct = (joined and self._pub_ready and self._outbox.pending == 1
                              and exchange in self._exchanges)
                    wake = False
                    if direct:
                        self._outbox.take()
                        self._counts.direct += 1
                    elif self._pub_ready and not self._wake_pending:
                        wake = self._wake_pending = True  # a link that is down drains on connect
            if direct:
                self._ioloop.enter_guest()
                try:
                    self._basic_publish([message])
                finally:
                    self._ioloop.leave_guest()
        finally:
            if joined:
                self._ioloop.let_go()
        if overflowed:
            self._log_overflow()
        if wake:
            self.call_soon(self._drain_outbox)
        return outcome

    def wait_for_room(self, timeout: float) -> bool:
        """Flow control: wait while the link is up and full; False if still full at ``timeout``.

        Returns at once when the link is down (it buffers), has room, or the
        caller is one of our I/O threads (which must never wait).
        """
        if on_io_thread():
            return True
        if not self._blocked and not self._outbox.full():
            return True  # read without the lock: a stale "room" lets one more message in
        with self._changed:
            if not self._must_wait():
                return True
            self._counts.waits += 1
            self._waiters += 1
            try:
                return self._changed.wait_for(self._may_go, timeout)
            finally:
                self._waiters -= 1

    def _must_wait(self) -> bool:  # under the lock
        return (not self._closing and self.connected.is_set()
                and (self._blocked or self._outbox.full()))

    def _may_go(self) -> bool:  # under the lock
        return (self._closing or not self.connected.is_set()
                or (not self._blocked and self._outbox.drained_below_low_water()))

    def count_refusal(self, outcome: Outcome) -> None:
        """A sender gave up on this link after :meth:`wait_for_room` (counted here)."""
        if outcome is Outcome.BLOCKED:
            with self._lock:
                self._counts.dropped_blocked += 1

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O thread."""
        try:
            self._ioloop.add_callback_threadsafe(callback)
        except Exception:  # the loop is closed: the link is gone
            logger.debug("call_soon on a closed link %s", self.address)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        """I/O thread only: a timer on the link's loop."""
        return self._ioloop.call_later(delay, callback)

    def remove_timeout(self, handle: Any) -> None:
        """I/O thread only."""
        self._ioloop.remove_timeout(handle)

    def declare_exchange(self, name: str, exchange_type: str = "topic") -> None:
        with self._lock:
            known = self._exchanges.get(name)
            self._exchanges[name] = exchange_type
        if known is None:
            self.call_soon(lambda: self._declare_exchanges([name]))

    def add_consumer(self, consumer: Consumer) -> None:
        consumer.link = self
        self.call_soon(lambda: self._add_consumer(consumer))

    def remove_consumer(self, consumer: Consumer, *, delete_queue: bool = True,
                        timeout: float = 2.0) -> None:
        """Stop ``consumer`` and, with ``delete_queue``, delete its queue (bounded wait).

        Also deletes the queue of a consumer removed before with
        ``delete_queue=False``: it remembers its queue.
        """
        done = threading.Event()
        self.call_soon(lambda: self._remove_consumer(consumer, delete_queue, done))
        if threading.current_thread() is not self._thread:
            done.wait(timeout)

    def add_state_listener(self, listener: Callable[[BrokerLink, bool], None]) -> None:
        """``listener(link, connected)`` on the I/O thread at every (dis)connect."""
        self._state_listeners.append(listener)

    def remove_state_listener(self, listener: Callable[[BrokerLink, bool], None]) -> None:
        if listener in self._state_listeners:
            self._state_listeners.remove(listener)

    def flush(self, timeout: float) -> bool:
        """Wait until every buffered message is confirmed; False on timeout or when down."""
        if on_io_thread():
            return self._outbox.is_empty()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._outbox.is_empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.connected.is_set() or self._closing:
                    return False
                self._waiters += 1
                try:
                    self._changed.wait(min(remaining, 0.5))
                finally:
                    self._waiters -= 1
        return True

    def close(self, *, flush_timeout: float = 2.0, timeout: float = 5.0) -> None:
        """Flush (bounded), close the connection and end the I/O thread."""
        flushed = True
        if flush_timeout > 0 and self.connected.is_set():
            flushed = self.flush(flush_timeout)
        with self._lock:
            if self._closing:
                return
            self._closing = True
            left = self._outbox.pending
            self._changed.notify_all()
        if left:
            logger.warning("closing the link to %s with %d message(s) not confirmed%s",
                           self.address, left,
                           f" after waiting {flush_timeout:.1f} s" if not flushed else "")
        self.call_soon(self._shutdown)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("I/O thread of %s did not stop within %.1f s", self.address, timeout)

    # -- I/O thread
    def _run(self) -> None:
        mark_io_thread()
        self._ioloop.hold()  # held whenever this thread runs (see SharedLoop)
        try:
            self._connect()
            self._ioloop.start()
        except Exception:  # pragma: no cover - last line of defence
            logger.exception("I/O loop of %s failed", self.address)
        finally:
            self.connected.clear()
            self._pub_ready = False  # no guest may publish on a dead loop
            with self._changed:
                self._changed.notify_all()
            try:
                self._ioloop.close()
            except Exception:  # pragma: no cover
                pass
            self._ioloop.let_go()

    def _parameters(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host=self.address.host,
            port=self.address.port,
            virtual_host=self.address.vhost,
            credentials=pika.PlainCredentials(self.address.user, self.address.password.reveal()),
            ssl_options=ssl_options(self.address),
            heartbeat=self.heartbeat,
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=60,
            client_properties={"connection_name": "miros-rabbitmq"},
        )

    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._closing:
            self._ioloop.stop()
            return
        try:
            self._connection = GlueConnection(
                self._parameters(),
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
                custom_ioloop=self._ioloop,
            )
            if self.address.tls is not None:
                self._connection.use_stock_writes()  # TLS: pika writes the records
            self._connection.add_on_connection_blocked_callback(self._on_blocked)
            self._connection.add_on_connection_unblocked_callback(self._on_unblocked)
        except Exception as error:
            self._on_open_error(None, error)

    def _on_blocked(self, _connection: Any, frame: Any) -> None:
        reason = getattr(getattr(frame, "method", None), "reason", "")
        logger.warning("broker %s blocked publishing (%s): senders wait up to max_block",
                       self.address, reason or "resource alarm")
        with self._changed:
            self._blocked = True

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        logger.info("broker %s unblocked publishing", self.address)
        with self._changed:
            self._blocked = False
            self._changed.notify_all()

    def _schedule_reconnect(self) -> None:
        if self._closing:
            self._ioloop.stop()
            return
        # with several nodes, back off only once a whole round of them failed
        rounds = self._attempt // len(self.addresses)
        delay = min(RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY * (2 ** min(rounds, 10)))
        delay *= random.uniform(0.5, 1.0)  # jitter: peers of a restarted broker spread out
        self._attempt += 1
        self._reconnect_timer = self._ioloop.call_later(delay, self._connect)

    def _on_open_error(self, _connection: Any, error: BaseException) -> None:
        if is_auth_error(error):
            self.auth_failed.set()  # before the count: start() reads them in this order
        with self._lock:
            self._counts.connect_failures += 1
        reason = describe_error(error)
        if reason != self.last_error:
            logger.warning("cannot connect to %s: %s (retrying with backoff)", self.address, reason)
        self.last_error = reason
        self._next_node()
        self._schedule_reconnect()

    def _next_node(self) -> None:
        """Cluster mode: the node in use failed; the next listed one is tried next."""
        if len(self.addresses) > 1:
            self._node = (self._node + 1) % len(self.addresses)
            self.address = self.addresses[self._node]

    def _check_cluster(self, connection: Any) -> None:
        """Cluster mode: every node we reach should name the same cluster."""
        properties = getattr(connection, "server_properties", None) or {}
        name = properties.get("cluster_name")
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if self.cluster_name is not None and name is not None and name != self.cluster_name:
            logger.warning("%s belongs to cluster %r, not %r like the node before it: "
                           "check the broker list", self.address, name, self.cluster_name)
        self.cluster_name = name or self.cluster_name

    def _on_open(self, connection: Any) -> None:
        self._attempt = 0
        if len(self.addresses) > 1:
            self._check_cluster(connection)
        if self.last_error is not None:
            with self._lock:
                self._counts.reconnects += 1
                if len(self.addresses) > 1:
                    self.failovers += 1
            logger.info("connected to %s", self.address)
        self.last_error = None
        connection.channel(on_open_callback=self._on_pub_channel)
        for consumer in self._consumers:
            self._open_consumer_channel(consumer)

    def _on_closed(self, _connection: Any, reason: BaseException) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._pub_ready = False
        self._pub_channel = None
        with self._changed:
            self._blocked = False
            self._outbox.requeue_in_flight()
            self._changed.notify_all()  # waiting senders: a link that is down buffers
        for consumer in self._consumers:
            consumer.detach()
        if self._closing:
            self._ioloop.stop()
            return
        self.last_error = describe_error(reason)
        logger.warning("lost connection to %s: %s", self.address, self.last_error)
        if was_connected:
            self._notify_state(False)
        self._next_node()
        self._schedule_reconnect()

    def _on_pub_channel(self, channel: Any) -> None:
        self._pub_channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._declare_exchanges(
            list(self._exchanges), then=self._on_publish_ready))

    def _declare_exchanges(self, names: list[str], then: Callable[[], None] | None = None) -> None:
        channel = self._pub_channel
        if channel is None or not channel.is_open:
            return
        pending = list(names)

        def next_one(_frame: Any = None) -> None:
            if not pending:
                if then is not None:
                    then()
                return
            name = pending.pop(0)
            channel.exchange_declare(name, exchange_type=self._exchanges.get(name, "topic"),
                                     durable=True, callback=next_one)

        next_one()

    def _on_publish_ready(self) -> None:
        self._pub_failures = 0
        with self._lock:
            self._outbox.restart_tags()
        self._pub_ready = True
        self.connected.set()
        self._notify_state(True)
        self._drain_outbox()

    def _notify_state(self, connected: bool) -> None:
        for listener in list(self._state_listeners):
            try:
                listener(self, connected)
            except Exception:
                logger.exception("link state listener failed")

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        """The publishing channel closed (a channel-level error, e.g. an exchange
        declared elsewhere with another type): open another one, with backoff.
        The connection stays: every other chart's channel on it goes on."""
        if self._closing or self._connection is None or not self._connection.is_open:
            return
        if channel is not self._pub_channel:
            return
        self._pub_ready = False
        self._pub_channel = None
        with self._changed:
            self._outbox.requeue_in_flight()
            self._changed.notify_all()
        delay = _channel_backoff(self._pub_failures)
        self._pub_failures += 1
        logger.warning("publishing channel to %s closed: %s (another in %.1f s)",
                       self.address, describe_error(reason), delay)
        self._ioloop.call_later(delay, self._reopen_pub_channel)

    def _reopen_pub_channel(self) -> None:
        connection = self._connection
        if self._closing or connection is None or not connection.is_open or self._pub_channel:
            return
        connection.channel(on_open_callback=self._on_pub_channel)

    def _drain_outbox(self) -> None:
        with self._lock:
            self._wake_pending = False
        channel = self._pub_channel
        if not self._pub_ready or channel is None or not channel.is_open:
            return
        connection = self._connection
        connection.begin_batch()  # the pass leaves in one send(2)
        failed = False
        events = 0
        try:
            while events < DRAIN_EVENTS:
                with self._lock:
                    taken = self._outbox.take_batch(BATCH_MAX_TOKENS, BATCH_MAX_BYTES)
                if taken is None:
                    return
                batch = taken[1]
                events += len(batch)
                first = batch[0]
                if first.exchange not in self._exchanges:
                    self._exchanges[first.exchange] = "topic"
                    channel.exchange_declare(first.exchange, exchange_type="topic",
                                             durable=True, callback=lambda _frame: None)
                if not self._basic_publish(batch):
                    failed = True  # everything in flight went back to the queue
                    return
        finally:
            connection.end_batch(discard=failed)
        # more is queued: read the socket (confirms, deliveries) before the next pass
        with self._lock:
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self.call_soon(self._drain_outbox)

    def _basic_publish(self, batch: list[Message]) -> bool:
        """Loop's thread or its guest: hand one publish (already in flight) to pika.

        ``batch``: the messages taken under one delivery tag (often just one);
        their bodies go joined (wire/batch.py), with the first one's address.
        """
        first = batch[0]
        channel = self._pub_channel
        try:
            channel.basic_publish(first.exchange, first.routing_key,
                                  join_tokens([m.body for m in batch]),
                                  PERSISTENT if first.persistent else TRANSIENT)
        except Exception as error:
            logger.warning("publish to %s failed: %s", self.address, describe_error(error))
            with self._lock:
                self._outbox.requeue_in_flight()
            return False
        self._counts.published += len(batch)
        self._counts.publishes += 1
        return True

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = is_nack(method)
        with self._lock:
            box = self._outbox
            if nacked:
                settled = box.nack(method.delivery_tag, multiple=method.multiple)
            else:
                settled = box.confirm(method.delivery_tag, multiple=method.multiple)
            if self._waiters and (box.is_empty() or box.drained_below_low_water()):
                self._changed.notify_all()
        if nacked and settled:
            logger.warning("broker %s refused %d message(s); sending them again",
                           self.address, settled)
            self._drain_outbox()

    def _add_consumer(self, consumer: Consumer) -> None:
        if consumer not in self._consumers:
            self._consumers.append(consumer)
        self._open_consumer_channel(consumer)

    def _open_consumer_channel(self, consumer: Consumer) -> None:
        """Each consumer gets a channel of its own (its acks can then be batched)."""
        connection = self._connection
        if connection is None or not connection.is_open:
            return  # set up when the connection opens

        def on_open(channel: Any) -> None:
            if consumer not in self._consumers:  # removed meanwhile
                channel.close()
                return
            channel.add_on_close_callback(
                lambda ch, reason: self._on_consumer_channel_closed(consumer, ch, reason))
            consumer.attach(channel)

        connection.channel(on_open_callback=on_open)

    def _on_consumer_channel_closed(self, consumer: Consumer, channel: Any,
                                    reason: BaseException) -> None:
        if consumer.channel is channel:
            consumer.detach()
        connection = self._connection
        if (consumer not in self._consumers or self._closing or connection is None
                or not connection.is_open):
            return  # a removal, or the connection went (it reopens every channel)
        # a channel-level error on this consumer's channel (e.g. its queue declared
        # elsewhere with other arguments): only this channel is retried, with backoff
        delay = _channel_backoff(consumer.channel_failures)
        consumer.channel_failures += 1
        logger.warning("channel of %s on %s closed: %s (another in %.1f s)", consumer.queue,
                       self.address, describe_error(reason), delay)

        def reopen() -> None:
            if consumer in self._consumers and consumer.channel is None:
                self._open_consumer_channel(consumer)

        self._ioloop.call_later(delay, reopen)

    def _remove_consumer(self, consumer: Consumer, delete_queue: bool, done: threading.Event) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        channel = consumer.channel
        if channel is not None and channel.is_open:
            consumer.cancel(delete_queue=delete_queue, done=done)
            return
        # no channel: cancelled before (a chart stops consuming before its thread
        # ends, and deletes its queues only then), or its channel failed. The
        # queue it remembers is deleted all the same, on a channel of its own:
        # a durable queue left behind would wait for x-expires.
        consumer.detach()
        if delete_queue and consumer.queue:
            self._delete_queue(consumer.queue, done)
        else:
            done.set()

    def _delete_queue(self, queue: str, done: threading.Event) -> None:
        """Delete ``queue`` on a short-lived channel; ``done`` is set when that channel closes."""
        connection = self._connection
        if connection is None or not connection.is_open:
            # exclusive queues go with the connection; durable ones expire (x-expires)
            logger.debug("%s: not connected; queue %s left to expire", self.address, queue)
            done.set()
            return

        def on_closed(_channel: Any, reason: BaseException) -> None:
            if not isinstance(reason, pika.exceptions.ChannelClosedByClient):
                logger.warning("could not delete queue %s on %s: %s", queue, self.address,
                               describe_error(reason))
            done.set()

        def on_open(channel: Any) -> None:
            channel.add_on_close_callback(on_closed)
            channel.queue_delete(queue, callback=lambda _frame: channel.close())

        try:
            connection.channel(on_open_callback=on_open)
        except Exception as error:  # the connection is going: as if not connected
            logger.debug("%s: queue %s left to expire (%s)", self.address, queue, error)
            done.set()

    def _shutdown(self) -> None:
        if self._reconnect_timer is not None:
            self._ioloop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None
        connection = self._connection
        if connection is not None and not (connection.is_closed or connection.is_closing):
            try:
                connection.close()
                return  # _on_closed stops the loop
            except Exception:
                pass
        self._ioloop.stop()

    def _log_overflow(self) -> None:
        now = time.monotonic()
        if now - self._last_overflow_log >= OVERFLOW_LOG_INTERVAL:
            self._last_overflow_log = now
            box = self._outbox
            logger.warning("buffer for %s is full (%d messages, %d bytes): dropping %s "
                           "messages (%s); %d dropped so far", self.address, box.pending,
                           box.pending_bytes, "new" if box.policy == DROP_NEW else "the oldest",
                           box.policy, box.dropped_full + box.dropped_oldest)


def _channel_backoff(failures: int) -> float:
    return min(RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY * (2 ** min(failures, 10)))
