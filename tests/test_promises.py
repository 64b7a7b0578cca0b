"""Promises the docs make that had no test of their own.

* several charts of one process share one connection and one I/O thread;
* ``stop()`` flushes what is still unconfirmed and deletes the chart's queues;
* snoop lines give way (counted per link) when a peer's broker is down,
  while events wait for it, and flow again when it is back;
* back-pressure really engages: the consumer pauses (the broker holds the
  backlog) and resumes.

Real brokers (the local one and the extra node, whose connections and queues
only this test run uses), default constructors unless a line says otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject, NetworkedFactory
from miros_rabbitmq.testing import EventRecorder, recording_state, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def _chart(prefix: str, tx: str, rx: str, **options) -> NetworkedActiveObject:
    return NetworkedActiveObject(f"{prefix}_{uuid.uuid4().hex[:6]}", tx_routing_key=tx,
                                 rx_routing_key=rx, **options)


def _queues(node) -> set[str]:
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name").stdout
    # (rabbitmqctl may print Erlang error reports on stdout too: queue names only)
    return {line.strip() for line in out.splitlines() if line.startswith("miros.")}


def _connections(node) -> list[str]:
    out = node.ctl("list_connections", "-q", "--no-table-headers", "peer_port").stdout
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def _io_threads(port: int) -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith("miros-rabbitmq-io") and t.name.endswith(f":{port}")]


# ------------------------------------------------------------------ one connection


def test_charts_of_one_process_share_one_connection_and_one_io_thread(
        mesh_env, extra_rabbitmq_node, monkeypatch) -> None:
    node = extra_rabbitmq_node
    monkeypatch.setenv("RABBIT_PORT", str(node.port))
    assert _io_threads(node.port) == []
    connections_before = set(_connections(node))
    rec = EventRecorder()
    alpha = _chart("alpha", "share.alpha", "share.*", peers=[], lan_discovery=False)
    beta = _chart("beta", "share.beta", "share.*", peers=[], lan_discovery=False)
    gamma = NetworkedFactory(f"gamma_{uuid.uuid4().hex[:6]}", tx_routing_key="share.gamma",
                             rx_routing_key="share.*", peers=[], lan_discovery=False)

    def on_hello(chart, e):
        rec((chart.name, e.payload))
        return return_status.HANDLED

    factory_state = gamma.create(state="listening").catch(
        signal=signals.share_hello, handler=on_hello).to_method()
    gamma.nest(factory_state, parent=None)

    @spy_on
    def listening(chart, e):
        if e.signal == signals.share_hello:
            rec((chart.name, e.payload))
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    charts = [alpha, beta, gamma]
    alpha.enable_snoop_trace_no_color()  # the snoop networks ride the same connection
    beta.enable_snoop_spy_no_color()
    alpha.start_at(listening)
    beta.start_at(listening)
    gamma.start_at(factory_state)
    try:
        for chart in charts:  # every chart hears the other two
            chart.transmit(Event(signal=signals.share_hello, payload=chart.name))
        heard = rec.wait_until(lambda items: len(items) >= 6, 10, "six deliveries")
        assert sorted(heard) == sorted((a.name, b.name) for a in charts for b in charts
                                       if a is not b)
        # one link object, one I/O thread, one TCP connection as the broker sees it
        assert len({id(chart.nets.local_link) for chart in charts}) == 1
        assert len(_io_threads(node.port)) == 1, _io_threads(node.port)
        new = set(_connections(node)) - connections_before
        assert len(new) == 1, new
    finally:
        for chart in charts:
            chart.stop()
    wait_for(lambda: _io_threads(node.port) == [], 5, message="the I/O thread to end")


# ------------------------------------------------------------------ stop() flushes


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
os._exit(0)  # no interpreter clean-up: whatever stop() did not send is lost
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


def test_stop_flushes_what_is_pending(mesh_env, extra_rabbitmq_node, monkeypatch) -> None:
    node = extra_rabbitmq_node
    monkeypatch.setenv("RABBIT_PORT", str(node.port))
    received: list[int] = []
    receiver = _chart("stop_rx", "stop.none", "stop.tx", peers=[], lan_discovery=False)

    @spy_on
    def counting(chart, e):
        if e.signal == signals.stop_hello:
            received.append(e.payload)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    receiver.start_at(counting)
    try:
        wait_for(lambda: f"miros.mesh.{receiver.nets.identity}" in _queues(node), 10,
                 message="the receiver's queue")
        count = 5000
        _own, report = _stopper(node, count)
        # there was something to flush, and stop() sent it all before returning
        assert report["pending"] > 0 and report["after"] == 0, report
        wait_for(lambda: len(received) >= count, 30, message=f"{count} events")
        assert received == list(range(count))
    finally:
        receiver.stop()


def test_stop_deletes_the_charts_queues(mesh_env, extra_rabbitmq_node, monkeypatch) -> None:
    node = extra_rabbitmq_node
    monkeypatch.setenv("RABBIT_PORT", str(node.port))
    own, _report = _stopper(node, 10)
    # its queues are gone (durable ones would otherwise wait 10 minutes to expire)
    assert not (_queues(node) & own), _queues(node) & own


# ------------------------------------------------------------------ snoop gives way


@spy_on
def _ping_pong(chart, e):
    if e.signal == signals.poke:
        return return_status.HANDLED  # a spy line per poke; trace lines come with starts
    chart.temp.fun = chart.top
    return return_status.SUPER


def test_snoop_lines_give_way_at_a_dead_peer_and_flow_again(mesh_env,
                                                           extra_rabbitmq_node) -> None:
    node = extra_rabbitmq_node
    peer_url = f"127.0.0.1:{node.port}"
    far = EventRecorder()
    receiver = _chart("snoopdrop_rx", "sd.none", "sd.tx", peers=[], lan_discovery=False,
                      rabbit_port=node.port)
    receiver.start_at(recording_state(far, ["sd_hello"]))
    sender = _chart("snoopdrop_tx", "sd.tx", "sd.none", peers=[peer_url], lan_discovery=False)
    sender.enable_snoop_spy_no_color()
    sender.start_at(_ping_pong)

    def peer() -> dict:
        stats = sender.nets.stats()["peers"]
        return next(v for url, v in stats.items() if f":{node.port}" in url)

    def local() -> dict:
        stats = sender.nets.stats()["peers"]
        return next(v for url, v in stats.items() if f":{node.port}" not in url)

    events = 1200  # more than the 1024 pending messages at which snoop lines give way
    try:
        wait_for(lambda: peer()["connected"], 10, message="the peer link")
        node.stop_app()
        try:
            wait_for(lambda: not peer()["connected"], 10, message="the peer link to drop")
            for n in range(events):  # events wait for the peer: none is dropped
                sender.transmit(Event(signal=signals.sd_hello, payload=n))
            # the local broker confirmed its copies: its link has room for snoop lines
            wait_for(lambda: local()["buffered"] == 0, 10, message="the local link drained")
            for _ in range(200):  # spy lines: they must give way on the dead link only
                sender.post_fifo(Event(signal=signals.poke))
            wait_for(lambda: peer()["dropped_snoop"] > 0, 10, message="snoop drops on the peer")
            assert peer()["dropped_overflow"] == 0 and peer()["buffered"] >= events
            assert local()["dropped_snoop"] == 0  # the live local broker took every line
        finally:
            node.start_app()
        wait_for(lambda: peer()["connected"] and peer()["buffered"] == 0, 30,
                 message="the peer link back and drained")
        far.wait_for_count(events, timeout=30)
        assert [e.payload for e in far.items] == list(range(events))
        dropped = peer()["dropped_snoop"]
        for _ in range(50):  # back up: snoop lines flow again, none dropped
            sender.post_fifo(Event(signal=signals.poke))
        published = peer()["published"]
        wait_for(lambda: peer()["published"] > published and peer()["buffered"] == 0, 10,
                 message="snoop lines to the peer")
        assert peer()["dropped_snoop"] == dropped
    finally:
        sender.stop()
        receiver.stop()


# ------------------------------------------------------------------ back-pressure


def test_back_pressure_pauses_the_consumer_and_resumes_it(mesh_env) -> None:
    received: list[int] = []

    @spy_on
    def slow(chart, e):
        if e.signal == signals.bp_hello:
            time.sleep(0.0003)  # a slow handler: the chart's queue fills up
            received.append(e.payload)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    sender = _chart("bp2_tx", "bp2.tx", "bp2.none", peers=[], lan_discovery=False)
    receiver = _chart("bp2_rx", "bp2.none", "bp2.tx", peers=[], lan_discovery=False)
    sender.start_at(recording_state(EventRecorder(), []))
    receiver.start_at(slow)
    queue_name = f"miros.mesh.{receiver.nets.identity}"
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", int(os.environ["RABBIT_PORT"]), credentials=pika.PlainCredentials(
            os.environ["RABBIT_USER"], os.environ["RABBIT_PASSWORD"])))
    channel = connection.channel()

    def ready_on_broker() -> int:  # messages the broker holds, not handed to the consumer
        return channel.queue_declare(queue_name, passive=True).method.message_count

    # more than the consumer may hold unacked (64 messages, each a batch of up to
    # 64 events), so that the broker must keep some whatever the batch sizes
    count = 10_000
    try:
        for n in range(count):
            sender.transmit(Event(signal=signals.bp_hello, payload=n))
        # paused: the chart's queue is full, the consumer was told "no room"...
        wait_for(lambda: receiver.nets.consumer.waits >= 1, 10, 0.01, "the consumer to pause")
        # ... and the broker keeps the rest meanwhile
        held = ready_on_broker()
        assert held > 0 and len(received) < count, (held, len(received))
        # resumed: everything arrives, in order, and the broker's queue empties
        wait_for(lambda: len(received) == count, 60, message=f"{count} events")
        assert received == list(range(count))
        assert ready_on_broker() == 0 and held > 0
    finally:
        connection.close()
        sender.stop()
        receiver.stop()
