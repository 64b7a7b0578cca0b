"""What the live view sustains, how late it shows a transition, and what presence costs.

    python benchmarks/view.py [--quick]

Needs the local broker, and Debian's chromium + chromium-driver (headless,
driven by Selenium through /usr/bin/chromedriver). Prints three tables:

1. page throughput: a publisher process sends snoop trace lines at a fixed
   rate (batched as the snoop pump batches them) for a few seconds; the page
   (a real headless Chromium on `miros-rabbitmq view`'s server) counts the
   lines it drew. A rate is sustained when every line is drawn and the p99
   delay from the line's timestamp to its drawing stays under a second.
2. transition -> page delay (p50/p99): a chart in another process makes a
   transition every 20 ms; the delay from miros's trace timestamp to the
   moment the page draws it. Peer, measured in the same run: the same lines'
   arrival at a plain snoop listener (what `miros-rabbitmq snoop` prints).
3. presence: the cost of one presence line, and mesh throughput between two
   charts with presence off, at the default interval, and at 1/100 of it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
from datetime import datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import default_environment, percentile  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
STAMP = "%Y-%m-%d %H:%M:%S.%f"


# --------------------------------------------------------------------------- child processes


def publisher(rate: int, seconds: float, ready: Any, go: Any, done: Any) -> None:
    """Send snoop trace lines at ``rate`` lines/s, one message per 20 ms tick."""
    from miros_rabbitmq import NetworkedActiveObject

    chart = NetworkedActiveObject("bench_pub", tx_routing_key="bench.view.pub",
                                  rx_routing_key="bench.view.none", peers=[])
    chart.nets.start()
    ready.set()
    go.wait(30)
    tick, sent = 0.02, 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        due = int(rate * (time.monotonic() - started)) - sent
        batch = []
        for n in range(due):
            name = f"load{(sent + n) % 10}"
            stamp = datetime.now().strftime(STAMP)
            batch.append(["trace", name, f"[{stamp}] [{name}] e->tick() s1->s2", True, "", ""])
        for start in range(0, len(batch), 256):
            chart.nets.transmit("SNOOP_TRACE", batch[start:start + 256], network="snoop_trace")
        sent += len(batch)
        time.sleep(tick)
    done.put(sent)
    chart.nets.stop()


def flipper(count: int, period: float, ready: Any, go: Any) -> None:
    """A chart with snoop trace on, flipping between two states every ``period`` s."""
    from miros import Event, return_status, signals, spy_on

    from miros_rabbitmq import NetworkedActiveObject

    @spy_on
    def s1(chart: Any, e: Any) -> Any:
        if e.signal == signals.flip:
            return chart.trans(s2)
        chart.temp.fun = chart.top
        return return_status.SUPER

    @spy_on
    def s2(chart: Any, e: Any) -> Any:
        if e.signal == signals.flip:
            return chart.trans(s1)
        chart.temp.fun = chart.top
        return return_status.SUPER

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  snoop prints every node's lines
    chart = NetworkedActiveObject("bench_flipper", tx_routing_key="bench.view.flip",
                                  rx_routing_key="bench.view.none", peers=[])
    chart.enable_snoop_trace_no_color()
    chart.start_at(s1)
    ready.set()
    go.wait(30)
    for _ in range(count):
        chart.post_fifo(Event(signal=signals.flip))
        time.sleep(period)
    time.sleep(0.5)
    chart.stop()


# --------------------------------------------------------------------------- the page


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def page_throughput(driver: Any, server: Any, rates: list[int], seconds: float) -> None:
    print(f"\n1. page throughput ({seconds:g} s per rate, lines drawn by headless Chromium)")
    print(f"{'offered lines/s':>16} {'sent':>8} {'drawn':>8} {'drawn/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8}  sustained")
    ctx = mp.get_context("spawn")
    for rate in rates:
        ready, go, done = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=publisher, args=(rate, seconds, ready, go, done))
        proc.start()
        ready.wait(30)
        driver.execute_script("mirosView.delays(true)")
        before = driver.execute_script("return mirosView.lines()")
        go.set()
        sent = done.get(timeout=seconds + 60)
        deadline = time.monotonic() + 10
        drawn = 0
        while time.monotonic() < deadline:
            drawn = driver.execute_script("return mirosView.lines()") - before
            if drawn >= sent:
                break
            time.sleep(0.1)
        delays = driver.execute_script("return mirosView.delays(true)")
        proc.join(10)
        p50 = percentile(delays, 50) * 1000 if delays else float("nan")
        p99 = percentile(delays, 99) * 1000 if delays else float("nan")
        ok = drawn >= sent and p99 < 1000
        print(f"{rate:>16} {sent:>8} {drawn:>8} {drawn / seconds:>9.0f} {p50:>8.1f} "
              f"{p99:>8.1f}  {'yes' if ok else 'NO'}")


def transition_delay(driver: Any, peer: dict[str, float], count: int) -> None:
    print(f"\n2. transition -> page delay ({count} transitions, one every 20 ms)")
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=flipper, args=(count, 0.02, ready, go))
    proc.start()
    ready.wait(30)
    time.sleep(0.5)
    driver.execute_script("mirosView.delays(true)")
    peer.clear()
    peer["on"] = 1.0
    go.set()
    proc.join(count * 0.02 + 60)
    time.sleep(1.0)
    peer.pop("on", None)
    page = driver.execute_script("return mirosView.delays(true)")
    at_listener = list(peer.values())
    print(f"{'where':<40} {'lines':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for label, values in (("page (drawn in Chromium)", page),
                          ("peer: plain snoop listener (`snoop`)", at_listener)):
        if values:
            print(f"{label:<40} {len(values):>6} {percentile(values, 50) * 1000:>8.1f} "
                  f"{percentile(values, 99) * 1000:>8.1f}")
    if page and at_listener:
        print(f"ratio page/listener p50: {percentile(page, 50) / percentile(at_listener, 50):.1f}x "
              f"(the server batches every 25 ms; the page draws at most ~12 times a second)")


# --------------------------------------------------------------------------- presence


def presence_cost(events: int, rounds: int) -> None:
    from miros import return_status, signals, spy_on

    from miros_rabbitmq import NetworkedActiveObject
    from miros_rabbitmq.mesh import presence

    print("\n3. presence")

    @spy_on
    def sink(chart: Any, e: Any) -> Any:
        if e.signal == signals.bench_ping:
            chart.got += 1
            if chart.got >= chart.want:
                chart.all_in.set()
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    def run(interval: str) -> tuple[float, float]:
        os.environ["MIROS_RABBITMQ_PRESENCE_INTERVAL"] = interval
        run_id = os.urandom(3).hex()
        sender = NetworkedActiveObject(f"bench_tx_{run_id}", tx_routing_key=f"bench.p.{run_id}",
                                       rx_routing_key="bench.p.none", peers=[])
        receiver = NetworkedActiveObject(f"bench_rx_{run_id}", tx_routing_key="bench.p.none",
                                         rx_routing_key=f"bench.p.{run_id}", peers=[])
        receiver.got, receiver.want, receiver.all_in = 0, events, threading.Event()
        for chart in (sender, receiver):
            chart.start_at(sink)
        assert receiver.nets.consumer.ready.wait(10)
        from miros import Event

        started = time.perf_counter()
        for _ in range(events):
            sender.transmit(Event(signal=signals.bench_ping, payload=None))
        receiver.all_in.wait(120)
        elapsed = time.perf_counter() - started
        line_us = float("nan")
        if interval != "0":
            n = 2000
            t0 = time.perf_counter()
            for _ in range(n):
                presence._send(sender, "alive", 2.0)
            line_us = (time.perf_counter() - t0) / n * 1e6
        for chart in (sender, receiver):
            chart.stop()
        return events / elapsed, line_us

    rows = (("off (interval 0)", "0"),
            (f"default ({presence.INTERVAL:g} s)", str(presence.INTERVAL)),
            (f"stressed ({presence.INTERVAL / 100:g} s)", str(presence.INTERVAL / 100)))
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in rows}
    for _ in range(rounds):  # rows take turns: a shared machine's noise hits them alike
        for label, interval in rows:
            results[label].append(run(interval))
    print(f"{'presence interval':<28} {'mesh events/s (median of ' + str(rounds) + ')':>30} "
          f"{'µs per presence line':>22}")
    base = percentile([r for r, _ in results[rows[0][0]]], 50)
    for label, _ in rows:
        rate = percentile([r for r, _ in results[label]], 50)
        line_us = percentile([u for _, u in results[label]], 50)
        print(f"{label:<28} {rate:>30.0f} {line_us:>22.1f}   ratio to off {rate / base:.2f}")
    os.environ.pop("MIROS_RABBITMQ_PRESENCE_INTERVAL", None)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rates, shorter runs")
    args = parser.parse_args()
    default_environment()
    from miros_rabbitmq.config import load_settings
    from miros_rabbitmq.view.live import listen
    from miros_rabbitmq.view.server import ViewServer

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        print("needs Debian's chromium and chromium-driver (scripts/ensure_os_packages.sh)")
        return 1
    settings = load_settings()
    server = ViewServer()
    peer: dict[str, float] = {}

    def tap(network: str, envelope: Any) -> None:
        server.tap(network, envelope)
        if "on" in peer and envelope.signal_name == "SNOOP_TRACE":
            now = time.time()
            for record in envelope.payload:
                if record[0] == "trace" and record[1] == "bench_flipper":
                    stamp = datetime.strptime(record[2][1:27], STAMP).timestamp()
                    peer[f"{len(peer)}"] = now - stamp

    listeners = listen(settings, tap)
    server.start()
    driver = browser()
    try:
        driver.get(server.url)
        time.sleep(1.0)
        rates = [1000, 3000] if args.quick else [1000, 3000, 10000]
        page_throughput(driver, server, rates, 3.0 if args.quick else 5.0)
        transition_delay(driver, peer, 100 if args.quick else 300)
    finally:
        driver.quit()
        for listener in listeners:
            listener.stop()
        server.stop()
    presence_cost(2000 if args.quick else 5000, 1 if args.quick else 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
