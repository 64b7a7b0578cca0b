"""Outer/inner again, built as a NetworkedFactory (create / catch / nest).

    python examples/outer_inner_factory.py [--charts 3] [--duration 12]

The same behaviour as ``outer_inner.py``, written with miros's Factory API,
and subclassing ``NetworkedFactory`` the way 0.2's examples did
(``super().__init__(name=..., ...)`` with every argument by keyword).

What to watch: ``fac1: follows fac0 into inner`` lines, and in the snoop
trace the same transitions as the ActiveObject version,
``e->other_to_inner() outer->inner``; the spy of child 0 (`` [+s] ...``)
shows everything its event processor does with a networked event.
"""

from __future__ import annotations

import os
import random
import sys
import time

from _example import arguments, run_children, say
from miros import Event, return_status, signals

from miros_rabbitmq import NetworkedFactory


class OuterInner(NetworkedFactory):
    def __init__(self, name: str, tx_routing_key: str, rx_routing_key: str) -> None:
        super().__init__(name=name, tx_routing_key=tx_routing_key,
                         rx_routing_key=rx_routing_key)  # credentials and keys: .env
        self.outer = (self.create(state="outer")
                      .catch(signal=signals.INIT_SIGNAL, handler=self.arm_inner)
                      .catch(signal=signals.to_inner, handler=lambda c, e: c.trans(self.inner))
                      .catch(signal=signals.other_to_inner, handler=self.follow_in)
                      .to_method())
        self.inner = (self.create(state="inner")
                      .catch(signal=signals.ENTRY_SIGNAL, handler=self.on_inner_entry)
                      .catch(signal=signals.EXIT_SIGNAL, handler=self.on_inner_exit)
                      .catch(signal=signals.to_outer, handler=lambda c, e: c.trans(self.outer))
                      .catch(signal=signals.other_to_outer, handler=self.follow_out)
                      .catch(signal=signals.other_to_inner, handler=self.handled)
                      .catch(signal=signals.to_inner, handler=self.handled)
                      .to_method())
        self.nest(self.outer, parent=None).nest(self.inner, parent=self.outer)

    def arm(self, signal) -> None:
        self.post_fifo(Event(signal=signal), times=1, period=random.uniform(1, 3), deferred=True)

    @staticmethod
    def handled(chart, e):
        return return_status.HANDLED

    def arm_inner(self, e):  # a bound method: miros passes the event only
        self.arm(signals.to_inner)
        return return_status.HANDLED

    def follow_in(self, e):  # a bound method: miros passes the event only
        say(f"{self.name}: follows {e.payload} into inner")
        return self.trans(self.inner)

    def follow_out(self, e):  # a bound method: miros passes the event only
        say(f"{self.name}: follows {e.payload} out to outer")
        return self.trans(self.outer)

    def on_inner_entry(self, e):  # a bound method: miros passes the event only
        self.transmit(Event(signal=signals.other_to_inner, payload=self.name))
        self.arm(signals.to_outer)
        return return_status.HANDLED

    def on_inner_exit(self, e):  # a bound method: miros passes the event only
        self.cancel_events(Event(signal=signals.to_outer))
        self.transmit(Event(signal=signals.other_to_outer, payload=self.name))
        return return_status.HANDLED


def child(n: int, duration: float) -> None:
    run = os.environ["EXAMPLE_RUN"]
    chart = OuterInner(f"fac{n}_{run}", f"{run}.fac{n}", f"{run}.#")
    color = n == 0 and sys.stdout.isatty()
    chart.enable_snoop_trace() if color else chart.enable_snoop_trace_no_color()
    if n == 0:
        chart.enable_snoop_spy() if color else chart.enable_snoop_spy_no_color()
    chart.start_at(chart.outer)
    time.sleep(duration)
    chart.stop()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    if args.child is None:
        sys.exit(run_children(args))
    child(args.child, args.duration)
