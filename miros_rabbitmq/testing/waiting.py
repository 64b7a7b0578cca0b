"""Waiting on conditions and on events, with timeouts (never fixed sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["EventRecorder", "recording_state", "wait_for"]

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Raises ``AssertionError`` (naming ``message``, or the predicate, and the last
    value or exception seen) when ``timeout`` seconds pass first. Exceptions the
    predicate raises count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - a failing predicate means "not yet"
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


class EventRecorder:
    """A thread-safe list that tests can wait on.

    Call it (or ``record``) from any thread — a chart's state, a consumer
    callback, a subprocess reader — and wait in the test::

        rec = EventRecorder()
        ...
        rec.wait_for_count(3)
        rec.wait_until(lambda items: "done" in items)
        event = rec.wait_for_event("mesh_hello")   # items that are miros Events
    """

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._cond = threading.Condition()

    def record(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    __call__ = record

    @property
    def items(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait_until(
        self, condition: Callable[[list[Any]], object], timeout: float = 5.0, message: str = ""
    ) -> list[Any]:
        """Block until ``condition(items)`` is truthy; return a copy of the items."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self._items):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:g} s waiting for {message or 'condition'}; "
                        f"recorded: {self._items!r}"
                    )
                self._cond.wait(remaining)
            return list(self._items)

    def wait_for_count(self, count: int, timeout: float = 5.0) -> list[Any]:
        return self.wait_until(lambda items: len(items) >= count, timeout, f"{count} items")

    def wait_for_event(
        self,
        signal_name: str,
        where: Callable[[Any], object] | None = None,
        timeout: float = 5.0,
    ) -> Any:
        """The first recorded miros ``Event`` named ``signal_name`` (whose payload
        passes ``where``, if given); waits up to ``timeout`` seconds for it."""

        def matches(item: Any) -> bool:
            return getattr(item, "signal_name", None) == signal_name and (
                where is None or bool(where(getattr(item, "payload", None)))
            )

        items = self.wait_until(
            lambda items: any(matches(i) for i in items), timeout, f"an event {signal_name}"
        )
        return next(i for i in items if matches(i))


def recording_state(recorder: EventRecorder, signal_names: Iterable[str]) -> Callable[..., Any]:
    """A miros state (``spy_on``) that records every event named in ``signal_names``.

    Start a chart in it to see what reaches the chart::

        rec = EventRecorder()
        chart.start_at(recording_state(rec, ["mesh_hello"]))
        rec.wait_for_event("mesh_hello", where=lambda payload: payload == 1)
    """
    from miros import return_status, spy_on

    names = frozenset(signal_names)

    @spy_on
    def recording(chart: Any, e: Any) -> Any:
        if e.signal_name in names:
            recorder.record(e)
            return return_status.HANDLED
        chart.temp.fun = chart.top
        return return_status.SUPER

    return recording
