"""Tokens on a real broker: replays, clock skew, network and routing-key binding,
reserved miros signals, 0.2 messages, and snoop with only the snoop keys."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid

import pika
import pytest
from cli_process import clean_env, run_cli
from cryptography.fernet import Fernet
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject
from miros_rabbitmq.testing import wait_for
from miros_rabbitmq.wire.names import MESH_EXCHANGE, SNOOP_TRACE_EXCHANGE, SNOOP_TRACE_ROUTING_KEY

HOUR = 3600.0


def _connection() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", int(os.environ.get("RABBIT_PORT", "5672")),
        credentials=pika.PlainCredentials(os.environ["RABBIT_USER"],
                                          os.environ["RABBIT_PASSWORD"])))


class Tap:
    """An eavesdropper's queue bound to an exchange: captures the tokens as sent."""

    def __init__(self, exchange: str, routing_key: str) -> None:
        self.connection = _connection()
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange, "topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, exchange, routing_key)

    def captured(self, timeout: float = 5.0) -> tuple[bytes, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, _properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is not None:
                return body, method.routing_key
            self.connection.process_data_events(0.05)
        raise AssertionError("nothing captured")

    def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        self.channel.basic_publish(exchange, routing_key, body)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def tap_factory():
    taps: list[Tap] = []

    def make(exchange: str, routing_key: str) -> Tap:
        taps.append(Tap(exchange, routing_key))
        return taps[-1]

    yield make
    for tap in taps:
        tap.close()


def recording(received: list):
    @spy_on
    def listening(chart, e):
        if e.signal == signals.mesh_hello:
            received.append(e.payload)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    return listening


@pytest.fixture
def charts():
    made: list[NetworkedActiveObject] = []

    def make(prefix: str, tx: str, rx: str, received: list | None = None,
             **options) -> NetworkedActiveObject:
        chart = NetworkedActiveObject(f"{prefix}_{uuid.uuid4().hex[:6]}", tx_routing_key=tx,
                                      rx_routing_key=rx, peers=[], **options)
        chart.start_at(recording(received if received is not None else []))
        assert chart.nets.consumer is not None and chart.nets.consumer.ready.wait(10)
        made.append(chart)
        return chart

    yield make
    for chart in made:
        chart.stop()


def _keys(prefix: str) -> tuple[str, str]:
    unique = f"{prefix}{uuid.uuid4().hex[:8]}"
    return f"{unique}.tx", f"{unique}.*"


def test_a_replay_to_a_running_receiver_is_refused_hours_later(mesh_env, charts,
                                                               tap_factory) -> None:
    tx, rx = _keys("replay")
    received: list = []
    receiver = charts("rx", "none.x", rx, received)
    sender = charts("tx", tx, "none.y")
    tap = tap_factory(MESH_EXCHANGE, tx)
    sender.transmit(Event(signal=signals.mesh_hello, payload="once"))
    wait_for(lambda: received == ["once"], 10)
    token, key = tap.captured()
    offset = [0.0]
    receiver.nets.set_clock(lambda: time.time() + offset[0])
    for hours in (0, 3, 5.9):  # a running receiver refuses it at any age
        offset[0] = hours * HOUR
        tap.publish(MESH_EXCHANGE, key, token)
        wait_for(lambda h=hours: receiver.nets.stats()["duplicates"] >= [0, 3, 5.9].index(h) + 1,
                 10)
    assert received == ["once"]
    # a receiver that restarted has no memory of the sender's epoch: the age limit
    # (6 h by default, of the time the message was first sent) bounds what it takes
    late: list = []
    restarted = charts("rx2", "none.z", rx, late)
    restarted.nets.set_clock(lambda: time.time() + 7 * HOUR)
    tap.publish(MESH_EXCHANGE, key, token)
    wait_for(lambda: restarted.nets.drops.counts["mesh.expired"] == 1, 10)
    assert late == [] and received == ["once"]


@pytest.mark.parametrize("skew", [+300.0, -300.0])
def test_a_sender_minutes_off_is_delivered_and_the_skew_logged_once(
        mesh_env, charts, caplog, skew: float) -> None:
    tx, rx = _keys("skew")
    received: list = []
    charts("rx", "none.x", rx, received)
    sender = charts("tx", tx, "none.y")
    sender.nets.set_clock(lambda: time.time() + skew)
    with caplog.at_level(logging.WARNING, logger="miros_rabbitmq"):
        for index in range(5):
            sender.transmit(Event(signal=signals.mesh_hello, payload=index))
        wait_for(lambda: received == list(range(5)), 10)
    lines = [r.getMessage() for r in caplog.records
             if "stamped" in r.getMessage() and sender.nets.identity in r.getMessage()]
    assert len(lines) == 1, lines
    measured = re.search(r"stamped ([+-][0-9.]+) s", lines[0])
    assert measured is not None and abs(float(measured.group(1)) - skew) < 5, lines[0]


def test_a_snoop_line_replayed_onto_the_mesh_is_refused(mesh_env, monkeypatch, charts,
                                                        tap_factory) -> None:
    # snoop keys default to the mesh key: only the binding to the network tells them apart
    monkeypatch.delenv("SNOOP_TRACE_ENCRYPTION_KEY")
    monkeypatch.delenv("SNOOP_SPY_ENCRYPTION_KEY")
    tx, rx = _keys("snoopreplay")
    received: list = []
    receiver = charts("rx", "none.x", "#", received)
    tap = tap_factory(SNOOP_TRACE_EXCHANGE, SNOOP_TRACE_ROUTING_KEY)
    traced = charts("traced", tx, "none.y")
    traced.enable_snoop_trace_no_color()
    traced.snoop_scribble("a line for the snoop network", enable_color=False)
    token, _key = tap.captured()
    for key in (SNOOP_TRACE_ROUTING_KEY, tx):
        tap.publish(MESH_EXCHANGE, key, token)
    wait_for(lambda: receiver.nets.drops.counts["mesh.wrong_network"] >= 2, 10)
    assert received == []


def test_a_mesh_token_under_another_routing_key_is_refused(mesh_env, charts,
                                                           tap_factory) -> None:
    tx_a, rx_a = _keys("routea")
    _tx_b, rx_b = _keys("routeb")
    for_a: list = []
    for_b: list = []
    charts("a", "none.x", rx_a, for_a)
    chart_b = charts("b", "none.y", rx_b, for_b)
    sender = charts("tx", tx_a, "none.z")
    tap = tap_factory(MESH_EXCHANGE, tx_a)
    sender.transmit(Event(signal=signals.mesh_hello, payload="for a"))
    wait_for(lambda: for_a == ["for a"], 10)
    token, _key = tap.captured()
    tap.publish(MESH_EXCHANGE, rx_b.replace("*", "stolen"), token)
    wait_for(lambda: chart_b.nets.drops.counts["mesh.wrong_route"] == 1, 10)
    assert for_b == [] and for_a == ["for a"]


def test_a_remote_stop_active_object_does_not_stop_a_chart(mesh_env, charts) -> None:
    tx, rx = _keys("reserved")
    received: list = []
    receiver = charts("rx", "none.x", rx, received)
    sender = charts("tx", tx, "none.y")
    for name in ("STOP_ACTIVE_OBJECT_SIGNAL", "STOP_FABRIC_SIGNAL", "ENTRY_SIGNAL",
                 "EXIT_SIGNAL", "INIT_SIGNAL", "SEARCH_FOR_SUPER_SIGNAL", "REFLECTION_SIGNAL"):
        sender.transmit(Event(signal=getattr(signals, name)))
    sender.transmit(Event(signal=signals.mesh_hello, payload="still here"))
    wait_for(lambda: received == ["still here"], 10)
    assert receiver.nets.drops.counts["mesh.reserved_signal"] == 7
    assert receiver.thread.is_alive()
    sender.transmit(Event(signal=signals.mesh_hello, payload="and later"))
    wait_for(lambda: received == ["still here", "and later"], 10)


def test_a_0_2_message_is_counted_and_logged_once_with_a_hint(mesh_env, charts, tap_factory,
                                                              caplog) -> None:
    tx, rx = _keys("old")
    receiver = charts("rx", "none.x", rx)
    old = Fernet(os.environ["MESH_ENCRYPTION_KEY"].encode()).encrypt(
        Event.dumps(Event(signal=signals.mesh_hello, payload={"a": 1})).encode())
    tap = tap_factory(MESH_EXCHANGE, "none.nothing")
    import miros_rabbitmq.mesh.nets as nets_module

    nets_module._v02_logged = False  # once per process: this test wants to see it
    with caplog.at_level(logging.WARNING, logger="miros_rabbitmq"):
        for _ in range(3):
            tap.publish(MESH_EXCHANGE, tx, old)
        wait_for(lambda: receiver.nets.drops.counts["mesh.v0.2"] == 3, 10)
    hints = [r for r in caplog.records if "upgrade both sides" in r.getMessage()]
    assert len(hints) == 1


def test_snoop_cli_needs_only_the_snoop_keys(mesh_env, tmp_path, charts) -> None:
    env = clean_env(RABBIT_USER=mesh_env["RABBIT_USER"],
                    RABBIT_PASSWORD=mesh_env["RABBIT_PASSWORD"],
                    RABBIT_PORT=mesh_env["RABBIT_PORT"],
                    SNOOP_TRACE_ENCRYPTION_KEY=mesh_env["SNOOP_TRACE_ENCRYPTION_KEY"],
                    SNOOP_SPY_ENCRYPTION_KEY=mesh_env["SNOOP_SPY_ENCRYPTION_KEY"])
    tx, _rx = _keys("snoopcli")
    traced = charts("traced", tx, "none.y")
    traced.enable_snoop_trace_no_color()
    done = threading.Event()

    def scribble() -> None:
        while not done.wait(0.1):
            traced.snoop_scribble("hello from a chart", enable_color=False)

    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        result = run_cli(["snoop", "--trace", "--no-color", "--grep", traced.name,
                          "--duration", "3"], str(tmp_path), env)
    finally:
        done.set()
        writer.join()
    assert result.returncode == 0, result.stderr
    assert "hello from a chart" in result.stdout
    only_trace = dict(env)
    del only_trace["SNOOP_SPY_ENCRYPTION_KEY"]
    refused = run_cli(["snoop", "--duration", "0"], str(tmp_path), only_trace)
    assert refused.returncode == 2 and "SNOOP_SPY_ENCRYPTION_KEY" in refused.stderr


# ------------------------------------------------------------------ batches
def test_a_batch_is_checked_token_by_token_and_delivered_in_order(mesh_env, charts,
                                                                  tap_factory) -> None:
    from miros_rabbitmq.wire.batch import join_tokens, split_tokens

    tx, rx = _keys("batch")
    sender = charts("tx", tx, "none.y")
    tap = tap_factory(MESH_EXCHANGE, tx)
    for word in ("one", "two", "three"):
        sender.transmit(Event(signal=signals.mesh_hello, payload=word))
    tokens: list[bytes] = []
    while len(tokens) < 3:
        body, key = tap.captured()
        tokens += split_tokens(body)
    one, two, three = tokens
    received: list = []
    receiver = charts("rx", "none.x", rx, received)  # after the capture: nothing came yet
    # garbage, a replay and the separator's empty token between good tokens: each is
    # judged on its own, and what is good arrives once, in order
    tap.publish(MESH_EXCHANGE, key, join_tokens([one, b"garbage", two, one, b"", three]))
    wait_for(lambda: received == ["one", "two", "three"], 10)
    wait_for(lambda: receiver.nets.drops.counts["mesh.garbage"] == 2, 10)
    assert receiver.nets.stats()["duplicates"] == 1


def test_a_stream_leaves_in_batches_and_a_full_chart_parks_mid_batch(mesh_env) -> None:
    """A receiver whose chart has no room stops inside a batch and goes on where it stopped."""
    tx, rx = _keys("park")
    gate = threading.Event()
    received: list[int] = []

    @spy_on
    def slow_start(chart, e):
        if e.signal == signals.mesh_hello:
            if not received:
                gate.wait(30)  # the chart's queue (500 events) fills meanwhile
            received.append(e.payload)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    receiver = NetworkedActiveObject(f"rx_{uuid.uuid4().hex[:6]}", tx_routing_key="none.x",
                                     rx_routing_key=rx, peers=[])
    sender = NetworkedActiveObject(f"tx_{uuid.uuid4().hex[:6]}", tx_routing_key=tx,
                                   rx_routing_key="none.y", peers=[])
    try:
        receiver.start_at(slow_start)
        sender.start_at(recording([]))
        assert receiver.nets.consumer is not None and receiver.nets.consumer.ready.wait(10)
        count = 3000
        for n in range(count):
            assert sender.transmit(Event(signal=signals.mesh_hello, payload=n))
        consumer = receiver.nets.consumer
        wait_for(lambda: consumer.waits > 0, 20)  # no room: a delivery is parked
        gate.set()
        wait_for(lambda: len(received) == count, 60)
        assert received == list(range(count))  # once each, in order
        link = sender.nets.local_link
        assert link is not None
        stats = link.stats
        assert stats.published >= count and stats.publishes < stats.published / 2, stats
    finally:
        gate.set()
        sender.stop()
        receiver.stop()
