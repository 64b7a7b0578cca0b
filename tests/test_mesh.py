"""The mesh against a real RabbitMQ: processes, routing, payloads, keys, config."""

from __future__ import annotations

import json
import logging
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

import pika
import pytest
from cryptography.fernet import Fernet
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import (
    ConfigurationError,
    EnvContractBroken,
    NetworkedActiveObject,
    NetworkedFactory,
    SerializationError,
    load_settings,
)
from miros_rabbitmq.config import Secret
from miros_rabbitmq.mesh.nets import MESH_EXCHANGE
from miros_rabbitmq.testing import wait_for
from miros_rabbitmq.transport import BrokerAddress

HERE = Path(__file__).parent
NODE = HERE / "mesh_node.py"


# ------------------------------------------------------------------ helpers


class Recorder:
    """Collects (chart name, signal name, payload) of what charts receive."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, str, object]] = queue.Queue()
        self.seen: list[tuple[str, str, object]] = []

    def state(self):
        recorder = self

        @spy_on
        def listening(chart, e):
            if e.signal_name.startswith("mesh_"):
                recorder.events.put((chart.name, e.signal_name, e.payload))
                return return_status.HANDLED
            chart.temp.fun = chart.top
            return return_status.SUPER

        return listening

    def drain(self, quiet: float = 0.3) -> list[tuple[str, str, object]]:
        """Everything received until nothing more arrives for ``quiet`` seconds."""
        while True:
            try:
                self.seen.append(self.events.get(timeout=quiet))
            except queue.Empty:
                return list(self.seen)

    def wait_count(self, count: int, timeout: float = 5.0) -> list[tuple[str, str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} events, got {self.seen}")
            try:
                self.seen.append(self.events.get(timeout=remaining))
            except queue.Empty:
                continue
        return list(self.seen)


@pytest.fixture
def charts(mesh_env) -> Iterator[tuple[Recorder, list]]:
    """Start in-process charts that record what they receive; stop them all after."""
    recorder = Recorder()
    started: list = []

    def make(name: str, tx: str, rx: str, **kwargs):
        chart = NetworkedActiveObject(f"{name}_{uuid.uuid4().hex[:6]}", tx_routing_key=tx,
                                      rx_routing_key=rx, peers=kwargs.pop("peers", []),
                                      lan_discovery=False, **kwargs)
        chart.short = name
        chart.start_at(recorder.state())
        started.append(chart)
        return chart

    yield recorder, make  # type: ignore[misc]
    for chart in started:
        chart.stop()


class NodeProcess:
    """tests/mesh_node.py in its own OS process."""

    def __init__(self, name: str, tx: str, rx: str, *, peers: tuple[str, ...] = (),
                 factory: bool = False, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, str(NODE), name, tx, rx]
        for peer in peers:
            argv += ["--peer", peer]
        if factory:
            argv.append("--factory")
        self.name = name
        self.received: queue.Queue[dict] = queue.Queue()
        self.ready = threading.Event()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(20):
            self.close()
            raise AssertionError(f"{name} did not start: {self.proc.stderr.read()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.ready.set()
            elif line.startswith("RECV "):
                self.received.put(json.loads(line[5:]))

    def send(self, signal: str, payload: object = None, *, pose: list[float] | None = None) -> None:
        command: dict[str, object] = {"signal": signal, "payload": payload}
        if pose is not None:
            command["pose"] = pose
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def expect(self, timeout: float = 5.0) -> dict:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name} received nothing within {timeout} s") from None

    def nothing_more(self, quiet: float = 0.5) -> None:
        try:
            extra = self.received.get(timeout=quiet)
        except queue.Empty:
            return
        raise AssertionError(f"{self.name} received an unexpected event: {extra}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("STOP\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def nodes(mesh_env) -> Iterator:
    started: list[NodeProcess] = []

    def make(*args, **kwargs) -> NodeProcess:
        node = NodeProcess(*args, **kwargs)
        started.append(node)
        return node

    yield make
    for node in started:
        node.close()


# ------------------------------------------------------------------ processes


def test_two_processes_exchange_events_both_ways(nodes) -> None:
    alice = nodes(f"alice_{uuid.uuid4().hex[:4]}", "alice.man", "#.man")
    bob = nodes(f"bob_{uuid.uuid4().hex[:4]}", "bob.man", "#.man", factory=True)

    alice.send("mesh_hello", {"from": "alice", "n": 1})
    got = bob.expect()
    assert got["signal"] == "mesh_hello" and got["payload"] == {"from": "alice", "n": 1}

    bob.send("mesh_reply", ["from bob", 2])
    got = alice.expect()
    assert got["signal"] == "mesh_reply" and got["payload"] == ["from bob", 2]

    # a custom class instance crosses the process boundary intact
    alice.send("mesh_pose", pose=[1.5, -2.0])
    assert bob.expect()["payload"] == {"RobotPose": [1.5, -2.0, ["custom"]]}

    # neither chart heard itself, though its tx key matches its own rx pattern
    alice.nothing_more()
    bob.nothing_more(quiet=0.1)


# ------------------------------------------------------------------ routing


def test_topic_patterns_include_and_exclude(charts) -> None:
    recorder, make = charts
    sender = make("sender", "heya.man", "nothing.here")
    make("hash", "x", "#.man")
    make("star", "x", "*.man")
    make("exact", "x", "heya.man")
    make("other", "x", "other.man")
    make("woman", "x", "#.woman")

    sender.transmit(Event(signal=signals.mesh_hello, payload=1))
    got = recorder.wait_count(3)
    assert sorted(name.split("_")[0] for name, _, _ in got) == ["exact", "hash", "star"]

    deep = make("deep", "a.b.man", "nothing.either")
    deep.transmit(Event(signal=signals.mesh_hello, payload=2))
    got = recorder.wait_count(4)
    assert got[-1][0].startswith("hash") and got[-1][2] == 2
    assert recorder.drain() == got  # '*.man' and 'heya.man' did not take a.b.man


def test_chart_never_receives_its_own_transmissions(charts) -> None:
    recorder, make = charts
    talker = make("talker", "room.all", "room.*")
    listener = make("listener", "room.other", "room.*")
    talker.transmit(Event(signal=signals.mesh_hello, payload="hi"))
    listener.transmit(Event(signal=signals.mesh_reply, payload="hello"))
    got = recorder.wait_count(2)
    assert sorted((name.split("_")[0], signal) for name, signal, _ in got) == [
        ("listener", "mesh_hello"), ("talker", "mesh_reply")]
    assert recorder.drain() == got
    assert talker.nets.counts["mesh.own"] == 1


def test_payloads_round_trip_in_process(charts) -> None:
    from payload_types import RobotPose

    recorder, make = charts
    sender = make("sender", "p.tx", "p.none")
    make("receiver", "p.none", "p.tx")
    pose = RobotPose(3.0, 4.0, ["a", "b"])
    nested = Event(signal=signals.mesh_inner, payload={"k": [1, 2]})
    sender.transmit(Event(signal=signals.mesh_pose, payload={"pose": pose, "event": nested}))
    (_, signal, payload), = recorder.wait_count(1)
    assert signal == "mesh_pose"
    assert payload["pose"] == pose
    assert payload["event"].signal_name == "mesh_inner" and payload["event"].payload == {"k": [1, 2]}


def test_unpicklable_payload_is_a_clear_error(charts) -> None:
    _, make = charts
    sender = make("sender", "p.tx", "p.none")
    with pytest.raises(SerializationError, match="mesh_bad"):
        sender.transmit(Event(signal=signals.mesh_bad, payload=threading.Lock()))


def test_factory_chart_is_a_real_miros_factory(charts, mesh_env) -> None:
    recorder, make = charts
    received: queue.Queue = queue.Queue()
    factory = NetworkedFactory(f"factory_{uuid.uuid4().hex[:6]}", tx_routing_key="f.tx",
                               rx_routing_key="f.rx", peers=[], lan_discovery=False)

    def on_hello(chart, e):
        received.put(e.payload)
        return return_status.HANDLED

    state = factory.create(state="idle").catch(signal=signals.mesh_hello, handler=on_hello).to_method()
    factory.nest(state, parent=None)
    factory.start_at(state)
    try:
        sender = make("sender", "f.rx", "none")
        sender.transmit(Event(signal=signals.mesh_hello, payload="to the factory"))
        assert received.get(timeout=5) == "to the factory"
        assert factory.instrumented
        # miros's own instrumentation works on it: its trace names the start
        assert re.search(r"\[.*\] \[factory_\w+\] e->start_at\(\) top->idle", factory.trace())
        assert any("mesh_hello" in line for line in factory.spy()), factory.spy()
    finally:
        factory.stop()


# ------------------------------------------------------------------ peers


def test_duplicate_peer_entries_deliver_once(charts) -> None:
    recorder, make = charts
    port = os.environ.get("RABBIT_PORT", "5672")
    sender = make("sender", "dup.tx", "dup.none",
                  peers=["localhost", "127.0.0.1", f"127.0.0.1:{port}",
                         f"amqp://guest:guest@localhost:{port}/%2F"])
    make("receiver", "dup.none", "dup.tx")
    assert sender.other_urls() == []  # every entry is the local broker
    for n in range(5):
        sender.transmit(Event(signal=signals.mesh_hello, payload=n))
    got = recorder.wait_count(5)
    assert [payload for _, _, payload in recorder.drain()] == [0, 1, 2, 3, 4] == [
        payload for _, _, payload in got]


def test_two_brokers_events_cross_both_ways(nodes, extra_rabbitmq_node) -> None:
    local_port = os.environ.get("RABBIT_PORT", "5672")
    far_port = str(extra_rabbitmq_node.port)
    near = nodes(f"near_{uuid.uuid4().hex[:4]}", "near.man", "#.man",
                 peers=(f"127.0.0.1:{far_port}",))
    far = nodes(f"far_{uuid.uuid4().hex[:4]}", "far.man", "#.man",
                peers=(f"127.0.0.1:{local_port}",), env={"RABBIT_PORT": far_port})
    near.send("mesh_hello", "over the bridge")
    assert far.expect(10)["payload"] == "over the bridge"
    far.send("mesh_reply", "and back")
    assert near.expect(10)["payload"] == "and back"
    near.nothing_more()
    far.nothing_more(quiet=0.1)


# ------------------------------------------------------------------ keys and bad input


def test_wrong_key_receives_nothing_and_node_keeps_working(charts, caplog) -> None:
    recorder, make = charts
    other_key = Fernet.generate_key()
    outsider = make("outsider", "k.none", "k.tx", mesh_encryption_key=other_key)
    sender = make("sender", "k.tx", "k.none")
    caplog.set_level(logging.WARNING, logger="miros_rabbitmq")
    sender.transmit(Event(signal=signals.mesh_hello, payload="secret plans"))
    wait_for(lambda: outsider.nets.drops.counts["mesh.bad_key"] == 1, timeout=5)
    assert recorder.drain() == []
    assert "bad_key" in caplog.text and "outsider" in caplog.text
    # it still hears a chart that holds its key
    friend = make("friend", "k.tx", "k.none", mesh_encryption_key=other_key)
    friend.transmit(Event(signal=signals.mesh_hello, payload="hello outsider"))
    (name, _, payload), = recorder.wait_count(1)
    assert name.startswith("outsider") and payload == "hello outsider"


def test_garbage_on_the_exchange_is_dropped(charts, caplog) -> None:
    recorder, make = charts
    receiver = make("receiver", "g.none", "g.tx")
    caplog.set_level(logging.WARNING, logger="miros_rabbitmq")
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", int(os.environ.get("RABBIT_PORT", "5672")),
        credentials=pika.PlainCredentials(os.environ["RABBIT_USER"], os.environ["RABBIT_PASSWORD"])))
    try:
        channel = connection.channel()
        noise = os.urandom(4096)
        for body in (b"", b"\x00\xff garbage", b"gAAAAA" + b"A" * 100, noise):
            channel.basic_publish(MESH_EXCHANGE, "g.tx", body)
    finally:
        connection.close()
    # a body is one token or newline-separated tokens (wire/batch.py): each piece
    # of the noise is judged, and dropped, on its own
    pieces = 3 + noise.count(b"\n") + 1
    wait_for(lambda: sum(receiver.nets.drops.counts.values()) == pieces, timeout=5)
    assert receiver.nets.drops.counts["mesh.garbage"] >= 3
    assert "garbage" in caplog.text
    sender = make("sender", "g.tx", "g.none")
    sender.transmit(Event(signal=signals.mesh_hello, payload="still alive"))
    assert recorder.wait_count(1)[0][2] == "still alive"


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("variable", ["RABBIT_USER", "RABBIT_PASSWORD", "MESH_ENCRYPTION_KEY"])
def test_missing_env_value_names_the_variable(mesh_env, monkeypatch, variable) -> None:
    monkeypatch.delenv(variable)
    with pytest.raises(EnvContractBroken) as raised:
        NetworkedActiveObject("nobody", tx_routing_key="a", rx_routing_key="b",
                              peers=[], lan_discovery=False)
    assert raised.value.variable == variable and variable in str(raised.value)
    assert os.environ.get("RABBIT_PASSWORD", "\x00") not in str(raised.value)


def test_dotenv_file_in_an_outer_folder_is_read(mesh_env, monkeypatch, tmp_path) -> None:
    key = Fernet.generate_key().decode()
    for variable in ("RABBIT_USER", "RABBIT_PASSWORD", "MESH_ENCRYPTION_KEY",
                     "SNOOP_TRACE_ENCRYPTION_KEY", "SNOOP_SPY_ENCRYPTION_KEY"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / ".env").write_text(f"RABBIT_USER=bob\nRABBIT_PASSWORD=dobbs\nMESH_ENCRYPTION_KEY={key}\n")
    inner = tmp_path / "project" / "src"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    settings = load_settings()
    assert settings.rabbit_user == "bob" and settings.rabbit_password.reveal() == "dobbs"
    assert settings.snoop_trace_keys == settings.mesh_keys  # snoop keys default to the mesh key
    assert "dobbs" not in repr(settings) and key not in repr(settings)


def test_bad_key_format_is_a_clear_error_without_the_key(mesh_env) -> None:
    with pytest.raises(ConfigurationError, match="not a Fernet key") as raised:
        NetworkedActiveObject("badkey", mesh_encryption_key="not-a-key-but-a-secret",
                              peers=[], lan_discovery=False)
    assert "not-a-key-but-a-secret" not in str(raised.value)


def test_passwords_never_show(charts, caplog) -> None:
    address = BrokerAddress("10.0.0.9", 5672, "/", "bob", Secret("hunter2"))
    for text in (str(address), repr(address), address.url):
        assert "hunter2" not in text and "******" in text
    assert "hunter2" in address.secret_url()
    _, make = charts
    chart = make("masked", "m.tx", "m.rx")
    password = os.environ["RABBIT_PASSWORD"]
    for text in (chart.this_url(), repr(chart.nets), repr(chart.settings), str(chart.nets.stats())):
        assert f":{password}@" not in text and "password='" not in text
    assert f":{password}@" not in caplog.text


def test_chart_queue_keeps_miros_locking_deque_behaviour() -> None:
    from miros.activeobject import LockingDeque

    from miros_rabbitmq._miros import RoomyDeque
    from miros_rabbitmq.mesh.networked import RESUME_BELOW

    ours, theirs = RoomyDeque(resume_below=RESUME_BELOW), LockingDeque()
    for queue_ in (ours, theirs):
        for item in range(3):
            queue_.append(item)
        queue_.appendleft("first")
    assert list(ours.deque) == list(theirs.deque) == ["first", 0, 1, 2]
    assert ours.qsize() == theirs.qsize() == len(ours) == 4
    for _ in range(4):
        ours.wait(timeout=1)
        ours.popleft()
        ours.task_done()
    with pytest.raises(queue.Empty):
        ours.wait(timeout=0.01)

    # full: like miros, the newest queued event gives way; tokens match events
    for queue_ in (ours, theirs):
        queue_.clear()
        for item in range(queue_.deque.maxlen + 2):
            queue_.append(item)
    assert list(ours.deque) == list(theirs.deque)
    assert ours.qsize() == len(ours)

    # the network's "room again" callback fires once the queue drains below the mark
    called: list[int] = []
    ours.on_room = lambda: called.append(len(ours))
    while len(ours) >= RESUME_BELOW:
        ours.popleft()
    assert called == [RESUME_BELOW - 1] and ours.on_room is None

    # a thread waiting on the queue wakes for an append
    ours.clear()
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: (ours.wait(timeout=5), woke.set()))
    waiter.start()
    ours.append("go")
    assert woke.wait(5)
    waiter.join(5)
