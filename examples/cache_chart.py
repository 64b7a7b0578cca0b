"""The cache chart: processes share one JSON cache file through CacheFileChart.

    python examples/cache_chart.py [--charts 3] [--duration 6]

The LAN discovery keeps what it found in a cache file that many processes
read and one rewrites; this is that pattern on its own. Child 0 owns the
cache: every 0.3 s it writes ``{"count": n, "time_out_in_minutes": 1}``.
The others read it on their own timers. Each process has one
``CacheFileChart`` (it takes an OS lock the kernel releases if the holder
dies, writes atomically, and never blocks its thread on the lock); a small
chart of ours talks to it with miros publish/subscribe (``CACHE_FILE_WRITE``,
``CACHE_FILE_READ`` -> ``CACHE``). No broker is needed.

What to watch: ``reader 2 read count=7 (expired False)`` -- counts only
grow, a read never sees a half-written file; at the end ``reader 1: 14
reads, 0 invalid``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from _example import arguments, run_children, say
from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq.cache import CacheFileChart
from miros_rabbitmq.payloads import CacheWritePayload


@spy_on
def using_cache(chart, e):
    if e.signal == signals.ENTRY_SIGNAL:
        chart.subscribe(Event(signal=signals.CACHE))  # works: spy_on makes us instrumented
        chart.post_fifo(Event(signal=signals.tick), times=0, period=0.3, deferred=True)
        return return_status.HANDLED
    if e.signal == signals.tick and chart.is_owner:
        chart.seen_count += 1
        document = {"count": chart.seen_count, "time_out_in_minutes": 1}
        chart.publish(Event(signal=signals.CACHE_FILE_WRITE,
                            payload=CacheWritePayload(document, chart.cache_path)))
        return return_status.HANDLED
    if e.signal == signals.tick:
        chart.publish(Event(signal=signals.CACHE_FILE_READ, payload=chart.cache_path))
        return return_status.HANDLED
    if e.signal == signals.CACHE:
        count = e.payload.dict.get("count", 0)
        chart.reads += 1
        chart.invalid += count < chart.seen_count  # a count never goes back
        chart.seen_count = max(chart.seen_count, count)
        say(f"{chart.name} read count={count} (expired {e.payload.expired})")
        return return_status.HANDLED
    chart.temp.fun = chart.top
    return return_status.SUPER


def child(n: int, duration: float, file: str) -> None:
    cache = CacheFileChart(file, default_json={"count": 0, "time_out_in_minutes": 0})
    chart = ActiveObject("writer" if n == 0 else f"reader {n}")
    chart.is_owner, chart.cache_path, chart.seen_count = n == 0, file, 0
    chart.reads = chart.invalid = 0  # (names clear of miros's own attributes)
    chart.start_at(using_cache)
    time.sleep(duration)
    chart.stop()
    cache.stop()
    if n:
        say(f"{chart.name}: {chart.reads} reads, {chart.invalid} invalid")
    else:
        say(f"writer: wrote count up to {chart.seen_count}")


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0], duration=6, file=str)
    if args.child is None:
        file = os.path.join(tempfile.mkdtemp(prefix="cache_example_"), "shared_cache.json")
        sys.exit(run_children(args, "--file", file))
    child(args.child, args.duration, args.file)
