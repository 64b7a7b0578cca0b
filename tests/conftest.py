"""Project-wide test set-up.

* The fixtures of ``miros_rabbitmq.testing`` (``rabbitmq_url``, ``mesh_env``,
  ``extra_rabbitmq_node``, ``rabbit_node_factory``, ``no_thread_leaks``) are
  available everywhere, whether or not the package is pip-installed.
* Every test fails if it leaves threads running (the miros singletons and
  names listed by ``@pytest.mark.allow_threads("regex", ...)`` excepted).
* ``@pytest.mark.netns`` tests (and the ``virtual_lan`` fixture, a factory of
  ``netlab.VirtualLan``) skip, saying why, unless we are root and ``ip netns``
  works.
* ``@pytest.mark.broker`` tests skip (fail under CI) unless the local broker
  answers.
* Under CI (env ``CI`` set) a session in which no test passed fails, so an
  all-skipped run is never green; the summary lists RabbitMQ node start times.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netlab import VirtualLan

from miros_rabbitmq import testing as mrt

_netns_reason: str | None = None
_netns_checked = False


def pytest_configure(config: pytest.Config) -> None:
    if in_ci():  # under CI a missing broker is a failure, not a skip
        os.environ.setdefault(mrt.REQUIRE_BROKER_ENV, "1")
    pm = config.pluginmanager
    if not pm.is_registered(mrt):  # not pip-installed (no pytest11 entry point)
        pm.register(mrt, "miros_rabbitmq")
    config.addinivalue_line(
        "markers", "allow_threads(*patterns): thread names (regex) that may outlive the test"
    )
    config.addinivalue_line("markers", "broker: needs the local RabbitMQ broker")
    config.addinivalue_line(
        "markers", "netns: needs root to build network namespaces (virtual LAN)"
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def netns_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or None when they can."""
    global _netns_reason, _netns_checked
    if _netns_checked:
        return _netns_reason
    _netns_checked = True
    if os.geteuid() != 0:
        _netns_reason = "network namespaces need root (run the tests as root)"
    elif shutil.which("ip") is None:
        _netns_reason = "the ip command (iproute2) is not installed"
    else:
        probe = f"mrprobe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if added.returncode != 0:
            _netns_reason = f"`ip netns add` failed: {added.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return _netns_reason


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        reason = netns_unavailable()
        if reason:
            pytest.skip(reason)
    if item.get_closest_marker("broker") is not None:
        url = mrt.local_broker_url()
        if not mrt.broker_answers(url, timeout=2.0):
            message = f"no AMQP broker answers at {mrt.masked_url(url)}: run `make test` or scripts/ensure_rabbitmq.sh"
            if in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)


@pytest.fixture
def virtual_lan() -> Iterator[Callable[..., VirtualLan]]:
    """``make(subnet=..., hosts=..., with_brokers=..., ...) -> built VirtualLan``.

    Skips when network namespaces are unavailable; every LAN made is torn down
    after the test, even when it fails.
    """
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    lans: list[VirtualLan] = []

    def make(*args: Any, **kwargs: Any) -> VirtualLan:
        lan = VirtualLan(*args, **kwargs)
        lans.append(lan)
        return lan.__enter__()

    try:
        yield make
    finally:
        for lan in reversed(lans):
            lan.close()


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


_ci_no_pass = False


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _ci_no_pass
    if not in_ci() or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter is not None else 0
    if passed == 0:
        _ci_no_pass = True
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ci_no_pass:
        terminalreporter.ensure_newline()
        terminalreporter.write_line(
            "CI: no test passed (all skipped or deselected): the run fails", red=True, bold=True
        )
    times = mrt.RabbitNode.start_times
    if times:
        seconds = sorted(t for _, t in times)
        terminalreporter.write_line(
            f"RabbitMQ test nodes: {len(times)} started, boot to AMQP-ready "
            f"min {seconds[0]:.1f} s / median {seconds[len(seconds) // 2]:.1f} s / max {seconds[-1]:.1f} s"
        )
