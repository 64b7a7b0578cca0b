"""The test infrastructure itself: miros_rabbitmq.testing, tests/rabbit_node.py, tests/netlab.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest
import rabbit_node as rn
from cryptography.fernet import Fernet
from netlab import VirtualLan, list_netns
from prereq import need_command, need_rabbitmq_server
from rabbit_node import RabbitNode

from miros_rabbitmq import testing as mrt
from miros_rabbitmq.testing import EventRecorder, ThreadWatcher, recording_state, wait_for

# ----------------------------------------------------------------- helpers


def test_wait_for_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", "yes"])
    assert wait_for(lambda: next(values), timeout=1) == "yes"


def test_wait_for_treats_exceptions_as_not_yet_and_names_what_it_waited_for() -> None:
    calls = []

    def flaky() -> bool:
        calls.append(1)
        raise KeyError("nope")

    started = time.monotonic()
    with pytest.raises(
        AssertionError, match=r"timed out after 0.2 s waiting for the thing.*KeyError"
    ):
        wait_for(flaky, timeout=0.2, message="the thing")
    assert 0.2 <= time.monotonic() - started < 1.0
    assert len(calls) > 3


def test_event_recorder_wakes_a_waiter_from_another_thread() -> None:
    rec = EventRecorder()
    worker = threading.Thread(target=lambda: [rec(i) for i in range(3)])
    worker.start()
    assert rec.wait_for_count(3, timeout=2) == [0, 1, 2]
    worker.join()
    with pytest.raises(AssertionError, match="4 items"):
        rec.wait_for_count(4, timeout=0.05)


def test_thread_watcher_names_a_leaked_thread_and_ignores_miros_singletons() -> None:
    stop = threading.Event()
    watcher = ThreadWatcher()
    leak = threading.Thread(target=stop.wait, name="leaky-worker", daemon=True)
    fabric_like = threading.Thread(target=stop.wait, name="fifo active fabric", daemon=True)
    leak.start()
    fabric_like.start()
    try:
        with pytest.raises(AssertionError, match="leaky-worker"):
            watcher.check(grace=0.1)
        assert watcher.leaked(grace=0) == [leak]
    finally:
        stop.set()
        leak.join()
        fabric_like.join()
    watcher.check(grace=0.1)


def test_recording_state_and_wait_for_event_see_what_a_chart_receives() -> None:
    from miros import ActiveObject, Event, signals

    rec = EventRecorder()
    chart = ActiveObject("recording_probe")
    chart.start_at(recording_state(rec, ["probe_hello"]))
    try:
        chart.post_fifo(Event(signal=signals.probe_other, payload=0))
        for n in (1, 2):
            chart.post_fifo(Event(signal=signals.probe_hello, payload=n))
        assert rec.wait_for_event("probe_hello", where=lambda p: p == 2).payload == 2
        assert [e.payload for e in rec.items] == [1, 2]  # probe_other was not recorded
        with pytest.raises(AssertionError, match="an event probe_never"):
            rec.wait_for_event("probe_never", timeout=0.05)
    finally:
        chart.stop()


def test_the_user_plugin_ships_no_root_or_broker_machinery() -> None:
    """What every user's pytest loads (pytest11) holds only the user helpers."""
    import importlib.metadata

    import miros_rabbitmq.testing.plugin as plugin

    (entry,) = [e for e in importlib.metadata.entry_points(group="pytest11")
                if e.name == "miros_rabbitmq"]
    assert entry.value == "miros_rabbitmq.testing.plugin"
    fixtures = {name for name, value in vars(plugin).items()
                if hasattr(value, "_pytestfixturefunction") or "fixture" in type(value).__name__.lower()}
    assert fixtures == {"rabbitmq_url", "mesh_env", "event_recorder", "no_thread_leaks"}, fixtures
    shipped = Path(mrt.__file__).parent
    text = "\n".join(p.read_text() for p in shipped.glob("*.py"))
    for word in ("RabbitNode", "setns", "netns", "SIGKILL", "rabbitmq-server", "geteuid"):
        assert word not in text, word
    # importable without pytest (a user's production environment)
    code = ("import sys; sys.modules['pytest'] = None; import miros_rabbitmq.testing as t; "
            "import miros_rabbitmq.testing.plugin; print(sorted(t.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "wait_for" in done.stdout, done.stderr


# a probe run in a child pytest by the test below, never collected in a normal run
_PROBE = os.environ.get("MIROS_RABBITMQ_PREREQ_PROBE")
if _PROBE == "missing":

    def test_prereq_probe() -> None:
        from prereq import missing

        missing("the frobnicator (Debian package frobnicate)")

elif _PROBE == "skip":

    def test_prereq_probe() -> None:
        pytest.skip("a skip from somewhere")


def _probe_run(kind: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MIROS_RABBITMQ_REQUIRE_BROKER")}
    env["MIROS_RABBITMQ_PREREQ_PROBE"] = kind
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         f"{__file__}::test_prereq_probe"],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent.parent)


def test_a_missing_prerequisite_fails_under_ci_and_skips_elsewhere() -> None:
    under_ci = _probe_run("missing", ci=True)
    assert under_ci.returncode == 1, under_ci.stdout
    assert "prerequisite missing under CI: the frobnicator" in under_ci.stdout
    outside = _probe_run("missing", ci=False)
    assert outside.returncode == 0, outside.stdout
    assert "skipped: 1" in outside.stdout
    # any other skip fails a CI run too, and the summary says how many
    skip = _probe_run("skip", ci=True)
    assert skip.returncode == 1, skip.stdout
    assert "skipped: 1 (zero expected under CI)" in skip.stdout
    assert "zero skips are expected" in skip.stdout


@pytest.fixture
def outer_env(monkeypatch):
    monkeypatch.setenv("RABBIT_HOST", "outer.example")
    monkeypatch.setenv("MIROS_RABBITMQ_ENV_FILE", "/nonexistent/.env")


def test_mesh_env_sets_fresh_keys_and_an_empty_working_folder(
    outer_env, mesh_env, tmp_path
) -> None:
    assert Path.cwd() == tmp_path
    assert "RABBIT_HOST" not in os.environ and "MIROS_RABBITMQ_ENV_FILE" not in os.environ
    assert list(tmp_path.iterdir()) == []
    for key in ("RABBIT_USER", "RABBIT_PASSWORD", "RABBIT_PORT", "MIROS_RABBITMQ_LAN_DISCOVERY"):
        assert os.environ[key] == mesh_env[key]
    assert mesh_env["RABBIT_USER"] == "guest" and mesh_env["RABBIT_PORT"] == "5672"
    assert mesh_env["MIROS_RABBITMQ_LAN_DISCOVERY"] == "0"
    keys = [
        mesh_env[k]
        for k in ("MESH_ENCRYPTION_KEY", "SNOOP_TRACE_ENCRYPTION_KEY", "SNOOP_SPY_ENCRYPTION_KEY")
    ]
    assert len(set(keys)) == 3
    for key in keys:
        assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
    assert mrt.mesh_environment()["MESH_ENCRYPTION_KEY"] != mesh_env["MESH_ENCRYPTION_KEY"]


def test_masked_url_hides_the_password() -> None:
    assert mrt.masked_url("amqp://bob:dobbs@h:5672/%2F") == "amqp://bob:******@h:5672/%2F"
    assert mrt.masked_url("amqp://h:5672/") == "amqp://h:5672/"


# ------------------------------------------------------------ local broker


def test_the_local_broker_answers_amqp(rabbitmq_url) -> None:
    assert mrt.broker_answers(rabbitmq_url)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        assert connection.is_open
    finally:
        connection.close()


def test_amqp_ping_says_no_for_a_port_nobody_listens_on() -> None:
    assert not mrt.amqp_ping("127.0.0.1", mrt.free_port(), timeout=0.5)


# ---------------------------------------------------------- extra RabbitMQ


def test_extra_node_is_a_separate_broker(extra_rabbitmq_node, rabbitmq_url) -> None:
    node = extra_rabbitmq_node
    assert node.is_running() and node.port != 5672
    assert node.start_seconds is not None
    queue = f"infra-test-{os.getpid()}"
    extra = pika.BlockingConnection(pika.URLParameters(node.url))
    local = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        extra.channel().queue_declare(queue, auto_delete=False)
        # the local broker does not know the queue: passive declare closes the channel
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            local.channel().queue_declare(queue, passive=True)
        extra.channel().queue_delete(queue)
    finally:
        extra.close()
        local.close()


def test_extra_node_stop_app_and_start_app(extra_rabbitmq_node) -> None:
    node = extra_rabbitmq_node
    node.stop_app()
    try:
        assert not node.answers(0.5)
        assert node.is_running()  # the Erlang node is still up
    finally:
        node.start_app()
    assert node.answers()
    pika.BlockingConnection(pika.URLParameters(node.url)).close()


def test_a_node_of_a_dead_test_process_is_cleaned_up_and_close_removes_its_data() -> None:
    need_rabbitmq_server()
    dead = subprocess.Popen(["true"])
    dead.wait()
    node = RabbitNode(f"{rn.NODE_PREFIX}{dead.pid}-stray")
    try:
        node.start()
        assert node.answers()
        base_dir = node.base_dir
        assert node.name in rn._marked_nodes().values()
        # the next test run finds it by its name and ends it: its "owner" is dead
        assert node.name in rn.cleanup_stray_nodes()
        wait_for(
            lambda: node.name not in rn._marked_nodes().values(), 10, message="the stray to end"
        )
        assert not node.answers(0.5)
    finally:
        node.close()
    assert not base_dir.exists()
    assert node._proc is not None and node._proc.poll() is not None


def test_a_rabbit_node_refuses_a_taken_port(rabbitmq_url) -> None:
    need_rabbitmq_server()
    with pytest.raises(RuntimeError, match="already taken"):
        RabbitNode(port=5672).start()


# ------------------------------------------------------------- virtual LAN


def _lan_namespaces(lan_id: str) -> list[str]:
    return [name for name in list_netns() if name.startswith(lan_id + "-")]


@pytest.mark.netns
def test_virtual_lan_hosts_reach_each_other_and_teardown_removes_everything() -> None:
    need_command("ping", "iputils-ping")
    lan = VirtualLan("10.231.0.0/24", hosts=3, ignore_broadcasts={3: False})
    with lan:
        assert sorted(_lan_namespaces(lan.id)) == sorted(
            [lan.bridge_netns, *(lan.netns(i) for i in lan.hosts)]
        )
        assert lan.addresses == ["10.231.0.1", "10.231.0.2", "10.231.0.3"]
        out = lan.exec(1, ["ping", "-c", "1", "-W", "2", lan.address(2)]).stdout
        assert "1 received" in out
        # the Linux default stays on hosts 1 and 2; host 3 answers broadcast pings
        assert lan.ignores_broadcasts(1) and lan.ignores_broadcasts(2)
        assert not lan.ignores_broadcasts(3)
        out = lan.exec(
            1, ["ping", "-b", "-c", "2", "-i", "0.2", "-W", "1", lan.broadcast], check=False
        ).stdout
        assert f"from {lan.address(3)}" in out and f"from {lan.address(2)}" not in out
        # a host's interfaces: loopback and eth0 only, with its address
        links = lan.exec(2, ["ip", "-br", "addr"]).stdout
        assert "10.231.0.2/24" in links and "lo" in links
        # unplugged, a host no longer answers
        lan.disconnect(2)
        assert (
            lan.exec(1, ["ping", "-c", "1", "-W", "1", lan.address(2)], check=False).returncode != 0
        )
        lan.reconnect(2)
        wait_for(
            lambda: (
                lan.exec(1, ["ping", "-c", "1", "-W", "1", lan.address(2)], check=False).returncode
                == 0
            ),
            10,
            message="host 2 back on the LAN",
        )
        sleeper = lan.popen(2, ["sleep", "300"])
    assert sleeper.poll() is not None
    assert _lan_namespaces(lan.id) == []


@pytest.mark.netns
def test_virtual_lan_teardown_after_a_failure() -> None:
    lan = VirtualLan("10.232.0.0/24", hosts=2)
    with pytest.raises(RuntimeError, match="boom"), lan:
        assert len(_lan_namespaces(lan.id)) == 3
        raise RuntimeError("boom")
    assert _lan_namespaces(lan.id) == []


@pytest.mark.netns
def test_brokers_in_namespaces_are_reached_over_the_lan(record_property) -> None:
    need_rabbitmq_server()
    started = time.monotonic()
    with VirtualLan("10.233.0.0/24", hosts=3, with_brokers={1, 2}) as lan:
        both = time.monotonic() - started
        boots = {i: lan.broker(i).start_seconds for i in (1, 2)}
        record_property("namespace_broker_start_seconds", boots)
        record_property("lan_with_two_brokers_seconds", round(both, 2))
        print(
            f"\nnamespace brokers AMQP-ready after {boots} s; LAN with 2 brokers built in {both:.1f} s"
        )
        assert set(lan.brokers) == {1, 2}
        node_names = [lan.broker(i).name for i in (1, 2)]
        # host 3 (no broker) connects to both over the LAN, with pika, in its own process
        code = (
            "import sys, pika\n"
            "for url in sys.argv[1:]:\n"
            "    c = pika.BlockingConnection(pika.URLParameters(url + '?connection_attempts=1&socket_timeout=5'))\n"
            "    print('open', c.is_open, c._impl.server_properties['product'])\n"
            "    c.close()\n"
        )
        out = lan.exec(3, [sys.executable, "-c", code, lan.url(1), lan.url(2)], timeout=60).stdout
        assert out.count("open True RabbitMQ") == 2, out
        # the same from this process: a connection made inside host 3's namespace
        params = pika.URLParameters(lan.url(2) + "?connection_attempts=1&socket_timeout=5")
        connection = lan.call(3, pika.BlockingConnection, params)
        try:
            assert connection.is_open
        finally:
            connection.close()
        # host 3 has no broker: connection refused there
        assert not lan.call(3, mrt.amqp_ping, lan.address(3), 5672, 0.5)
        # each broker's own namespace sees it on loopback
        assert lan.broker(1).answers() and lan.broker(1).url.startswith(
            "amqp://guest:guest@127.0.0.1:5672"
        )
        lan.broker(1).stop_app()
        assert not lan.call(3, mrt.amqp_ping, lan.address(1), 5672, 0.5)
        lan.broker(1).start_app()
        assert lan.call(3, mrt.amqp_ping, lan.address(1), 5672, 1.0)
    assert _lan_namespaces(lan.id) == []
    assert not set(node_names) & set(rn._marked_nodes().values())


@pytest.mark.netns
def test_virtual_lan_fixture_and_the_broadcast_flag(virtual_lan) -> None:
    lan = virtual_lan("10.234.0.0/24", hosts=2, ignore_broadcasts=False)
    assert not lan.ignores_broadcasts(1) and not lan.ignores_broadcasts(2)
    lan.set_ignore_broadcasts(2, True)
    assert lan.ignores_broadcasts(2)
    assert lan.broadcast == "10.234.0.255" and lan.prefixlen == 24
    with pytest.raises(IndexError):
        lan.address(3)
    # a callable run inside host 1 sees host 1's addresses only
    import ifaddr

    seen = lan.call(
        1,
        lambda: sorted(
            ip.ip for a in ifaddr.get_adapters() for ip in a.ips if isinstance(ip.ip, str)
        ),
    )
    assert seen == ["10.234.0.1", "127.0.0.1"]
