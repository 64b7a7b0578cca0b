"""The mesh benchmarks still run and print what the README quotes (tiny sizes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def bench_env(mesh_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **mesh_env}


def test_latency_throughput_prints_every_row_and_the_ratios(rabbitmq_url, bench_env) -> None:
    out = run("latency_throughput.py", "--latency-events", "100", "--throughput-events", "500",
              env=bench_env)
    for line_start in ("miros-rabbitmq ", "plain pika ", "plain pika, durable",
                       "ratio (miros-rabbitmq / plain): latency p50",
                       "ratio (miros-rabbitmq / plain, durable)", "lost: miros-rabbitmq 0, plain 0"):
        assert any(line.startswith(line_start) for line in out.splitlines()), (line_start, out)


def test_latency_segments_prints_every_segment(rabbitmq_url, bench_env) -> None:
    out = run("latency_segments.py", "--events", "100", env=bench_env)
    assert "transmit() -> handler, in all" in out
    assert len([line for line in out.splitlines() if line.strip()]) == 6, out
