"""LockWaiter: one helper thread that waits in the kernel for a file's lock.

A statechart must never block its own thread, so a
:class:`~miros_rabbitmq.cache.cache_file_chart.CacheFileChart` whose write
finds the lock busy hands the wait to this thread. The thread blocks in
``flock`` (:meth:`LockedJsonFile.wait_lock`); the kernel wakes it the moment
the holder releases the lock or dies, and it then calls ``on_held`` (the
chart posts itself the ``file_write`` event). No polling, no random delays.

One thread per chart at most, started with the chart (or else at the first
busy lock) and ended by :meth:`LockWaiter.stop`. A thread stopped while the
kernel keeps it waiting (another process holds the lock) ends when it is
woken: it then lets go of the lock at once and never calls ``on_held``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from miros_rabbitmq.cache.locked_json_file import LockedJsonFile

__all__ = ["LockWaiter"]

logger = logging.getLogger(__name__)


class LockWaiter:
    """Waits for ``file``'s exclusive lock on behalf of one owner thread.

    ``on_held(token, error)`` runs on the waiter thread once the lock is held
    by ``file`` (``error`` is None), or when waiting failed (``error`` is the
    ``OSError``; the lock is then not held).
    """

    def __init__(
        self,
        file: LockedJsonFile,
        name: str,
        on_held: Callable[[Any, OSError | None], None],
    ) -> None:
        self._file = file
        self._name = name
        self._on_held = on_held
        self._tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._start_guard = threading.Lock()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self) -> None:
        """Start the thread now (else the first :meth:`submit` starts it).

        Hundreds of processes starting together all find the lock busy at
        once; a thread started beforehand keeps its start-up out of that
        rush.
        """
        with self._start_guard:
            if not self._stopped and self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def submit(self, token: Any) -> None:
        """Wait for the lock, then call ``on_held(token, None)``."""
        self.start()
        if not self._stopped:
            self._tokens.put(token)

    def stop(self, timeout: float = 0.1) -> None:
        """End the thread; waits up to ``timeout`` s (it may still be in the kernel's queue)."""
        with self._start_guard:
            self._stopped = True
            thread = self._thread
        self._tokens.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            token = self._tokens.get()
            if token is None or self._stopped:
                return
            error: OSError | None = None
            try:
                held = self._file.wait_lock()
            except OSError as problem:
                held, error = False, problem
            if self._stopped:
                if held:
                    self._file.unlock()
                return
            if not held and error is None:
                return  # the file was closed under us: the owner is gone
            try:
                self._on_held(token, error)
            except Exception:  # never let a callback kill the waiter silently
                logger.exception("%s: lock waiter callback failed", self._name)
                if held:
                    self._file.unlock()
