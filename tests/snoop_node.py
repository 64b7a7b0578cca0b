"""A networked chart with snoop on, run as its own process by tests/test_snoop.py.

``python tests/snoop_node.py NAME [--no-color] [--spy] [--flips N]``

Settings come from the environment. Protocol on stdin/stdout: prints
``@@READY`` when its networks and snoop listener consume; on ``GO`` it flips
between ``outer`` and ``inner`` N times, transmitting each flip to the others
(who flip too, on ``other_to_inner``/``other_to_outer``) and scribbling; on
``STOP`` (or end of stdin) it stops and prints ``@@STATS {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject
from miros_rabbitmq.mesh.snoop import PUMP


def say(marker: str) -> None:
    """One write with its newline: print() writes the newline separately, and
    the snoop printer thread may write in between."""
    sys.stdout.write(marker + "\n")
    sys.stdout.flush()


@spy_on
def outer(chart, e):
    status = return_status.UNHANDLED
    if e.signal == signals.to_inner:
        chart.transmit(Event(signal=signals.other_to_inner, payload=chart.name))
        status = chart.trans(inner)
    elif e.signal == signals.other_to_inner:
        status = chart.trans(inner)
    else:
        chart.temp.fun = chart.top
        status = return_status.SUPER
    return status


@spy_on
def inner(chart, e):
    status = return_status.UNHANDLED
    if e.signal == signals.to_outer:
        chart.transmit(Event(signal=signals.other_to_outer, payload=chart.name))
        status = chart.trans(outer)
    elif e.signal == signals.other_to_outer:
        status = chart.trans(outer)
    else:
        chart.temp.fun = outer
        status = return_status.SUPER
    return status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--no-color", action="store_true")
    parser.add_argument("--spy", action="store_true")
    parser.add_argument("--flips", type=int, default=4)
    parser.add_argument("--run", default="t")
    args = parser.parse_args()
    chart = NetworkedActiveObject(args.name, tx_routing_key=f"snoop.{args.run}.{args.name}",
                                  rx_routing_key=f"snoop.{args.run}.*", peers=[],
                                  lan_discovery=False)
    if args.no_color:
        chart.enable_snoop_trace_no_color()
        if args.spy:
            chart.enable_snoop_spy_no_color()
    else:
        chart.enable_snoop_trace()
        if args.spy:
            chart.enable_snoop_spy()
    chart.start_at(outer)
    deadline = time.monotonic() + 10
    while not all(listener.ready.is_set() for listener in chart._snoop.listeners.values()):
        if time.monotonic() > deadline:
            say("@@NOTREADY")
            return 1
        time.sleep(0.01)
    assert chart.nets.consumer is not None and chart.nets.consumer.ready.wait(10)
    say("@@READY")
    done = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "GO":
                chart.snoop_scribble(f"{args.name} starts flipping")
                for index in range(args.flips):
                    chart.post_fifo(Event(signal=signals.to_inner if index % 2 == 0
                                          else signals.to_outer))
            elif line.strip() == "STOP":
                break
        done.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    done.wait(60)
    stats = chart._snoop.stats()
    chart.stop()
    print("@@STATS " + json.dumps({"snoop": stats, "pump_alive": PUMP._thread is not None}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
