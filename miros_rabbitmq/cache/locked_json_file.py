"""One JSON file shared safely by many processes: an OS lock and atomic writes.

This is the I/O layer under :class:`~miros_rabbitmq.cache.cache_file_chart.CacheFileChart`
and the ``hosts`` CLI; it knows nothing about miros.

Writing
    :meth:`LockedJsonFile.write` never modifies the file in place: it writes
    a temporary file in the same folder (so the rename never crosses a file
    system), flushes and ``fsync``\\ s it, ``os.replace``\\ s it over the
    target and ``fsync``\\ s the folder. A reader, locked or not, sees the old
    document or the new one, never a mix: plain reads need no lock at all.
    Every rewrite gives the file ``mode`` (``0o600`` by default: caches hold
    addresses and AMQP URLs), whatever mode the old file had; when root
    rewrites another user's file, the new file keeps that user as owner.

Locking
    The lock is ``fcntl.flock`` on a side file, ``<file>.lock``, in the same
    folder. The operating system drops it when its holder closes the
    descriptor or dies, however it dies (``SIGKILL`` included), and it binds
    root exactly as it binds everybody else. Writers (and read-modify-write
    :meth:`LockedJsonFile.update`) take it exclusive, so writes are
    serialised: the order in which writers get the lock is the order in
    which their documents replace the file ("last writer wins"). Readers that
    need a read to not interleave with another process's read-modify-write
    may take it shared.

    Writers are preferred: a writer first takes a second lock, on
    ``<file>.wlock``, exclusive, and keeps it until it releases the main
    lock; shared lockers stand back while it is held, so a stream of them
    cannot starve writers. :meth:`LockedJsonFile.try_lock` never blocks;
    :meth:`LockedJsonFile.wait_lock` blocks in the kernel, which wakes the
    waiter the moment the holder releases or dies (no polling).

    ``flock`` locks belong to an open file description, so two
    :class:`LockedJsonFile` objects exclude each other even inside one
    process. In a forked child the inherited lock descriptors are closed at
    once (the parent keeps its lock, and it still ends when the parent
    dies); the child's objects open their own.

    Lock files are opened with ``ONOFOLLOW`` and must be regular files with
    a single link: a symbolic link, a FIFO, a device or a folder planted at
    ``<file>.lock`` is refused with an ``OSError`` naming it, never followed
    or opened. An existing lock file is never ``chown``\\ ed; a lock file root
    creates beside another user's cache is given that user as owner (it is
    root's own new file), so that the user can still lock it.

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

Platforms
    POSIX systems with ``fcntl.flock`` (Linux is tested; macOS and the BSDs
    have the same calls). Without ``fcntl`` (Windows) locking raises
    ``OSError(ENOTSUP)``; plain reads still work.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import random
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from miros_rabbitmq.cache.os_locks import (
    CLOEXEC,
    NOFOLLOW,
    NONBLOCK,
    LockFile,
    WritersQueue,
    is_root,
)

__all__ = [
    "DEFAULT_FILE_MODE",
    "JsonFileContents",
    "LockedJsonFile",
]

logger = logging.getLogger(__name__)

#: Permission bits of the JSON file after every write (and of a new lock file).
DEFAULT_FILE_MODE = 0o600

_TEMP_SUFFIX = ".tmp"
_STALE_TEMP_AGE_SEC = 300.0


def _temp_stamp() -> str:
    """The creation time written into a temporary file's name (hex seconds)."""
    return format(int(time.time()), "x")


def _stamp_of(token: str) -> int | None:
    """The creation time in a temporary file's name (``<random>-<stamp>``), if any."""
    _, dash, stamp = token.rpartition("-")
    if not dash:
        return None
    try:
        return int(stamp, 16)
    except ValueError:
        return None


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


class LockedJsonFile:
    """A JSON object in a file that many processes read and write safely.

    ``LockedJsonFile(path, default_json=None, *, mode=0o600)``

    * ``path``: the JSON file. A symbolic link is followed (the file it
      points to is the one replaced) only if root or the current user owns
      the link; a link owned by anyone else raises ``PermissionError``. Its
      folder is created (``0o700``) if missing.
    * ``default_json``: JSON object text or a dict, used to create a missing
      file and returned in place of an empty or corrupt one. ``None`` means
      ``{}``. Raises ``ValueError``/``TypeError`` if it is not a JSON object.
    * ``mode``: permission bits the file gets at every write (and a lock
      file this object creates).

    Typical use::

        cache = LockedJsonFile("hosts.json", {"hosts": []})
        cache.update(lambda d: d["hosts"].append("10.0.0.7"), timeout=10)
        contents = cache.read()             # no lock needed: writes are atomic

    One object per thread: the lock is held by the object, not the thread
    (a helper thread may wait in :meth:`wait_lock` for the owning thread).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        default_json: str | bytes | Mapping[str, Any] | None = None,
        *,
        mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        given = os.path.abspath(os.fspath(path))
        _check_link_owner(given)
        self.path = os.path.realpath(given)
        self.lock_path = self.path + ".lock"
        self.intent_path = self.path + ".wlock"
        self.queue_path = self.path + ".queue"
        self.default: dict[str, Any] = _parse_default(default_json)
        self.mode = mode
        self._guard = threading.RLock()
        self._lock = LockFile(self.lock_path, mode, self.path)
        self._intent = LockFile(self.intent_path, mode, self.path)
        self._queue = WritersQueue(self.queue_path, mode, self.path)
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
        that finds the lock busy keeps the *intent* lock (``<file>.wlock``)
        until it gets the lock or calls :meth:`unlock`, and while it does, new
        shared lockers are refused, so a stream of them cannot starve it.
        Calling it while already holding the lock returns True and changes
        nothing. Raises ``OSError`` only for real problems (the folder cannot
        be created, no permission, a lock file that is a symbolic link or not
        a regular file, ...), never because the lock is busy.
        """
        with self._guard:
            if self._lock.held:
                return True
            self._make_folder()
            if shared:
                return self._no_writer_waiting() and self._lock.acquire(True, block=False)
            if not self._intent.held and not self._intent.acquire(False, block=False):
                return False  # another writer is first in line
            return self._lock.acquire(False, block=False)

    def try_lock_in_turn(self) -> bool:
        """Take the exclusive lock, first come first served, without waiting.

        Takes a place in the writers' queue (kept until :meth:`unlock`) and
        returns True if the lock is now held: nobody was before us and the
        lock was free. Otherwise :meth:`wait_lock` waits for our turn.
        """
        with self._guard:
            if self._lock.held:
                return True
            self._make_folder()
            joined = self._queue.join(block=False)
            if joined is None or (joined and not self._queue.first_in_line(block=False)):
                return False
            if not self._intent.held and not self._intent.acquire(False, block=False):
                return False
            return self._lock.acquire(False, block=False)

    def _no_writer_waiting(self) -> bool:
        try:
            free = self._intent.acquire(True, block=False)
        except OSError:
            return True  # cannot use the intent file: no writer preference, nothing worse
        if free:
            self._intent.release()
        return free

    def wait_lock(self, *, shared: bool = False) -> bool:
        """Take the lock, waiting in the kernel as long as it takes.

        The kernel wakes the waiter when the holder releases the lock or
        dies. Returns True once held, False if :meth:`close` was called
        (from another thread) meanwhile. A writer waits for its turn in the
        writers' queue (first come, first served), then takes the intent
        lock and the main lock; a shared locker waits until no writer holds
        or waits for the intent lock.
        """
        if self._lock.held:
            return True
        self._make_folder()
        if shared:
            if not self._intent.acquire(True, block=True):
                return False
            try:
                return self._lock.acquire(True, block=True)
            finally:
                self._intent.release()
        if self._queue.join() and not self._queue.first_in_line(block=True):
            return False
        if not self._intent.held and not self._intent.acquire(False, block=True):
            return False
        return self._lock.acquire(False, block=True)

    def lock(self, timeout: float | None = None, *, shared: bool = False) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (None: as long as it takes).

        Raises ``TimeoutError`` when the time is up. Without a timeout it
        waits in the kernel (:meth:`wait_lock`); with one it polls with a
        short random pause (at most 20 ms).
        """
        if timeout is None:
            if not self.wait_lock(shared=shared):
                raise OSError(errno.EBADF, "closed while waiting for the lock", self.lock_path)
            return
        deadline = time.monotonic() + timeout
        pause = 0.001
        while not self.try_lock(shared=shared):
            left = deadline - time.monotonic()
            if left <= 0:
                self.unlock()  # give up our place in the writers' line
                raise TimeoutError(f"{self.lock_path} still locked after {timeout} s")
            time.sleep(min(random.uniform(0.0005, pause), left))
            pause = min(pause * 2, 0.02)

    def unlock(self) -> None:
        """Release the lock, any write intent and our place in the writers' queue."""
        with self._guard:
            self._lock.release()
            self._intent.release()
            self._queue.leave()

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
        """Release the lock and close the lock files' descriptors.

        Safe to call while another thread waits in :meth:`wait_lock`: that
        call then returns False as soon as the kernel wakes it.
        """
        with self._guard:
            self._lock.close()
            self._intent.close()
            self._queue.close()

    # ------------------------------------------------------------------ read
    def read(self) -> JsonFileContents:
        """Read the document; see the module text for missing/empty/corrupt files.

        Needs no lock: writes replace the file atomically, so a read sees a
        whole document, the one in place when it opened the file. Hold the
        lock (shared is enough) only when the read must not interleave with
        another process's read-modify-write. Raises ``OSError`` for real I/O
        problems (permission denied, ...).
        """
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDONLY | NONBLOCK | CLOEXEC)
            except FileNotFoundError:
                self.ensure_exists()
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", self.path)
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
        if os.path.lexists(self.path):
            return False
        self._make_folder()
        temp = self._write_temp(encode_json(self.default), None)
        try:
            try:
                os.link(temp, self.path, follow_symlinks=False)
            except FileExistsError:
                return False
            except OSError:
                # no hard links on this file system: exclusive create in place
                # (a reader racing this may see it empty, which reads as the
                # default anyway)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
                try:
                    fd = os.open(self.path, flags, self.mode)
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
        The new file has ``mode``. Raises ``TypeError``/``ValueError`` for a
        document JSON cannot encode (the file is untouched) and ``OSError``
        for I/O failures (the file is untouched and no temporary file is
        left behind).
        """
        mtime = self.commit(self.stage(document))
        self.sync_folder()
        return mtime

    def stage(self, document: Mapping[str, Any] | bytes) -> str:
        """The first half of :meth:`write`, no lock needed: a temporary file, written and fsync'ed.

        Returns its path, for :meth:`commit` (under the lock) or :meth:`discard`.
        Doing this before taking the lock keeps the time the lock is held
        down to a rename.
        """
        data = document if isinstance(document, bytes) else encode_json(document)
        self._make_folder()
        if not self._swept:
            self._swept = True
            self._sweep_stale_temp_files()
        try:
            existing: os.stat_result | None = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        return self._write_temp(data, existing)

    def commit(self, temp: str) -> float:
        """Put a staged file in place (hold the exclusive lock); returns its ``st_mtime``.

        The time stamp is set now, so that time stamps follow the order in
        which documents replace the file. On failure the staged file is removed.
        """
        try:
            os.utime(temp)
            mtime = os.stat(temp, follow_symlinks=False).st_mtime
            os.replace(temp, self.path)
        except BaseException:
            self.discard(temp)
            raise
        return mtime

    @staticmethod
    def discard(temp: str) -> None:
        """Remove a staged file that will not be committed."""
        with contextlib.suppress(OSError):
            os.unlink(temp)

    def sync_folder(self) -> None:
        """fsync the file's folder, making committed renames durable (no lock needed)."""
        _fsync_directory(os.path.dirname(self.path))

    def update(
        self,
        fn: Callable[[dict[str, Any]], dict[str, Any] | None],
        timeout: float | None = 10.0,
    ) -> dict[str, Any]:
        """Read, change and write the document under the exclusive lock.

        ``fn`` gets the current document (the default if the file is missing
        or corrupt) and either changes it in place and returns None, or
        returns the new document. Waits up to ``timeout`` seconds for the
        lock (``TimeoutError`` after that; None waits as long as it takes).
        Returns the document written. Exceptions raised by ``fn`` propagate;
        the file is then unchanged.
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
        """Write ``data`` to a new fsync'ed temporary file beside the target.

        The name is random and the file is created with ``O_EXCL |
        ONOFOLLOW``: whatever is planted in the folder is never opened.
        """
        folder = os.path.dirname(self.path) or "."
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
        for _ in range(100):
            # the time in the name lets the sweep skip fresh files without a stat
            token = secrets.token_hex(6) + "-" + _temp_stamp()
            temp = os.path.join(folder, self._temp_prefix() + token + _TEMP_SUFFIX)
            try:
                fd = os.open(temp, flags, 0o600)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions of 48 random bits
            raise FileExistsError(errno.EEXIST, "no free temporary file name", folder)
        try:
            os.fchmod(fd, self.mode)
            if (
                existing is not None
                and is_root()
                and stat.S_ISREG(existing.st_mode)
                and existing.st_uid != 0
            ):
                # root rewriting a user's cache: keep it the user's (our new
                # temporary file is the one chowned, never an existing file)
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
        """Delete temporary files left by writers that died mid-write.

        Hundreds of processes may start at once and each sweeps once: a name
        whose time stamp is recent is skipped without a ``stat`` (the file
        is another writer's, being written). Any other name (older, or not
        ours) is removed only if it is a regular file not modified for
        ``_STALE_TEMP_AGE_SEC``.
        """
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
            stamp = _stamp_of(name[len(prefix) : -len(_TEMP_SUFFIX)])
            if stamp is not None and abs(now - stamp) <= _STALE_TEMP_AGE_SEC:
                # recent: another writer's, being written. A stamp far in the
                # future (the clock was set back) is judged by its mtime instead.
                continue
            full = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                st = os.stat(full, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > _STALE_TEMP_AGE_SEC:
                    os.unlink(full)
                    logger.info("removed stale temporary file %s", full)


def _check_link_owner(path: str) -> None:
    """Refuse a symbolic link (the file itself) that neither root nor we own.

    Following another user's link would let that user point our writes
    (as root: root's writes) at any file.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode) and hasattr(os, "geteuid") and st.st_uid not in (0, os.geteuid()):
        raise PermissionError(
            errno.EPERM, "refusing to follow a symbolic link owned by another user", path
        )
