"""RabbitConsumerScoutChart and the scout challenge against a real RabbitMQ.

Every address probed here is on loopback or inside a network namespace the
test builds itself.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import miros.activeobject
import miros.hsm
import pytest
from cryptography.fernet import Fernet, MultiFernet
from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq.config import load_settings
from miros_rabbitmq.discovery.rabbit_consumer_scout_chart import RabbitConsumerScoutChart
from miros_rabbitmq.errors import DecodeError
from miros_rabbitmq.mesh.challenge import (
    SCOUT_EXCHANGE,
    Challenge,
    ScoutCredentials,
    answer,
)
from miros_rabbitmq.mesh.nets import MESH_EXCHANGE, MirosNets
from miros_rabbitmq.payloads import AMQPConsumerCheckPayload
from miros_rabbitmq.testing import closed_ports, wait_for
from miros_rabbitmq.transport import PROBER
from miros_rabbitmq.wire.codec import JSON, Codec, Envelope
from miros_rabbitmq.wire.names import ProbeOutcome

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 0.5  # the scout's default
# Bounds here are behaviour, not speed (speed: benchmarks/scout.py, docs/scout.md):
# "answered before the timeout" is checked with a LONG timeout and a bound of half
# of it; "given up at the timeout" with a lower bound and generous slack.
LONG = 10.0
SLACK = 5.0

pytestmark = pytest.mark.broker


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def port(mesh_env: dict[str, str]) -> int:
    """The local broker's port (the scouts read everything else from the environment)."""
    return int(mesh_env["RABBIT_PORT"])


def start_node(key: str | None = None) -> MirosNets:
    """A node on the local broker: our key from the environment, or ``key``."""
    settings = load_settings(mesh_encryption_key=key, rabbit_host="127.0.0.1")
    nets = MirosNets(name=f"scouted_{uuid.uuid4().hex[:6]}", settings=settings,
                     tx_routing_key="scout.test", rx_routing_key="#.test",
                     deliver=lambda envelope: True)
    assert nets.start(timeout=10), "the local broker did not answer"
    wait_for(lambda: all(c.ready.is_set() for c in nets._local_consumers), 5,
             message="the node's scout responder")
    return nets


@pytest.fixture
def node(mesh_env: dict[str, str]) -> Iterator[MirosNets]:
    """A running node on the local broker holding the scouts' mesh key."""
    nets = start_node()
    yield nets
    nets.stop()


@pytest.fixture
def stranger(mesh_env: dict[str, str]) -> Iterator[MirosNets]:
    """A running node on the local broker holding another mesh key."""
    nets = start_node(Fernet.generate_key().decode())
    yield nets
    nets.stop()


class Answers:
    """A chart that records every AMQP_CONSUMER_CHECK, with its arrival time."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[float, AMQPConsumerCheckPayload]] = queue.Queue()
        self.pending: list[tuple[float, AMQPConsumerCheckPayload]] = []
        answers = self

        @spy_on
        def listening(chart, e):
            if e.signal == signals.AMQP_CONSUMER_CHECK:
                answers.queue.put((time.monotonic(), e.payload))
                return return_status.HANDLED
            chart.temp.fun = chart.top
            return return_status.SUPER

        self.chart = ActiveObject(f"answers_{uuid.uuid4().hex[:6]}")
        self.chart.subscribe(Event(signal=signals.AMQP_CONSUMER_CHECK))
        self.chart.start_at(listening)

    def get(self, ip_address: str, timeout: float = 5.0) -> tuple[float, AMQPConsumerCheckPayload]:
        """The next answer about ``ip_address`` (answers about others are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.pending:
                if item[1].ip_address == ip_address:
                    self.pending.remove(item)
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no AMQP_CONSUMER_CHECK about {ip_address}")
            try:
                self.pending.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                pass

    def none_about(self, ip_address: str, within: float) -> bool:
        try:
            self.get(ip_address, timeout=within)
        except AssertionError:
            return True
        return False


@pytest.fixture
def answers() -> Iterator[Answers]:
    recorder = Answers()
    yield recorder
    recorder.chart.stop()


@pytest.fixture
def scouts() -> Iterator[list[RabbitConsumerScoutChart]]:
    """Scouts made by a test; stopped, and their connections released, after it."""
    made: list[RabbitConsumerScoutChart] = []
    yield made
    for scout in made:
        scout.stop()
    assert PROBER.wait_idle(5), "a probe connection outlived its scout"


def scout(made: list[RabbitConsumerScoutChart], *args, **kwargs) -> RabbitConsumerScoutChart:
    chart = RabbitConsumerScoutChart(*args, **kwargs)
    made.append(chart)
    return chart


# ------------------------------------------------------------------ hits


@pytest.mark.parametrize("template", ["127.0.0.1", "127.0.0.1:{port}", "localhost"])
def test_hit_on_a_live_node_with_our_key(node, port, answers, scouts, template):
    address = template.format(port=port)
    started = time.monotonic()
    chart = scout(scouts, address, routing_key="heya.man", exchange="miros.mesh.exchange",
                  timeout=LONG)
    arrived, payload = answers.get(address)
    assert payload == AMQPConsumerCheckPayload(address, True, "heya.man", "miros.mesh.exchange")
    ip, result, routing_key, exchange = payload  # still reads as the seed's 4-tuple
    assert (ip, result, routing_key, exchange) == (address, True, "heya.man", MESH_EXCHANGE)
    # the answer comes when the node answers, not after the timeout
    assert arrived - started < LONG / 2, f"hit took {arrived - started:.3f} s"
    assert chart.last_reason == "answered"
    # an answered scout lets its thread and its connection go
    assert wait_for(lambda: chart.resting and not chart.thread.is_alive())
    assert PROBER.wait_idle(5)


def test_a_node_answers_only_holders_of_its_key(mesh_env):
    """The protocol itself: an answer authenticates, matches the nonce and the
    probed address, and is not the challenge reflected back."""
    keys = MultiFernet([Fernet(k.reveal()) for k in load_settings().mesh_keys])
    challenge = Challenge(keys, routing_key="heya.man", exchange_name=MESH_EXCHANGE)
    token = challenge.token("127.0.0.1", 5672)
    assert not challenge.accept(token)  # a reflection proves nothing
    reply = answer(keys, token, identity="n1", origin="127.0.0.1:5672",
                   addresses=(), port=5672)
    assert challenge.accept(reply) and challenge.responder == "n1"
    other = Challenge(keys, routing_key="heya.man", exchange_name=MESH_EXCHANGE)
    other.token("127.0.0.1", 5672)
    assert not other.accept(reply)  # the answer to another nonce
    stranger = MultiFernet([Fernet(Fernet.generate_key())])
    with pytest.raises(DecodeError):
        answer(stranger, token, identity="n2", origin="")
    assert not challenge.accept(stranger.encrypt(b"MRSC1!{}"))
    assert not challenge.accept(b"garbage")
    event = Codec(load_settings().mesh_keys, serializer=JSON).encode(
        Envelope("some_event", {"nonce": "0" * 32}, "x", 0))
    with pytest.raises(DecodeError):
        answer(keys, event, identity="n1", origin="")  # only challenges are answered
    assert SCOUT_EXCHANGE != MESH_EXCHANGE


# ------------------------------------------------------------------ misses


def test_miss_when_the_node_holds_another_key(stranger, answers, scouts):
    started = time.monotonic()
    scout(scouts, "127.0.0.1", routing_key="heya.man", exchange="miros.mesh.exchange")
    arrived, payload = answers.get("127.0.0.1")
    assert payload.result is False
    assert TIMEOUT * 0.9 <= arrived - started <= TIMEOUT + SLACK  # given up at the timeout
    # the stranger could not read the challenge: counted as a drop, no crash
    assert wait_for(lambda: stranger.drops.counts["scout.bad_key"] >= 1)


@pytest.fixture
def empty_vhost(extra_rabbitmq_node) -> Iterator[str]:
    """A virtual host of its own on the extra broker: no node of any other test runs there."""
    name = f"mrscout-empty-{uuid.uuid4().hex[:8]}"
    node = extra_rabbitmq_node
    node.ctl("add_vhost", name)
    try:
        node.ctl("set_permissions", "-p", name, node.username, ".*", ".*", ".*")
        yield name
    finally:
        node.ctl("delete_vhost", name, check=False)


def test_miss_when_no_node_runs_on_the_broker(mesh_env, extra_rabbitmq_node, empty_vhost,
                                              answers, scouts):
    """A broker ("another machine") that takes our credentials but runs no node:
    the broker itself says nobody is there, long before the timeout."""
    address = f"amqp://127.0.0.1:{extra_rabbitmq_node.port}/{empty_vhost}"
    started = time.monotonic()
    chart = scout(scouts, address, routing_key="heya.man", exchange="miros.mesh.exchange",
                  timeout=LONG)
    arrived, payload = answers.get(address)
    assert payload.result is False
    assert arrived - started < LONG / 2, chart.last_reason
    assert chart.last_reason != "timeout"


def test_hit_on_a_node_of_another_broker(mesh_env, extra_rabbitmq_node, answers, scouts):
    far = MirosNets(name=f"far_{uuid.uuid4().hex[:6]}",
                    settings=load_settings(rabbit_port=extra_rabbitmq_node.port),
                    tx_routing_key="far.test", rx_routing_key="#.test",
                    deliver=lambda envelope: True)
    try:
        assert far.start(timeout=10)
        wait_for(lambda: all(c.ready.is_set() for c in far._local_consumers), 5)
        address = f"127.0.0.1:{extra_rabbitmq_node.port}"
        scout(scouts, address, routing_key="heya.man", exchange="miros.mesh.exchange")
        _, payload = answers.get(address)
        assert payload == AMQPConsumerCheckPayload(address, True, "heya.man", MESH_EXCHANGE)
    finally:
        far.stop()


def test_miss_when_the_broker_refuses_the_scout_account(node, answers, scouts, monkeypatch):
    """Scouts log in with the scout account, never RABBIT_PASSWORD: a broker
    that refuses the scout account is a miss that says how to create it."""
    monkeypatch.setenv("SCOUT_USER", "nobody_here")
    monkeypatch.setenv("SCOUT_PASSWORD", "not-the-password")
    started = time.monotonic()
    chart = scout(scouts, "127.0.0.1", routing_key="heya.man", exchange="miros.mesh.exchange")
    arrived, payload = answers.get("127.0.0.1")
    assert payload.result is False
    assert chart.last_outcome is ProbeOutcome.SCOUT_REFUSED
    assert "refused the scout account 'nobody_here'" in chart.last_reason
    assert "rabbitmqctl add_user nobody_here" in chart.last_reason
    assert "not-the-password" not in chart.last_reason
    assert arrived - started <= TIMEOUT + SLACK


def test_a_wrong_rabbit_password_does_not_matter_to_a_scout(node, answers, scouts, monkeypatch):
    monkeypatch.setenv("RABBIT_PASSWORD", "not-the-password")
    scout(scouts, "127.0.0.1", routing_key="heya.man", exchange="miros.mesh.exchange")
    _, payload = answers.get("127.0.0.1")
    assert payload.result is True  # the scout account proved the node


def test_miss_on_a_closed_port_is_fast(mesh_env, answers, scouts):
    (port,) = closed_ports(1)
    address = f"127.0.0.1:{port}"
    started = time.monotonic()
    chart = scout(scouts, address, routing_key="heya.man", exchange_name="miros.mesh.exchange",
                  timeout=LONG)
    arrived, payload = answers.get(address)
    assert payload == AMQPConsumerCheckPayload(address, False, "heya.man", MESH_EXCHANGE)
    assert arrived - started < LONG / 2  # refused: no wait for the timeout
    assert "no TCP connection" in chart.last_reason
    # the scout's faster __init__ leaves miros as it found it
    assert miros.activeobject.namedtuple is collections.namedtuple
    assert miros.hsm.namedtuple is collections.namedtuple


NETNS_SCOUT = r"""
import json, queue, sys, time
from miros import ActiveObject, Event, return_status, signals, spy_on
from miros_rabbitmq.discovery.rabbit_consumer_scout_chart import RabbitConsumerScoutChart

answers = queue.Queue()

@spy_on
def listening(chart, e):
    if e.signal == signals.AMQP_CONSUMER_CHECK:
        answers.put((time.monotonic(), e.payload))
        return return_status.HANDLED
    chart.temp.fun = chart.top
    return return_status.SUPER

recorder = ActiveObject("answers")
recorder.subscribe(Event(signal=signals.AMQP_CONSUMER_CHECK))
recorder.start_at(listening)
time.sleep(0.05)
for address in sys.argv[1:]:
    started = time.monotonic()
    scout = RabbitConsumerScoutChart(address, "heya.man", "miros.mesh.exchange")
    arrived, payload = answers.get(timeout=5)
    print(json.dumps({"address": payload.ip_address, "result": payload.result,
                      "elapsed": arrived - started, "reason": scout.last_reason}), flush=True)
    scout.stop()
"""


@pytest.fixture
def dark_namespace() -> Iterator[str]:
    """A network namespace of our own with two kinds of dark address.

    10.250.77.5: on a veth subnet where nobody answers ARP, so packets to it
    vanish (a host that drops them); 10.250.78.9: a blackhole route.
    """
    from prereq import need_netns

    need_netns()
    name = f"mrscout{os.getpid() % 100000}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as error:
        from prereq import missing

        missing(f"a network namespace ({error.stderr.decode().strip()})")
    try:
        for command in (
            ["link", "set", "lo", "up"],
            ["link", "add", "mrs0", "type", "veth", "peer", "name", "mrs1"],
            ["link", "set", "mrs0", "up"],
            ["link", "set", "mrs1", "up"],
            ["addr", "add", "10.250.77.1/24", "dev", "mrs0"],
            ["route", "add", "blackhole", "10.250.78.9/32"],
        ):
            ip("netns", "exec", name, "ip", *command)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.mark.netns
def test_miss_on_unroutable_addresses_within_the_timeout(mesh_env, dark_namespace):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        ["ip", "netns", "exec", dark_namespace, sys.executable, "-c", NETNS_SCOUT,
         "10.250.77.5", "10.250.78.9:5672"],
        capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    results = {r["address"]: r for r in map(json.loads, run.stdout.splitlines())}
    dropped, blackholed = results["10.250.77.5"], results["10.250.78.9:5672"]
    assert dropped["result"] is False and blackholed["result"] is False
    # a dead address is given up at the timeout, never later
    assert TIMEOUT * 0.9 <= dropped["elapsed"] <= TIMEOUT + SLACK, dropped
    assert dropped["reason"] == "timeout"
    assert blackholed["elapsed"] <= TIMEOUT + SLACK, blackholed


# ------------------------------------------------------------------ REFACTOR_SEARCH


def test_refactor_search_runs_a_new_search(node, answers, scouts):
    (port,) = closed_ports(1)
    first = f"127.0.0.1:{port}"
    chart = scout(scouts, first, routing_key="heya.man", exchange="miros.mesh.exchange")
    _, payload = answers.get(first)
    assert payload == AMQPConsumerCheckPayload(first, False, "heya.man", MESH_EXCHANGE)
    assert wait_for(lambda: chart.resting and not chart.thread.is_alive())

    chart.post_fifo(Event(signal=signals.REFACTOR_SEARCH, payload={
        "ip_address": "127.0.0.1", "routing_key": "archer.bob",
        "exchange_name": "miros.mesh.exchange"}))
    _, payload = answers.get("127.0.0.1")
    assert payload == AMQPConsumerCheckPayload("127.0.0.1", True, "archer.bob", MESH_EXCHANGE)
    assert chart.name == "127.0.0.1"
    trace = chart.trace()
    assert "e->REFACTOR_SEARCH() no_amqp_consumer_server_found->producer_thread_engaged" in trace
    assert trace.rstrip().endswith("producer_post_and_wait->amqp_consumer_server_found")


def test_refactor_search_abandons_the_search_under_way(node, stranger, answers, scouts):
    """A stranger never answers, so the first search would last its whole timeout;
    REFACTOR_SEARCH replaces it and only the new search is answered."""
    (port,) = closed_ports(1)
    chart = scout(scouts, "localhost", routing_key="heya.man", exchange=MESH_EXCHANGE,
                  timeout=1.0)
    assert wait_for(lambda: chart.search_number == 1)
    chart.post_fifo(Event(signal=signals.REFACTOR_SEARCH, payload={
        "ip_address": f"127.0.0.1:{port}", "routing_key": "b.c", "exchange_name": "x.y"}))
    _, payload = answers.get(f"127.0.0.1:{port}")
    assert payload == AMQPConsumerCheckPayload(f"127.0.0.1:{port}", False, "b.c", "x.y")
    assert answers.none_about("localhost", within=1.2)  # the abandoned search stays silent


# ------------------------------------------------------------------ trace


TRACE_LINE = r"\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{6}}\] \[{name}\] e->{signal}\(\) {source}->{target}"


def test_live_trace_reads_like_the_seed(mesh_env, answers, scouts, capsys):
    (port,) = closed_ports(1)
    address = f"127.0.0.1:{port}"
    scout(scouts, address, routing_key="heya.man", exchange="miros.mesh.exchange",
          live_trace=True)
    answers.get(address)
    lines: list[str] = []

    def four_lines() -> bool:
        lines.extend(line for line in capsys.readouterr().out.splitlines() if line.strip())
        return len(lines) >= 4

    assert wait_for(four_lines), lines
    expected = [
        ("start_at", "top", "producer_thread_engaged"),
        ("try_to_connect_to_consumer", "producer_thread_engaged", "producer_post_and_wait"),
        ("consumer_test_complete", "producer_post_and_wait", "no_amqp_consumer_server_found"),
    ]
    for line, (signal, source, target) in zip(lines, expected, strict=False):
        pattern = TRACE_LINE.format(name=re.escape(address), signal=signal, source=source,
                                    target=target)
        assert re.fullmatch(pattern, line), line
    assert lines[3] == str((address, False, "heya.man", "miros.mesh.exchange"))
    assert len(lines) == 4, lines


# ------------------------------------------------------------------ many, stop


def test_scouts_in_parallel_do_not_interfere(node, port, answers, scouts):
    expected = {}
    for closed, live in zip(closed_ports(3), ["127.0.0.1", "localhost", f"127.0.0.1:{port}"],
                          strict=True):
        expected[f"127.0.0.1:{closed}"] = False
        expected[live] = True
    for number, address in enumerate(expected):
        scout(scouts, address, routing_key=f"key.{number}", exchange=MESH_EXCHANGE)
    for number, (address, result) in enumerate(expected.items()):
        _, payload = answers.get(address)
        assert payload == AMQPConsumerCheckPayload(address, result, f"key.{number}",
                                                   MESH_EXCHANGE)


def test_250_scouts_against_closed_ports_all_answer_and_clean_up(mesh_env, answers, scouts):
    credentials = ScoutCredentials()  # the one factory object a LAN recce shares
    addresses = [f"127.0.0.1:{port}" for port in closed_ports(250)]
    threads_before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    started = time.monotonic()
    for address in addresses:
        scout(scouts, address, "heya.man", MESH_EXCHANGE, credentials=credentials)
    results = [answers.get(address, timeout=2 * TIMEOUT + 5)[1] for address in addresses]
    elapsed = time.monotonic() - started
    assert not any(payload.result for payload in results)
    # a bound on hanging, not a speed limit (docs/scout.md: ~1 s under load)
    assert elapsed <= 30.0, f"250 scouts took {elapsed:.3f} s"
    # answered scouts hold no thread and no socket
    def alive() -> list[str]:
        return [s.name for s in scouts if s.thread.is_alive()]

    assert wait_for(lambda: not alive(), 5), alive()[:5]
    assert PROBER.wait_idle(5)
    assert threading.active_count() <= threads_before
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_stop_cancels_a_search_and_releases_its_connection(stranger, answers, scouts):
    chart = scout(scouts, "127.0.0.1", routing_key="heya.man", exchange=MESH_EXCHANGE,
                  timeout=30.0)
    assert wait_for(lambda: PROBER.active == 1 and stranger.drops.counts["scout.bad_key"] >= 1)
    started = time.monotonic()
    chart.stop()
    assert time.monotonic() - started < 10.0  # cancelled, not left to its 30 s timeout
    assert not chart.thread.is_alive()
    assert PROBER.wait_idle(5)
    assert answers.none_about("127.0.0.1", within=0.3)


def test_bad_refactor_payload_is_ignored(mesh_env, answers, scouts):
    (port,) = closed_ports(1)
    address = f"127.0.0.1:{port}"
    chart = scout(scouts, address, routing_key="heya.man")
    answers.get(address)
    chart.post_fifo(Event(signal=signals.REFACTOR_SEARCH, payload="not a dict"))
    assert wait_for(lambda: chart.resting and not chart.thread.is_alive())
    assert chart.answer == AMQPConsumerCheckPayload(address, False, "heya.man", MESH_EXCHANGE)
