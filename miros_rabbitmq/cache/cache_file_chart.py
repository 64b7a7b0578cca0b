"""CacheFileChart: a statechart that reads and writes one JSON cache file.

Thousands of processes may share the file. The chart takes an OS lock on a
side file before it touches the JSON (see
:mod:`miros_rabbitmq.cache.locked_json_file`), writes atomically, and never blocks
its thread waiting for the lock: a blocked access re-posts itself after a
random delay, as the seed design describes.

States::

    file_access_waiting
      CACHE_FILE_READ / CACHE_FILE_WRITE  -> queue a request, post file_read / file_write
      file_read  [shared lock taken]      -> file_read
      file_read  [lock busy]              -> re-post file_read after uniform(0.001, t)
      file_write [exclusive lock taken]   -> file_write
      file_write [lock busy]              -> re-post file_write after uniform(0.001, t)
      +-- file_accessed          (exit: release the lock, publish a read's CACHE,
            |                           start the next queued request)
            access_failed        -> file_access_waiting
            +-- file_read        (entry: read the file, post read_successful)
            |     read_successful  -> file_access_waiting
            +-- file_write       (entry: atomic write, post write_successful)
                  write_successful -> file_access_waiting

``t`` starts at :attr:`CacheFileChart.BACKOFF_FIRST_SEC` and doubles with
each failure of the same request, up to :attr:`CacheFileChart.BACKOFF_MAX_SEC`
(5 s); a writer that is already first in line (it holds the write intent
lock, so new readers stand back) keeps the first, short bound instead.
Readers take the lock shared, writers exclusive. The lock is held
exactly while the chart is in ``file_accessed``; the ``CACHE`` answer is
published right after the lock is released. Requests are served in the
order they arrive: one that comes in while another is waiting for the lock
queues behind it, so a read posted after a write from the same process sees
that write (or a later one).

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
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq._miros import subscribe_now
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
    retries: int = 0  #: times an access found the lock busy and re-posted itself
    ignored: int = 0  #: requests addressed to another file
    #: ``st_mtime`` of the last document this chart wrote
    last_write_mtime: float | None = None
    #: seconds from each request's arrival to getting the lock (latest 10000)
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=10000))
    #: seconds the lock was held for each access (latest 10000)
    holds: deque[float] = field(default_factory=lambda: deque(maxlen=10000))


@dataclass
class _Request:
    """One CACHE_FILE_READ/WRITE on its way to the file."""

    kind: str  # "read" or "write"
    data: bytes | None  # encoded document for a write
    arrived: float  # time.monotonic() when the chart accepted it
    failures: int = 0


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
        if chart._try_access(e, shared=chart.SHARED_READS):
            status = chart.trans(file_read)
        else:
            status = return_status.HANDLED
    elif e.signal == signals.file_write:
        if chart._try_access(e, shared=False):
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

    #: first upper bound of the random re-post delay after a busy lock (s)
    BACKOFF_FIRST_SEC = 0.01
    #: the bound is multiplied by this after each further failure
    BACKOFF_GROWTH = 2.0
    #: the bound never exceeds this (s)
    BACKOFF_MAX_SEC = 5.0
    #: readers share the lock (writers always take it alone)
    SHARED_READS = True

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
        self._retry_timer: str | None = None  # miros id of the pending re-post
        self._locked_at = 0.0  # time.monotonic() when the lock was taken
        self._answer: CacheReadPayload | None = None  # a read's answer, published on unlock
        self._last_problem = ""

        try:
            self.file.ensure_exists()
        except OSError as error:
            self._problem("create", "cannot create cache file %s: %s", self.file_path, error)

        self._set_instrumentation(live_trace, live_spy)
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
        """Stop the chart thread, cancel its re-post timers and drop the lock.

        A cancelled re-post timer thread never posts; it ends at its next
        wake-up (at most ``BACKOFF_MAX_SEC`` later; it is a daemon thread).
        """
        super().stop()
        self._retry_timer = None
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
        if self._request is None and not self._backlog:
            self._begin(request, lifo=False)
        else:
            self._backlog.append(request)
            self.scribble(f"queued {request.kind} behind {self.pending - 1} request(s)")

    def _begin(self, request: _Request, lifo: bool) -> None:
        self._request = request
        signal = signals.file_read if request.kind == "read" else signals.file_write
        event = Event(signal=signal, payload=request)
        if lifo:
            self.post_lifo(event)
        else:
            self.post_fifo(event)

    def _try_access(self, e: Event, shared: bool) -> bool:
        """Guard of file_read/file_write: take the lock, or re-post the event later."""
        if self._retry_timer is not None:
            # the one-shot timer has fired; drop miros's record of it
            self.cancel_event(self._retry_timer)
            self._retry_timer = None
        request = e.payload
        if not isinstance(request, _Request) or request is not self._request:
            return False  # stale internal event (should not happen)
        try:
            acquired = self.file.try_lock(shared=shared)
        except OSError as error:
            self._problem("lock", "cannot lock %s: %s", self.file.lock_path, error)
            self._fail_request(request)
            return False
        if acquired:
            self._locked_at = time.monotonic()
            self.stats.waits.append(self._locked_at - request.arrived)
            return True
        request.failures += 1
        self.stats.retries += 1
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
        try:
            self.stats.last_write_mtime = self.file.write(request.data)
        except Exception as error:  # OSError, or a bug: never kill the chart's thread
            self.stats.errors += 1
            self._problem("write", "cannot write %s: %r", self.file_path, error)
            return False
        self.stats.writes += 1
        self._last_problem = ""
        return True

    def _release_access(self) -> None:
        """Exit of file_accessed: unlock, publish a read's answer, start the next request."""
        self.file.unlock()
        self.stats.holds.append(time.monotonic() - self._locked_at)
        self._request = None
        self._publish_answer()
        self._start_next()

    def _publish_answer(self) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            self.stats.reads += 1
            self.publish(Event(signal=signals.CACHE, payload=answer))

    def _start_next(self) -> None:
        if self._request is None and self._backlog:
            # to the front of the queue: it arrived before anything queued now
            self._begin(self._backlog.popleft(), lifo=True)

    def _fail_request(self, request: _Request) -> None:
        """Finish a request that cannot get at the file at all."""
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
            name = os.fspath(target)  # type: ignore[arg-type]
            if not isinstance(name, str):
                return False
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
