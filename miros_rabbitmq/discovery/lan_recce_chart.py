"""LanRecceChart: find the nodes of our mesh on the local network(s).

A miros statechart named ``lan_recce_chart``::

    private_search                    RECCE_LAN -> fill_arp_table
    +-- recce                         RECCE_LAN -> deferred until the search ends
        |                             exit: stop the scouts, recall one RECCE_LAN
        +-- fill_arp_table            entry: broadcast ping + a direct sweep of every
        |                                    address of each subnet (<= /22);
        |                             arp_time_out (after arp_timeout_sec) -> identify_all_ip_addresses
        +-- identify_all_ip_addresses entry: read the neighbour table -> the candidates
        |                             candidates_identified -> recce_rabbit_consumers
        +-- recce_rabbit_consumers    entry: one RabbitConsumerScoutChart per candidate, in parallel
                                      AMQP_CONSUMER_CHECK -> collect; all answered (or the
                                      safety timer) -> publish LAN_RECCE_COMPLETE -> private_search

Why the sweep: Linux ignores broadcast pings by default
(``net.ipv4.icmp_echo_ignore_broadcasts=1``), so a broadcast ping alone finds
few hosts. For every subnet of at most /22 (1022 addresses) the chart sends
one empty UDP datagram to each address (to the AMQP port: nothing listens on
UDP there). To send it the kernel must resolve the address, so every host
that is up answers ARP and lands in the neighbour table -- no privilege
needed, one socket per 64 addresses. The broadcast ping (``ping -b``) is kept
as a cheap extra; without permission to ping, the chart says so and goes on.
A larger subnet is never swept: only neighbours the table already holds are
scouted, and a log line says so.

The neighbour table is read from ``/proc/net/arp`` (or ``ip -4 neigh``);
candidates are its complete entries inside the scanned subnets (any private
or public range), this host's own addresses excepted. "Found" means a
broker there accepts our credentials AND a node there proved it holds our
mesh key (the scout's challenge).

Published: ``LAN_RECCE_COMPLETE`` with
:class:`~miros_rabbitmq.payloads.RecceCompletePayload` ``(other_addresses,
my_address)``. Subscribed: ``RECCE_LAN`` (any payload).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ifaddr
from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq._miros import keep_first_deferred, signal_number, subscribe_now
from miros_rabbitmq.discovery._support import ScoutAnswer, ScoutBatch, Timers, search_key
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.mesh.challenge import ScoutCredentials
from miros_rabbitmq.payloads import RecceCompletePayload
from miros_rabbitmq.wire.names import DEFAULT_ARP_TIMEOUT_SEC, DEFAULT_SCOUT_TIMEOUT

__all__ = [
    "LanRecceChart",
    "LanInterface",
    "ScanPlan",
    "DEFAULT_ARP_TIMEOUT_SEC",
    "MAX_SWEEP_PREFIX",
    "lan_interfaces",
    "my_lan_address",
    "plan_scan",
    "parse_proc_net_arp",
    "parse_ip_neigh",
    "read_neighbours",
    "sweep",
]

logger = logging.getLogger(__name__)

#: subnets with a prefix shorter than this (more than 1022 hosts) are not swept
MAX_SWEEP_PREFIX = 22
SWEEP_ADDRESSES_PER_SOCKET = 64
SAFETY_MARGIN_SEC = 2.0  # beyond the scouts' timeout, the recce stops waiting

for _name in ("RECCE_LAN", "LAN_RECCE_COMPLETE", "AMQP_CONSUMER_CHECK", "arp_time_out",
              "candidates_identified", "recce_time_out"):
    signal_number(_name)
del _name


# --------------------------------------------------------------------------- the LAN


@dataclass(frozen=True)
class LanInterface:
    """One IPv4 address of this host on a network: ``eth0 10.0.0.5/24``."""

    name: str
    address: str
    network: ipaddress.IPv4Network


def lan_interfaces() -> list[LanInterface]:
    """This host's (this network namespace's) IPv4 LAN addresses, via ``ifaddr``.

    Loopback, link-local (169.254/16) and single-address (/32) networks are
    left out: nobody else is on them.
    """
    found: list[LanInterface] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: not scanned
            try:
                address = ipaddress.IPv4Address(ip.ip)
                network = ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False)
            except ValueError:
                continue
            if address.is_loopback or address.is_link_local or network.prefixlen >= 32:
                continue
            found.append(LanInterface(str(adapter.nice_name or adapter.name), str(address), network))
    return found


def _default_route_interfaces() -> list[str]:
    try:
        with open("/proc/net/route", encoding="ascii") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return []
    return [line.split()[0] for line in lines
            if len(line.split()) > 2 and line.split()[1] == "00000000"]


def my_lan_address(interfaces: Sequence[LanInterface] | None = None) -> str | None:
    """This host's LAN address: the one of the default route's interface, else
    the first private one, else the first one; None without any LAN."""
    interfaces = lan_interfaces() if interfaces is None else list(interfaces)
    if not interfaces:
        return None
    default = _default_route_interfaces()
    for interface in interfaces:
        if interface.name in default:
            return interface.address
    for interface in interfaces:
        if ipaddress.IPv4Address(interface.address).is_private:
            return interface.address
    return interfaces[0].address


@dataclass
class ScanPlan:
    """What one recce looks at: subnets, what is swept, what is only read."""

    interfaces: list[LanInterface]
    subnets: list[ipaddress.IPv4Network] = field(default_factory=list)
    sweep: list[str] = field(default_factory=list)
    broadcasts: list[str] = field(default_factory=list)
    not_swept: list[ipaddress.IPv4Network] = field(default_factory=list)
    own: set[str] = field(default_factory=set)

    def covers(self, address: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.subnets)


def _networks(networks: Iterable[str | ipaddress.IPv4Network] | None
              ) -> list[ipaddress.IPv4Network] | None:
    if networks is None:
        return None
    result = []
    for net in networks:
        try:
            parsed = ipaddress.ip_network(str(net), strict=False)
        except ValueError as error:
            raise ConfigurationError(f"not a network: {net!r} ({error})") from None
        if not isinstance(parsed, ipaddress.IPv4Network):
            raise ConfigurationError(f"only IPv4 networks are scanned, not {net}")
        result.append(parsed)
    return result


def plan_scan(interfaces: Sequence[LanInterface],
              networks: Iterable[str | ipaddress.IPv4Network] | None = None,
              *, max_sweep_prefix: int = MAX_SWEEP_PREFIX) -> ScanPlan:
    """Decide what to scan: each interface's subnet (restricted to ``networks``
    when given), swept address by address when no larger than
    ``/max_sweep_prefix``, else only read from the neighbour table."""
    allowed = _networks(networks)
    plan = ScanPlan(list(interfaces), own={i.address for i in interfaces})
    for interface in interfaces:
        subnets = [interface.network]
        if allowed is not None:
            subnets = []
            for net in allowed:
                if net.subnet_of(interface.network):
                    subnets.append(net)
                elif interface.network.subnet_of(net):
                    subnets.append(interface.network)
        for net in subnets:
            if net in plan.subnets:
                continue
            plan.subnets.append(net)
            if net.prefixlen >= max_sweep_prefix:
                hosts = net.hosts() if net.num_addresses > 2 else iter(net)
                plan.sweep.extend(str(ip) for ip in hosts if str(ip) not in plan.own)
                if net.prefixlen <= 30 and interface.network.broadcast_address in net:
                    plan.broadcasts.append(str(interface.network.broadcast_address))
            else:
                plan.not_swept.append(net)
    return plan


def sweep(addresses: Iterable[str], port: int) -> tuple[int, list[str]]:
    """Make the kernel resolve every address: one empty UDP datagram to each.

    Returns (datagrams sent, distinct errors). Never blocks; never raises.
    """
    sent, errors = 0, set()
    batch: list[str] = []

    def flush() -> None:
        nonlocal sent
        if not batch:
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as error:
            errors.add(f"socket: {error.strerror or error}")
            batch.clear()
            return
        with sock:
            sock.setblocking(False)
            for address in batch:
                try:
                    sock.sendto(b"", (address, port))
                    sent += 1
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                        errors.add(f"{error.strerror or error}")
        batch.clear()

    for address in addresses:
        batch.append(address)
        if len(batch) >= SWEEP_ADDRESSES_PER_SOCKET:
            flush()
    flush()
    return sent, sorted(errors)


_ARP_COMPLETE = 0x2


def parse_proc_net_arp(text: str) -> list[tuple[str, str]]:
    """``(address, device)`` of the complete entries of ``/proc/net/arp``."""
    found = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 6:
            continue
        address, _hw_type, flags, mac, _mask, device = parts[:6]
        try:
            complete = int(flags, 16) & _ARP_COMPLETE
        except ValueError:
            continue
        if complete and mac != "00:00:00:00:00:00":
            found.append((address, device))
    return found


_NEIGH_BAD_STATES = {"FAILED", "INCOMPLETE", "NOARP", "NONE"}


def parse_ip_neigh(text: str) -> list[tuple[str, str]]:
    """``(address, device)`` of the usable entries of ``ip -4 neigh show``."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or "lladdr" not in parts:
            continue
        state = parts[-1]
        if state in _NEIGH_BAD_STATES:
            continue
        device = parts[parts.index("dev") + 1] if "dev" in parts[:-1] else ""
        found.append((parts[0], device))
    return found


def read_neighbours() -> list[tuple[str, str]]:
    """The neighbour table: ``/proc/net/arp``, else ``ip -4 neigh show``."""
    try:
        with open("/proc/net/arp", encoding="ascii") as handle:
            return parse_proc_net_arp(handle.read())
    except OSError:
        pass
    ip = shutil.which("ip")
    if ip is None:
        logger.warning("cannot read the neighbour table: no /proc/net/arp and no ip command")
        return []
    try:
        done = subprocess.run([ip, "-4", "neigh", "show"], capture_output=True, text=True,
                              timeout=2)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("cannot read the neighbour table: %s", error)
        return []
    return parse_ip_neigh(done.stdout)


_PING_FROM = re.compile(r"from (\d+\.\d+\.\d+\.\d+)")


# --------------------------------------------------------------------------- the chart


@spy_on
def private_search(chart: LanRecceChart, e: Event) -> Any:
    if e.signal == signals.RECCE_LAN:
        return chart.trans(fill_arp_table)
    chart.temp.fun = chart.top
    return return_status.SUPER


@spy_on
def recce(chart: LanRecceChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.begin()
        return return_status.HANDLED
    if e.signal == signals.RECCE_LAN:
        chart.defer(e)  # a search runs: this one starts when it ends
        return return_status.HANDLED
    if e.signal == signals.EXIT_SIGNAL:
        chart.end()
        return return_status.HANDLED
    chart.temp.fun = private_search
    return return_status.SUPER


@spy_on
def fill_arp_table(chart: LanRecceChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.fill()
        return return_status.HANDLED
    if e.signal == signals.arp_time_out:
        return chart.trans(identify_all_ip_addresses)
    if e.signal == signals.EXIT_SIGNAL:
        chart.collect_pings()
        return return_status.HANDLED
    chart.temp.fun = recce
    return return_status.SUPER


@spy_on
def identify_all_ip_addresses(chart: LanRecceChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.identify()
        chart.post_fifo(Event(signal=signals.candidates_identified))
        return return_status.HANDLED
    if e.signal == signals.candidates_identified:
        return chart.trans(recce_rabbit_consumers)
    chart.temp.fun = recce
    return return_status.SUPER


@spy_on
def recce_rabbit_consumers(chart: LanRecceChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.start_scouts()
        if chart.batch is not None and chart.batch.done:
            chart.post_fifo(Event(signal=signals.recce_time_out))
        return return_status.HANDLED
    if e.signal == signals.AMQP_CONSUMER_CHECK:
        if chart.batch is not None and chart.batch.take(e.payload) is not None \
                and chart.batch.done:
            chart.complete()
            return chart.trans(private_search)
        return return_status.HANDLED
    if e.signal == signals.recce_time_out:
        chart.complete()
        return chart.trans(private_search)
    chart.temp.fun = recce
    return return_status.SUPER


class LanRecceChart(ActiveObject):
    """Scan the LAN for nodes of our mesh on ``RECCE_LAN``.

    ``arp_timeout_sec``: how long the neighbour table fills (broadcast ping and
    sweep) before it is read (default 2 s). ``live_trace`` / ``live_spy``:
    print the chart's trace / spy. Keyword-only: ``credentials`` (a
    :class:`~miros_rabbitmq.mesh.challenge.ScoutCredentials`, default read from
    ``.env``), ``scout_timeout`` (seconds a candidate has to answer, 0.5),
    ``port`` (AMQP port of the other nodes; default the credentials'
    ``RABBIT_PORT``), ``networks`` (CIDRs: scan only these parts of this
    host's subnets), ``ping`` (False: no broadcast ping), ``interfaces``
    (a callable returning the :class:`LanInterface` list to scan; default
    :func:`lan_interfaces`), ``on_complete`` (called with each
    :class:`RecceCompletePayload`, on the chart's thread).

    Results of the last search: :attr:`last_result`, :attr:`answers` (per
    candidate: :class:`ScoutAnswer`), :attr:`candidates`, :attr:`last_plan`,
    :attr:`last_duration` (seconds), :attr:`searches` (count).
    """

    def __init__(
        self,
        arp_timeout_sec: float = DEFAULT_ARP_TIMEOUT_SEC,
        live_trace: bool | None = None,
        live_spy: bool | None = None,
        *,
        credentials: ScoutCredentials | None = None,
        scout_timeout: float = DEFAULT_SCOUT_TIMEOUT,
        port: int | None = None,
        networks: Iterable[str] | None = None,
        ping: bool = True,
        interfaces: Callable[[], Sequence[LanInterface]] | None = None,
        max_sweep_prefix: int = MAX_SWEEP_PREFIX,
        on_complete: Callable[[RecceCompletePayload], Any] | None = None,
        parallel: int = 64,
    ) -> None:
        if not arp_timeout_sec >= 0:
            raise ConfigurationError(f"arp_timeout_sec must be >= 0, got {arp_timeout_sec!r}")
        if not scout_timeout > 0:
            raise ConfigurationError(f"scout_timeout must be positive, got {scout_timeout!r}")
        super().__init__(name="lan_recce_chart")
        self.arp_timeout_sec = float(arp_timeout_sec)
        self.credentials = credentials if credentials is not None else ScoutCredentials()
        self.scout_timeout = scout_timeout
        self.port = port if port is not None else self.credentials.settings.rabbit_port
        self.networks = list(networks) if networks is not None else None
        _networks(self.networks)  # fail now on a bad CIDR
        self.ping = ping
        self.interfaces = interfaces if interfaces is not None else lan_interfaces
        self.max_sweep_prefix = max_sweep_prefix
        self.on_complete = on_complete
        self.parallel = parallel
        self.live_trace = bool(live_trace)
        self.live_spy = bool(live_spy)
        self.routing_key = search_key("recce")
        self.batch: ScoutBatch | None = None
        self.last_plan: ScanPlan | None = None
        self.last_result: RecceCompletePayload | None = None
        self.answers: dict[str, ScoutAnswer] = {}
        self.candidates: list[str] = []
        self.last_duration: float | None = None
        self.searches = 0
        self._started_at = 0.0
        self._pings: list[subprocess.Popen[str]] = []
        self._ping_responders: set[str] = set()
        self._timers = Timers(self.name)
        self.start_at(private_search)
        subscribe_now(self, *("RECCE_LAN", "AMQP_CONSUMER_CHECK"))

    # ------------------------------------------------------------------ actions
    def begin(self) -> None:
        self._started_at = time.monotonic()
        self.searches += 1
        self.answers = {}
        self.candidates = []
        self._ping_responders = set()
        try:
            interfaces = list(self.interfaces())
        except Exception as error:
            logger.warning("lan_recce_chart: cannot list the network interfaces: %s", error)
            interfaces = []
        plan = self.last_plan = plan_scan(interfaces, self.networks,
                                          max_sweep_prefix=self.max_sweep_prefix)
        for net in plan.not_swept:
            logger.info("lan_recce_chart: %s has %d addresses, more than a /%d: not swept; "
                        "only neighbours already seen there are scouted", net, net.num_addresses,
                        self.max_sweep_prefix)
        if not plan.subnets:
            logger.info("lan_recce_chart: no LAN to scan (no IPv4 interface%s)",
                        " inside the given networks" if self.networks is not None else "")

    def fill(self) -> None:
        plan = self.last_plan
        assert plan is not None
        if self.ping:
            for broadcast in plan.broadcasts:
                self._start_ping(broadcast)
        if plan.sweep:
            sent, errors = sweep(plan.sweep, self.port)
            if errors:
                logger.warning("lan_recce_chart: the direct sweep of %d addresses was refused "
                               "(%s): only neighbours the table already holds are scouted",
                               len(plan.sweep) - sent, "; ".join(errors))
        if self.arp_timeout_sec > 0 and (plan.sweep or self._pings):
            self._timers.arm("arp", self.arp_timeout_sec,
                             lambda: self.post_fifo(Event(signal=signals.arp_time_out)))
        else:
            self.post_fifo(Event(signal=signals.arp_time_out))

    def _start_ping(self, broadcast: str) -> None:
        ping = shutil.which("ping")
        if ping is None:
            logger.info("lan_recce_chart: no ping command; relying on the direct sweep and "
                        "the neighbour table")
            return
        deadline = str(max(1, math.ceil(self.arp_timeout_sec)))
        try:
            self._pings.append(subprocess.Popen(
                [ping, "-b", "-n", "-i", "0.5", "-w", deadline, broadcast],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env={**os.environ, "LC_ALL": "C"}))
        except OSError as error:
            logger.info("lan_recce_chart: cannot run ping (%s); relying on the direct sweep "
                        "and the neighbour table", error)

    def collect_pings(self) -> None:
        self._timers.cancel("arp")
        pings, self._pings = self._pings, []
        for process in pings:
            if process.poll() is None:
                process.kill()
            try:
                out, err = process.communicate(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
            self._ping_responders.update(_PING_FROM.findall(out or ""))
            if process.returncode not in (0, 1, -9) and err:
                logger.info("lan_recce_chart: broadcast ping failed (%s); relying on the "
                            "direct sweep and the neighbour table", err.strip().splitlines()[-1])

    def identify(self) -> None:
        plan = self.last_plan
        assert plan is not None
        seen = [address for address, _device in read_neighbours()]
        seen.extend(sorted(self._ping_responders))
        candidates = []
        for address in seen:
            if address not in plan.own and plan.covers(address) and address not in candidates:
                candidates.append(address)
        self.candidates = candidates

    def start_scouts(self) -> None:
        self.batch = ScoutBatch(self.credentials, routing_key=self.routing_key,
                                timeout=self.scout_timeout, parallel=self.parallel)
        port = self.port
        default_port = self.credentials.settings.rabbit_port
        self.batch.start(c if port == default_port else f"{c}:{port}" for c in self.candidates)
        if not self.batch.done:
            waves = math.ceil(len(self.candidates) / max(1, self.parallel))
            self._timers.arm("scouts", waves * self.scout_timeout + SAFETY_MARGIN_SEC,
                             lambda: self.post_fifo(Event(signal=signals.recce_time_out)))

    def complete(self) -> None:
        batch = self.batch
        if batch is not None and not batch.done:
            logger.warning("lan_recce_chart: %d scouts did not answer in time", batch.pending)
            batch.give_up()
        found = []
        if batch is not None:
            self.answers = dict(batch.answers)
            found = [a.split(":")[0] if a.count(":") == 1 else a for a in batch.found()]
        plan = self.last_plan
        my_address = my_lan_address(plan.interfaces if plan is not None else None) or ""
        self.last_duration = time.monotonic() - self._started_at
        result = self.last_result = RecceCompletePayload(found, my_address)
        logger.info("lan_recce_chart: %d of %d candidates hold our key (%.2f s)", len(found),
                    len(self.candidates), self.last_duration)
        self.publish(Event(signal=signals.LAN_RECCE_COMPLETE, payload=result))
        if self.on_complete is not None:
            try:
                self.on_complete(result)
            except Exception:
                logger.exception("lan_recce_chart: on_complete failed")

    def end(self) -> None:
        self._timers.cancel("scouts")
        self._timers.cancel("arp")
        if self.batch is not None:
            self.batch.stop()
            self.batch = None
        # RECCE_LANs that came in during the search: one more search serves them all
        keep_first_deferred(self)

    # ------------------------------------------------------------------ life
    def stop(self) -> None:
        """Stop the chart, its scouts, its timers and any ping still running."""
        self._timers.close()
        super().stop()
        for process in self._pings:
            if process.poll() is None:
                process.kill()
            process.communicate()
        self._pings = []
        if self.batch is not None:
            self.batch.stop()
            self.batch = None
