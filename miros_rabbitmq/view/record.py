"""Record what the snoop networks carry, and play it back.

A record is a JSON-lines file: a header line
``{"miros_rabbitmq_record": 1, "started": <unix time>}`` then one line per
snoop message as it arrived::

    {"t": 1764467000.123456, "net": "snoop_trace", "sender": "alpha.1a2b3c4d5e6f",
     "signal": "SNOOP_TRACE", "payload": [["trace", "alpha", "[...] e->go() a->b", true, "", ""]]}

``t`` is the recorder's clock when the message arrived. Payloads are the
decoded snoop payloads (plain JSON data), so a record holds no keys and
needs none to be read. ``miros-rabbitmq snoop --record FILE`` and the view's
record button write it; ``miros-rabbitmq view --replay FILE`` plays it back
at any speed (:class:`Player`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TextIO

__all__ = ["Recorder", "Entry", "read_record", "Player", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = 1
FLUSH_EVERY = 0.25  # seconds: a crash loses at most this much of a record


class Entry(NamedTuple):
    """One recorded snoop message."""

    t: float
    network: str
    sender: str
    signal: str
    payload: Any


class Recorder:
    """Appends snoop messages to a record file; thread-safe, cheap per message."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: TextIO | None = open(path, "w", encoding="utf-8")  # noqa: SIM115
        self._file.write(json.dumps({"miros_rabbitmq_record": FORMAT,
                                     "started": time.time()}) + "\n")
        self._flushed = time.monotonic()
        self.written = 0

    def write(self, network: str, envelope: Any, now: float | None = None) -> None:
        """Record one decoded snoop envelope (any object with signal_name, sender, payload)."""
        line = json.dumps({"t": time.time() if now is None else now, "net": network,
                           "sender": envelope.sender, "signal": envelope.signal_name,
                           "payload": envelope.payload}, separators=(",", ":"))
        with self._lock:
            if self._file is None:
                return
            self._file.write(line + "\n")
            self.written += 1
            if time.monotonic() - self._flushed >= FLUSH_EVERY:
                self._file.flush()
                self._flushed = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_record(path: str) -> Iterator[Entry]:
    """The entries of a record file, in order; malformed lines are skipped.

    Raises ValueError when the file is not a record (no header line).
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or "miros_rabbitmq_record" not in header:
            raise ValueError(f"{path} is not a miros-rabbitmq record (no header line)")
        for line in handle:
            try:
                data = json.loads(line)
                yield Entry(float(data["t"]), str(data["net"]), str(data.get("sender", "")),
                            str(data["signal"]), data.get("payload"))
            except (ValueError, KeyError, TypeError):
                logger.debug("skipping a malformed record line")


class Player:
    """Plays entries back into ``feed(entry)`` on its own thread, keeping their pace.

    ``speed``: 2.0 plays twice as fast, 0 as fast as possible; it can be
    changed while playing. :attr:`clock` is the recorded time reached
    (what "now" is for the view while replaying).
    """

    def __init__(self, entries: list[Entry], feed: Callable[[Entry], None], *,
                 speed: float = 1.0, on_end: Callable[[], None] | None = None) -> None:
        self.entries = entries
        self.feed = feed
        self.speed = speed
        self.on_end = on_end
        self.played = 0
        self.clock = entries[0].t if entries else time.time()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="miros-rabbitmq-replay",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            started = time.monotonic()
            origin = self.clock
            for entry in self.entries:
                while not self._stop.is_set():
                    speed = self.speed
                    if speed <= 0:
                        break
                    due = (entry.t - origin) / speed
                    wait = due - (time.monotonic() - started)
                    if wait <= 0:
                        break
                    self._stop.wait(min(wait, 0.1))
                    # a new speed applies from where we are now
                    if self.speed != speed and self.speed > 0:
                        origin = self.clock
                        started = time.monotonic()
                if self._stop.is_set():
                    return
                self.clock = max(self.clock, entry.t)
                if self.speed != 0 and self.played == 0:
                    started, origin = time.monotonic(), entry.t
                self.feed(entry)
                self.played += 1
        finally:
            self.done.set()
            if self.on_end is not None:
                self.on_end()
