"""A RabbitMQ cluster of three nodes on this machine, for the cluster-mode tests.

Each node is a :class:`RabbitNode` (own node name ``mrcl-<pid>-<i>@localhost``,
own AMQP and distribution ports, own data, log and config folder) with the
federation plugin enabled (the mixed-mode test federates a LAN broker with
the cluster). They share the Erlang cookie of the user they run as (HOME
``/var/lib/rabbitmq`` as root), which is what ``rabbitmqctl join_cluster``
needs. Nodes 2 and 3 join node 1; quorum queues then have three replicas.

Start-up takes ~10-30 s on this machine (the nodes boot in parallel, the
joins are sequential), so the ``rabbit_cluster`` fixture starts it once per
module; a test that needs every node calls :meth:`RabbitCluster.heal` first.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest
from rabbit_node import RabbitNode, start_nodes, stop_nodes  # type: ignore[import-not-found]

from miros_rabbitmq.testing import wait_for

PLUGINS = ("rabbitmq_federation", "rabbitmq_shovel")


class PluginNode(RabbitNode):
    """A RabbitNode that boots with ``plugins`` enabled (offline: no plugin download)."""

    def __init__(self, name: str | None = None, *, plugins: Sequence[str] = PLUGINS,
                 **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.plugins = tuple(plugins)

    def ctl(self, *args: str, timeout: float = 60.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """As RabbitNode.ctl, run from the node's folder: rabbitmqctl runs as the
        ``rabbitmq`` user, and hangs for a minute in a working folder it cannot enter
        (a test's tmp_path, after ``mesh_env`` changed into it)."""
        argv = [*self._prefix(), self.ctl_path, "-n", self.nodename, *args]
        done = subprocess.run(argv, env=self._env(), capture_output=True, text=True,
                              timeout=timeout, cwd=str(self.base_dir))
        if check and done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {self.nodename} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}")
        return done

    def _write_files(self) -> None:
        super()._write_files()
        enabled = self.base_dir / "enabled_plugins"
        enabled.write_text("[" + ",".join(self.plugins) + "].\n")
        stat = os.stat(self.base_dir)
        os.chown(enabled, stat.st_uid, stat.st_gid)


class RabbitCluster:
    """Three (``size``) clustered RabbitMQ nodes; ``urls`` lists their AMQP URLs."""

    def __init__(self, size: int = 3, *, prefix: str = "mrcl") -> None:
        pid = os.getpid()
        self.nodes = [PluginNode(f"{prefix}-{pid}-{i}") for i in range(1, size + 1)]
        self.join_seconds: float | None = None

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def rotated(self, first: int) -> list[str]:
        """The URLs starting with node ``first`` (each process its own first node)."""
        urls = self.urls
        first %= len(urls)
        return urls[first:] + urls[:first]

    def start(self, timeout: float = 180.0) -> RabbitCluster:
        start_nodes(self.nodes, timeout)
        started = time.monotonic()
        try:
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", seed.nodename)
                node.ctl("start_app")
            for node in self.nodes:
                node.wait_ready(timeout)
            wait_for(lambda: self.running_members() == len(self.nodes), 60.0, 0.2,
                     "every node to be a running cluster member")
        except BaseException:
            self.close()
            raise
        self.join_seconds = time.monotonic() - started
        return self

    def running_members(self) -> int:
        """How many nodes the first running node sees as running cluster members."""
        for node in self.nodes:
            if node.is_running():
                done = node.ctl("eval", "length(rabbit_nodes:all_running()).", check=False)
                try:
                    return int(done.stdout.strip())
                except ValueError:
                    return 0
        return 0

    def heal(self, timeout: float = 120.0) -> None:
        """Start every stopped node again and wait until all are running members."""
        stopped = [node for node in self.nodes if not node.is_running()]
        for node in stopped:
            node.start(wait=False)
        for node in stopped:
            node.wait_ready(timeout)
        wait_for(lambda: self.running_members() == len(self.nodes), timeout, 0.2,
                 "every node to be a running cluster member again")

    def close(self) -> None:
        stop_nodes(self.nodes)
        for node in self.nodes:
            node.close()


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """A 3-node RabbitMQ cluster on this machine, started once for the module that uses it.

    Not session-scoped: every cluster test is in tests/test_cluster.py, so this starts
    it once all the same, and the three nodes do not stay up (and load this shared
    machine) while the rest of the suite runs.
    """
    cluster = RabbitCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()
