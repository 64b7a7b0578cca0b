"""Snoop trace, snoop spy and scribbles from several processes, read in one place.

    python examples/snoop_scribbles.py [--charts 3] [--duration 8] [--no-spy]

Three charts in three processes rest and work on their own timers; a chart
that starts working tells the mesh, and the others note it. Every chart
publishes its trace and spy on the snoop networks and writes scribbles
(``snoop_scribble``: free text in the trace stream). Child 0's output is
shown: it holds the lines of *all* processes, in the order they arrived.

What to watch:
* `` [+t] [...] [chart1_...] e->to_work() resting->working`` -- a transition
  of another process;
* `` [+t] [...] [chart2_...] # noticed chart0_... at work`` -- a scribble;
* `` [+s] chart1_... ...`` -- the spy: everything the event processor did.
Try `miros-rabbitmq snoop --trace` in another terminal (with the same
.env) while this runs, and `miros-rabbitmq sequence LOG` on the saved output.
"""

from __future__ import annotations

import os
import random
import sys
import time

from _example import arguments, run_children
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject


def later(chart, signal):
    chart.post_fifo(Event(signal=signal), times=1, period=random.uniform(0.5, 1.5), deferred=True)


@spy_on
def resting(chart, e):
    if e.signal == signals.ENTRY_SIGNAL:
        later(chart, signals.to_work)
        return return_status.HANDLED
    if e.signal == signals.to_work:
        return chart.trans(working)
    chart.temp.fun = awake
    return return_status.SUPER


@spy_on
def working(chart, e):
    if e.signal == signals.ENTRY_SIGNAL:
        chart.snoop_scribble(f"{chart.name} starts a job in process {os.getpid()}")
        chart.transmit(Event(signal=signals.other_working, payload=chart.name))
        later(chart, signals.to_rest)
        return return_status.HANDLED
    if e.signal == signals.to_rest:
        return chart.trans(resting)
    chart.temp.fun = awake
    return return_status.SUPER


@spy_on
def awake(chart, e):
    if e.signal == signals.other_working:
        chart.snoop_scribble(f"noticed {e.payload} at work")
        return return_status.HANDLED
    chart.temp.fun = chart.top
    return return_status.SUPER


def child(n: int, duration: float, spy: bool) -> None:
    run = os.environ["EXAMPLE_RUN"]
    chart = NetworkedActiveObject(f"chart{n}_{run}", tx_routing_key=f"{run}.chart{n}",
                                  rx_routing_key=f"{run}.#")
    color = n == 0 and sys.stdout.isatty()  # colour for a terminal, plain text for a pipe
    chart.enable_snoop_trace() if color else chart.enable_snoop_trace_no_color()
    if spy:
        chart.enable_snoop_spy() if color else chart.enable_snoop_spy_no_color()
    chart.start_at(resting)
    time.sleep(duration)
    chart.snoop_scribble(f"{chart.name} signs off")
    chart.stop()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], duration=8, no_spy=int)
    if args.child is None:
        sys.exit(run_children(args, *(["--no-spy", "1"] if args.no_spy else [])))
    child(args.child, args.duration, spy=not args.no_spy)
