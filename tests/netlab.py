"""A virtual LAN of network namespaces for the discovery tests.

::

    with VirtualLan("10.231.0.0/24", hosts=3, with_brokers={1, 2}) as lan:
        lan.exec(1, ["ping", "-c", "1", lan.address(2)])
        proc = lan.popen(3, [sys.executable, "node.py"], env={...})
        lan.broker(1).url        # amqp://guest:guest@127.0.0.1:5672/%2F, inside host 1
        lan.url(1)               # amqp://guest:guest@10.231.0.1:5672/%2F, from the LAN

Layout — nothing touches the machine's real interfaces or the root namespace:

* namespace ``<id>-br`` holds the switch: bridge ``br0`` with one port ``p<i>``
  per host;
* namespace ``<id>-h<i>`` (i = 1..N) is host i: loopback up, ``eth0`` (the other
  end of ``p<i>``) with address ``.i`` of the subnet and its broadcast address;
* optionally a :class:`RabbitNode` per host (node ``<id>-h<i>@localhost`` on the
  standard ports 5672/25672 of that namespace, guest allowed from the LAN).

Hosts keep the Linux default ``net.ipv4.icmp_echo_ignore_broadcasts=1`` unless
``ignore_broadcasts`` says otherwise (a bool for all, or ``{host: bool}``).

Teardown (``close()``/``__exit__``, also after a failed build) ends every
process started in the namespaces, the brokers and their epmd, and deletes the
namespaces (which deletes the veths and the bridge). Namespaces left by an
earlier run whose process died are removed when the next VirtualLan is built.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from rabbit_node import (
    RabbitNode,
    netns_pids,
    run_in_netns,
    start_nodes,
    stop_nodes,
)

__all__ = ["LAN_PREFIX", "VirtualLan", "cleanup_stray_lans", "list_netns"]

T = TypeVar("T")

#: every namespace a VirtualLan makes is named ``mrlan-<owner pid>-<n>-...``
LAN_PREFIX = "mrlan-"
_counter = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def list_netns() -> list[str]:
    """Names of the network namespaces that ``ip netns`` knows."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_namespace(name: str) -> None:
    """SIGKILL every process in namespace ``name``, then delete it."""
    for _ in range(50):
        pids = netns_pids(name)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # reap our own children among them, if any
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.01)
    _ip("netns", "del", name, check=False)


def cleanup_stray_lans() -> list[str]:
    """Delete ``mrlan-<pid>-...`` namespaces whose owning process is gone."""
    pattern = re.compile(re.escape(LAN_PREFIX) + r"(\d+)-")
    removed = []
    for name in list_netns():
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _end_namespace(name)
            removed.append(name)
    return removed


class VirtualLan:
    """N hosts (network namespaces) on one switch (a bridge in its own namespace)."""

    def __init__(
        self,
        subnet: str = "10.231.0.0/24",
        hosts: int = 3,
        *,
        with_brokers: bool | Iterable[int] = False,
        ignore_broadcasts: bool | Mapping[int, bool] = True,
        broker_timeout: float = 180.0,
        broker_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.network = ipaddress.ip_network(subnet)
        if not isinstance(self.network, ipaddress.IPv4Network):
            raise ValueError("VirtualLan builds IPv4 LANs")
        if hosts < 1 or hosts > self.network.num_addresses - 2:
            raise ValueError(f"{hosts} hosts do not fit in {subnet}")
        self.size = hosts
        self.id = f"{LAN_PREFIX}{os.getpid()}-{next(_counter)}"
        if with_brokers is True:
            self.broker_hosts = set(self.hosts)
        elif with_brokers is False:
            self.broker_hosts = set()
        else:
            self.broker_hosts = set(with_brokers)
        if not self.broker_hosts <= set(self.hosts):
            raise ValueError(f"with_brokers {sorted(self.broker_hosts)}: hosts are 1..{hosts}")
        if isinstance(ignore_broadcasts, bool):
            self._ignore = dict.fromkeys(self.hosts, ignore_broadcasts)
        else:
            self._ignore = {i: bool(ignore_broadcasts.get(i, True)) for i in self.hosts}
        self.broker_timeout = broker_timeout
        self.broker_kwargs = dict(broker_kwargs or {})
        self.brokers: dict[int, RabbitNode] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []
        self.built = False

    # ---------------------------------------------------------------- facts

    @property
    def hosts(self) -> range:
        """Host numbers, 1..N."""
        return range(1, self.size + 1)

    @property
    def bridge_netns(self) -> str:
        return f"{self.id}-br"

    def netns(self, i: int) -> str:
        """Name of host i's network namespace."""
        self._check(i)
        return f"{self.id}-h{i}"

    def address(self, i: int) -> str:
        """Host i's LAN address: the i-th address of the subnet."""
        self._check(i)
        return str(self.network.network_address + i)

    @property
    def addresses(self) -> list[str]:
        return [self.address(i) for i in self.hosts]

    @property
    def broadcast(self) -> str:
        return str(self.network.broadcast_address)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def broker(self, i: int) -> RabbitNode:
        """Host i's RabbitMQ node (``with_brokers`` must include i)."""
        try:
            return self.brokers[i]
        except KeyError:
            raise KeyError(f"host {i} of {self.id} has no broker") from None

    def url(self, i: int, user: str = "guest", password: str = "guest") -> str:
        """AMQP URL of host i's broker as the other hosts reach it."""
        port = self.brokers[i].port if i in self.brokers else 5672
        return f"amqp://{user}:{password}@{self.address(i)}:{port}/%2F"

    def _check(self, i: int) -> None:
        if i not in self.hosts:
            raise IndexError(f"host {i}: hosts are 1..{self.size}")

    # ------------------------------------------------------------- building

    def build(self) -> VirtualLan:
        """Create the namespaces, the switch and the links (not the brokers)."""
        cleanup_stray_lans()
        br = self.bridge_netns
        self._add_netns(br)
        _ip("-n", br, "link", "set", "lo", "up")
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for i in self.hosts:
            ns = self.netns(i)
            self._add_netns(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip(
                "-n",
                br,
                "link",
                "add",
                f"p{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", br, "link", "set", f"p{i}", "master", "br0", "up")
            _ip(
                "-n",
                ns,
                "addr",
                "add",
                f"{self.address(i)}/{self.prefixlen}",
                "brd",
                "+",
                "dev",
                "eth0",
            )
            _ip("-n", ns, "link", "set", "eth0", "up")
            if not self._ignore[i]:
                self.set_ignore_broadcasts(i, False)
        self.built = True
        return self

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def start_brokers(self, hosts: Iterable[int] | None = None) -> list[RabbitNode]:
        """Start a RabbitMQ node in each of ``hosts`` (default: ``with_brokers``), in parallel."""
        todo = sorted(set(self.broker_hosts if hosts is None else hosts) - set(self.brokers))
        nodes = []
        for i in todo:
            node = RabbitNode(f"{self.id}-h{i}", netns=self.netns(i), **self.broker_kwargs)
            self.brokers[i] = node
            nodes.append(node)
        start_nodes(nodes, self.broker_timeout)
        return nodes

    # -------------------------------------------------------------- running

    def _argv(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(i), *argv]

    def exec(
        self,
        i: int,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside host i and wait; ``check`` raises with its output on failure."""
        done = subprocess.run(
            self._argv(i, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"host {i}: {' '.join(argv)} exited {done.returncode}\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
            )
        return done

    def popen(
        self, i: int, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host i; it is ended at teardown if still running."""
        proc = subprocess.Popen(
            self._argv(i, argv), env=dict(env) if env is not None else None, **kwargs
        )
        self._procs.append(proc)
        return proc

    def call(self, i: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a Python callable in a thread inside host i (its sockets stay in host i)."""
        return run_in_netns(self.netns(i), fn, *args, **kwargs)

    def set_ignore_broadcasts(self, i: int, ignore: bool) -> None:
        """Set ``net.ipv4.icmp_echo_ignore_broadcasts`` of host i (Linux default: 1)."""
        value = "1" if ignore else "0"
        self.exec(i, ["sh", "-c", f"echo {value} > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts"])
        self._ignore[i] = ignore

    def ignores_broadcasts(self, i: int) -> bool:
        """Host i's ``net.ipv4.icmp_echo_ignore_broadcasts``, read from the kernel."""
        out = self.exec(i, ["cat", "/proc/sys/net/ipv4/icmp_echo_ignore_broadcasts"]).stdout
        return out.strip() == "1"

    def disconnect(self, i: int) -> None:
        """Unplug host i from the switch (its broker keeps running)."""
        _ip("-n", self.bridge_netns, "link", "set", f"p{i}", "down")

    def reconnect(self, i: int) -> None:
        """Plug host i back in."""
        _ip("-n", self.bridge_netns, "link", "set", f"p{i}", "up")

    # ------------------------------------------------------------- teardown

    def close(self) -> None:
        """End every process, broker and namespace of this LAN; safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        stop_nodes(self.brokers.values())
        for node in self.brokers.values():
            node.close()
        self.brokers.clear()
        for name in reversed(self._namespaces):
            _end_namespace(name)
        self._namespaces.clear()
        self.built = False

    def __enter__(self) -> VirtualLan:
        try:
            self.build()
            if self.broker_hosts:
                self.start_brokers()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<VirtualLan {self.id} {self.network} hosts={self.size} brokers={sorted(self.brokers)}>"
