"""A host that takes the TCP connection and never speaks AMQP ("silent host").

A probe against it reaches pika's AMQP handshake and waits. Its deadline, or
``cancel()`` (``stop()`` of a node whose discovery scout is waiting there),
closes a pika connection that is still opening: pika 1.3/1.4 used to fail an
assertion inside the prober's I/O loop there, the loop lost its stop request
and the prober thread ran on (transport/_pika_glue.py, AbortableConnection).

Every address here is a loopback listener the test opens itself.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from miros_rabbitmq.config import Secret
from miros_rabbitmq.transport import PROBER, BrokerAddress, ProbeResult, probe
from miros_rabbitmq.wire.names import ProbeOutcome

HERE = Path(__file__).parent
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"  # what pika sends first, then waits for Connection.Start
SILENT_SCOUT = 4.0  # scout timeout against a host that never answers

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------ a silent listener


class SilentHost:
    """A loopback listener that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def wait_for_amqp_header(self, timeout: float) -> bool:
        """Accept connections until one sends the AMQP protocol header (the handshake
        is under way); the probe's bare TCP knock comes first and sends nothing."""
        deadline = time.monotonic() + timeout
        pending: list[socket.socket] = []
        data: dict[socket.socket, bytes] = {}
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.listener, *pending], [], [], left)
            for sock in readable:
                if sock is self.listener:
                    conn, _ = self.listener.accept()
                    self.accepted.append(conn)
                    pending.append(conn)
                    continue
                chunk = sock.recv(64)
                if not chunk:  # the knock, or a connection already dropped
                    pending.remove(sock)
                    continue
                data[sock] = data.get(sock, b"") + chunk
                if data[sock].startswith(AMQP_HEADER):
                    return True
        return False

    def close(self) -> None:
        for sock in self.accepted:
            sock.close()
        self.listener.close()


@pytest.fixture
def silent() -> Iterator[SilentHost]:
    host = SilentHost()
    try:
        yield host
    finally:
        host.close()


def _address(port: int) -> BrokerAddress:
    return BrokerAddress(host="127.0.0.1", port=port, vhost="/", user="guest",
                         password=Secret("guest"))


def _assert_quiet(records: list[logging.LogRecord]) -> None:
    """Nothing of ours at ERROR, none of the loop failure's lines, no other warning."""
    ours = [r for r in records if r.name.startswith("miros_rabbitmq") and r.levelno >= logging.ERROR]
    assert not ours, [r.getMessage() for r in ours]
    failed = [r for r in records
              if (r.name.startswith("pika.adapters.utils.io_services_utils")
                  and r.levelno >= logging.ERROR)  # "connection_lost(None) failed"
              or "Expected self conn" in r.getMessage()
              or (r.exc_info and isinstance(r.exc_info[1], AssertionError))]
    assert not failed, [r.getMessage() for r in failed]
    # what is left at WARNING and above: pika's one line about the abort, per probe
    loud = [r for r in records if r.levelno >= logging.WARNING
            and not (r.name == "pika.adapters.utils.connection_workflow"
                     and "ConnectionOpenAborted" in r.getMessage())]
    assert not loud, [(r.name, r.getMessage()) for r in loud]


# ------------------------------------------------------------------ the probe itself


def test_probe_of_a_silent_host_times_out_at_its_deadline(silent, caplog) -> None:
    caplog.set_level(logging.INFO)
    results: list[ProbeResult] = []
    done = threading.Event()

    def on_done(result: ProbeResult) -> None:
        results.append(result)
        done.set()

    timeout = 1.5
    began = time.monotonic()
    handle = probe(_address(silent.port), exchange="silent", routing_key="silent.test",
                   body=b"hello", accept=lambda _body: True, timeout=timeout, on_done=on_done)
    assert silent.wait_for_amqp_header(timeout)  # the probe is in the AMQP handshake
    assert done.wait(timeout + 5), "no verdict after the deadline"
    assert results[0].outcome is ProbeOutcome.NO_ANSWER, results
    assert not results[0].ok
    assert timeout - 0.05 <= results[0].elapsed < timeout + 2.0, results  # at its deadline
    assert handle.closed.wait(3), "the connection was not released"
    assert PROBER.wait_idle(5), "the prober thread did not end"
    assert time.monotonic() - began < timeout + 6
    _assert_quiet(caplog.records)


def test_a_cancelled_probe_of_a_silent_host_ends_at_once(silent, caplog) -> None:
    caplog.set_level(logging.INFO)
    called: list[ProbeResult] = []
    handle = probe(_address(silent.port), exchange="silent", routing_key="silent.test",
                   body=b"hello", accept=lambda _body: True, timeout=60.0,
                   on_done=called.append)
    assert silent.wait_for_amqp_header(10)
    cancelled = time.monotonic()
    handle.cancel()
    assert handle.closed.wait(3), "cancel() left the connection open"
    assert PROBER.wait_idle(3), "cancel() left the prober thread running"
    assert time.monotonic() - cancelled < 3  # not the 60 s timeout, nor a close grace
    assert handle.result is not None and handle.result.outcome is ProbeOutcome.CANCELLED
    assert called == []  # a cancelled probe calls nobody back
    _assert_quiet(caplog.records)


def test_the_prober_serves_probes_again_after_a_silent_host(silent) -> None:
    for _ in range(2):  # the second one needs a new prober thread, which must work
        handle = probe(_address(silent.port), exchange="silent", routing_key="silent.test",
                       body=b"hello", accept=lambda _body: True, timeout=30.0)
        assert silent.wait_for_amqp_header(10)
        handle.cancel()
        assert PROBER.wait_idle(3)
        assert handle.result is not None and handle.result.outcome is ProbeOutcome.CANCELLED


# ------------------------------------------------------------------ a node's discovery scout


SILENT_HOST_NODE = r"""
import json, os, socket, sys, time
from miros import return_status
from miros_rabbitmq import NetworkedActiveObject
from miros_rabbitmq.discovery.discovery import DiscoveryConfig
from miros_rabbitmq.transport import PROBER

timeout = float(sys.argv[1])
silent = socket.socket()  # takes the TCP connection, never says a word
silent.bind(("127.0.0.1", 0))
silent.listen(16)
with open(".miros_rabbitmq_hosts.json", "w") as f:
    json.dump({"hosts": ["127.0.0.1:%d" % silent.getsockname()[1]]}, f)

def idle(chart, e):
    chart.temp.fun = chart.top
    return return_status.SUPER

chart = NetworkedActiveObject("silent_stop", tx_routing_key="s.tx", rx_routing_key="s.rx",
                              instrumented=False,
                              discovery=DiscoveryConfig(scout_timeout=timeout))
began = time.monotonic()
chart.start_at(idle)
result = {"start": time.monotonic() - began}
deadline = time.monotonic() + 5
while PROBER.active < 1 and time.monotonic() < deadline:
    time.sleep(0.01)
result["scouting"] = PROBER.active
chart.stop()
stopped = time.monotonic()
result["idle_at_once"] = PROBER.wait_idle(2)
result["idle_after_timeout"] = PROBER.wait_idle(timeout + 5)
print(json.dumps(result), flush=True)
os._exit(0)
"""


@pytest.mark.broker
def test_start_does_not_wait_for_a_silent_host_and_stop_ends_its_scout(mesh_env) -> None:
    # in a child process: a stuck probe there cannot disturb other tests
    done = subprocess.run([sys.executable, "-c", SILENT_HOST_NODE, str(SILENT_SCOUT)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["scouting"] >= 1, result
    assert result["start"] < SILENT_SCOUT / 2, result  # start_at() did not wait for it
    assert result["idle_at_once"], result  # stop() ended the scout
    assert "Expected self conn" not in done.stderr, done.stderr[-3000:]
    assert "prober I/O loop failed" not in done.stderr, done.stderr[-3000:]
