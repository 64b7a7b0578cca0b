"""One-way latency and sustained throughput: miros-rabbitmq vs a plain pika loop.

Run:  python benchmarks/latency_throughput.py [--latency-events 1000] [--throughput-events 20000]

Every row uses the same local broker (RABBIT_* from the environment or .env,
default guest/guest on 127.0.0.1:5672) and the same shape: a receiver in its
own OS process, a sender in this one. Latency is transmit() (publish) -> the
receiving handler (callback), events sent one at a time, 2 ms apart; the
clock is CLOCK_MONOTONIC, shared by processes on one machine. The rows take
turns in blocks of 50 events, so a noisy minute of the machine falls on all
of them alike. Throughput is events/s delivered to the receiver while the
sender sends as fast as it can, with the count sent vs received.

Rows:
  miros-rabbitmq        a NetworkedActiveObject to a NetworkedActiveObject, both
                        made with the default constructor (instrumented charts,
                        discovery on, default buffers: what a 0.2 user writes)
  plain pika            pika's BlockingConnection publishing transient messages
                        without confirms to an auto-ack consumer: the cheapest
                        loop the client offers
  plain pika, durable   the same with our delivery guarantees: a durable queue,
                        persistent messages, publisher confirms, an ack per
                        message (latency only: BlockingConnection waits for each
                        confirm, so its throughput would measure that API)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from _bench import default_environment, percentile  # noqa: E402

PLAIN_EXCHANGE = "bench.plain.exchange"
BLOCK = 50  # latency events per turn of a row
GAP = 0.002  # seconds between two latency events


def row(latencies: list[float], sent: int, received: int, seconds: float) -> dict[str, float]:
    """One printed row: latency percentiles in ms, delivered events/s."""
    return {
        "p50": percentile(latencies, 50) * 1e3,
        "p95": percentile(latencies, 95) * 1e3,
        "p99": percentile(latencies, 99) * 1e3,
        "rate": received / max(1e-9, seconds),
        "sent": sent,
        "received": received,
    }


# ------------------------------------------------------------------ receivers (own processes)


def chart_receiver(ready: Any, stop: Any, results: Any, expected: int, name: str) -> None:
    from miros import return_status, signals, spy_on

    from miros_rabbitmq import NetworkedActiveObject

    latencies: list[float] = []
    state = {"count": 0, "first": 0.0}

    @spy_on
    def listening(chart, e):
        if e.signal == signals.BENCH:
            now = time.monotonic()
            sent_at, phase = e.payload
            if phase == "latency":
                latencies.append(now - sent_at)
                if len(latencies) == expected:
                    results.put(("latency", latencies))
            else:
                state["count"] += 1
                if state["count"] == 1:
                    state["first"] = sent_at
                if state["count"] == phase:
                    results.put(("throughput", (state["first"], now, state["count"])))
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    # the default constructor: what a 0.2 user writes (an instrumented chart)
    chart = NetworkedActiveObject(name, tx_routing_key="bench.rx", rx_routing_key="bench.tx")
    chart.start_at(listening)
    ready.set()
    stop.wait(300)
    chart.stop()


def plain_receiver(ready: Any, results: Any, expected: int, queue_name: str, url: str,
                   durable: bool) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(PLAIN_EXCHANGE, exchange_type="topic")
    channel.queue_declare(queue_name, durable=durable, exclusive=not durable, auto_delete=durable)
    channel.queue_bind(queue_name, PLAIN_EXCHANGE, routing_key=queue_name)
    latencies: list[float] = []
    state = {"count": 0, "first": 0.0}

    def on_message(ch, method, properties, body):
        now = time.monotonic()
        phase, _, sent = body.partition(b":")
        if phase == b"L":
            latencies.append(now - float(sent))
            if len(latencies) == expected:
                results.put(("latency", latencies))
        elif phase == b"X":
            ch.stop_consuming()
        else:
            state["count"] += 1
            if state["count"] == int(phase):
                results.put(("throughput", (state["first"], now, state["count"])))
        if durable:
            ch.basic_ack(method.delivery_tag)

    channel.basic_qos(prefetch_count=256)
    channel.basic_consume(queue_name, on_message, auto_ack=not durable)
    ready.set()
    channel.start_consuming()
    connection.close()


# ------------------------------------------------------------------ senders (this process)


class ChartRow:
    label = "miros-rabbitmq"

    def __init__(self, ctx: Any, latency_events: int, throughput_events: int) -> None:
        from miros import return_status

        from miros_rabbitmq import NetworkedActiveObject

        self.ready, self.stop, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        self.process = ctx.Process(target=chart_receiver, args=(
            self.ready, self.stop, self.results, latency_events, f"bench_rx_{uuid.uuid4().hex[:6]}"))
        self.process.start()

        def idle(chart, e):
            chart.temp.fun = chart.top
            return return_status.SUPER

        # the default constructor, no tuning: flow control keeps the burst whole
        self.sender = NetworkedActiveObject(
            f"bench_tx_{uuid.uuid4().hex[:6]}", tx_routing_key="bench.tx",
            rx_routing_key="bench.none")
        self.sender.start_at(idle)

    def send_latency(self) -> None:
        from miros import Event, signals

        # the clock starts at transmit(), not before the Event is built (the
        # plain rows, likewise, have their body ready when their clock starts)
        payload = [0.0, "latency"]
        event = Event(signal=signals.BENCH, payload=payload)
        payload[0] = time.monotonic()
        self.sender.transmit(event)

    def throughput(self, count: int) -> tuple[float, int]:
        from miros import Event, signals

        start = time.monotonic()
        for _ in range(count):
            self.sender.transmit(Event(signal=signals.BENCH, payload=(time.monotonic(), count)))
        try:
            _kind, (_first, last, received) = self.results.get(timeout=120)
        except Exception as error:
            print(f"throughput phase did not finish: {error!r}", file=sys.stderr)
            last, received = time.monotonic(), 0
        return last - start, received

    def close(self) -> None:
        self.stop.set()
        self.process.join(30)
        self.sender.stop()


class PlainRow:
    def __init__(self, ctx: Any, latency_events: int, url: str, *, durable: bool) -> None:
        import pika

        self.label = "plain pika, durable" if durable else "plain pika"
        self.durable = durable
        self.ready, self.results = ctx.Event(), ctx.Queue()
        self.queue = f"bench.plain.{uuid.uuid4().hex[:6]}"
        self.process = ctx.Process(target=plain_receiver, args=(
            self.ready, self.results, latency_events, self.queue, url, durable))
        self.process.start()
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(PLAIN_EXCHANGE, exchange_type="topic")
        self.properties = pika.BasicProperties(delivery_mode=2 if durable else 1)
        if durable:
            self.channel.confirm_delivery()

    def send_latency(self) -> None:
        self.channel.basic_publish(PLAIN_EXCHANGE, self.queue, b"L:%r" % time.monotonic(),
                                   self.properties)

    def throughput(self, count: int) -> tuple[float, int]:
        start = time.monotonic()
        tag = str(count).encode()
        for _ in range(count):
            self.channel.basic_publish(PLAIN_EXCHANGE, self.queue, tag + b":%r" % time.monotonic())
        try:
            _kind, (_first, last, received) = self.results.get(timeout=120)
        except Exception:
            last, received = time.monotonic(), 0
        return last - start, received

    def close(self) -> None:
        self.channel.basic_publish(PLAIN_EXCHANGE, self.queue, b"X:0", self.properties)
        self.process.join(30)
        self.connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-events", type=int, default=1000)
    parser.add_argument("--throughput-events", type=int, default=20000)
    parser.add_argument("--burst-events", type=int, default=100000,
                        help="the burst: a tight transmit() loop to two receiver processes "
                             "(0: skip)")
    args = parser.parse_args()
    default_environment()
    url = (f"amqp://{os.environ['RABBIT_USER']}:{os.environ['RABBIT_PASSWORD']}"
           f"@127.0.0.1:{os.environ.get('RABBIT_PORT', '5672')}/%2F")
    ctx = mp.get_context("spawn")
    rows: list[Any] = [ChartRow(ctx, args.latency_events, args.throughput_events),
                       PlainRow(ctx, args.latency_events, url, durable=False),
                       PlainRow(ctx, args.latency_events, url, durable=True)]
    for bench_row in rows:
        assert bench_row.ready.wait(30), f"{bench_row.label}: receiver did not start"
    time.sleep(0.3)

    sent = 0
    while sent < args.latency_events:  # the rows take turns, a block each
        block = min(BLOCK, args.latency_events - sent)
        for bench_row in rows:
            for _ in range(block):
                bench_row.send_latency()
                time.sleep(GAP)  # one at a time: the previous one has long arrived
        sent += block
    latencies = {bench_row.label: bench_row.results.get(timeout=60)[1] for bench_row in rows}

    ours, plain, durable = rows
    results: dict[str, dict[str, float]] = {}
    for bench_row in (ours, plain):
        seconds, received = bench_row.throughput(args.throughput_events)
        results[bench_row.label] = row(latencies[bench_row.label], args.throughput_events,
                                       received, seconds)
    results[durable.label] = row(latencies[durable.label], 0, 0, 1.0)
    for bench_row in rows:
        bench_row.close()

    mine, theirs, safe = (results[r.label] for r in rows)
    print(f"{'':22} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'events/s':>10} "
          f"{'sent':>7} {'received':>9}")
    for label in (ours.label, plain.label):
        result = results[label]
        print(f"{label:22} {result['p50']:8.3f} {result['p95']:8.3f} {result['p99']:8.3f} "
              f"{result['rate']:10.0f} {result['sent']:7d} {result['received']:9d}")
    print(f"{durable.label:22} {safe['p50']:8.3f} {safe['p95']:8.3f} {safe['p99']:8.3f} "
          f"{'-':>10} {'-':>7} {'-':>9}")
    print(f"ratio (miros-rabbitmq / plain): latency p50 x{mine['p50'] / theirs['p50']:.2f}, "
          f"throughput {100 * mine['rate'] / theirs['rate']:.0f}%")
    print(f"ratio (miros-rabbitmq / plain, durable): latency p50 x{mine['p50'] / safe['p50']:.2f}")
    print(f"lost: miros-rabbitmq {mine['sent'] - mine['received']}, "
          f"plain {theirs['sent'] - theirs['received']}")
    if args.burst_events:
        burst(args.burst_events, theirs["rate"])
    return 0


def burst(events: int, plain_rate: float) -> None:
    """A tight transmit() loop, default constructor, to two receivers in two processes."""
    from _fault_scenario import run_scenario

    port = int(os.environ.get("RABBIT_PORT", "5672"))
    result = run_scenario(events=events, sender_port=port, receiver_ports=[port, port],
                          slow=0.0, timeout=600)
    delivered = min(r.received for r in result.reports)
    lost = sum(max(0, r.missing) for r in result.reports)
    dups = sum(r.duplicates for r in result.reports)
    print(f"burst (default constructor, 2 receiver processes): sent {result.sent}, "
          f"delivered {delivered} to each, lost {lost}, duplicated {dups}, "
          f"refused {result.refused}; longest transmit() {result.longest_transmit * 1e3:.1f} ms, "
          f"p99 {result.transmit_p99 * 1e3:.2f} ms; {result.delivered_rate:.0f} events/s per "
          f"receiver, {2 * result.delivered_rate:.0f} in all "
          f"({100 * result.delivered_rate / plain_rate:.0f}% / "
          f"{200 * result.delivered_rate / plain_rate:.0f}% of the plain row's events/s)")


if __name__ == "__main__":
    sys.exit(main())
