"""Cluster mode: 20 charts in 5 processes on a 3-node RabbitMQ cluster, nodes failing.

Each process lists the cluster's nodes starting with a different one (p0 and p3
start on node 0, p1 and p4 on node 1, p2 on node 2); process p's charts receive
what process p+1's charts transmit. While every chart transmits continuously a
node is stopped (or restarted twice): nothing may be lost, nothing duplicated,
each sender's order kept. The longest gap between two events of one sender is printed.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_process import clean_env, run_cli
from cluster_nodes import PluginNode, RabbitCluster, rabbit_cluster  # noqa: F401 - the fixture
from miros import Event, return_status, signals, spy_on

from miros_rabbitmq import NetworkedActiveObject
from miros_rabbitmq.cli.cluster import link_status
from miros_rabbitmq.testing import mesh_environment, wait_for
from miros_rabbitmq.transport import LINKS

WORKER = str(Path(__file__).parent / "cluster_worker.py")
PROCESSES = 5
CHARTS = 4
INTERVAL = 0.1  # each chart transmits 10 events a second
SETTLE_TIMEOUT = 90.0


class Worker:
    """One cluster_worker.py process and the lines it prints."""

    def __init__(self, process: int, env: dict[str, str]) -> None:
        self.process = process
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, str(process), str(CHARTS), str((process + 1) % PROCESSES),
             "--interval", str(INTERVAL)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put),
                             name=f"cluster-worker-out-{process}", daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append),
                             name=f"cluster-worker-err-{process}", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, put: Callable[[str], None]) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None and self.lines.empty():
                raise AssertionError(f"worker p{self.process}: no {prefix} line; stderr:\n"
                                     + "\n".join(self.stderr[-30:]))
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("QUIT")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)


@pytest.fixture
def workers(rabbit_cluster: RabbitCluster) -> Iterator[list[Worker]]:  # noqa: F811
    rabbit_cluster.heal()  # a node an earlier test stopped runs again
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBIT_")}
    env.update(mesh_environment())
    started = []
    try:
        for p in range(PROCESSES):
            process_env = dict(env, RABBIT_CLUSTER=",".join(rabbit_cluster.rotated(p % 3)))
            started.append(Worker(p, process_env))
        yield started
    finally:
        for worker in started:
            worker.close()


def run_under_load(workers: list[Worker], disrupt: Callable[[], None]) -> dict[str, Any]:
    """Transmit, ``disrupt()`` mid-run, halt, wait until every receiver settles; check."""
    for worker in workers:
        info = json.loads(worker.expect("READY", 120))
        print(f"p{worker.process} starts on {info['node']}")
    for worker in workers:
        worker.send("GO")
    for worker in workers:
        worker.expect("GOING")
    time.sleep(3.0)  # load before the fault (a duration under test, not a sync)
    disrupt()
    time.sleep(3.0)  # load after it
    sent: dict[str, int] = {}
    for worker in workers:
        worker.send("HALT")
    for worker in workers:
        sent.update(json.loads(worker.expect("SENT", 60)))

    def expected(receiver: str) -> dict[str, int]:
        source = (int(receiver[1:receiver.index("c")]) + 1) % PROCESSES
        return {name: n for name, n in sent.items() if name.startswith(f"p{source}c")}

    reports: dict[str, Any] = {}

    def settled() -> bool:
        for worker in workers:
            worker.send("REPORT")
            reports[f"p{worker.process}"] = json.loads(worker.expect("REPORT", 30))
        return all(r["count"] == expected(name)
                   for report in reports.values() for name, r in report["receivers"].items())

    try:
        wait_for(settled, SETTLE_TIMEOUT, 0.5, "every receiver to get every event")
    finally:
        receivers = {name: r for report in reports.values()
                     for name, r in report["receivers"].items()}
        lost = sum(max(0, n - r["count"].get(s, 0))
                   for name, r in receivers.items() for s, n in expected(name).items())
        duplicates = sum(r["duplicates"] for r in receivers.values())
        breaks = sum(r["order_breaks"] for r in receivers.values())
        gap = max((r["longest_gap"] for r in receivers.values()), default=0.0)
        print(f"\ncluster run: sent {sum(sent.values())} events, each to {CHARTS} charts; "
              f"lost {lost}, duplicated {duplicates}, order breaks {breaks}; "
              f"longest gap between two events of one sender {gap:.2f} s; resent "
              f"{sum(r['resent'] for r in reports.values())}, failovers "
              f"{sum(r['failovers'] for r in reports.values())}; nodes in use now: "
              + ", ".join(f"{p}->{r['node'].rsplit(':', 1)[-1].split('/')[0]}"
                          for p, r in reports.items()))
    assert lost == 0 and duplicates == 0 and breaks == 0
    return reports


@pytest.mark.allow_threads("cluster-worker-")
@pytest.mark.timeout(300)
def test_node_stopped_under_load_loses_and_duplicates_nothing(
        rabbit_cluster: RabbitCluster, workers: list[Worker]) -> None:  # noqa: F811
    victim = rabbit_cluster.nodes[0]  # p0 and p3 are connected to it
    reports = run_under_load(workers, victim.stop)
    # the processes that were on the stopped node moved to another one
    for p in ("p0", "p3"):
        assert f":{victim.port}/" not in reports[p]["node"]
        assert reports[p]["failovers"] >= 1


@pytest.mark.allow_threads("cluster-worker-")
@pytest.mark.timeout(300)
def test_node_restarted_twice_under_load_loses_and_duplicates_nothing(
        rabbit_cluster: RabbitCluster, workers: list[Worker]) -> None:  # noqa: F811
    victim = rabbit_cluster.nodes[1]  # p1 and p4 start on it

    def restart_twice() -> None:
        for _ in range(2):
            victim.restart()
            wait_for(lambda: rabbit_cluster.running_members() == 3, 60, 0.2,
                     "the restarted node to rejoin")

    run_under_load(workers, restart_twice)


# --------------------------------------------------------------------------- mixed mode


def _recorder(received: list[Any]) -> Any:
    @spy_on
    def listening(chart: Any, e: Event) -> Any:
        if e.signal_name.startswith("mixed_"):
            received.append((e.signal_name, e.payload))
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER
    return listening


#: Debian's rabbitmqctl wrapper runs as root (switching to the rabbitmq user); any other
#: user runs the nodes as itself and reaches them with the plain rabbitmqctl
CTL = "rabbitmqctl" if os.geteuid() == 0 else "/usr/lib/rabbitmq/bin/rabbitmqctl"


def _running_links(node: str) -> int:
    return sum(1 for link in link_status(node=node, ctl=CTL) if link.get("status") == "running")


@pytest.mark.allow_threads("miros-rabbitmq-io-")
@pytest.mark.timeout(300)
def test_mixed_mode_lan_mesh_node_and_cluster_exchange_events(
        rabbit_cluster: RabbitCluster, mesh_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """A mesh-mode chart on a LAN broker and a cluster-mode chart, joined by
    `miros-rabbitmq cluster mixed` (RabbitMQ federation, both ways)."""
    rabbit_cluster.heal()
    lan = PluginNode(f"mrcllan-{os.getpid()}-1")
    cluster_node = rabbit_cluster.nodes[0]
    lan_got: list[Any] = []
    cluster_got: list[Any] = []
    charts: list[NetworkedActiveObject] = []
    try:
        lan.start()
        on_lan = NetworkedActiveObject("mixed_on_lan", tx_routing_key="mixed.lan",
                                       rx_routing_key="mixed.cluster", rabbit_port=lan.port,
                                       peers=[])
        on_cluster = NetworkedActiveObject("mixed_on_cluster", tx_routing_key="mixed.cluster",
                                           rx_routing_key="mixed.lan",
                                           brokers=rabbit_cluster.urls)
        charts += [on_lan, on_cluster]
        on_cluster.enable_snoop_trace_no_color()
        on_lan.start_at(_recorder(lan_got))
        on_cluster.start_at(_recorder(cluster_got))
        assert on_cluster.other_urls() and on_cluster.this_url() not in on_cluster.other_urls()
        # one connection to the cluster for the chart and its snoop printer
        assert len([link for link in LINKS.links() if link.identity[0] == "cluster"]) == 1

        done = run_cli(["cluster", "mixed", "--lan-node", lan.nodename, "--lan-url", lan.url,
                        "--cluster-node", cluster_node.nodename,
                        "--cluster-url", ",".join(rabbit_cluster.urls), "--ctl", CTL],
                       cwd=str(tmp_path), env=clean_env())
        assert done.returncode == 0, done.stderr
        assert "guest:guest@" not in done.stdout + done.stderr  # no password printed
        # one link per miros exchange on each side
        wait_for(lambda: _running_links(lan.nodename) >= 3 and
                 _running_links(cluster_node.nodename) >= 3, 60, 0.5, "federation links")

        # federation propagates bindings asynchronously: probe until both ways carry
        def probed() -> bool:
            on_lan.transmit(Event(signal=signals.mixed_probe, payload="lan"))
            on_cluster.transmit(Event(signal=signals.mixed_probe, payload="cluster"))
            return bool(lan_got) and bool(cluster_got)
        wait_for(probed, 60, 0.3, "a first event through the federation links, both ways")

        for n in range(1, 51):
            on_lan.transmit(Event(signal=signals.mixed_tick, payload=n))
            on_cluster.transmit(Event(signal=signals.mixed_tick, payload=n))

        def ticks(got: list[Any]) -> list[Any]:
            return [p for s, p in list(got) if s == "mixed_tick"]
        wait_for(lambda: len(ticks(lan_got)) >= 50 and len(ticks(cluster_got)) >= 50, 30, 0.1,
                 "50 events each way")
        assert ticks(lan_got) == list(range(1, 51))
        assert ticks(cluster_got) == list(range(1, 51))
    finally:
        for chart in charts:
            chart.stop()
        lan.close()
        run_cli(["cluster", "unfederate", "--node", cluster_node.nodename,
                 "--name", f"miros-lan-{lan.nodename.replace('@', '_')}", "--ctl", CTL],
                cwd=str(tmp_path), env=clean_env())


# --------------------------------------------------------------------------- configuration


def test_rabbit_cluster_from_env_and_brokers_keyword(mesh_env: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from miros_rabbitmq import load_settings

    monkeypatch.setenv("RABBIT_CLUSTER", " amqp://u:s3cret@n1 , amqps://n2:5671,, n3:5673 ")
    settings = load_settings()
    assert settings.rabbit_cluster == ("amqp://u:s3cret@n1", "amqps://n2:5671", "n3:5673")
    assert "s3cret" not in repr(settings)
    assert load_settings(rabbit_cluster=["amqp://n9"]).rabbit_cluster == ("amqp://n9",)
    monkeypatch.delenv("RABBIT_CLUSTER")
    assert load_settings().rabbit_cluster == ()


def test_cluster_mode_refuses_bad_combinations(mesh_env: dict[str, str]) -> None:
    from miros_rabbitmq import ConfigurationError

    with pytest.raises(ConfigurationError, match="list of broker URLs"):
        NetworkedActiveObject("c1", brokers="amqp://n1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="exclude each other"):
        NetworkedActiveObject("c2", brokers=["amqp://n1"], peers=["amqp://n2"])


def test_cluster_chart_reports_first_node_and_the_others_before_start(
        mesh_env: dict[str, str]) -> None:
    chart = NetworkedActiveObject("c3", brokers=["amqp://u:pw@n1:5701", "n2:5702", "n3"])
    assert chart.this_url() == "amqp://u:******@n1:5701/%2F"
    assert [u.split("@")[1] for u in chart.other_urls()] == ["n2:5702/%2F", "n3:5672/%2F"]
    assert chart._discovery_config is None  # no LAN scan, no hosts file in cluster mode


def test_federation_commands_never_show_passwords() -> None:
    from miros_rabbitmq.cli.cluster import hide_secrets, upstream_definition

    text = 'uri "amqp://bob:dobbs@n1:5672/%2F" and amqps://a:b@n2'
    assert hide_secrets(text) == 'uri "amqp://bob:******@n1:5672/%2F" and amqps://a:******@n2'
    definition = upstream_definition(["amqp://bob:dobbs@n1", "amqp://bob:dobbs@n2"])
    assert definition["uri"] == ["amqp://bob:dobbs@n1", "amqp://bob:dobbs@n2"]
    assert definition["max-hops"] == 2


@pytest.mark.timeout(300)
def test_snoop_trace_works_unchanged_in_cluster_mode(
        rabbit_cluster: RabbitCluster, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """test_snoop's three processes, each given the cluster through RABBIT_CLUSTER only."""
    import test_snoop
    from cryptography.fernet import Fernet

    rabbit_cluster.heal()
    plain_env = test_snoop.node_env
    cluster = ",".join(rabbit_cluster.rotated(1))
    # RABBIT_PORT=1: a node that ignored RABBIT_CLUSTER would reach no broker at all
    monkeypatch.setattr(test_snoop, "node_env", lambda key, **extra: {
        **plain_env(key, **extra), "RABBIT_CLUSTER": cluster, "RABBIT_PORT": "1"})
    nodes, _ = test_snoop.run_three_nodes(Fernet.generate_key().decode(), [])  # they saw each other
    assert len(nodes) == 3
