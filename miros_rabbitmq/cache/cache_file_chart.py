"""CacheFileChart: a statechart that reads and writes one JSON cache file.

Thousands of processes may share the file. Every write replaces the file
atomically (see :mod:`miros_rabbitmq.cache.locked_json_file`), so a read
needs no lock: it sees the whole document in place when it opened the file.
Writes take an OS lock on a side file, so they replace the file one at a
time, first come first served. The chart never blocks its own thread: a
write that finds the lock busy (or other writers before it) is handed to a
helper thread (:class:`~miros_rabbitmq.cache.lock_waiter.LockWaiter`) that
waits in the kernel; the moment the lock is its own it puts the document
(written to a temporary file beforehand) in place, lets go of the lock and
posts the chart ``file_write``.

States (the seed design's chart)::

    file_access_waiting
      CACHE_FILE_READ / CACHE_FILE_WRITE  -> queue a request, post file_read / file_write
      file_read                           -> file_read (no lock to wait for)
      file_write [exclusive lock held]    -> file_write
      file_write [lock busy]              -> the lock waiter waits for the lock, puts
                                             the document in place, posts file_write
      +-- file_accessed          (exit: release the lock, publish a read's CACHE,
            |                           start the next queued request)
            access_failed        -> file_access_waiting
            +-- file_read        (entry: read the file, post read_successful)
            |     read_successful  -> file_access_waiting
            +-- file_write       (entry: atomic write -- or the waiter's outcome --,
                  |                      post write_successful)
                  write_successful -> file_access_waiting

Requests are served in the order they arrive: one that comes in while
another waits for the lock queues behind it, so a read posted after a write
from the same process sees that write (or a later one). Several writes
queued at once are coalesced: the newest document replaces the one of the
latest write still waiting, and the others are not written (each would be
overwritten at once anyway).

``WAIT_POLICY = "backoff"`` (a class attribute, for the benchmark's anchor
row) restores the seed's policy instead: reads take the lock shared, and a
blocked ``file_read``/``file_write`` re-posts itself after a random delay
``uniform(0.001, t)``, ``t`` starting at :attr:`CacheFileChart.BACKOFF_FIRST_SEC`
and doubling with each failure up to :attr:`CacheFileChart.BACKOFF_MAX_SEC` (5 s).

Public events:

* ``CACHE_FILE_READ`` -- payload ``None`` (every CacheFileChart of the process
  answers) or the file to read: a file name (compared with the chart's
  ``file_name``), a path containing a separator (compared with the chart's
  file after resolving both), or an object/dict with a ``file_name``.
* ``CACHE_FILE_WRITE`` -- payload :class:`~miros_rabbitmq.payloads.CacheWritePayload`
  ``(json, file_name)``; ``json`` is a dict (or JSON object text). Only the
  chart whose file matches ``file_name`` (same rules) writes it.
* ``CACHE`` (published) -- :class:`~miros_rabbitmq.payloads.CacheReadPayload`
  ``(dict, last_modified, created_at, expired, file_name)``.

A cache is expired when its ``time_out_in_minutes`` is 0, or the file is
older (``last_modified``) than that many minutes, or the value is missing or
not a number. A read that found the file empty or corrupt, or could not read
it, answers with a copy of ``default_json`` and ``expired=True`` (so that
whoever owns the cache rebuilds and rewrites it -- the next write heals the
file) and logs the problem once; ``stats.repaired`` counts such reads. No
failure raises into the caller: problems are logged on the
``miros_rabbitmq.cache.cache_file_chart`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq._miros import deliver, subscribe_now
from miros_rabbitmq.cache.lock_waiter import LockWaiter
from miros_rabbitmq.cache.locked_json_file import DEFAULT_FILE_MODE, LockedJsonFile, encode_json
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.payloads import CacheReadPayload
from miros_rabbitmq.wire.names import CACHE_FILE

__all__ = [
    "CacheFileChart",
    "CacheFileStats",
    "DEFAULT_CACHE_FILE",
    "DEFAULT_CACHE_JSON",
    "cache_expired",
]

logger = logging.getLogger(__name__)

#: File used when ``file_path`` is None (in the working folder), as in the seed.
DEFAULT_CACHE_FILE = CACHE_FILE
#: Contents of a new cache file when ``default_json`` is None: empty and expired.
DEFAULT_CACHE_JSON: dict[str, Any] = {"time_out_in_minutes": 0}

# make sure every signal this chart compares against exists
for _name in (
    "CACHE_FILE_READ",
    "CACHE_FILE_WRITE",
    "CACHE",
    "file_read",
    "file_write",
    "read_successful",
    "write_successful",
    "access_failed",
):
    signals.append(_name)
del _name


def cache_expired(
    document: Mapping[str, Any], last_modified: float, now: float | None = None
) -> bool:
    """True if a cache written at ``last_modified`` (epoch s) is stale at ``now``.

    Expired when ``time_out_in_minutes`` is 0 (or negative), missing or not a
    number, or when the file is older than that many minutes.
    """
    timeout = document.get("time_out_in_minutes")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        return True
    if now is None:
        now = time.time()
    return (now - last_modified) > timeout * 60.0


@dataclass
class CacheFileStats:
    """Counters of one chart, updated by its thread (read them from anywhere)."""

    reads: int = 0  #: CACHE events published
    writes: int = 0  #: documents written
    repaired: int = 0  #: reads answered with the default (empty/corrupt/unreadable file)
    errors: int = 0  #: failed reads and writes, bad write payloads
    retries: int = 0  #: times an access found the lock busy (and waited or re-posted)
    ignored: int = 0  #: requests addressed to another file
    coalesced: int = 0  #: writes replaced by a newer write before they were written
    #: ``st_mtime`` of the last document this chart wrote
    last_write_mtime: float | None = None
    #: seconds from each request's arrival to its access (lock held, or a read starting)
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=10000))
    #: the same for reads only, and for writes only (latest 10000 each)
    read_waits: deque[float] = field(default_factory=lambda: deque(maxlen=10000))
    write_waits: deque[float] = field(default_factory=lambda: deque(maxlen=10000))
    #: seconds the lock was held for each access (latest 10000)
    holds: deque[float] = field(default_factory=lambda: deque(maxlen=10000))


@dataclass
class _Request:
    """One CACHE_FILE_READ/WRITE on its way to the file."""

    kind: str  # "read" or "write"
    data: bytes | None  # encoded document for a write
    arrived: float  # time.monotonic() when the chart accepted it
    failures: int = 0
    started: bool = False  # in file_accessed (a write's data is final from then on)
    error: OSError | None = None  # the lock waiter could not wait
    staged: str | None = None  # a write's temporary file, written before taking the lock
    locked_at: float | None = None  # time.monotonic() when the lock waiter got the lock
    # the lock waiter puts a waiting write's staged file in place the moment it
    # holds the lock; ``guard`` keeps coalescing away from a write being committed
    guard: threading.Lock = field(default_factory=threading.Lock)
    committing: bool = False
    outcome: float | Exception | None = None  # the waiter's commit: st_mtime, or the error


# ---------------------------------------------------------------------------
# states (flat miros state functions, instrumented with spy_on)
# ---------------------------------------------------------------------------
@spy_on
def file_access_waiting(chart: CacheFileChart, e: Event) -> int:
    status = return_status.UNHANDLED
    if e.signal == signals.ENTRY_SIGNAL:
        status = return_status.HANDLED
    elif e.signal == signals.CACHE_FILE_READ:
        chart._accept_read(e)
        status = return_status.HANDLED
    elif e.signal == signals.CACHE_FILE_WRITE:
        chart._accept_write(e)
        status = return_status.HANDLED
    elif e.signal == signals.file_read:
        if chart._try_access(e, write=False):
            status = chart.trans(file_read)
        else:
            status = return_status.HANDLED
    elif e.signal == signals.file_write:
        if chart._try_access(e, write=True):
            status = chart.trans(file_write)
        else:
            status = return_status.HANDLED
    else:
        chart.temp.fun = chart.top
        status = return_status.SUPER
    return status


@spy_on
def file_accessed(chart: CacheFileChart, e: Event) -> int:
    status = return_status.UNHANDLED
    if e.signal == signals.ENTRY_SIGNAL:
        status = return_status.HANDLED
    elif e.signal == signals.EXIT_SIGNAL:
        chart._release_access()
        status = return_status.HANDLED
    elif e.signal == signals.access_failed:
        status = chart.trans(file_access_waiting)
    else:
        chart.temp.fun = file_access_waiting
        status = return_status.SUPER
    return status


@spy_on
def file_read(chart: CacheFileChart, e: Event) -> int:
    status = return_status.UNHANDLED
    if e.signal == signals.ENTRY_SIGNAL:
        ok = chart._read_file()
        chart.post_lifo(Event(signal=signals.read_successful if ok else signals.access_failed))
        status = return_status.HANDLED
    elif e.signal == signals.read_successful:
        status = chart.trans(file_access_waiting)
    else:
        chart.temp.fun = file_accessed
        status = return_status.SUPER
    return status


@spy_on
def file_write(chart: CacheFileChart, e: Event) -> int:
    status = return_status.UNHANDLED
    if e.signal == signals.ENTRY_SIGNAL:
        ok = chart._write_request()
        chart.post_lifo(Event(signal=signals.write_successful if ok else signals.access_failed))
        status = return_status.HANDLED
    elif e.signal == signals.write_successful:
        status = chart.trans(file_access_waiting)
    else:
        chart.temp.fun = file_accessed
        status = return_status.SUPER
    return status


class CacheFileChart(ActiveObject):
    """Read and write one JSON cache file on behalf of a whole process.

    ``CacheFileChart(file_path=None, live_trace=None, live_spy=None,
    default_json=None, *, mode=0o600)``

    * ``file_path``: the cache file; default ``./.miros_rabbitmq_cache.json``.
      The chart's name (in traces) is the file's base name.
    * ``live_trace`` / ``live_spy``: True to print the chart's trace/spy
      lines live, or a callable that receives each line.
    * ``default_json``: JSON object text or a dict: the contents of a new
      file and the answer for an empty or corrupt one. Default
      ``{"time_out_in_minutes": 0}`` (empty and expired). Raises
      :class:`~miros_rabbitmq.errors.ConfigurationError` if it is not a JSON
      object.
    * ``mode``: permission bits of a cache file the chart creates.

    The chart starts itself, creates the file if it is missing, and
    subscribes to ``CACHE_FILE_READ`` and ``CACHE_FILE_WRITE`` before the
    constructor returns. Call :meth:`stop` when done with it.
    """

    #: "queue": lock-free reads, writers wait in the kernel (a helper thread);
    #: "backoff": the seed's policy (shared-lock reads, random re-posts), kept
    #: for the benchmark's anchor row
    WAIT_POLICY = "queue"
    #: backoff policy: first upper bound of the random re-post delay (s)
    BACKOFF_FIRST_SEC = 0.01
    #: backoff policy: the bound is multiplied by this after each further failure
    BACKOFF_GROWTH = 2.0
    #: backoff policy: the bound never exceeds this (s)
    BACKOFF_MAX_SEC = 5.0

    def __init__(
        self,
        file_path: str | os.PathLike[str] | None = None,
        live_trace: bool | Callable[[str], Any] | None = None,
        live_spy: bool | Callable[[str], Any] | None = None,
        default_json: str | bytes | Mapping[str, Any] | None = None,
        *,
        mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        if file_path is None:
            file_path = DEFAULT_CACHE_FILE
        self.file_path = os.path.abspath(os.fspath(file_path))
        self.file_name = os.path.basename(self.file_path)
        super().__init__(name=self.file_name)

        if default_json is None:
            default_json = DEFAULT_CACHE_JSON
        try:
            self.file = LockedJsonFile(self.file_path, default_json, mode=mode)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"default_json for {self.file_name}: {error}") from error
        self.default_json: dict[str, Any] = self.file.default

        self.stats = CacheFileStats()
        self._request: _Request | None = None  # the request being served
        self._backlog: deque[_Request] = deque()  # requests that arrived meanwhile
        self._retry_timer: str | None = None  # miros id of the pending re-post (backoff)
        if self.WAIT_POLICY not in ("queue", "backoff"):
            raise ConfigurationError(f"WAIT_POLICY must be 'queue' or 'backoff', not {self.WAIT_POLICY!r}")
        self._waiter = LockWaiter(self.file, f"{self.file_name}.lock_waiter", self._lock_held)
        self._locked_at = 0.0  # time.monotonic() when the lock was taken
        self._sync_folder = False  # a rename awaits the folder's fsync
        self._answer: CacheReadPayload | None = None  # a read's answer, published on unlock
        self._last_problem = ""

        try:
            self.file.ensure_exists()
        except OSError as error:
            self._problem("create", "cannot create cache file %s: %s", self.file_path, error)

        self._set_instrumentation(live_trace, live_spy)
        if self.WAIT_POLICY == "queue":
            self._waiter.start()
        self.start_at(file_access_waiting)
        # Subscribe with the chart already running, straight into the active
        # fabric: a CACHE_FILE_READ published as soon as this constructor
        # returns is then seen. (ActiveObject.subscribe would skip it once any
        # other chart of the process has subscribed to the same signal.)
        subscribe_now(self, *("CACHE_FILE_READ", "CACHE_FILE_WRITE"))

    # ---------------------------------------------------------------- public
    @classmethod
    def retry_delay(cls, failures: int) -> float:
        """The random delay before retry number ``failures`` (1, 2, ...)."""
        bound = cls.BACKOFF_FIRST_SEC * cls.BACKOFF_GROWTH ** max(0, failures - 1)
        bound = min(bound, cls.BACKOFF_MAX_SEC)
        return random.uniform(0.001, max(bound, 0.001))

    @property
    def pending(self) -> int:
        """Requests accepted and not yet served (the current one included)."""
        return len(self._backlog) + (1 if self._request is not None else 0)

    def stop(self) -> None:
        """Stop the chart thread and its lock waiter, and drop the lock.

        A lock waiter that another process's lock keeps waiting ends as soon
        as the kernel wakes it, letting go of the lock at once. (Backoff
        policy: a cancelled re-post timer thread never posts; it ends at its
        next wake-up, at most ``BACKOFF_MAX_SEC`` later.)
        """
        super().stop()
        self._waiter.stop()
        self._retry_timer = None
        for request in [self._request, *self._backlog]:
            if request is not None and request.staged is not None:
                self.file.discard(request.staged)
                request.staged = None
        self._request = None
        self._answer = None
        self._backlog.clear()
        self.file.close()

    # ------------------------------------------------------- used by states
    def _accept_read(self, e: Event) -> None:
        if not self._addressed_to_me(e.payload, default=True):
            self.stats.ignored += 1
            return
        self._enqueue(_Request("read", None, time.monotonic()))

    def _accept_write(self, e: Event) -> None:
        payload = e.payload
        if isinstance(payload, Mapping):
            target, document = payload.get("file_name"), payload.get("json")
        else:
            target, document = getattr(payload, "file_name", None), getattr(payload, "json", None)
        if not self._addressed_to_me(target, default=False):
            self.stats.ignored += 1
            return
        try:
            if isinstance(document, (str, bytes, bytearray)):
                document = json.loads(document)
            if not isinstance(document, Mapping):
                raise TypeError(f"expected a JSON object, got {type(document).__name__}")
            data = encode_json(document)
        except (TypeError, ValueError) as error:
            self.stats.errors += 1
            logger.error("%s: CACHE_FILE_WRITE ignored, bad payload: %s", self.file_name, error)
            return
        self._enqueue(_Request("write", data, time.monotonic()))

    def _enqueue(self, request: _Request) -> None:
        if request.kind == "write" and self._coalesce(request):
            return
        if self._request is None and not self._backlog:
            self._begin(request, lifo=False)
        else:
            self._backlog.append(request)
            self.scribble(f"queued {request.kind} behind {self.pending - 1} request(s)")

    def _coalesce(self, request: _Request) -> bool:
        """Give the newest document to the latest write still waiting; True if one took it.

        Only a write that has not reached the file yet can take it, and only
        the latest one, so writes stay in order and every read queued after
        any of them sees the newest document (or a later one).
        """
        latest: _Request | None = None
        for queued in reversed(self._backlog):
            if queued.kind == "write":
                latest = queued
                break
        if latest is None and self._request is not None:
            current = self._request
            if current.kind == "write" and not current.started:
                latest = current
        if latest is None:
            return False
        staged: str | None = None
        if self.WAIT_POLICY == "queue":
            assert request.data is not None
            try:
                staged = self.file.stage(request.data)  # ready for the lock waiter
            except OSError:
                staged = None  # staged again under the lock, where errors are reported
        with latest.guard:
            if latest.committing:  # too late: the lock waiter is putting it in place
                if staged is not None:
                    self.file.discard(staged)
                return False
            old, latest.staged, latest.data = latest.staged, staged, request.data
        if old is not None:
            self.file.discard(old)
        self.stats.coalesced += 1
        return True

    def _begin(self, request: _Request, lifo: bool) -> None:
        self._request = request
        signal = signals.file_read if request.kind == "read" else signals.file_write
        event = Event(signal=signal, payload=request)
        if lifo:
            self.post_lifo(event)
        else:
            self.post_fifo(event)

    def _try_access(self, e: Event, write: bool) -> bool:
        """Guard of file_read/file_write: True when the file may be accessed now.

        Queue policy: a read always may (no lock); a write may once this
        chart holds the exclusive lock, else the lock waiter waits for it and
        posts the event again. Backoff policy: take the lock (shared for a
        read) or re-post the event after a random delay.
        """
        if self._retry_timer is not None:
            # the one-shot timer has fired; drop miros's record of it
            self.cancel_event(self._retry_timer)
            self._retry_timer = None
        request = e.payload
        if not isinstance(request, _Request) or request is not self._request:
            return False  # stale internal event (should not happen)
        if request.error is not None:
            error, request.error = request.error, None
            self._problem("lock", "cannot lock %s: %s", self.file.lock_path, error)
            self._fail_request(request)
            return False
        queue_policy = self.WAIT_POLICY == "queue"
        if queue_policy and (not write or request.outcome is not None):
            acquired = True  # a read needs no lock; the lock waiter has written this one
        else:
            try:
                if write and queue_policy and request.staged is None:
                    assert request.data is not None
                    request.staged = self.file.stage(request.data)
                if write and queue_policy:
                    acquired = self.file.try_lock_in_turn()
                else:
                    acquired = self.file.try_lock(shared=not write)
            except OSError as error:
                self._problem("lock", "cannot lock %s: %s", self.file.lock_path, error)
                self._fail_request(request)
                return False
        if acquired:
            now = time.monotonic()
            self._locked_at = request.locked_at or now
            wait = self._locked_at - request.arrived
            self.stats.waits.append(wait)
            (self.stats.write_waits if write else self.stats.read_waits).append(wait)
            request.started = True
            return True
        request.failures += 1
        self.stats.retries += 1
        if queue_policy:
            self._waiter.submit(Event(signal=e.signal, payload=request))
            return False
        if self.file.writer_waiting:
            # we are first in line and new readers stand back: the lock frees
            # as soon as the current readers finish, so look again soon
            delay = self.retry_delay(1)
        else:
            delay = self.retry_delay(request.failures)
        self._retry_timer = self.post_fifo(
            Event(signal=e.signal, payload=request),
            period=delay,
            times=1,
            deferred=True,
        )
        return False

    def _lock_held(self, event: Event, error: OSError | None) -> None:
        """Lock waiter thread: the lock is ours (or waiting failed); wake the chart.

        Holding the lock, the waiter puts the staged document in place at
        once and lets go of the lock, then posts the chart ``file_write``;
        the chart's ``file_write`` entry reports the outcome. Handing the
        lock over to the chart's thread first would keep every writer behind
        us waiting for two more thread wake-ups (measured: at 500 processes
        that doubled the time the lock was held).
        """
        request: _Request = event.payload
        if error is not None:
            request.error = error
            self.post_fifo(event)
            return
        request.locked_at = time.monotonic()
        with request.guard:
            request.committing = True
            staged, request.staged = request.staged, None
        try:
            assert request.data is not None
            if staged is None:
                staged = self.file.stage(request.data)
            request.outcome = self.file.commit(staged)
            self._committed(request)
        except Exception as problem:  # reported by the chart's file_write entry
            request.outcome = problem
        finally:
            self.file.unlock()
            self.stats.holds.append(time.monotonic() - request.locked_at)
        self.post_fifo(event)

    def _committed(self, request: _Request) -> None:
        """Called with the exclusive lock held, right after ``request``'s document was put in place.

        Does nothing; a hook for tests and benchmarks (a journal of the order
        of replacement).
        """

    def _read_file(self) -> bool:
        """Entry of file_read: read the file; the answer is published once the lock is free."""
        try:
            contents = self.file.read()
        except Exception as error:  # OSError, or a bug: never kill the chart's thread
            self._problem("read", "cannot read %s: %r", self.file_path, error)
            self._answer = self._default_answer()
            return False
        expired = contents.repaired or cache_expired(contents.dict, contents.last_modified)
        if contents.repaired:
            self.stats.repaired += 1
        else:
            self._last_problem = ""
        self._answer = CacheReadPayload(
            dict=contents.dict,
            last_modified=contents.last_modified,
            created_at=contents.created_at,
            expired=expired,
            file_name=self.file_name,
        )
        return True

    def _write_request(self) -> bool:
        request = self._request
        assert request is not None and request.data is not None
        staged, request.staged = request.staged, None
        try:
            if isinstance(request.outcome, Exception):
                raise request.outcome
            if request.outcome is not None:  # the lock waiter has put it in place
                self.stats.last_write_mtime = request.outcome
            else:
                if staged is None:
                    staged = self.file.stage(request.data)
                self.stats.last_write_mtime = self.file.commit(staged)
                self._committed(request)
            self._sync_folder = True
        except Exception as error:  # OSError, or a bug: never kill the chart's thread
            self.stats.errors += 1
            self._problem("write", "cannot write %s: %r", self.file_path, error)
            return False
        self.stats.writes += 1
        self._last_problem = ""
        return True

    def _release_access(self) -> None:
        """Exit of file_accessed: unlock, publish a read's answer, start the next request."""
        locked = self.file.locked
        self.file.unlock()
        if locked:
            self.stats.holds.append(time.monotonic() - self._locked_at)
        if self._sync_folder:
            # durability of the rename needs no lock: others need not wait for it
            self._sync_folder = False
            self.file.sync_folder()
        self._request = None
        self._publish_answer()
        self._start_next()

    def _publish_answer(self) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            self.stats.reads += 1
            # published straight to the subscribers: two fewer thread wake-ups per read
            deliver(self, Event(signal=signals.CACHE, payload=answer))

    def _start_next(self) -> None:
        if self._request is None and self._backlog:
            # to the front of the queue: it arrived before anything queued now
            self._begin(self._backlog.popleft(), lifo=True)

    def _fail_request(self, request: _Request) -> None:
        """Finish a request that cannot get at the file at all."""
        self.file.unlock()  # whatever part of the lock (queue place, intent) we got
        if request.staged is not None:
            self.file.discard(request.staged)
            request.staged = None
        if request.kind == "read":
            self._answer = self._default_answer()
        else:
            self.stats.errors += 1
        self._request = None
        self._publish_answer()
        self._start_next()

    def _default_answer(self) -> CacheReadPayload:
        """The answer to a read that could not read the file: the default, expired."""
        self.stats.repaired += 1
        return CacheReadPayload(
            dict=json.loads(json.dumps(self.default_json)),
            last_modified=0.0,
            created_at=0.0,
            expired=True,
            file_name=self.file_name,
        )

    # ---------------------------------------------------------------- helpers
    def _addressed_to_me(self, target: object, default: bool) -> bool:
        if isinstance(target, Mapping):
            target = target.get("file_name")
        elif target is not None and not isinstance(target, (str, os.PathLike)):
            target = getattr(target, "file_name", None)
        if target is None:
            return default
        try:
            name = os.fspath(target)
            if not isinstance(name, str):
                return False
            if name == self.file_path or name == self.file.path:
                return True  # our own path, as given or resolved: no realpath's lstat calls
            if os.sep in name or (os.altsep is not None and os.altsep in name):
                return os.path.realpath(name) == self.file.path
        except (TypeError, ValueError, OSError):
            return False  # not a usable file name: not addressed to us
        return name == self.file_name

    def _problem(self, kind: str, message: str, *args: object) -> None:
        """Log a problem at ERROR once, and its repetitions at DEBUG."""
        key = kind + ":" + message % args
        log = logger.debug if key == self._last_problem else logger.error
        self._last_problem = key
        log("%s: " + message, self.file_name, *args)

    def _set_instrumentation(
        self,
        live_trace: bool | Callable[[str], Any] | None,
        live_spy: bool | Callable[[str], Any] | None,
    ) -> None:
        if callable(live_trace):
            self.register_live_trace_callback(live_trace)
            live_trace = True
        if callable(live_spy):
            self.register_live_spy_callback(live_spy)
            live_spy = True
        self.live_trace = bool(live_trace)
        self.live_spy = bool(live_spy)
