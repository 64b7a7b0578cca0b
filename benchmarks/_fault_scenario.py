"""The delivery scenarios shared by benchmarks/ and tests/ (restarts, bursts).

A sender chart transmits N numbered events as fast as it can (a tight
``transmit()`` loop) while, optionally, a broker is restarted (``rabbitmqctl
stop_app`` / ``start_app``) and receiving charts, each in its own OS process,
handle events (slowly, if asked). Every chart uses the default constructor;
only the topology (``peers``, ``RABBIT_PORT``) is given. Each receiver reports what
it got: count, duplicates, order breaks, the longest gap between two events.

    python benchmarks/_fault_scenario.py receive NAME RX_KEY EXPECTED [--slow SECONDS] [--peer P]

runs one receiver (credentials from the environment, its broker from
RABBIT_PORT); it prints ``READY``, then one JSON line with its results when it
has EXPECTED events or on ``STOP`` from stdin.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))


@dataclass
class ReceiverReport:
    name: str
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    missing: int = 0
    longest_gap: float = 0.0
    stats: dict = field(default_factory=dict)


def receive_main(argv: list[str]) -> None:
    from miros import return_status, signals, spy_on

    from miros_rabbitmq import NetworkedActiveObject

    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("rx")
    parser.add_argument("expected", type=int)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--peer", action="append", default=[])
    args = parser.parse_args(argv)
    seen: list[int] = []
    arrivals: list[float] = []
    done = threading.Event()

    @spy_on
    def counting(chart, e):
        if e.signal == signals.FAULT_EVENT:
            seen.append(e.payload)
            arrivals.append(time.monotonic())
            if args.slow:
                time.sleep(args.slow)  # a slow handler: the queue fills, back-pressure
            if len(seen) >= args.expected:
                done.set()
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    options = {"peers": args.peer} if args.peer else {}
    chart = NetworkedActiveObject(args.name, tx_routing_key="faults.none", rx_routing_key=args.rx,
                                  **options)
    chart.start_at(counting)
    print("READY", flush=True)
    stopper = threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True)
    stopper.start()
    done.wait()
    unique = set(seen)
    order_breaks = sum(1 for a, b in zip(seen, seen[1:], strict=False) if b <= a)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    report = ReceiverReport(
        name=args.name, received=len(seen), duplicates=len(seen) - len(unique),
        out_of_order=order_breaks, missing=args.expected - len(unique & set(range(args.expected))),
        longest_gap=max(gaps, default=0.0),
        stats={k: v for k, v in chart.nets.stats().items() if k != "peers"})
    chart.stop()
    print(json.dumps(report.__dict__), flush=True)


class Receiver:
    """A receiving process of the scenario."""

    def __init__(self, rx: str, expected: int, *, port: int, slow: float,
                 peers: tuple[str, ...] = ()) -> None:
        self.name = f"fault_rx_{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, __file__, "receive", self.name, rx, str(expected),
                "--slow", str(slow)]
        for peer in peers:
            argv += ["--peer", peer]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "RABBIT_PORT": str(port)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"receiver did not start: {line!r}")

    def report(self, timeout: float) -> ReceiverReport:
        """Wait for the receiver's report (asks it to stop after ``timeout``)."""
        assert self.proc.stdout is not None and self.proc.stdin is not None
        timer = threading.Timer(timeout, self.stop)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        self.proc.wait(30)
        self.proc.stdin.close()
        self.proc.stdout.close()
        return ReceiverReport(**json.loads(line))

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("STOP\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class ScenarioResult:
    sent: int
    send_seconds: float
    reports: list[ReceiverReport]
    sender_stats: dict
    refused: int = 0  # transmit() calls that returned False
    longest_transmit: float = 0.0  # seconds, the longest single transmit() call
    transmit_p99: float = 0.0
    delivered_seconds: float = 0.0  # first transmit() to the last receiver's last event

    @property
    def delivered_rate(self) -> float:
        """Events per second delivered to each receiver (the slowest one)."""
        return min(r.received for r in self.reports) / max(1e-9, self.delivered_seconds)


def run_scenario(*, events: int, sender_port: int, receiver_ports: list[int],
                 restart: Callable[[], None] | None = None, restarts: int = 0,
                 slow: float = 0.0002, timeout: float = 240.0,
                 extra_peers: tuple[str, ...] = ()) -> ScenarioResult:
    """Send ``events`` numbered events; call ``restart`` ``restarts`` times while sending."""
    from miros import Event, return_status, signals, spy_on

    from miros_rabbitmq import NetworkedActiveObject

    rx = f"faults.{uuid.uuid4().hex[:6]}"
    receivers = [Receiver(rx, events, port=port, slow=slow) for port in receiver_ports]

    @spy_on
    def idle(chart, e):
        chart.temp.fun = chart.top
        return return_status.SUPER

    peers = [f"127.0.0.1:{port}" for port in sorted(set(receiver_ports)) if port != sender_port]
    peers += list(extra_peers)
    # the default constructor; only the topology is given (ttl=None until the
    # wire's replay protection without expiry is the default: a restart may
    # hold events back for longer than the old 60 s TTL)
    options: dict = {"peers": peers} if peers else {}
    sender = NetworkedActiveObject(
        f"fault_tx_{uuid.uuid4().hex[:6]}", tx_routing_key=rx, rx_routing_key="faults.none",
        rabbit_port=sender_port, ttl=None, **options)
    sender.start_at(idle)
    # the restarts run beside the sender, so it keeps transmitting into a dead broker
    restarter = threading.Thread(
        target=lambda: [restart() for _ in range(restarts)] if restart else None,
        name="fault-restarter")
    durations: list[float] = []
    refused = 0
    clock = time.perf_counter
    try:
        started = time.monotonic()
        for number in range(events):
            if restart is not None and restarts and number == events // (restarts + 1):
                restarter.start()
            event = Event(signal=signals.FAULT_EVENT, payload=number)
            before = clock()
            taken = sender.transmit(event)
            durations.append(clock() - before)
            refused += not taken
        send_seconds = time.monotonic() - started
        reports = [receiver.report(timeout) for receiver in receivers]
        delivered_seconds = time.monotonic() - started
        if restarter.is_alive():
            restarter.join(timeout)
        stats = {k: v for k, v in sender.nets.stats().items() if k != "peers"}
    finally:
        for receiver in receivers:
            receiver.kill()
        sender.stop()
    durations.sort()
    return ScenarioResult(events, send_seconds, reports, stats, refused=refused,
                          longest_transmit=durations[-1] if durations else 0.0,
                          transmit_p99=durations[int(0.99 * (len(durations) - 1))]
                          if durations else 0.0,
                          delivered_seconds=delivered_seconds)


if __name__ == "__main__":
    if sys.argv[1:2] == ["receive"]:
        receive_main(sys.argv[2:])
    else:
        sys.exit(__doc__)
