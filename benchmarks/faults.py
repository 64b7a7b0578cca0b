"""The broker-restart scenario, measured: nothing lost, nothing twice.

Run:  python benchmarks/faults.py [--events 50000] [--restarts 2] [--slow 0.0002]

Starts a second RabbitMQ node on loopback (tests/rabbit_node.py's RabbitNode),
then runs two scenarios of benchmarks/_fault_scenario.py:

1. receiver's broker restarted: the sender lives on the local broker, the
   receiver on the extra node, which is restarted ``--restarts`` times
   (rabbitmqctl stop_app / start_app) while the sender transmits;
2. sender's broker restarted: the sender and one receiver live on the extra
   node, another receiver on the local broker.

For every receiver it prints events sent, received, lost (must be 0),
duplicated (must be 0), out of order (must be 0) and the longest gap between
two deliveries (how long the restart stalled the flow). No peer library
offers this guarantee over restarts, so there is no peer row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))

from _bench import default_environment  # noqa: E402
from _fault_scenario import run_scenario  # noqa: E402
from rabbit_node import RabbitNode  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--slow", type=float, default=0.0002,
                        help="seconds the receiving handler spends per event")
    args = parser.parse_args()
    default_environment()
    os.environ["MIROS_RABBITMQ_LAN_DISCOVERY"] = "0"  # even when the environment says otherwise
    local_port = int(os.environ.get("RABBIT_PORT", "5672"))

    failures = 0
    with RabbitNode() as node:
        def restart() -> None:
            node.stop_app()
            node.start_app()

        scenarios = [
            ("receiver's broker restarted", dict(sender_port=local_port,
                                                 receiver_ports=[node.port])),
            ("sender's broker restarted", dict(sender_port=node.port,
                                               receiver_ports=[node.port, local_port])),
        ]
        print(f"{'scenario':30} {'receiver on':>11} {'sent':>7} {'received':>9} {'lost':>5} "
              f"{'dup':>4} {'order':>5} {'gap s':>6} {'wall s':>7}")
        for label, ports in scenarios:
            started = time.monotonic()
            result = run_scenario(events=args.events, restart=restart, restarts=args.restarts,
                                  slow=args.slow, **ports)
            wall = time.monotonic() - started
            for report, port in zip(result.reports, ports["receiver_ports"], strict=True):
                where = "restarted" if port == node.port else "other"
                print(f"{label:30} {where:>11} {result.sent:7d} {report.received:9d} "
                      f"{report.missing:5d} {report.duplicates:4d} {report.out_of_order:5d} "
                      f"{report.longest_gap:6.2f} {wall:7.1f}")
                failures += report.missing + report.duplicates + report.out_of_order
            print(f"{'':30} sender (default constructor): refused {result.refused}, longest "
                  f"transmit() {result.longest_transmit * 1e3:.1f} ms; {result.sender_stats}")
    print("lost/duplicated/reordered in all:", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
