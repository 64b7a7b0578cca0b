"""Snoop trace and snoop spy: the live instrumentation of every chart, on every node.

Two of the three networks of a node (docs/snoop.md) carry
instrumentation instead of events:

* ``snoop_trace`` (``miros.snoop.trace.exchange``, key ``snoop.trace``): one
  record per state transition, the text of miros's own ``trace()``;
* ``snoop_spy`` (``miros.snoop.spy.exchange``, key ``snoop.spy``): one record
  per line of miros's spy (everything the event processor does).

A chart that enabled a network publishes its records there, and prints what
*every* node publishes on it::

     [+t] [2018-05-25 18:50:34.888810] [192.168.1.77] e->start_at() top->producer_thread_engaged
     [+s] 192.168.1.77 START
     [+t] [2018-05-25 18:50:35.001122] [192.168.1.77] # a scribble

In colour, the name of a chart of this process is blue, other nodes' names
are purple and scribbles dark grey; the ``_no_color`` variants print plain
text for logs. The text after the prefix is miros's, untouched, so the
output of many machines can be grepped and turned into sequence diagrams
(:mod:`miros_rabbitmq.view.sequence`).

Publishing never slows a chart. miros calls the live trace/spy callback on
the chart's own thread; the callback only appends the line to a bounded,
process-wide queue (:data:`PUMP`) and returns. One pump thread batches what
is queued and hands it to :meth:`MirosNets.transmit` (snoop networks are
``droppable`` at the link: dropped and counted when a broker cannot keep up,
never blocking). When the queue is full a line is dropped and counted
(``nets.drops``, reason ``snoop_backlog``) instead of waiting. One thread and
one in-order link per process keep the order of one node's lines.

Printing never slows the mesh either: the consumer (on the link's I/O
thread) only decodes and queues lines for one process-wide printer thread
(:data:`PRINTER`), again bounded and dropping rather than blocking.

On the wire a snoop message is an envelope (signal ``SNOOP_TRACE`` or
``SNOOP_SPY``, JSON serializer: plain data, nothing runs on load) whose
payload is a list of records ``[kind, name, text, color, event, cause]``:
``kind`` is ``"trace"``, ``"spy"`` or ``"scribble"`` (printed), or ``"tx"`` /
``"rx"`` (a mesh event sent / taken by the chart, for ``miros-rabbitmq view``;
not printed), ``name`` the chart's name, ``text`` the line as miros wrote it,
``color`` whether a scribble asked for colour, ``event`` the id of the mesh
event being handled (trace, rx) or sent (tx) and ``cause`` the id of the event
that caused it (see :mod:`miros_rabbitmq.mesh.causation`). Each network has
its own Fernet key (default: the mesh key). Presence lines
(:mod:`miros_rabbitmq.mesh.presence`) travel on the trace network too, with
their own signal, and are not printed either.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TextIO

import click

from miros_rabbitmq._miros import chart_queue
from miros_rabbitmq.config import Secret, Settings
from miros_rabbitmq.errors import DecodeError
from miros_rabbitmq.mesh.nets import DropCounter, MirosNets
from miros_rabbitmq.terminal import printable
from miros_rabbitmq.transport import LINKS, BrokerAddress, BrokerLink, Consumer
from miros_rabbitmq.wire.batch import split_tokens
from miros_rabbitmq.wire.codec import JSON, Codec
from miros_rabbitmq.wire.names import (
    DEFAULT_HEARTBEAT,
    EXCHANGES,
    SNOOP_QUEUE_PREFIX,
    SNOOP_SPY_EXCHANGE,
    SNOOP_SPY_ROUTING_KEY,
    SNOOP_TRACE_EXCHANGE,
    SNOOP_TRACE_ROUTING_KEY,
)
from miros_rabbitmq.wire.names import Network as NetworkName
from miros_rabbitmq.wire.replay import ReplayGuard

__all__ = [
    "TRACE",
    "SPY",
    "SnoopRecord",
    "SnoopListener",
    "ChartSnoop",
    "format_record",
    "strip_ansi",
    "enable",
    "scribble",
    "detach",
    "PUMP",
    "PRINTER",
]

logger = logging.getLogger(__name__)

TRACE = "snoop_trace"
SPY = "snoop_spy"
NETWORKS = (TRACE, SPY)
SIGNAL = {TRACE: "SNOOP_TRACE", SPY: "SNOOP_SPY"}
EXCHANGE = {TRACE: SNOOP_TRACE_EXCHANGE, SPY: SNOOP_SPY_EXCHANGE}
ROUTING_KEY = {TRACE: SNOOP_TRACE_ROUTING_KEY, SPY: SNOOP_SPY_ROUTING_KEY}
PREFIX = {TRACE: " [+t] ", SPY: " [+s] "}

LOCAL_COLOR = "blue"
REMOTE_COLOR = "magenta"  # purple on every terminal palette
SCRIBBLE_COLOR = "bright_black"  # dark grey

MAX_PENDING = 10_000  # lines waiting to be published, per process
MAX_BATCH = 256  # records per snoop message
MAX_PRINT_BACKLOG = 10_000  # lines waiting to be printed, per process
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # miros's trace timestamps

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SnoopRecord(NamedTuple):
    """One line of instrumentation as it travels (a plain tuple on the wire)."""

    kind: str  # "trace", "spy" or "scribble"
    name: str  # the chart's name
    text: str  # the line as miros wrote it (trace: "[ts] [name] e->sig() a->b")
    color: bool = True  # scribbles only: whether the scribbler asked for colour
    event: str = ""  # trace/rx: id of the mesh event being handled; tx: id of the one sent
    cause: str = ""  # tx/rx: id of the event whose handling sent it ("" = none)


PRINTED_KINDS = frozenset(("trace", "spy", "scribble"))  # tx/rx records are for the view
PRESENCE_SIGNAL = "SNOOP_PRESENCE"  # see miros_rabbitmq.mesh.presence


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour codes."""
    return _ANSI.sub("", text)


def _records(payload: Any) -> list[SnoopRecord]:
    """The records of a decoded payload; malformed items are skipped."""
    if not isinstance(payload, (tuple, list)):
        return []
    found = []
    for item in payload:
        if isinstance(item, (tuple, list)) and len(item) >= 3:
            kind, name, text = item[0], item[1], item[2]
            color = bool(item[3]) if len(item) > 3 else True
            event = item[4] if len(item) > 4 and isinstance(item[4], str) else ""
            cause = item[5] if len(item) > 5 and isinstance(item[5], str) else ""
            if isinstance(kind, str) and isinstance(name, str) and isinstance(text, str):
                found.append(SnoopRecord(kind, name, text, color, event, cause))
    return found


def format_record(record: SnoopRecord, network: str, *, local: bool, color: bool) -> str:
    """The printed line of a record: ``" [+t] " + text`` with the chart name coloured.

    ``local``: the record comes from a chart of this process (blue) rather
    than another node (purple). ``color=False`` gives plain text.
    """
    prefix = PREFIX[network]
    # from the network: colour codes dropped, every other control character
    # shown escaped (an OSC/CSI sequence must not act on the watcher's terminal)
    text = printable(strip_ansi(record.text).replace("\n", " ").rstrip())
    name = printable(record.name)
    if record.kind == "spy":
        if not color:
            return f"{prefix}{name} {text}"
        return f"{prefix}{click.style(name, fg=LOCAL_COLOR if local else REMOTE_COLOR)} {text}"
    if not color:
        return prefix + text
    styled = click.style(name, fg=LOCAL_COLOR if local else REMOTE_COLOR)
    tag = f"[{name}]"
    head, found, tail = text.partition(tag)
    if not found:
        head, tail = "", text
    else:
        head = f"{head}[{styled}]"
    if record.kind == "scribble" and record.color:
        tail = click.style(tail, fg=SCRIBBLE_COLOR)
    return prefix + head + tail


def scribble_text(name: str, message: str, when: datetime | None = None) -> str:
    """``[timestamp] [name] # message``, with miros's timestamp format."""
    stamp = (when or datetime.now()).strftime(TIMESTAMP_FORMAT)
    return f"[{stamp}] [{name}] # {message}"


# --------------------------------------------------------------------------- printing


class _SharedWorker:
    """A thread per process that runs while somebody uses it (refcounted).

    Subclasses set ``thread_name`` and implement ``_run``, which ends once
    ``_thread`` is no longer itself (``release`` of the last user notifies
    ``_wake``).
    """

    thread_name = "miros-rabbitmq-worker"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._users = 0
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.thread_name,
                                                daemon=True)
                self._thread.start()

    def release(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._users -= 1
            thread = self._thread if self._users <= 0 else None
            if thread is not None:
                self._users = 0
                self._thread = None
                self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _Printer(_SharedWorker):
    """One thread per process writing snoop lines to stdout; never blocks a caller.

    ``offer`` appends to a bounded queue (a full queue drops the line and
    counts it); the thread writes and flushes. Refcounted: it runs while
    somebody listens.
    """

    thread_name = "miros-rabbitmq-snoop-print"

    def __init__(self, max_backlog: int = MAX_PRINT_BACKLOG) -> None:
        super().__init__()
        self.max_backlog = max_backlog
        self.dropped = 0
        self.printed = 0
        self._lines: collections.deque[tuple[Callable[[str], None] | None, str]] = (
            collections.deque())
        self._busy = False

    def release(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        super().release(timeout)

    def offer(self, line: str, write: Callable[[str], None] | None = None) -> bool:
        with self._lock:
            if len(self._lines) >= self.max_backlog:
                self.dropped += 1
                return False
            self._lines.append((write, line))
            self._wake.notify()
        return True

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every queued line is written; False on timeout."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._lines and not self._busy, timeout)

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._lines or self._thread is not me)
                if not self._lines and self._thread is not me:
                    self._wake.notify_all()
                    return
                batch = list(self._lines)
                self._lines.clear()
                self._busy = True
            try:
                self._write(batch)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _write(self, batch: list[tuple[Callable[[str], None] | None, str]]) -> None:
        plain: list[str] = []
        for write, line in batch:
            if write is None:
                plain.append(line)
                continue
            try:
                write(line)
            except Exception:
                logger.exception("snoop output callback failed")
        if plain:
            stream: TextIO = sys.stdout
            try:
                stream.write("\n".join(plain) + "\n")
                stream.flush()
            except (OSError, ValueError):  # closed pipe, closed stream: nothing to do
                pass
        self.printed += len(batch)


PRINTER = _Printer()


# --------------------------------------------------------------------------- listening


class SnoopListener:
    """Joins one snoop network on one broker and prints what every node sends.

    Used by the charts (one per process, network, broker, key and colour
    choice, shared by the charts of the process) and by ``miros-rabbitmq
    snoop``, which listens without being a chart.

    ``write``: where lines go (default: stdout through :data:`PRINTER`);
    ``grep``: only records of charts whose name contains one of these;
    ``local_identities``: sender identities printed as local (blue);
    ``render``: ``render(record, network, local) -> line`` instead of
    :func:`format_record` (``miros-rabbitmq snoop --json``).
    ``tap``: ``tap(network, envelope)`` is called (I/O thread, must not block)
    with every authentic message, records and presence alike
    (``miros-rabbitmq view``, ``snoop --record``); ``quiet``: print nothing.
    """

    def __init__(
        self,
        address: BrokerAddress,
        network: str,
        keys: Sequence[Secret | str | bytes],
        *,
        color: bool = True,
        heartbeat: int = DEFAULT_HEARTBEAT,
        write: Callable[[str], None] | None = None,
        grep: Iterable[str] = (),
        local_identities: Iterable[str] = (),
        alternates: Sequence[BrokerAddress] = (),
        tap: Callable[[str, Any], None] | None = None,
        quiet: bool = False,
        render: Callable[[SnoopRecord, str, bool], str] | None = None,
    ) -> None:
        if network not in NETWORKS:
            raise ValueError(f"not a snoop network: {network!r}")
        self.address = address
        self.alternates = tuple(alternates)  # cluster mode: the other nodes
        self.network = network
        # as MirosNets' snoop networks: tokens of this network only
        self.codec = Codec(keys, serializer=JSON, network=NetworkName(network))
        self.replays = ReplayGuard(owner=f"snoop-{network}")
        self.color = color
        self.heartbeat = heartbeat
        self.write = write
        self.grep = tuple(grep)
        self.local_identities: set[str] = set(local_identities)
        self.tap = tap
        self.quiet = quiet
        self.render = render
        self.drops = DropCounter(f"snoop-{network}")
        self.received = 0
        self.printed = 0
        self.link: BrokerLink | None = None
        self.consumer: Consumer | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SnoopListener({self.network!r}, {self.address.url!r}, color={self.color})"

    @property
    def ready(self) -> threading.Event:
        if self.consumer is None:
            raise RuntimeError("start() the listener first")
        return self.consumer.ready

    def start(self, timeout: float = 5.0) -> bool:
        """Bind our own queue to the snoop exchange; True once it consumes."""
        if self.link is None:
            PRINTER.acquire()
            self.link = LINKS.acquire(self.address, heartbeat=self.heartbeat,
                                      exchanges=EXCHANGES, alternates=self.alternates)
            host = _safe_host()
            self.consumer = Consumer(
                exchange=EXCHANGE[self.network],
                routing_keys=[ROUTING_KEY[self.network]],
                on_message=self._on_message,
                with_routing_key=True,
                queue=f"{SNOOP_QUEUE_PREFIX}{self.network[6:]}.{host}.{uuid.uuid4().hex[:12]}",
                durable=False,  # exclusive: the broker deletes it with our connection
                prefetch=512,
            )
            self.link.add_consumer(self.consumer)
        assert self.consumer is not None
        return self.consumer.ready.wait(timeout) if timeout > 0 else self.consumer.ready.is_set()

    def stop(self, flush_timeout: float = 1.0) -> None:
        link, consumer = self.link, self.consumer
        if link is None:
            return
        self.link = None
        if consumer is not None:
            link.remove_consumer(consumer, delete_queue=True)
        LINKS.release(link, flush_timeout=0)
        PRINTER.release(flush_timeout)

    # -- the I/O thread
    def _on_message(self, body: bytes, routing_key: str | None = None) -> bool:
        for token in split_tokens(body):  # one token, or a batch of them
            self._on_token(token, routing_key)
        return True

    def _on_token(self, token: bytes, routing_key: str | None) -> None:
        try:
            envelope = self.codec.decode(token, routing_key=routing_key)
        except DecodeError as error:
            self.drops.drop(self.network, error.reason)
            return
        if envelope.epoch == 0:  # no sender incarnation: a scout message, not a snoop line
            self.drops.drop(self.network, "no_epoch")
            return
        if self.replays.seen(envelope.sender, envelope.epoch, envelope.seq):
            self.drops.drop(self.network, "replay")
            return
        self.replays.accept(envelope.sender, envelope.epoch, envelope.seq)
        self.received += 1
        if self.tap is not None:
            try:
                self.tap(self.network, envelope)
            except Exception:
                logger.exception("snoop tap failed")
        if self.quiet or envelope.signal_name == PRESENCE_SIGNAL:
            return
        local = envelope.sender in self.local_identities
        for record in _records(envelope.payload):
            if record.kind not in PRINTED_KINDS:
                continue
            if self.grep and not any(word in record.name for word in self.grep):
                continue
            line = (self.render(record, self.network, local) if self.render is not None
                    else format_record(record, self.network, local=local, color=self.color))
            if PRINTER.offer(line, self.write):
                self.printed += 1
            else:
                self.drops.drop(self.network, "print_backlog")


def _safe_host() -> str:
    import socket

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40]
    return name or "host"


class _ListenerKey(NamedTuple):
    broker: tuple[Any, ...]
    network: str
    keys: tuple[str, ...]
    color: bool


class _Listeners:
    """Charts of one process share one listener per broker, network, keys and colour."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[_ListenerKey, tuple[SnoopListener, int]] = {}

    def acquire(self, nets: MirosNets, network: str, color: bool) -> SnoopListener:
        keys = tuple(k.reveal() for k in _keys_of(nets.settings, network))
        key = _ListenerKey(nets.broker_key(), network, keys, color)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                listener = SnoopListener(nets.local_address, network, keys, color=color,
                                         heartbeat=nets.settings.heartbeat,
                                         alternates=nets.cluster[1:])
                self._entries[key] = (listener, 1)
                start = True
            else:
                listener, count = entry
                self._entries[key] = (listener, count + 1)
                start = False
            listener.local_identities.add(nets.identity)
        if start:
            listener.start(timeout=0)
        return listener

    def release(self, listener: SnoopListener, identity: str) -> None:
        with self._lock:
            for key, (known, count) in list(self._entries.items()):
                if known is listener:
                    listener.local_identities.discard(identity)
                    if count > 1:
                        self._entries[key] = (known, count - 1)
                        return
                    del self._entries[key]
                    break
            else:
                return
        listener.stop()


LISTENERS = _Listeners()


def _keys_of(settings: Settings, network: str) -> tuple[Secret, ...]:
    return settings.snoop_trace_keys if network == TRACE else settings.snoop_spy_keys


# --------------------------------------------------------------------------- publishing


class _Pump(_SharedWorker):
    """One thread per process publishing the snoop records of every chart, in order.

    :meth:`offer` is what the charts' live trace/spy callbacks call on their
    own threads: it appends to a bounded queue and returns at once (False =
    dropped because the queue is full).
    """

    thread_name = "miros-rabbitmq-snoop-pump"

    def __init__(self, max_pending: int = MAX_PENDING, max_batch: int = MAX_BATCH) -> None:
        super().__init__()
        self.max_pending = max_pending
        self.max_batch = max_batch
        self._items: collections.deque[tuple[ChartSnoop, str, SnoopRecord]] = collections.deque()

    def offer(self, source: ChartSnoop, network: str, record: SnoopRecord) -> bool:
        with self._lock:
            if len(self._items) >= self.max_pending or self._thread is None:
                source.dropped[network] += 1
                overflow = True
            else:
                self._items.append((source, network, record))
                source.pending += 1
                self._wake.notify()
                overflow = False
        if overflow:
            source.nets.drops.drop(network, "snoop_backlog")
        return not overflow

    def flush(self, source: ChartSnoop, timeout: float) -> bool:
        """Wait until everything ``source`` offered has been handed to its links."""
        with self._wake:
            return self._wake.wait_for(lambda: source.pending <= 0, timeout)

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._items or self._thread is not me)
                if not self._items and self._thread is not me:
                    return
                batch = list(self._items)
                self._items.clear()
            self._publish(batch)
            with self._wake:
                self._wake.notify_all()

    def _publish(self, batch: list[tuple[ChartSnoop, str, SnoopRecord]]) -> None:
        # group by (chart, network), keeping each group's order
        groups: dict[tuple[int, str], tuple[ChartSnoop, list[SnoopRecord]]] = {}
        for source, network, record in batch:
            groups.setdefault((id(source), network), (source, []))[1].append(record)
        for (_, network), (source, records) in groups.items():
            for start in range(0, len(records), self.max_batch):
                chunk = records[start:start + self.max_batch]
                try:
                    taken = source.nets.transmit(SIGNAL[network], [list(r) for r in chunk],
                                                 network=network)
                except Exception:  # instrumentation must never break anything
                    logger.exception("%s: could not publish snoop records", source.name)
                    taken = False
                if taken:
                    source.published[network] += len(chunk)
                else:
                    source.dropped[network] += len(chunk)
                    source.nets.drops.drop(network, "link_full")
            with self._lock:
                source.pending -= len(records)


PUMP = _Pump()


# --------------------------------------------------------------------------- a chart's snoop


class ChartSnoop:
    """The snoop state of one networked chart (``chart._snoop``)."""

    def __init__(self, chart: Any) -> None:
        self.chart = chart
        self.nets: MirosNets = chart.nets
        self.enabled: dict[str, bool] = {TRACE: False, SPY: False}
        self.listeners: dict[str, SnoopListener] = {}
        self.published: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.pending = 0
        self._pumping = False
        self._lock = threading.Lock()
        self._scribbles = itertools.count()

    @property
    def name(self) -> str:
        return str(self.chart.name)

    def enable(self, network: str, color: bool) -> None:
        with self._lock:
            if not self._pumping:
                PUMP.acquire()
                self._pumping = True
            old = self.listeners.get(network)
            if old is not None and old.color == color:
                return
            self.listeners[network] = LISTENERS.acquire(self.nets, network, color)
            if old is not None:
                LISTENERS.release(old, self.nets.identity)
            self.enabled[network] = True
        # the hook: miros calls these on the chart's thread after every step.
        # Set directly (the base-class registration): ActiveObject's own
        # register_* would route each line through miros's unbounded writer
        # queue first; ours only appends to the bounded pump queue.
        from miros.hsm import HsmWithQueues

        if network == TRACE:
            HsmWithQueues.register_live_trace_callback(self.chart, self._on_trace_line)
            self.chart.live_trace = True
            self._hook_causation(True)
        else:
            HsmWithQueues.register_live_spy_callback(self.chart, self._on_spy_line)
            self.chart.live_spy = True

    def _on_trace_line(self, line: str) -> None:
        try:
            text = line.strip()
            if text:
                causes = self._causes()
                current = causes.current if causes is not None else None
                PUMP.offer(self, TRACE, SnoopRecord("trace", self.name, text, True,
                                                    current.event if current else ""))
        except Exception:  # never into the chart's thread
            logger.debug("snoop trace callback failed", exc_info=True)

    # -- causation (miros_rabbitmq.mesh.causation): what the view draws arrows from
    def _causes(self) -> Any:
        try:
            queue = chart_queue(self.chart)
        except AttributeError:  # not a networked chart's queue
            return None
        return getattr(queue, "causes", None)

    def _hook_causation(self, on: bool) -> None:
        causes = self._causes()
        self.nets.on_mesh_transmit = self._on_transmit if on else None
        if causes is not None:
            causes.on_receive = self._on_receive if on else None

    def _on_transmit(self, envelope: Any) -> None:
        text = f"[{datetime.now().strftime(TIMESTAMP_FORMAT)}] [{self.name}] => " \
               f"{envelope.signal_name}()"
        PUMP.offer(self, TRACE, SnoopRecord("tx", self.name, text, True, envelope.event_id,
                                            envelope.causation))

    def _on_receive(self, context: Any) -> None:
        text = f"[{datetime.now().strftime(TIMESTAMP_FORMAT)}] [{self.name}] <= " \
               f"{context.signal}()"
        PUMP.offer(self, TRACE, SnoopRecord("rx", self.name, text, True, context.event,
                                            context.cause))

    def _on_spy_line(self, line: Any) -> None:
        try:
            text = str(line).strip()
            if text:
                PUMP.offer(self, SPY, SnoopRecord("spy", self.name, text))
        except Exception:
            logger.debug("snoop spy callback failed", exc_info=True)

    def scribble(self, message: str, enable_color: bool = True) -> bool:
        """Put a note into the snoop trace (or spy) stream; False if neither is on."""
        text = scribble_text(self.name, str(message))
        for network in (TRACE, SPY):
            if self.enabled[network]:
                return PUMP.offer(self, network, SnoopRecord("scribble", self.name, text,
                                                             bool(enable_color)))
        return False

    def stop(self, timeout: float = 1.0) -> None:
        """Publish what is queued (bounded), stop listening, unhook miros."""
        with self._lock:
            listeners = list(self.listeners.values())
            self.listeners.clear()
            pumping, self._pumping = self._pumping, False
            self.enabled = {TRACE: False, SPY: False}
        self.chart.live_trace = False
        self.chart.live_spy = False
        self._hook_causation(False)
        if pumping:
            PUMP.flush(self, timeout)
            PUMP.release()
        for listener in listeners:
            LISTENERS.release(listener, self.nets.identity)

    def stats(self) -> dict[str, Any]:
        return {"published": dict(self.published), "dropped": dict(self.dropped),
                "pending": self.pending}


# --------------------------------------------------------------------------- the mixin's API


def _chart_snoop(chart: Any) -> ChartSnoop:
    snoop = getattr(chart, "_snoop", None)
    if snoop is None:
        snoop = ChartSnoop(chart)
        chart._snoop = snoop
    return snoop


def enable(chart: Any, network: str, *, color: bool = True) -> None:
    """``enable_snoop_trace()`` & co.: publish this chart's lines, print everybody's."""
    if network not in NETWORKS:
        raise ValueError(f"not a snoop network: {network!r}")
    _chart_snoop(chart).enable(network, color)


def scribble(chart: Any, message: str, enable_color: bool = True) -> None:
    """``snoop_scribble()``: a note in the snoop stream (miros's spy scribble when off)."""
    snoop = getattr(chart, "_snoop", None)
    if snoop is not None and snoop.scribble(message, enable_color):
        return
    if snoop is None or not any(snoop.enabled.values()):
        chart.scribble(scribble_text(str(chart.name), str(message)))


def detach(chart: Any, timeout: float = 1.0) -> None:
    """Called when a chart stops: flush its lines, stop printing for it."""
    snoop = getattr(chart, "_snoop", None)
    if snoop is not None:
        snoop.stop(timeout)

