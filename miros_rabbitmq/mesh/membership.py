"""Cluster mode's PEER_JOINED / PEER_LEFT: charts joining and leaving, from presence lines.

A cluster has no peer brokers to discover: its members are the charts on it,
and every chart says on the snoop trace network that it is there
(:mod:`miros_rabbitmq.mesh.presence`: ``start``, ``alive`` every interval,
``stop``). One :class:`Members` per process and cluster (and trace key)
listens to those lines for all cluster-mode charts of the process (one snoop
trace consumer, one thread) and tells each chart:

* ``PEER_JOINED`` on the first presence line of another chart (its ``start``
  line, or, for a chart already running when we start, its next ``alive``
  line: within one presence interval);
* ``PEER_LEFT`` on its ``stop`` line, or when nothing came from it for
  :data:`SILENT_INTERVALS` of its intervals (a process killed, a machine cut
  off).

The payload is a :class:`~miros_rabbitmq.payloads.ChartPeerPayload` (``name``,
``identity``, ``host``, ``pid``, ``reason``). A chart is never told about
itself; it is told about the other charts of its own process too.

Delivery as discovery does it in mesh mode: posted into the FIFO of every
cluster-mode chart of the process that has not subscribed to the signal; for
charts of other processes also published once on the miros fabric (a
subscriber gets it from there); a subscribed chart gets the news about the
charts of its own process posted too (the fabric would tell it about itself).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from typing import Any

from miros import Event, signals

from miros_rabbitmq._miros import signal_number, subscribed
from miros_rabbitmq.mesh import presence
from miros_rabbitmq.mesh.snoop import TRACE, SnoopListener
from miros_rabbitmq.payloads import ChartPeerPayload

__all__ = ["Members", "join", "leave", "SILENT_INTERVALS"]

logger = logging.getLogger(__name__)

#: a chart silent for this many of its presence intervals has left
SILENT_INTERVALS = 3.0
_FORGET_STOPPED = 300.0  # seconds a stopped chart's late "alive" lines are ignored

for _name in ("PEER_JOINED", "PEER_LEFT"):
    signal_number(_name)
del _name

_HOST = socket.gethostname()


class _Member:
    __slots__ = ("payload", "interval", "last")

    def __init__(self, payload: ChartPeerPayload, interval: float, last: float) -> None:
        self.payload = payload
        self.interval = interval
        self.last = last


class Members:
    """The charts on one cluster, as this process hears them; tells its cluster charts."""

    def __init__(self, nets: Any) -> None:
        self._charts: list[Any] = []
        self._lock = threading.Lock()
        self._members: dict[str, _Member] = {}
        self._stopped: dict[str, float] = {}
        self._lines: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._running = threading.Event()
        self.listener = SnoopListener(nets.local_address, TRACE, nets.settings.snoop_trace_keys,
                                      heartbeat=nets.settings.heartbeat, quiet=True,
                                      alternates=nets.cluster[1:], tap=self._tap)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="miros-rabbitmq-members",
                                        daemon=True)
        self._thread.start()
        self.listener.start(timeout=0)  # never waits: joins are reported once it consumes

    def stop(self) -> None:
        self.listener.stop()
        self._running.clear()
        self._lines.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def add(self, chart: Any) -> None:
        """``chart`` gets PEER_JOINED for every chart known now, and all news from now on."""
        with self._lock:
            if chart in self._charts:
                return
            self._charts.append(chart)
            known = [m.payload for i, m in self._members.items() if i != chart.nets.identity]
        for payload in known:
            chart.post_fifo(Event(signal=signals.PEER_JOINED, payload=payload))

    def remove(self, chart: Any) -> bool:
        """Forget ``chart``; True when no chart is left."""
        with self._lock:
            if chart in self._charts:
                self._charts.remove(chart)
            return not self._charts

    # ------------------------------------------------------------------ the news
    def _tap(self, network: str, envelope: Any) -> None:
        """I/O thread: never blocks; the members thread does the work."""
        if envelope.signal_name == presence.SIGNAL and isinstance(envelope.payload, dict):
            self._lines.put((envelope.sender, envelope.payload, time.monotonic()))

    def _run(self) -> None:
        while self._running.is_set():
            timeout = self._next_check()
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                line = None
            if line is not None:
                try:
                    self._on_line(*line)
                except Exception:  # a malformed line must not end the thread
                    logger.debug("members: a presence line was not understood", exc_info=True)
            self._check_silent(time.monotonic())

    def _next_check(self) -> float:
        with self._lock:
            deadlines = [m.last + SILENT_INTERVALS * m.interval for m in self._members.values()]
        if not deadlines:
            return 1.0
        return min(1.0, max(0.05, min(deadlines) - time.monotonic()))

    def _on_line(self, sender: str, line: dict[str, Any], now: float) -> None:
        identity = str(line.get("identity") or sender)
        status = str(line.get("status", "alive"))
        try:
            interval = float(line.get("interval", presence.INTERVAL)) or presence.INTERVAL
        except (TypeError, ValueError):
            interval = presence.INTERVAL
        with self._lock:
            for gone, when in list(self._stopped.items()):
                if now - when > _FORGET_STOPPED:
                    del self._stopped[gone]
            if identity in self._stopped:
                return  # a late "alive" of a chart that said "stop"
            member = self._members.get(identity)
            if status == "stop":
                self._stopped[identity] = now
                if member is None:
                    return
                del self._members[identity]
                departed = member.payload._replace(reason="stop")
            elif member is not None:
                member.last, member.interval = now, max(interval, 0.05)
                return
            else:
                payload = ChartPeerPayload(
                    name=str(line.get("name", "")), identity=identity,
                    host=str(line.get("host", "")), pid=_int(line.get("pid")),
                    reason="start" if status == "start" else "alive")
                self._members[identity] = _Member(payload, max(interval, 0.05), now)
                departed = None
        if departed is not None:
            self._tell("PEER_LEFT", departed)
        else:
            self._tell("PEER_JOINED", payload)

    def _check_silent(self, now: float) -> None:
        with self._lock:
            silent = [i for i, m in self._members.items()
                      if now - m.last > SILENT_INTERVALS * m.interval]
            gone = [self._members.pop(i).payload._replace(reason="silent") for i in silent]
        for payload in gone:
            self._tell("PEER_LEFT", payload)

    def _tell(self, signal_name: str, payload: ChartPeerPayload) -> None:
        logger.info("cluster: %s %s (%s, %s pid %s)", signal_name, payload.name,
                    payload.reason, payload.host, payload.pid)
        ours = payload.host == _HOST and payload.pid == os.getpid()
        event = Event(signal=getattr(signals, signal_name), payload=payload)
        charts = self.charts
        published = False
        for chart in charts:
            if chart.nets.identity == payload.identity:
                continue  # never about itself
            if not ours and subscribed(chart, signal_name):
                if not published:
                    chart.publish(event)  # once, for every subscriber of the process
                    published = True
                continue
            chart.post_fifo(Event(signal=getattr(signals, signal_name), payload=payload))

    @property
    def charts(self) -> list[Any]:
        with self._lock:
            return list(self._charts)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# --------------------------------------------------------------------------- per process

_LOCK = threading.Lock()
_MEMBERS: dict[tuple[Any, ...], Members] = {}


def _key(nets: Any) -> tuple[Any, ...]:
    keys = tuple(k.reveal() for k in nets.settings.snoop_trace_keys)
    return (nets.broker_key(), keys)


def join(chart: Any) -> None:
    """A cluster-mode chart started: tell it who is on the cluster, now and later."""
    if not chart.nets.settings.snoop_trace_keys:
        logger.debug("%s: no snoop trace key: no PEER_JOINED / PEER_LEFT", chart.name)
        return
    key = _key(chart.nets)
    with _LOCK:
        members = _MEMBERS.get(key)
        fresh = members is None
        if members is None:
            members = _MEMBERS[key] = Members(chart.nets)
    if fresh:
        members.start()
    members.add(chart)


def leave(chart: Any) -> None:
    """The chart stops: no more news for it; the last one stops the listener."""
    key = _key(chart.nets)
    with _LOCK:
        members = _MEMBERS.get(key)
        if members is None or not members.remove(chart):
            return
        del _MEMBERS[key]
    members.stop()
