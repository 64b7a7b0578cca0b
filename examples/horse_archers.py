"""Horse archers: a unit of charts in separate processes decides together.

    python examples/horse_archers.py [--charts 3] [--duration 15]

Each archer is a NetworkedFactory in its own process. It musters (announces
itself until it has heard every other archer), then advances and looses
arrows on its own timer. Out of arrows, it tells the unit and waits: it
keeps one *empathy chart* per comrade -- a small local miros chart that
tracks what that comrade is doing (fighting, out of arrows, retreating)
from the events the comrade transmits. When its empathy charts say the
whole unit is out of arrows, the archer retreats; every archer reaches that
decision on its own, from the same evidence, so the unit retreats
together, re-arms and advances again.

What to watch:
* ``archer1 thinks archer0 is out_of_arrows`` -- an empathy chart changing
  its mind because of an event from another process;
* ``archer2: round 1, the whole unit is out of arrows: retreat`` -- one per
  archer per round: the unit's common decision, taken in each process.
"""

from __future__ import annotations

import os
import random
import sys
import time

from _example import arguments, run_children, say
from miros import Event, Factory, return_status, signals

from miros_rabbitmq import NetworkedFactory

NEWS = {"other_advancing": "fighting", "other_out_of_arrows": "out_of_arrows",
        "other_retreating": "retreating"}


class Empathy(Factory):
    """What one archer believes a comrade is doing (a local chart, no network)."""

    def __init__(self, owner: HorseArcher, comrade: str) -> None:
        super().__init__(f"{owner.name}:{comrade}")
        self.owner, self.comrade, self.belief = owner, comrade, "fighting"
        states = {belief: self.create(state=belief) for belief in set(NEWS.values())}
        for belief, state in states.items():
            state.catch(signal=signals.ENTRY_SIGNAL, handler=self.believe(belief))
            for signal_name, next_belief in NEWS.items():
                if next_belief != belief:
                    state.catch(signal=getattr(signals, signal_name),
                                handler=self.to(states, next_belief))
        self.states = {belief: state.to_method() for belief, state in states.items()}
        for state in self.states.values():
            self.nest(state, parent=None)
        self.start_at(self.states["fighting"])

    def to(self, states, belief):
        return lambda chart, e: chart.trans(self.states[belief])

    def believe(self, belief):
        def on_entry(chart, e):
            if belief != self.belief:
                say(f"{self.owner.short} thinks {self.comrade.split('_')[0]} is {belief}")
            self.belief = belief
            self.owner.post_fifo(Event(signal=signals.empathy_changed))
            return return_status.HANDLED
        return on_entry


class HorseArcher(NetworkedFactory):
    def __init__(self, n: int, unit_size: int, run: str) -> None:
        super().__init__(name=f"archer{n}_{run}", tx_routing_key=f"{run}.archer{n}",
                         rx_routing_key=f"{run}.*")
        self.short, self.unit_size, self.round = f"archer{n}", unit_size, 0
        self.arrows = 0
        self.comrades: dict[str, Empathy] = {}
        unit = self.create(state="unit").catch(signal=signals.other_present,
                                               handler=lambda c, e: self.hear(e, True))
        for signal_name in NEWS:
            unit.catch(signal=getattr(signals, signal_name), handler=lambda c, e: self.hear(e))
        self.unit = unit.to_method()
        self.muster = (self.create(state="muster")
                       .catch(signal=signals.ENTRY_SIGNAL, handler=self.announce)
                       .catch(signal=signals.announce, handler=self.announce)
                       .catch(signal=signals.empathy_changed, handler=self.mustered)
                       .to_method())
        self.advance = (self.create(state="advance")
                        .catch(signal=signals.ENTRY_SIGNAL, handler=self.rearm)
                        .catch(signal=signals.loose, handler=self.loose)
                        .to_method())
        self.waiting = (self.create(state="out_of_arrows")
                        .catch(signal=signals.ENTRY_SIGNAL, handler=self.check_unit)
                        .catch(signal=signals.empathy_changed, handler=self.check_unit)
                        .to_method())
        self.retreat = (self.create(state="retreat")
                        .catch(signal=signals.ENTRY_SIGNAL, handler=self.fall_back)
                        .catch(signal=signals.rearmed, handler=lambda c, e: c.trans(self.advance))
                        .to_method())
        self.nest(self.unit, parent=None)
        for state in (self.muster, self.advance, self.waiting, self.retreat):
            self.nest(state, parent=self.unit)

    # -- handlers that are bound methods get the event only (miros's Factory rule)
    # -- the unit: every comrade's news goes to that comrade's empathy chart
    def hear(self, e, present=False):
        comrade = e.payload
        if comrade not in self.comrades:
            self.comrades[comrade] = Empathy(self, comrade)
            if present:  # the newcomer may have missed our announcements: answer once
                self.transmit(Event(signal=signals.other_present, payload=self.name))
        if not present:
            self.comrades[comrade].post_fifo(Event(signal=e.signal))
        return return_status.HANDLED

    def announce(self, e):
        self.transmit(Event(signal=signals.other_present, payload=self.name))
        self.post_fifo(Event(signal=signals.announce), times=1, period=0.5, deferred=True)
        return return_status.HANDLED

    def mustered(self, e):
        if len(self.comrades) < self.unit_size - 1:
            return return_status.HANDLED
        self.cancel_events(Event(signal=signals.announce))
        say(f"{self.short}: the unit is mustered ({len(self.comrades) + 1} archers)")
        return self.trans(self.advance)

    # -- advance: loose arrows until the quiver is empty
    def rearm(self, e):
        self.arrows = random.randint(3, 6)
        self.transmit(Event(signal=signals.other_advancing, payload=self.name))
        self.post_fifo(Event(signal=signals.loose), times=1, period=0.3, deferred=True)
        return return_status.HANDLED

    def loose(self, e):
        self.arrows -= 1
        if self.arrows > 0:
            self.post_fifo(Event(signal=signals.loose), times=1, period=0.3, deferred=True)
            return return_status.HANDLED
        self.transmit(Event(signal=signals.other_out_of_arrows, payload=self.name))
        return self.trans(self.waiting)

    # -- out of arrows: retreat only when the empathy charts say everyone is
    def check_unit(self, e):
        if all(c.belief in ("out_of_arrows", "retreating") for c in self.comrades.values()):
            return self.trans(self.retreat)
        return return_status.HANDLED

    def fall_back(self, e):
        self.round += 1
        say(f"{self.short}: round {self.round}, the whole unit is out of arrows: retreat")
        self.transmit(Event(signal=signals.other_retreating, payload=self.name))
        self.post_fifo(Event(signal=signals.rearmed), times=1, period=1.0, deferred=True)
        return return_status.HANDLED

    def stop(self) -> None:
        super().stop()
        for empathy in self.comrades.values():
            empathy.stop()


def child(n: int, unit_size: int, duration: float) -> None:
    archer = HorseArcher(n, unit_size, os.environ["EXAMPLE_RUN"])
    archer.start_at(archer.muster)
    time.sleep(duration)
    archer.stop()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], duration=15)
    if args.child is None:
        sys.exit(run_children(args))
    child(args.child, args.charts, args.duration)
