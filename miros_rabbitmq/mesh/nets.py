"""MirosNets: the three encrypted networks of one chart, and its peers.

A chart's ``MirosNets`` holds one :class:`Network` per network (mesh, snoop
trace, snoop spy: an exchange and a :class:`~miros_rabbitmq.wire.codec.Codec`), a
consumer on the local broker, and one :class:`~miros_rabbitmq.transport.BrokerLink`
per peer broker (shared with every other chart of the process through
:data:`~miros_rabbitmq.transport.LINKS`). It knows nothing of miros: the chart
gives it a ``deliver(envelope) -> bool`` callable and calls :meth:`transmit`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from miros_rabbitmq._miros import RESERVED_SIGNALS
from miros_rabbitmq.config import Secret, Settings
from miros_rabbitmq.errors import (
    BrokerAuthenticationError,
    ConfigurationError,
    DecodeError,
    PeerAddressError,
)
from miros_rabbitmq.mesh import challenge
from miros_rabbitmq.transport import (
    DEFAULT_MAX_BYTES,
    DROP_NEW,
    LINKS,
    BrokerAddress,
    BrokerLink,
    Consumer,
    Outcome,
    local_broker,
    parse_peer,
)
from miros_rabbitmq.transport.consumer import DEFAULT_QUEUE_MAX_LENGTH
from miros_rabbitmq.wire.batch import split_tokens
from miros_rabbitmq.wire.codec import JSON, PICKLE, Codec, Envelope, Serializer
from miros_rabbitmq.wire.names import (
    DEFAULT_MAX_AGE_SEC,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_QUEUE_EXPIRES_MS,
    EXCHANGES,
    MESH_EXCHANGE,
    MESH_QUEUE_PREFIX,
    SNOOP_SPY_EXCHANGE,
    SNOOP_SPY_ROUTING_KEY,
    SNOOP_TRACE_EXCHANGE,
    SNOOP_TRACE_ROUTING_KEY,
)
from miros_rabbitmq.wire.names import (
    Network as NetworkName,
)
from miros_rabbitmq.wire.replay import ReplayGuard

__all__ = [
    "MirosNets",
    "Network",
    "MESH_EXCHANGE",
    "SNOOP_TRACE_EXCHANGE",
    "SNOOP_SPY_EXCHANGE",
    "SNOOP_TRACE_ROUTING_KEY",
    "SNOOP_SPY_ROUTING_KEY",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK = 60.0  # seconds transmit() waits for room on a connected, full link
MESH_PREFETCH = 64  # unacked AMQP messages (each one event or a batch) a chart's consumer holds
DEFAULT_STOP_FLUSH = 5.0  # seconds stop() waits for confirms of what was transmitted
MAX_KNOWN_ORIGINS = 4096  # origins already checked for aliens (then forgotten, all at once)
DROP_LOG_INTERVAL = 60.0
V02_HINT = ("a miros-rabbitmq 0.2 node is sending on this mesh with our key; 0.2 and 0.3 "
            "cannot talk to each other: upgrade both sides to the same version "
            "(pip install -U miros-rabbitmq)")
_v02_logged = False  # process-wide: the hint is logged once


@dataclass
class Network:
    """One encrypted topic network: where it publishes and how it encodes."""

    name: str
    exchange: str
    codec: Codec
    routing_key: str


class DropCounter:
    """Counts dropped messages by reason; logs each reason at most once a minute."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.counts: collections.Counter[str] = collections.Counter()
        self._last_log: dict[str, float] = {}

    def drop(self, network: str, reason: str) -> None:
        key = f"{network}.{reason}"
        self.counts[key] += 1
        now = time.monotonic()
        if now - self._last_log.get(key, -DROP_LOG_INTERVAL) >= DROP_LOG_INTERVAL:
            self._last_log[key] = now
            logger.warning("%s: dropped a %s message (%s); %d so far, logged once a minute",
                           self.owner, network, reason, self.counts[key])


class MirosNets:
    """The networks, peers and counters of one networked chart."""

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        tx_routing_key: str,
        rx_routing_key: str | Iterable[str],
        deliver: Callable[[Envelope], bool],
        peers: Iterable[str] = (),
        serializer: Serializer = PICKLE,
        ttl: float | None = DEFAULT_MAX_AGE_SEC,
        max_buffer: int | None = None,
        max_buffer_bytes: int = DEFAULT_MAX_BYTES,
        overflow_policy: str = DROP_NEW,
        max_block: float = DEFAULT_MAX_BLOCK,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        queue_expires_ms: int = DEFAULT_QUEUE_EXPIRES_MS,
        queue_max_length: int = DEFAULT_QUEUE_MAX_LENGTH,
        on_overflow: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
        brokers: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.tx_routing_key = tx_routing_key
        self.rx_routing_keys = (
            (rx_routing_key,) if isinstance(rx_routing_key, str) else tuple(rx_routing_key))
        self.identity = f"{name}.{uuid.uuid4().hex[:12]}"
        # this incarnation: receivers remember (identity, epoch, seq) to refuse replays
        self.epoch = secrets.randbits(64) or 1  # 0: no incarnation (scout messages)
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        # where peers reach our broker; discovery sets it to our LAN address when known
        self.origin = f"{settings.rabbit_host}:{settings.rabbit_port}"
        # on_alien(origin): called (I/O thread, must not block) once per origin of an
        # authentic mesh message that is neither our broker nor a peer (discovery)
        self.on_alien: Callable[[str], None] | None = None
        # on_mesh_transmit(envelope): called (sender's thread, under the send lock, must
        # not block) with each mesh envelope sent; snoop publishes a "tx" record from it
        self.on_mesh_transmit: Callable[[Envelope], None] | None = None
        self._known_origins: set[str] = set()
        self.max_buffer = max_buffer
        self.max_buffer_bytes = max_buffer_bytes
        self.overflow_policy = overflow_policy
        self.max_block = max_block
        self.queue_expires_ms = queue_expires_ms
        self.queue_max_length = queue_max_length
        self.drops = DropCounter(name)
        self.counts: collections.Counter[str] = collections.Counter()
        # refused transmissions by (peer url, reason): overflow, blocked, snoop, closed
        self.refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on_overflow = on_overflow
        self._in_callback = threading.local()  # an on_overflow that transmits is not re-entered
        limits: dict[str, Any] = {"max_age": ttl, "max_message_bytes": max_message_bytes,
                                  "clock": clock}
        # snoop lines are plain data: their networks use the JSON serializer,
        # which never runs code on load, whatever the mesh uses. Each codec
        # binds its tokens to its network: a snoop line is never a mesh event.
        self.networks = {
            "mesh": Network("mesh", MESH_EXCHANGE,
                            Codec(settings.mesh_keys, serializer=serializer,
                                  network=NetworkName.MESH, **limits),
                            tx_routing_key),
            "snoop_trace": Network("snoop_trace", SNOOP_TRACE_EXCHANGE,
                                   Codec(settings.snoop_trace_keys, serializer=JSON,
                                         network=NetworkName.SNOOP_TRACE, **limits),
                                   SNOOP_TRACE_ROUTING_KEY),
            "snoop_spy": Network("snoop_spy", SNOOP_SPY_EXCHANGE,
                                 Codec(settings.snoop_spy_keys, serializer=JSON,
                                       network=NetworkName.SNOOP_SPY, **limits),
                                 SNOOP_SPY_ROUTING_KEY),
        }
        self._deliver = deliver
        # one sequence per network: a receiver's replay window counts only its network's messages
        self._seqs = {network: itertools.count(1) for network in self.networks}
        self._send_lock = threading.Lock()
        self._peers_lock = threading.Lock()
        self._peers: dict[tuple[str, int, str, str], BrokerLink] = {}
        self.replays = ReplayGuard(owner=name)
        # a delivery that found no room: its body, the index of the token that
        # found no room and that token's envelope (decrypted once, not again on resume)
        self._parked: tuple[bytes, int, Envelope] | None = None
        self._initial_peers = list(peers)
        self.local_address = local_broker(settings)
        # cluster mode: one link to one node of the cluster at a time, no peers
        entries = list(brokers) if brokers is not None else list(settings.rabbit_cluster)
        self.cluster: tuple[BrokerAddress, ...] = tuple(
            parse_peer(entry, settings) for entry in entries)  # raises PeerAddressError
        if self.cluster:
            self.local_address = self.cluster[0]
            self.origin = self.cluster[0].hostport
            if self._initial_peers:
                raise ConfigurationError("peers= and brokers= exclude each other: a cluster "
                                         "is one broker to its clients")
        self.local_link: BrokerLink | None = None
        self.consumer: Consumer | None = None
        self._local_consumers: list[Consumer] = []
        self._started = False
        self._stopped = False

    def __repr__(self) -> str:
        return (f"MirosNets(name={self.name!r}, local={self.local_address.url!r}, "
                f"peers={len(self._peers)})")

    # ------------------------------------------------------------------ life cycle
    def start(self, *, timeout: float = 5.0) -> bool:
        """Connect, start consuming; True when the consumer is ready within ``timeout``.

        Never blocks longer than ``timeout``: a broker that is not there yet is
        retried in the background and events flow once it answers.
        """
        if self._started:
            return self.consumer is not None and self.consumer.ready.is_set()
        self._started = True
        self.local_link = self._acquire(self.local_address, alternates=self.cluster[1:])
        self.consumer = Consumer(
            exchange=MESH_EXCHANGE,
            routing_keys=self.rx_routing_keys,
            on_message=self._on_mesh_message,
            with_routing_key=True,
            queue=f"{MESH_QUEUE_PREFIX}{self.identity}",
            durable=True,
            expires_ms=self.queue_expires_ms,
            max_length=self.queue_max_length,
            # replicated: the loss of one cluster node loses nothing confirmed
            queue_type="quorum" if self.cluster else None,
            # AMQP messages handed over unacked: a message may be a batch of up to
            # 64 events (wire/batch.py), so 64 keeps what a paused chart has taken
            # from the broker to ~4000 events; the rest waits on the broker
            prefetch=MESH_PREFETCH,
        )
        self.local_link.add_consumer(self.consumer)
        challenge.install_responder(self)  # answers scouts that hold our mesh key
        for entry in self._initial_peers:
            self.add_peer(entry)
        deadline = time.monotonic() + timeout
        while not (ready := self.consumer.ready.wait(0.02)):
            failures = self.local_link.stats.connect_failures  # read before auth_failed
            if self.local_link.auth_failed.is_set():
                address, user = self.local_address, self.settings.rabbit_user
                self.stop(flush_timeout=0)
                raise BrokerAuthenticationError(
                    f"{address}: the broker refused user {user!r}; check RABBIT_USER and "
                    "RABBIT_PASSWORD in your .env")
            if time.monotonic() >= deadline or failures:
                break  # a refused or unreachable broker: say so now, retry in the background
        if not ready:
            logger.warning("%s: local broker %s is not answering (%s); the chart starts "
                           "anyway and its events flow once the broker does; retrying in "
                           "the background", self.name, self.local_address,
                           self.local_link.last_error or "no answer yet")
        return ready

    def flush(self, timeout: float = DEFAULT_STOP_FLUSH) -> bool:
        """Wait (bounded, in all) until every link has what we transmitted confirmed.

        Logs, and returns False, when something is still unconfirmed at the end.
        """
        deadline = time.monotonic() + timeout
        complete = True
        for link in self.links():
            if link.buffered and not link.flush(max(0.0, deadline - time.monotonic())):
                complete = False
                logger.warning("%s: %d message(s) to %s not confirmed within %.1f s (%s)",
                               self.name, link.buffered, link.address, timeout,
                               "connected" if link.connected.is_set() else "link down")
        return complete

    def stop_consuming(self) -> None:
        """Cancel our consumers, keeping their queues (stop() deletes them).

        The chart's thread can then end on what it was given, with no more
        deliveries; :meth:`stop` deletes the queues afterwards (each consumer
        remembers its queue; the link deletes it on a channel of its own).
        """
        if self.local_link is None:
            return
        for consumer in [self.consumer, *self._local_consumers]:
            if consumer is not None:
                self.local_link.remove_consumer(consumer, delete_queue=False)

    def stop(self, *, flush_timeout: float = 2.0) -> None:
        """Stop consuming, flush what is buffered (bounded) and release every link."""
        if self._stopped:
            return
        self._stopped = True
        if flush_timeout > 0:
            self.flush(flush_timeout)
        if self.local_link is not None:
            for consumer in [self.consumer, *self._local_consumers]:
                if consumer is not None:
                    self.local_link.remove_consumer(consumer, delete_queue=True)
        with self._peers_lock:
            links = list(self._peers.values())
            self._peers.clear()
        for link in links:
            self._release(link, flush_timeout=flush_timeout)
        if self.local_link is not None:
            self._release(self.local_link, flush_timeout=flush_timeout)

    def add_local_consumer(self, consumer: Consumer) -> None:
        """Consume another queue on the local broker (snoop printers, challenge
        responder); it is removed, and its queue deleted, when the nets stop."""
        if self.local_link is None:
            raise RuntimeError("start() the nets before adding consumers")
        self._local_consumers.append(consumer)
        self.local_link.add_consumer(consumer)

    def remove_local_consumer(self, consumer: Consumer) -> None:
        if consumer in self._local_consumers and self.local_link is not None:
            self._local_consumers.remove(consumer)
            self.local_link.remove_consumer(consumer, delete_queue=True)

    def _acquire(self, address: BrokerAddress, *,
                 alternates: Sequence[BrokerAddress] = ()) -> BrokerLink:
        return LINKS.acquire(address, heartbeat=self.settings.heartbeat,
                             max_buffer=self.max_buffer, max_buffer_bytes=self.max_buffer_bytes,
                             overflow_policy=self.overflow_policy, exchanges=EXCHANGES,
                             alternates=alternates)

    def _release(self, link: BrokerLink, *, flush_timeout: float) -> None:
        LINKS.release(link, flush_timeout=flush_timeout)

    def _report_refusals(self, refused: list[tuple[BrokerLink, Outcome]]) -> None:
        """Count refusals; call on_overflow (outside every lock of ours, never re-entered)."""
        for link, outcome in refused:
            self.refusals[(link.address.url, outcome.value)] += 1
        callback = self.on_overflow
        if callback is None or getattr(self._in_callback, "active", False):
            return
        self._in_callback.active = True
        try:
            for link, outcome in refused:
                if outcome in (Outcome.OVERFLOW, Outcome.BLOCKED):
                    stats = link.stats
                    try:
                        callback(link.address.url, stats.dropped_overflow + stats.dropped_blocked)
                    except Exception:
                        logger.exception("%s: on_overflow callback failed", self.name)
        finally:
            self._in_callback.active = False

    # ------------------------------------------------------------------ peers
    def add_peer(self, entry: str | BrokerAddress) -> BrokerAddress | None:
        """Start publishing to a peer broker; None if it was known already.

        Thread-safe; a bad entry is logged and ignored (returns None).
        """
        try:
            address = entry if isinstance(entry, BrokerAddress) else parse_peer(entry, self.settings)
        except PeerAddressError as error:
            logger.warning("%s: ignoring peer: %s", self.name, error)
            return None
        if self.cluster:
            logger.debug("%s: cluster mode has no peers; ignoring %s", self.name, address)
            return None
        key = address.identity()
        if self.local_link is not None and key == self.local_link.identity:
            return None  # the local broker is always a peer already
        with self._peers_lock:
            if key in self._peers or self._stopped:
                return None
            self._peers[key] = self._acquire(address)
        logger.info("%s: publishing to peer %s", self.name, address)
        return address

    def remove_peer(self, entry: str | BrokerAddress) -> bool:
        """Stop publishing to a peer broker (thread-safe); True if it was a peer."""
        try:
            address = entry if isinstance(entry, BrokerAddress) else parse_peer(entry, self.settings)
        except PeerAddressError:
            return False
        with self._peers_lock:
            link = self._peers.pop(address.identity(), None)
            self._known_origins.clear()  # a retired peer that messages us is an alien again
        if link is None:
            return False
        self._release(link, flush_timeout=0)
        logger.info("%s: retired peer %s", self.name, address)
        return True

    def links(self) -> list[BrokerLink]:
        """The local link first, then every peer's."""
        with self._peers_lock:
            peers = list(self._peers.values())
        return ([self.local_link] if self.local_link is not None else []) + peers

    def broker_key(self) -> tuple[Any, ...]:
        """Equal for two charts of this process that share their local link."""
        if self.cluster:
            return ("cluster", *sorted({a.identity() for a in self.cluster}))
        return self.local_address.identity()

    def this_url(self) -> str:
        """The local broker; in cluster mode the cluster node in use."""
        if self.cluster and self.local_link is not None:
            return self.local_link.address.url
        return self.local_address.url

    def other_urls(self) -> list[str]:
        """The peer brokers; in cluster mode the cluster's other nodes."""
        if self.cluster:
            current = self.local_link.address if self.local_link is not None else self.cluster[0]
            return [a.url for a in self.cluster if a.hostport != current.hostport]
        with self._peers_lock:
            return [link.address.url for link in self._peers.values()]

    # ------------------------------------------------------------------ sending
    def transmit(self, signal_name: str, payload: Any, *, network: str = "mesh",
                 routing_key: str | None = None, causation: str = "",
                 connected_only: bool = False) -> bool:
        """Encode once, publish the same bytes to every broker; True if every link took it.

        Flow control: a mesh event waits (up to ``max_block`` seconds in all)
        while a connected link's window is full or its broker blocked us,
        before anything is encoded and outside every lock; past that, that
        link refuses it. A link that is down buffers and never makes the
        caller wait. Snoop lines never wait: they are dropped when there is
        no room. Refusals are counted per peer and reason (stats()).

        ``causation``: the id of the event whose handling sends this one (see
        :attr:`Envelope.causation`). ``connected_only``: skip links that are not
        connected now instead of buffering (presence lines: a stale one is worthless).

        Raises :class:`~miros_rabbitmq.errors.SerializationError` if the payload
        cannot be serialized.
        """
        net = self.networks[network]
        droppable = network != "mesh"
        links = self.links()
        refused: list[tuple[BrokerLink, Outcome]] = []
        if not droppable:
            deadline = time.monotonic() + self.max_block
            for link in links:
                if not link.wait_for_room(max(0.0, deadline - time.monotonic())):
                    link.count_refusal(Outcome.BLOCKED)
                    refused.append((link, Outcome.BLOCKED))
        with self._send_lock:  # one sender's messages keep their order on every link
            key = routing_key or net.routing_key
            envelope = Envelope(signal_name, payload, self.identity, next(self._seqs[network]),
                                self.origin, causation, epoch=self.epoch, routing_key=key)
            token = net.codec.encode(envelope)  # once, whatever the number of peers
            if not droppable and self.on_mesh_transmit is not None:
                self.on_mesh_transmit(envelope)
            for link in links:
                if connected_only and not link.connected.is_set():
                    continue
                if refused and any(link is gone for gone, _ in refused):
                    continue
                outcome = link.publish(net.exchange, key, token, persistent=not droppable,
                                       droppable=droppable, batchable=True)
                if not outcome:
                    refused.append((link, outcome))
        self.counts[f"{network}.transmitted"] += 1
        if refused:
            self._report_refusals(refused)
            return False
        return True

    # ------------------------------------------------------------------ receiving
    def _on_mesh_message(self, body: bytes, routing_key: str) -> bool:
        """I/O thread: authenticate, filter, hand to the chart. False = no room.

        A body carries one token or a batch of them (:mod:`miros_rabbitmq.wire.batch`),
        each handled on its own, in order. When the chart has no room the
        delivery is parked where it stopped: on resume the consumer hands the
        same body back and the tokens already delivered are skipped.
        """
        parked, self._parked = self._parked, None
        first, envelope = 0, None
        if parked is not None and parked[0] is body:
            first, envelope = parked[1], parked[2]
        tokens = split_tokens(body)
        for index in range(first, len(tokens)):
            if envelope is None:
                envelope = self._open(tokens[index], routing_key)
                if envelope is None:
                    continue  # dropped and counted
            if not self._take(envelope):
                self._parked = (body, index, envelope)
                return False
            envelope = None
        return True

    def _open(self, token: bytes, routing_key: str) -> Envelope | None:
        """One token: the size limit (before anything else), then one decryption.

        The codec refuses tokens of another network or routing key, and older
        than the age limit. None when the token was dropped (counted).
        """
        if len(token) > self.max_message_bytes:
            self.drops.drop("mesh", "too_large")
            return None
        try:
            return self.networks["mesh"].codec.decode(token, routing_key=routing_key)
        except DecodeError as error:
            self._dropped_token(error.reason)
            return None

    def _take(self, envelope: Envelope) -> bool:
        """Filter one envelope and hand it to the chart; False = no room (nothing changed).

        In order: no epoch (scout traffic), own messages, replays (sender,
        epoch, seq seen before), miros's reserved signals; then the chart.
        """
        if envelope.epoch == 0:
            # no sender incarnation: a scout challenge or answer, never a mesh event
            self.drops.drop("mesh", "no_epoch")
            return True
        if envelope.sender == self.identity:
            self.counts["mesh.own"] += 1  # a chart never receives its own transmissions
            return True
        if self.replays.seen(envelope.sender, envelope.epoch, envelope.seq):
            self.counts["mesh.duplicate"] += 1  # a resend we already had, or a replay
            return True
        if envelope.signal_name in RESERVED_SIGNALS:
            # ENTRY/EXIT/INIT/STOP_ACTIVE_OBJECT...: they drive the event processor
            # and are never the network's to post (a remote STOP would stop the chart)
            self.replays.accept(envelope.sender, envelope.epoch, envelope.seq)
            self.drops.drop("mesh", "reserved_signal")
            return True
        if not self._deliver(envelope):
            return False
        self.replays.accept(envelope.sender, envelope.epoch, envelope.seq)
        self.replays.note_clock(envelope.sender, envelope.sent_at, self.clock())
        self.counts["mesh.delivered"] += 1
        if self.on_alien is not None and envelope.origin not in self._known_origins:
            self._check_origin(envelope.origin)
        return True

    def _dropped_token(self, reason: str) -> None:
        global _v02_logged
        self.drops.drop("mesh", reason)
        if reason == "v0.2" and not _v02_logged:
            _v02_logged = True
            logger.warning("%s: %s", self.name, V02_HINT)

    def _check_origin(self, origin: str) -> None:
        """Report an origin that is neither our broker nor a peer, once (I/O thread)."""
        try:
            # no DNS on the I/O thread: a name not resolved yet goes to discovery,
            # which resolves it on its own thread (and scouts it before adopting it)
            key = parse_peer(origin, self.settings).cached_identity()
            valid = True
        except PeerAddressError:
            key, valid = None, False
        with self._peers_lock:
            if len(self._known_origins) >= MAX_KNOWN_ORIGINS:
                self._known_origins.clear()
            self._known_origins.add(origin)
            local = self.local_link.identity if self.local_link is not None else None
            alien = valid and (key is None or (key != local and key not in self._peers))
        callback = self.on_alien
        if alien and callback is not None:
            try:
                callback(origin)
            except Exception:
                logger.exception("%s: alien callback failed", self.name)

    # ------------------------------------------------------------------ observing
    def stats(self) -> dict[str, Any]:
        """Counters: transmitted, delivered, dropped by reason, and per peer link."""
        peers = {}
        refusals = dict(self.refusals)
        for link in self.links():
            stats = link.stats
            url = link.address.url
            peers[url] = {
                "connected": link.connected.is_set(),
                "blocked": link.blocked,
                "published": stats.published,
                "confirmed": stats.confirmed,
                "buffered": link.buffered,
                "buffered_bytes": link.buffered_bytes,
                "resent": stats.resent,
                "nacked": stats.nacked,
                "waits": stats.waits,
                "dropped_overflow": stats.dropped_overflow,
                "dropped_oldest": stats.dropped_oldest,
                "dropped_blocked": stats.dropped_blocked,
                "dropped_snoop": stats.dropped_snoop,
                "reconnects": stats.reconnects,
                "last_error": link.last_error,
                # this chart's transmissions this link refused, by reason
                "refused": {reason: n for (peer, reason), n in refusals.items() if peer == url},
            }
        return {
            "refused": sum(refusals.values()),
            "transmitted": self.counts["mesh.transmitted"],
            "delivered": self.counts["mesh.delivered"],
            "duplicates": self.counts["mesh.duplicate"],
            "own": self.counts["mesh.own"],
            "dropped": dict(self.drops.counts),
            "confirmed": sum(p["confirmed"] for p in peers.values()),
            "buffered": sum(p["buffered"] for p in peers.values()),
            "dropped_overflow": sum(p["dropped_overflow"] for p in peers.values()),
            "reconnects": sum(p["reconnects"] for p in peers.values()),
            "peers": peers,
        }

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Use ``clock`` (seconds since the epoch) to stamp and to check message times (tests)."""
        self.clock = clock
        for network in self.networks.values():
            network.codec.clock = clock

    def set_keys(self, network: str, keys: Iterable[str | bytes | Secret]) -> None:
        """Rotate a network's keys at run time: the first encrypts, all decrypt."""
        self.networks[network].codec.set_keys(list(keys))
