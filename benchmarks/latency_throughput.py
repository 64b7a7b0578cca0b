"""One-way latency and sustained throughput: miros-rabbitmq vs a plain pika loop.

Run:  python benchmarks/latency_throughput.py [--latency-events 1000] [--throughput-events 20000]

Both rows use the same local broker (RABBIT_* from the environment or .env,
default guest/guest on 127.0.0.1:5672) and the same shape: a receiver in its
own OS process, a sender in this one. Latency is transmit() -> the receiving
handler, events sent one at a time; the clock is CLOCK_MONOTONIC, shared by
processes on one machine. Throughput is events/s delivered to the receiver
while the sender sends as fast as it can, with the count sent vs received.

The plain row is pika's BlockingConnection publishing transient messages with
no confirms to a consumer with auto-ack: the cheapest loop the client offers,
so the ratio shows what encryption, confirms, persistence and the chart cost.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from cryptography.fernet import Fernet  # noqa: E402

PLAIN_EXCHANGE = "bench.plain.exchange"


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


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


# ------------------------------------------------------------------ miros-rabbitmq row


def chart_receiver(ready: mp.Event, stop: mp.Event, results: mp.Queue, expected: int,
                   name: str) -> None:
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

    chart = NetworkedActiveObject(name, tx_routing_key="bench.rx", rx_routing_key="bench.tx",
                                  peers=[], lan_discovery=False, instrumented=False)
    chart.start_at(listening)
    ready.set()
    stop.wait(300)
    chart.stop()


def run_chart_row(latency_events: int, throughput_events: int) -> dict[str, float]:
    from miros import Event, return_status, signals, spy_on  # noqa: F401

    from miros_rabbitmq import NetworkedActiveObject

    ctx = mp.get_context("spawn")
    name = f"bench_rx_{uuid.uuid4().hex[:6]}"
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    receiver = ctx.Process(target=chart_receiver,
                           args=(ready, stop, results, latency_events, name))
    receiver.start()
    assert ready.wait(30), "receiver did not start"

    @spy_on
    def idle(chart, e):
        chart.temp.fun = chart.top
        return return_status.SUPER

    # the burst is buffered until confirmed: give the buffer room for all of it
    sender = NetworkedActiveObject(f"bench_tx_{uuid.uuid4().hex[:6]}", tx_routing_key="bench.tx",
                                   rx_routing_key="bench.none", peers=[], lan_discovery=False,
                                   max_buffer=throughput_events + 1000)
    sender.start_at(idle)
    time.sleep(0.2)
    for _ in range(latency_events):
        # the clock starts at transmit(), not before the Event is built (the
        # plain row, likewise, has its body ready when its clock starts)
        payload = [0.0, "latency"]
        event = Event(signal=signals.BENCH, payload=payload)
        payload[0] = time.monotonic()
        sender.transmit(event)
        time.sleep(0.002)  # one at a time: the previous one has long arrived
    kind, latencies = results.get(timeout=60)
    start = time.monotonic()
    for _ in range(throughput_events):
        sender.transmit(Event(signal=signals.BENCH, payload=(time.monotonic(), throughput_events)))
    try:
        kind, (_first, last, count) = results.get(timeout=120)
    except Exception as error:
        print(f"throughput phase did not finish: {error!r}", file=sys.stderr)
        last, count = time.monotonic(), 0
    stop.set()
    receiver.join(30)
    sender.stop()
    return row(latencies, throughput_events, count, last - start)


# ------------------------------------------------------------------ plain pika row


def plain_receiver(ready: mp.Event, results: mp.Queue, expected: int, queue_name: str,
                   url: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(PLAIN_EXCHANGE, exchange_type="topic")
    channel.queue_declare(queue_name, exclusive=True)
    channel.queue_bind(queue_name, PLAIN_EXCHANGE, routing_key="bench.tx")
    latencies: list[float] = []
    state = {"count": 0, "first": 0.0}

    def on_message(ch, method, properties, body):
        now = time.monotonic()
        phase, _, sent = body.partition(b":")
        sent_at = float(sent)
        if phase == b"L":
            latencies.append(now - sent_at)
            if len(latencies) == expected:
                results.put(("latency", latencies))
        elif phase == b"X":
            ch.stop_consuming()
        else:
            state["count"] += 1
            if state["count"] == int(phase):
                results.put(("throughput", (state["first"], now, state["count"])))

    channel.basic_consume(queue_name, on_message, auto_ack=True)
    ready.set()
    channel.start_consuming()
    connection.close()


def run_plain_row(latency_events: int, throughput_events: int, url: str) -> dict[str, float]:
    import pika

    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    queue_name = f"bench.plain.{uuid.uuid4().hex[:6]}"
    receiver = ctx.Process(target=plain_receiver,
                           args=(ready, results, latency_events, queue_name, url))
    receiver.start()
    assert ready.wait(30), "plain receiver did not start"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(PLAIN_EXCHANGE, exchange_type="topic")
    for _ in range(latency_events):
        channel.basic_publish(PLAIN_EXCHANGE, "bench.tx", b"L:%r" % time.monotonic())
        time.sleep(0.002)
    _, latencies = results.get(timeout=60)
    start = time.monotonic()
    tag = str(throughput_events).encode()
    for _ in range(throughput_events):
        channel.basic_publish(PLAIN_EXCHANGE, "bench.tx", tag + b":%r" % time.monotonic())
    try:
        _, (_, last, count) = results.get(timeout=120)
    except Exception:
        last, count = time.monotonic(), 0
    channel.basic_publish(PLAIN_EXCHANGE, "bench.tx", b"X:0")
    receiver.join(30)
    connection.close()
    return row(latencies, throughput_events, count, last - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-events", type=int, default=1000)
    parser.add_argument("--throughput-events", type=int, default=20000)
    args = parser.parse_args()
    os.environ.setdefault("RABBIT_USER", "guest")
    os.environ.setdefault("RABBIT_PASSWORD", "guest")
    os.environ.setdefault("MESH_ENCRYPTION_KEY", Fernet.generate_key().decode())
    os.environ.setdefault("MIROS_RABBITMQ_LAN_DISCOVERY", "0")
    url = (f"amqp://{os.environ['RABBIT_USER']}:{os.environ['RABBIT_PASSWORD']}"
           f"@127.0.0.1:{os.environ.get('RABBIT_PORT', '5672')}/%2F")

    ours = run_chart_row(args.latency_events, args.throughput_events)
    plain = run_plain_row(args.latency_events, args.throughput_events, url)
    header = (f"{'':16} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'events/s':>10} "
              f"{'sent':>7} {'received':>9}")
    print(header)
    for label, row in (("miros-rabbitmq", ours), ("plain pika", plain)):
        print(f"{label:16} {row['p50']:8.3f} {row['p95']:8.3f} {row['p99']:8.3f} "
              f"{row['rate']:10.0f} {row['sent']:7d} {row['received']:9d}")
    print(f"ratio (miros-rabbitmq / plain): latency p50 x{ours['p50'] / plain['p50']:.2f}, "
          f"throughput {100 * ours['rate'] / plain['rate']:.0f}%")
    print(f"lost: miros-rabbitmq {ours['sent'] - ours['received']}, "
          f"plain {plain['sent'] - plain['received']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
