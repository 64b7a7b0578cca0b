"""One networked chart built in one of the call styles of miros-rabbitmq 0.2.

    python tests/compat_node.py STYLE NAME ROUTING_KEY EXPECTED_STYLE ...

The credentials and keys come from COMPAT_USER, COMPAT_PASSWORD, COMPAT_KEY,
COMPAT_SPY_KEY and COMPAT_TRACE_KEY and are passed to the constructor as
arguments (positionally or by keyword, as the style says); the environment's
MESH_ENCRYPTION_KEY is a different key, so a misplaced argument cannot go unseen.
stdout: ``READY``; after ``GO`` on stdin the chart transmits ``compat_hello``
(payload: its style) and prints ``GOT <style>`` for every other style it
hears, then ``DONE`` when it heard all of EXPECTED_STYLE; ``STOP`` ends it.
"""

from __future__ import annotations

import os
import sys
import warnings

from miros import Event, return_status, signals, spy_on

from miros_rabbitmq.network import NetworkedActiveObject, NetworkedFactory  # 0.2's import path


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


style, name, key_text, *expected = sys.argv[1:]
user, password = os.environ["COMPAT_USER"], os.environ["COMPAT_PASSWORD"]
key, spy, trace = (os.environ[v].encode() for v in ("COMPAT_KEY", "COMPAT_SPY_KEY",
                                                     "COMPAT_TRACE_KEY"))
heard: set[str] = set()


def on_hello(chart, e):
    if e.payload not in heard:
        heard.add(e.payload)
        emit(f"GOT {e.payload}")
        if heard >= set(expected):
            emit("DONE")
    return return_status.HANDLED


@spy_on
def listening(chart, e):
    if e.signal == signals.compat_hello:
        return on_hello(chart, e)
    chart.temp.fun = chart.top
    return return_status.SUPER


class HorseArcher(NetworkedFactory):
    """0.2's examples subclass NetworkedFactory and pass everything by keyword."""

    def __init__(self, name, rabbit_user, rabbit_password, mesh_encryption_key,
                 tx_routing_key, rx_routing_key, snoop_spy_encryption_key,
                 snoop_trace_encryption_key):
        super().__init__(name=name, rabbit_user=rabbit_user, rabbit_password=rabbit_password,
                         mesh_encryption_key=mesh_encryption_key,
                         tx_routing_key=tx_routing_key, rx_routing_key=rx_routing_key,
                         snoop_spy_encryption_key=snoop_spy_encryption_key,
                         snoop_trace_encryption_key=snoop_trace_encryption_key)
        self.listening = (self.create(state="listening")
                          .catch(signal=signals.compat_hello, handler=on_hello)
                          .to_method())
        self.nest(self.listening, parent=None)


def factory_chart(chart):
    listening_state = (chart.create(state="listening")
                       .catch(signal=signals.compat_hello, handler=on_hello).to_method())
    chart.nest(listening_state, parent=None)
    return listening_state


if style == "positional":          # rx_routing_key left out: 0.2 used the tx key
    chart = NetworkedActiveObject(name, user, password, key, key_text)
    initial = listening
elif style == "positional_all":
    chart = NetworkedActiveObject(name, user, password, key, key_text, key_text, spy, trace)
    initial = listening
elif style == "keyword":
    chart = NetworkedActiveObject(name=name, rabbit_user=user, rabbit_password=password,
                                  mesh_encryption_key=key, tx_routing_key=key_text,
                                  rx_routing_key=key_text, snoop_spy_encryption_key=spy,
                                  snoop_trace_encryption_key=trace)
    initial = listening
elif style == "mixed":
    chart = NetworkedActiveObject(name, user, password, mesh_encryption_key=key,
                                  tx_routing_key=key_text, rx_routing_key=key_text)
    initial = listening
elif style == "factory_positional":
    chart = NetworkedFactory(name, user, password, key, key_text)
    initial = factory_chart(chart)
elif style == "factory_subclass":
    chart = HorseArcher(name=name, rabbit_user=user, rabbit_password=password,
                        mesh_encryption_key=key, tx_routing_key=key_text,
                        rx_routing_key=key_text, snoop_spy_encryption_key=spy,
                        snoop_trace_encryption_key=trace)
    initial = chart.listening
elif style == "old_snoop_names":
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chart = NetworkedActiveObject(name, user, password, key, key_text,
                                      spy_snoop_encryption_key=spy,
                                      trace_snoop_encryption_key=trace)
    if [w for w in caught if issubclass(w.category, DeprecationWarning)]:
        emit("WARNED")
    if (chart.settings.snoop_spy_keys[0].reveal().encode() == spy
            and chart.settings.snoop_trace_keys[0].reveal().encode() == trace):
        emit("SNOOP_KEYS_USED")
    initial = listening
else:
    raise SystemExit(f"unknown style {style}")

chart.start_at(initial)
emit("READY")
for line in sys.stdin:
    command = line.strip()
    if command == "GO":
        chart.transmit(Event(signal=signals.compat_hello, payload=style))
    elif command == "STOP":
        break
chart.stop()
emit("STOPPED")
