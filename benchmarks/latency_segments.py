"""Where the one-way latency of an event goes, segment by segment.

Run:  python benchmarks/latency_segments.py [--events 1000]

A receiver chart in its own OS process, a sender chart in this one, on the
local broker (RABBIT_* from the environment or .env, default guest/guest on
127.0.0.1:5672); events sent one at a time, 2 ms apart, as in
latency_throughput.py. Timestamps are CLOCK_MONOTONIC, shared by processes
on one machine, taken by wrapping four internal steps (the wrappers add a
few microseconds each):

  transmit()           the clock starts (the Event is already built)
  publish handed over  BrokerLink._basic_publish: pika gets the message
  frame delivered      Consumer._deliver on the receiver's I/O thread
  posted               the decoded event goes to the chart's queue
  handler              the receiving state function runs
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from _bench import default_environment, percentile  # noqa: E402


def receiver(ready: mp.Event, stop: mp.Event, results: mp.Queue, name: str, expected: int) -> None:
    from miros import return_status, signals

    from miros_rabbitmq import NetworkedActiveObject, transport
    from miros_rabbitmq.mesh import networked as network

    stamps: dict[str, list[float]] = {"delivered": [], "posted": [], "handler": [], "sent": []}
    deliver = transport.Consumer.handle_delivery
    post = network._Networked._deliver_from_network

    def timed_deliver(self, *args):
        stamps["delivered"].append(time.monotonic())
        return deliver(self, *args)

    def timed_post(self, envelope):
        stamps["posted"].append(time.monotonic())
        return post(self, envelope)

    transport.Consumer.handle_delivery = timed_deliver
    network._Networked._deliver_from_network = timed_post

    def listening(chart, e):
        if e.signal == signals.SEGMENT_BENCH:
            stamps["handler"].append(time.monotonic())
            stamps["sent"].append(e.payload[0])
            if len(stamps["handler"]) == expected:
                results.put(stamps)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    chart = NetworkedActiveObject(name, tx_routing_key="segments.rx",
                                  rx_routing_key="segments.tx", peers=[],
                                  lan_discovery=False, instrumented=False)
    chart.start_at(listening)
    ready.set()
    stop.wait(300)
    chart.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    default_environment()

    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    process = ctx.Process(target=receiver, args=(ready, stop, results,
                                                 f"seg_rx_{uuid.uuid4().hex[:6]}", args.events))
    process.start()
    assert ready.wait(30), "receiver did not start"

    from miros import Event, return_status, signals

    from miros_rabbitmq import NetworkedActiveObject, transport

    handed: list[float] = []
    basic_publish = transport.BrokerLink._basic_publish

    def timed_publish(self, batch):
        if batch[0].exchange == "miros.mesh.exchange":  # not the presence lines (snoop trace)
            handed.append(time.monotonic())
        return basic_publish(self, batch)

    transport.BrokerLink._basic_publish = timed_publish

    def idle(chart, e):
        chart.temp.fun = chart.top
        return return_status.SUPER

    sender = NetworkedActiveObject(f"seg_tx_{uuid.uuid4().hex[:6]}", tx_routing_key="segments.tx",
                                   rx_routing_key="segments.none", peers=[], lan_discovery=False)
    sender.start_at(idle)
    time.sleep(0.3)
    handed.clear()
    for _ in range(args.events):
        payload = [0.0]
        event = Event(signal=signals.SEGMENT_BENCH, payload=payload)
        payload[0] = time.monotonic()
        sender.transmit(event)
        time.sleep(0.002)
    stamps = results.get(timeout=60)
    stop.set()
    process.join(30)
    sender.stop()

    sent = stamps["sent"]
    rows = [
        ("transmit() -> pika has the message (encode, publish)", sent, handed),
        ("-> receiver's I/O thread has the frame (pika, broker)", handed, stamps["delivered"]),
        ("-> posted to the chart's queue (decrypt, filters)", stamps["delivered"], stamps["posted"]),
        ("-> the handler runs (hand-off, miros dispatch)", stamps["posted"], stamps["handler"]),
        ("transmit() -> handler, in all", sent, stamps["handler"]),
    ]
    print(f"{'segment':56} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8}")
    for label, start, end in rows:
        spans = [b - a for a, b in zip(start, end, strict=True)]
        print(f"{label:56} {percentile(spans, 50) * 1e6:8.0f} {percentile(spans, 90) * 1e6:8.0f} "
              f"{percentile(spans, 99) * 1e6:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
