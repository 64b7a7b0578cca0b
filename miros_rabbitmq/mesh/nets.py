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
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
    parse_peer,
)
from miros_rabbitmq.transport.consumer import DEFAULT_QUEUE_MAX_LENGTH
from miros_rabbitmq.wire.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    JSON,
    PICKLE,
    Codec,
    Envelope,
    Serializer,
)

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

MESH_EXCHANGE = "miros.mesh.exchange"
SNOOP_TRACE_EXCHANGE = "miros.snoop.trace.exchange"
SNOOP_SPY_EXCHANGE = "miros.snoop.spy.exchange"
SNOOP_TRACE_ROUTING_KEY = "snoop.trace"
SNOOP_SPY_ROUTING_KEY = "snoop.spy"
EXCHANGES = (
    (MESH_EXCHANGE, "topic"),
    (SNOOP_TRACE_EXCHANGE, "topic"),
    (SNOOP_SPY_EXCHANGE, "topic"),
)

DEFAULT_QUEUE_EXPIRES_MS = 10 * 60 * 1000  # an abandoned chart queue lives 10 min
DEFAULT_MAX_BLOCK = 60.0  # seconds transmit() waits for room on a connected, full link
DEFAULT_STOP_FLUSH = 5.0  # seconds stop() waits for confirms of what was transmitted
DEDUP_SENDERS = 4096  # senders remembered by the duplicate filter
DEDUP_GAPS = 64  # per sender: skipped sequence numbers still accepted (a nacked resend)
DROP_LOG_INTERVAL = 60.0


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
        ttl: int | None = None,
        max_buffer: int | None = None,
        max_buffer_bytes: int = DEFAULT_MAX_BYTES,
        overflow_policy: str = DROP_NEW,
        max_block: float = DEFAULT_MAX_BLOCK,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        queue_expires_ms: int = DEFAULT_QUEUE_EXPIRES_MS,
        queue_max_length: int = DEFAULT_QUEUE_MAX_LENGTH,
        on_overflow: Callable[[str, int], None] | None = None,
        brokers: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.tx_routing_key = tx_routing_key
        self.rx_routing_keys = (
            (rx_routing_key,) if isinstance(rx_routing_key, str) else tuple(rx_routing_key))
        self.identity = f"{name}.{uuid.uuid4().hex[:12]}"
        # where peers reach our broker; discovery sets it to our LAN address when known
        self.origin = f"{settings.rabbit_host}:{settings.rabbit_port}"
        # on_alien(origin): called (I/O thread, must not block) once per origin of an
        # authentic mesh message that is neither our broker nor a peer (discovery)
        self.on_alien: Callable[[str], None] | None = None
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
        limits = {"ttl": ttl, "max_message_bytes": max_message_bytes}
        # snoop lines are plain data: their networks use the JSON serializer,
        # which never runs code on load, whatever the mesh uses
        self.networks = {
            "mesh": Network("mesh", MESH_EXCHANGE,
                            Codec(settings.mesh_keys, serializer=serializer, **limits),
                            tx_routing_key),
            "snoop_trace": Network("snoop_trace", SNOOP_TRACE_EXCHANGE,
                                   Codec(settings.snoop_trace_keys, serializer=JSON, **limits),
                                   SNOOP_TRACE_ROUTING_KEY),
            "snoop_spy": Network("snoop_spy", SNOOP_SPY_EXCHANGE,
                                 Codec(settings.snoop_spy_keys, serializer=JSON, **limits),
                                 SNOOP_SPY_ROUTING_KEY),
        }
        self._deliver = deliver
        # one sequence per network: a receiver's duplicate filter sees every
        # mesh number of a sender, so a gap means a message still to come
        self._seqs = {name: itertools.count(1) for name in self.networks}
        self._send_lock = threading.Lock()
        self._peers_lock = threading.Lock()
        self._peers: dict[tuple[str, int, str, str], BrokerLink] = {}
        self._last_seq: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._gaps: dict[str, set[int]] = {}  # per sender: skipped seqs (see _on_mesh_message)
        self._initial_peers = list(peers)
        self.local_address = BrokerAddress(settings.rabbit_host, settings.rabbit_port,
                                           settings.rabbit_vhost, settings.rabbit_user,
                                           settings.rabbit_password)
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
            queue=f"miros.mesh.{self.identity}",
            durable=True,
            expires_ms=self.queue_expires_ms,
            max_length=self.queue_max_length,
            # replicated: the loss of one cluster node loses nothing confirmed
            queue_type="quorum" if self.cluster else None,
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
        """Cancel our consumers, keeping their queues (stop() deletes them)."""
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
                 routing_key: str | None = None) -> bool:
        """Encode once, publish the same bytes to every broker; True if every link took it.

        Flow control: a mesh event waits (up to ``max_block`` seconds in all)
        while a connected link's window is full or its broker blocked us,
        before anything is encoded and outside every lock; past that, that
        link refuses it. A link that is down buffers and never makes the
        caller wait. Snoop lines never wait: they are dropped when there is
        no room. Refusals are counted per peer and reason (stats()).

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
            envelope = Envelope(signal_name, payload, self.identity, next(self._seqs[network]), self.origin)
            token = net.codec.encode(envelope)  # once, whatever the number of peers
            key = routing_key or net.routing_key
            for link in links:
                if refused and any(link is gone for gone, _ in refused):
                    continue
                outcome = link.publish(net.exchange, key, token,
                                       persistent=not droppable, droppable=droppable)
                if not outcome:
                    refused.append((link, outcome))
        self.counts[f"{network}.transmitted"] += 1
        if refused:
            self._report_refusals(refused)
            return False
        return True

    # ------------------------------------------------------------------ receiving
    def _on_mesh_message(self, body: bytes) -> bool:
        """I/O thread: authenticate, filter, hand to the chart. False = no room."""
        try:
            envelope = self.networks["mesh"].codec.decode(body)
        except DecodeError as error:
            self.drops.drop("mesh", error.reason)
            return True
        if envelope.sender == self.identity:
            self.counts["mesh.own"] += 1  # a chart never receives its own transmissions
            return True
        sender, seq = envelope.sender, envelope.seq
        last = self._last_seq.get(sender)
        late = last is not None and seq <= last
        if late and seq not in self._gaps.get(sender, ()):
            self.counts["mesh.duplicate"] += 1
            return True
        if not self._deliver(envelope):
            return False
        if late:
            # a message its sender sent again after a nack, behind newer ones:
            # its number was skipped (a gap), so it is new here; once only
            self._gaps[sender].discard(seq)
        else:
            if last is not None and seq > last + 1:
                self._remember_gap(sender, last, seq)
            self._last_seq[sender] = seq
            self._last_seq.move_to_end(sender)
            if len(self._last_seq) > DEDUP_SENDERS:
                forgotten, _ = self._last_seq.popitem(last=False)
                self._gaps.pop(forgotten, None)
        self.counts["mesh.delivered"] += 1
        if self.on_alien is not None and envelope.origin not in self._known_origins:
            self._check_origin(envelope.origin)
        return True

    def _remember_gap(self, sender: str, last: int, seq: int) -> None:
        """Mesh sequence numbers of a sender are consecutive (snoop lines count apart),
        so a jump means some were refused by a broker and will come again (bounded)."""
        gaps = self._gaps.setdefault(sender, set())
        gaps.update(range(max(last + 1, seq - DEDUP_GAPS), seq))
        while len(gaps) > DEDUP_GAPS:
            gaps.discard(min(gaps))

    def _check_origin(self, origin: str) -> None:
        """Report an origin that is neither our broker nor a peer, once (I/O thread)."""
        try:
            key = parse_peer(origin, self.settings).identity()
        except PeerAddressError:
            key = None
        with self._peers_lock:
            self._known_origins.add(origin)
            local = self.local_link.identity if self.local_link is not None else None
            alien = key is not None and key != local and key not in self._peers
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

    def set_keys(self, network: str, keys: Iterable[str | bytes | Secret]) -> None:
        """Rotate a network's keys at run time: the first encrypts, all decrypt."""
        self.networks[network].codec.set_keys(list(keys))
