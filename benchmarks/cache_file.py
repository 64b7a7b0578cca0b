"""Stress benchmark: N OS processes share one JSON cache file through CacheFileChart.

    python benchmarks/cache_file.py --procs 100
    python benchmarks/cache_file.py --procs 500

Every process runs its own CacheFileChart and, for ``--seconds`` (10),
pauses ``uniform(0, 2 * --pause)`` s (mean 0.1 s) and then does one
operation on the shared file: a write (probability ``--write-ratio``, 0.5)
of a document of 2-20 kB embedding its own SHA-256, published and not
waited for, or else a read it waits for and checks. ``--kill`` (5) processes
are SIGKILLed half-way. The file lives on another file system than the
working folder (``/dev/shm`` by default). All processes start their run at
the same instant. So that the 2 cores spend the run on the cache and not on
this harness, a worker makes its documents (and their SHA-256) before the
run, and checks its reads only once every worker has finished its run.

Two rows, measured in the same run, taking turns (``--rounds``):

* ``queue`` -- the product: lock-free reads, writers wait in the kernel;
* ``backoff`` -- the anchor: the seed design's policy (shared-lock reads,
  random re-posts up to 5 s, writer preference), ``WAIT_POLICY = "backoff"``.

Printed per row: reads (count, per second, wait p50/p99/max from publishing
CACHE_FILE_READ to receiving CACHE, the worst process's p99, reads that
waited more than 1 s and more than 10 s), writes (count, per second, wait
p50/p99/max from the chart accepting the write to holding the lock,
coalesced), bad reads (checksum mismatch, or older than the reader's own
write), lost writes (journal vs final file). Exits 1 unless every row has 0
bad reads, 0 lost writes and no hung or crashed process.

The worker is ``tests/cache_worker.py`` (the test suite runs a small version).
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS = {"queue": "queue (product)", "backoff": "backoff (seed, anchor)"}


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


def default_folder() -> Path:
    """A new folder on another file system than the working folder (/dev/shm if it is one)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(".").st_dev:
        return Path(tempfile.mkdtemp(prefix="cache_bench_", dir=shm))
    return Path(tempfile.mkdtemp(prefix="cache_bench_"))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def figures_of(report: Any, policy: str) -> dict[str, Any]:
    reads = report.values("read_latencies")
    write_waits = report.values("write_waits")
    holds = report.values("holds")
    run = max(report.run_sec, 1e-9)
    per_process_p99 = [
        percentile(r["read_latencies"], 99) for r in report.results if r["read_latencies"]
    ]
    return {
        "row": ROWS[policy],
        "startup_sec": round(report.startup_sec, 1),
        "run_sec": round(report.run_sec, 1),
        "reads": len(reads),
        "reads_per_sec": round(len(reads) / run, 1),
        "read_wait_p50_ms": round(percentile(reads, 50) * 1000, 2),
        "read_wait_p99_ms": round(percentile(reads, 99) * 1000, 1),
        "read_wait_max_ms": round(max(reads, default=float("nan")) * 1000, 1),
        "worst_process_read_p99_ms": round(max(per_process_p99, default=float("nan")) * 1000, 1),
        "reads_over_1s": sum(1 for x in reads if x > 1.0),
        "reads_over_10s_or_unanswered": sum(1 for x in reads if x > 10.0)
        + sum(1 for r in report.results if r["hung"]),
        "writes": report.total("writes"),
        "writes_per_sec": round(report.total("writes") / run, 1),
        "write_wait_p50_ms": round(percentile(write_waits, 50) * 1000, 2),
        "write_wait_p99_ms": round(percentile(write_waits, 99) * 1000, 1),
        "write_wait_max_ms": round(max(write_waits, default=float("nan")) * 1000, 1),
        "writes_over_1s": sum(1 for x in write_waits if x > 1.0),
        "lock_hold_p50_ms": round(percentile(holds, 50) * 1000, 2),
        "lock_hold_p99_ms": round(percentile(holds, 99) * 1000, 1),
        "coalesced": report.total("coalesced"),
        "bad_reads": report.total("invalid") + report.total("violations"),
        "lost_writes": report.lost_writes,
        "killed": len(report.killed),
        "hung_or_crashed": len(report.hung) + len(report.crashed),
        "errors": report.total("errors"),
        "ok": report.ok,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = [k for k in rows[0] if k != "row"]
    width = max(len(k) for k in keys)
    print(f"  {'':<{width}}  " + "  ".join(f"{r['row']:>24}" for r in rows))
    for key in keys:
        print(f"  {key:<{width}}  " + "  ".join(f"{r[key]!s:>24}" for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=100, help="worker processes (100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="run time per row (10)")
    parser.add_argument("--pause", type=float, default=0.1, help="mean pause between ops (0.1)")
    parser.add_argument("--write-ratio", type=float, default=0.5, help="share of writes (0.5)")
    parser.add_argument("--doc-min", type=int, default=2000, help="document size from (2000)")
    parser.add_argument("--doc-max", type=int, default=20000, help="document size to (20000)")
    parser.add_argument("--kill", type=int, default=5, help="processes SIGKILLed mid-run (5)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the two rows (1)")
    parser.add_argument(
        "--rows", default="queue,backoff", help="rows to run, in turn (queue,backoff)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--start-method",
        choices=("forkserver", "subprocess"),
        default="forkserver",
        help="forkserver (fast start) or one python subprocess per worker",
    )
    parser.add_argument("--dir", help="folder for the cache file (default: new, in /dev/shm)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.rows.split(",") if p.strip()]
    if not policies or any(p not in ROWS for p in policies):
        parser.error(f"--rows takes a comma-separated list of {', '.join(ROWS)}")

    worker = load_worker()
    folder = Path(args.dir) if args.dir else default_folder()
    folder.mkdir(parents=True, exist_ok=True)
    same_fs = os.stat(folder).st_dev == os.stat(".").st_dev
    print(
        f"{args.procs} processes x {args.seconds:g} s per row, pause uniform(0, "
        f"{2 * args.pause:g}) s, write ratio {args.write_ratio:g}, documents "
        f"{args.doc_min}-{args.doc_max} B, {args.kill} SIGKILLed half-way; file in {folder} "
        f"({'same' if same_fs else 'another'} file system than the working folder); "
        f"{args.start_method}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for round_no in range(args.rounds):
        for policy in policies:
            path = folder / f"bench_cache_{policy}.json"
            for leftover in folder.glob(path.name + "*"):
                leftover.unlink()
            report = worker.run_swarm(
                path,
                args.procs,
                args.seconds,
                write_ratio=args.write_ratio,
                seed=args.seed + round_no,
                read_timeout=60.0,
                start_timeout=900.0,
                finish_grace=300.0,
                start_method=args.start_method,
                stderr_path=folder / "workers.log",
                policy=policy,
                pause=args.pause,
                doc_size=(args.doc_min, args.doc_max),
                kill=args.kill,
            )
            figures = figures_of(report, policy)
            figures["round"] = round_no + 1
            figures["load_after"] = round(os.getloadavg()[0], 1)
            results[policy].append(figures)
            print(f"round {round_no + 1}, {ROWS[policy]}: done", flush=True)
            for problem in report.problems()[:5]:
                print("  problem:", problem)
    rows = [row for policy in policies for row in results[policy]]
    print_table(rows)
    if "queue" in results and "backoff" in results:
        new, old = results["queue"][-1], results["backoff"][-1]
        for key in ("read_wait_p99_ms", "worst_process_read_p99_ms", "write_wait_p99_ms"):
            if new[key] and new[key] == new[key]:
                print(f"  {key}: anchor / product = x{old[key] / new[key]:.1f}")
    if args.json:
        print(json.dumps(rows))
    ok = all(r["ok"] for r in rows)
    bad = sum(r["bad_reads"] for r in rows)
    lost = sum(r["lost_writes"] for r in rows)
    print(f"{'PASS' if ok else 'FAIL'}: {bad} bad reads, {lost} lost writes", flush=True)
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
