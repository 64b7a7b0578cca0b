"""A networked chart in its own process for tests/test_view.py and benchmarks/view.py.

``python tests/view_node.py NAME --run RUN --after PREV [--no-trace]``

Transmits on ``view.RUN.NAME`` and receives ``view.RUN.PREV``, so three nodes
a (after c), b (after a), c (after b) make a ring. States ``idle`` and
``busy``: every ``relay`` event received toggles the state and, while its
``hops`` payload is above 0, passes ``relay(hops - 1)`` on. Commands on stdin:
``KICK N`` (toggle and send ``relay(N)``), ``FLIP`` (toggle, send nothing),
``BURST N`` (N local flips as fast as the chart takes them), ``STOP``.
Prints ``@@READY`` once its networks consume, ``@@FLIPPED state`` after FLIP.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject


def say(marker: str) -> None:
    sys.stdout.write(marker + "\n")
    sys.stdout.flush()


def _toggle(chart, e, other):
    if e.signal == signals.relay:
        hops = int((e.payload or {}).get("hops", 0))
        if hops > 0:
            chart.transmit(Event(signal=signals.relay, payload={"hops": hops - 1}))
        return chart.trans(other)
    if e.signal == signals.kick:
        chart.transmit(Event(signal=signals.relay, payload={"hops": int(e.payload)}))
        return chart.trans(other)
    if e.signal == signals.flip:
        return chart.trans(other)
    return None


@spy_on
def idle(chart, e):
    status = _toggle(chart, e, busy)
    if status is None:
        chart.temp.fun = chart.top
        status = return_status.SUPER
    return status


@spy_on
def busy(chart, e):
    status = _toggle(chart, e, idle)
    if status is None:
        chart.temp.fun = chart.top
        status = return_status.SUPER
    return status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--run", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--no-trace", action="store_true")
    args = parser.parse_args()
    chart = NetworkedActiveObject(args.name, tx_routing_key=f"view.{args.run}.{args.name}",
                                  rx_routing_key=f"view.{args.run}.{args.after}", peers=[],
                                  lan_discovery=False)
    if not args.no_trace:
        chart.enable_snoop_trace_no_color()
    chart.start_at(idle)
    assert chart.nets.consumer is not None and chart.nets.consumer.ready.wait(10)
    say("@@READY")
    done = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "KICK":
                chart.post_fifo(Event(signal=signals.kick, payload=int(words[1])))
            elif words[0] == "FLIP":
                chart.post_fifo(Event(signal=signals.flip))
            elif words[0] == "BURST":
                for _ in range(int(words[1])):
                    chart.post_fifo(Event(signal=signals.flip))
                    while len(chart.locking_deque.deque) > 300:
                        time.sleep(0.001)
            elif words[0] == "STOP":
                break
        done.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    done.wait(300)
    chart.stop()
    say("@@STOPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
