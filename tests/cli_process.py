"""Running ``python -m miros_rabbitmq`` in a child process with a clean environment
(used by test_cli.py and test_demo.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: what a child must not inherit from the test run: it brings its own settings
SETTING_VARIABLES = ("RABBIT_USER", "RABBIT_PASSWORD", "RABBIT_HOST", "RABBIT_PORT",
                     "MESH_ENCRYPTION_KEY", "SNOOP_TRACE_ENCRYPTION_KEY",
                     "SNOOP_SPY_ENCRYPTION_KEY", "MIROS_RABBITMQ_ENV_FILE", "NO_COLOR")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the settings, with the checkout importable, LAN scan off."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env["MIROS_RABBITMQ_LAN_DISCOVERY"] = "0"
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: str, env: dict[str, str],
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "miros_rabbitmq", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
