"""ProducerFactoryChart: discovered peers -> producers -> the networks.

A miros statechart named ``producer_factory_chart``::

    producer_discovery            CONNECTION_DISCOVERY with new peers -> refactor_producers
    |                             peer_link_changed / peer_grace_over / rescout_departed:
    |                             departures and returns (below)
    +-- post_to_queue             CONNECTION_DISCOVERY -> deferred while we post
        |                         producers_built -> put the ProducerQueue on the queue,
        |                                            hand it over -> producer_discovery
        |                         exit: recall the deferred discoveries
        +-- refactor_producers    entry: build the new peers' producers

``CONNECTION_DISCOVERY`` (:class:`~miros_rabbitmq.payloads.ConnectionDiscoveryPayload`
``(hosts, amqp_urls, dispatcher)``, published by the ``ManNetChart``, the
``LanChart``, or posted for an alien) names peers. For each peer not known
yet (this node's own broker, however it is spelled, is never one) the chart
acquires ONE link (a :class:`~miros_rabbitmq.transport.BrokerLink`: one
connection, one I/O thread per broker per process) and makes a
:class:`Producer` handle per network on it (mesh, snoop trace, snoop spy), and
puts them on :attr:`ProducerFactoryChart.producer_queue` as a
:class:`~miros_rabbitmq.payloads.ProducerQueue`; ``on_posted`` (the
discovery wiring) takes them from there into every ``MirosNets`` of the
node (``MirosNets.add_peer``, which shares the same link). Discovery events
that arrive while it posts are deferred, then recalled in order.

Departures and returns: the chart listens to each peer link. A link that is
down for ``grace_sec`` (connection lost, missed heartbeats, or a peer that
never answered) retires the peer: its handles are dropped, the networks
stop publishing to it (``on_retired``), the link is released (its buffer
goes with it), and ``PEER_LEFT`` is announced if ``PEER_JOINED`` was. The
departed address is then scouted again after ``rescout_min_sec``, doubling
up to ``rescout_max_sec``; when a node holding our key answers there (or
the peer comes back as an alien, or is discovered again) its producers are
built anew. ``PEER_JOINED`` is announced the first time a peer's link is
connected. Both are published on the miros fabric (payload: ``"host:port"``)
and handed to ``on_peer_event(signal_name, address)``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq._miros import recall_all_deferred, signal_number, subscribe_now
from miros_rabbitmq.config import Settings
from miros_rabbitmq.discovery._support import Timers, search_key
from miros_rabbitmq.discovery.rabbit_consumer_scout_chart import RabbitConsumerScoutChart
from miros_rabbitmq.errors import PeerAddressError
from miros_rabbitmq.mesh.challenge import ScoutCredentials
from miros_rabbitmq.payloads import ProducerQueue
from miros_rabbitmq.transport import LINKS, BrokerAddress, BrokerLink, parse_peer
from miros_rabbitmq.wire.names import (
    DEFAULT_SCOUT_TIMEOUT,
    EXCHANGES,
    MESH_EXCHANGE,
    SNOOP_SPY_EXCHANGE,
    SNOOP_SPY_ROUTING_KEY,
    SNOOP_TRACE_EXCHANGE,
    SNOOP_TRACE_ROUTING_KEY,
)

__all__ = ["ProducerFactoryChart", "Producer", "PeerState", "DEFAULT_GRACE_SEC"]

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SEC = 5.0
DEFAULT_RESCOUT_MIN_SEC = 1.0
DEFAULT_RESCOUT_MAX_SEC = 60.0
MAX_DEPARTED = 1024  # departed addresses remembered for re-scouting
#: peers one factory holds at most; discoveries beyond it are refused (logged)
DEFAULT_MAX_PEERS = 256
#: unverified candidates (aliens, LAN cache entries) scouted at once, at most
MAX_VETTING = 64
#: an unverified candidate whose scout failed is not scouted again for this long
VET_RETRY_SEC = 60.0
MAX_REFUSED = 1024
ALIEN = "alien"

for _name in ("CONNECTION_DISCOVERY", "AMQP_CONSUMER_CHECK", "PEER_JOINED", "PEER_LEFT",
              "producers_built", "peer_link_changed", "peer_grace_over", "rescout_departed"):
    signal_number(_name)
del _name

Key = tuple[str, int, str, str]


class Producer:
    """One network's handle on one peer broker; all of a peer's handles share its link."""

    __slots__ = ("network", "exchange", "routing_key", "address", "link")

    def __init__(self, network: str, exchange: str, routing_key: str, address: BrokerAddress,
                 link: BrokerLink) -> None:
        self.network = network
        self.exchange = exchange
        self.routing_key = routing_key
        self.address = address
        self.link = link

    def __repr__(self) -> str:
        return f"Producer({self.network!r}, {self.address.hostport!r})"


@dataclass
class PeerState:
    """What the factory knows of one peer."""

    address: BrokerAddress
    link: BrokerLink
    producers: ProducerQueue
    dispatcher: str
    handed: bool = False  # its producers reached the networks
    joined: bool = False  # its link has been connected (PEER_JOINED announced)


@dataclass
class _Departed:
    address: BrokerAddress
    dispatcher: str
    attempts: int = 0
    scout: RabbitConsumerScoutChart | None = None


@dataclass
class _Vetting:
    address: BrokerAddress
    dispatcher: str
    entry: str
    scout: RabbitConsumerScoutChart | None = None


@dataclass
class _Staged:
    address: BrokerAddress
    dispatcher: str
    entries: list[str] = field(default_factory=list)


@spy_on
def producer_discovery(chart: ProducerFactoryChart, e: Event) -> Any:
    if e.signal == signals.CONNECTION_DISCOVERY:
        if chart.stage(e.payload):
            return chart.trans(refactor_producers)
        return return_status.HANDLED
    if e.signal == signals.AMQP_CONSUMER_CHECK:
        if chart.take_rescout(e.payload) or chart.take_vetted(e.payload):
            return chart.trans(refactor_producers)
        return return_status.HANDLED
    if e.signal == signals.peer_link_changed:
        chart.link_changed(*e.payload)
        return return_status.HANDLED
    if e.signal == signals.peer_grace_over:
        chart.grace_over(e.payload)
        return return_status.HANDLED
    if e.signal == signals.rescout_departed:
        chart.rescout(e.payload)
        return return_status.HANDLED
    chart.temp.fun = chart.top
    return return_status.SUPER


@spy_on
def post_to_queue(chart: ProducerFactoryChart, e: Event) -> Any:
    if e.signal == signals.CONNECTION_DISCOVERY:
        chart.defer(e)  # we are posting: after that
        return return_status.HANDLED
    if e.signal == signals.AMQP_CONSUMER_CHECK:
        if chart.is_my_check(e.payload):
            chart.defer(e)
        return return_status.HANDLED
    if e.signal == signals.producers_built:
        chart.post_queue(e.payload)
        return chart.trans(producer_discovery)
    if e.signal == signals.EXIT_SIGNAL:
        recall_all_deferred(chart)
        return return_status.HANDLED
    chart.temp.fun = producer_discovery
    return return_status.SUPER


@spy_on
def refactor_producers(chart: ProducerFactoryChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.post_fifo(Event(signal=signals.producers_built, payload=chart.build()))
        return return_status.HANDLED
    chart.temp.fun = post_to_queue
    return return_status.SUPER


class ProducerFactoryChart(ActiveObject):
    """Build producers for discovered peers and hand them to the networks.

    ``ProducerFactoryChart(settings, live_trace=None, live_spy=None, *,
    local=None, on_posted=None, on_retired=None, on_peer_event=None,
    credentials=None, grace_sec=5, rescout_min_sec=1, rescout_max_sec=60,
    scout_timeout=0.5, max_buffer=None)``.

    ``local``: this node's broker address (never a peer). ``on_posted()``:
    called on the chart's thread after each :class:`ProducerQueue` is put on
    :attr:`producer_queue`. ``on_retired(address)``: a peer was retired.
    ``on_peer_event(signal_name, "host:port")``: ``PEER_JOINED`` /
    ``PEER_LEFT``. ``tag``: take tagged discoveries of this tag only (untagged
    ones, e.g. published by user code, always). The chart starts itself.
    """

    def __init__(
        self,
        settings: Settings,
        live_trace: bool | None = None,
        live_spy: bool | None = None,
        *,
        local: BrokerAddress | None = None,
        on_posted: Callable[[], Any] | None = None,
        on_retired: Callable[[BrokerAddress], Any] | None = None,
        on_peer_event: Callable[[str, str], Any] | None = None,
        credentials: ScoutCredentials | None = None,
        grace_sec: float = DEFAULT_GRACE_SEC,
        rescout_min_sec: float = DEFAULT_RESCOUT_MIN_SEC,
        rescout_max_sec: float = DEFAULT_RESCOUT_MAX_SEC,
        scout_timeout: float = DEFAULT_SCOUT_TIMEOUT,
        max_buffer: int | None = None,
        tag: str | None = None,
        max_peers: int = DEFAULT_MAX_PEERS,
    ) -> None:
        super().__init__(name="producer_factory_chart")
        self.tag = tag
        self.settings = settings
        self.local_key: Key | None = local.identity() if local is not None else None
        self.producer_queue: queue.SimpleQueue[ProducerQueue] = queue.SimpleQueue()
        self.on_posted = on_posted
        self.on_retired = on_retired
        self.on_peer_event = on_peer_event
        self.credentials = credentials if credentials is not None else ScoutCredentials(settings)
        self.grace_sec = grace_sec
        self.rescout_min_sec = rescout_min_sec
        self.rescout_max_sec = rescout_max_sec
        self.scout_timeout = scout_timeout
        self.max_buffer = max_buffer
        self.live_trace = bool(live_trace)
        self.live_spy = bool(live_spy)
        self.routing_key = search_key("rescout")
        self.vet_routing_key = search_key("vet")
        self.max_peers = max_peers
        self.refused = 0  # candidates refused: unverified and not proven, or over max_peers
        self._vetting: dict[Key, _Vetting] = {}
        self._refused: dict[Key, float] = {}
        self._last_full_log = float("-inf")
        self.timers = Timers(self.name)
        self.posted = 0
        self.retired = 0
        self._peers: dict[Key, PeerState] = {}
        self._peers_lock = threading.Lock()
        self._departed: dict[Key, _Departed] = {}
        self._staged: list[_Staged] = []
        self._stopped = False
        self.start_at(producer_discovery)
        subscribe_now(self, *("CONNECTION_DISCOVERY", "AMQP_CONSUMER_CHECK"))

    # ------------------------------------------------------------------ snapshot
    def peers(self) -> list[PeerState]:
        """The peers the factory holds producers for (thread-safe snapshot)."""
        with self._peers_lock:
            return list(self._peers.values())

    def departed(self) -> list[str]:
        """Addresses of retired peers still being scouted for their return."""
        return [d.address.hostport for d in list(self._departed.values())]

    # ------------------------------------------------------------------ discovery
    def _parse(self, entry: str) -> BrokerAddress | None:
        try:
            return parse_peer(entry, self.settings)
        except PeerAddressError as error:
            logger.warning("producer_factory_chart: ignoring %s", error)
            return None

    def stage(self, payload: Any) -> bool:
        """Note the new peers of a CONNECTION_DISCOVERY; True if there is any."""
        tag = getattr(payload, "tag", None)
        if tag is not None and tag != self.tag:
            return False  # made by another discovery of this process
        dispatcher = str(getattr(payload, "dispatcher", "") or "unknown")
        # an alien's origin, or a LAN cache entry, is only a claim: scouted first
        unverified = dispatcher == ALIEN or bool(getattr(payload, "unverified", False))
        entries = [*(getattr(payload, "hosts", None) or []),
                   *(getattr(payload, "amqp_urls", None) or [])]
        for entry in entries:
            if not isinstance(entry, str):
                continue
            address = self._parse(entry)
            if address is None:
                continue
            if unverified:
                self._vet(address, dispatcher)
            else:
                self._stage(address, dispatcher)
        return bool(self._staged)

    def _full(self) -> bool:
        with self._peers_lock:
            count = len(self._peers)
        if count + len(self._staged) < self.max_peers:
            return False
        self.refused += 1
        now = time.monotonic()
        if now - self._last_full_log >= 60.0:
            self._last_full_log = now
            logger.warning("producer_factory_chart: %d peers, the most it takes (max_peers); "
                           "refusing new ones (%d so far)", self.max_peers, self.refused)
        return True

    def _vet(self, address: BrokerAddress, dispatcher: str) -> None:
        """Scout an unverified candidate; it is staged only if a node holding our
        key answers there (take_vetted)."""
        key = address.identity()  # the factory's thread: a DNS lookup is fine here
        if key == self.local_key or key in self._vetting:
            return
        with self._peers_lock:
            if key in self._peers:
                return
        if any(s.address.identity() == key for s in self._staged):
            return
        refused_at = self._refused.get(key)
        if refused_at is not None and time.monotonic() - refused_at < VET_RETRY_SEC:
            return
        if len(self._vetting) >= MAX_VETTING:
            self.refused += 1
            logger.info("producer_factory_chart: %d candidates being scouted already; "
                        "ignoring %s (%s)", MAX_VETTING, address.hostport, dispatcher)
            return
        if self._full():
            return
        entry = _scout_entry(address)
        vetting = _Vetting(address, dispatcher, entry)
        self._vetting[key] = vetting
        logger.info("producer_factory_chart: scouting %s (%s) before adopting it",
                    address.hostport, dispatcher)
        vetting.scout = RabbitConsumerScoutChart(
            entry, routing_key=self.vet_routing_key, exchange_name=MESH_EXCHANGE,
            timeout=self.scout_timeout, credentials=self.credentials)

    def take_vetted(self, payload: Any) -> bool:
        """The verdict on an unverified candidate; True if it was staged."""
        if getattr(payload, "routing_key", None) != self.vet_routing_key:
            return False
        for key, vetting in list(self._vetting.items()):
            if vetting.entry != payload.ip_address:
                continue
            del self._vetting[key]
            if vetting.scout is not None:
                vetting.scout.stop()
            if payload.result:
                self._refused.pop(key, None)
                self._stage(vetting.address, vetting.dispatcher)
                return bool(self._staged)
            self.refused += 1
            if len(self._refused) >= MAX_REFUSED:
                self._refused.pop(next(iter(self._refused)))
            self._refused[key] = time.monotonic()
            logger.info("producer_factory_chart: %s (%s) did not prove our key: not adopted",
                        vetting.address.hostport, vetting.dispatcher)
        return False

    def vetting(self) -> list[str]:
        """Candidates being scouted before adoption (snapshot, for tests and tools)."""
        return [v.address.hostport for v in list(self._vetting.values())]

    def _stage(self, address: BrokerAddress, dispatcher: str) -> None:
        key = address.identity()
        if key == self.local_key:
            return
        with self._peers_lock:
            if key in self._peers:
                return
        if any(s.address.identity() == key for s in self._staged):
            return
        if self._full():
            return
        departed = self._departed.pop(key, None)
        if departed is not None:
            self._end_rescout(key, departed)
        self._staged.append(_Staged(address, dispatcher))

    def build(self) -> ProducerQueue:
        """Entry of refactor_producers: one link and three handles per staged peer."""
        staged, self._staged = self._staged, []
        mesh, trace, spy, addresses = [], [], [], []
        for item in staged:
            address = item.address
            key = address.identity()
            link = LINKS.acquire(address, heartbeat=self.settings.heartbeat,
                                 max_buffer=self.max_buffer, exchanges=EXCHANGES)
            handles = ProducerQueue(
                [Producer("mesh", MESH_EXCHANGE, "", address, link)],
                [Producer("snoop_trace", SNOOP_TRACE_EXCHANGE, SNOOP_TRACE_ROUTING_KEY, address,
                          link)],
                [Producer("snoop_spy", SNOOP_SPY_EXCHANGE, SNOOP_SPY_ROUTING_KEY, address, link)],
                [address.hostport])
            peer = PeerState(address, link, handles, item.dispatcher)
            with self._peers_lock:
                self._peers[key] = peer
            link.add_state_listener(self._on_link_state)
            if not link.connected.is_set():
                self._arm_grace(key)  # a peer that never answers is retired too
            mesh += handles.mesh_producers
            trace += handles.snoop_trace_producers
            spy += handles.snoop_spy_producers
            addresses += handles.ip_addresses
            logger.info("producer_factory_chart: new peer %s (%s)", address.hostport,
                        item.dispatcher)
        return ProducerQueue(mesh, trace, spy, addresses)

    def post_queue(self, producers: ProducerQueue) -> None:
        if not producers.ip_addresses:
            return
        self.producer_queue.put(producers)
        self.posted += 1
        if self.on_posted is not None:
            try:
                self.on_posted()
            except Exception:
                logger.exception("producer_factory_chart: handing producers over failed")
        for producer in producers.mesh_producers:
            peer = self._peer(producer.address.identity(), producer.link)
            if peer is None:
                continue
            peer.handed = True
            if peer.link.connected.is_set():
                self.timers.cancel(("grace", producer.address.identity()))
                self._join(peer)

    # ------------------------------------------------------------------ departures
    def _on_link_state(self, link: BrokerLink, connected: bool) -> None:
        """I/O thread of a peer link: tell the chart."""
        if not self._stopped:
            self.post_fifo(Event(signal=signals.peer_link_changed,
                                 payload=(link.identity, connected, link)))

    def _peer(self, key: Key, link: BrokerLink | None = None) -> PeerState | None:
        with self._peers_lock:
            peer = self._peers.get(key)
        if peer is None or (link is not None and peer.link is not link):
            return None  # an old link of a peer retired since
        return peer

    def _arm_grace(self, key: Key) -> None:
        self.timers.arm(("grace", key), self.grace_sec,
                        lambda: self.post_fifo(Event(signal=signals.peer_grace_over, payload=key)))

    def link_changed(self, key: Key, connected: bool, link: BrokerLink) -> None:
        peer = self._peer(key, link)
        if peer is None:
            return
        if connected:
            self.timers.cancel(("grace", key))
            if peer.handed:
                self._join(peer)
        else:
            logger.info("producer_factory_chart: lost %s; retiring it if it is not back "
                        "within %.1f s", peer.address.hostport, self.grace_sec)
            self._arm_grace(key)

    def _join(self, peer: PeerState) -> None:
        if not peer.joined:
            peer.joined = True
            self._announce("PEER_JOINED", peer.address)

    def grace_over(self, key: Key) -> None:
        peer = self._peer(key)
        if peer is None or peer.link.connected.is_set():
            return
        self.retire(peer, reason=peer.link.last_error or "no answer")

    def retire(self, peer: PeerState, *, reason: str = "") -> None:
        """Stop publishing to a peer, release its link, and watch for its return."""
        key = peer.address.identity()
        with self._peers_lock:
            if self._peers.get(key) is not peer:
                return
            del self._peers[key]
        self.timers.cancel(("grace", key))
        peer.link.remove_state_listener(self._on_link_state)
        self.retired += 1
        logger.info("producer_factory_chart: retired %s (%s)", peer.address.hostport,
                    reason or "retired")
        if self.on_retired is not None:
            try:
                self.on_retired(peer.address)
            except Exception:
                logger.exception("producer_factory_chart: retiring %s failed",
                                 peer.address.hostport)
        LINKS.release(peer.link, flush_timeout=0)
        if peer.joined:
            self._announce("PEER_LEFT", peer.address)
        if len(self._departed) < MAX_DEPARTED:
            self._departed[key] = _Departed(peer.address, peer.dispatcher)
            self._arm_rescout(key)

    def _arm_rescout(self, key: Key) -> None:
        departed = self._departed.get(key)
        if departed is None:
            return
        delay = min(self.rescout_max_sec, self.rescout_min_sec * 2 ** departed.attempts)
        self.timers.arm(("rescout", key), delay,
                        lambda: self.post_fifo(Event(signal=signals.rescout_departed, payload=key)))

    def rescout(self, key: Key) -> None:
        departed = self._departed.get(key)
        if departed is None:
            return
        departed.attempts += 1
        entry = _scout_entry(departed.address)
        if departed.scout is None:
            address, settings = departed.address, self.settings
            credentials = self.credentials
            if (address.user, address.vhost, address.password) != (
                    settings.rabbit_user, settings.rabbit_vhost, settings.rabbit_password):
                credentials = ScoutCredentials(replace(  # the peer's own login, not ours
                    settings, rabbit_user=address.user, rabbit_password=address.password,
                    rabbit_vhost=address.vhost), own_login=address.own_login)
            departed.scout = RabbitConsumerScoutChart(
                entry, routing_key=self.routing_key, exchange_name=MESH_EXCHANGE,
                timeout=self.scout_timeout, credentials=credentials)
        else:
            departed.scout.post_fifo(Event(signal=signals.REFACTOR_SEARCH, payload={
                "ip_address": entry, "routing_key": self.routing_key,
                "exchange_name": MESH_EXCHANGE}))

    def is_my_check(self, payload: Any) -> bool:
        return getattr(payload, "routing_key", None) in (self.routing_key, self.vet_routing_key)

    def take_rescout(self, payload: Any) -> bool:
        """An answer of a departed peer's scout; True if it is back (staged)."""
        if getattr(payload, "routing_key", None) != self.routing_key:
            return False
        for key, departed in list(self._departed.items()):
            if _scout_entry(departed.address) != payload.ip_address:
                continue
            if payload.result:
                del self._departed[key]
                self._end_rescout(key, departed)
                logger.info("producer_factory_chart: %s is back", departed.address.hostport)
                self._stage(departed.address, departed.dispatcher)
                return bool(self._staged)
            self._arm_rescout(key)
        return False

    def _end_rescout(self, key: Key, departed: _Departed) -> None:
        self.timers.cancel(("rescout", key))
        if departed.scout is not None:
            departed.scout.stop()
            departed.scout = None

    def _announce(self, signal_name: str, address: BrokerAddress) -> None:
        logger.info("producer_factory_chart: %s %s", signal_name, address.hostport)
        self.publish(Event(signal=getattr(signals, signal_name), payload=address.hostport))
        if self.on_peer_event is not None:
            try:
                self.on_peer_event(signal_name, address.hostport)
            except Exception:
                logger.exception("producer_factory_chart: on_peer_event failed")

    # ------------------------------------------------------------------ life
    def stop(self) -> None:
        """Stop the chart, its timers and scouts; release every peer link it holds."""
        self._stopped = True
        self.timers.close()
        super().stop()
        for key, departed in list(self._departed.items()):
            self._end_rescout(key, departed)
        self._departed.clear()
        for vetting in list(self._vetting.values()):
            if vetting.scout is not None:
                vetting.scout.stop()
        self._vetting.clear()
        with self._peers_lock:
            peers, self._peers = list(self._peers.values()), {}
        for peer in peers:
            peer.link.remove_state_listener(self._on_link_state)
            LINKS.release(peer.link, flush_timeout=0)

    def known(self, entries: Iterable[str]) -> list[str]:
        """Which of ``entries`` are peers now (for tests and tools)."""
        result = []
        with self._peers_lock:
            keys = set(self._peers)
        for entry in entries:
            address = self._parse(entry)
            if address is not None and address.identity() in keys:
                result.append(entry)
        return result


def _scout_entry(address: BrokerAddress) -> str:
    """What a scout of ``address`` is given: ``host:port``, or an amqps:// URL
    (without a login) so that TLS is never dropped on the way."""
    if address.tls is None:
        return address.hostport
    vhost = urllib.parse.quote(address.vhost, safe="")
    return f"amqps://{address.hostport}/{vhost}"
