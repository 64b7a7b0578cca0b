"""Time to answer of RabbitConsumerScoutChart: hits and misses, p50 / p99.

Run:  python benchmarks/scout.py [--samples 200] [--timeout 0.5]

Uses the local broker (RABBIT_USER / RABBIT_PASSWORD / RABBIT_PORT from the
environment, default guest/guest on 127.0.0.1:5672) and a fresh mesh key.
Time to answer = from the scout's construction to the arrival of its
AMQP_CONSUMER_CHECK at another chart (CLOCK_MONOTONIC). Every address is on
loopback. Rows:

* hit, one at a time      a node with our key runs on the broker
* hit, 50 at once         50 scouts of that node started together (their
                          timeout raised to 5 s: the row measures answers)
* miss: closed port       nothing listens on the port
* miss: no node           the broker answers, no node of ours runs on it
                          (if other nodes, with other keys, run on the same
                          broker, this becomes a timeout miss)
* miss: another key       a node holding another key: it cannot answer, the
                          scout gives up at its timeout
* miss: 250 closed ports  250 scouts started together (a /24); the last row
                          is the wall time until all 250 had answered
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from _bench import percentile  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from miros import ActiveObject, Event, return_status, signals, spy_on  # noqa: E402

from miros_rabbitmq.config import load_settings  # noqa: E402
from miros_rabbitmq.discovery.rabbit_consumer_scout_chart import RabbitConsumerScoutChart  # noqa: E402
from miros_rabbitmq.mesh.challenge import ScoutCredentials  # noqa: E402
from miros_rabbitmq.mesh.nets import MirosNets  # noqa: E402
from miros_rabbitmq.testing import closed_ports  # noqa: E402
from miros_rabbitmq.transport import PROBER  # noqa: E402

WRONG = [0]  # answers of the current row that were not the expected one


class Answers:
    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[float, object]] = queue.Queue()
        answers = self

        @spy_on
        def listening(chart, e):
            if e.signal == signals.AMQP_CONSUMER_CHECK:
                answers.queue.put((time.monotonic(), e.payload))
                return return_status.HANDLED
            chart.temp.fun = chart.top
            return return_status.SUPER

        self.chart = ActiveObject("benchmark_answers")
        self.chart.subscribe(Event(signal=signals.AMQP_CONSUMER_CHECK))
        self.chart.start_at(listening)


def run_batch(answers: Answers, credentials: ScoutCredentials, addresses: list[str],
              timeout: float, expect: bool) -> tuple[list[float], float]:
    """Start one scout per address at once; per-scout times to answer and the batch's wall."""
    started: dict[str, float] = {}
    scouts = []
    first = time.monotonic()
    for number, address in enumerate(addresses):
        routing_key = f"bench.{number}"  # tells the answers of one address apart
        started[routing_key] = time.monotonic()
        scouts.append(RabbitConsumerScoutChart(address, routing_key, timeout=timeout,
                                               credentials=credentials))
    times = []
    for _ in addresses:
        arrived, payload = answers.queue.get(timeout=timeout + 30)
        if payload.result is not expect:
            WRONG[0] += 1  # e.g. a hit slower than the timeout on an overloaded machine
        times.append(arrived - started[payload.routing_key])
    wall = time.monotonic() - first
    for scout in scouts:
        scout.stop()
    PROBER.wait_idle(10)
    return times, wall


def one_at_a_time(answers: Answers, credentials: ScoutCredentials, addresses: list[str],
                  timeout: float, expect: bool) -> list[float]:
    times: list[float] = []
    for address in addresses:
        times.extend(run_batch(answers, credentials, [address], timeout, expect)[0])
    return times


def start_node(settings) -> MirosNets:
    nets = MirosNets(name=f"bench_node_{uuid.uuid4().hex[:6]}", settings=settings,
                     tx_routing_key="bench.scout", rx_routing_key="bench.none",
                     deliver=lambda envelope: True)
    if not nets.start(timeout=10):
        raise SystemExit("the local broker did not answer")
    deadline = time.monotonic() + 5
    while not all(c.ready.is_set() for c in nets._local_consumers):
        if time.monotonic() > deadline:
            raise SystemExit("the node's scout responder did not start")
        time.sleep(0.01)
    return nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="scouts per fast row")
    parser.add_argument("--slow-samples", type=int, default=40,
                        help="scouts in the 'another key' row (they wait for the timeout)")
    parser.add_argument("--timeout", type=float, default=0.5)
    args = parser.parse_args()
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # wrong-key / closed-port noise

    user = os.environ.get("RABBIT_USER", "guest")
    password = os.environ.get("RABBIT_PASSWORD", "guest")
    port = int(os.environ.get("RABBIT_PORT", "5672"))
    settings = load_settings(rabbit_user=user, rabbit_password=password, rabbit_port=port,
                             mesh_encryption_key=Fernet.generate_key(), rabbit_host="127.0.0.1",
                             environ={})
    stranger_settings = load_settings(rabbit_user=user, rabbit_password=password,
                                      rabbit_port=port, rabbit_host="127.0.0.1",
                                      mesh_encryption_key=Fernet.generate_key(), environ={})
    credentials = ScoutCredentials(settings)
    answers = Answers()
    here = f"127.0.0.1:{port}"
    rows: list[tuple[str, list[float], float | None, int]] = []

    def row(name: str, values: list[float], batch: float | None = None) -> None:
        rows.append((name, values, batch, WRONG[0]))
        WRONG[0] = 0

    # warm up: imports, first connections
    node = start_node(settings)
    one_at_a_time(answers, credentials, [here] * 5, args.timeout, True)
    WRONG[0] = 0

    row("hit, one at a time",
        one_at_a_time(answers, credentials, [here] * args.samples, args.timeout, True))
    # a longer timeout here: the row measures how long 50 answers take, not timeouts
    times, wall = run_batch(answers, credentials, [here] * 50, max(args.timeout, 5.0), True)
    row("hit, 50 at once (timeout 5 s)", times, wall)
    node.stop()

    row("miss: closed port",
        one_at_a_time(answers, credentials,
                      [f"127.0.0.1:{p}" for p in closed_ports(args.samples)], args.timeout,
                      False))
    row("miss: no node on the broker",
        one_at_a_time(answers, credentials, [here] * args.samples, args.timeout, False))
    stranger = start_node(stranger_settings)
    times, wall = run_batch(answers, credentials, [here] * args.slow_samples, args.timeout,
                            False)
    row(f"miss: another key ({args.slow_samples} at once)", times, wall)
    stranger.stop()
    times, wall = run_batch(answers, credentials,
                            [f"127.0.0.1:{p}" for p in closed_ports(250)], args.timeout, False)
    row("miss: 250 closed ports at once", times, wall)

    answers.chart.stop()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"scout time to answer (timeout {args.timeout:.2f} s), milliseconds; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(f"{'case':40s} {'n':>5s} {'p50':>8s} {'p99':>8s} {'batch wall':>11s} {'wrong':>6s}")
    for name, values, batch, wrong in rows:
        print(f"{name:40s} {len(values):5d} {1000 * percentile(values, 50):8.1f} "
              f"{1000 * percentile(values, 99):8.1f} "
              f"{'' if batch is None else f'{1000 * batch:9.1f}':>11s} {wrong:6d}")

if __name__ == "__main__":
    main()
