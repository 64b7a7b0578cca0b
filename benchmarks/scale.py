"""Mesh mode vs cluster mode as the number of machines grows, plus a 3-node cluster
against a single broker.

Run:  python benchmarks/scale.py [--burst 3000] [--latency-events 300] [--throughput-events 3000]

It starts its own RabbitMQ nodes on this machine (never touches the broker on
5672): three standalone brokers (three "machines" of a LAN mesh; the first is
also the single-broker row) and a 3-node cluster (``tests/cluster_nodes.py``),
and stops them at the end. Every chart is made with the default constructor;
cluster charts get ``brokers=[...]`` (the process's first node differs between
sender and receiver), mesh charts ``rabbit_port=`` and ``peers=``.

1. Sizing, measured: a sender chart with 1, 2, 3 brokers to publish to (mesh
   mode: its own plus peers) and in cluster mode. Printed per row: connections
   of the process, publishes per transmit (link counters), and the sender's
   cost per transmit for a burst until every broker confirmed it (µs).
2. Sizing, computed beyond what fits here, from the measured per-link cost
   (the slope of row 1 over the number of brokers): for N machines, one
   process each.
3. Throughput and p50/p99 one-way latency (transmit() -> the receiving handler,
   CLOCK_MONOTONIC, receiver in its own OS process): single broker, 3-node
   cluster, and a 3-broker mesh, rows taking turns in blocks.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from _bench import default_environment, percentile  # noqa: E402

BLOCK = 50
GAP = 0.002
MACHINES = (1, 3, 10, 30, 100, 300, 1000)


# ------------------------------------------------------------------ receiver (own process)


def receiver(key: str, options: dict[str, Any], ready: Any, stop: Any, results: Any) -> None:
    from miros import return_status, signals, spy_on

    from miros_rabbitmq import NetworkedActiveObject

    latencies: list[float] = []
    state = {"count": 0}

    @spy_on
    def listening(chart, e):
        if e.signal == signals.SCALE:
            now = time.monotonic()
            sent_at, phase = e.payload
            if phase == "latency":
                latencies.append(now - sent_at)
                if len(latencies) % BLOCK == 0:
                    results.put(("latency", latencies[-BLOCK:]))
            else:
                state["count"] += 1
                if state["count"] == phase:
                    results.put(("throughput", (now, state["count"])))
                    state["count"] = 0
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    chart = NetworkedActiveObject(f"scale_rx_{uuid.uuid4().hex[:6]}", tx_routing_key="scale.rx",
                                  rx_routing_key=key, **options)
    chart.start_at(listening)
    ready.set()
    stop.wait(600)
    chart.stop()


# ------------------------------------------------------------------ sender (this process)


def idle(chart, e):
    from miros import return_status

    chart.temp.fun = chart.top
    return return_status.SUPER


def sender(options: dict[str, Any], key: str = "scale.sizing") -> Any:
    from miros_rabbitmq import NetworkedActiveObject

    chart = NetworkedActiveObject(f"scale_tx_{uuid.uuid4().hex[:6]}", tx_routing_key=key,
                                  rx_routing_key="scale.none", **options)
    chart.start_at(idle)
    return chart


def transmit(chart: Any, payload: Any) -> None:
    from miros import Event, signals

    chart.transmit(Event(signal=signals.SCALE, payload=payload))


def sizing_row(label: str, options: dict[str, Any], burst: int) -> dict[str, Any]:
    """Connections, publishes per transmit, µs per transmit until all confirmed."""
    from miros_rabbitmq.transport import LINKS

    chart = sender(options)
    try:
        links = chart.nets.links()
        for link in links:
            link.connected.wait(30)
        for _ in range(50):  # warm up
            transmit(chart, (0.0, "warm"))
        for link in links:
            link.flush(30)
        published = sum(link.stats.published for link in links)
        start = time.perf_counter()
        for _ in range(burst):
            transmit(chart, (0.0, "sizing"))
        for link in links:
            link.flush(120)
        seconds = time.perf_counter() - start
        return {"label": label, "connections": len(LINKS.links()),
                "brokers": len(links),
                "publishes": (sum(link.stats.published for link in links) - published) / burst,
                "us": seconds / burst * 1e6}
    finally:
        chart.stop()


class Row:
    """A sender here, a receiver in its own process, both on ``label``'s topology."""

    def __init__(self, ctx: Any, label: str, tx: dict[str, Any], rx: dict[str, Any]) -> None:
        self.label = label
        self.ready, self.stop, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        key = f"scale.{uuid.uuid4().hex[:8]}"  # rows share brokers, not events
        self.process = ctx.Process(target=receiver,
                                   args=(key, rx, self.ready, self.stop, self.results))
        self.process.start()
        self.chart = sender(tx, key)
        if not self.ready.wait(120):
            raise RuntimeError(f"{label}: the receiver did not start")
        self.latencies: list[float] = []
        self.rates: list[tuple[int, float]] = []

    def latency_block(self) -> None:
        for _ in range(BLOCK):
            payload = [0.0, "latency"]
            payload[0] = time.monotonic()
            transmit(self.chart, payload)
            time.sleep(GAP)  # the pace of the latency phase, not a sync
        kind, values = self.results.get(timeout=120)
        assert kind == "latency"
        self.latencies += values

    def throughput(self, count: int) -> None:
        start = time.monotonic()
        for _ in range(count):
            transmit(self.chart, (start, count))
        kind, (last, received) = self.results.get(timeout=300)
        assert kind == "throughput"
        self.rates.append((received, received / max(1e-9, last - start)))

    def close(self) -> None:
        self.stop.set()
        self.process.join(30)
        self.chart.stop()


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=3000, help="transmits per sizing row")
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--throughput-events", type=int, default=3000)
    args = parser.parse_args()
    default_environment()
    for name in ("RABBIT_HOST", "RABBIT_PORT", "RABBIT_CLUSTER"):
        os.environ.pop(name, None)

    from cluster_nodes import PluginNode, RabbitCluster

    from miros_rabbitmq.testing import start_nodes

    started = time.monotonic()
    mesh = [PluginNode(f"mrclscale-{os.getpid()}-{i}", plugins=()) for i in range(3)]
    cluster = RabbitCluster(prefix="mrclscalec")
    try:
        start_nodes(mesh)
        cluster.start()
        print(f"started 3 standalone brokers and a 3-node cluster in "
              f"{time.monotonic() - started:.0f} s (RabbitMQ 3.10, this machine)\n")
        urls = [node.url for node in mesh]

        def mesh_options(k: int) -> dict[str, Any]:
            """A chart on mesh broker 0 that publishes to k brokers (its own and k-1 peers)."""
            return {"rabbit_port": mesh[0].port, "peers": urls[1:k]}

        # 1. measured sizing
        configs = [(f"mesh, {k} broker{'s' if k > 1 else ''}", mesh_options(k)) for k in (1, 2, 3)]
        configs.append(("cluster, 3 nodes", {"brokers": cluster.urls}))
        sizing_row("warm-up", mesh_options(1), args.burst // 5)  # not printed
        rounds: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in configs}
        for _ in range(3):  # rows take turns; the median round of each is printed
            for label, options in configs:
                rounds[label].append(sizing_row(label, options, args.burst))
        rows = [sorted(rounds[label], key=lambda r: r["us"])[1] for label, _ in configs]
        print(f"1. measured (one sender process, burst of {args.burst} transmits until "
              "confirmed, median of 3 rounds)")
        print(f"{'':24}{'connections':>12}{'publishes/transmit':>20}{'µs/transmit':>13}")
        for r in rows:
            print(f"{r['label']:24}{r['connections']:>12}{r['publishes']:>20.2f}{r['us']:>13.1f}")
        per_link = max(0.0, (rows[2]["us"] - rows[0]["us"]) / 2)
        base = rows[0]["us"]
        cluster_us = rows[3]["us"]
        print(f"per extra broker link: {per_link:.1f} µs per transmit (slope of the mesh rows)\n")

        # 2. computed
        print("2. computed for N machines, one process each (mesh: a broker per machine)")
        print(f"{'N':>6}{'mesh conns/proc':>17}{'mesh publishes':>16}{'mesh links':>12}"
              f"{'mesh µs/tx':>12}{'cluster conns':>15}{'cluster links':>15}{'cluster µs/tx':>15}")
        for n in MACHINES:
            print(f"{n:>6}{n:>17}{n:>16}{n * n:>12}{base + (n - 1) * per_link:>12.0f}"
                  f"{1:>15}{n:>15}{cluster_us:>15.0f}")
        print("(mesh links: every process connects to every broker; cluster: one connection "
              "per process, quorum queues replicate each delivery to 3 nodes inside the cluster)\n")

        # 3. throughput and latency, rows taking turns
        ctx = mp.get_context("spawn")
        table = [
            Row(ctx, "single broker", mesh_options(1), mesh_options(1)),
            Row(ctx, "3-node cluster", {"brokers": cluster.rotated(0)},
                {"brokers": cluster.rotated(1)}),
            Row(ctx, "mesh, 3 brokers", mesh_options(3), {"rabbit_port": mesh[1].port, "peers": []}),
        ]
        try:
            for _ in range(max(1, args.latency_events // BLOCK)):
                for row in table:
                    row.latency_block()
            for _ in range(3):
                for row in table:
                    row.throughput(max(1, args.throughput_events // 3))
            print("3. one-way latency (transmit -> handler, other process) and throughput")
            print(f"{'':18}{'p50 ms':>9}{'p99 ms':>9}{'events/s':>10}")
            results = {}
            for row in table:
                rate = sorted(r for _, r in row.rates)[len(row.rates) // 2]
                results[row.label] = (percentile(row.latencies, 50) * 1e3,
                                      percentile(row.latencies, 99) * 1e3, rate)
                p50, p99, rate = results[row.label]
                print(f"{row.label:18}{p50:>9.2f}{p99:>9.2f}{rate:>10.0f}")
            s, c = results["single broker"], results["3-node cluster"]
            print(f"ratio (cluster / single broker): latency p50 {c[0] / s[0]:.2f}x, "
                  f"p99 {c[1] / s[1]:.2f}x, throughput {c[2] / s[2]:.2f}x")
        finally:
            for row in table:
                row.close()
    finally:
        cluster.close()
        for node in mesh:
            node.close()


if __name__ == "__main__":
    main()
