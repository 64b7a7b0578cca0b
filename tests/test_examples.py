"""Every program in examples/ runs, briefly, against the local broker, and does what its header says.

Each runs as a user would start it (``python examples/NAME.py``), in a
subprocess with a clean environment (no .env: the examples then use the
local broker's guest account and a fresh key of their own).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from cli_process import ANSI, REPO, clean_env

EXAMPLES = os.path.join(REPO, "examples")


def run_example(tmp_path, name: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                          cwd=str(tmp_path), env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not ANSI.search(done.stdout), "colour codes written into a pipe"
    return done.stdout


TESTED = {"outer_inner.py", "outer_inner_factory.py", "horse_archers.py", "snoop_scribbles.py",
          "hosts_file_mesh.py", "cache_chart.py"}


def test_every_example_is_tested() -> None:
    names = {n for n in os.listdir(EXAMPLES) if n.endswith(".py") and not n.startswith("_")}
    assert names == TESTED, names ^ TESTED


def trace_names(output: str) -> set[str]:
    return set(re.findall(r"^ \[\+t\] \[[^]]+\] \[([^]]+)\]", output, re.M))


@pytest.mark.broker
@pytest.mark.parametrize("name, prefix", [("outer_inner.py", "ao"),
                                          ("outer_inner_factory.py", "fac")])
def test_outer_inner(tmp_path, name, prefix) -> None:
    output = run_example(tmp_path, name, "--duration", "7")
    followers = set(re.findall(rf"^({prefix}\d)_\w+: follows ({prefix}\d)_\w+ ", output, re.M))
    assert followers and all(a != b for a, b in followers), output[-2000:]
    # child 0 prints the trace of the charts of the other processes too
    assert len({n.split("_")[0] for n in trace_names(output)}) == 3, output[-2000:]
    assert re.search(r"e->other_to_(inner|outer)\(\) (outer->inner|inner->outer)", output)
    if "factory" in name:
        assert re.search(rf"^ \[\+s\] {prefix}0_\w+ ", output, re.M), output[-2000:]


@pytest.mark.broker
def test_horse_archers(tmp_path) -> None:
    output = run_example(tmp_path, "horse_archers.py", "--duration", "9")
    for n in range(3):
        assert f"archer{n}: the unit is mustered (3 archers)" in output, output[-2000:]
        assert f"archer{n}: round 1, the whole unit is out of arrows: retreat" in output
        others = {m for m in range(3) if m != n}
        thought = set(re.findall(rf"^archer{n} thinks archer(\d) is out_of_arrows", output, re.M))
        assert {int(m) for m in thought} == others, output[-2000:]


@pytest.mark.broker
def test_snoop_scribbles(tmp_path) -> None:
    output = run_example(tmp_path, "snoop_scribbles.py", "--duration", "4")
    scribblers = set(re.findall(r"^ \[\+t\] \[[^]]+\] \[(chart\d)_\w+\] # ", output, re.M))
    assert scribblers == {"chart0", "chart1", "chart2"}, output[-2000:]
    assert re.search(r"# noticed chart\d_\w+ at work", output)
    spies = set(re.findall(r"^ \[\+s\] (chart\d)_", output, re.M))
    assert len(spies) == 3, spies


@pytest.mark.broker
def test_hosts_file_mesh(tmp_path, extra_rabbitmq_node) -> None:
    port = urlsplit(extra_rabbitmq_node.url).port
    output = run_example(tmp_path, "hosts_file_mesh.py", "--other-port", str(port),
                         "--duration", "10")
    assert "machine a: hello from machine b" in output, output[-2000:]
    assert "machine b: hello from machine a" in output, output[-2000:]
    assert f"machine a: publishing to ['amqp://guest:******@127.0.0.1:{port}/%2F']" in output
    assert ":guest@" not in output  # passwords masked


def test_hosts_file_mesh_explains_itself_without_a_second_broker(tmp_path) -> None:
    output = run_example(tmp_path, "hosts_file_mesh.py")
    assert "give --other-port" in output and "rabbitmq-server -detached" in output


def test_cache_chart(tmp_path) -> None:
    output = run_example(tmp_path, "cache_chart.py", "--duration", "3")
    for n in (1, 2):
        summary = re.search(rf"^reader {n}: (\d+) reads, (\d+) invalid$", output, re.M)
        assert summary and int(summary[1]) > 0 and summary[2] == "0", output[-2000:]
    assert re.search(r"^reader \d read count=[1-9]\d* \(expired False\)$", output, re.M)
