"""One OS process with several cluster-mode charts that transmit continuously.

    python tests/cluster_worker.py PROCESS CHARTS RX_PROCESS [--interval S]

Credentials, keys and the cluster (``RABBIT_CLUSTER``) come from the environment,
as for any user. Chart ``c<i>`` of process ``p<P>`` transmits ``cl.p<P>.c<i>`` and
receives ``cl.p<RX_PROCESS>.#`` (the charts of another process, reached through
whichever cluster nodes the two processes are connected to).

stdin commands, one a line: ``GO`` (start transmitting, one event per chart every
``interval``), ``HALT`` (stop transmitting; answers ``SENT {chart: count}``),
``REPORT`` (answers ``REPORT {json}``: per receiver and sender the events received,
duplicates, order breaks, plus the longest gap between two receipts from one
sender and the node in use), ``QUIT`` (stop the charts; answers ``STOPPED``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from miros import Event, return_status, signals, spy_on  # noqa: E402

from miros_rabbitmq import NetworkedActiveObject  # noqa: E402


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Record:
    """What one receiving chart saw (touched by its chart thread only, read under lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.duplicates = 0
        self.order_breaks = 0
        self.last_at: dict[str, float] = {}
        self.longest_gap = 0.0  # between two receipts from the same sender

    def took(self, sender: str, seq: int) -> None:
        now = time.monotonic()
        with self.lock:
            last = self.last.get(sender, 0)
            if seq <= last:
                self.duplicates += 1
                return
            if seq != last + 1:
                self.order_breaks += 1  # a hole: something before it is lost or late
            self.last[sender] = seq
            self.count[sender] = self.count.get(sender, 0) + 1
            if sender in self.last_at:
                self.longest_gap = max(self.longest_gap, now - self.last_at[sender])
            self.last_at[sender] = now

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"count": dict(self.count), "last": dict(self.last),
                    "duplicates": self.duplicates, "order_breaks": self.order_breaks,
                    "longest_gap": self.longest_gap}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("process", type=int)
    parser.add_argument("charts", type=int)
    parser.add_argument("rx_process", type=int)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()

    records: dict[str, Record] = {}

    def listening_for(record: Record) -> Any:
        @spy_on
        def listening(chart: Any, e: Event) -> Any:
            if e.signal == signals.cl_tick:
                record.took(e.payload[0], e.payload[1])
                return return_status.HANDLED
            chart.temp.fun = chart.top
            return return_status.SUPER
        return listening

    charts = []
    for i in range(args.charts):
        name = f"p{args.process}c{i}"
        record = records[name] = Record()
        chart = NetworkedActiveObject(name, tx_routing_key=f"cl.p{args.process}.c{i}",
                                      rx_routing_key=f"cl.p{args.rx_process}.#")
        chart.start_at(listening_for(record))
        charts.append(chart)
    emit("READY " + json.dumps({"node": charts[0].this_url(), "others": charts[0].other_urls()}))

    sent = {chart.name: 0 for chart in charts}
    halt = threading.Event()

    def transmit() -> None:
        next_at = time.monotonic()
        while not halt.is_set():
            for chart in charts:
                sent[chart.name] += 1
                chart.transmit(Event(signal=signals.cl_tick, payload=(chart.name, sent[chart.name])))
            next_at += args.interval
            halt.wait(max(0.0, next_at - time.monotonic()))

    sender = threading.Thread(target=transmit, name="cluster-worker-sender", daemon=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "GO":
            sender.start()
            emit("GOING")
        elif command == "HALT":
            halt.set()
            if sender.is_alive():
                sender.join()
            emit("SENT " + json.dumps(sent))
        elif command == "REPORT":
            stats = charts[0].nets.local_link.stats if charts[0].nets.local_link else None
            emit("REPORT " + json.dumps({
                "receivers": {name: r.summary() for name, r in records.items()},
                "node": charts[0].this_url(),
                "resent": stats.resent if stats else 0,
                "failovers": charts[0].nets.local_link.failovers if charts[0].nets.local_link else 0,
            }))
        elif command == "QUIT":
            break
    halt.set()
    for chart in charts:
        chart.stop()
    emit("STOPPED")


if __name__ == "__main__":
    main()
