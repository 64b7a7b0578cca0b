"""Every CLI command on good and bad input, through the real entry point.

``python -m miros_rabbitmq ...`` in a subprocess, in a temporary folder, with
settings only from that folder's ``.env`` (or the variables a test sets).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor

import pytest
from cli_process import REPO, clean_env
from cryptography.fernet import Fernet
from dotenv import dotenv_values
from miros import return_status, spy_on

from miros_rabbitmq import NetworkedActiveObject
from miros_rabbitmq.testing import free_port

GOLDEN = os.path.join(REPO, "tests", "golden")
COMMANDS = [[], ["keygen"], ["init"], ["doctor"], ["discover"], ["hosts"], ["hosts", "add"],
            ["hosts", "remove"], ["hosts", "list"], ["snoop"], ["sequence"], ["send"], ["demo"]]


def cli(tmp_path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "miros_rabbitmq", *args], cwd=str(tmp_path),
                          env=env if env is not None else clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def write_env(folder, **values: str) -> None:
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    os.chmod(folder / ".env", 0o600)


@pytest.fixture
def initialised(tmp_path):
    result = cli(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    return tmp_path


def secrets_of(folder) -> list[str]:
    values = dotenv_values(folder / ".env")
    return [v for k, v in values.items() if v and ("KEY" in k or k == "RABBIT_PASSWORD")
            and v != "guest"]


# --------------------------------------------------------------------------- help


def test_every_command_has_help(tmp_path) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda command: cli(tmp_path, *command, "--help"), COMMANDS))
    for command, result in zip(COMMANDS, results, strict=True):
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.startswith("Usage: miros-rabbitmq"), command


def test_unknown_command_is_a_usage_error(tmp_path) -> None:
    result = cli(tmp_path, "frobnicate")
    assert result.returncode == 2
    assert last_line(result).startswith("Error: No such command")


# --------------------------------------------------------------------------- keygen / init


def test_keygen_prints_a_fernet_key(tmp_path) -> None:
    result = cli(tmp_path, "keygen")
    assert result.returncode == 0
    Fernet(result.stdout.strip().encode())  # a valid key
    assert result.stdout.strip() != cli(tmp_path, "keygen").stdout.strip()


def test_init_writes_a_private_env_and_prints_no_secret(tmp_path) -> None:
    result = cli(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    path = tmp_path / ".env"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    values = dotenv_values(path)
    assert values["RABBIT_USER"] == "guest" and values["RABBIT_PORT"] == "5672"
    for name in ("MESH_ENCRYPTION_KEY", "SNOOP_TRACE_ENCRYPTION_KEY", "SNOOP_SPY_ENCRYPTION_KEY"):
        Fernet(values[name].encode())
    assert len({values[n] for n in values if n.endswith("KEY")}) == 3
    assert str(path) in result.stdout
    for secret in secrets_of(tmp_path):
        assert secret not in result.stdout + result.stderr


def test_init_refuses_to_overwrite_without_force(initialised) -> None:
    before = (initialised / ".env").read_text()
    result = cli(initialised, "init")
    assert result.returncode == 1
    assert last_line(result) == "Error: .env already exists; use --force to overwrite it"
    assert (initialised / ".env").read_text() == before
    forced = cli(initialised, "init", "--force", "--password", "s3cret-Pw")
    assert forced.returncode == 0
    assert (initialised / ".env").read_text() != before
    assert "s3cret-Pw" not in forced.stdout + forced.stderr
    assert dotenv_values(initialised / ".env")["RABBIT_PASSWORD"] == "s3cret-Pw"
    assert stat.S_IMODE(os.stat(initialised / ".env").st_mode) == 0o600


# --------------------------------------------------------------------------- doctor


@pytest.mark.broker
def test_doctor_all_good(initialised) -> None:
    result = cli(initialised, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ ok ] broker" in result.stdout
    assert "accepts user 'guest'" in result.stdout
    assert result.stdout.strip().endswith("all checks passed")
    for secret in secrets_of(initialised):
        assert secret not in result.stdout + result.stderr


def test_doctor_missing_env(tmp_path) -> None:
    result = cli(tmp_path, "doctor")
    assert result.returncode == 1
    assert "[FAIL] .env" in result.stdout
    assert "fix: run `miros-rabbitmq init`" in result.stdout
    assert last_line(result).startswith("Error: 2 problem(s): no .env in ")


@pytest.mark.broker
def test_doctor_wrong_password(tmp_path) -> None:
    write_env(tmp_path, RABBIT_USER="guest", RABBIT_PASSWORD="Wr0ng-Passw0rd",
              MESH_ENCRYPTION_KEY=Fernet.generate_key().decode())
    result = cli(tmp_path, "doctor")
    assert result.returncode == 1
    assert "[FAIL] broker     wrong credentials" in result.stdout
    assert "fix: correct RABBIT_USER/RABBIT_PASSWORD" in result.stdout
    assert last_line(result) == ("Error: 1 problem(s): wrong credentials: the broker at "
                                 "127.0.0.1:5672 refused user 'guest' with this password")
    assert "Wr0ng-Passw0rd" not in result.stdout + result.stderr


def test_doctor_unreachable_broker(tmp_path) -> None:
    port = free_port()
    write_env(tmp_path, RABBIT_USER="guest", RABBIT_PASSWORD="guest", RABBIT_PORT=str(port),
              MESH_ENCRYPTION_KEY=Fernet.generate_key().decode())
    result = cli(tmp_path, "doctor")
    assert result.returncode == 1
    assert f"broker unreachable: cannot connect to 127.0.0.1:{port} (Connection refused)" in (
        result.stdout)
    assert "fix: start RabbitMQ" in result.stdout
    assert last_line(result).startswith("Error: 1 problem(s): broker unreachable")


@pytest.mark.broker
def test_doctor_bad_key_and_corrupt_hosts_file(initialised) -> None:
    env_text = (initialised / ".env").read_text()
    env_text = re.sub(r"SNOOP_SPY_ENCRYPTION_KEY=.*", "SNOOP_SPY_ENCRYPTION_KEY=not-a-key",
                      env_text)
    (initialised / ".env").write_text(env_text)
    (initialised / ".miros_rabbitmq_hosts.json").write_text('{"hosts": ["192.168.1.75",')
    result = cli(initialised, "doctor")
    assert result.returncode == 1
    assert "[FAIL] keys       SNOOP_SPY_ENCRYPTION_KEY: encryption key #1 is not a Fernet key" in (
        result.stdout)
    assert "miros-rabbitmq keygen" in result.stdout
    assert "[FAIL] hosts file .miros_rabbitmq_hosts.json is not a hosts file" in result.stdout
    assert "not-a-key" not in result.stdout + result.stderr
    assert last_line(result).startswith("Error: 2 problem(s): SNOOP_SPY_ENCRYPTION_KEY")


@pytest.mark.broker
def test_doctor_warns_about_a_readable_env_and_a_bad_cache(initialised) -> None:
    os.chmod(initialised / ".env", 0o644)
    (initialised / ".miros_rabbitmq_lan_cache.json").write_text("garbage")
    result = cli(initialised, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[warn] .env" in result.stdout and "fix: chmod 600" in result.stdout
    assert "[warn] LAN cache  .miros_rabbitmq_lan_cache.json: not valid JSON" in result.stdout


# --------------------------------------------------------------------------- hosts


def test_hosts_add_list_remove(tmp_path) -> None:
    assert cli(tmp_path, "hosts", "list").stderr.strip() == (
        "no hosts file at .miros_rabbitmq_hosts.json")
    added = cli(tmp_path, "hosts", "add", "192.168.1.75", "www.example.org:5673")
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == ["added: 192.168.1.75", "added: www.example.org:5673"]
    path = tmp_path / ".miros_rabbitmq_hosts.json"
    assert json.loads(path.read_text()) == {"hosts": ["192.168.1.75", "www.example.org:5673"]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = cli(tmp_path, "hosts", "add", "192.168.1.75")
    assert again.stdout.strip() == "already listed: 192.168.1.75"
    listed = cli(tmp_path, "hosts", "list")
    assert listed.stdout.splitlines() == ["192.168.1.75", "www.example.org:5673"]
    removed = cli(tmp_path, "hosts", "remove", "192.168.1.75")
    assert removed.returncode == 0 and removed.stdout.strip() == "removed: 192.168.1.75"
    missing = cli(tmp_path, "hosts", "remove", "10.9.9.9")
    assert missing.returncode == 1
    assert last_line(missing) == "Error: not in .miros_rabbitmq_hosts.json: 10.9.9.9"
    assert json.loads(path.read_text()) == {"hosts": ["www.example.org:5673"]}


def test_hosts_bad_input(tmp_path) -> None:
    bad_entry = cli(tmp_path, "hosts", "add", "not a host")
    assert bad_entry.returncode == 2
    assert last_line(bad_entry) == ("Error: not a host, host:port or amqp:// URL: 'not a host'")
    with_password = cli(tmp_path, "hosts", "add", "amqp://bob:dobbs@10.0.0.7:5672/%2F")
    assert with_password.returncode == 2
    assert "dobbs" not in with_password.stderr
    path = tmp_path / ".miros_rabbitmq_hosts.json"
    path.write_text('{"hosts": [')
    for args in (["add", "10.0.0.7"], ["list"], ["remove", "10.0.0.7"]):
        result = cli(tmp_path, "hosts", *args)
        assert result.returncode == 1, args
        assert last_line(result) == (
            "Error: .miros_rabbitmq_hosts.json is not a hosts file: expected "
            '{"hosts": ["192.168.1.75", ...]} (not valid JSON); fix or delete it')
    assert path.read_text() == '{"hosts": ['  # never overwritten
    path.write_text('{"hosts": "10.0.0.7"}')
    wrong_shape = cli(tmp_path, "hosts", "add", "10.0.0.8")
    assert wrong_shape.returncode == 1
    assert "is not a hosts file: expected" in last_line(wrong_shape)


def test_hosts_concurrent_adds_all_land(tmp_path) -> None:
    hosts = [f"10.1.0.{i}" for i in range(1, 6)]
    with ThreadPoolExecutor(len(hosts)) as pool:
        results = list(pool.map(lambda h: cli(tmp_path, "hosts", "add", h), hosts))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    listed = cli(tmp_path, "hosts", "list").stdout.split()
    assert sorted(listed) == sorted(hosts)


# --------------------------------------------------------------------------- snoop (errors)


def test_snoop_without_settings(tmp_path) -> None:
    result = cli(tmp_path, "snoop")
    assert result.returncode == 2
    assert last_line(result) == (
        "Error: RABBIT_USER is not set: put RABBIT_USER=... in your .env file or environment "
        "(no .env found: run `miros-rabbitmq init`)")


@pytest.mark.broker
def test_snoop_wrong_password(tmp_path) -> None:
    write_env(tmp_path, RABBIT_USER="guest", RABBIT_PASSWORD="Wr0ng-Passw0rd",
              MESH_ENCRYPTION_KEY=Fernet.generate_key().decode())
    result = cli(tmp_path, "snoop", "--duration", "30")
    assert result.returncode == 1
    assert last_line(result) == (
        "Error: cannot listen at amqp://guest:******@127.0.0.1:5672/%2F: credentials refused "
        "by the broker (check RABBIT_USER / RABBIT_PASSWORD)")
    assert "Wr0ng-Passw0rd" not in result.stdout + result.stderr


def test_snoop_unreachable_broker(tmp_path) -> None:
    port = free_port()
    write_env(tmp_path, RABBIT_USER="guest", RABBIT_PASSWORD="guest", RABBIT_PORT=str(port),
              MESH_ENCRYPTION_KEY=Fernet.generate_key().decode())
    result = cli(tmp_path, "snoop", "--connect-timeout", "1")
    assert result.returncode == 1
    assert last_line(result).startswith(
        f"Error: cannot listen at amqp://guest:******@127.0.0.1:{port}/%2F: ")


def test_snoop_bad_key(initialised) -> None:
    text = re.sub(r"SNOOP_TRACE_ENCRYPTION_KEY=.*", "SNOOP_TRACE_ENCRYPTION_KEY=oops",
                  (initialised / ".env").read_text())
    (initialised / ".env").write_text(text)
    result = cli(initialised, "snoop", "--duration", "0")
    assert result.returncode == 2
    assert last_line(result).startswith(
        "Error: SNOOP_TRACE_ENCRYPTION_KEY: encryption key #1 is not a Fernet key")


def test_snoop_missing_env_file_option(tmp_path) -> None:
    result = cli(tmp_path, "--env-file", "nowhere.env", "snoop")
    assert result.returncode == 2
    assert last_line(result) == (
        "Error: nowhere.env does not exist (make one with: miros-rabbitmq init)")


# --------------------------------------------------------------------------- sequence


def test_sequence_golden(tmp_path) -> None:
    log = os.path.join(GOLDEN, "three_charts.log")
    result = cli(tmp_path, "sequence", log, "--mermaid", "out.mmd", "--svg", "out.svg")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(GOLDEN, "three_charts.txt"), encoding="utf-8") as handle:
        assert result.stdout == handle.read()
    with open(os.path.join(GOLDEN, "three_charts.mmd"), encoding="utf-8") as handle:
        assert (tmp_path / "out.mmd").read_text() == handle.read()
    svg = ElementTree.parse(tmp_path / "out.svg").getroot()
    texts = [element.text for element in svg.iter() if element.tag.endswith("text")]
    assert "Statechart: 192.168.1.77" in texts
    assert "(4) try_to_connect_to_consumer()" in texts
    assert "(8) # waiting for the others" in texts
    assert result.stderr.splitlines() == ["wrote out.svg", "wrote out.mmd"]


def test_sequence_from_stdin_and_one_chart(tmp_path) -> None:
    with open(os.path.join(GOLDEN, "three_charts.log"), encoding="utf-8") as handle:
        log = handle.read()
    result = subprocess.run([sys.executable, "-m", "miros_rabbitmq", "sequence", "-", "--chart",
                             "192.168.1.77"], input=log, capture_output=True, text=True,
                            env=clean_env(), cwd=str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[Statechart: 192.168.1.77]\n")
    assert "04ccc_ao" not in result.stdout
    assert "+--try_to_connect_to_consumer()-->|" in result.stdout
    assert "(1)" in result.stdout  # numbered within what was kept


def test_sequence_bad_input(tmp_path) -> None:
    (tmp_path / "empty.log").write_text("nothing to see\n [+s] n1 START\n")
    empty = cli(tmp_path, "sequence", "empty.log")
    assert empty.returncode == 1
    assert last_line(empty).startswith("Error: no trace lines in empty.log")
    missing = cli(tmp_path, "sequence", "missing.log")
    assert missing.returncode == 2
    assert "missing.log" in last_line(missing) and "No such file" in last_line(missing)
    unwritable = cli(tmp_path, "sequence", os.path.join(GOLDEN, "three_charts.log"),
                     "--svg", str(tmp_path / "no" / "such" / "dir.svg"))
    assert unwritable.returncode == 1
    assert last_line(unwritable).startswith("Error: cannot write ")


# --------------------------------------------------------------------------- discover


@pytest.mark.broker
def test_discover_finds_a_node_holding_our_key(initialised) -> None:
    values = dotenv_values(initialised / ".env")
    chart = NetworkedActiveObject("discover_me", rabbit_user="guest", rabbit_password="guest",
                                  tx_routing_key="discover.me", rx_routing_key="discover.me",
                                  mesh_encryption_key=values["MESH_ENCRYPTION_KEY"], peers=[],
                                  lan_discovery=False)
    closed = free_port()
    chart.nets.start(timeout=10)
    try:
        assert cli(initialised, "hosts", "add", "127.0.0.1", f"127.0.0.1:{closed}").returncode == 0
        result = cli(initialised, "discover", "--hosts", ".miros_rabbitmq_hosts.json",
                     "--timeout", "3")
    finally:
        chart.nets.stop()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "peers (1 of 2 found)" in out
    assert re.search(r"127\.0\.0\.1\s+│ mesh node \(key proven\)\s+│\s+\d+ ms", out), out
    assert re.search(rf"127\.0\.0\.1:{closed}\s+│ no-broker: no TCP connection", out), out


@pytest.mark.broker
def test_discover_network_option_and_bad_input(initialised) -> None:
    result = cli(initialised, "discover", "--network", "127.0.0.0/30", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1" in result.stdout and "127.0.0.2" in result.stdout
    bad_cidr = cli(initialised, "discover", "--network", "300.1.2.0/24")
    assert bad_cidr.returncode == 2
    assert last_line(bad_cidr).startswith("Error: not a network: '300.1.2.0/24'")
    too_big = cli(initialised, "discover", "--network", "10.0.0.0/8")
    assert too_big.returncode == 2
    (initialised / "corrupt.json").write_text("{")
    corrupt = cli(initialised, "discover", "--hosts", "corrupt.json")
    assert corrupt.returncode == 2
    assert last_line(corrupt).startswith("Error: corrupt.json is not a hosts file")
    nowhere = cli(initialised, "discover", "--hosts", "nowhere.json")
    assert nowhere.returncode == 2
    assert "nowhere.json" in last_line(nowhere)
    no_target = cli(initialised, "discover")
    assert no_target.returncode == 2
    assert "--network CIDR or --hosts FILE" in last_line(no_target)


def test_discover_without_settings(tmp_path) -> None:
    result = cli(tmp_path, "discover", "--network", "127.0.0.1/32")
    assert result.returncode == 2
    assert last_line(result).startswith("Error: RABBIT_USER is not set")


# --------------------------------------------------------------------------- the layout


def test_one_module_per_command_and_library_logic_outside_the_cli() -> None:
    from miros_rabbitmq.cli import COMMANDS
    from miros_rabbitmq.cli import cli as group

    for name, module in COMMANDS.items():
        path = os.path.join(REPO, "miros_rabbitmq", "cli", f"{module}.py")
        assert os.path.exists(path), name
    assert set(group.list_commands(None)) >= {"keygen", "init", "doctor", "discover", "hosts",
                                              "snoop", "sequence", "send", "demo"}
    for library in ("diagnostics.py", os.path.join("discovery", "hosts_editing.py")):
        with open(os.path.join(REPO, "miros_rabbitmq", library), encoding="utf-8") as handle:
            source = handle.read()
        assert "import click" not in source and "rich" not in source, library
    with open(os.path.join(REPO, "miros_rabbitmq", "cli", "__init__.py"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) < 150


# --------------------------------------------------------------------------- --json, --count


def _snooped_chart(folder, name: str) -> NetworkedActiveObject:
    values = dotenv_values(folder / ".env")
    return NetworkedActiveObject(
        name, rabbit_user="guest", rabbit_password="guest",
        mesh_encryption_key=values["MESH_ENCRYPTION_KEY"],
        tx_routing_key=f"clitest.{name}", rx_routing_key=f"clitest.{name}",
        snoop_trace_encryption_key=values["SNOOP_TRACE_ENCRYPTION_KEY"],
        snoop_spy_encryption_key=values["SNOOP_SPY_ENCRYPTION_KEY"],
        peers=[], lan_discovery=False)


def _snoop_while_scribbling(folder, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``snoop ARGS`` while a chart of this process scribbles until the command ends."""
    process = subprocess.Popen([sys.executable, "-m", "miros_rabbitmq", "snoop", *args],
                               cwd=str(folder), env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    chart = _snooped_chart(folder, f"scribbler_{os.getpid()}")
    chart.enable_snoop_trace_no_color()
    chart.start_at(_idle_state)
    try:
        for n in range(600):  # the command ends by itself after --count lines
            chart.snoop_scribble(f"line {n}")
            try:
                out, err = process.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            process.kill()
            out, err = process.communicate()
    finally:
        chart.stop()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@spy_on
def _idle_state(chart, e):
    chart.temp.fun = chart.top
    return return_status.SUPER


@pytest.mark.broker
def test_snoop_count_json_lines_without_colour_in_a_pipe(initialised) -> None:
    result = _snoop_while_scribbling(initialised, "--trace", "--count", "3", "--json",
                                     "--duration", "60")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, lines
    records = [json.loads(line) for line in lines]
    for record in records:
        assert set(record) == {"network", "kind", "chart", "time", "text", "local"}
        assert record["network"] == "trace" and record["chart"].startswith("scribbler_")
        assert record["local"] is False and record["time"]
    assert any(r["kind"] == "scribble" and r["text"].startswith("line ") for r in records)
    assert "\x1b[" not in result.stdout


@pytest.mark.broker
def test_snoop_once_prints_one_plain_line_in_a_pipe(initialised) -> None:
    result = _snoop_while_scribbling(initialised, "--trace", "--once", "--duration", "60")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(" [+t] [") and "\x1b[" not in lines[0]


@pytest.mark.broker
def test_snoop_count_not_reached_is_a_problem(initialised) -> None:
    result = cli(initialised, "snoop", "--trace", "--count", "2", "--duration", "1")
    assert result.returncode == 1
    assert last_line(result) == "Error: 0 of 2 line(s) within 1 s"


@pytest.mark.broker
def test_doctor_json(initialised, tmp_path_factory) -> None:
    result = cli(initialised, "doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    names = [check["name"] for check in report["checks"]]
    assert {".env", "settings", "keys", "broker"} <= set(names)
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])
    for secret in secrets_of(initialised):
        assert secret not in result.stdout + result.stderr
    empty = tmp_path_factory.mktemp("empty")
    missing = cli(empty, "doctor", "--json")
    assert missing.returncode == 1
    report = json.loads(missing.stdout)
    assert report["ok"] is False and report["checks"][0]["status"] == "fail"


@pytest.mark.broker
def test_discover_json(initialised) -> None:
    chart = _snooped_chart(initialised, "discover_json")
    closed = free_port()
    chart.nets.start(timeout=10)
    try:
        assert cli(initialised, "hosts", "add", "127.0.0.1", f"127.0.0.1:{closed}").returncode == 0
        result = cli(initialised, "discover", "--hosts", ".miros_rabbitmq_hosts.json",
                     "--timeout", "3", "--json")
    finally:
        chart.nets.stop()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["found"] == 1 and report["scouted"] == 2
    peers = {peer["address"]: peer for peer in report["peers"]}
    assert peers["127.0.0.1"]["found"] is True
    assert peers[f"127.0.0.1:{closed}"]["found"] is False
    assert peers[f"127.0.0.1:{closed}"]["state"] == "no-broker"


@pytest.mark.broker
def test_send_injects_an_event_into_the_mesh(initialised) -> None:
    from miros_rabbitmq.testing import EventRecorder

    received = EventRecorder()

    @spy_on
    def listening(chart, e):
        if e.signal_name == "shell_poke":
            received.record((e.signal_name, e.payload))
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    values = dotenv_values(initialised / ".env")
    chart = NetworkedActiveObject(f"send_target_{os.getpid()}", "guest", "guest",
                                  values["MESH_ENCRYPTION_KEY"], "send.none", "send.test.*",
                                  peers=[], lan_discovery=False)
    chart.start_at(listening)
    try:
        result = cli(initialised, "send", "shell_poke", '{"from": "shell", "n": [1, 2]}',
                     "--tx", "send.test.poke")
        assert result.returncode == 0, result.stderr
        assert "sent shell_poke (send.test.poke) to 1 broker(s)" in result.stderr
        assert received.wait_for_count(1, timeout=10) == [
            ("shell_poke", {"from": "shell", "n": [1, 2]})]
        plain = cli(initialised, "send", "shell_poke", "--tx", "send.test.bare")
        assert plain.returncode == 0, plain.stderr
        assert received.wait_for_count(2, timeout=10)[1] == ("shell_poke", None)
    finally:
        chart.stop()


def test_send_bad_input(initialised) -> None:
    key = dotenv_values(initialised / ".env")["MESH_ENCRYPTION_KEY"]
    not_json = cli(initialised, "send", "poke", "{oops", "--tx", "a.b")
    assert not_json.returncode == 2 and "PAYLOAD_JSON is not JSON" in last_line(not_json)
    a_key = cli(initialised, "send", "poke", "--tx", key)
    assert a_key.returncode == 2 and "looks like a Fernet key" in last_line(a_key)
    assert key not in a_key.stdout + a_key.stderr
    no_tx = cli(initialised, "send", "poke")
    assert no_tx.returncode == 2 and "--tx" in no_tx.stderr
    bad_signal = cli(initialised, "send", "not a signal", "--tx", "a.b")
    assert bad_signal.returncode == 2 and "SIGNAL must be a name" in last_line(bad_signal)
