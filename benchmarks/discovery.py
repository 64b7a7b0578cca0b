"""Discovery timings on a virtual LAN: cold scan, warm (cached) start, time to first event.

Run (as root: it builds network namespaces):

    python benchmarks/discovery.py [--samples 5] [--arp-timeout 2.0]

It builds a virtual LAN of its own (``tests/netlab.py``: a bridge, veths and
three network namespaces on 10.242.0.0/24, each with its own RabbitMQ node;
hosts 1 and 2 keep Linux's default of ignoring broadcast pings, host 3
answers them). Nodes 2 and 3 run ``tests/discovery_node.py`` and answer
every ``hello`` with a ``reply``. Then, on host 1, again and again:

* cold: a node in an empty folder (no LAN cache): LAN discovery scans the
  /24 (broadcast ping + a direct sweep of its 253 other addresses, wait
  ``arp_timeout_sec``, scout every neighbour);
* warm: a node in a folder whose LAN cache is fresh: no scan;
* hosts file: LAN discovery off, a hosts file listing the two peers.

Each new node transmits ``hello`` every 50 ms from its start until a
``reply`` comes back. Figures (seconds, CLOCK_MONOTONIC, from the
construction of the node's NetworkedActiveObject; process start-up and
imports excluded):

* start_at        how long ``start_at()`` took (it never waits for discovery)
* scan            the LanRecceChart search, RECCE_LAN to LAN_RECCE_COMPLETE
* first event     until the first ``reply`` to its own ``hello`` arrived: the
                  peers were discovered, producers built, the hello delivered,
                  the node learnt as an alien by the peers, their reply delivered

Every packet stays inside the namespaces the benchmark made; each node
process checks that its only interfaces are ``lo`` and the LAN's ``eth0``
before it sends anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(TESTS))

from discovery_node import NodeProcess  # noqa: E402
from netlab import VirtualLan  # noqa: E402

from miros_rabbitmq.testing import mesh_environment  # noqa: E402

SUBNET = "10.242.0.0/24"


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | - | - | - | 0 |"
    return (f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | "
            f"{max(values):.3f} | {len(values)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--arp-timeout", type=float, default=2.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/discovery.py builds network namespaces: run it as root")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBIT", "MESH_", "SNOOP_"))}
    env.update(mesh_environment(port=5672))
    env.update(RABBIT_USER="guest", RABBIT_PASSWORD="guest", MIROS_RABBITMQ_LAN_DISCOVERY="1",
               PYTHONPATH=str(HERE.parent))
    base = Path(tempfile.mkdtemp(prefix="miros-discovery-bench-"))
    os.chmod(base, 0o755)
    options = ("--arp-timeout", str(args.arp_timeout))
    figures: dict[str, list[float]] = {k: [] for k in (
        "cold start_at", "cold scan", "cold first event", "warm start_at", "warm first event",
        "hosts start_at", "hosts first event")}
    nodes: list[NodeProcess] = []

    def node(host: int, name: str, workdir: str, *extra: str,
             node_env: dict[str, str] | None = None) -> NodeProcess:
        made = NodeProcess(lan, host, name, base / workdir, node_env or env, SUBNET,
                           *options, *extra)
        nodes.append(made)
        return made

    def run(host: int, name: str, workdir: str, kind: str,
            node_env: dict[str, str] | None = None) -> dict:
        new = node(host, name, workdir, "--greet", node_env=node_env)
        first = new.wait(lambda r: r["kind"] == "first_reply", 30, "first reply")
        started = new.wait(lambda r: r["kind"] == "started", 5, "started")
        status = new.status()
        new.stop()
        nodes.remove(new)
        figures[f"{kind} start_at"].append(started["start_at_seconds"])
        figures[f"{kind} first event"].append(first["t"])
        return status

    started = time.monotonic()
    with VirtualLan(SUBNET, hosts=3, with_brokers=True, ignore_broadcasts={3: False}) as lan:
        print(f"virtual LAN {SUBNET}: 3 namespaces with a RabbitMQ node each, ready in "
              f"{time.monotonic() - started:.1f} s", flush=True)
        try:
            for host in (2, 3):
                resident = node(host, f"resident{host}", f"resident{host}", "--reply")
                resident.wait(lambda r: r["kind"] == "fabric"
                              and r["signal"] == "LAN_RECCE_COMPLETE", 30, "its scan")
            for i in range(args.samples):
                status = run(1, f"cold{i}", f"cold{i}", "cold")
                assert sorted(status["found"]) == ["10.242.0.2", "10.242.0.3"], status
                figures["cold scan"].append(status["recce_seconds"])
            for i in range(args.samples):  # cold0 wrote a fresh cache
                status = run(1, f"warm{i}", "cold0", "warm")
                assert status["scans"] == 0 and status["cache_hits"] == 1, status
            hosts_env = {**env, "MIROS_RABBITMQ_LAN_DISCOVERY": "0"}
            hosts_dir = base / "hosts"
            hosts_dir.mkdir()
            (hosts_dir / ".miros_rabbitmq_hosts.json").write_text(
                json.dumps({"hosts": ["10.242.0.2", "10.242.0.3"]}))
            for i in range(args.samples):
                status = run(1, f"hosts{i}", "hosts", "hosts", node_env=hosts_env)
                assert status["scans"] is None, status
        finally:
            for made in nodes:
                made.stop()

    print(f"\narp_timeout_sec = {args.arp_timeout}; the scan sweeps 253 addresses of a /24; "
          f"{args.samples} samples per row; seconds\n")
    print("| row | median | min | max | samples |")
    print("|---|---|---|---|---|")
    for name, values in figures.items():
        print(row(name, values))


if __name__ == "__main__":
    main()
