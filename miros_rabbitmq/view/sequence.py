"""Snoop trace logs to sequence diagrams: text (miros documentation style), Mermaid, SVG.

Pure functions, no I/O: :func:`parse_log` reads trace lines, whatever their
origin -- the output of ``miros-rabbitmq snoop`` or of a chart with snoop
trace on (`` [+t] [timestamp] [name] e->signal() source->target``), with or
without colour codes, or miros's own ``trace()`` text -- and ignores every
other line (spy lines, program output). Scribbles (``[ts] [name] # text``)
become notes.

Steps are put in timestamp order across all charts and machines and numbered
``(1)``, ``(2)``, ... in that order, so the number tells what happened first
anywhere in the system. :func:`render_text` draws one diagram per chart, as
miros's documentation does::

    [Statechart: 04ccc_ao]
          top           outer          inner
           +--start_at()->|              |
           |     (1)      |              |
           |              +--to_inner()->|
           |              |     (3)      |
           |              +<-to_outer()--|
           |              |     (5)      |

:func:`render_mermaid` and :func:`render_svg` draw all charts in one
diagram: one lifeline per state, the states of a chart boxed together, the
arrows in global order.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "Step",
    "Note",
    "Message",
    "Trace",
    "parse_log",
    "parse_line",
    "render_text",
    "render_mermaid",
    "render_svg",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LINE = re.compile(
    r"\[(?P<ts>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?)\]\s+\[(?P<name>[^\]]+)\]\s+"
    r"(?:e->(?P<signal>[^\s()]+)\(\)\s+(?P<source>\S+?)->(?P<target>\S+)\s*$"
    r"|#\s?(?P<note>.*)$)")
_SPY = re.compile(r"^\s*\[\+s\]")


@dataclass(frozen=True)
class Step:
    """One state transition of one chart."""

    number: int
    when: datetime
    chart: str
    signal: str
    source: str
    target: str

    @property
    def label(self) -> str:
        return f"{self.signal}()"


@dataclass(frozen=True)
class Note:
    """One scribble of one chart."""

    number: int
    when: datetime
    chart: str
    text: str


@dataclass(frozen=True)
class Message:
    """A mesh event from the step that sent it to the step it caused (live view export)."""

    source: int  # number of the sending step
    target: int  # number of the receiving step
    signal: str


@dataclass
class Trace:
    """Every step and note of a log, in global time order.

    ``messages``: events between charts (known only to the live view, which
    has causation ids; a log alone has none).
    """

    items: list[Step | Note]
    messages: list[Message] = field(default_factory=list)

    @property
    def charts(self) -> list[str]:
        """Chart names in the order they first appear."""
        seen: dict[str, None] = {}
        for item in self.items:
            seen.setdefault(item.chart, None)
        return list(seen)

    def states(self, chart: str) -> list[str]:
        """A chart's states, ``top`` first, then in the order they first appear."""
        seen: dict[str, None] = {}
        for item in self.items:
            if isinstance(item, Step) and item.chart == chart:
                seen.setdefault(item.source, None)
                seen.setdefault(item.target, None)
        states = list(seen)
        if "top" in seen:
            states.remove("top")
            states.insert(0, "top")
        return states

    def of(self, chart: str) -> list[Step | Note]:
        return [item for item in self.items if item.chart == chart]


def _timestamp(text: str) -> datetime:
    text = text.replace("T", " ")
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S")


def parse_line(text: str) -> tuple[datetime, str, str | None, str, str, str | None] | None:
    """One trace line or scribble: ``(when, chart, signal, source, target, note)``.

    ``signal`` is None for a scribble, ``note`` None for a transition; None
    when ``text`` is neither (used by the live view, :mod:`miros_rabbitmq.view.model`).
    """
    match = _LINE.search(_ANSI.sub("", text).rstrip("\r\n"))
    if match is None:
        return None
    groups = match.groupdict()
    try:
        when = _timestamp(groups["ts"])
    except ValueError:
        return None
    return (when, groups["name"], groups["signal"], groups["source"] or "",
            groups["target"] or "", groups["note"].strip() if groups["note"] is not None else None)


def parse_log(lines: Iterable[str], *, charts: Iterable[str] = ()) -> Trace:
    """The steps and notes in ``lines`` (other lines ignored), numbered in time order.

    ``charts``: keep only these chart names (all when empty). Lines with the
    same timestamp keep the order they had in the log.
    """
    wanted = set(charts)
    found: list[tuple[datetime, int, dict[str, str]]] = []
    for index, raw in enumerate(lines):
        line = _ANSI.sub("", raw).rstrip("\r\n")
        if _SPY.match(line):
            continue
        match = _LINE.search(line)
        if match is None:
            continue
        groups = match.groupdict()
        if wanted and groups["name"] not in wanted:
            continue
        try:
            when = _timestamp(groups["ts"])
        except ValueError:
            continue
        found.append((when, index, groups))
    found.sort(key=lambda item: (item[0], item[1]))
    items: list[Step | Note] = []
    for number, (when, _, groups) in enumerate(found, start=1):
        if groups["note"] is not None:
            items.append(Note(number, when, groups["name"], groups["note"].strip()))
        else:
            items.append(Step(number, when, groups["name"], groups["signal"],
                              groups["source"], groups["target"]))
    return Trace(items)


# --------------------------------------------------------------------------- text


_SELF_ROWS = 5


def _layout(states: list[str], steps: list[Step]) -> tuple[list[int], int]:
    """Bar positions of the state columns, and the width needed right of the last one."""
    count = len(states)
    index = {state: i for i, state in enumerate(states)}
    gaps = [max(6, len(states[k]) // 2 + (len(states[k + 1]) + 1) // 2 + 2)
            for k in range(count - 1)]
    tail = len(states[-1]) // 2 + 2 if states else 0
    for step in steps:
        i, j = index[step.source], index[step.target]
        number = len(f"({step.number})")
        if i == j:
            need = max(len(step.label), number + 2) + 3
            if i < count - 1:
                gaps[i] = max(gaps[i], need)
            else:
                tail = max(tail, need)
            continue
        segment = i if j > i else i - 1  # the label sits next to the source
        gaps[segment] = max(gaps[segment], len(step.label) + 6, number + 4)
    left = max(1, (len(states[0]) + 1) // 2) + 1 if states else 1
    positions = [left]
    for gap in gaps:
        positions.append(positions[-1] + gap)
    return positions, tail


def _canvas_row(positions: list[int], width: int, bar: str = "|") -> list[str]:
    row = [" "] * width
    for x in positions:
        row[x] = bar
    return row


def _put(row: list[str], x: int, text: str) -> None:
    for offset, char in enumerate(text):
        if 0 <= x + offset < len(row):
            row[x + offset] = char
        else:
            row.append(char)


def _centered(row: list[str], left: int, right: int, text: str) -> None:
    """Write ``text`` centred strictly between columns ``left`` and ``right``."""
    inside = right - left - 1
    start = left + 1 + max(0, (inside - len(text)) // 2)
    _put(row, start, text)


def _chart_text(trace: Trace, chart: str) -> list[str]:
    items = trace.of(chart)
    states = trace.states(chart)
    steps = [item for item in items if isinstance(item, Step)]
    lines = [f"[Statechart: {chart}]"]
    if not states:
        lines.extend(f"  ({note.number}) # {note.text}" for note in items
                     if isinstance(note, Note))
        return lines
    positions, tail = _layout(states, steps)
    width = positions[-1] + tail + 1
    index = {state: i for i, state in enumerate(states)}
    header = [" "] * width
    for state, x in zip(states, positions, strict=True):
        _put(header, x - len(state) // 2, state)
    lines.append("".join(header))
    for item in items:
        if isinstance(item, Note):
            row = _canvas_row(positions, width)
            _put(row, positions[-1] + 3, f"({item.number}) # {item.text}")
            lines.append("".join(row))
            continue
        i, j = index[item.source], index[item.target]
        number = f"({item.number})"
        if i == j:
            x = positions[i]
            rows = [_canvas_row(positions, width) for _ in range(_SELF_ROWS)]
            rows[0][x] = "+"
            for row in rows[1:4]:
                row[x] = " "  # the loop stands in for the lifeline
            _put(rows[1], x + 1, "\\ " + number)
            _put(rows[2], x + 1, item.label)
            _put(rows[3], x + 1, "/")
            rows[4][x] = "<"
            lines.extend("".join(row) for row in rows)
            continue
        lo, hi = min(i, j), max(i, j)
        arrow = _canvas_row(positions, width)
        for x in range(positions[lo], positions[hi]):
            arrow[x] = "-"
        for k in range(lo + 1, hi):
            arrow[positions[k]] = "+"
        arrow[positions[lo]] = "+"
        arrow[positions[hi]] = "|"
        if j > i:
            arrow[positions[hi] - 1] = ">"
        else:
            arrow[positions[lo] + 1] = "<"
        segment = i if j > i else i - 1
        _centered(arrow, positions[segment], positions[segment + 1], item.label)
        below = _canvas_row(positions, width)
        _centered(below, positions[segment], positions[segment + 1], number)
        lines.append("".join(arrow))
        lines.append("".join(below))
    return lines


def render_text(trace: Trace) -> str:
    """One miros-style sequence diagram per chart, numbered in global time order."""
    if not trace.items:
        return ""
    blocks = []
    for chart in trace.charts:
        blocks.append("\n".join(line.rstrip() for line in _chart_text(trace, chart)))
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- mermaid


def _ident(trace: Trace, chart: str, state: str) -> str:
    """A Mermaid participant id: ``c<chart number>_<state>``."""
    return f"c{trace.charts.index(chart) + 1}_" + re.sub(r"[^A-Za-z0-9_]", "_", state)


def _mermaid_text(text: str) -> str:
    """Text safe inside a Mermaid message or note (entity codes for the specials)."""
    out = []
    for char in text:
        if char in "#;<>":
            out.append(f"#{ord(char)};")
        else:
            out.append(char)
    return "".join(out)


def render_mermaid(trace: Trace) -> str:
    """A Mermaid ``sequenceDiagram``: a box per chart, a lifeline per state."""
    lines = ["sequenceDiagram"]
    for chart in trace.charts:
        lines.append(f"    box rgba(128,128,128,0.08) {_mermaid_text(chart)}")
        states = trace.states(chart) or ["notes"]
        for state in states:
            lines.append(f"        participant {_ident(trace, chart, state)} as {_mermaid_text(state)}")
        lines.append("    end")
    current: dict[str, str] = {}
    steps = {item.number: item for item in trace.items if isinstance(item, Step)}
    arriving: dict[int, list[Message]] = {}
    for message in trace.messages:
        if message.source in steps and message.target in steps:
            arriving.setdefault(message.target, []).append(message)
    for item in trace.items:
        for message in arriving.get(item.number, ()):
            sent, got = steps[message.source], steps[message.target]
            lines.append(f"    {_ident(trace, sent.chart, sent.target)}-->>"
                         f"{_ident(trace, got.chart, got.source)}: "
                         f"{_mermaid_text(message.signal)}() ({message.source}->{message.target})")
        if isinstance(item, Step):
            source, target = _ident(trace, item.chart, item.source), _ident(trace, item.chart, item.target)
            lines.append(f"    {source}->>{target}: ({item.number}) "
                         f"{_mermaid_text(item.label)}")
            current[item.chart] = item.target
        else:
            states = trace.states(item.chart) or ["notes"]
            where = _ident(trace, item.chart, current.get(item.chart, states[0]))
            lines.append(f"    Note right of {where}: ({item.number}) "
                         f"{_mermaid_text('# ' + item.text)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- svg


_CHAR_W = 7.3  # width of a character of the 12 px monospace font
_ROW_H = 34
_TOP = 70  # y of the first row's lifeline start
_PAD = 14
_LOOP = 34  # a self-transition's loop, then its label


def _w(text: str) -> float:
    return len(text) * _CHAR_W


def _svg_layout(trace: Trace) -> tuple[list[tuple[str, str]], list[float],
                                         dict[str, tuple[float, float]], float]:
    """Lanes (chart, state), their x, each chart's box (left, right), total width."""
    lanes = [(chart, state) for chart in trace.charts for state in trace.states(chart) or ["notes"]]
    index = {lane: k for k, lane in enumerate(lanes)}
    count = len(lanes)
    # gaps[k]: distance from lane k to lane k + 1 inside a chart
    gaps = [(_w(lanes[k][1]) + _w(lanes[k + 1][1])) / 2 + _PAD for k in range(count - 1)]
    left_margin = {c: _w(trace.states(c)[0] if trace.states(c) else "notes") / 2 + _PAD
                   for c in trace.charts}
    right_margin = {c: _w((trace.states(c) or ["notes"])[-1]) / 2 + _PAD for c in trace.charts}
    for item in trace.items:
        if isinstance(item, Note):
            continue
        a, b = index[(item.chart, item.source)], index[(item.chart, item.target)]
        label = _w(f"({item.number}) {item.label}")
        if a == b:
            if a + 1 < count and lanes[a + 1][0] == item.chart:
                gaps[a] = max(gaps[a], _LOOP + label + _PAD)
            else:
                right_margin[item.chart] = max(right_margin[item.chart], _LOOP + label + _PAD)
            continue
        lo, hi = min(a, b), max(a, b)
        short = label + 2 * _PAD - sum(gaps[lo:hi])
        if short > 0:
            for k in range(lo, hi):
                gaps[k] += short / (hi - lo)
    # notes are centred in their chart's box: make the box wide enough
    for item in trace.items:
        if isinstance(item, Note):
            chart_lanes = [k for k, (c, _) in enumerate(lanes) if c == item.chart]
            inner = sum(gaps[chart_lanes[0]:chart_lanes[-1]])
            width = inner + left_margin[item.chart] + right_margin[item.chart]
            short = _w(f"({item.number}) # {item.text}") + 2 * _PAD - width
            if short > 0:
                left_margin[item.chart] += short / 2
                right_margin[item.chart] += short / 2
    xs: list[float] = []
    boxes: dict[str, tuple[float, float]] = {}
    x: float = _PAD
    for chart in trace.charts:
        chart_lanes = [k for k, (c, _) in enumerate(lanes) if c == chart]
        left = x
        x += left_margin[chart]
        for position, k in enumerate(chart_lanes):
            if position:
                x += gaps[k - 1]
            xs.append(x)
        x += right_margin[chart]
        boxes[chart] = (left, x)
        x += _PAD / 2
    return lanes, xs, boxes, x + _PAD / 2


def render_svg(trace: Trace) -> str:
    """A standalone SVG of the whole system: chart boxes, state lifelines, numbered arrows."""
    lanes, xs, boxes, total_w = _svg_layout(trace)
    position = dict(zip(lanes, xs, strict=True))
    total_h = _TOP + (len(trace.items) + 1) * _ROW_H + _PAD
    bottom = total_h - _PAD
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h:.0f}" '
        f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" font-family="monospace" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#333"/></marker></defs>',
        f'<rect width="{total_w:.0f}" height="{total_h:.0f}" fill="white"/>',
    ]
    for chart, (left, right) in boxes.items():
        out.append(f'<rect x="{left:.1f}" y="{_PAD / 2:.1f}" width="{right - left:.1f}" '
                   f'height="{bottom - _PAD / 2:.1f}" fill="#f4f4fb" stroke="#99a" rx="6"/>')
        out.append(f'<text x="{(left + right) / 2:.1f}" y="{_PAD + 12}" text-anchor="middle" '
                   f'font-weight="bold">Statechart: {html.escape(chart)}</text>')
    for lane in lanes:
        cx = position[lane]
        out.append(f'<text x="{cx:.1f}" y="{_TOP - 14}" text-anchor="middle">'
                   f'{html.escape(lane[1])}</text>')
        out.append(f'<line x1="{cx:.1f}" y1="{_TOP - 8}" x2="{cx:.1f}" y2="{bottom - 6:.1f}" '
                   'stroke="#888" stroke-dasharray="4 3"/>')
    for row, item in enumerate(trace.items, start=1):
        y = _TOP + row * _ROW_H
        if isinstance(item, Step):
            x1, x2 = position[(item.chart, item.source)], position[(item.chart, item.target)]
            label = html.escape(f"({item.number}) {item.label}")
            if x1 == x2:
                out.append(f'<path d="M {x1:.1f} {y - 10} h 26 v 14 h -26" fill="none" '
                           'stroke="#333" marker-end="url(#arrow)"/>')
                out.append(f'<text x="{x1 + _LOOP:.1f}" y="{y}">{label}</text>')
            else:
                out.append(f'<line x1="{x1:.1f}" y1="{y}" x2="{x2:.1f}" y2="{y}" stroke="#333" '
                           'marker-end="url(#arrow)"/>')
                out.append(f'<text x="{(x1 + x2) / 2:.1f}" y="{y - 5}" text-anchor="middle">'
                           f'{label}</text>')
        else:
            left, right = boxes[item.chart]
            out.append(f'<text x="{(left + right) / 2:.1f}" y="{y}" text-anchor="middle" '
                       f'fill="#555" font-style="italic">'
                       f'{html.escape(f"({item.number}) # {item.text}")}</text>')
    rows = {item.number: (row, item) for row, item in enumerate(trace.items, start=1)}
    for message in trace.messages:
        if message.source not in rows or message.target not in rows:
            continue
        (row_a, sent), (row_b, got) = rows[message.source], rows[message.target]
        if not isinstance(sent, Step) or not isinstance(got, Step):
            continue
        x1, y1 = position[(sent.chart, sent.target)], _TOP + row_a * _ROW_H
        x2, y2 = position[(got.chart, got.source)], _TOP + row_b * _ROW_H
        out.append(f'<line x1="{x1:.1f}" y1="{y1}" x2="{x2:.1f}" y2="{y2}" stroke="#2a6fdb" '
                   'stroke-dasharray="6 3" marker-end="url(#arrow)" class="message"/>')
        out.append(f'<text x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 - 4:.1f}" '
                   f'text-anchor="middle" fill="#2a6fdb">{html.escape(message.signal)}()</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
