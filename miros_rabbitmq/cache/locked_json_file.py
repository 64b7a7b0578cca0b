"""One JSON file shared safely by many processes: an OS lock and atomic writes.

This is the I/O layer under :class:`~miros_rabbitmq.cache.cache_file_chart.CacheFileChart`
and the ``hosts`` CLI; it knows nothing about miros.

Locking
    Every :class:`LockedJsonFile` locks a side file, ``<file>.lock``, in the
    same folder, with ``fcntl.flock`` (``filelock`` on platforms without
    ``fcntl``). The operating system drops the lock when its holder closes
    the descriptor or dies, however it dies (``SIGKILL`` included), and the
    lock binds root exactly as it binds everybody else: nothing depends on
    file permission bits. Readers may take the lock shared (many at once),
    writers take it exclusive. Writers are preferred: a writer that finds
    the lock busy keeps a second lock, on ``<file>.wlock``, while it waits,
    and readers stand back while that one is held, so that a steady stream
    of readers cannot starve writers. ``flock`` locks belong to an open file
    description, so two :class:`LockedJsonFile` objects exclude each other
    even inside one process (use one object per thread). In a forked child
    the inherited lock descriptors are closed at once (the parent keeps its
    lock, and it still ends when the parent dies); the child's objects open
    their own.

Writing
    :meth:`LockedJsonFile.write` never modifies the file in place: it writes
    a temporary file in the same folder (so the rename never crosses a file
    system), flushes and ``fsync``\\ s it, ``os.replace``\\ s it over the
    target and ``fsync``\\ s the folder. A reader, locked or not, sees the old
    document or the new one, never a mix. An existing file keeps its
    permission bits (and, when written by root, its owner); a new file gets
    ``mode`` (``0o600`` by default: caches hold addresses and AMQP URLs).

Reading
    :meth:`LockedJsonFile.read` returns a :class:`JsonFileContents`. A
    missing file is first created from the default document (atomically, so
    concurrent creators cannot clash); an empty file, invalid JSON or a JSON
    value that is not an object yields a copy of the default document with
    ``repaired=True``. The file itself is left as it is: the next write
    heals it.

Time stamps
    ``last_modified`` is the file's ``st_mtime``. ``created_at`` is taken
    from the file system too (``st_birthtime`` where the platform has it,
    else ``st_ctime``), so the user's JSON stays exactly the user's. Because
    every write puts a new file in place, ``created_at`` is the time the
    *current contents* were written, not the time the first version of the
    file appeared.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import random
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_FILE_MODE",
    "JsonFileContents",
    "LockedJsonFile",
]

logger = logging.getLogger(__name__)

#: Permission bits of a newly created JSON file (and of its lock file).
DEFAULT_FILE_MODE = 0o600

_TEMP_SUFFIX = ".tmp"
_STALE_TEMP_AGE_SEC = 300.0


class JsonFileContents(NamedTuple):
    """What :meth:`LockedJsonFile.read` returns."""

    #: the JSON object (a fresh copy of the default when the file was repaired)
    dict: dict[str, Any]
    #: ``st_mtime`` of the file (seconds since the epoch)
    last_modified: float
    #: ``st_birthtime`` or ``st_ctime`` of the file (seconds since the epoch)
    created_at: float
    #: True when the file was empty or not a JSON object and the default was returned
    repaired: bool


def _parse_default(default_json: str | bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn the ``default_json`` argument into a dict, or raise ValueError/TypeError."""
    if default_json is None:
        return {}
    if isinstance(default_json, Mapping):
        value: Any = dict(default_json)
    elif isinstance(default_json, (str, bytes, bytearray)):
        value = json.loads(default_json)
    else:
        raise TypeError(
            f"default_json must be a JSON object text or a dict, not {type(default_json).__name__}"
        )
    if not isinstance(value, dict):
        raise ValueError(f"default_json must hold a JSON object, not {type(value).__name__}")
    # round trip: proves the default can be written and detaches it from the caller
    return json.loads(json.dumps(value))


def encode_json(document: Mapping[str, Any]) -> bytes:
    """The bytes :meth:`LockedJsonFile.write` puts in the file for ``document``."""
    return (json.dumps(document, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _fsync_directory(path: str) -> None:
    """fsync a folder so that a rename inside it is durable; best effort."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse it
        pass
    finally:
        os.close(fd)


_lock_files: weakref.WeakSet[_LockFile] = weakref.WeakSet()


def _forget_inherited_locks() -> None:
    """In a forked child, close the lock descriptors inherited from the parent.

    A forked descriptor shares the parent's lock (flock locks belong to the
    open file description), so the child must not use it as its own, and
    keeping it open would keep the lock alive after the parent died.
    """
    for lock_file in list(_lock_files):
        lock_file.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


class _LockFile:
    """A non-blocking OS lock on one side file, shared or exclusive.

    Not thread safe on its own; :class:`LockedJsonFile` guards it.
    """

    def __init__(self, path: str, mode: int, owner_of: str) -> None:
        self.path = path
        self._mode = mode
        self._owner_of = owner_of  # the data file: root gives the lock file its owner
        self._fd: int | None = None
        self._pid = os.getpid()
        self._held = False
        self._fallback: Any = None  # filelock.FileLock where fcntl is missing
        _lock_files.add(self)

    def forget_after_fork(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # our copy only: the parent keeps its lock
        self._fd = None
        self._held = False
        self._pid = os.getpid()

    @property
    def held(self) -> bool:
        return self._held and self._pid == os.getpid()

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, self._mode)
        except PermissionError:
            # flock works on a read-only descriptor too (a lock file made by
            # another user that we may read but not write)
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            return fd
        try:
            st = os.fstat(fd)
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                # root made or opened the lock file: give it the data file's owner
                # so that the user who owns the cache can still lock it
                try:
                    data = os.stat(self._owner_of)
                except OSError:
                    data = None
                if data is not None and (st.st_uid, st.st_gid) != (data.st_uid, data.st_gid):
                    with contextlib.suppress(OSError):
                        os.fchown(fd, data.st_uid, data.st_gid)
        except OSError:  # pragma: no cover - best effort
            pass
        return fd

    def _ensure_fd(self) -> int:
        if self._pid != os.getpid():  # forked without the at-fork hook
            self.forget_after_fork()
        if self._fd is None:
            self._fd = self._open()
        return self._fd

    def try_acquire(self, shared: bool) -> bool:
        if fcntl is None:  # pragma: no cover - Windows
            return self._try_acquire_fallback()
        for _ in range(3):
            fd = self._ensure_fd()
            operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
            try:
                fcntl.flock(fd, operation)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                raise
            # The lock is ours if the path still names the file we locked;
            # someone may have deleted or replaced the lock file meanwhile.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._held = True
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            self.close()
        return False

    def _try_acquire_fallback(self) -> bool:  # pragma: no cover - Windows
        import filelock

        if self._fallback is None:
            self._fallback = filelock.FileLock(self.path, mode=self._mode)
        try:
            self._fallback.acquire(timeout=0)
        except filelock.Timeout:
            return False
        self._held = True
        return True

    def release(self) -> None:
        if not self.held:
            return
        self._held = False
        if fcntl is None:  # pragma: no cover - Windows
            self._fallback.release()
            return
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:  # pragma: no cover - closing releases it anyway
                self.close()

    def close(self) -> None:
        self._held = False
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor drops any lock on it
        self._fd = None


class LockedJsonFile:
    """A JSON object in a file that many processes read and write safely.

    ``LockedJsonFile(path, default_json=None, *, mode=0o600)``

    * ``path``: the JSON file (a symbolic link is followed: the file it points
      to is the one replaced). Its folder is created (``0o700``) if missing.
    * ``default_json``: JSON object text or a dict, used to create a missing
      file and returned in place of an empty or corrupt one. ``None`` means
      ``{}``. Raises ``ValueError``/``TypeError`` if it is not a JSON object.
    * ``mode``: permission bits of a file (and lock file) this object creates.

    Typical use::

        cache = LockedJsonFile("hosts.json", {"hosts": []})
        cache.update(lambda d: d["hosts"].append("10.0.0.7"), timeout=10)

        if cache.try_lock(shared=True):     # never blocks
            try:
                contents = cache.read()
            finally:
                cache.unlock()

    One object per thread: the lock is held by the object, not the thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        default_json: str | bytes | Mapping[str, Any] | None = None,
        *,
        mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        self.path = os.path.realpath(os.fspath(path))
        self.lock_path = self.path + ".lock"
        self.intent_path = self.path + ".wlock"
        self.default: dict[str, Any] = _parse_default(default_json)
        self.mode = mode
        self._guard = threading.RLock()
        self._lock = _LockFile(self.lock_path, mode, self.path)
        self._intent = _LockFile(self.intent_path, mode, self.path)
        self._swept = False
        self._damage_reported = False

    # ------------------------------------------------------------------ lock
    @property
    def locked(self) -> bool:
        """True while this object holds the lock (shared or exclusive)."""
        return self._lock.held

    @property
    def writer_waiting(self) -> bool:
        """True while this object has announced a write it could not start yet."""
        return self._intent.held and not self._lock.held

    def try_lock(self, *, shared: bool = False) -> bool:
        """Take the lock without waiting; True if it is now held by this object.

        ``shared=True`` takes a read lock that other readers may hold at the
        same time; the default is exclusive. Writers are preferred: a writer
        that finds the lock busy keeps an *intent* lock (``<file>.wlock``)
        until it gets the lock or calls :meth:`unlock`, and while it does, new
        readers are refused, so a stream of readers cannot starve it.
        Calling it while already holding the lock returns True and changes
        nothing. Raises ``OSError`` only for real I/O problems (the folder
        cannot be created, no permission to open the lock file, ...), never
        because the lock is busy.
        """
        with self._guard:
            if self._lock.held:
                return True
            self._make_folder()
            if shared:
                return self._no_writer_waiting() and self._lock.try_acquire(True)
            if not self._intent.held and not self._intent.try_acquire(False):
                return False  # another writer is first in line
            return self._lock.try_acquire(False)

    def _no_writer_waiting(self) -> bool:
        try:
            free = self._intent.try_acquire(True)
        except OSError:
            return True  # cannot even open the intent file: no writer preference
        if free:
            self._intent.release()
        return free

    def lock(self, timeout: float | None = None, *, shared: bool = False) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (None: forever).

        Raises ``TimeoutError`` when the time is up.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while not self.try_lock(shared=shared):
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.lock_path} still locked after {timeout} s")
                time.sleep(min(random.uniform(0.0005, pause), left))
            else:
                time.sleep(random.uniform(0.0005, pause))
            pause = min(pause * 2, 0.05)

    def unlock(self) -> None:
        """Release the lock and any write intent; does nothing if neither is held."""
        with self._guard:
            self._lock.release()
            self._intent.release()

    @contextlib.contextmanager
    def locked_for(self, timeout: float | None = None, *, shared: bool = False) -> Iterator[None]:
        """``with f.locked_for(5):`` -- :meth:`lock`, then :meth:`unlock` on the way out."""
        self.lock(timeout, shared=shared)
        try:
            yield
        finally:
            self.unlock()

    def __enter__(self) -> LockedJsonFile:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def close(self) -> None:
        """Release the lock and close the lock files' descriptors."""
        with self._guard:
            self._lock.release()
            self._lock.close()
            self._intent.release()
            self._intent.close()

    # ------------------------------------------------------------------ read
    def read(self) -> JsonFileContents:
        """Read the document; see the module text for missing/empty/corrupt files.

        Call it holding the lock (shared is enough) when the read must not
        interleave with another process's read-modify-write; the read itself
        is consistent either way because writes are atomic. Raises ``OSError``
        for real I/O problems (permission denied, ...).
        """
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                self.ensure_exists()
                continue
            try:
                st = os.fstat(fd)
                chunks = []
                while True:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
            finally:
                os.close(fd)
            return self._decode(b"".join(chunks), st)
        raise FileNotFoundError(errno.ENOENT, "cache file keeps disappearing", self.path)

    def _decode(self, data: bytes, st: os.stat_result) -> JsonFileContents:
        created_at = float(getattr(st, "st_birthtime", st.st_ctime))
        problem = ""
        value: Any = None
        if not data.strip():
            problem = "empty"
        else:
            try:
                value = json.loads(data)
            except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
                problem = f"not valid JSON ({type(error).__name__}: {error})"
            else:
                if not isinstance(value, dict):
                    problem = f"a JSON {type(value).__name__}, not an object"
        if problem:
            # one warning per spell of damage, not one per read
            log = logger.debug if self._damage_reported else logger.warning
            self._damage_reported = True
            log(
                "cache file %s is %s: using the default contents until the next write",
                self.path,
                problem,
            )
            return JsonFileContents(copy.deepcopy(self.default), st.st_mtime, created_at, True)
        self._damage_reported = False
        return JsonFileContents(value, st.st_mtime, created_at, False)

    # ----------------------------------------------------------------- write
    def ensure_exists(self) -> bool:
        """Create the file from the default document if it is missing.

        Atomic without the lock: the complete default is written to a
        temporary file which is then hard-linked to the target name, and a
        link never replaces an existing file. Returns True if this call
        created the file.
        """
        if os.path.exists(self.path):
            return False
        self._make_folder()
        temp = self._write_temp(encode_json(self.default), None)
        try:
            try:
                os.link(temp, self.path)
            except FileExistsError:
                return False
            except OSError:
                # no hard links on this file system: exclusive create in place
                # (a reader racing this may see it empty, which reads as the
                # default anyway)
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
                except FileExistsError:
                    return False
                try:
                    os.fchmod(fd, self.mode)
                    os.write(fd, encode_json(self.default))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        _fsync_directory(os.path.dirname(self.path))
        logger.info("created cache file %s from the default contents", self.path)
        return True

    def write(self, document: Mapping[str, Any] | bytes) -> float:
        """Atomically replace the file with ``document``; returns its new ``st_mtime``.

        ``document`` is a JSON-able mapping, or bytes already encoded (see
        :func:`encode_json`). Hold the exclusive lock around it so that
        writers exclude each other; the replacement is atomic regardless.
        Raises ``TypeError``/``ValueError`` for a document JSON cannot encode
        (the file is untouched) and ``OSError`` for I/O failures (the file is
        untouched and no temporary file is left behind).
        """
        data = document if isinstance(document, bytes) else encode_json(document)
        self._make_folder()
        if not self._swept:
            self._swept = True
            self._sweep_stale_temp_files()
        try:
            existing: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            existing = None
        temp = self._write_temp(data, existing)
        try:
            mtime = os.stat(temp).st_mtime
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_directory(os.path.dirname(self.path))
        return mtime

    def update(
        self,
        fn: Callable[[dict[str, Any]], dict[str, Any] | None],
        timeout: float | None = 10.0,
    ) -> dict[str, Any]:
        """Read, change and write the document under the exclusive lock.

        ``fn`` gets the current document (the default if the file is missing
        or corrupt) and either changes it in place and returns None, or
        returns the new document. Waits up to ``timeout`` seconds for the
        lock (``TimeoutError`` after that). Returns the document written.
        Exceptions raised by ``fn`` propagate; the file is then unchanged.
        """
        with self.locked_for(timeout):
            document = self.read().dict
            result = fn(document)
            if result is not None:
                document = result
            self.write(document)
            return document

    # --------------------------------------------------------------- helpers
    def _make_folder(self) -> None:
        folder = os.path.dirname(self.path)
        if folder and not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)

    def _temp_prefix(self) -> str:
        return "." + os.path.basename(self.path) + "."

    def _write_temp(self, data: bytes, existing: os.stat_result | None) -> str:
        """Write ``data`` to a new fsync'ed temporary file beside the target."""
        folder = os.path.dirname(self.path) or "."
        fd, temp = tempfile.mkstemp(prefix=self._temp_prefix(), suffix=_TEMP_SUFFIX, dir=folder)
        try:
            if existing is None:
                os.fchmod(fd, self.mode)
            else:
                os.fchmod(fd, stat.S_IMODE(existing.st_mode))
                if hasattr(os, "geteuid") and os.geteuid() == 0 and existing.st_uid != 0:
                    # root rewriting a user's cache: keep it the user's
                    with contextlib.suppress(OSError):
                        os.fchown(fd, existing.st_uid, existing.st_gid)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.close(fd)
        return temp

    def _sweep_stale_temp_files(self) -> None:
        """Delete temporary files left by writers that died mid-write."""
        folder = os.path.dirname(self.path) or "."
        prefix = self._temp_prefix()
        now = time.time()
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
                continue
            full = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if now - os.stat(full).st_mtime > _STALE_TEMP_AGE_SEC:
                    os.unlink(full)
                    logger.info("removed stale temporary file %s", full)
