"""Stress benchmark: N OS processes share one JSON cache file through CacheFileChart.

    python benchmarks/cache_file.py --procs 500 --seconds 5

Every process runs its own CacheFileChart and, for ``--seconds``, does
random operations on one shared file: a write (probability
``--write-ratio``) of a document embedding its own SHA-256 checksum, always
followed by a read answered by the chart's CACHE event. Prints reads/s and
writes/s over the whole run, the p50/p99 wait for access (request accepted
by the chart -> lock taken), the read round trip, and the number of invalid
reads. Exits 1 unless every read parsed with a matching checksum, every
process saw its own last write or a later one, none hung, and the final
file is one of the written documents.

The worker is ``tests/cache_worker.py`` (the test suite runs the same with
50 processes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_worker() -> Any:
    if "cache_worker" in sys.modules:
        return sys.modules["cache_worker"]
    spec = importlib.util.spec_from_file_location(
        "cache_worker", ROOT / "tests" / "cache_worker.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cache_worker"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=500, help="worker processes (500)")
    parser.add_argument("--seconds", type=float, default=5.0, help="run time per worker (5)")
    parser.add_argument("--write-ratio", type=float, default=0.3, help="share of writes (0.3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--start-method",
        choices=("forkserver", "subprocess"),
        default="forkserver",
        help="forkserver (fast start) or one python subprocess per worker",
    )
    parser.add_argument("--dir", help="folder for the cache file (default: a new temp folder)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)

    worker = load_worker()
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cache_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench_cache.json"
    for leftover in (path, Path(str(path) + ".lock")):
        leftover.unlink(missing_ok=True)

    print(
        f"{args.procs} processes x {args.seconds:g} s on {path} "
        f"({args.start_method}, write ratio {args.write_ratio:g}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()})",
        flush=True,
    )
    started = time.monotonic()
    report = worker.run_swarm(
        path,
        args.procs,
        args.seconds,
        write_ratio=args.write_ratio,
        seed=args.seed,
        read_timeout=120.0,
        start_timeout=600.0,
        finish_grace=300.0,
        start_method=args.start_method,
        stderr_path=folder / "workers.log",
    )
    total_sec = time.monotonic() - started

    waits = report.waits
    latencies = sorted(x for r in report.results for x in r["read_latencies"])
    holds = sorted(x for r in report.results for x in r["holds"])
    run = max(report.run_sec, 1e-9)
    figures = {
        "procs": args.procs,
        "seconds": args.seconds,
        "start_method": args.start_method,
        "startup_sec": round(report.startup_sec, 2),
        "run_sec": round(report.run_sec, 2),
        "total_sec": round(total_sec, 2),
        "reads": report.total("reads"),
        "writes": report.total("writes"),
        "reads_per_sec": round(report.total("reads") / run, 1),
        "writes_per_sec": round(report.total("writes") / run, 1),
        "wait_p50_ms": round(report.percentile(waits, 50) * 1000, 2),
        "wait_p99_ms": round(report.percentile(waits, 99) * 1000, 1),
        "wait_max_ms": round((waits[-1] if waits else float("nan")) * 1000, 1),
        "read_round_trip_p50_ms": round(report.percentile(latencies, 50) * 1000, 2),
        "read_round_trip_p99_ms": round(report.percentile(latencies, 99) * 1000, 1),
        "lock_hold_p50_ms": round(report.percentile(holds, 50) * 1000, 2),
        "lock_hold_p99_ms": round(report.percentile(holds, 99) * 1000, 1),
        "retries": report.total("retries"),
        "invalid_reads": report.total("invalid"),
        "own_write_violations": report.total("violations"),
        "errors": report.total("errors"),
        "hung": len(report.hung) + sum(1 for r in report.results if r["hung"]),
        "crashed": len(report.crashed),
        "final_file_valid": report.final_valid,
        "processes_with_no_read": sum(1 for r in report.results if r["reads"] == 0),
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
    if args.json:
        print(json.dumps(figures))
    for problem in report.problems()[:10]:
        print("  problem:", problem)
    verdict = "PASS" if report.ok else "FAIL"
    print(f"{verdict}: {figures['invalid_reads']} invalid reads", flush=True)
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
