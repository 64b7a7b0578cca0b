"""Presence: every networked chart says on the snoop trace network that it is there.

A chart announces itself when it starts (``status: "start"``), every
:data:`INTERVAL` seconds while it runs (``"alive"``) and when it stops
(``"stop"``), whether or not it enabled snoop trace, so ``miros-rabbitmq
list`` and ``miros-rabbitmq view`` show idle charts too.

A presence line is one small snoop message (signal ``SNOOP_PRESENCE``, JSON
payload, encrypted with the snoop trace key) per chart per interval, sent
by one thread per process; like every snoop message it is ``droppable`` at
the link, so it never blocks or slows the mesh (measured in docs/view.md),
and it goes only to brokers connected at that moment: it never takes room
in the buffer of a broker that is away.
The snoop printers do not print it.

Payload (a dict): ``name``, ``identity`` (the chart's sender identity),
``host``, ``pid``, ``program``, ``state`` (the chart's current state),
``status``, ``interval``, ``time`` (the sender's clock, Unix seconds).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from miros_rabbitmq.mesh.snoop import TRACE, _SharedWorker

__all__ = ["SIGNAL", "INTERVAL", "announce", "retire", "payload_of", "ANNOUNCER"]

logger = logging.getLogger(__name__)

SIGNAL = "SNOOP_PRESENCE"
INTERVAL = 2.0  # seconds between presence lines of a running chart
_ENV_INTERVAL = "MIROS_RABBITMQ_PRESENCE_INTERVAL"  # 0 turns presence off


def _interval() -> float:
    try:
        return float(os.environ.get(_ENV_INTERVAL, INTERVAL))
    except ValueError:
        return INTERVAL


_HOST = socket.gethostname()
_PROGRAM = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def current_state(chart: Any) -> str:
    """The name of the state the chart is in ("" before it started)."""
    try:
        name = chart.__dict__.get("state_name")
        if name:
            return str(name)
        return str(chart.state.fun.__name__)
    except Exception:
        return ""


def payload_of(chart: Any, status: str, interval: float) -> dict[str, Any]:
    """The presence line of ``chart`` (plain data)."""
    return {
        "name": str(chart.name),
        "identity": chart.nets.identity,
        "host": _HOST,
        "pid": os.getpid(),
        "program": _PROGRAM,
        "state": current_state(chart),
        "status": status,
        "interval": interval,
        "time": time.time(),
    }


def _send(chart: Any, status: str, interval: float) -> None:
    try:
        chart.nets.transmit(SIGNAL, payload_of(chart, status, interval), network=TRACE,
                            connected_only=True)  # never buffered for a broker that is away
    except Exception:  # presence must never break a chart
        logger.debug("%s: could not send presence", getattr(chart, "name", "?"), exc_info=True)


class _Announcer(_SharedWorker):
    """One thread per process sending the presence line of every running chart."""

    thread_name = "miros-rabbitmq-presence"

    def __init__(self) -> None:
        super().__init__()
        self._charts: dict[int, Any] = {}
        self.sent = 0

    def register(self, chart: Any, interval: float) -> None:
        _send(chart, "start", interval)
        with self._lock:
            if id(chart) in self._charts:
                return
            self._charts[id(chart)] = chart
        self.acquire()

    def unregister(self, chart: Any, interval: float) -> None:
        with self._lock:
            known = self._charts.pop(id(chart), None)
        if known is None:
            return
        _send(chart, "stop", interval)
        self.release()

    def _run(self) -> None:
        me = threading.current_thread()
        interval = _interval()
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._thread is not me, interval)
                if self._thread is not me:
                    return
                charts = list(self._charts.values())
            for chart in charts:
                _send(chart, "alive", interval)
                self.sent += 1


ANNOUNCER = _Announcer()


def announce(chart: Any) -> None:
    """The chart started: say so now and every few seconds (off when the interval is 0)."""
    interval = _interval()
    if interval > 0:
        ANNOUNCER.register(chart, interval)


def retire(chart: Any) -> None:
    """The chart stops: say so, stop its presence lines."""
    ANNOUNCER.unregister(chart, _interval())
