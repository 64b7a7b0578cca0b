"""A networked chart in its own OS process, driven over stdin/stdout by a test.

    python tests/mesh_node.py NAME TX_KEY RX_KEY [--peer URL ...] [--factory]

stdout: ``READY`` once started, then one ``RECV <repr-json>`` line per event
received. stdin: one JSON object per line, ``{"signal": ..., "payload": ...,
"pose": [x, y]}`` to transmit (``pose`` sends a RobotPose), or ``STOP``.
Credentials and keys come from the environment, as for any user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from miros import Event, return_status, signals, spy_on  # noqa: E402
from payload_types import RobotPose  # noqa: E402

from miros_rabbitmq import NetworkedActiveObject, NetworkedFactory  # noqa: E402


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def describe(payload: object) -> object:
    if isinstance(payload, RobotPose):
        return {"RobotPose": [payload.x, payload.y, payload.tags]}
    return payload


def record(chart: object, e: Event) -> None:
    emit("RECV " + json.dumps({"to": chart.name, "signal": e.signal_name,
                               "payload": describe(e.payload)}))


@spy_on
def listening(chart, e):
    if e.signal_name.startswith("mesh_"):
        record(chart, e)
        return return_status.HANDLED
    chart.temp.fun = chart.top
    return return_status.SUPER


def build(args: argparse.Namespace):
    if args.factory:
        chart = NetworkedFactory(args.name, tx_routing_key=args.tx, rx_routing_key=args.rx,
                                 peers=args.peer, lan_discovery=False)

        def on_event(chart, e):
            record(chart, e)
            return return_status.HANDLED

        state = chart.create(state="listening")
        for name in ("mesh_hello", "mesh_pose", "mesh_reply"):
            state.catch(signal=getattr(signals, name), handler=on_event)
        method = state.to_method()
        chart.nest(method, parent=None)
        return chart, method
    chart = NetworkedActiveObject(args.name, tx_routing_key=args.tx, rx_routing_key=args.rx,
                                  peers=args.peer, lan_discovery=False)
    return chart, listening


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("tx")
    parser.add_argument("rx")
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--factory", action="store_true")
    args = parser.parse_args()
    chart, initial = build(args)
    chart.start_at(initial)
    emit("READY")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == "STOP":
            break
        command = json.loads(line)
        if "pose" in command:
            payload: object = RobotPose(*command["pose"], tags=["custom"])
        else:
            payload = command.get("payload")
        chart.transmit(Event(signal=getattr(signals, command["signal"]), payload=payload))
    chart.stop()
    emit("STOPPED")


if __name__ == "__main__":
    main()
