"""Worker process and swarm driver for the multi-process CacheFileChart tests.

Run as a script, one OS process per worker::

    python tests/cache_worker.py stress --file F --worker-id 3 --seconds 3
    python tests/cache_worker.py hold --file F          # lock, print LOCKED, wait to be killed
    python tests/cache_worker.py queue --file F         # QUEUED behind a writer, then LOCKED
    python tests/cache_worker.py user --file F --uid 65534 --gid 65534

``stress`` prints ``READY``, waits for a line on stdin, then for ``--seconds``
does random operations through a real :class:`CacheFileChart`, pausing
``uniform(0, 2 * --pause)`` seconds between them: a write (probability
``--write-ratio``) of a document of ``--doc-min``..``--doc-max`` bytes that
embeds its own checksum (published, not waited for: the chart queues and
coalesces), or else a read answered by the chart's ``CACHE`` event. Each
read is checked: the checksum matches, and the document is this worker's
last write or one written after it. Every write the chart completes is
appended, while the lock is still held, to ``<file>.journal``: the journal
is the order in which documents replaced the file. It prints one
``RESULT {json}`` line.

:func:`run_swarm` starts N such workers, releases them together, SIGKILLs
``kill`` of them half-way, and sums up the results of the others; the test
suite and ``benchmarks/cache_file.py`` both use it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import random
import re
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TIME_OUT_IN_MINUTES = 30
INITIAL_WRITER = -1
PREPARED = 64  #: documents a stress worker makes before the run (more are made as needed)
_DOCUMENT_ID = re.compile(rb'"writer": (-?\d+),\s*"seq": (\d+),')


# --------------------------------------------------------------- documents
def checksum(document: dict[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def make_document(
    writer: int, seq: int, rng: random.Random, size_range: tuple[int, int] = (16, 2048)
) -> dict[str, Any]:
    size = rng.randint(*size_range)
    document: dict[str, Any] = {
        "writer": writer,
        "seq": seq,
        "time_out_in_minutes": TIME_OUT_IN_MINUTES,
        "addresses": [f"10.{writer % 250}.{seq % 250}.{i}" for i in range(rng.randint(0, 8))],
        "filler": rng.randbytes((size + 1) // 2).hex()[:size],  # C speed: 20 kB in µs
    }
    document["checksum"] = checksum(document)
    return document


def initial_document() -> dict[str, Any]:
    return make_document(INITIAL_WRITER, 0, random.Random(0))


def document_valid(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and isinstance(document.get("checksum"), str)
        and checksum(document) == document["checksum"]
    )


def check_reads(history: list[tuple[Any, ...]], problems: list[str]) -> tuple[int, int, int]:
    """Check a worker's reads, in order: ``(invalid, violations, expired)``.

    Invalid: the checksum does not match. A violation: a read older than the
    worker's own last write before it -- a document it had already seen
    before that write, or one put in place before it (by ``st_mtime``).
    """
    invalid = violations = expired = 0
    seen: set[tuple[int, int]] = set()
    last_write: tuple[int, int] | None = None
    seen_before_last_write: frozenset[tuple[int, int]] = frozenset()
    for entry in history:
        if entry[0] == "write":
            last_write = entry[1]
            seen_before_last_write = frozenset(seen)
            continue
        _, answer, mine = entry
        document = answer.dict
        if not document_valid(document):
            invalid += 1
            problems.append(f"invalid document read: {str(document)[:120]}")
        else:
            doc_id = (document["writer"], document["seq"])
            if last_write is not None and doc_id != last_write:
                if doc_id in seen_before_last_write:
                    violations += 1
                    problems.append(f"read {doc_id}, seen before writing {last_write}")
                elif mine is not None and answer.last_modified + 1e-6 < mine:
                    violations += 1
                    problems.append(f"read {doc_id} older than own write {last_write}")
            seen.add(doc_id)
        if answer.expired:
            expired += 1
    return invalid, violations, expired


# ------------------------------------------------------------------ worker
def _make_listener(signal_name: str, sink: queue.Queue[Any]) -> Any:
    """An instrumented ActiveObject that puts the payload of every ``signal_name`` in ``sink``."""
    from miros import ActiveObject, Event, return_status, signals, spy_on

    signals.append(signal_name)

    @spy_on
    def listening(chart: Any, e: Any) -> Any:
        if e.signal == signals[signal_name]:
            sink.put(e.payload)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    listener = ActiveObject(f"listener_{signal_name}_{os.getpid()}")
    listener.start_at(listening)
    listener._subscribe(Event(signal=signal_name), "fifo")  # registered before we return
    return listener


def chart_class(policy: str, journal: str | None) -> Any:
    """CacheFileChart with ``WAIT_POLICY = policy`` that journals its completed writes."""
    from miros_rabbitmq.cache.cache_file_chart import CacheFileChart

    class JournalingChart(CacheFileChart):
        WAIT_POLICY = policy

        _journal_fd: int | None = None

        def _committed(self, request: Any) -> None:
            if journal and request.data is not None:
                # still under the exclusive lock: journal order = replacement order.
                # Kept short (no JSON parsing, one write): it lengthens every hold.
                found = _DOCUMENT_ID.search(request.data)
                assert found is not None, "not a stress document"
                line = b"%s %s %d\n" % (found[1], found[2], os.getpid())
                if self._journal_fd is None:
                    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                    self._journal_fd = os.open(journal, flags, 0o600)
                os.write(self._journal_fd, line)

        def stop(self) -> None:
            super().stop()
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None

    return JournalingChart


def stress(args: argparse.Namespace) -> int:
    """The ``stress`` mode as a script: READY on stdout, GO on stdin, RESULT on stdout."""

    def ready() -> None:
        print("READY", flush=True)

    result = stress_body(args, ready, sys.stdin.readline)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def stress_body(
    args: Any, ready: Any, wait_for_go: Any, all_finished: Any = None
) -> dict[str, Any]:
    """One stress worker: build the charts, call ``ready()``, ``wait_for_go()``, run, report.

    ``all_finished()``, if given, returns once every worker has finished its
    run: the checks and the shutdown, which cost CPU, then wait for it, so
    they do not slow the last operations of the others.
    """
    from miros import Event, signals

    from miros_rabbitmq.payloads import CacheWritePayload

    rng = random.Random(args.seed * 1_000_003 + args.worker_id)
    answers: queue.Queue[Any] = queue.Queue()
    listener = _make_listener("CACHE", answers)
    policy = getattr(args, "policy", "queue")
    journal = getattr(args, "journal", None)
    sizes = (getattr(args, "doc_min", 16), getattr(args, "doc_max", 2048))
    pause = getattr(args, "pause", 0.0)
    chart = chart_class(policy, journal)(args.file, default_json=initial_document())
    target = chart.file_path  # address our chart only, by path

    # Documents are made before the run and reads are checked after it, so
    # that the run's CPU goes to the cache, not to this harness's SHA-256.
    prepared = [make_document(args.worker_id, n, rng, sizes) for n in range(1, PREPARED + 1)]

    ready()
    wait_for_go()

    started = time.monotonic()
    deadline = started + args.seconds
    seq = 0
    reads = 0
    hung = False
    problems: list[str] = []
    read_latencies: list[float] = []
    history: list[tuple[Any, ...]] = []  # ("write", id) and ("read", answer, own mtime)

    while True:
        if pause > 0:
            time.sleep(rng.uniform(0, 2 * pause))
        if time.monotonic() >= deadline:
            break
        if rng.random() < args.write_ratio:
            seq += 1
            if seq <= len(prepared):
                document = prepared[seq - 1]
            else:
                document = make_document(args.worker_id, seq, rng, sizes)
            history.append(("write", (args.worker_id, seq)))
            listener.publish(
                Event(
                    signal=signals.CACHE_FILE_WRITE,
                    payload=CacheWritePayload(json=document, file_name=target),
                )
            )
            if pause > 0:
                continue  # paced mode: an operation is a write or a read
        asked = time.monotonic()
        listener.publish(Event(signal=signals.CACHE_FILE_READ, payload=target))
        try:
            answer = answers.get(timeout=args.read_timeout)
        except queue.Empty:
            hung = True
            problems.append(f"no CACHE within {args.read_timeout} s")
            break
        read_latencies.append(time.monotonic() - asked)
        reads += 1
        # our chart's last write time as the read is answered (its writes come first)
        history.append(("read", answer, chart.stats.last_write_mtime))
        if time.monotonic() >= deadline:
            break

    finished = time.monotonic()
    if not hung:
        # let writes still queued reach the file before we look at the figures:
        # a read is served after every request the chart took before it
        listener.publish(Event(signal=signals.CACHE_FILE_READ, payload=target))
        with contextlib.suppress(queue.Empty):
            answers.get(timeout=args.read_timeout)
    if all_finished is not None:
        all_finished()
    invalid, violations, expired = check_reads(history, problems)
    stats = chart.stats
    result = {
        "worker_id": args.worker_id,
        "pid": os.getpid(),
        "reads": reads,
        "writes": stats.writes,
        "max_seq": seq,
        "invalid": invalid,
        "expired": expired,
        "violations": violations,
        "hung": hung,
        "errors": stats.errors,
        "repaired": stats.repaired,
        "retries": stats.retries,
        "coalesced": stats.coalesced,
        "published_writes": seq,
        "undrained": chart.pending,
        "duration": finished - started,
        "waits": [round(w, 6) for w in stats.waits],
        "read_waits": [round(w, 6) for w in stats.read_waits],
        "write_waits": [round(w, 6) for w in stats.write_waits],
        "holds": [round(w, 6) for w in stats.holds],
        "read_latencies": [round(w, 6) for w in read_latencies],
        "problems": problems[:10],
    }
    chart.stop()
    listener.stop()
    return result


def _forked_stress(options: dict[str, Any], connection: Any, go: Any, done: Any) -> None:
    """Target of a forkserver worker: same body, talking through a Pipe and two Events."""
    args = argparse.Namespace(**options)

    def all_finished() -> None:
        connection.send("FINISHED")
        done.wait(args.read_timeout + args.seconds)

    try:
        result = stress_body(
            args,
            lambda: connection.send("READY"),
            lambda: go.wait(args.start_timeout),
            all_finished,
        )
        connection.send(result)
    finally:
        connection.close()


def hold(args: argparse.Namespace) -> int:
    """Take the exclusive lock, leave a half-written temporary file, wait to be killed."""
    import tempfile

    from miros_rabbitmq.cache.locked_json_file import LockedJsonFile

    file = LockedJsonFile(args.file, initial_document())
    file.ensure_exists()
    file.lock(timeout=30)
    # what a writer killed mid-write leaves behind
    folder = os.path.dirname(file.path)
    fd, _ = tempfile.mkstemp(
        prefix="." + os.path.basename(file.path) + ".", suffix=".tmp", dir=folder
    )
    os.write(fd, b'{"writer": 99, "half')
    print("LOCKED", flush=True)
    sys.stdin.read()  # until killed (or stdin closes)
    return 0


def wait_in_line(args: argparse.Namespace) -> int:
    """Take a place in the writers' queue (QUEUED), wait for the lock (LOCKED), wait to be killed."""
    from miros_rabbitmq.cache.locked_json_file import LockedJsonFile

    file = LockedJsonFile(args.file, initial_document())
    if not file.try_lock_in_turn():
        print("QUEUED", flush=True)
        file.wait_lock()
    print("LOCKED", flush=True)
    sys.stdin.read()  # until killed (or stdin closes)
    return 0


def as_user(args: argparse.Namespace) -> int:
    """Drop to an ordinary user (when root), then create, write and read a cache."""
    from miros_rabbitmq.cache.cache_file_chart import CacheFileChart
    from miros_rabbitmq.payloads import CacheWritePayload

    answers: queue.Queue[Any] = queue.Queue()
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(args.gid)
        os.setuid(args.uid)
    from miros import Event, signals

    listener = _make_listener("CACHE", answers)
    chart = CacheFileChart(args.file, default_json={"time_out_in_minutes": 30, "hosts": []})
    created_mode = os.stat(args.file).st_mode & 0o777
    document = {"time_out_in_minutes": 30, "hosts": ["10.0.0.1"]}
    listener.publish(
        Event(
            signal=signals.CACHE_FILE_WRITE,
            payload=CacheWritePayload(json=document, file_name=chart.file_path),
        )
    )
    listener.publish(Event(signal=signals.CACHE_FILE_READ, payload=chart.file_path))
    answer = answers.get(timeout=10)
    st = os.stat(args.file)
    holder_excluded = not chart.file.try_lock()  # our own chart is idle: must succeed
    chart.file.unlock()
    result = {
        "euid": os.geteuid(),
        "created_mode": created_mode,
        "mode": st.st_mode & 0o777,
        "uid": st.st_uid,
        "read": answer.dict,
        "expired": answer.expired,
        "errors": chart.stats.errors,
        "lock_available": not holder_excluded,
    }
    chart.stop()
    listener.stop()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------- swarm
def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def worker_command(mode: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), mode, *args]


@dataclass
class SwarmReport:
    procs: int
    seconds: float
    startup_sec: float = 0.0  #: spawn until every worker was ready
    run_sec: float = 0.0  #: release until the last worker finished
    results: list[dict[str, Any]] = field(default_factory=list)
    hung: list[int] = field(default_factory=list)  #: worker ids that did not finish
    crashed: list[int] = field(default_factory=list)  #: worker ids without a RESULT
    killed: list[int] = field(default_factory=list)  #: worker ids SIGKILLed on purpose
    final_document: Any = None
    final_valid: bool = False  #: final file is the last document the journal records
    journal_entries: int = 0  #: writes that replaced the file (from the journal)
    lost_writes: int = 0  #: completed writes missing from the journal, or a wrong final file

    def total(self, key: str) -> int:
        return sum(int(r[key]) for r in self.results)

    @property
    def waits(self) -> list[float]:
        return sorted(w for r in self.results for w in r["waits"])

    def percentile(self, values: list[float], p: float) -> float:
        if not values:
            return float("nan")
        index = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
        return values[index]

    def values(self, key: str) -> list[float]:
        return sorted(w for r in self.results for w in r.get(key, []))

    @property
    def ok(self) -> bool:
        return (
            not self.hung
            and not self.crashed
            and len(self.results) == self.procs - len(self.killed)
            and self.lost_writes == 0
            and self.total("invalid") == 0
            and self.total("violations") == 0
            and self.total("errors") == 0
            and self.final_valid
            and not any(r["hung"] for r in self.results)
        )

    def problems(self) -> list[str]:
        found = [p for r in self.results for p in r["problems"]]
        if self.hung:
            found.append(f"workers hung: {self.hung}")
        if self.crashed:
            found.append(f"workers without result: {self.crashed}")
        if not self.final_valid:
            found.append(f"final file not the last journalled document: {str(self.final_document)[:200]}")
        if self.lost_writes:
            found.append(f"{self.lost_writes} lost writes")
        return found


def run_swarm(
    path: str | os.PathLike[str],
    procs: int,
    seconds: float,
    *,
    write_ratio: float = 0.3,
    seed: int = 1,
    read_timeout: float = 60.0,
    start_timeout: float = 300.0,
    finish_grace: float = 120.0,
    start_method: str = "forkserver",
    stderr_path: str | os.PathLike[str] | None = None,
    policy: str = "queue",
    pause: float = 0.0,
    doc_size: tuple[int, int] = (16, 2048),
    kill: int = 0,
) -> SwarmReport:
    """Run ``procs`` stress workers on one file for ``seconds`` and collect their results.

    ``start_method``: ``"forkserver"`` forks every worker from one clean
    server process that has already imported the package (fast: the package
    import costs about 0.4 s of CPU per process); ``"subprocess"`` starts
    ``python tests/cache_worker.py stress ...`` for each worker. Either way
    every worker is its own OS process with its own charts and threads; all
    are released together once every one of them is ready. ``kill`` workers
    (chosen at random with ``seed``) are SIGKILLed half-way through the run.
    """
    report = SwarmReport(procs=procs, seconds=seconds)
    journal = os.fspath(path) + ".journal"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    victims = sorted(random.Random(seed).sample(range(procs), min(kill, procs)))
    options = [
        {
            "file": os.fspath(path),
            "worker_id": worker_id,
            "seconds": seconds,
            "write_ratio": write_ratio,
            "seed": seed,
            "read_timeout": read_timeout,
            "start_timeout": start_timeout,
            "policy": policy,
            "journal": journal,
            "pause": pause,
            "doc_min": doc_size[0],
            "doc_max": doc_size[1],
        }
        for worker_id in range(procs)
    ]
    kill_after = seconds / 2
    if start_method == "forkserver":
        raw = _swarm_forkserver(
            report, options, start_timeout, seconds + finish_grace, victims, kill_after
        )
    elif start_method == "subprocess":
        raw = _swarm_subprocess(
            report, options, start_timeout, seconds + finish_grace, stderr_path, victims, kill_after
        )
    else:
        raise ValueError(f"unknown start_method {start_method!r}")
    report.results = [raw[i] for i in sorted(raw) if i not in report.killed]
    for worker_id in range(procs):
        if worker_id not in raw and worker_id not in report.hung + report.crashed + report.killed:
            report.crashed.append(worker_id)
    _check_final_file(report, path, journal)
    return report


def _swarm_forkserver(
    report: SwarmReport,
    options: list[dict[str, Any]],
    start_timeout: float,
    run_timeout: float,
    victims: list[int],
    kill_after: float,
) -> dict[int, dict[str, Any]]:
    import multiprocessing
    from multiprocessing.connection import wait

    here = str(Path(__file__).resolve().parent)
    for entry in (here, str(REPO_ROOT)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    sys.modules.setdefault("cache_worker", sys.modules[__name__])
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["cache_worker", "miros", "miros_rabbitmq.cache.cache_file_chart"])
    go = ctx.Event()
    done = ctx.Event()  # every worker has finished its run
    processes: dict[int, Any] = {}
    connections: dict[Any, int] = {}
    raw: dict[int, dict[str, Any]] = {}
    try:
        spawn_started = time.monotonic()
        for option in options:
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_forked_stress, args=(option, sender, go, done), daemon=True
            )
            process.start()
            sender.close()
            processes[option["worker_id"]] = process
            connections[receiver] = option["worker_id"]

        waiting = dict(connections)
        deadline = time.monotonic() + start_timeout
        while waiting and time.monotonic() < deadline:
            for receiver in wait(list(waiting), timeout=deadline - time.monotonic()):
                try:
                    receiver.recv()
                except EOFError:
                    report.crashed.append(waiting[receiver])
                del waiting[receiver]
        report.crashed.extend(waiting.values())
        report.startup_sec = time.monotonic() - spawn_started

        go_at = time.monotonic()
        go.set()
        running = {r: i for r, i in connections.items() if i not in report.crashed}
        finishing: dict[Any, int] = {}  # sent FINISHED, its result is still to come
        deadline = go_at + run_timeout
        kill_at = go_at + kill_after if victims else None
        while (running or finishing) and time.monotonic() < deadline:
            if kill_at is not None and time.monotonic() >= kill_at:
                kill_at = None
                for worker_id in victims:
                    if processes[worker_id].is_alive():
                        processes[worker_id].kill()  # SIGKILL, mid-run
                        report.killed.append(worker_id)
            if not running:
                done.set()  # all runs are over: checks and shutdown may start
            until = deadline if kill_at is None else min(deadline, kill_at)
            ready = wait([*running, *finishing], timeout=max(0.0, until - time.monotonic()))
            for receiver in ready:
                worker_id = running.pop(receiver, None)
                if worker_id is None:
                    worker_id = finishing.pop(receiver)
                try:
                    message = receiver.recv()
                except EOFError:
                    if worker_id not in report.killed:
                        report.crashed.append(worker_id)
                    continue
                if message == "FINISHED":
                    finishing[receiver] = worker_id
                else:
                    raw[worker_id] = message
        done.set()
        report.hung.extend([*running.values(), *finishing.values()])
        for worker_id, process in processes.items():
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive() and worker_id not in report.hung:
                report.hung.append(worker_id)
        report.run_sec = time.monotonic() - go_at
    finally:
        for process in processes.values():
            if process.is_alive():
                process.kill()
                process.join()
        for receiver in connections:
            receiver.close()
    return raw


def _swarm_subprocess(
    report: SwarmReport,
    options: list[dict[str, Any]],
    start_timeout: float,
    run_timeout: float,
    stderr_path: str | os.PathLike[str] | None,
    victims: list[int],
    kill_after: float,
) -> dict[int, dict[str, Any]]:
    env = worker_env()
    stderr = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    workers: dict[int, subprocess.Popen[bytes]] = {}
    selector = selectors.DefaultSelector()
    buffers: dict[int, bytes] = {}
    raw: dict[int, dict[str, Any]] = {}
    try:
        spawn_started = time.monotonic()
        for option in options:
            command = worker_command("stress")
            keys = ("file", "worker_id", "seconds", "write_ratio", "seed", "read_timeout")
            keys += ("policy", "journal", "pause", "doc_min", "doc_max")
            for key in keys:
                command += ["--" + key.replace("_", "-"), str(option[key])]
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
            )
            workers[option["worker_id"]] = process
            assert process.stdout is not None
            os.set_blocking(process.stdout.fileno(), False)
            selector.register(process.stdout, selectors.EVENT_READ, option["worker_id"])
            buffers[option["worker_id"]] = b""

        def pump(until: float, done: Any) -> None:
            while not done() and time.monotonic() < until:
                for key, _ in selector.select(timeout=max(0.0, min(1.0, until - time.monotonic()))):
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if chunk:
                        buffers[key.data] += chunk
                    else:
                        selector.unregister(key.fileobj)

        pump(
            time.monotonic() + start_timeout,
            lambda: all(b"READY\n" in b for b in buffers.values()),
        )
        report.startup_sec = time.monotonic() - spawn_started
        report.crashed.extend(i for i, b in buffers.items() if b"READY\n" not in b)

        go_at = time.monotonic()
        for process in workers.values():
            try:
                assert process.stdin is not None
                process.stdin.write(b"GO\n")
                process.stdin.close()
            except OSError:
                pass
        if victims:
            pump(go_at + kill_after, lambda: not selector.get_map())
            for worker_id in victims:
                if workers[worker_id].poll() is None:
                    workers[worker_id].kill()  # SIGKILL, mid-run
                    report.killed.append(worker_id)
        pump(go_at + run_timeout, lambda: not selector.get_map())
        for worker_id, process in workers.items():
            try:
                process.wait(timeout=max(0.1, go_at + run_timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                report.hung.append(worker_id)
        for worker_id in report.killed:
            buffers[worker_id] = b""
        report.run_sec = time.monotonic() - go_at
        for worker_id, data in buffers.items():
            for line in data.decode(errors="replace").splitlines():
                if line.startswith("RESULT "):
                    raw[worker_id] = json.loads(line[len("RESULT ") :])
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        selector.close()
        if stderr is not subprocess.DEVNULL:
            stderr.close()
    return raw


def _check_final_file(report: SwarmReport, path: str | os.PathLike[str], journal: str) -> None:
    """No write lost: the journal holds every completed write, and the file the last one.

    A SIGKILLed worker may die between its rename and its journal line: then
    the file holds a valid document of that worker that the journal lacks.
    """
    try:
        with open(path, "rb") as handle:
            report.final_document = json.loads(handle.read())
    except (OSError, ValueError) as error:
        report.final_document = repr(error)
    try:
        with open(journal, encoding="ascii") as handle:
            entries = [tuple(int(x) for x in line.split()[:2]) for line in handle if line.strip()]
    except FileNotFoundError:
        entries = []
    report.journal_entries = len(entries)
    per_writer: dict[int, int] = {}
    for writer, _ in entries:
        per_writer[writer] = per_writer.get(writer, 0) + 1
    report.lost_writes = sum(
        abs(int(r["writes"]) - per_writer.get(int(r["worker_id"]), 0)) for r in report.results
    )
    document = report.final_document
    if document_valid(document):
        final = (document["writer"], document["seq"])
        last = entries[-1] if entries else (INITIAL_WRITER, 0)
        report.final_valid = final == last or (
            final[0] in report.killed and final not in set(entries)
        )
    if not report.final_valid:
        report.lost_writes += 1


# -------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("stress")
    p.add_argument("--file", required=True)
    p.add_argument("--worker-id", type=int, required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--write-ratio", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--read-timeout", type=float, default=60.0)
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--policy", choices=("queue", "backoff"), default="queue")
    p.add_argument("--journal", default=None)
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--doc-min", type=int, default=16)
    p.add_argument("--doc-max", type=int, default=2048)
    p = sub.add_parser("hold")
    p.add_argument("--file", required=True)
    p = sub.add_parser("queue")
    p.add_argument("--file", required=True)
    p = sub.add_parser("user")
    p.add_argument("--file", required=True)
    p.add_argument("--uid", type=int, default=65534)
    p.add_argument("--gid", type=int, default=65534)
    args = parser.parse_args(argv)
    return {"stress": stress, "hold": hold, "queue": wait_in_line, "user": as_user}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
