"""The demo: three networked statecharts in three processes relaying balls.

``python -m miros_rabbitmq demo`` (or ``miros-rabbitmq demo``) starts one
:class:`RelayNode` per process, wired in a ring over the local RabbitMQ
broker (``alpha -> bravo -> charlie -> alpha``). When every node is ready
each launches its own ball; a ball goes round the ring ``laps`` times and
every hop is one networked event. Every node prints what it receives (who
got what from whom, and how long it took), and the demo ends by itself with
a summary: events sent and received per chart, events lost, latency p50.
The exit code is 0 when every event arrived, 1 otherwise.

It talks to the local broker only (``127.0.0.1``, ``RABBIT_PORT``), never
scans a network (``peers=[]``, ``lan_discovery=False``), and takes its
credentials and keys from the environment / ``.env``. With neither a
``.env`` nor any of those variables, it uses ``guest``/``guest`` and a
throwaway Fernet key made in memory, and says so.

The node side (``python -m miros_rabbitmq.cli.demo --node NAME ...``) talks to
the orchestrating process through lines on its stdin/stdout: lines starting
with ``@@`` are control lines (``@@READY``, ``@@NOTREADY reason``,
``@@RESULT {json}``; ``GO`` on stdin), every other line is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from miros import Event, return_status, signals, spy_on
from rich.table import Table
from rich.text import Text

from miros_rabbitmq.cli._common import EXIT_UNUSABLE, Context, fail
from miros_rabbitmq.config import Settings, load_settings
from miros_rabbitmq.errors import ConfigurationError, EnvContractBroken, Error
from miros_rabbitmq.mesh.networked import NetworkedActiveObject

__all__ = ["RelayNode", "DemoResult", "run_demo", "demo_settings", "NODE_NAMES"]

NODE_NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
DEFAULT_LAPS = 5
CONTROL = "@@"
ENV_VARIABLES = ("RABBIT_USER", "RABBIT_PASSWORD", "MESH_ENCRYPTION_KEY")


# --------------------------------------------------------------------------- the chart


class RelayNode(NetworkedActiveObject):
    """One node of the ring: receives balls from its left, passes them right.

    States (flat ``spy_on`` methods below)::

        relay_outer                 BALL: count it, print it, pass it on
          +-- waiting_for_go        GO -> relaying
          +-- relaying              entry: launch our own ball
          |                         ALL_ARRIVED -> finished
          +-- finished              entry: tell the process we are done
    """

    def __init__(self, name: str, *, next_name: str, run_id: str, nodes: int, laps: int,
                 settings: Settings, show: Callable[[str], None] = print) -> None:
        super().__init__(
            name,
            rabbit_user=settings.rabbit_user,
            rabbit_password=settings.rabbit_password.reveal(),
            tx_routing_key=f"demo.{run_id}.{next_name}",
            rx_routing_key=f"demo.{run_id}.{name}",
            mesh_encryption_key=[key.reveal() for key in settings.mesh_keys],
            rabbit_host="127.0.0.1",
            rabbit_port=settings.rabbit_port,
            peers=[],
            lan_discovery=False,
        )
        self.next_name = next_name
        self.laps = laps
        self.expected = nodes * laps
        self.sent = 0
        self.received = 0
        self.latencies_ms: list[float] = []
        self.done = threading.Event()
        self.show = show

    def send_ball(self, ball: str, lap: int) -> None:
        self.sent += 1
        self.transmit(Event(signal=signals.BALL, payload={
            "ball": ball, "lap": lap, "from": self.name, "sent": time.time()}))

    def on_ball(self, payload: dict[str, Any]) -> None:
        latency = max(0.0, (time.time() - float(payload["sent"])) * 1000.0)
        self.received += 1
        self.latencies_ms.append(latency)
        ball, lap = payload["ball"], int(payload["lap"])
        # pass the ball on first, then talk about it: printing is slow
        if ball == self.name:  # our own ball is back: one lap done
            if lap < self.laps:
                self.send_ball(ball, lap + 1)
        else:
            self.send_ball(ball, lap)
        what = f"BALL({ball}, lap {lap}/{self.laps})"
        self.show(f"{self.name:>8} got {what:<26} from {payload['from']:<8} {latency:7.2f} ms")
        if self.received >= self.expected:
            self.post_fifo(Event(signal=signals.ALL_ARRIVED))


@spy_on
def relay_outer(chart: RelayNode, e: Event) -> Any:
    status = return_status.UNHANDLED
    if e.signal == signals.BALL:
        chart.on_ball(e.payload)
        status = return_status.HANDLED
    else:
        chart.temp.fun = chart.top
        status = return_status.SUPER
    return status


@spy_on
def waiting_for_go(chart: RelayNode, e: Event) -> Any:
    status = return_status.UNHANDLED
    if e.signal == signals.GO:
        status = chart.trans(relaying)
    else:
        chart.temp.fun = relay_outer
        status = return_status.SUPER
    return status


@spy_on
def relaying(chart: RelayNode, e: Event) -> Any:
    status = return_status.UNHANDLED
    if e.signal == signals.ENTRY_SIGNAL:
        chart.send_ball(chart.name, 1)
        status = return_status.HANDLED
    elif e.signal == signals.ALL_ARRIVED:
        status = chart.trans(finished)
    else:
        chart.temp.fun = relay_outer
        status = return_status.SUPER
    return status


@spy_on
def finished(chart: RelayNode, e: Event) -> Any:
    status = return_status.UNHANDLED
    if e.signal == signals.ENTRY_SIGNAL:
        chart.done.set()
        status = return_status.HANDLED
    else:
        chart.temp.fun = relay_outer
        status = return_status.SUPER
    return status


# --------------------------------------------------------------------------- settings


def demo_settings(env_file: str | None = None,
                  environ: dict[str, str] | None = None) -> tuple[Settings, str | None]:
    """The demo's settings and, when it had to invent them, a note saying so.

    Raises :class:`EnvContractBroken` when a ``.env`` or some variables exist
    but are incomplete (that is a configuration to fix, not to paper over).
    """
    from miros_rabbitmq.config import find_env_file

    env = dict(os.environ if environ is None else environ)
    try:
        settings = load_settings(environ=env, dotenv_path=env_file, lan_discovery=False)
    except EnvContractBroken:
        dotenv = env_file if env_file else find_env_file()
        if (env_file and os.path.exists(env_file)) or (not env_file and dotenv) or any(
                env.get(name) for name in ENV_VARIABLES):
            raise
        from cryptography.fernet import Fernet

        settings = load_settings(rabbit_user="guest", rabbit_password="guest",
                                 mesh_encryption_key=Fernet.generate_key(),
                                 environ=env, dotenv_path="", lan_discovery=False)
        note = ("no .env and no RABBIT_USER/RABBIT_PASSWORD/MESH_ENCRYPTION_KEY: using "
                "guest/guest on the local broker and a throwaway mesh key kept in memory "
                "(run `miros-rabbitmq init` to make a .env)")
        return settings, note
    return settings, None


def _child_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({
        "RABBIT_USER": settings.rabbit_user,
        "RABBIT_PASSWORD": settings.rabbit_password.reveal(),
        "MESH_ENCRYPTION_KEY": ",".join(k.reveal() for k in settings.mesh_keys),
        "SNOOP_TRACE_ENCRYPTION_KEY": ",".join(k.reveal() for k in settings.snoop_trace_keys),
        "SNOOP_SPY_ENCRYPTION_KEY": ",".join(k.reveal() for k in settings.snoop_spy_keys),
        "RABBIT_HOST": "127.0.0.1",
        "RABBIT_PORT": str(settings.rabbit_port),
        "MIROS_RABBITMQ_LAN_DISCOVERY": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _broker_reachable(port: int, timeout: float = 2.0) -> str | None:
    """None if something listens on 127.0.0.1:port, else why not."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


# --------------------------------------------------------------------------- orchestration


@dataclass
class NodeReport:
    name: str
    sent: int = 0
    received: int = 0
    expected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    ready: bool = False
    finished: bool = False
    problem: str | None = None


@dataclass
class DemoResult:
    nodes: list[NodeReport]
    elapsed: float
    note: str | None = None

    @property
    def sent(self) -> int:
        return sum(n.sent for n in self.nodes)

    @property
    def received(self) -> int:
        return sum(n.received for n in self.nodes)

    @property
    def lost(self) -> int:
        expected = sum(n.expected for n in self.nodes)
        return max(self.sent - self.received, expected - self.received, 0)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and all(n.finished and n.problem is None for n in self.nodes)
                and self.received > 0)

    def latency(self, quantile: float) -> float | None:
        values = sorted(v for n in self.nodes for v in n.latencies_ms)
        if not values:
            return None
        if quantile == 0.5:
            return statistics.median(values)
        return values[min(len(values) - 1, int(quantile * len(values)))]


class _Child:
    """One node process and the thread reading its output."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str],
                 events: queue.Queue[tuple[str, str, str]]) -> None:
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.stderr_tail: list[str] = []
        self._events = events
        self._reader = threading.Thread(target=self._read, name=f"demo-{name}-out", daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, name=f"demo-{name}-err",
                                            daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            if line.startswith(CONTROL):
                kind, _, rest = line[len(CONTROL):].partition(" ")
                self._events.put((self.name, kind, rest))
            else:
                self._events.put((self.name, "LINE", line))
        self._events.put((self.name, "EOF", ""))

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip("\n")])[-20:]

    def send(self, text: str) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(text + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            pass

    def finish(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._reader.join(2)
        self._err_reader.join(2)


def run_demo(*, nodes: int = 3, laps: int = DEFAULT_LAPS, timeout: float = 30.0,
             settings: Settings | None = None, note: str | None = None,
             show: Callable[[str, str], None] | None = None,
             info: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo; ``show(node, line)`` gets every line a node prints.

    Raises :class:`~miros_rabbitmq.errors.Error` with a one-line reason when
    it cannot start (no broker, bad settings).
    """
    if not 2 <= nodes <= len(NODE_NAMES):
        raise Error(f"--nodes must be between 2 and {len(NODE_NAMES)}")
    if laps < 1:
        raise Error("--laps must be at least 1")
    if settings is None:
        settings, note = demo_settings()
    show = show or (lambda node, line: print(line, flush=True))
    info = info or (lambda line: print(line, file=sys.stderr, flush=True))
    if note:
        info(note)
    why = _broker_reachable(settings.rabbit_port)
    if why is not None:
        raise Error(f"cannot reach the local RabbitMQ broker at 127.0.0.1:{settings.rabbit_port} "
                    f"({why}); start it, or run `miros-rabbitmq doctor`")
    started = time.monotonic()
    deadline = started + timeout
    names = list(NODE_NAMES[:nodes])
    run_id = uuid.uuid4().hex[:8]
    env = _child_environment(settings)
    events: queue.Queue[tuple[str, str, str]] = queue.Queue()
    reports = {name: NodeReport(name, expected=nodes * laps) for name in names}
    children: dict[str, _Child] = {}
    info(f"demo: {nodes} charts in {nodes} processes, ring {' -> '.join(names + names[:1])}, "
         f"{laps} laps per ball, local broker 127.0.0.1:{settings.rabbit_port}")
    try:
        for index, name in enumerate(names):
            argv = [sys.executable, "-m", "miros_rabbitmq.cli.demo", "--node", name,
                    "--next", names[(index + 1) % nodes], "--run", run_id,
                    "--nodes", str(nodes), "--laps", str(laps),
                    "--timeout", f"{max(1.0, timeout - 1.0):.1f}"]
            children[name] = _Child(name, argv, env, events)
        go_sent = failed = False
        open_children = set(names)
        while open_children:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                node, kind, rest = events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            report = reports[node]
            if kind == "LINE":
                show(node, rest)
            elif kind == "READY":
                report.ready = True
                if not go_sent and all(r.ready for r in reports.values()):
                    go_sent = True
                    info("demo: every chart is listening; GO")
                    for child in children.values():
                        child.send("GO")
            elif kind == "NOTREADY":
                report.problem = f"could not start: {rest or 'no reason given'}"
                info(f"demo: {node} {report.problem}")
                failed = True
                break
            elif kind == "RESULT":
                data = json.loads(rest)
                report.sent = int(data["sent"])
                report.received = int(data["received"])
                report.latencies_ms = [float(v) for v in data["latencies_ms"]]
                report.finished = bool(data["finished"])
                if not report.finished:
                    report.problem = "timed out before every ball arrived"
            elif kind == "EOF":
                open_children.discard(node)
                if not report.finished and report.problem is None:
                    tail = children[node].stderr_tail
                    report.problem = (tail[-1] if tail else "exited early")[:300]
        for report in reports.values():
            if not report.finished and report.problem is None:
                report.problem = "stopped" if failed else "timed out"
    finally:
        for child in children.values():
            child.send("STOP")
        for child in children.values():
            child.finish(timeout=5.0)
    return DemoResult(list(reports.values()), time.monotonic() - started, note)


# --------------------------------------------------------------------------- node side


def _node_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miros_rabbitmq.cli.demo",
                                     description="one node of the miros-rabbitmq demo")
    parser.add_argument("--node", required=True)
    parser.add_argument("--next", required=True, dest="next_name")
    parser.add_argument("--run", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--laps", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=25.0)
    args = parser.parse_args(argv)
    write_lock = threading.Lock()

    def emit(line: str) -> None:
        with write_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    try:
        settings = load_settings(lan_discovery=False)
    except Error as error:
        emit(f"{CONTROL}NOTREADY {error}")
        return 1
    chart = RelayNode(args.node, next_name=args.next_name, run_id=args.run, nodes=args.nodes,
                      laps=args.laps, settings=settings, show=emit)
    deadline = time.monotonic() + args.timeout
    stop = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "GO":
                chart.post_fifo(Event(signal=signals.GO))
            elif line.strip() == "STOP":
                break
        stop.set()  # STOP, or the orchestrator is gone: end now
        chart.done.set()

    threading.Thread(target=read_stdin, name="demo-stdin", daemon=True).start()
    finished = False
    try:
        try:
            chart.nets.start(timeout=0.0)  # connect in the background; start_at will not wait
        except Error as error:  # e.g. BrokerAuthenticationError
            emit(f"{CONTROL}NOTREADY {error}")
            return 1
        consumer, link = chart.nets.consumer, chart.nets.local_link
        assert consumer is not None and link is not None
        # a refused login does not heal by waiting: report it at once
        while not consumer.ready.wait(0.05):
            error_text = link.last_error or ""
            if stop.is_set() or time.monotonic() >= deadline or link.auth_failed.is_set():
                emit(f"{CONTROL}NOTREADY {error_text or 'the local broker did not answer'}")
                return 1
        chart.start_at(waiting_for_go)
        emit(f"{CONTROL}READY")
        chart.done.wait(max(0.0, deadline - time.monotonic()))
        finished = chart.received >= chart.expected
    finally:
        chart.stop()
    emit(CONTROL + "RESULT " + json.dumps({
        "sent": chart.sent, "received": chart.received, "finished": finished,
        "latencies_ms": [round(v, 3) for v in chart.latencies_ms]}))
    return 0 if finished else 1


def summary_rows(result: DemoResult) -> list[tuple[str, int, int, int]]:
    """(chart, sent, received, lost) per node, for the summary table."""
    return [(n.name, n.sent, n.received, max(0, n.expected - n.received)) for n in result.nodes]


# --------------------------------------------------------------------------- the command


@click.command("demo")
@click.option("--laps", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Laps each ball makes round the ring.")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(2, 8),
              help="Charts (processes) in the ring.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(2, 600),
              help="Give up after this many seconds.")
@click.pass_obj
def demo_command(ctx: Context, laps: int, nodes: int, timeout: float) -> None:
    """Three networked charts in three processes relay balls over the local broker.

    Prints who got what from whom, then a summary; exit code 0 when every
    event arrived, 1 otherwise. Talks to 127.0.0.1 only and never scans a network.
    """
    if ctx.env_file and not os.path.exists(ctx.env_file):
        fail(f"{ctx.env_file} does not exist (make one with: miros-rabbitmq init)", EXIT_UNUSABLE)
    try:
        settings, note = demo_settings(ctx.env_file)
    except (EnvContractBroken, ConfigurationError) as error:
        fail(str(error), EXIT_UNUSABLE)
    colours = ["cyan", "magenta", "yellow", "green", "blue", "red", "bright_cyan",
               "bright_magenta"]
    styles: dict[str, str] = {}

    def show(node: str, line: str) -> None:
        style = styles.setdefault(node, colours[len(styles) % len(colours)])
        ctx.console.print(Text(line, style=style))

    def info(line: str) -> None:
        ctx.err.print(Text(line, style="dim"))

    try:
        result = run_demo(nodes=nodes, laps=laps, timeout=timeout, settings=settings, note=note,
                          show=show, info=info)
    except Error as error:
        fail(str(error))
    table = Table(title="demo summary", title_justify="left")
    for column in ("chart", "sent", "received", "lost", "status"):
        table.add_column(column, justify="left" if column in ("chart", "status") else "right")
    for (name, sent, received, lost), report in zip(summary_rows(result), result.nodes, strict=True):
        table.add_row(name, str(sent), str(received), str(lost),
                      "ok" if report.finished and not report.problem else (report.problem or "?"))
    ctx.console.print(table)
    p50 = result.latency(0.5)
    p95 = result.latency(0.95)
    latency = (f"latency p50 {p50:.2f} ms, p95 {p95:.2f} ms" if p50 is not None and p95 is not None
               else "no latency measured")
    ctx.console.print(f"events sent {result.sent}, received {result.received}, "
                      f"lost {result.lost}; {latency}; {result.elapsed:.1f} s")
    if not result.ok:
        for report in result.nodes:
            if report.problem and report.problem.startswith("could not start"):
                fail(f"{report.name} {report.problem}")
        problems = [f"{n.name}: {n.problem}" for n in result.nodes if n.problem]
        fail(f"lost {result.lost} event(s)" + (f" ({problems[0]})" if problems else ""))


command = demo_command


if __name__ == "__main__":
    sys.exit(_node_main())

