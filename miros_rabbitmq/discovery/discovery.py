"""The discovery of one node: who its peers are, as they come and go.

A networked chart built without ``peers=`` (``NetworkedActiveObject(...,
peers=None)``, the default) gets its peers from discovery, started by
``start_at`` and stopped by ``stop``; ``start_at`` never waits for it. The
charts of one process that share their settings (credentials, mesh key,
local broker, files) share one :class:`Discovery`::

    ManNetChart ----------------\\  CONNECTION_DISCOVERY       ProducerQueue        add_peer
    LanChart <- CacheFileChart --+-----------------------> ProducerFactoryChart ---------> MirosNets
      ^  RECCE_LAN / LAN_RECCE_COMPLETE                    (one link per peer;      (every chart
    LanRecceChart -- scouts      |                          departures, returns)     of the node)
    aliens (MirosNets.on_alien) -/                          PEER_JOINED / PEER_LEFT

* the hosts file (``.miros_rabbitmq_hosts.json``): every host scouted, the
  live ones added, dead ones scouted again later (``ManNetChart``);
* the LAN, unless switched off (``lan_discovery=False`` or
  ``MIROS_RABBITMQ_LAN_DISCOVERY=0``): the LAN cache when fresh, else a scan
  (``LanChart``, ``LanRecceChart``, ``CacheFileChart``);
* aliens: an authentic mesh message from a node we do not know makes us add
  its broker (its ``origin``, which discovery sets to this node's LAN
  address and port when LAN discovery is on).

``PEER_JOINED`` / ``PEER_LEFT`` (payload ``"host:port"``) are published on
the miros fabric (any instrumented chart that subscribes gets them) AND
posted into the FIFO of every networked chart of the node that has not
subscribed to them itself (a user chart need not be instrumented).

:func:`discover_once` scouts once and reports, for tools such as
``miros-rabbitmq discover``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from miros import Event, signals

from miros_rabbitmq._miros import signal_number, subscribed
from miros_rabbitmq.cache.cache_file_chart import CacheFileChart
from miros_rabbitmq.config import Settings, load_settings
from miros_rabbitmq.discovery._support import tagged
from miros_rabbitmq.discovery.hosts_file import read_hosts
from miros_rabbitmq.discovery.lan_chart import DEFAULT_TIME_OUT_IN_MINUTES, LanChart
from miros_rabbitmq.discovery.lan_recce_chart import (
    DEFAULT_ARP_TIMEOUT_SEC,
    LanRecceChart,
    lan_interfaces,
    my_lan_address,
    plan_scan,
)
from miros_rabbitmq.discovery.man_net_chart import ManNetChart
from miros_rabbitmq.discovery.producer_factory_chart import (
    DEFAULT_GRACE_SEC,
    ProducerFactoryChart,
)
from miros_rabbitmq.errors import ConfigurationError, PeerAddressError
from miros_rabbitmq.mesh.challenge import ScoutCredentials
from miros_rabbitmq.payloads import ConnectionDiscoveryPayload
from miros_rabbitmq.transport import (
    PROBER,
    BrokerAddress,
    ProbeResult,
    local_broker,
)
from miros_rabbitmq.wire.names import (
    DEFAULT_SCOUT_TIMEOUT,
    DISCOVER_ROUTING_KEY,
    HOSTS_FILE,
    LAN_CACHE_FILE,
    MESH_EXCHANGE,
    ProbeOutcome,
)

__all__ = [
    "Discovery",
    "DiscoveryConfig",
    "PeerReport",
    "discover_once",
    "LAN_NETWORKS_ENV",
    "LIVE",
    "DEAD",
    "NO_BROKER",
    "NO_NODE",
    "WRONG_KEY",
    "BAD_CREDENTIALS",
    "NO_SCOUT_ACCOUNT",
    "UNRESOLVED",
    "BAD_ADDRESS",
    "ERROR",
]

logger = logging.getLogger(__name__)

#: comma-separated CIDRs: the LAN scan only ever looks inside these networks
LAN_NETWORKS_ENV = "MIROS_RABBITMQ_LAN_NETWORKS"
ALIEN = "alien"
MAX_DISCOVER_ADDRESSES = 4096

for _name in ("CONNECTION_DISCOVERY", "PEER_JOINED", "PEER_LEFT", "RECCE_LAN"):
    signal_number(_name)
del _name


def _env_networks() -> tuple[str, ...] | None:
    raw = os.environ.get(LAN_NETWORKS_ENV, "").strip()
    if not raw:
        return None
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class DiscoveryConfig:
    """How a node discovers its peers (every field has a working default).

    ``hosts_file`` / ``lan_cache_file``: default ``.miros_rabbitmq_hosts.json``
    / ``.miros_rabbitmq_lan_cache.json`` in the working folder.
    ``time_out_in_minutes``: LAN cache lifetime. ``arp_timeout_sec``: how long
    the neighbour table fills before it is read. ``scout_timeout``: seconds
    an address has to answer a scout. ``lan_networks``: scan only inside
    these CIDRs (default: env ``MIROS_RABBITMQ_LAN_NETWORKS``, else every
    subnet of this host). ``peer_grace_sec``: how long a peer's broker may
    be unreachable before the peer is retired. ``rescout_min_sec`` /
    ``rescout_max_sec``: the re-scouting backoff of a departed peer.
    ``hosts_watch_sec``: how often the hosts file is checked for changes.
    ``live_trace`` / ``live_spy``: print the discovery charts' trace / spy.
    """

    hosts_file: str | None = None
    lan_cache_file: str | None = None
    time_out_in_minutes: float = DEFAULT_TIME_OUT_IN_MINUTES
    arp_timeout_sec: float = DEFAULT_ARP_TIMEOUT_SEC
    scout_timeout: float = DEFAULT_SCOUT_TIMEOUT
    lan_networks: tuple[str, ...] | None = None
    peer_grace_sec: float = DEFAULT_GRACE_SEC
    rescout_min_sec: float = 1.0
    rescout_max_sec: float = 60.0
    hosts_reevaluate_max_sec: float = 60.0
    hosts_watch_sec: float = 5.0
    ping: bool = True
    live_trace: bool = False
    live_spy: bool = False

    def resolved(self) -> DiscoveryConfig:
        """Absolute file paths, the environment's networks."""
        networks = self.lan_networks if self.lan_networks is not None else _env_networks()
        return replace(
            self,
            hosts_file=os.path.abspath(self.hosts_file or HOSTS_FILE),
            lan_cache_file=os.path.abspath(self.lan_cache_file or LAN_CACHE_FILE),
            lan_networks=tuple(networks) if networks is not None else None)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Discovery:
    """The discovery charts of one node, wired to its networked charts."""

    _registry: dict[tuple[Any, ...], Discovery] = {}
    _registry_lock = threading.Lock()

    def __init__(self, settings: Settings, config: DiscoveryConfig | None = None, *,
                 max_buffer: int | None = None) -> None:
        self.settings = settings
        self.config = (config or DiscoveryConfig()).resolved()
        self.max_buffer = max_buffer
        self.lan = settings.lan_discovery
        self.local = local_broker(settings)
        self.origin: str | None = None
        self.credentials: ScoutCredentials | None = None
        self.factory: ProducerFactoryChart | None = None
        self.man_net: ManNetChart | None = None
        self.cache: CacheFileChart | None = None
        self.recce: LanRecceChart | None = None
        self.lan_chart: LanChart | None = None
        self._charts: list[Any] = []
        self._lock = threading.RLock()
        self._key: tuple[Any, ...] | None = None
        self.tag = f"discovery-{uuid.uuid4().hex[:10]}"  # its charts' CONNECTION_DISCOVERYs
        self.started = False

    def __repr__(self) -> str:
        return (f"Discovery(local={self.local.hostport!r}, lan={self.lan}, "
                f"charts={len(self._charts)})")

    # ------------------------------------------------------------------ registry
    @staticmethod
    def _key_for(settings: Settings, config: DiscoveryConfig) -> tuple[Any, ...]:
        return (settings.rabbit_user, settings.rabbit_host, settings.rabbit_port,
                settings.rabbit_vhost, settings.mesh_keys[:1], settings.lan_discovery, config)

    @classmethod
    def attach(cls, chart: Any, config: DiscoveryConfig | None = None) -> Discovery:
        """The discovery of ``chart``'s settings (started if new), with ``chart`` added."""
        resolved = (config or DiscoveryConfig()).resolved()
        key = cls._key_for(chart.settings, resolved)
        with cls._registry_lock:
            discovery = cls._registry.get(key)
            if discovery is None:
                discovery = cls(chart.settings, resolved, max_buffer=chart.nets.max_buffer)
                discovery._key = key
                cls._registry[key] = discovery
                discovery.start()
            discovery.add(chart)
        return discovery

    @classmethod
    def detach(cls, chart: Any) -> None:
        """Remove ``chart``; the last chart out stops the discovery."""
        with cls._registry_lock:
            for key, discovery in list(cls._registry.items()):
                if discovery.remove(chart):
                    if not discovery._charts:
                        del cls._registry[key]
                        discovery.stop()
                    return

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Build and start the charts; returns at once (nothing waits for the network)."""
        config = self.config
        self.credentials = ScoutCredentials(self.settings)
        if self.lan and _is_loopback(self.settings.rabbit_host):
            try:
                interfaces = lan_interfaces()
                if config.lan_networks is not None:  # only an address inside them
                    interfaces = [i for i in interfaces
                                  if plan_scan([i], config.lan_networks).subnets]
                address = my_lan_address(interfaces)
            except Exception:
                logger.debug("cannot find this host's LAN address", exc_info=True)
                address = None
            if address is not None:
                self._set_origin(address)
        # the factory first: it must listen before anyone discovers anything
        self.factory = ProducerFactoryChart(
            self.settings, live_trace=config.live_trace, live_spy=config.live_spy,
            local=self.local, on_posted=self._on_posted, on_retired=self._on_retired,
            on_peer_event=self._on_peer_event, credentials=self.credentials,
            grace_sec=config.peer_grace_sec, rescout_min_sec=config.rescout_min_sec,
            rescout_max_sec=config.rescout_max_sec, scout_timeout=config.scout_timeout,
            max_buffer=self.max_buffer, tag=self.tag)
        self.man_net = ManNetChart(
            config.hosts_file, live_trace=config.live_trace, live_spy=config.live_spy,
            credentials=self.credentials, scout_timeout=config.scout_timeout,
            reevaluate_max_sec=config.hosts_reevaluate_max_sec,
            watch_sec=config.hosts_watch_sec, tag=self.tag)
        if self.lan:
            self.cache = CacheFileChart(
                config.lan_cache_file, live_trace=config.live_trace, live_spy=config.live_spy,
                default_json={"addresses": [], "amqp_urls": [], "time_out_in_minutes": 0})
            self.recce = LanRecceChart(
                config.arp_timeout_sec, live_trace=config.live_trace, live_spy=config.live_spy,
                credentials=self.credentials, scout_timeout=config.scout_timeout,
                networks=config.lan_networks, ping=config.ping,
                on_complete=self._on_recce_complete)
            self.lan_chart = LanChart(
                config.time_out_in_minutes, live_trace=config.live_trace,
                live_spy=config.live_spy, cache_file=config.lan_cache_file,
                port=self.settings.rabbit_port, recce=self.recce, tag=self.tag,
                tls=self.settings.rabbit_tls)
        self.started = True
        logger.info("discovery started for %s (hosts file %s, LAN %s)", self.local.hostport,
                    config.hosts_file, "on" if self.lan else "off")

    def stop(self) -> None:
        """Stop every discovery chart, scout and timer; release the peer links it holds."""
        for chart in (self.man_net, self.lan_chart, self.recce, self.cache, self.factory):
            if chart is not None:
                try:
                    chart.stop()
                except Exception:
                    logger.exception("stopping %s failed", chart.name)
        self.started = False

    def add(self, chart: Any) -> None:
        """Make ``chart`` (a networked chart) a member: it gets every peer, now and later."""
        with self._lock:
            if chart in self._charts:
                return
            self._charts.append(chart)
            chart.nets.on_alien = self._on_alien
            if self.origin is not None:
                chart.nets.origin = self.origin
            peers = self.factory.peers() if self.factory is not None else []
            for peer in peers:
                if peer.handed:
                    chart.nets.add_peer(peer.address)
        for peer in peers:
            if peer.joined:
                self._post(chart, "PEER_JOINED", peer.address.hostport)

    def remove(self, chart: Any) -> bool:
        with self._lock:
            if chart not in self._charts:
                return False
            self._charts.remove(chart)
            if chart.nets.on_alien == self._on_alien:
                chart.nets.on_alien = None
            return True

    @property
    def charts(self) -> list[Any]:
        with self._lock:
            return list(self._charts)

    # ------------------------------------------------------------------ wiring
    def _set_origin(self, host: str) -> None:
        shown = f"[{host}]" if ":" in host else host
        origin = f"{shown}:{self.settings.rabbit_port}"
        with self._lock:
            if origin == self.origin:
                return
            self.origin = origin
            for chart in self._charts:
                chart.nets.origin = origin
        logger.info("discovery: this node is reached at %s", origin)

    def _on_posted(self) -> None:
        """Factory thread: take each ProducerQueue off the factory's queue, into the nets."""
        factory = self.factory
        if factory is None:
            return
        while True:
            try:
                producers = factory.producer_queue.get_nowait()
            except Exception:  # queue.Empty
                return
            with self._lock:
                for chart in self._charts:
                    for producer in producers.mesh_producers:
                        chart.nets.add_peer(producer.address)

    def _on_retired(self, address: BrokerAddress) -> None:
        with self._lock:
            for chart in self._charts:
                chart.nets.remove_peer(address)

    def _on_peer_event(self, signal_name: str, hostport: str) -> None:
        for chart in self.charts:
            self._post(chart, signal_name, hostport)

    @staticmethod
    def _post(chart: Any, signal_name: str, hostport: str) -> None:
        if subscribed(chart, signal_name):
            return  # it gets the published one
        chart.post_fifo(Event(signal=getattr(signals, signal_name), payload=hostport))

    def _on_alien(self, origin: str) -> None:
        """I/O thread: an authentic message from an unknown node; build producers back."""
        factory = self.factory
        if factory is None:
            return
        logger.info("discovery: a node at %s messaged us: adding it", origin)
        factory.post_fifo(Event(signal=signals.CONNECTION_DISCOVERY,
                                payload=tagged(ConnectionDiscoveryPayload([origin], [], ALIEN),
                                               self.tag)))

    def _on_recce_complete(self, payload: Any) -> None:
        address = getattr(payload, "my_address", "")
        if address and _is_loopback(self.settings.rabbit_host):
            self._set_origin(address)

    # ------------------------------------------------------------------ tools
    def evaluate_hosts_file(self) -> None:
        """Scout the hosts file again now (same as posting EVALUATE_HOSTS_FILE)."""
        if self.man_net is not None:
            self.man_net.post_fifo(Event(signal=signals.EVALUATE_HOSTS_FILE))

    def rescan_lan(self) -> None:
        """Scan the LAN now, whatever the cache says."""
        if self.recce is not None:
            self.recce.post_fifo(Event(signal=signals.RECCE_LAN))


# --------------------------------------------------------------------------- discover_once

LIVE = "live"  #: a node holding our mesh key answered
DEAD = "dead"  #: nothing answered at all (no host, dropped packets, unreachable)
NO_BROKER = "no-broker"  #: the host is up, nothing listens on the AMQP port
NO_NODE = "no-node"  #: a broker took our credentials, no miros-rabbitmq node runs there
WRONG_KEY = "wrong-key"  #: a broker took our credentials; its nodes did not prove our key
BAD_CREDENTIALS = "bad-credentials"  #: the broker refused an amqp:// URL's own login
NO_SCOUT_ACCOUNT = "no-scout-account"  #: the broker refused the scout account (create it there)
UNRESOLVED = "unresolved"  #: the host name does not resolve
BAD_ADDRESS = "bad-address"  #: not a host, host:port or amqp:// URL
ERROR = "error"  #: anything else (the reason says what)


@dataclass(frozen=True)
class PeerReport:
    """One scouted address: its ``state`` (one of the constants above), how long
    it took to decide (``elapsed``, seconds) and why (``reason``)."""

    address: str
    state: str
    elapsed: float
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.state == LIVE


_STATE_OF = {
    ProbeOutcome.ANSWERED: LIVE,
    ProbeOutcome.NO_ANSWER: WRONG_KEY,
    ProbeOutcome.TIMEOUT: DEAD,
    ProbeOutcome.UNREACHABLE: DEAD,
    ProbeOutcome.UNRESOLVED: UNRESOLVED,
    ProbeOutcome.REFUSED: NO_BROKER,
    ProbeOutcome.AUTH_REFUSED: BAD_CREDENTIALS,
    ProbeOutcome.SCOUT_REFUSED: NO_SCOUT_ACCOUNT,
    ProbeOutcome.NO_RESPONDER: NO_NODE,
    ProbeOutcome.BAD_ADDRESS: BAD_ADDRESS,
}


def classify(outcome: ProbeOutcome) -> str:
    """The state (one of the constants above) of a probe's outcome."""
    return _STATE_OF.get(ProbeOutcome(outcome), ERROR)


@dataclass
class _Collector:
    total: int
    progress: Callable[[PeerReport], Any] | None
    reports: dict[str, PeerReport] = field(default_factory=dict)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def add(self, report: PeerReport) -> None:
        with self.lock:
            self.reports[report.address] = report
            self.lock.notify_all()
        if self.progress is not None:
            try:
                self.progress(report)
            except Exception:
                logger.exception("discover_once: progress callback failed")

    def wait(self, timeout: float) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: len(self.reports) >= self.total, timeout)


def _addresses(network: str | None, hosts_file: str | None) -> list[str]:
    addresses: list[str] = []
    if network is not None:
        try:
            net = ipaddress.ip_network(network, strict=False)
        except ValueError as error:
            raise ConfigurationError(f"not a network: {network!r} ({error})") from None
        if net.num_addresses > MAX_DISCOVER_ADDRESSES:
            raise ConfigurationError(
                f"{network} has {net.num_addresses} addresses; scout at most "
                f"{MAX_DISCOVER_ADDRESSES} (a /20) at once")
        hosts: Iterable[Any] = net.hosts() if net.num_addresses > 2 else net
        addresses.extend(str(ip) for ip in hosts)
    if hosts_file is not None:
        if not os.path.exists(hosts_file):
            raise ConfigurationError(f"no hosts file at {hosts_file}")
        addresses.extend(read_hosts(hosts_file))
    return list(dict.fromkeys(addresses))


def _probe_all(addresses: list[str], credentials: ScoutCredentials, timeout: float,
               parallel: int, collector: _Collector) -> None:
    slots = threading.BoundedSemaphore(max(1, parallel))
    for address in addresses:
        slots.acquire()

        def on_done(result: ProbeResult, address: str = address) -> None:
            slots.release()
            collector.add(PeerReport(address, classify(result.outcome), result.elapsed,
                                     result.reason))

        try:
            credentials.probe(address, routing_key=DISCOVER_ROUTING_KEY, exchange_name=MESH_EXCHANGE,
                              timeout=timeout, on_done=on_done)
        except PeerAddressError as error:
            slots.release()
            collector.add(PeerReport(address, BAD_ADDRESS, 0.0, str(error)))


def discover_once(
    *,
    network: str | None = None,
    hosts_file: str | None = None,
    timeout: float = DEFAULT_SCOUT_TIMEOUT,
    progress: Callable[[PeerReport], Any] | None = None,
    settings: Settings | None = None,
    arp_timeout_sec: float = DEFAULT_ARP_TIMEOUT_SEC,
    lan_networks: Iterable[str] | None = None,
    parallel: int = 256,
) -> list[PeerReport]:
    """Scout once and report every address, in order.

    * ``network`` (a CIDR, at most 4096 addresses) and/or ``hosts_file``:
      scout exactly those addresses, directly (at most ``parallel`` at once);
    * neither: scan the LAN as the ``LanRecceChart`` does (this host's
      subnets, or ``lan_networks`` / ``MIROS_RABBITMQ_LAN_NETWORKS``: fill the
      neighbour table for ``arp_timeout_sec``, then scout every neighbour).

    ``timeout``: seconds each address has to answer. ``progress(report)`` is
    called as each answer comes in (from another thread). ``settings``:
    default ``load_settings()`` (``.env`` / environment). Returns a
    :class:`PeerReport` per address; ``[r.address for r in reports if r.found]``
    are the nodes holding our mesh key. Raises
    :class:`~miros_rabbitmq.errors.ConfigurationError` for a bad network or a
    missing or corrupt hosts file.
    """
    if not timeout > 0:
        raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
    settings = settings if settings is not None else load_settings(lan_discovery=False)
    credentials = ScoutCredentials(settings)
    if network is not None or hosts_file is not None:
        addresses = _addresses(network, hosts_file)
        collector = _Collector(len(addresses), progress)
        _probe_all(addresses, credentials, timeout, parallel, collector)
        if not collector.wait(timeout + 10.0):
            logger.warning("discover_once: %d probes did not answer in time",
                           len(addresses) - len(collector.reports))
        PROBER.wait_idle(3.0)
        reports = collector.reports
        return [reports.get(a, PeerReport(a, ERROR, timeout, "no verdict")) for a in addresses]
    return _discover_lan(credentials, timeout, progress, arp_timeout_sec,
                         tuple(lan_networks) if lan_networks is not None else _env_networks())


def _discover_lan(credentials: ScoutCredentials, timeout: float,
                  progress: Callable[[PeerReport], Any] | None, arp_timeout_sec: float,
                  networks: tuple[str, ...] | None) -> list[PeerReport]:
    done = threading.Event()
    recce = LanRecceChart(arp_timeout_sec, credentials=credentials, scout_timeout=timeout,
                          networks=networks, on_complete=lambda _payload: done.set())
    try:
        started = time.monotonic()
        recce.post_fifo(Event(signal=signals.RECCE_LAN))  # this chart only: not published
        while not done.wait(0.1):
            waves = 1 + len(recce.candidates) // max(1, recce.parallel)
            if time.monotonic() - started > arp_timeout_sec + 2 * waves * timeout + 10.0:
                logger.warning("discover_once: the LAN recce did not finish in time")
                break
        reports = [PeerReport(a.address, classify(a.outcome), a.elapsed, a.reason)
                   for a in recce.answers.values()]
    finally:
        recce.stop()
    PROBER.wait_idle(3.0)
    if progress is not None:
        for report in reports:
            try:
                progress(report)
            except Exception:
                logger.exception("discover_once: progress callback failed")
    return reports
