"""Project-wide test set-up.

* The user fixtures of ``miros_rabbitmq.testing.plugin`` (``rabbitmq_url``,
  ``mesh_env``, ``event_recorder``, ``no_thread_leaks``) are available whether
  or not the package is pip-installed; the project's own machinery
  (``rabbit_node_factory``, ``extra_rabbitmq_node``, ``virtual_lan``) is
  defined here, on tests/rabbit_node.py and tests/netlab.py.
* Every test fails if it leaves threads running (the miros singletons and
  names listed by ``@pytest.mark.allow_threads("regex", ...)`` excepted).
* A missing prerequisite (root, ``ip netns``, ``rabbitmq-server``, ``ping``,
  the local broker) skips the test outside CI and FAILS it under CI (env
  ``CI`` set), naming what is missing (tests/prereq.py).
* The summary prints ``skipped: N``; under CI any skip, or a session in which
  no test passed, fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netlab import VirtualLan
from prereq import in_ci, missing, need_netns, need_rabbitmq_server, netns_unavailable
from rabbit_node import RabbitNode, stop_nodes

import miros_rabbitmq.testing.plugin as user_plugin
from miros_rabbitmq import testing as mrt

__all__ = ["in_ci", "netns_unavailable"]


def pytest_configure(config: pytest.Config) -> None:
    if in_ci():  # under CI a missing broker is a failure, not a skip
        os.environ.setdefault(mrt.REQUIRE_BROKER_ENV, "1")
    pm = config.pluginmanager
    if not pm.is_registered(user_plugin) and pm.get_plugin("miros_rabbitmq") is None:
        pm.register(user_plugin, "miros_rabbitmq")  # not pip-installed (no pytest11 entry point)
    config.addinivalue_line(
        "markers", "allow_threads(*patterns): thread names (regex) that may outlive the test"
    )
    config.addinivalue_line("markers", "broker: needs the local RabbitMQ broker")
    config.addinivalue_line(
        "markers", "netns: needs root to build network namespaces (virtual LAN)"
    )
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        need_netns()
    if item.get_closest_marker("broker") is not None:
        url = mrt.local_broker_url()
        if not mrt.broker_answers(url, timeout=2.0):
            missing(f"an AMQP broker at {mrt.masked_url(url)}: run `make test` or "
                    "scripts/ensure_rabbitmq.sh")


# ------------------------------------------------------------------ extra brokers, LANs


@pytest.fixture(scope="session")
def rabbit_node_factory() -> Iterator[Callable[..., RabbitNode]]:
    """``factory(**RabbitNode kwargs) -> started RabbitNode``; all are stopped at session end."""
    need_rabbitmq_server()
    made: list[RabbitNode] = []

    def factory(timeout: float = 90.0, **kwargs: Any) -> RabbitNode:
        node = RabbitNode(**kwargs)
        made.append(node)
        return node.start(timeout)

    try:
        yield factory
    finally:
        stop_nodes(made)
        for node in made:
            node.close()


@pytest.fixture(scope="session")
def extra_rabbitmq_node(rabbit_node_factory: Callable[..., RabbitNode]) -> RabbitNode:
    """A second RabbitMQ node on free ports of 127.0.0.1 ("another machine")."""
    return rabbit_node_factory()


@pytest.fixture
def virtual_lan() -> Iterator[Callable[..., VirtualLan]]:
    """``make(subnet=..., hosts=..., with_brokers=..., ...) -> built VirtualLan``.

    Needs network namespaces (skips, or fails under CI, without them); every
    LAN made is torn down after the test, even when it fails.
    """
    need_netns()
    lans: list[VirtualLan] = []

    def make(*args: Any, **kwargs: Any) -> VirtualLan:
        if kwargs.get("with_brokers"):
            need_rabbitmq_server()
        lan = VirtualLan(*args, **kwargs)
        lans.append(lan)
        return lan.__enter__()

    try:
        yield make
    finally:
        for lan in reversed(lans):
            lan.close()


# ------------------------------------------------------------------ thread leaks


@pytest.fixture(autouse=True)
def _no_thread_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves new threads running (after a 2 s grace period)."""
    allowed = list(mrt.PERSISTENT_THREAD_PATTERNS)
    for marker in request.node.iter_markers("allow_threads"):
        allowed.extend(marker.args)
    watcher = mrt.ThreadWatcher(allowed)
    yield
    leaked = watcher.leaked(grace=2.0)
    if leaked:
        names = ", ".join(repr(t.name) for t in leaked)
        pytest.fail(f"test left {len(leaked)} thread(s) running: {names}", pytrace=False)


# ------------------------------------------------------------------ the session's verdict

_ci_verdict: str | None = None


def _count(session: pytest.Session, key: str) -> int:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return 0
    return len(reporter.stats.get(key, []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _ci_verdict
    if not in_ci() or exitstatus not in (0, pytest.ExitCode.OK):
        return
    skipped, passed = _count(session, "skipped"), _count(session, "passed")
    if skipped:
        _ci_verdict = f"CI: {skipped} test(s) skipped; zero skips are expected: the run fails"
    elif passed == 0:
        _ci_verdict = "CI: no test passed (all deselected): the run fails"
    if _ci_verdict:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped: {skipped}" + (" (zero expected under CI)" if in_ci() else ""))
    if _ci_verdict:
        terminalreporter.write_line(_ci_verdict, red=True, bold=True)
    times = RabbitNode.start_times
    if times:
        seconds = sorted(t for _, t in times)
        terminalreporter.write_line(
            f"RabbitMQ test nodes: {len(times)} started, boot to AMQP-ready "
            f"min {seconds[0]:.1f} s / median {seconds[len(seconds) // 2]:.1f} s / max {seconds[-1]:.1f} s"
        )
