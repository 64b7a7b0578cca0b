"""A mesh of two machines found through the hosts file, each with its own broker.

    python examples/hosts_file_mesh.py --other-port 5673 [--duration 10]

The original design: every machine runs its own RabbitMQ broker; a chart
consumes from its local broker and publishes to its peers' brokers. Here
"machine a" uses the broker on 127.0.0.1:5672 and "machine b" a second
broker on this machine (``--other-port``); each runs in its own folder whose
``.miros_rabbitmq_hosts.json`` lists the other machine's broker. Nobody is
given ``peers=``: the ManNetChart of each node reads its hosts file, scouts
the host (a broker accepting our credentials AND a node there holding our
mesh key) and builds producers to it.

A second broker on one machine (as root; ports and folders of your choice):

    mkdir -p /tmp/second && chown rabbitmq /tmp/second
    printf 'listeners.tcp.1 = 127.0.0.1:5673\\nloopback_users = none\\n' > /tmp/second/rabbitmq.conf
    sudo -u rabbitmq env RABBITMQ_NODENAME=second@localhost RABBITMQ_DIST_PORT=25673 \\
        RABBITMQ_CONFIG_FILE=/tmp/second/rabbitmq.conf RABBITMQ_MNESIA_BASE=/tmp/second/db \\
        RABBITMQ_LOG_BASE=/tmp/second/log RABBITMQ_ENABLED_PLUGINS_FILE=/tmp/second/plugins \\
        /usr/lib/rabbitmq/bin/rabbitmq-server -detached

On two real machines, run ``--machine a --other-host B_ADDRESS`` on one and
``--machine b --other-host A_ADDRESS --other-port 5672`` on the other (see
docs/tutorial.md for the broker set-up).

What to watch: ``machine b: hello from machine a`` on both sides, and the
peer each chart found: ``publishing to ['amqp://guest:******@127.0.0.1:5673/%2F']``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from _example import arguments, run_children, say
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject


@spy_on
def talking(chart, e):
    if e.signal == signals.ENTRY_SIGNAL:
        chart.post_fifo(Event(signal=signals.tick), times=0, period=0.5, deferred=True)
        return return_status.HANDLED
    if e.signal == signals.tick:  # say hello every half second, show the peers found so far
        chart.transmit(Event(signal=signals.other_hello, payload=chart.machine))
        if chart.other_urls() != chart.peers_seen:
            chart.peers_seen = chart.other_urls()
            say(f"machine {chart.machine}: publishing to {chart.peers_seen}")
        return return_status.HANDLED
    if e.signal == signals.other_hello:
        if e.payload not in chart.heard:
            chart.heard.add(e.payload)
            say(f"machine {chart.machine}: hello from machine {e.payload}")
        return return_status.HANDLED
    chart.temp.fun = chart.top
    return return_status.SUPER


def machine(name: str, port: int, other: str, duration: float) -> None:
    os.chdir(tempfile.mkdtemp(prefix=f"machine_{name}_"))  # a folder of its own: its own files
    with open(".miros_rabbitmq_hosts.json", "w", encoding="utf-8") as handle:
        json.dump({"hosts": [other]}, handle)
    run = os.environ.get("EXAMPLE_RUN", "demo")
    chart = NetworkedActiveObject(f"{name}_{run}", tx_routing_key=f"{run}.{name}",
                                  rx_routing_key=f"{run}.*", rabbit_port=port)
    chart.machine, chart.heard, chart.peers_seen = name, set(), []
    say(f"machine {name}: local broker {chart.this_url()}, hosts file lists {other}")
    chart.start_at(talking)
    time.sleep(duration)
    chart.stop()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], charts=2, duration=10, other_port=int,
                     other_host=str, machine=str)
    host = args.other_host or "127.0.0.1"
    if args.machine:  # one side only, on a real machine
        machine(args.machine, int(os.environ.get("RABBIT_PORT", 5672)),
                f"{host}:{args.other_port or 5672}", args.duration)
    elif args.other_port is None:
        print(__doc__)
        print("give --other-port: the AMQP port of a second broker on this machine")
    elif args.child is None:
        args.charts = 2
        sys.exit(run_children(args, "--other-port", str(args.other_port)))
    elif args.child == 0:
        machine("a", 5672, f"127.0.0.1:{args.other_port}", args.duration)
    else:
        machine("b", args.other_port, "127.0.0.1:5672", args.duration)
