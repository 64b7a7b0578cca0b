"""Every touch of miros internals, in one place.

miros (4.2.x) is a dependency we extend, not rewrite; where the library
needs more than miros's public API (the signal table, the fabric's
``_subscribe``, a chart's queue, the defer queue, the namedtuple classes
built in every chart's ``__init__``), it goes through this module, so an
upgrade of miros is checked here and nowhere else.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import miros
import miros.activeobject
import miros.hsm
from miros import Event, signals
from miros.activeobject import LockingDeque
from miros.event import SignalSource
from miros.hsm import HsmWithQueues

__all__ = [
    "RESERVED_SIGNALS",
    "QUEUE_SIZE",
    "Event",
    "signal_number",
    "make_event",
    "rebuild_event",
    "subscribe_now",
    "deliver",
    "subscribed",
    "recall_all_deferred",
    "install_queue",
    "chart_queue",
    "keep_first_deferred",
    "RoomyDeque",
    "namedtuples_reused",
]

#: miros's own signals (entry, exit, init, search for super, stop, ...): they
#: drive a chart's event processor and never come from the network.
RESERVED_SIGNALS: frozenset[str] = frozenset(SignalSource().keys())

#: how many events a chart's queue holds; beyond it miros drops the oldest
QUEUE_SIZE: int = HsmWithQueues.QUEUE_SIZE

# --------------------------------------------------------------------------- signals

_signal_lock = threading.Lock()
_signal_numbers: dict[str, int] = {}  # signal numbers never change once given


def signal_number(name: str) -> int:
    """The local number of a signal name, creating it if new (thread-safe).

    Signal numbers differ between processes; only names cross the wire.
    """
    number = _signal_numbers.get(name)
    if number is None:
        with _signal_lock:
            signals.append(name)  # not getattr: a name like "keys" is a dict method
            number = _signal_numbers[name] = int(signals[name])
    return number


def make_event(signal_name: str, payload: Any) -> Event:
    """``Event(signal=signal_name, payload=payload)``, without its cost.

    miros's constructor scans the whole signal table; on the receive path
    that scan is a measurable part of the latency. The attributes set here
    are the three that constructor sets.
    """
    event = Event.__new__(Event)
    event.payload = payload
    event.signal = signal_number(signal_name)
    event.signal_name = signal_name
    return event


def rebuild_event(signal_name: str, payload: Any) -> Event:
    """Unpickle helper: a miros Event travels as its signal name and payload."""
    return make_event(signal_name, payload)


# pickles name this function by module path: keep the 0.3.0 path (miros_rabbitmq/codec.py)
rebuild_event.__module__ = "miros_rabbitmq.codec"


# --------------------------------------------------------------------------- the fabric


def subscribe_now(chart: Any, *signal_names: str) -> None:
    """Subscribe a running chart to ``signal_names`` (FIFO), straight into the fabric.

    ``ActiveObject.subscribe`` skips a signal once any other chart of the
    process subscribed to it, and does nothing on a chart that is not
    instrumented; the fabric's own ``_subscribe`` does neither.
    """
    for name in signal_names:
        chart._subscribe(Event(signal=name), "fifo")


def deliver(chart: Any, event: Event) -> None:
    """``chart.publish(event)``, handed to the subscribers from the caller's thread.

    The fabric's ``publish`` wakes both of its threads (FIFO and LIFO), each
    of which then appends the event to every subscribed queue: two thread
    wake-ups per event, and with hundreds of processes on a few cores each
    wake-up waits in a long run queue. Appending to the subscribed queues
    here does the same work at once (the fabric's priorities only order
    its own queue, so there is none to give). The spy gets the line
    ``publish`` writes at its default priority. Subscribers are the
    fabric's, so a chart that subscribes later gets later events, as with
    ``publish``.
    """
    if not chart.instrumented:
        return  # what publish does on an uninstrumented chart
    chart.scribble(f"PUBLISH:({event.signal_name}, PRIORITY:1000)")
    fabric = chart.fabric
    name = event.signal_name
    # lists copied: another thread may subscribe meanwhile
    for subscriber in list(fabric.fifo_subscriptions.get(name, ())):
        subscriber.append(event)
    for subscriber in list(fabric.lifo_subscriptions.get(name, ())):
        subscriber.append(event)  # the fabric's LIFO thread appends too


def subscribed(chart: Any, signal_name: str) -> bool:
    """True when a published ``signal_name`` reaches ``chart`` (instrumented and subscribed)."""
    fabric = getattr(chart, "fabric", None)
    subscribers = fabric.fifo_subscriptions.get(signal_name, []) if fabric is not None else []
    return bool(getattr(chart, "instrumented", False)) and any(
        q is chart.queue for q in subscribers)


def keep_first_deferred(chart: Any) -> bool:
    """Collapse a chart's defer queue to its first event and recall it.

    For requests that one more run serves all (a second RECCE_LAN while a
    search runs). Returns False when nothing was deferred.
    """
    deferred = chart.defer_queue
    if not len(deferred):
        return False
    first = deferred.popleft()
    deferred.clear()
    deferred.append(first)
    chart.recall()
    return True


def recall_all_deferred(chart: Any) -> None:
    """Recall every deferred event of ``chart`` (in order)."""
    while len(chart.defer_queue):
        chart.recall()


# --------------------------------------------------------------------------- the queue swap


class RoomyDeque(LockingDeque):
    """A chart's queue: miros's LockingDeque, lighter, telling the network when there is room.

    miros wakes its chart thread through a ``queue.Queue`` of "ready" tokens,
    a few dozen lines of Python per event on each side; a C ``SimpleQueue``
    does the same at a fraction of the cost (measured: the hand-off from the
    I/O thread to the chart takes ~15 us instead of ~40 us). ``on_room`` is
    called (once, then cleared) when the queue drops below ``resume_below``.
    """

    def __init__(self, resume_below: int = QUEUE_SIZE) -> None:
        self.deque: collections.deque[Any] = collections.deque(maxlen=QUEUE_SIZE)
        self.locking_queue: queue.SimpleQueue[None] = queue.SimpleQueue()  # one token per event
        self.on_room: Callable[[], None] | None = None
        self.resume_below = resume_below

    def get(self, block: bool = True, timeout: float | None = None) -> None:
        return self.locking_queue.get(block, timeout)

    def wait(self, block: bool = True, timeout: float | None = None) -> None:
        return self.locking_queue.get(block, timeout)

    def append(self, item: Any) -> None:
        full = len(self.deque) == self.deque.maxlen
        if full:
            self.deque.rotate(1)  # miros's rule when full: the newest queued event gives way
        self.deque.append(item)
        if not full:
            self.locking_queue.put(None)

    def appendleft(self, item: Any) -> None:
        full = len(self.deque) == self.deque.maxlen
        self.deque.appendleft(item)  # when full, the newest queued event falls off the end
        if not full:
            self.locking_queue.put(None)

    def clear(self) -> None:
        self.deque.clear()
        while True:
            try:
                self.locking_queue.get_nowait()
            except queue.Empty:
                return

    def task_done(self) -> None:
        """miros calls this after each event; nothing joins this queue."""

    def qsize(self) -> int:
        return self.locking_queue.qsize()

    def popleft(self) -> Any:
        item = self.deque.popleft()
        callback = self.on_room
        if callback is not None and len(self.deque) < self.resume_below:
            self.on_room = None
            callback()
        return item


def install_queue(chart: Any, deque: RoomyDeque) -> None:
    """Make ``deque`` the queue miros's chart thread reads (before ``start_at``)."""
    chart.locking_deque = deque
    chart.queue = deque


def chart_queue(chart: Any) -> RoomyDeque:
    """The queue :func:`install_queue` gave ``chart``."""
    queue_: RoomyDeque = chart.locking_deque
    return queue_


# --------------------------------------------------------------------------- namedtuple reuse

# miros 4.2.1 defines three namedtuple classes inside every chart's __init__
# (TraceTuple, PostedEventThreadSpec, PostedEvent): about 0.5 ms, most of the
# cost of making a chart. A LAN recce makes 254 scouts at once, so a scout's
# __init__ hands miros classes built once instead (same names, same fields).
_MIROS_MODULES = (miros.activeobject, miros.hsm)
_reused_classes: dict[tuple[str, tuple[str, ...]], type] = {}
_reuse_lock = threading.Lock()


def _reused_namedtuple(typename: str, field_names: Any, **kwargs: Any) -> type:
    if kwargs or isinstance(field_names, str):  # not how miros calls it
        return collections.namedtuple(typename, field_names, **kwargs)
    key = (typename, tuple(field_names))
    made = _reused_classes.get(key)
    if made is None:
        made = _reused_classes[key] = collections.namedtuple(typename, key[1])
    return made


@contextlib.contextmanager
def namedtuples_reused() -> Iterator[None]:
    """While a chart runs miros's __init__: namedtuple classes are reused, not rebuilt."""
    with _reuse_lock:
        saved = [getattr(module, "namedtuple", None) for module in _MIROS_MODULES]
        if any(original is not collections.namedtuple for original in saved):
            yield  # not the miros we know: leave it alone
            return
        for module in _MIROS_MODULES:
            module.namedtuple = _reused_namedtuple
        try:
            yield
        finally:
            for module, original in zip(_MIROS_MODULES, saved, strict=True):
                module.namedtuple = original
