"""Finding threads a test left running."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable

__all__ = ["PERSISTENT_THREAD_PATTERNS", "ThreadWatcher"]

#: names (regular expressions) of threads that live as long as the process:
#: the miros active fabric (fifo and lifo) and miros's InstrumentionWriter.
#: Projects may append their own process-wide threads.
PERSISTENT_THREAD_PATTERNS: list[str] = [
    r"fifo active fabric",
    r"lifo active fabric",
    r"Thread-\d+ \(thread_runner\)",
]


class ThreadWatcher:
    """Notes the threads alive now; ``leaked()`` names the new ones still alive.

    Threads whose name fully matches one of ``allowed`` (regular expressions;
    default :data:`PERSISTENT_THREAD_PATTERNS`) are ignored.
    """

    def __init__(self, allowed: Iterable[str] | None = None) -> None:
        self.allowed = [
            re.compile(p) for p in (PERSISTENT_THREAD_PATTERNS if allowed is None else allowed)
        ]
        self.before = set(threading.enumerate())

    def _new(self) -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in self.before
            and t.is_alive()
            and not any(p.fullmatch(t.name) for p in self.allowed)
        ]

    def leaked(self, grace: float = 2.0) -> list[threading.Thread]:
        """New threads still alive after waiting up to ``grace`` seconds for them to end."""
        deadline = time.monotonic() + grace
        while True:
            new = self._new()
            if not new or time.monotonic() >= deadline:
                return new
            for t in new:
                t.join(max(0.0, min(0.05, deadline - time.monotonic())))

    def check(self, grace: float = 2.0) -> None:
        """Raise ``AssertionError`` naming the leaked threads."""
        new = self.leaked(grace)
        if new:
            names = ", ".join(f"{t.name!r} (daemon={t.daemon})" for t in new)
            raise AssertionError(f"{len(new)} thread(s) still running after the test: {names}")


