"""CacheFileChart and LockedJsonFile: unit, multi-process, crash and root tests.

Everything here uses real files, real OS locks and, where it says so, real
OS processes (``tests/cache_worker.py`` run with ``subprocess``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from miros import Event

from miros_rabbitmq.cache.cache_file_chart import CacheFileChart, cache_expired
from miros_rabbitmq.cache.locked_json_file import LockedJsonFile
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.payloads import CacheReadPayload, CacheWritePayload

_spec = importlib.util.spec_from_file_location(
    "cache_worker", Path(__file__).with_name("cache_worker.py")
)
assert _spec is not None and _spec.loader is not None
cache_worker = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cache_worker", cache_worker)
_spec.loader.exec_module(cache_worker)

WAIT = 10.0  # generous bound for anything that should happen "now"


# ----------------------------------------------------------------- fixtures
class Listener:
    """An instrumented miros chart subscribed to CACHE; payloads land in a queue."""

    def __init__(self) -> None:
        self.answers: queue.Queue[CacheReadPayload] = queue.Queue()
        self.stash: list[CacheReadPayload] = []
        self.chart = cache_worker._make_listener("CACHE", self.answers)

    def publish(self, signal_name: str, payload: Any = None) -> None:
        self.chart.publish(Event(signal=signal_name, payload=payload))

    def read(self, target: Any) -> None:
        self.publish("CACHE_FILE_READ", target)

    def write(self, document: Any, file_name: str) -> None:
        self.publish("CACHE_FILE_WRITE", CacheWritePayload(json=document, file_name=file_name))

    def get(self, file_name: str | None = None, timeout: float = WAIT) -> CacheReadPayload:
        """The next CACHE answer (for ``file_name`` if given); fails after ``timeout``.

        Answers for other files are kept for later calls, in order.
        """
        for index, answer in enumerate(self.stash):
            if file_name is None or answer.file_name == file_name:
                return self.stash.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no CACHE for {file_name} within {timeout} s")
            try:
                answer = self.answers.get(timeout=left)
            except queue.Empty:
                continue
            if file_name is None or answer.file_name == file_name:
                return answer
            self.stash.append(answer)

    def nothing(self, within: float) -> bool:
        """True if no CACHE arrives within ``within`` seconds."""
        if self.stash:
            return False
        try:
            self.answers.get(timeout=within)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def listener() -> Iterator[Listener]:
    subscriber = Listener()
    yield subscriber
    subscriber.chart.stop()


@pytest.fixture
def make_chart() -> Iterator[Callable[..., CacheFileChart]]:
    charts: list[CacheFileChart] = []

    def make(*args: Any, **kwargs: Any) -> CacheFileChart:
        chart = CacheFileChart(*args, **kwargs)
        charts.append(chart)
        return chart

    yield make
    for chart in charts:
        chart.stop()


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


LAN = {"addresses": ["192.168.1.75"], "amqp_urls": [], "time_out_in_minutes": 30}


# --------------------------------------------------------------- chart: I/O
def test_missing_file_is_created_from_default_json(tmp_path, make_chart, listener):
    path = tmp_path / "lan.json"
    chart = make_chart(str(path), default_json=json.dumps(LAN))
    assert json.loads(path.read_text()) == LAN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listener.read(str(path))
    answer = listener.get("lan.json")
    assert answer.dict == LAN
    assert answer.expired is False
    assert answer.file_name == "lan.json" == chart.file_name
    assert answer.last_modified == pytest.approx(path.stat().st_mtime)
    assert isinstance(answer.created_at, float)


def test_default_default_json_is_an_expired_empty_cache(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path))
    listener.read(str(path))
    answer = listener.get("c.json")
    assert answer.dict == {"time_out_in_minutes": 0}
    assert answer.expired is True


def test_write_then_read(tmp_path, make_chart, listener):
    path = tmp_path / "lan.json"
    chart = make_chart(str(path), default_json={"time_out_in_minutes": 0})
    document = dict(LAN, addresses=["10.0.0.2", "10.0.0.3"])
    listener.write(document, "lan.json")
    listener.read(None)
    answer = listener.get("lan.json")
    assert answer.dict == document
    assert json.loads(path.read_text()) == document
    assert chart.stats.writes == 1 and chart.stats.reads == 1
    assert chart.stats.last_write_mtime == pytest.approx(path.stat().st_mtime)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_accepts_json_text(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path))
    listener.write(json.dumps(LAN), "c.json")
    listener.read(str(path))
    assert listener.get("c.json").dict == LAN


def test_positional_signature_and_compat_import(tmp_path):
    from miros_rabbitmq.cache import CacheFileChart as Compat

    assert Compat is CacheFileChart
    path = tmp_path / "p.json"
    chart = Compat(str(path), False, False, '{"time_out_in_minutes": 5}')
    try:
        assert chart.name == "p.json"
        assert json.loads(path.read_text()) == {"time_out_in_minutes": 5}
    finally:
        chart.stop()


def test_default_file_path_is_in_the_working_folder(tmp_path, monkeypatch, make_chart):
    monkeypatch.chdir(tmp_path)
    chart = make_chart()
    assert chart.file_path == str(tmp_path / ".miros_rabbitmq_cache.json")
    assert (tmp_path / ".miros_rabbitmq_cache.json").exists()


@pytest.mark.parametrize("bad", ["[1, 2]", "{not json", 42])
def test_bad_default_json_is_a_configuration_error(tmp_path, bad):
    with pytest.raises(ConfigurationError):
        CacheFileChart(str(tmp_path / "x.json"), default_json=bad)
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------ chart: expiry
def test_expired_when_timeout_is_zero(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path), default_json=LAN)
    listener.write(dict(LAN, time_out_in_minutes=0), "c.json")
    listener.read(str(path))
    assert listener.get("c.json").expired is True


def test_expired_when_older_than_timeout(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path), default_json=dict(LAN, time_out_in_minutes=1))
    two_minutes_ago = time.time() - 120
    os.utime(path, (two_minutes_ago, two_minutes_ago))
    listener.read(str(path))
    answer = listener.get("c.json")
    assert answer.expired is True
    assert answer.last_modified == pytest.approx(two_minutes_ago)


def test_fresh_cache_is_not_expired(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path), default_json=dict(LAN, time_out_in_minutes=1))
    thirty_seconds_ago = time.time() - 30
    os.utime(path, (thirty_seconds_ago, thirty_seconds_ago))
    listener.read(str(path))
    assert listener.get("c.json").expired is False


@pytest.mark.parametrize(
    ("document", "age_sec", "expired"),
    [
        ({"time_out_in_minutes": 0}, 0, True),
        ({"time_out_in_minutes": 30}, 0, False),
        ({"time_out_in_minutes": 30}, 30 * 60 + 1, True),
        ({"time_out_in_minutes": 0.5}, 20, False),
        ({"time_out_in_minutes": 0.5}, 40, True),
        ({"time_out_in_minutes": -1}, 0, True),
        ({"time_out_in_minutes": "30"}, 0, True),
        ({"time_out_in_minutes": True}, 0, True),
        ({}, 0, True),
    ],
)
def test_cache_expired_rules(document, age_sec, expired):
    now = 1_700_000_000.0
    assert cache_expired(document, now - age_sec, now=now) is expired


# ---------------------------------------------------- chart: damaged files
@pytest.mark.parametrize(
    "damage",
    [b"", b"   \n", b'{"addresses": [', b"[1, 2, 3]", b"\xff\xfe", b"[" * 200_000],
    ids=["empty", "blank", "truncated", "list", "binary", "deep"],
)
def test_empty_or_corrupt_file_is_repaired_by_next_write(
    tmp_path, make_chart, listener, caplog, damage
):
    path = tmp_path / "c.json"
    path.write_bytes(damage)
    chart = make_chart(str(path), default_json=LAN)
    with caplog.at_level(logging.WARNING, logger="miros_rabbitmq"):
        listener.read(str(path))
        answer = listener.get("c.json")
        listener.read(str(path))
        listener.get("c.json")
    assert answer.dict == LAN
    assert answer.expired is True  # repaired contents are never trusted
    assert chart.stats.repaired == 2
    warnings = [r for r in caplog.records if "default contents" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per read
    assert path.read_bytes() == damage  # a read does not touch the file

    listener.write(LAN, "c.json")
    listener.read(str(path))
    healed = listener.get("c.json")
    assert healed.dict == LAN and healed.expired is False
    assert json.loads(path.read_text()) == LAN
    assert chart.stats.repaired == 2


def test_file_deleted_while_running_is_recreated(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path), default_json=LAN)
    path.unlink()
    listener.read(str(path))
    assert listener.get("c.json").dict == LAN
    assert json.loads(path.read_text()) == LAN


def test_read_failure_answers_default_and_never_raises(tmp_path, make_chart, listener, caplog):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)

    def broken_read() -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    chart.file.read = broken_read  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG, logger="miros_rabbitmq"):
        for _ in range(3):
            listener.read(str(path))
            answer = listener.get("c.json")
            assert answer.dict == LAN and answer.expired is True
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert chart.thread.is_alive()
    assert not chart.file.locked


def test_write_failure_leaves_file_intact_and_chart_running(
    tmp_path, make_chart, listener, monkeypatch
):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    before = path.read_bytes()

    def no_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_replace)
    listener.write({"time_out_in_minutes": 1, "x": 1}, "c.json")
    listener.read(str(path))
    assert listener.get("c.json").dict == LAN
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert chart.stats.errors == 1 and chart.stats.writes == 0
    listener.write({"time_out_in_minutes": 1, "x": 2}, "c.json")
    listener.read(str(path))
    assert listener.get("c.json").dict == {"time_out_in_minutes": 1, "x": 2}


@pytest.mark.parametrize(
    "payload", [{"s": {1, 2}}, {"n": float("nan")}, "[1, 2]", "{oops", None, 7]
)
def test_bad_write_payload_is_ignored(tmp_path, make_chart, listener, payload):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    listener.write(payload, "c.json")
    listener.read(str(path))
    assert listener.get("c.json").dict == LAN
    assert chart.stats.errors == 1


# ------------------------------------------------------- chart: addressing
@pytest.mark.parametrize("target", [b"c.json", 42, "bad\0name/x", ["c.json"]])
def test_odd_targets_are_not_addressed_to_anyone(tmp_path, make_chart, listener, target):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    listener.write({"time_out_in_minutes": 1}, target)
    listener.read(str(path))
    assert listener.get("c.json").dict == LAN  # the chart survived and wrote nothing
    assert chart.stats.ignored == 1 and chart.thread.is_alive()


def test_write_for_another_file_name_is_ignored(tmp_path, make_chart, listener):
    a = make_chart(str(tmp_path / "a.json"), default_json=LAN)
    b = make_chart(str(tmp_path / "b.json"), default_json=LAN)
    new = dict(LAN, addresses=["10.9.9.9"])
    listener.write(new, "a.json")
    listener.write(new, "elsewhere.json")
    listener.read(str(tmp_path / "a.json"))
    listener.read(str(tmp_path / "b.json"))
    answers = {listener.get("a.json").file_name, listener.get("b.json").file_name}
    assert answers == {"a.json", "b.json"}
    assert json.loads((tmp_path / "a.json").read_text()) == new
    assert json.loads((tmp_path / "b.json").read_text()) == LAN
    assert a.stats.writes == 1 and b.stats.writes == 0
    assert b.stats.ignored >= 2 and a.stats.ignored >= 1


def test_write_by_path_matches_only_that_file(tmp_path, make_chart, listener):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = make_chart(str(tmp_path / "one" / "c.json"), default_json=LAN)
    two = make_chart(str(tmp_path / "two" / "c.json"), default_json=LAN)
    listener.write({"time_out_in_minutes": 9}, str(tmp_path / "two" / "c.json"))
    listener.read(str(tmp_path / "two" / "c.json"))
    assert listener.get("c.json").dict == {"time_out_in_minutes": 9}
    assert one.stats.writes == 0 and two.stats.writes == 1
    assert json.loads((tmp_path / "one" / "c.json").read_text()) == LAN


def test_read_none_asks_every_chart_and_a_name_asks_one(tmp_path, make_chart, listener):
    a = make_chart(str(tmp_path / "a.json"), default_json=LAN)
    b = make_chart(str(tmp_path / "b.json"), default_json=LAN)
    listener.read(None)
    listener.get("a.json")
    listener.get("b.json")
    listener.read("b.json")
    listener.get("b.json")
    assert (a.stats.reads, b.stats.reads) == (1, 2)
    listener.read(CacheWritePayload(json={}, file_name="a.json"))  # anything with .file_name
    listener.get("a.json")
    listener.read({"file_name": str(tmp_path / "b.json")})
    listener.get("b.json")
    assert (a.stats.reads, b.stats.reads) == (2, 3)


# ----------------------------------------------------------- chart: trace
def test_live_trace_reads_like_the_seed(tmp_path, make_chart, listener):
    lines: list[str] = []
    path = tmp_path / "lan.json"
    make_chart(str(path), live_trace=lines.append, default_json=LAN)
    listener.read(str(path))
    listener.get("lan.json")
    listener.write(LAN, "lan.json")
    listener.read(str(path))
    listener.get("lan.json")
    wait_for(lambda: len(lines) >= 7)
    text = [line.strip() for line in lines if line.strip()]
    stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\] \[lan\.json\] "
    expected = [
        r"e->start_at\(\) top->file_access_waiting",
        r"e->file_read\(\) file_access_waiting->file_read",
        r"e->read_successful\(\) file_read->file_access_waiting",
        r"e->file_write\(\) file_access_waiting->file_write",
        r"e->write_successful\(\) file_write->file_access_waiting",
        r"e->file_read\(\) file_access_waiting->file_read",
        r"e->read_successful\(\) file_read->file_access_waiting",
    ]
    assert len(text) == len(expected), text
    for line, pattern in zip(text, expected, strict=True):
        assert re.fullmatch(stamp + pattern, line), line


# ------------------------------------------------------ chart: contention
class BackoffChart(CacheFileChart):
    """The seed's waiting policy (the benchmark's anchor row)."""

    WAIT_POLICY = "backoff"


def _waiter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(".lock_waiter")]


def test_an_answer_reaches_every_subscriber_and_the_spy_shows_it_published(
    tmp_path, make_chart, listener
):
    spy: list[str] = []
    path = tmp_path / "c.json"
    make_chart(str(path), default_json=LAN, live_spy=spy.append)
    second = Listener()  # another chart of the process subscribed to CACHE
    try:
        listener.read("c.json")
        assert listener.get("c.json").dict == LAN
        assert second.get("c.json").dict == LAN  # handed to each subscriber, once
        assert listener.nothing(within=0.2) and second.nothing(within=0.0)
    finally:
        second.chart.stop()
    wait_for(lambda: any("PUBLISH:(CACHE, PRIORITY:1000)" in line for line in spy))


def test_the_lock_waiter_starts_with_the_chart(tmp_path, make_chart):
    chart = make_chart(str(tmp_path / "c.json"))
    waiter = chart._waiter.thread
    assert waiter is not None and waiter.is_alive()  # ready before processes rush in
    chart.stop()
    waiter.join(WAIT)
    assert not waiter.is_alive()


def test_the_stress_check_finds_torn_and_stale_reads():
    """The swarm's own check (run after the workers' runs) is not a no-op."""
    check = cache_worker.check_reads
    rng = __import__("random").Random(3)
    first = cache_worker.make_document(7, 1, rng)
    mine = cache_worker.make_document(7, 2, rng)
    later = cache_worker.make_document(8, 1, rng)

    def read(document, last_modified, expired=False):
        return CacheReadPayload(document, last_modified, 0.0, expired, "c.json")

    problems: list[str] = []
    good = [
        ("read", read(first, 10.0), None),
        ("write", (7, 2)),
        ("read", read(mine, 11.0), 11.0),  # our own write
        ("read", read(later, 12.0), 11.0),  # a later one
    ]
    assert check(good, problems) == (0, 0, 0) and problems == []
    torn = dict(later, filler=later["filler"][:-1] + "x")
    stale_seen = ("read", read(first, 12.0), 11.0)  # seen before our write
    stale_time = ("read", read(later, 10.5), 11.0)  # put in place before our write
    bad = [*good[:2], ("read", read(torn, 12.0), 11.0), stale_seen, stale_time]
    assert check(bad, problems) == (1, 2, 0)
    assert len(problems) == 3


def test_reads_need_no_lock(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path), default_json=LAN)
    other = LockedJsonFile(str(path))  # another open file description: excludes like a process
    assert other.try_lock()  # a writer holds the lock
    try:
        listener.read(str(path))
        assert listener.get("c.json", timeout=WAIT).dict == LAN  # answered while it is held
    finally:
        other.close()


def test_blocked_writer_wakes_when_the_lock_is_released(tmp_path, make_chart, listener):
    lines: list[str] = []
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN, live_trace=lines.append)
    other = LockedJsonFile(str(path))
    assert other.try_lock()
    try:
        listener.write(dict(LAN, time_out_in_minutes=1), "c.json")
        listener.read(str(path))
        wait_for(lambda: chart.stats.retries >= 1)
        assert listener.nothing(within=0.3)  # the read waits behind the write
        assert chart.stats.retries == 1  # no polling: one wait in the kernel
        wait_for(lambda: len(_waiter_threads()) == 1)
        assert json.loads(path.read_text()) == LAN
    finally:
        other.unlock()
    released = time.monotonic()
    answer = listener.get("c.json", timeout=WAIT)
    assert time.monotonic() - released < 2.0  # woken by the kernel, not after a random delay
    assert answer.dict == dict(LAN, time_out_in_minutes=1)
    assert chart.stats.writes == 1 and chart.pending == 0
    # the live trace reads as for an unblocked write: the same events, the same states
    wait_for(lambda: len(lines) >= 5)
    transitions = [re.sub(r"^.*\] ", "", line.strip()) for line in lines if line.strip()]
    assert transitions == [
        "e->start_at() top->file_access_waiting",
        "e->file_write() file_access_waiting->file_write",
        "e->write_successful() file_write->file_access_waiting",
        "e->file_read() file_access_waiting->file_read",
        "e->read_successful() file_read->file_access_waiting",
    ]
    other.close()


def test_pending_writes_are_coalesced_in_order(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    other = LockedJsonFile(str(path))
    assert other.try_lock()

    def post(signal_name: str, payload: Any) -> None:
        # straight into the chart's FIFO queue: miros's fabric (a heap of equal
        # priorities) may reorder events published in a burst
        chart.post_fifo(Event(signal=signal_name, payload=payload))

    try:
        for minutes in range(1, 6):
            post("CACHE_FILE_WRITE", CacheWritePayload(dict(LAN, time_out_in_minutes=minutes), "c.json"))
        post("CACHE_FILE_READ", str(path))
        post("CACHE_FILE_WRITE", CacheWritePayload(dict(LAN, time_out_in_minutes=6), "c.json"))
        wait_for(lambda: chart.stats.coalesced >= 5)
        assert chart.pending == 2  # one write (the newest document), then the read
    finally:
        other.unlock()
    answer = listener.get("c.json", timeout=WAIT)
    # the read sees the writes published before it, or a later one
    assert answer.dict == dict(LAN, time_out_in_minutes=6)
    wait_for(lambda: chart.pending == 0)
    assert chart.stats.writes == 1 and chart.stats.coalesced == 5
    assert json.loads(path.read_text()) == dict(LAN, time_out_in_minutes=6)
    other.close()


def test_write_after_a_started_write_is_not_coalesced_into_it(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    listener.write(dict(LAN, time_out_in_minutes=1), "c.json")
    listener.read(str(path))
    assert listener.get("c.json").dict == dict(LAN, time_out_in_minutes=1)
    listener.write(dict(LAN, time_out_in_minutes=2), "c.json")
    listener.read(str(path))
    assert listener.get("c.json").dict == dict(LAN, time_out_in_minutes=2)
    assert chart.stats.writes == 2 and chart.stats.coalesced == 0


def test_backoff_policy_reposts_with_growing_delay_and_keeps_order(tmp_path, listener):
    path = tmp_path / "c.json"
    chart = BackoffChart(str(path), default_json=LAN)
    other = LockedJsonFile(str(path))
    assert other.try_lock()
    try:
        listener.write(dict(LAN, time_out_in_minutes=1), "c.json")
        listener.read(str(path))
        listener.write(dict(LAN, time_out_in_minutes=2), "c.json")
        listener.read(str(path))
        wait_for(lambda: chart.stats.retries >= 3)
        assert listener.nothing(within=0.2)
        assert chart.pending == 3  # the second write was coalesced into the first
        assert json.loads(path.read_text()) == LAN
        assert _waiter_threads() == []  # backoff re-posts, it does not wait in a thread
    finally:
        other.unlock()
    for _ in range(2):
        answer = listener.get("c.json", timeout=CacheFileChart.BACKOFF_MAX_SEC + WAIT)
        assert answer.dict == dict(LAN, time_out_in_minutes=2)
    assert chart.stats.writes == 1
    assert chart.pending == 0
    other.close()
    chart.stop()


def test_writer_is_not_starved_by_readers(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    reader = LockedJsonFile(path)
    late_reader = LockedJsonFile(path)
    assert reader.try_lock(shared=True)
    try:
        listener.write(dict(LAN, time_out_in_minutes=3), "c.json")
        wait_for(lambda: chart.file.writer_waiting)
        assert not late_reader.try_lock(shared=True)  # the waiting write comes first
    finally:
        reader.unlock()
    listener.read(str(path))
    answer = listener.get("c.json", timeout=2.0)  # short retries once first in line
    assert answer.dict == dict(LAN, time_out_in_minutes=3)
    for f in (reader, late_reader):
        f.close()


def test_retry_delay_bounds():
    for failures in range(1, 30):
        bound = min(
            CacheFileChart.BACKOFF_MAX_SEC,
            CacheFileChart.BACKOFF_FIRST_SEC * CacheFileChart.BACKOFF_GROWTH ** (failures - 1),
        )
        delays = [CacheFileChart.retry_delay(failures) for _ in range(200)]
        assert all(0.001 <= d <= max(bound, 0.001) for d in delays)
    assert max(CacheFileChart.retry_delay(100) for _ in range(500)) <= 5.0
    assert max(CacheFileChart.retry_delay(100) for _ in range(500)) > 2.5  # it does grow


def test_stop_while_a_write_waits_ends_the_waiter_thread(tmp_path, listener):
    path = tmp_path / "c.json"
    chart = CacheFileChart(str(path), default_json=LAN)
    other = LockedJsonFile(str(path))
    assert other.try_lock()
    listener.write(dict(LAN, time_out_in_minutes=9), "c.json")
    listener.read(str(path))
    wait_for(lambda: chart._waiter.thread is not None and chart._waiter.thread.is_alive())
    waiter = chart._waiter.thread
    assert waiter is not None
    chart.stop()
    assert not chart.thread.is_alive()
    other.unlock()  # the kernel wakes the waiter: it lets go at once and ends
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert listener.nothing(within=0.3)
    assert other.try_lock()  # the stopped chart holds nothing
    assert json.loads(path.read_text()) == LAN  # and wrote nothing
    other.close()


def test_backoff_stop_while_waiting_cancels_timers_and_releases(tmp_path, listener):
    path = tmp_path / "c.json"
    chart = BackoffChart(str(path), default_json=LAN)
    other = LockedJsonFile(str(path))
    assert other.try_lock()
    listener.read(str(path))
    wait_for(lambda: chart.stats.retries >= 2)
    chart.stop()
    assert not chart.thread.is_alive()
    assert len(chart.posted_events_queue) == 0
    other.unlock()
    assert listener.nothing(within=0.3)
    assert other.try_lock()  # the stopped chart holds nothing
    other.close()


def test_timer_bookkeeping_does_not_grow(tmp_path, listener):
    """Hundreds of re-posts must not fill miros's 500-entry posted-events deque."""

    class Impatient(CacheFileChart):
        WAIT_POLICY = "backoff"
        BACKOFF_MAX_SEC = 0.002  # retry very fast

    path = tmp_path / "c.json"
    chart = Impatient(str(path), default_json=LAN)
    other = LockedJsonFile(str(path))
    assert other.try_lock()
    try:
        listener.read(str(path))
        wait_for(lambda: chart.stats.retries >= 600, timeout=30)
        assert len(chart.posted_events_queue) <= 1
        other.unlock()
        listener.get("c.json")
    finally:
        other.close()
        chart.stop()


def test_every_rewrite_sets_the_mode(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    make_chart(str(path), default_json=LAN, mode=0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    os.chmod(path, 0o666)
    listener.write(LAN, "c.json")
    listener.read(str(path))
    listener.get("c.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --------------------------------------------------------- LockedJsonFile
def test_locked_json_file_shared_and_exclusive(tmp_path):
    path = tmp_path / "f.json"
    a, b, c = (LockedJsonFile(path, {"v": 0}) for _ in range(3))
    assert a.try_lock(shared=True) and b.try_lock(shared=True)
    assert not c.try_lock()
    a.unlock()
    assert not c.try_lock()
    b.unlock()
    assert c.try_lock()
    assert not a.try_lock(shared=True)
    assert c.try_lock()  # holding it already: still True
    c.unlock()
    for f in (a, b, c):
        f.close()


def test_locked_json_file_prefers_writers(tmp_path):
    path = tmp_path / "f.json"
    reader, writer, late_reader, other_writer = (LockedJsonFile(path) for _ in range(4))
    assert reader.try_lock(shared=True)
    assert not writer.try_lock()  # busy, but the writer is now first in line
    assert writer.writer_waiting
    assert not late_reader.try_lock(shared=True)  # readers stand back
    assert not other_writer.try_lock()  # and so do other writers
    reader.unlock()
    assert writer.try_lock() and not writer.writer_waiting
    writer.unlock()
    assert late_reader.try_lock(shared=True)
    late_reader.unlock()
    # a writer that gives up (unlock without ever locking) lets readers back in
    assert reader.try_lock(shared=True)
    assert not writer.try_lock()
    writer.unlock()
    assert late_reader.try_lock(shared=True)
    for f in (reader, writer, late_reader, other_writer):
        f.close()


def test_forked_child_does_not_inherit_the_lock(tmp_path):
    path = tmp_path / "f.json"
    holder = LockedJsonFile(path)
    assert holder.try_lock()
    pid = os.fork()
    if pid == 0:  # child: only os calls, then _exit
        code = 0
        try:
            if holder.locked:
                code = 1  # the child must not think it holds the parent's lock
            elif holder.try_lock(shared=True) or LockedJsonFile(path).try_lock():
                code = 2  # and must be excluded like any other process
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert holder.locked
    holder.unlock()
    holder.close()


def test_locked_json_file_update_and_timeout(tmp_path):
    path = tmp_path / "hosts.json"
    f = LockedJsonFile(path, {"hosts": []})
    assert f.update(lambda d: d["hosts"].append("a")) == {"hosts": ["a"]}
    assert f.update(lambda d: {"hosts": d["hosts"] + ["b"]}) == {"hosts": ["a", "b"]}
    assert json.loads(path.read_text()) == {"hosts": ["a", "b"]}
    holder = LockedJsonFile(path)
    holder.lock()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        f.update(lambda d: None, timeout=0.2)
    assert time.monotonic() - started < 2
    holder.unlock()
    with pytest.raises(ZeroDivisionError):
        f.update(lambda d: 1 / 0)
    assert json.loads(path.read_text()) == {"hosts": ["a", "b"]}
    assert not f.locked


def test_locked_json_file_update_is_exclusive_across_threads(tmp_path):
    path = tmp_path / "n.json"

    def bump(d: dict[str, Any]) -> None:
        d["n"] += 1

    def worker() -> None:
        f = LockedJsonFile(path, {"n": 0})  # one object per thread
        for _ in range(50):
            f.update(bump, timeout=30)
        f.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert json.loads(path.read_text()) == {"n": 400}


def test_locked_json_file_ensure_exists_races(tmp_path):
    path = tmp_path / "new.json"
    created: list[bool] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        created.append(LockedJsonFile(path, {"k": "v"}).ensure_exists())

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert created.count(True) == 1
    assert json.loads(path.read_text()) == {"k": "v"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json"]


def test_locked_json_file_follows_symlink_and_makes_folder(tmp_path):
    real = tmp_path / "deep" / "er" / "real.json"
    f = LockedJsonFile(real, {"a": 1})
    assert f.read().dict == {"a": 1}
    assert stat.S_IMODE((tmp_path / "deep" / "er").stat().st_mode) == 0o700
    link = tmp_path / "link.json"
    link.symlink_to(real)
    LockedJsonFile(link).write({"a": 2})
    assert link.is_symlink()
    assert json.loads(real.read_text()) == {"a": 2}


def test_locked_json_file_sweeps_stale_temp_files(tmp_path):
    path = tmp_path / "s.json"
    old = time.time() - 3600
    stale = tmp_path / ".s.json.abc123.tmp"  # a name without a time stamp
    fresh = tmp_path / ".s.json.def456.tmp"
    stamped_stale = tmp_path / f".s.json.abc124-{int(old):x}.tmp"
    stamped_fresh = tmp_path / f".s.json.def457-{int(time.time()):x}.tmp"
    # a name that claims to be new is skipped unread; one that claims to be
    # old is still removed only if its mtime agrees
    lying_old_name = tmp_path / f".s.json.abc125-{int(old):x}.tmp"
    for planted in (stale, fresh, stamped_stale, stamped_fresh, lying_old_name):
        planted.write_text("{")
    for planted in (stale, stamped_stale):
        os.utime(planted, (old, old))
    LockedJsonFile(path).write({"ok": True})
    assert not stale.exists() and not stamped_stale.exists()
    assert fresh.exists() and stamped_fresh.exists() and lying_old_name.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert leftovers == sorted(p.name for p in (fresh, stamped_fresh, lying_old_name))


def test_root_keeps_the_owner_of_a_users_file(tmp_path):
    from prereq import need_root

    need_root("only root can write another user's file")
    path = tmp_path / "u.json"
    f = LockedJsonFile(path, {"a": 1})
    f.ensure_exists()
    os.chown(path, 65534, 65534)
    f.write({"a": 2})
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert stat.S_IMODE(st.st_mode) == 0o600


# ------------------------------------------------------------ processes
def _spawn(mode: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cache_worker.worker_command(mode, *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cache_worker.worker_env(),
    )


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    result: list[bytes] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        process.kill()
        raise AssertionError(f"no line from worker within {timeout} s")
    return result[0].decode().strip()


def _assert_swarm_ok(report: Any, procs: int, log_path: Path | None = None) -> None:
    log = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
    assert report.ok, (report.problems(), log)
    assert len(report.results) == procs
    assert report.total("reads") >= procs and report.total("writes") >= 1
    assert all(r["reads"] >= 1 for r in report.results)
    assert report.total("invalid") == 0 and report.total("violations") == 0
    assert report.total("expired") == 0  # nothing was ever repaired


def _other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than the working folder (/dev/shm), else tmp_path."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(".").st_dev:
        folder = Path(tempfile.mkdtemp(prefix="cache_test_", dir=shm))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    yield from _other_file_system(tmp_path)


@pytest.mark.timeout(180)
def test_processes_share_one_file_through_sigkills(other_fs):
    """Contention with crashes, suite size: 24 processes, 5 SIGKILLed mid-run.

    Half reads, half writes of 2-20 kB documents, on another file system
    than the working folder. Behaviour only: no bad read, every read
    answered, no write lost; timings belong to benchmarks/cache_file.py.
    """
    report = cache_worker.run_swarm(
        other_fs / "shared.json",
        procs=24,
        seconds=3.0,
        write_ratio=0.5,
        pause=0.02,
        doc_size=(2000, 20000),
        kill=5,
        read_timeout=30.0,
        finish_grace=60.0,
    )
    assert len(report.killed) == 5
    _assert_swarm_ok(report, 24 - 5)
    assert report.journal_entries >= report.total("writes") >= 1
    assert report.lost_writes == 0
    assert not any(r["hung"] for r in report.results)  # every read answered


@pytest.mark.timeout(120)
def test_backoff_policy_swarm_is_correct_too(tmp_path):
    """The anchor policy of the benchmark stays correct (it is only slower)."""
    report = cache_worker.run_swarm(
        tmp_path / "shared.json", procs=8, seconds=2.0, policy="backoff", read_timeout=30.0
    )
    _assert_swarm_ok(report, 8)


@pytest.mark.timeout(120)
def test_script_workers_share_one_file(tmp_path):
    """The same with one ``python tests/cache_worker.py stress`` subprocess per worker."""
    log = tmp_path / "workers.log"
    report = cache_worker.run_swarm(
        tmp_path / "shared.json",
        procs=8,
        seconds=2.0,
        read_timeout=30.0,
        finish_grace=60.0,
        start_method="subprocess",
        stderr_path=log,
        kill=1,
    )
    assert len(report.killed) == 1
    _assert_swarm_ok(report, 7, log)


@pytest.mark.timeout(60)
def test_sigkilled_holder_releases_the_lock(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    holder = _spawn("hold", "--file", str(path))
    try:
        assert _read_line(holder, WAIT) == "LOCKED"
        chart = make_chart(str(path), default_json=LAN)
        probe = LockedJsonFile(path)
        assert not probe.try_lock(shared=True)
        before = path.read_bytes()
        listener.read(str(path))  # reads need no lock: answered while the holder lives
        answer = listener.get("c.json")
        assert cache_worker.document_valid(answer.dict)  # the half-written temp file is unseen
        assert path.read_bytes() == before
        listener.write(LAN, "c.json")
        listener.read(str(path))
        wait_for(lambda: chart.stats.retries >= 1)
        assert listener.nothing(within=0.3)  # the write waits for the lock, the read behind it
        holder.send_signal(signal.SIGKILL)
        holder.wait(WAIT)
        killed_at = time.monotonic()
        answer = listener.get("c.json", timeout=WAIT)
        assert time.monotonic() - killed_at < 2.0  # the kernel woke the waiter at once
        assert answer.dict == LAN and chart.stats.writes == 1
        assert probe.try_lock(shared=True)  # and nobody holds it now
        probe.unlock()
        probe.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.timeout(60)
def test_lock_excludes_root_even_on_a_read_only_file(tmp_path, make_chart, listener):
    """The old write-bit lock let root straight through; the OS lock does not."""
    path = tmp_path / "c.json"
    holder = _spawn("hold", "--file", str(path))
    try:
        assert _read_line(holder, WAIT) == "LOCKED"
        os.chmod(path, 0o444)
        chart = make_chart(str(path), default_json=LAN)
        listener.write(dict(LAN, time_out_in_minutes=7), "c.json")
        listener.read(str(path))
        wait_for(lambda: chart.stats.retries >= 1)
        assert listener.nothing(within=0.3)
        assert chart.stats.writes == 0
        assert not LockedJsonFile(path).try_lock()
        holder.kill()
        holder.wait(WAIT)
        answer = listener.get("c.json", timeout=WAIT)
        # root (or the owner) could write the read-only file once the lock was free;
        # every rewrite sets the chart's mode
        assert answer.dict == dict(LAN, time_out_in_minutes=7)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.timeout(60)
def test_works_as_an_ordinary_user():
    """The worker drops from root to nobody (65534) before touching the cache."""
    from prereq import need_root

    need_root("the worker drops from root to the ordinary user nobody")
    folder = Path(tempfile.mkdtemp(prefix="miros_cache_user_"))  # /tmp: nobody can reach it
    try:
        os.chmod(folder, 0o755)
        os.chown(folder, 65534, 65534)
        path = folder / "c.json"
        worker = _spawn("user", "--file", str(path), "--uid", "65534", "--gid", "65534")
        out, err = worker.communicate(timeout=30)
        line = next((x for x in out.decode().splitlines() if x.startswith("RESULT ")), None)
        assert line is not None, err.decode()[-2000:]
        result = json.loads(line[len("RESULT ") :])
        assert result["euid"] == 65534  # the chart ran as nobody
        assert result["uid"] == 65534  # and nobody created the file
        assert result["created_mode"] == 0o600 and result["mode"] == 0o600
        assert result["read"] == {"time_out_in_minutes": 30, "hosts": ["10.0.0.1"]}
        assert result["expired"] is False and result["errors"] == 0
        assert result["lock_available"] is True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,  # write no .hypothesis folder into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(document=st.dictionaries(st.text(max_size=10), _json_values, max_size=6))
def test_locked_json_file_round_trips_any_json_object(tmp_path, document):
    f = LockedJsonFile(tmp_path / "h.json", {"default": True})
    with f.locked_for(5):
        f.write(document)
        contents = f.read()
    assert contents.dict == document and contents.repaired is False
    f.close()


# -------------------------------------- planted files, modes, ownership (#13)
def _victim(tmp_path: Path) -> tuple[Path, os.stat_result]:
    victim = tmp_path / "victim"
    victim.write_text("secret")
    os.chmod(victim, 0o600)
    return victim, victim.stat()


def _unchanged(victim: Path, before: os.stat_result) -> bool:
    after = victim.stat()
    return (
        victim.read_text() == "secret"
        and (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    )


@pytest.mark.parametrize("suffix", [".lock", ".wlock"])
def test_planted_symlink_lock_file_is_refused_and_its_target_untouched(tmp_path, suffix):
    victim, before = _victim(tmp_path)
    path = tmp_path / "c.json"
    f = LockedJsonFile(path, {"a": 1})
    f.ensure_exists()
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # a user's cache: root used to chown the lock file to them
    Path(str(path) + suffix).symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        f.try_lock()
    with pytest.raises(OSError, match="symbolic link"):
        f.wait_lock()
    f.close()
    assert _unchanged(victim, before)
    assert Path(str(path) + suffix).is_symlink()


def test_dangling_symlink_lock_file_creates_nothing(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "made_by_root"
    path = tmp_path / "c.json"
    Path(str(path) + ".lock").symlink_to(target)
    f = LockedJsonFile(path)
    with pytest.raises(OSError, match="symbolic link"):
        f.try_lock()
    f.close()
    assert not target.exists() and not target.is_symlink()


@pytest.mark.parametrize("suffix", [".lock", ".wlock"])
def test_fifo_lock_file_is_refused_without_hanging(tmp_path, suffix):
    path = tmp_path / "c.json"
    fifo = Path(str(path) + suffix)
    os.mkfifo(fifo)
    f = LockedJsonFile(path)
    started = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        f.try_lock()
    f.close()
    assert time.monotonic() - started < WAIT
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_fifo_queue_file_means_no_queue_not_a_hang(tmp_path):
    path = tmp_path / "c.json"
    os.mkfifo(str(path) + ".queue")
    f = LockedJsonFile(path)
    assert f.try_lock_in_turn()  # the writers' queue is skipped, the lock still excludes
    assert not LockedJsonFile(path).try_lock()
    f.close()


def test_fifo_in_place_of_the_cache_file_is_an_error_not_a_hang(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    os.mkfifo(path)
    chart = make_chart(str(path), default_json=LAN)
    listener.read(str(path))
    answer = listener.get("c.json")
    assert answer.dict == LAN and answer.expired is True
    assert chart.thread.is_alive()


def test_hard_linked_lock_file_is_refused(tmp_path):
    victim, before = _victim(tmp_path)
    path = tmp_path / "c.json"
    os.link(victim, str(path) + ".lock")
    f = LockedJsonFile(path)
    with pytest.raises(OSError, match="hard links"):
        f.try_lock()
    f.close()
    assert _unchanged(victim, before)


def test_temporary_file_never_opens_a_planted_name(tmp_path, monkeypatch):
    from miros_rabbitmq.cache import locked_json_file

    victim, before = _victim(tmp_path)
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(locked_json_file.secrets, "token_hex", lambda n: next(names))
    monkeypatch.setattr(locked_json_file, "_temp_stamp", lambda: "6a000000")
    planted = tmp_path / ".c.json.aaaaaaaaaaaa-6a000000.tmp"
    planted.symlink_to(victim)
    path = tmp_path / "c.json"
    LockedJsonFile(path).write({"a": 2})  # O_EXCL | O_NOFOLLOW: the planted name is skipped
    assert json.loads(path.read_text()) == {"a": 2}
    assert planted.is_symlink() and _unchanged(victim, before)


def test_every_rewrite_makes_a_0666_file_0600(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"a": 1}')
    os.chmod(path, 0o666)
    f = LockedJsonFile(path)
    f.write({"a": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o666)
    f.update(lambda d: None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"a": 2}
    f.close()


def test_chart_refuses_a_planted_lock_file_and_keeps_reading(tmp_path, make_chart, listener, caplog):
    victim, before = _victim(tmp_path)
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    Path(str(path) + ".lock").symlink_to(victim)
    with caplog.at_level(logging.ERROR, logger="miros_rabbitmq"):
        listener.write(dict(LAN, time_out_in_minutes=5), "c.json")
        listener.read(str(path))
        answer = listener.get("c.json")
    assert answer.dict == LAN  # the write was refused, the read still works (no lock)
    assert chart.stats.errors == 1 and chart.thread.is_alive()
    assert any("symbolic link" in r.getMessage() for r in caplog.records)
    assert _unchanged(victim, before)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_root_never_chowns_an_existing_lock_file(tmp_path):
    from prereq import need_root

    need_root("the root-only rules of the cache file")
    path = tmp_path / "c.json"
    f = LockedJsonFile(path, {"a": 1})
    f.ensure_exists()
    os.chown(path, 65534, 65534)
    lock = Path(str(path) + ".lock")
    lock.touch()  # exists, root's
    assert f.try_lock()
    f.unlock()
    assert lock.stat().st_uid == 0  # never chowned
    f.close()
    lock.unlink()
    g = LockedJsonFile(path)
    assert g.try_lock()  # a lock file root creates now is its own new file: the cache's owner
    g.unlock()
    g.close()
    assert lock.stat().st_uid == 65534


def test_root_does_not_follow_another_users_symlink(tmp_path):
    from prereq import need_root

    need_root("the root-only rules of the cache file")
    victim, before = _victim(tmp_path)
    link = tmp_path / "c.json"
    link.symlink_to(victim)
    os.lchown(link, 65534, 65534)
    with pytest.raises(PermissionError, match="symbolic link owned by another user"):
        LockedJsonFile(link)
    with pytest.raises(PermissionError):
        CacheFileChart(str(link))
    assert _unchanged(victim, before)


@pytest.mark.timeout(60)
def test_sigkilled_writer_waiting_in_line_does_not_block_the_line(tmp_path, make_chart, listener):
    path = tmp_path / "c.json"
    chart = make_chart(str(path), default_json=LAN)
    first = LockedJsonFile(path)
    assert first.try_lock_in_turn()
    waiting = _spawn("queue", "--file", str(path))
    try:
        assert _read_line(waiting, WAIT) == "QUEUED"
        listener.write(dict(LAN, time_out_in_minutes=4), "c.json")
        wait_for(lambda: chart.stats.retries >= 1)  # in line behind the process
        listener.read(str(path))
        waiting.send_signal(signal.SIGKILL)
        waiting.wait(WAIT)
        assert listener.nothing(within=0.3)  # now right behind `first`
        first.unlock()
        assert listener.get("c.json").dict == dict(LAN, time_out_in_minutes=4)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        first.close()


def test_writers_are_served_in_order_of_arrival(tmp_path):
    path = tmp_path / "c.json"
    first, second, third = (LockedJsonFile(path) for _ in range(3))
    assert first.try_lock_in_turn()
    assert not second.try_lock_in_turn()  # in line: second
    assert not third.try_lock_in_turn()  # third
    first.unlock()
    assert not third.try_lock_in_turn()  # the lock is free, but it is second's turn
    assert second.try_lock_in_turn()
    second.unlock()
    assert third.try_lock_in_turn()
    third.unlock()
    for f in (first, second, third):
        f.close()
