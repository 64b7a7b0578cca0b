"""Snoop trace / snoop spy across processes, and what it promises locally."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.fernet import Fernet
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject
from miros_rabbitmq.mesh.snoop import (
    PRINTER,
    PUMP,
    SPY,
    TRACE,
    SnoopRecord,
    _Pump,
    format_record,
    strip_ansi,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = os.path.join(REPO, "tests", "snoop_node.py")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BLUE, PURPLE, GREY, RESET = "\x1b[34m", "\x1b[35m", "\x1b[90m", "\x1b[0m"
TRACE_LINE = re.compile(
    r"^ \[\+t\] \[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6})\] \[(?P<name>[^\]]+)\] "
    r"(?:e->(?P<signal>\w+)\(\) (?P<source>\w+)->(?P<target>\w+)|# (?P<note>.*))$")
pytestmark = pytest.mark.broker

SETTING_VARIABLES = ("RABBIT_USER", "RABBIT_PASSWORD", "RABBIT_HOST", "RABBIT_PORT",
                     "MESH_ENCRYPTION_KEY", "SNOOP_TRACE_ENCRYPTION_KEY",
                     "SNOOP_SPY_ENCRYPTION_KEY", "MIROS_RABBITMQ_ENV_FILE", "NO_COLOR")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def node_env(key: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARIABLES}
    env.update(RABBIT_USER="guest", RABBIT_PASSWORD="guest", MESH_ENCRYPTION_KEY=key,
               MIROS_RABBITMQ_LAN_DISCOVERY="0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


class Proc:
    """A subprocess whose stdout/stderr lines are collected by threads."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, cwd=cwd, text=True,
                                        bufsize=1)
        self.out: list[str] = []
        self.err: list[str] = []
        # (chart name, signal) of every trace line seen so far, counted as they arrive
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()
        self._threads = [threading.Thread(target=self._read, args=(self.process.stdout, self.out),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, self.err),
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            into.append(line)
            if into is self.out and line.startswith(" [+t]"):
                match = TRACE_LINE.match(ANSI.sub("", line))
                if match and match["signal"]:
                    kind = match["signal"] if match["signal"].startswith("to_") else "other"
                    self.seen[match["name"], kind] += 1

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def has(self, needle: str, stream: str = "out") -> bool:
        return any(needle in line for line in list(getattr(self, stream)))

    def finish(self, timeout: float = 15) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
        finally:
            for thread in self._threads:
                thread.join(5)
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
        return code


def trace_lines(lines: list[str]) -> list[re.Match[str]]:
    return [m for m in (TRACE_LINE.match(ANSI.sub("", line)) for line in lines) if m]


def transitions_by(lines: list[str], name: str) -> list[re.Match[str]]:
    return [m for m in trace_lines(lines) if m["name"] == name and m["signal"]]


def run_three_nodes(key: str, node_args: list[str], cli: list[list[str]] | None = None,
                    tmp_path: Any = None) -> tuple[dict[str, Proc], list[Proc]]:
    """Start snoop CLIs (if any) and three nodes; flip; stop; return their output."""
    run = os.urandom(4).hex()
    watchers = [Proc([sys.executable, "-m", "miros_rabbitmq", *args], node_env(key),
                     cwd=str(tmp_path) if tmp_path else None) for args in (cli or [])]
    nodes: dict[str, Proc] = {}
    try:
        for watcher in watchers:
            wait_for(lambda w=watcher: w.has("snooping on", "err") or w.process.poll() is not None,
                     15, "the snoop command to listen")
            assert watcher.process.poll() is None, watcher.err
        names = ["n1", "n2", "n3"]
        for name in names:  # one after the other: each sees the start of the next
            node = nodes[name] = Proc([sys.executable, NODE, name, "--run", run, *node_args],
                                      node_env(key))
            wait_for(lambda n=node: n.has("@@READY") or n.process.poll() is not None, 20,
                     "the nodes to be ready")
            assert node.process.poll() is None, node.err
        for node in nodes.values():
            node.send("GO")

        expected = [(node, names) for node in nodes.values()] + [
            (watcher, [args[args.index("--grep") + 1]] if "--grep" in args else names)
            for watcher, args in zip(watchers, cli or [], strict=True)]

        def everyone_saw_everyone() -> bool:
            for node, seen in expected:
                for name in seen:
                    # its own four flips, and the flips the others caused
                    flips = node.seen[name, "to_inner"] + node.seen[name, "to_outer"]
                    if flips < 4 or not node.seen[name, "other"]:
                        return False
            return True

        wait_for(everyone_saw_everyone, 40, "every node to print every node's transitions")
    finally:  # every process is told to stop before anything is asserted
        for node in nodes.values():
            if node.process.poll() is None:
                node.send("STOP")
        for watcher in watchers:
            if watcher.process.poll() is None:
                watcher.process.send_signal(signal.SIGINT)
        codes = {name: node.finish() for name, node in nodes.items()}
    for name, code in codes.items():
        assert code == 0, nodes[name].err
    return nodes, watchers


def assert_in_order(lines: list[str]) -> None:
    """Per chart, transitions appear in the order the chart made them (timestamps never go
    back). Scribbles are left out: they are written from another thread than the chart's."""
    last: dict[str, str] = {}
    for match in trace_lines(lines):
        if not match["signal"]:
            continue
        name = match["name"]
        assert match["ts"] >= last.get(name, ""), (name, match.group(0))
        last[name] = match["ts"]


def test_three_processes_print_each_others_transitions_in_colour() -> None:
    key = Fernet.generate_key().decode()
    nodes, _ = run_three_nodes(key, [])
    for me, node in nodes.items():
        assert_in_order(node.out)
        for other in nodes:
            ours = [line for line in node.out if f"] [{BLUE}{other}{RESET}]" in line]
            theirs = [line for line in node.out if f"] [{PURPLE}{other}{RESET}]" in line]
            if other == me:
                assert ours and not theirs, node.out  # the local chart is blue
            else:
                assert theirs and not ours, node.out  # other nodes are purple
            # scribbles: "[ts] [name] # text", the text dark grey
            assert any(f"{GREY} # {other} starts flipping{RESET}" in line
                       for line in node.out), node.out
        for line in node.out:
            if line.startswith(" [+t]"):
                assert TRACE_LINE.match(ANSI.sub("", line)), line


def test_no_color_and_spy_and_the_snoop_command_sees_all_three(tmp_path) -> None:
    key = Fernet.generate_key().decode()
    nodes, watchers = run_three_nodes(
        key, ["--no-color", "--spy"],
        cli=[["snoop"], ["snoop", "--trace", "--grep", "n2"], ["snoop", "--trace", "--color"]],
        tmp_path=tmp_path)
    everything, only_n2, coloured = watchers
    for watcher in watchers:
        assert watcher.finish() == 0, watcher.err  # Ctrl-C exits cleanly
        assert not any("Traceback" in line for line in watcher.err), watcher.err
    for me, proc in [*nodes.items(), ("", everything)]:
        text = "\n".join(proc.out)
        assert "\x1b[" not in text  # _no_color, or the command writing to a pipe: no ANSI
        assert_in_order(proc.out)
        for name in ("n1", "n2", "n3"):
            if name >= me:  # started after this node listened
                assert f" [+s] {name} START" in proc.out
            assert any(line.startswith(f" [+s] {name} ENTRY_SIGNAL:inner") for line in proc.out)
            assert f"] [{name}] # {name} starts flipping" in text
    # --grep: only the matching chart; --trace: no spy lines
    assert {m["name"] for m in trace_lines(only_n2.out)} == {"n2"}
    assert not any(line.startswith(" [+s]") for line in only_n2.out)
    # the command is not a chart: every name is "other", purple
    assert all(PURPLE in line for line in coloured.out if line.startswith(" [+t]"))
    assert {m["name"] for m in trace_lines(coloured.out)} == {"n1", "n2", "n3"}


def test_the_snoop_command_with_another_key_prints_nothing(tmp_path) -> None:
    key, watchers_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    watcher = Proc([sys.executable, "-m", "miros_rabbitmq", "snoop", "--trace", "--duration",
                    "60"], node_env(watchers_key), cwd=str(tmp_path))
    try:
        wait_for(lambda: watcher.has("snooping on", "err"), 15, "snoop to listen")
        chart = _chart("keyed", key)
        chart.enable_snoop_trace_no_color()
        chart.start_at(_idle)
        wait_for(lambda: chart._snoop.listeners[TRACE].printed >= 1, 10, "its own line")
        chart.stop()  # flushes its lines to the broker
        # a chart holding the command's key speaks after it: once the command prints
        # that line, the earlier one has been read (and refused), not merely "not yet"
        marker = _chart("marker", watchers_key)
        marker.enable_snoop_trace_no_color()
        marker.start_at(_idle)
        try:
            wait_for(lambda: watcher.has("marker"), 15, "the marker line")
        finally:
            marker.stop()
    finally:
        watcher.process.send_signal(signal.SIGINT)
        assert watcher.finish() == 0
    assert watcher.out and all("marker" in strip_ansi(line) for line in watcher.out), watcher.out
    assert watcher.has("could not be read (wrong key?)", "err"), watcher.err


# --------------------------------------------------------------------------- in-process


@spy_on
def _idle(chart: Any, e: Event) -> Any:
    if e.signal == signals.poke:
        return chart.trans(_busy)
    chart.temp.fun = chart.top
    return return_status.SUPER


@spy_on
def _busy(chart: Any, e: Event) -> Any:
    if e.signal == signals.poke:
        return chart.trans(_idle)
    chart.temp.fun = chart.top
    return return_status.SUPER


def _chart(name: str, key: str, **kw: Any) -> NetworkedActiveObject:
    return NetworkedActiveObject(name, rabbit_user="guest", rabbit_password="guest",
                                 tx_routing_key=f"snoop.test.{name}",
                                 rx_routing_key=f"snoop.test.{name}",
                                 mesh_encryption_key=key, peers=[], lan_discovery=False, **kw)


def test_local_chart_trace_spy_scribble_and_clean_stop(capsys) -> None:
    key = Fernet.generate_key().decode()
    chart = _chart("local_one", key, snoop_trace_encryption_key=Fernet.generate_key())
    chart.enable_snoop_trace_no_color()
    chart.enable_snoop_spy_no_color()
    chart.start_at(_idle)
    try:
        trace = chart._snoop.listeners[TRACE]
        spy = chart._snoop.listeners[SPY]
        wait_for(lambda: trace.ready.is_set() and spy.ready.is_set(), 10, "listeners")
        for _ in range(6):
            chart.post_fifo(Event(signal=signals.poke))
        chart.snoop_scribble("hello there")
        wait_for(lambda: trace.printed >= 8, 10, "trace lines")
        wait_for(lambda: spy.printed >= 10, 10, "spy lines")
        PRINTER.flush(5)
    finally:
        chart.stop()
    out = capsys.readouterr().out.splitlines()
    transitions = [line for line in out if "e->poke()" in line]
    assert len(transitions) == 6
    assert transitions[0].endswith("e->poke() _idle->_busy")
    assert transitions[1].endswith("e->poke() _busy->_idle")
    assert any(re.match(r"^ \[\+t\] \[[\d\- :.]+\] \[local_one\] # hello there$", line)
               for line in out)
    assert " [+s] local_one START" in out
    # stopped: no snoop thread left, miros's live trace/spy off
    assert PUMP._thread is None and PRINTER._thread is None
    assert not [t for t in threading.enumerate() if t.name.startswith("miros-rabbitmq-snoop")]
    assert chart.live_trace is False and chart.live_spy is False


def test_scribble_without_snoop_goes_to_miros_spy() -> None:
    chart = _chart("quiet_one", Fernet.generate_key().decode())
    chart.snoop_scribble("nobody listens")  # must not raise, nor publish
    assert any(line.endswith("[quiet_one] # nobody listens") for line in chart.rtc.spy)


class _FakeNets:
    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.sent: list[list[list[str]]] = []
        self.drops = _FakeDrops()

    def transmit(self, signal_name: str, payload: Any, *, network: str) -> int:
        self.gate.wait(10)
        self.sent.append(payload)
        return 1


class _FakeDrops:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def drop(self, network: str, reason: str) -> None:
        self.counts[f"{network}.{reason}"] += 1


class _FakeSource:
    name = "fake"

    def __init__(self, nets: _FakeNets) -> None:
        self.nets = nets
        self.pending = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.published: collections.Counter[str] = collections.Counter()


def test_pump_drops_and_counts_instead_of_blocking_and_keeps_order() -> None:
    gate = threading.Event()  # the network "cannot keep up" until the gate opens
    pump = _Pump(max_pending=50, max_batch=8)
    source = _FakeSource(_FakeNets(gate))
    pump.acquire()
    try:
        started = time.perf_counter()
        results = [pump.offer(source, TRACE, SnoopRecord("trace", "fake", f"line {i}"))
                   for i in range(1000)]
        elapsed = time.perf_counter() - started
        # never waited for the network: the gate stays shut 10 s (a bound on blocking,
        # not a speed limit)
        assert elapsed < 5.0
        # at most a full queue waits, plus the batch the pump thread holds
        assert results.count(True) <= 2 * 50
        assert source.dropped[TRACE] == results.count(False)
        assert source.nets.drops.counts[f"{TRACE}.snoop_backlog"] == results.count(False)
        gate.set()
        assert pump.flush(source, 10)
    finally:
        pump.release()
    sent = [record[2] for payload in source.nets.sent for record in payload]
    assert sent == sorted(sent, key=lambda text: int(text.split()[1]))  # order kept
    assert len(sent) == results.count(True)
    assert all(len(payload) <= 8 for payload in source.nets.sent)


@pytest.mark.parametrize("kind,local,color,expected", [
    ("trace", True, True, f" [+t] [2018-05-25 18:50:34.888810] [{BLUE}a{RESET}] e->x() s->t"),
    ("trace", False, True, f" [+t] [2018-05-25 18:50:34.888810] [{PURPLE}a{RESET}] e->x() s->t"),
    ("trace", False, False, " [+t] [2018-05-25 18:50:34.888810] [a] e->x() s->t"),
])
def test_format_trace(kind: str, local: bool, color: bool, expected: str) -> None:
    record = SnoopRecord(kind, "a", "[2018-05-25 18:50:34.888810] [a] e->x() s->t")
    assert format_record(record, TRACE, local=local, color=color) == expected


def test_format_spy_and_scribble() -> None:
    spy = SnoopRecord("spy", "a", "ENTRY_SIGNAL:outer")
    assert format_record(spy, SPY, local=False, color=False) == " [+s] a ENTRY_SIGNAL:outer"
    assert format_record(spy, SPY, local=True, color=True) == (
        f" [+s] {BLUE}a{RESET} ENTRY_SIGNAL:outer")
    note = SnoopRecord("scribble", "a", "[2018-05-25 18:50:34.888810] [a] # hi")
    assert format_record(note, TRACE, local=False, color=True) == (
        f" [+t] [2018-05-25 18:50:34.888810] [{PURPLE}a{RESET}]{GREY} # hi{RESET}")
    plain = note._replace(color=False)
    assert strip_ansi(format_record(plain, TRACE, local=False, color=True)) == (
        " [+t] [2018-05-25 18:50:34.888810] [a] # hi")
    assert GREY not in format_record(plain, TRACE, local=False, color=True)
