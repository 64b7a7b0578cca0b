"""Outer/inner: NetworkedActiveObject charts in three processes follow each other.

    python examples/outer_inner.py [--charts 3] [--duration 12]

Each process runs the same chart, outer ⊃ inner (miros ``spy_on`` state
methods). A chart steps into ``inner`` on its own random timer and tells
the mesh (``other_to_inner``); every other chart still in ``outer``
follows it in. Leaving works the same way (``other_to_outer``).

What to watch:
* ``ao1: follows ao0 into inner`` -- a chart reacting to an event that came
  from another process, exactly as if it had been posted locally;
* the snoop trace lines `` [+t] [...] [ao2_...] e->other_to_inner() outer->inner``:
  every process prints the trace of *every* chart (shown here for child 0
  only); colour in a terminal, plain text in a pipe.
"""

from __future__ import annotations

import os
import random
import sys
import time

from _example import arguments, run_children, say
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject


def arm(chart, signal):  # one event on the chart's own timer, 1-3 s from now
    chart.post_fifo(Event(signal=signal), times=1, period=random.uniform(1, 3), deferred=True)


@spy_on
def outer(chart, e):
    if e.signal == signals.INIT_SIGNAL:
        arm(chart, signals.to_inner)
        return return_status.HANDLED
    if e.signal == signals.to_inner:
        return chart.trans(inner)
    if e.signal == signals.other_to_inner:
        say(f"{chart.name}: follows {e.payload} into inner")
        return chart.trans(inner)
    if e.signal in (signals.ENTRY_SIGNAL, signals.EXIT_SIGNAL):
        return return_status.HANDLED
    chart.temp.fun = chart.top
    return return_status.SUPER


@spy_on
def inner(chart, e):
    if e.signal == signals.ENTRY_SIGNAL:
        chart.transmit(Event(signal=signals.other_to_inner, payload=chart.name))
        arm(chart, signals.to_outer)
        return return_status.HANDLED
    if e.signal == signals.EXIT_SIGNAL:
        chart.cancel_events(Event(signal=signals.to_outer))
        chart.transmit(Event(signal=signals.other_to_outer, payload=chart.name))
        return return_status.HANDLED
    if e.signal == signals.to_outer:
        return chart.trans(outer)
    if e.signal == signals.other_to_outer:
        say(f"{chart.name}: follows {e.payload} out to outer")
        return chart.trans(outer)
    if e.signal in (signals.other_to_inner, signals.to_inner):
        return return_status.HANDLED  # already here
    chart.temp.fun = outer
    return return_status.SUPER


def child(n: int, duration: float) -> None:
    run = os.environ["EXAMPLE_RUN"]
    chart = NetworkedActiveObject(f"ao{n}_{run}", tx_routing_key=f"{run}.ao{n}",
                                  rx_routing_key=f"{run}.#")  # 0.2's keywords; .env holds the rest
    if n == 0:  # every process could print the network's trace; one is enough here
        chart.enable_snoop_trace() if sys.stdout.isatty() else chart.enable_snoop_trace_no_color()
    else:
        chart.enable_snoop_trace_no_color()
    chart.start_at(outer)
    time.sleep(duration)
    chart.stop()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    if args.child is None:
        sys.exit(run_children(args))
    child(args.child, args.duration)
