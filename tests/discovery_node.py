"""A discovering node (or a lone LAN recce) inside a namespace of the test's virtual LAN.

    python tests/discovery_node.py node NAME --subnet CIDR --workdir DIR [options]
    python tests/discovery_node.py recce --subnet CIDR [options]

Before anything else it checks that it runs inside the test's own network
namespace: its interfaces must be ``lo`` and ``eth0`` only, and every IPv4
address outside loopback must be inside ``--subnet``; otherwise it prints
``GUARD_FAILED ...`` and exits 3 without sending a packet. Every scan is
also confined to ``--subnet`` (``DiscoveryConfig.lan_networks``).

``node`` prints one JSON object per line on stdout, each with ``t`` (seconds
since the NetworkedActiveObject was constructed; process start and imports
excluded): ``{"kind": "ready"}`` (the chart's networks are
up; with ``--wait-go`` discovery starts when stdin says ``GO``),
``started``, ``recv`` (an event: signal, from, payload), ``peer`` (PEER_JOINED
/ PEER_LEFT), ``fabric`` (RECCE_LAN, LAN_RECCE_COMPLETE, CONNECTION_DISCOVERY
seen on the miros fabric), ``first_reply``, ``status``. stdin: ``GO``,
``SEND <text>``, ``STATUS``, ``STOP``. With ``--greet`` it transmits ``hello``
every 50 ms until a ``reply`` arrives; with ``--reply`` it answers every
``hello`` with a ``reply``.

``recce`` runs one LanRecceChart search and prints ``{"kind": "recce", ...}``
(duration, candidates, found, plan, log lines).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import ifaddr  # noqa: E402


def guard(subnet: str) -> None:
    """Exit 3 unless this process sees only lo + eth0, with addresses inside ``subnet``."""
    net = ipaddress.ip_network(subnet)
    problems = []
    for adapter in ifaddr.get_adapters():
        name = adapter.nice_name or adapter.name
        if name not in ("lo", "eth0"):
            problems.append(f"unexpected interface {name}")
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address = ipaddress.ip_address(ip.ip)
                if not address.is_loopback and address not in net:
                    problems.append(f"{name} has {address}, outside {subnet}")
    if problems:
        print("GUARD_FAILED " + "; ".join(problems), flush=True)
        sys.exit(3)


T0 = time.monotonic()
_out_lock = threading.Lock()


def emit(kind: str, **fields: object) -> None:
    line = json.dumps({"kind": kind, "t": round(time.monotonic() - T0, 4), **fields},
                      default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_node(args: argparse.Namespace) -> None:
    from miros import ActiveObject, Event, return_status, signals, spy_on

    from miros_rabbitmq import NetworkedActiveObject
    from miros_rabbitmq.discovery.discovery import DiscoveryConfig

    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)
    replied = threading.Event()

    @spy_on
    def watching(chart, e):
        if e.signal_name in ("RECCE_LAN", "LAN_RECCE_COMPLETE", "CONNECTION_DISCOVERY"):
            payload = e.payload._asdict() if hasattr(e.payload, "_asdict") else e.payload
            emit("fabric", signal=e.signal_name, payload=payload)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    observer = ActiveObject("observer")
    observer.start_at(watching)
    for name in ("RECCE_LAN", "LAN_RECCE_COMPLETE", "CONNECTION_DISCOVERY"):
        observer._subscribe(Event(signal=name), "fifo")

    # an uninstrumented chart (no spy_on): discovery posts PEER_* into its FIFO
    def listening(chart, e):
        if e.signal_name in ("hello", "reply"):
            emit("recv", signal=e.signal_name, payload=e.payload)
            if e.signal_name == "hello" and args.reply:
                chart.transmit(Event(signal=signals.reply, payload={"from": args.name,
                                                                    "to": e.payload["from"]}))
            if e.signal_name == "reply" and e.payload.get("to") == args.name \
                    and not replied.is_set():
                replied.set()
                emit("first_reply", payload=e.payload)
            return return_status.HANDLED
        if e.signal_name in ("PEER_JOINED", "PEER_LEFT"):
            emit("peer", signal=e.signal_name, address=e.payload)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    global T0
    T0 = time.monotonic()  # times are from the chart's construction on
    config = DiscoveryConfig(
        lan_networks=(args.subnet,), arp_timeout_sec=args.arp_timeout,
        peer_grace_sec=args.grace, rescout_min_sec=args.rescout_min,
        rescout_max_sec=args.rescout_max, time_out_in_minutes=args.cache_minutes)
    chart = NetworkedActiveObject(args.name, tx_routing_key="lan.node", rx_routing_key="lan.node",
                                  instrumented=False, discovery=config)
    chart.nets.start(timeout=30)
    emit("ready", origin=chart.nets.origin)
    lines = iter(sys.stdin.readline, "")
    if args.wait_go:
        for line in lines:
            if line.strip() == "GO":
                break
            if line.strip() == "STOP":
                chart.stop()
                observer.stop()
                emit("stopped")
                return
    started = time.monotonic()
    chart.start_at(listening)
    emit("started", start_at_seconds=round(time.monotonic() - started, 4),
         origin=chart.nets.origin)

    stop_greeting = threading.Event()

    def greet() -> None:
        while not (replied.is_set() or stop_greeting.is_set()):
            chart.transmit(Event(signal=signals.hello, payload={"from": args.name}))
            stop_greeting.wait(0.05)

    greeter = threading.Thread(target=greet, daemon=True) if args.greet else None
    if greeter is not None:
        greeter.start()

    def status() -> dict:
        discovery = chart._discovery
        recce = discovery.recce if discovery is not None else None
        lan = discovery.lan_chart if discovery is not None else None
        factory = discovery.factory if discovery is not None else None
        return {
            "other_urls": chart.other_urls(),
            "origin": chart.nets.origin,
            "searches": recce.searches if recce else None,
            "recce_seconds": recce.last_duration if recce else None,
            "candidates": recce.candidates if recce else None,
            "found": recce.last_result.other_addresses if recce and recce.last_result else None,
            "cache_hits": lan.cache_hits if lan else None,
            "scans": lan.scans if lan else None,
            "departed": factory.departed() if factory else None,
            "stats": {k: v for k, v in chart.nets.stats().items() if k != "peers"},
        }

    for line in lines:
        line = line.strip()
        if line == "STOP":
            break
        if line.startswith("SEND"):
            chart.transmit(Event(signal=signals.hello,
                                 payload={"from": args.name, "text": line[5:]}))
        elif line == "STATUS":
            emit("status", **status())
    stop_greeting.set()
    if greeter is not None:
        greeter.join()
    chart.stop()
    observer.stop()
    emit("stopped")


def run_recce(args: argparse.Namespace) -> None:
    from miros_rabbitmq.discovery.lan_recce_chart import LanInterface, LanRecceChart, lan_interfaces

    handler = _LogLines()
    logging.getLogger("miros_rabbitmq").addHandler(handler)
    logging.getLogger("miros_rabbitmq").setLevel(logging.INFO)
    interfaces = lan_interfaces
    if args.fake_interface:
        net = ipaddress.ip_interface(args.fake_interface)

        def interfaces() -> list[LanInterface]:
            return [LanInterface("eth0", str(net.ip), net.network)]

    done = threading.Event()
    completions: list[float] = []

    def on_complete(_payload: object) -> None:
        completions.append(time.monotonic())
        done.set()

    networks = [args.fake_interface] if args.fake_interface else [args.subnet]
    recce = LanRecceChart(args.arp_timeout, networks=networks, interfaces=interfaces,
                          ping=not args.no_ping, on_complete=on_complete)
    started = time.monotonic()
    from miros import Event, signals

    for _ in range(args.requests):  # the 2nd, 3rd... arrive during the search: deferred
        recce.post_fifo(Event(signal=signals.RECCE_LAN))
    finished = done.wait(args.arp_timeout + 20)
    elapsed = time.monotonic() - started
    if args.requests > 1:
        deadline = time.monotonic() + 2 * args.arp_timeout + 5
        while len(completions) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(args.arp_timeout + 1)  # would a third search start?
    plan = recce.last_plan
    emit("recce", finished=finished, seconds=round(elapsed, 4),
         candidates=recce.candidates,
         found=recce.last_result.other_addresses if recce.last_result else None,
         my_address=recce.last_result.my_address if recce.last_result else None,
         swept=len(plan.sweep) if plan else None,
         not_swept=[str(n) for n in plan.not_swept] if plan else None,
         answers={a: [x.result, x.reason, x.outcome.value] for a, x in recce.answers.items()},
         searches=recce.searches,
         completed_after=[round(c - started, 4) for c in completions],
         log=handler.lines)
    recce.stop()


# --------------------------------------------------------------------------- driver


class NodeProcess:
    """Drive ``discovery_node.py node`` inside host ``host`` of a ``netlab.VirtualLan``.

    Used by tests/test_discovery.py and benchmarks/discovery.py. Reads the
    node's JSON lines without a thread (select on its stdout).
    """

    def __init__(self, lan: Any, host: int, name: str, workdir: Path, env: dict[str, str],
                 subnet: str, *options: str) -> None:
        self.name = name
        self.host = host
        self.workdir = workdir
        self.records: list[dict[str, Any]] = []
        self._buffer = b""
        self.stderr_path = workdir.parent / f"{name}.stderr.log"
        with open(self.stderr_path, "ab") as stderr:  # the child keeps its own copy
            self.proc = lan.popen(
                host, [sys.executable, os.path.abspath(__file__), "node", name, "--subnet",
                       subnet, "--workdir", str(workdir), *options],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)

    def _read(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: "
                                     f"{self.stderr_path.read_text()[-3000:]}")
            time.sleep(min(timeout, 0.05))
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"GUARD_FAILED"):
                raise AssertionError(f"{self.name}: {line.decode()}")
            if line.strip():
                self.records.append(json.loads(line))

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
             what: str = "") -> dict[str, Any]:
        """The first record (old or new) for which ``predicate`` is true."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for record in self.records[checked:]:
                if predicate(record):
                    return record
            checked = len(self.records)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {what or 'record'} in {timeout} s; "
                                     f"got {self.records[-15:]!r}\n"
                                     f"{self.stderr_path.read_text()[-2000:]}")
            self._read(min(remaining, 0.2))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def status(self) -> dict[str, Any]:
        count = len(self.kinds("status"))
        self.command("STATUS")
        self.wait(lambda r: r["kind"] == "status" and len(self.kinds("status")) > count, 10,
                  "status")
        return self.kinds("status")[-1]

    def heard_from(self, other: str, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait(lambda r: r["kind"] == "recv" and r["payload"].get("from") == other,
                         timeout, f"an event from {other}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("STOP")
                self.wait(lambda r: r["kind"] == "stopped", 15, "stopped")
                self.proc.wait(5)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    node = sub.add_parser("node")
    node.add_argument("name")
    node.add_argument("--subnet", required=True)
    node.add_argument("--workdir", required=True)
    node.add_argument("--arp-timeout", type=float, default=1.0)
    node.add_argument("--grace", type=float, default=1.0)
    node.add_argument("--rescout-min", type=float, default=0.5)
    node.add_argument("--rescout-max", type=float, default=2.0)
    node.add_argument("--cache-minutes", type=float, default=30)
    node.add_argument("--wait-go", action="store_true")
    node.add_argument("--greet", action="store_true")
    node.add_argument("--reply", action="store_true")
    recce = sub.add_parser("recce")
    recce.add_argument("--subnet", required=True)
    recce.add_argument("--arp-timeout", type=float, default=1.0)
    recce.add_argument("--fake-interface", help="scan as if eth0 had this address/prefix")
    recce.add_argument("--no-ping", action="store_true")
    recce.add_argument("--requests", type=int, default=1, help="RECCE_LAN events to post")
    args = parser.parse_args()
    guard(args.subnet)
    os.environ["MIROS_RABBITMQ_LAN_NETWORKS"] = (
        args.fake_interface if getattr(args, "fake_interface", None) else args.subnet)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    if args.mode == "node":
        run_node(args)
    else:
        run_recce(args)


if __name__ == "__main__":
    main()
