"""The live view's model: charts, events and causal links, as pure code.

:class:`ViewModel` is fed what the snoop networks carry -- snoop records
(``[kind, name, text, color, event, cause]``, see :mod:`miros_rabbitmq.mesh.snoop`)
and presence lines (:mod:`miros_rabbitmq.mesh.presence`) -- and keeps:

* every chart seen: name, host, process, current state, time of its last
  line, and whether it is ``alive``, ``stopped`` or ``silent`` (no line for
  :data:`SILENT_AFTER` presence intervals);
* the items of the sequence diagram, in arrival order: transitions
  (``step``), scribbles (``note``), mesh events sent (``tx``) and taken
  (``rx``);
* links: one per mesh event and receiving chart, drawn from the exact
  sending transition to the exact receiving one. A ``tx`` record comes just
  before the trace line of the transition during which it was sent (miros
  writes the trace line when the step ends), an ``rx`` record just before the
  transition it causes; a link is anchored at the ``tx``/``rx`` item and
  moves to that transition when it arrives.

Every change is also queued as a small dict for the page (:meth:`drain`); the
server sends them in batches. :meth:`chain` gives an item's whole causal chain,
:meth:`trace_of` the :class:`~miros_rabbitmq.view.sequence.Trace` of some
items for the ``sequence`` renderers (export). No I/O, no threads: callers
serialise access (the server holds a lock).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from miros_rabbitmq.view.sequence import Message, Note, Step, Trace, parse_line

__all__ = ["ViewModel", "ChartInfo", "Item", "Link", "SILENT_AFTER", "MAX_ITEMS"]

SILENT_AFTER = 3.0  # presence intervals without a line: the chart is marked silent
MAX_ITEMS = 20_000  # items kept (older ones are forgotten, oldest first)
PRESENCE_SIGNAL = "SNOOP_PRESENCE"
DEFAULT_INTERVAL = 2.0


@dataclass
class ChartInfo:
    """What the view knows of one chart."""

    name: str
    identity: str = ""
    host: str = ""
    pid: int = 0
    program: str = ""
    state: str = ""
    status: str = "alive"  # "alive", "stopped", "silent"
    last_seen: float = 0.0  # view clock (Unix seconds) of its last line
    interval: float = DEFAULT_INTERVAL

    def as_dict(self) -> dict[str, Any]:
        return {"op": "chart", "name": self.name, "host": self.host, "pid": self.pid,
                "program": self.program, "state": self.state, "status": self.status,
                "last": self.last_seen}


@dataclass
class Item:
    """One row of the sequence diagram."""

    id: int
    kind: str  # "step", "note", "tx", "rx"
    chart: str
    when: datetime
    signal: str = ""
    source: str = ""
    target: str = ""
    text: str = ""
    event: str = ""  # step/rx: id of the mesh event being handled; tx: of the one sent
    cause: str = ""  # tx/rx: id of the event whose handling sent it

    def as_dict(self) -> dict[str, Any]:
        return {"op": "item", "id": self.id, "k": self.kind, "c": self.chart,
                "ts": self.when.strftime("%H:%M:%S.%f")[:-3], "t": _epoch(self.when),
                "sig": self.signal,
                "src": self.source, "dst": self.target, "text": self.text,
                "ev": self.event, "ca": self.cause}


@dataclass
class Link:
    """A mesh event from its sending transition to its receiving one."""

    event: str
    receiver: str
    signal: str
    source: int | None = None  # item id (tx, then the sending step)
    target: int | None = None  # item id (rx, then the receiving step)

    @property
    def id(self) -> str:
        return f"{self.event}>{self.receiver}"

    def as_dict(self) -> dict[str, Any]:
        return {"op": "link", "id": self.id, "ev": self.event, "sig": self.signal,
                "from": self.source, "to": self.target}


@dataclass
class _Pending:
    """Links waiting for the transition that ends the step they belong to."""

    tx: list[tuple[str, str]] = field(default_factory=list)  # (event sent, its cause)
    rx: str | None = None  # the event being taken


class ViewModel:
    """Charts, items and links of one mesh, fed record by record."""

    def __init__(self, *, max_items: int = MAX_ITEMS) -> None:
        self.max_items = max_items
        self.charts: dict[str, ChartInfo] = {}
        self.items: collections.OrderedDict[int, Item] = collections.OrderedDict()
        self.links: dict[str, Link] = {}
        self._next_id = 1
        self._updates: list[dict[str, Any]] = []
        self._changed: dict[str, ChartInfo] = {}  # charts to report at the next drain, once
        self._source: dict[str, int] = {}  # event -> item id of its sending end
        self._links_of: dict[str, list[str]] = collections.defaultdict(list)
        self._signal: dict[str, str] = {}
        self._cause: dict[str, str] = {}  # event -> its cause
        self._children: dict[str, set[str]] = collections.defaultdict(set)
        self._by_event: dict[str, list[int]] = collections.defaultdict(list)
        self._pending: dict[str, _Pending] = collections.defaultdict(_Pending)
        self.lines = 0  # records and presence lines taken
        self.ignored = 0  # malformed ones

    # ------------------------------------------------------------------ feeding
    def feed(self, signal_name: str, payload: Any, now: float) -> None:
        """One decoded snoop message (any network): records or a presence line."""
        if signal_name == PRESENCE_SIGNAL:
            self.presence(payload, now)
            return
        if not isinstance(payload, (list, tuple)):
            self.ignored += 1
            return
        for record in payload:
            if isinstance(record, (list, tuple)) and len(record) >= 3:
                self.record(record, now)
            else:
                self.ignored += 1

    def presence(self, payload: Any, now: float) -> None:
        """A presence line (``status`` start / alive / stop)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            self.ignored += 1
            return
        self.lines += 1
        chart = self._chart(payload["name"], now)
        for key in ("identity", "host", "program", "state"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                setattr(chart, key, value)
        if isinstance(payload.get("pid"), int):
            chart.pid = payload["pid"]
        interval = payload.get("interval")
        if isinstance(interval, (int, float)) and interval > 0:
            chart.interval = float(interval)
        chart.status = "stopped" if payload.get("status") == "stop" else "alive"
        self._changed[chart.name] = chart

    def record(self, record: list[Any] | tuple[Any, ...], now: float) -> Item | None:
        """One snoop record; returns the item it made (None for spy lines and junk)."""
        kind, name, text = record[0], record[1], record[2]
        if not (isinstance(kind, str) and isinstance(name, str) and isinstance(text, str)):
            self.ignored += 1
            return None
        event = record[4] if len(record) > 4 and isinstance(record[4], str) else ""
        cause = record[5] if len(record) > 5 and isinstance(record[5], str) else ""
        self.lines += 1
        chart = self._chart(name, now)
        if chart.status != "alive":
            chart.status = "alive"
        if kind == "spy":
            self._changed[chart.name] = chart
            return None
        if kind in ("tx", "rx"):
            when, signal = _when_and_signal(text)
            item = self._add(Item(0, kind, name, when, signal=signal, text=text, event=event,
                                  cause=cause))
            self._changed[chart.name] = chart
            if event:
                self._signal[event] = signal
                if cause:
                    self._cause[event] = cause
                    self._children[cause].add(event)
                if kind == "tx":
                    self._sent(item, name)
                else:
                    self._taken(item, name)
            return item
        parsed = parse_line(text)
        if parsed is None:
            self.ignored += 1
            return None
        when, _, parsed_signal, source, target, note = parsed
        if note is not None:
            item = self._add(Item(0, "note", name, when, text=note, event=event))
        else:
            item = self._add(Item(0, "step", name, when, signal=parsed_signal or "", source=source,
                                  target=target, event=event))
            chart.state = target
            self._stepped(item, name)
        self._changed[chart.name] = chart
        return item

    def tick(self, now: float) -> None:
        """Mark charts that went silent (no line for SILENT_AFTER intervals)."""
        for chart in self.charts.values():
            if chart.status == "alive" and now - chart.last_seen > SILENT_AFTER * chart.interval:
                chart.status = "silent"
                self._changed[chart.name] = chart

    # ------------------------------------------------------------------ links
    def _sent(self, item: Item, chart: str) -> None:
        self._source[item.event] = item.id
        self._pending[chart].tx.append((item.event, item.cause))
        for link_id in self._links_of.get(item.event, ()):
            self._moved(self.links[link_id], source=item.id)

    def _taken(self, item: Item, chart: str) -> None:
        link = self.links.get(f"{item.event}>{chart}")
        if link is None:
            link = Link(item.event, chart, item.signal)
            self.links[link.id] = link
            self._links_of[item.event].append(link.id)
        self._pending[chart].rx = item.event
        self._moved(link, source=self._source.get(item.event), target=item.id)

    def _stepped(self, item: Item, chart: str) -> None:
        pending = self._pending.get(chart)
        if pending is None:
            return
        sent, pending.tx = pending.tx, []
        for event, cause in sent:
            if cause == item.event:  # sent while handling what this step handled
                self._source[event] = item.id
                for link_id in self._links_of.get(event, ()):
                    self._moved(self.links[link_id], source=item.id)
        taken, pending.rx = pending.rx, None
        if taken is not None and taken == item.event:
            link = self.links.get(f"{taken}>{chart}")
            if link is not None:
                self._moved(link, target=item.id)

    def _moved(self, link: Link, *, source: int | None = None, target: int | None = None) -> None:
        changed = False
        if source is not None and source != link.source:
            link.source, changed = source, True
        if target is not None and target != link.target:
            link.target, changed = target, True
        if changed and link.source is not None and link.target is not None:
            self._updates.append(link.as_dict())

    # ------------------------------------------------------------------ helpers
    def _chart(self, name: str, now: float) -> ChartInfo:
        chart = self.charts.get(name)
        if chart is None:
            chart = self.charts[name] = ChartInfo(name)
        chart.last_seen = now
        return chart

    def _add(self, item: Item) -> Item:
        item.id = self._next_id
        self._next_id += 1
        self.items[item.id] = item
        if item.event:
            self._by_event[item.event].append(item.id)
        self._updates.append(item.as_dict())
        while len(self.items) > self.max_items:
            _, old = self.items.popitem(last=False)
            self._forget(old)
        return item

    def _forget(self, item: Item) -> None:
        ids = self._by_event.get(item.event)
        if ids is not None:
            if item.id in ids:
                ids.remove(item.id)
            if not ids:
                del self._by_event[item.event]
                for link_id in self._links_of.pop(item.event, ()):
                    self.links.pop(link_id, None)
                self._source.pop(item.event, None)
                self._signal.pop(item.event, None)
                cause = self._cause.pop(item.event, None)
                if cause is not None and cause in self._children:
                    self._children[cause].discard(item.event)
                    if not self._children[cause]:
                        del self._children[cause]

    # ------------------------------------------------------------------ reading
    def drain(self) -> list[dict[str, Any]]:
        """The updates since the last call, oldest first (each changed chart once, last)."""
        updates, self._updates = self._updates, []
        updates.extend(chart.as_dict() for chart in self._changed.values())
        self._changed.clear()
        return updates

    def snapshot(self, *, last: int = 2000) -> list[dict[str, Any]]:
        """Everything a new page needs: charts, the last ``last`` items and their links."""
        out: list[dict[str, Any]] = [chart.as_dict() for chart in self.charts.values()]
        items = list(self.items.values())[-last:]
        out.extend(item.as_dict() for item in items)
        shown = {item.id for item in items}
        out.extend(link.as_dict() for link in self.links.values()
                   if link.source in shown and link.target in shown)
        return out

    def chain(self, item_id: int) -> dict[str, list[Any]]:
        """The causal chain of an item: its event's ancestors and descendants.

        Returns ``{"events": [...], "items": [...], "links": [...]}``; an item
        of no mesh event is a chain of its own.
        """
        item = self.items.get(item_id)
        if item is None:
            return {"events": [], "items": [], "links": []}
        if not item.event:
            return {"events": [], "items": [item.id], "links": []}
        events = [item.event]
        seen = {item.event}
        cause = self._cause.get(item.event)
        while cause and cause not in seen:  # up to the root
            seen.add(cause)
            events.insert(0, cause)
            cause = self._cause.get(cause)
        queue = collections.deque([item.event])
        while queue:  # down to every descendant
            for child in sorted(self._children.get(queue.popleft(), ())):
                if child not in seen:
                    seen.add(child)
                    events.append(child)
                    queue.append(child)
        items = sorted({i for event in events for i in self._by_event.get(event, ())
                        if i is not None})
        links = [link_id for event in events for link_id in self._links_of.get(event, ())
                 if self.links[link_id].source is not None
                 and self.links[link_id].target is not None]
        for link_id in links:  # the transitions the arrows start and end at
            link = self.links[link_id]
            items.extend(i for i in (link.source, link.target) if i is not None and i not in items)
        return {"events": events, "items": sorted(items), "links": links}

    def trace_of(self, item_ids: Iterable[int] | None = None) -> Trace:
        """The steps, notes and messages among ``item_ids`` (all when None), for export.

        Numbered in timestamp order as ``miros-rabbitmq sequence`` numbers
        them; a link whose two ends are among them becomes a message.
        """
        wanted = list(self.items) if item_ids is None else [int(i) for i in item_ids]
        chosen = [self.items[i] for i in wanted if i in self.items
                  and self.items[i].kind in ("step", "note")]
        chosen.sort(key=lambda item: (item.when, item.id))
        out: list[Step | Note] = []
        number_of: dict[int, int] = {}
        for number, item in enumerate(chosen, start=1):
            number_of[item.id] = number
            if item.kind == "step":
                out.append(Step(number, item.when, item.chart, item.signal, item.source,
                                item.target))
            else:
                out.append(Note(number, item.when, item.chart, item.text))
        messages = [Message(number_of[link.source], number_of[link.target], link.signal)
                    for link in self.links.values()
                    if link.source in number_of and link.target in number_of]
        return Trace(out, messages)


def _epoch(when: datetime) -> float:
    """Unix seconds of a naive local timestamp (miros writes local time)."""
    try:
        return round(when.timestamp(), 6)
    except (OverflowError, OSError, ValueError):
        return 0.0


def _when_and_signal(text: str) -> tuple[datetime, str]:
    """``[ts] [name] => SIGNAL()`` (tx) or ``<= SIGNAL()`` (rx)."""
    when = datetime.now()
    if text.startswith("[") and "]" in text:
        try:
            when = datetime.strptime(text[1:text.index("]")], "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            pass
    signal = text.rsplit(" ", 1)[-1]
    if signal.endswith("()"):
        signal = signal[:-2]
    return when, signal
