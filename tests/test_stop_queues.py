"""stop() deletes the chart's queues (issue #12, "Endings").

A chart in its own process on the extra broker node transmits, then calls
``stop()`` and exits without interpreter clean-up. Every queue the chart
made (its durable mesh queue, the snoop and scout-responder queues) is gone
afterwards: a durable queue left behind would wait for x-expires (10 min).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def _queues(node) -> set[str]:
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name").stdout
    # (rabbitmqctl may print Erlang error reports on stdout too: queue names only)
    return {line.strip() for line in out.splitlines() if line.startswith("miros.")}


SENDER = r"""
import json, os, sys
from miros import Event, return_status, signals, spy_on
from miros_rabbitmq import NetworkedActiveObject

@spy_on
def idle(chart, e):
    chart.temp.fun = chart.top
    return return_status.SUPER

count = int(sys.argv[1])
chart = NetworkedActiveObject("stopper_" + sys.argv[2], tx_routing_key="stop.tx",
                              rx_routing_key="stop.none", peers=[], lan_discovery=False)
chart.enable_snoop_trace_no_color()
chart.start_at(idle)
print("READY " + chart.nets.identity, flush=True)
sys.stdin.readline()
for n in range(count):
    chart.transmit(Event(signal=signals.stop_hello, payload=n))
pending = chart.nets.stats()["buffered"]
chart.stop()
print("STOPPED " + json.dumps({"pending": pending, "after": chart.nets.stats()["buffered"]}),
      flush=True)
os._exit(0)  # no interpreter clean-up: whatever stop() did not do stays undone
"""


def _stopper(node, count: int) -> tuple[set[str], dict]:
    """Run SENDER (a chart on ``node`` in its own process) through ``count`` events and
    stop(); return the queues it had made and its report."""
    before = _queues(node)
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(count), uuid.uuid4().hex[:6]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert sender.stdout is not None and sender.stdin is not None
        ready = ""
        while not ready.startswith("READY "):  # (its snoop trace may come first)
            ready = sender.stdout.readline()
            assert ready, "the sender ended before it was ready"
        identity = ready.split()[1]
        own = _queues(node) - before
        assert f"miros.mesh.{identity}" in own and len(own) >= 2, own  # events, snoop, scouts
        sender.stdin.write("GO\n")
        sender.stdin.flush()
        lines: list[str] = []
        while not (lines and lines[-1].startswith("STOPPED ")):  # (its snoop lines come too)
            line = sender.stdout.readline()
            assert line, f"the sender ended early: {lines}"
            lines.append(line)
        sender.wait(30)
        return own, json.loads(lines[-1][len("STOPPED "):])
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        for stream in (sender.stdin, sender.stdout):
            if stream is not None:
                stream.close()


def test_stop_deletes_the_charts_queues(mesh_env, extra_rabbitmq_node, monkeypatch) -> None:
    node = extra_rabbitmq_node
    monkeypatch.setenv("RABBIT_PORT", str(node.port))
    own, report = _stopper(node, 10)
    assert report["after"] == 0, report  # what it transmitted was flushed first
    # its queues are gone (durable ones would otherwise wait 10 minutes to expire)
    assert not (_queues(node) & own), _queues(node) & own
