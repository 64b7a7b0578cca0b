"""The demo, through the real entry point: ``python -m miros_rabbitmq demo``."""

from __future__ import annotations

import os
import re

import pytest
from cli_process import ANSI, clean_env, run_cli

from miros_rabbitmq.testing import free_port

pytestmark = pytest.mark.broker


def test_demo_without_settings_uses_guest_and_a_throwaway_key(tmp_path) -> None:
    result = run_cli(["demo", "--laps", "3"], str(tmp_path), clean_env())
    out = ANSI.sub("", result.stdout)
    assert result.returncode == 0, result.stderr + out
    assert "throwaway" in result.stderr and "guest/guest" in result.stderr
    for node in ("alpha", "bravo", "charlie"):
        # who got what from whom: every node received every ball, three laps each
        for ball in ("alpha", "bravo", "charlie"):
            for lap in (1, 2, 3):
                assert re.search(rf"{node} got BALL\({ball}, lap {lap}/3\)\s+from ", out), (
                    node, ball, lap, out)
        assert re.search(rf"{node}\s+\S\s+9\s+\S\s+9\s+\S\s+0\s+\S\s+ok", out), out
    assert "events sent 27, received 27, lost 0" in out
    assert re.search(r"latency p50 \d+\.\d+ ms", out)
    assert not os.path.exists(tmp_path / ".env")  # the throwaway key stays in memory


def test_demo_with_a_dotenv(tmp_path) -> None:
    init = run_cli(["init"], str(tmp_path), clean_env())
    assert init.returncode == 0, init.stderr
    result = run_cli(["demo", "--laps", "2", "--nodes", "4"], str(tmp_path), clean_env())
    assert result.returncode == 0, result.stderr + result.stdout
    assert "throwaway" not in result.stderr
    assert "events sent 32, received 32, lost 0" in ANSI.sub("", result.stdout)
    assert "delta" in result.stdout


def test_demo_unreachable_broker_exits_1_with_one_line(tmp_path) -> None:
    port = free_port()
    env = clean_env(RABBIT_USER="guest", RABBIT_PASSWORD="guest", RABBIT_PORT=str(port),
                    MESH_ENCRYPTION_KEY="p0V1ZJ2oV3kqxcJrY0Yb7hQ9Ml5Gh2Z9n5tYv6p3c1E=")
    result = run_cli(["demo"], str(tmp_path), env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot reach the local RabbitMQ broker at 127.0.0.1:" + str(port))


def test_demo_wrong_password_exits_1(tmp_path) -> None:
    env = clean_env(RABBIT_USER="guest", RABBIT_PASSWORD="not-the-password",
                    MESH_ENCRYPTION_KEY="p0V1ZJ2oV3kqxcJrY0Yb7hQ9Ml5Gh2Z9n5tYv6p3c1E=")
    result = run_cli(["demo", "--timeout", "15"], str(tmp_path), env)
    assert result.returncode == 1
    assert re.search(r"could not start: .*refused", result.stderr), result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_demo_incomplete_settings_exit_2(tmp_path) -> None:
    (tmp_path / ".env").write_text("RABBIT_USER=guest\nRABBIT_PASSWORD=guest\n")
    result = run_cli(["demo"], str(tmp_path), clean_env())
    assert result.returncode == 2
    assert "MESH_ENCRYPTION_KEY is not set" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["demo", "--help"], ["--help"]])
def test_help(tmp_path, args) -> None:
    result = run_cli(args, str(tmp_path), clean_env())
    assert result.returncode == 0
    assert "Usage:" in result.stdout
