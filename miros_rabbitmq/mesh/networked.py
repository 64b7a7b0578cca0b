"""NetworkedActiveObject and NetworkedFactory: miros charts that talk over RabbitMQ.

Both are real subclasses of the miros classes; the networking is one mixin.
A transmitted event lands in the FIFO of every other networked chart whose
``rx_routing_key`` matches the sender's ``tx_routing_key``, on this machine
and on every peer broker; the receiver cannot tell it from a local event.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from miros import ActiveObject, Event, Factory

from miros_rabbitmq._miros import QUEUE_SIZE, chart_queue, install_queue, make_event
from miros_rabbitmq.config import Settings, load_settings
from miros_rabbitmq.discovery.hosts_file import read_hosts
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.mesh import presence, snoop
from miros_rabbitmq.mesh.causation import CausalDeque, Context, tag
from miros_rabbitmq.mesh.nets import DEFAULT_MAX_BLOCK, DEFAULT_STOP_FLUSH, MirosNets
from miros_rabbitmq.transport import DEFAULT_MAX_BYTES, DROP_NEW
from miros_rabbitmq.wire.codec import PICKLE, Envelope, Serializer
from miros_rabbitmq.wire.names import (
    DEFAULT_MAX_AGE_SEC,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RX_ROUTING_KEY,
    HOSTS_FILE,
)

__all__ = ["NetworkedActiveObject", "NetworkedFactory", "HOSTS_FILE", "check_routing_key",
           "read_hosts_file"]

logger = logging.getLogger(__name__)

#: 0.3.0 name: the age limit for receivers that do not know a sender's epoch (6 h)
DEFAULT_TTL = DEFAULT_MAX_AGE_SEC

# Room kept free in a chart's 500-event queue for the chart's own posts:
# above this many queued events the network waits instead of posting (miros
# would silently drop the oldest event).
RECEIVE_LIMIT = QUEUE_SIZE - 100
RESUME_BELOW = RECEIVE_LIMIT - 50


def read_hosts_file(path: str = HOSTS_FILE) -> list[str]:
    """The ``hosts`` of a hosts file (0.3.0 name of :func:`~miros_rabbitmq.discovery.hosts_file.read_hosts`)."""
    return read_hosts(path)


def _discovery_config(discovery: Any, lan_cache_file: str | None) -> Any:
    """The DiscoveryConfig of the ``discovery`` / ``lan_cache_file`` keywords."""
    from miros_rabbitmq.discovery.discovery import DiscoveryConfig

    if discovery is None:
        config = DiscoveryConfig()
    elif isinstance(discovery, DiscoveryConfig):
        config = discovery
    elif isinstance(discovery, dict):
        config = DiscoveryConfig(**discovery)
    else:
        raise ConfigurationError("discovery= takes a miros_rabbitmq.discovery.discovery.DiscoveryConfig "
                                 "or a dict of its fields")
    if lan_cache_file is not None:
        config = dataclasses.replace(config, lan_cache_file=lan_cache_file)
    return config.resolved()  # files relative to the working folder of the constructor


class _Networked:
    """What a networked chart adds to a miros chart."""

    nets: MirosNets
    settings: Settings

    def _init_networking(
        self,
        name: str,
        *,
        rabbit_user: str | None = None,
        rabbit_password: str | None = None,
        tx_routing_key: str | None = None,
        rx_routing_key: str | Sequence[str] | None = None,
        mesh_encryption_key: str | bytes | Sequence[str | bytes] | None = None,
        snoop_trace_encryption_key: str | bytes | Sequence[str | bytes] | None = None,
        snoop_spy_encryption_key: str | bytes | Sequence[str | bytes] | None = None,
        peers: Iterable[str] | None = None,
        serializer: Serializer = PICKLE,
        ttl: float | None = DEFAULT_TTL,
        max_buffer: int | None = None,
        max_buffer_bytes: int = DEFAULT_MAX_BYTES,
        overflow_policy: str = DROP_NEW,
        max_block: float = DEFAULT_MAX_BLOCK,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_overflow: Callable[[str, int], None] | None = None,
        rabbit_host: str | None = None,
        rabbit_port: int | None = None,
        lan_discovery: bool | None = None,
        discovery: Any = None,
        lan_cache_file: str | None = None,
        brokers: Sequence[str] | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError("a networked chart needs a name, unique on the mesh")
        self.settings = load_settings(
            rabbit_user=rabbit_user,
            rabbit_password=rabbit_password,
            mesh_encryption_key=mesh_encryption_key,
            snoop_trace_encryption_key=snoop_trace_encryption_key,
            snoop_spy_encryption_key=snoop_spy_encryption_key,
            rabbit_host=rabbit_host,
            rabbit_port=rabbit_port,
            lan_discovery=lan_discovery,
            rabbit_cluster=brokers,
        )
        if self.settings.rabbit_cluster and peers is None:
            peers = []  # cluster mode: the cluster is the membership; no discovery
        # no explicit peers: discovery (hosts file, LAN, aliens) finds them once started
        self._discovery_config = _discovery_config(discovery, lan_cache_file) \
            if peers is None else None
        self._discovery: Any = None
        if peers is None:
            peers = []
        # the queue the network posts into must tell us when it has room again
        install_queue(self, CausalDeque(resume_below=RESUME_BELOW))  # with causation ids
        self.nets = MirosNets(
            name=name,
            settings=self.settings,
            tx_routing_key=tx_routing_key or "",
            rx_routing_key=rx_routing_key if rx_routing_key is not None else DEFAULT_RX_ROUTING_KEY,
            deliver=self._deliver_from_network,
            peers=peers,
            serializer=serializer,
            ttl=ttl,
            max_buffer=max_buffer,
            max_buffer_bytes=max_buffer_bytes,
            overflow_policy=overflow_policy,
            max_block=max_block,
            max_message_bytes=max_message_bytes,
            on_overflow=on_overflow,
            brokers=self.settings.rabbit_cluster,
        )

    # -- the public API of miros-rabbitmq 0.2
    def transmit(self, event: Event) -> bool:
        """Send ``event`` to every other chart whose rx key matches our tx key.

        True when every peer link accepted it. While a peer is connected this
        waits for room (flow control, up to ``max_block`` seconds) rather than
        drop; a peer that is down buffers (bounded) and never makes it wait.
        """
        queue: Any = chart_queue(self)  # a CausalDeque
        return self.nets.transmit(event.signal_name, event.payload,
                                  causation=queue.causes.causation())

    def this_url(self) -> str:
        """AMQP URL of this node's broker (password masked)."""
        return self.nets.this_url()

    def other_urls(self) -> list[str]:
        """AMQP URLs of the peer brokers this chart publishes to (passwords masked)."""
        return self.nets.other_urls()

    def start_at(self, initial_state: Any) -> None:
        """Start the networks (bounded wait for the local broker), then the chart.

        Raises BrokerAuthenticationError when the local broker refuses the
        credentials; an unreachable broker is retried in the background.
        """
        try:
            self.nets.start()
        except Exception:
            snoop.detach(self)
            raise
        if self._discovery_config is not None and self._discovery is None:
            from miros_rabbitmq.discovery.discovery import (
                Discovery,  # never waits: peers join as they are found
            )

            self._discovery = Discovery.attach(self, self._discovery_config)
        super().start_at(initial_state)  # type: ignore[misc]
        presence.announce(self)  # "start", then a presence line every few seconds

    def stop(self) -> None:
        """Flush what was transmitted (bounded, reported), stop the chart, then the networks.

        Order: snoop and discovery first; then the outgoing flush (a peer
        that is up gets everything transmitted before stop()); then the
        consumers are cancelled and the chart's thread ends; only then are
        the chart's queues deleted and the links released.
        """
        snoop.detach(self)  # publish the snoop lines still queued, stop printing
        presence.retire(self)  # "stop"
        if self._discovery is not None:
            from miros_rabbitmq.discovery.discovery import Discovery

            Discovery.detach(self)
            self._discovery = None
        self.nets.flush(DEFAULT_STOP_FLUSH)
        self.nets.stop_consuming()
        if getattr(self, "thread", None) is not None:
            super().stop()  # type: ignore[misc]
        self.nets.stop(flush_timeout=0)

    # -- snoop trace / snoop spy (see miros_rabbitmq.mesh.snoop)
    def enable_snoop_trace(self) -> None:
        """Publish this chart's live trace on the snoop trace network; print every node's."""
        snoop.enable(self, snoop.TRACE, color=True)

    def enable_snoop_trace_no_color(self) -> None:
        """As :meth:`enable_snoop_trace`, printing plain text (for logs)."""
        snoop.enable(self, snoop.TRACE, color=False)

    def enable_snoop_spy(self) -> None:
        """Publish this chart's live spy on the snoop spy network; print every node's."""
        snoop.enable(self, snoop.SPY, color=True)

    def enable_snoop_spy_no_color(self) -> None:
        """As :meth:`enable_snoop_spy`, printing plain text (for logs)."""
        snoop.enable(self, snoop.SPY, color=False)

    def snoop_scribble(self, message: str, enable_color: bool = True) -> None:
        """Put ``[timestamp] [name] # message`` into the snoop trace (else spy) stream."""
        snoop.scribble(self, message, enable_color=enable_color)

    # -- the receive path (runs on the local broker's I/O thread)
    def _deliver_from_network(self, envelope: Envelope) -> bool:
        queue = chart_queue(self)
        if len(queue.deque) >= RECEIVE_LIMIT:
            queue.on_room = self.nets.consumer.resume if self.nets.consumer else None
            if len(queue.deque) >= RECEIVE_LIMIT:
                return False  # back-pressure: the delivery stays unacked in RabbitMQ
            queue.on_room = None
        event = make_event(envelope.signal_name, envelope.payload)
        tag(event, Context(envelope.event_id, envelope.causation, True, envelope.signal_name))
        self.post_fifo(event)  # type: ignore[attr-defined]
        return True


_KeyArg = str | bytes | Sequence[str | bytes] | None

#: names some 0.2 releases used for the snoop keys -> today's names
_DEPRECATED_ALIASES = {
    "spy_snoop_encryption_key": "snoop_spy_encryption_key",
    "trace_snoop_encryption_key": "snoop_trace_encryption_key",
}


def _looks_like_fernet_key(text: str) -> bool:
    """True when ``text`` is a Fernet key (32 bytes, url-safe base64)."""
    if len(text.strip()) != 44:
        return False
    try:
        return len(base64.urlsafe_b64decode(text.strip().encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError):
        return False


def check_routing_key(value: Any, argument: str) -> Any:
    """``value`` if it is a usable routing key (or pattern); a clear error otherwise.

    A routing key travels in clear on every message, so a value that is a
    key (bytes, or text that decodes as a Fernet key: the usual slip when a
    0.2-style positional call is off by one) is refused, never sent.
    """
    values = [value] if isinstance(value, (str, bytes)) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigurationError(
            f"{argument} must be a str (a topic key such as 'heya.man')"
            + (" or a list of str" if argument == "rx_routing_key" else "")
            + f", not {type(value).__name__}")
    for item in values:
        if isinstance(item, bytes):
            raise ConfigurationError(
                f"{argument} got bytes: routing keys are str; bytes look like an encryption "
                "key, which must never travel in clear (0.2's positional order is name, "
                "rabbit_user, rabbit_password, mesh_encryption_key, tx_routing_key, "
                "rx_routing_key)")
        if not isinstance(item, str):
            raise ConfigurationError(
                f"{argument} must be a str, not {type(item).__name__}")
        if _looks_like_fernet_key(item):
            raise ConfigurationError(
                f"{argument} looks like a Fernet key: refused, a routing key travels in "
                "clear on every message (0.2's positional order is name, rabbit_user, "
                "rabbit_password, mesh_encryption_key, tx_routing_key, rx_routing_key)")
    return value


def _network_arguments(
    tx_routing_key: Any, rx_routing_key: Any, options: dict[str, Any],
) -> tuple[str, Any]:
    """0.2's routing-key rules; moves the deprecated snoop-key names in ``options``."""
    for old, new in _DEPRECATED_ALIASES.items():
        if old in options:
            warnings.warn(f"{old}= is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
            value = options.pop(old)
            if options.get(new) is not None and value is not None:
                raise ConfigurationError(f"{old}= and {new}= name the same key: give one")
            if value is not None:
                options[new] = value
    if tx_routing_key is not None:
        check_routing_key(tx_routing_key, "tx_routing_key")
        if not isinstance(tx_routing_key, str):
            raise ConfigurationError("tx_routing_key must be one str, not a list")
    if rx_routing_key is not None:
        check_routing_key(rx_routing_key, "rx_routing_key")
    elif tx_routing_key is not None:
        rx_routing_key = tx_routing_key  # 0.2's rule: no rx key means the tx key
    return tx_routing_key, rx_routing_key


class NetworkedActiveObject(_Networked, ActiveObject):
    """A miros ActiveObject whose events travel over RabbitMQ.

    0.2's positional order, then keyword-only options::

        (name, rabbit_user=None, rabbit_password=None, mesh_encryption_key=None,
         tx_routing_key=None, rx_routing_key=None,
         snoop_spy_encryption_key=None, snoop_trace_encryption_key=None, *, ...)

    Credentials and keys default to the environment / ``.env``: RABBIT_USER,
    RABBIT_PASSWORD, MESH_ENCRYPTION_KEY, SNOOP_SPY_ENCRYPTION_KEY,
    SNOOP_TRACE_ENCRYPTION_KEY (the snoop keys default to the mesh key).

    name: unique per chart on the mesh.
    mesh_encryption_key: Fernet key of the mesh (str or bytes; a list rotates keys).
    tx_routing_key: topic key put on what this chart transmits.
    rx_routing_key: topic pattern (``*``, ``#``) of what it receives; None
        means the same as ``tx_routing_key`` (0.2's rule), or ``#`` (everything)
        when neither is given. A routing key must be a str that is not an
        encryption key: it travels in clear on every message.
    snoop_spy_encryption_key, snoop_trace_encryption_key: the snoop networks'
        keys (``spy_snoop_encryption_key`` / ``trace_snoop_encryption_key``, the
        names of some 0.2 releases, still work with a DeprecationWarning).

    Keyword-only options:

    peers: broker addresses to publish to besides the local one (``host``,
        ``host:port`` or ``amqp://`` URLs). Default (None): discovery finds them
        (the hosts file ``.miros_rabbitmq_hosts.json``, the LAN, aliens; see
        docs/discovery.md); ``start_at`` never waits for it.
    serializer: ``PICKLE`` (default: any picklable payload) or ``JSON`` (plain
        data only, never runs code on load) or your own ``Serializer``.
    ttl: refuse messages first sent more than this many seconds ago, or
        stamped that far in the future (default 6 h; None: any age). Replays
        to a running receiver are refused at any age (sender epoch + sequence
        numbers); this limit covers a receiver that restarted.
    max_buffer_bytes: bytes kept per peer until its broker confirms them
        (default 64 MiB): what a peer that is down buffers; beyond it the
        ``overflow_policy`` (``"drop_new"``, default, or ``"drop_oldest"``)
        drops, counts and reports.
    max_buffer: optional bound in messages as well (default None).
    max_block: seconds ``transmit()`` may wait for room on a connected peer
        whose window is full or whose broker blocked us (default 60); past
        it the event is dropped for that peer, counted and reported.
    max_message_bytes: larger incoming messages are dropped (default 16 MiB).
    on_overflow: ``callback(peer_url, dropped_so_far)`` when a peer refused an
        event (buffer full, or max_block passed); runs on the transmitting
        thread outside every lock, so it may transmit.
    rabbit_host, rabbit_port: the local broker (default RABBIT_HOST or
        127.0.0.1, RABBIT_PORT or 5672).
    lan_discovery: find peers on the LAN (default: MIROS_RABBITMQ_LAN_DISCOVERY, on).
    discovery: a ``miros_rabbitmq.discovery.discovery.DiscoveryConfig`` (or a dict of its
        fields): files, timeouts, networks scanned (with ``peers=None``).
    lan_cache_file: where the LAN cache lives (default
        ``.miros_rabbitmq_lan_cache.json`` in the working folder).
    brokers: cluster mode (default: RABBIT_CLUSTER, comma-separated): the URLs
        of a RabbitMQ cluster's nodes, e.g. ``["amqp://n1", "amqps://n2:5671"]``.
        One connection per process to one node at a time, failing over to the
        next; quorum queues; no peers, no discovery. See docs/scaling.md.
    instrumented: (NetworkedActiveObject) as for miros's ActiveObject.
    """

    def __init__(
        self,
        name: str,
        rabbit_user: str | None = None,
        rabbit_password: str | None = None,
        mesh_encryption_key: _KeyArg = None,
        tx_routing_key: str | None = None,
        rx_routing_key: str | Sequence[str] | None = None,
        snoop_spy_encryption_key: _KeyArg = None,
        snoop_trace_encryption_key: _KeyArg = None,
        *,
        instrumented: bool | None = None,
        **options: Any,
    ) -> None:
        options["snoop_spy_encryption_key"] = snoop_spy_encryption_key
        options["snoop_trace_encryption_key"] = snoop_trace_encryption_key
        tx_routing_key, rx_routing_key = _network_arguments(tx_routing_key, rx_routing_key,
                                                            options)
        ActiveObject.__init__(self, name=name, instrumented=instrumented)
        self._init_networking(
            name, rabbit_user=rabbit_user, rabbit_password=rabbit_password,
            tx_routing_key=tx_routing_key, rx_routing_key=rx_routing_key,
            mesh_encryption_key=mesh_encryption_key, **options)


class NetworkedFactory(_Networked, Factory):
    """A miros Factory (create/catch/nest) whose events travel over RabbitMQ.

    It takes the arguments of :class:`NetworkedActiveObject` (0.2's positional
    order, then keyword-only options), except ``instrumented``: a Factory
    chart is always instrumented.
    """

    def __init__(
        self,
        name: str,
        rabbit_user: str | None = None,
        rabbit_password: str | None = None,
        mesh_encryption_key: _KeyArg = None,
        tx_routing_key: str | None = None,
        rx_routing_key: str | Sequence[str] | None = None,
        snoop_spy_encryption_key: _KeyArg = None,
        snoop_trace_encryption_key: _KeyArg = None,
        **options: Any,
    ) -> None:
        options["snoop_spy_encryption_key"] = snoop_spy_encryption_key
        options["snoop_trace_encryption_key"] = snoop_trace_encryption_key
        tx_routing_key, rx_routing_key = _network_arguments(tx_routing_key, rx_routing_key,
                                                            options)
        Factory.__init__(self, name)
        self._init_networking(
            name, rabbit_user=rabbit_user, rabbit_password=rabbit_password,
            tx_routing_key=tx_routing_key, rx_routing_key=rx_routing_key,
            mesh_encryption_key=mesh_encryption_key, **options)
