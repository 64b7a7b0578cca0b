"""The live view without a browser or a broker: model, causation bookkeeping, records,
the envelope's causation id, and the server's token and loopback rules."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from miros import Event, signals

from miros_rabbitmq.mesh.causation import Context, Tracker, context_of, tag
from miros_rabbitmq.view.model import ViewModel
from miros_rabbitmq.view.record import Player, Recorder, read_record
from miros_rabbitmq.view.sequence import render_mermaid, render_svg
from miros_rabbitmq.view.server import ViewServer
from miros_rabbitmq.wire.codec import JSON, Codec, Envelope

T0 = 1_700_000_000.0


def ts(second: float) -> str:
    whole = int(second)
    return f"2026-11-30 01:00:{whole:02d}.{int((second - whole) * 1e6):06d}"


def trace(name: str, second: float, signal: str, source: str, target: str,
          event: str = "") -> list:
    return ["trace", name, f"[{ts(second)}] [{name}] e->{signal}() {source}->{target}", True,
            event, ""]


def tx(name: str, second: float, signal: str, event: str, cause: str = "") -> list:
    return ["tx", name, f"[{ts(second)}] [{name}] => {signal}()", True, event, cause]


def rx(name: str, second: float, signal: str, event: str, cause: str = "") -> list:
    return ["rx", name, f"[{ts(second)}] [{name}] <= {signal}()", True, event, cause]


def chain_of_three(model: ViewModel, *, rx_first: bool = False) -> None:
    """a kicks: a -> b -> c, each handling step sending the next event."""
    feed = [
        [trace("a", 1, "start_at", "top", "idle"), trace("b", 1, "start_at", "top", "idle"),
         trace("c", 1, "start_at", "top", "idle")],
        [tx("a", 2, "relay", "a:1"), trace("a", 2.1, "kick", "idle", "busy")],
        [rx("b", 3, "relay", "a:1"), tx("b", 3.1, "relay", "b:1", "a:1"),
         trace("b", 3.2, "relay", "idle", "busy", "a:1")],
        [rx("c", 4, "relay", "b:1", "a:1"), trace("c", 4.1, "relay", "idle", "busy", "b:1")],
    ]
    if rx_first:  # the receiver's lines can reach the view before the sender's
        feed[1], feed[2] = feed[2], feed[1]
    for batch in feed:
        model.feed("SNOOP_TRACE", batch, T0)


def test_charts_states_and_links_from_the_sending_to_the_receiving_transition() -> None:
    model = ViewModel()
    chain_of_three(model)
    assert {c.name: c.state for c in model.charts.values()} == {
        "a": "busy", "b": "busy", "c": "busy"}
    steps = {(i.chart, i.signal): i.id for i in model.items.values() if i.kind == "step"}
    links = {(link.signal, link.receiver): (link.source, link.target)
             for link in model.links.values()}
    assert links == {
        ("relay", "b"): (steps["a", "kick"], steps["b", "relay"]),
        ("relay", "c"): (steps["b", "relay"], steps["c", "relay"]),
    }
    updates = model.drain()
    assert {u["op"] for u in updates} == {"chart", "item", "link"}
    assert model.drain() == []


def test_links_survive_the_receiver_s_lines_arriving_first() -> None:
    model = ViewModel()
    chain_of_three(model, rx_first=True)
    steps = {(i.chart, i.signal): i.id for i in model.items.values() if i.kind == "step"}
    link = model.links["a:1>b"]
    assert (link.source, link.target) == (steps["a", "kick"], steps["b", "relay"])


def test_a_click_gives_the_whole_causal_chain_across_three_charts() -> None:
    model = ViewModel()
    chain_of_three(model)
    model.feed("SNOOP_TRACE", [trace("a", 9, "flip", "busy", "idle")], T0)  # unrelated
    c_step = next(i for i in model.items.values() if i.chart == "c" and i.signal == "relay")
    chain = model.chain(c_step.id)
    assert chain["events"] == ["a:1", "b:1"]
    charts = {model.items[i].chart for i in chain["items"]}
    assert charts == {"a", "b", "c"}
    assert sorted(chain["links"]) == ["a:1>b", "b:1>c"]
    flip = next(i for i in model.items.values() if i.signal == "flip")
    assert flip.id not in chain["items"]
    assert model.chain(flip.id) == {"events": [], "items": [flip.id], "links": []}
    # from the middle: ancestors and descendants alike
    b_step = next(i for i in model.items.values() if i.chart == "b" and i.signal == "relay")
    assert model.chain(b_step.id)["events"] == ["a:1", "b:1"]
    assert model.chain(10_000) == {"events": [], "items": [], "links": []}


def test_presence_silence_and_stop() -> None:
    model = ViewModel()
    model.feed("SNOOP_PRESENCE", {"name": "a", "host": "h", "pid": 7, "program": "p.py",
                                  "state": "idle", "status": "start", "interval": 1.0}, T0)
    chart = model.charts["a"]
    assert (chart.host, chart.pid, chart.state, chart.status) == ("h", 7, "idle", "alive")
    model.tick(T0 + 2.0)
    assert chart.status == "alive"
    model.tick(T0 + 3.5)
    assert chart.status == "silent"
    model.feed("SNOOP_PRESENCE", {"name": "a", "status": "alive", "state": "busy"}, T0 + 4)
    assert (chart.status, chart.state) == ("alive", "busy")
    model.feed("SNOOP_PRESENCE", {"name": "a", "status": "stop"}, T0 + 5)
    assert chart.status == "stopped"
    model.tick(T0 + 100)
    assert chart.status == "stopped"


@pytest.mark.parametrize("junk", [None, 5, "text", [1, 2], [[1, 2, 3]], [["trace", "a", "no"]],
                                  {"name": 3}])
def test_malformed_input_is_counted_not_raised(junk: object) -> None:
    model = ViewModel()
    model.feed("SNOOP_TRACE", junk, T0)
    model.feed("SNOOP_PRESENCE", junk, T0)
    assert model.ignored >= 1
    assert not model.items


def test_export_is_the_sequence_output_with_the_arrows_between_charts() -> None:
    model = ViewModel()
    chain_of_three(model)
    svg = render_svg(model.trace_of(None))
    assert "Statechart: a" in svg and "kick()" in svg and "relay()" in svg
    assert svg.count('class="message"') == 2
    mermaid = render_mermaid(model.trace_of(None))
    assert mermaid.startswith("sequenceDiagram")
    assert mermaid.count("-->>") == 2
    only_c = [i.id for i in model.items.values() if i.chart == "c"]
    partial = model.trace_of(only_c)
    assert {s.chart for s in partial.items} == {"c"} and partial.messages == []


def test_old_items_are_forgotten_with_their_links() -> None:
    model = ViewModel(max_items=4)
    chain_of_three(model)
    assert len(model.items) == 4
    for _ in range(5):
        model.feed("SNOOP_TRACE", [trace("z", 9, "flip", "x", "y")], T0)
    assert not model.links and all(i.chart == "z" for i in model.items.values())


def test_causation_tracker_inherits_on_the_chart_thread_only() -> None:
    tracker = Tracker()
    received = Event(signal=signals.relay_t)
    tag(received, Context("a:1", "", True, "relay_t"))
    seen: list[Context] = []
    tracker.on_receive = seen.append
    tracker.taken(received)
    assert tracker.causation() == "a:1" and seen == [context_of(received)]
    local = Event(signal=signals.local_t)
    tracker.posted(local)  # on the chart's thread: part of the same chain
    assert context_of(local) == Context("a:1", "", False, "relay_t")
    tracker.taken(local)
    assert tracker.causation() == "a:1" and len(seen) == 1  # inherited: no new rx
    other = Event(signal=signals.local_t)
    answers: list[str] = []

    def elsewhere() -> None:
        tracker.posted(other)
        answers.append(tracker.causation())

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert context_of(other) is None and answers == [""]
    tracker.taken(Event(signal=signals.local_t))
    assert tracker.causation() == ""
    assert context_of(object()) is None  # no __dict__: nothing to read
    tag(1, Context("x", "", True))  # and nothing to write


def test_the_envelope_carries_the_causation_id() -> None:
    codec = Codec([Fernet.generate_key()], serializer=JSON)
    envelope = Envelope("relay", {"hops": 1}, "b.123", 9, "127.0.0.1:5672", "a.456:3")
    back = codec.decode(codec.encode(envelope))
    assert back == envelope and back.event_id == "b.123:9"
    plain = codec.decode(codec.encode(Envelope("x", 1, "s", 1)))
    assert plain.causation == ""


def test_record_and_replay_at_any_speed(tmp_path) -> None:
    path = str(tmp_path / "run.jsonl")
    recorder = Recorder(path)
    for n in range(5):
        recorder.write("snoop_trace", SimpleNamespace(sender="a.1", signal_name="SNOOP_TRACE",
                                                      payload=[trace("a", n, "go", "x", "y")]),
                       T0 + n * 0.01)
    recorder.close()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("not json\n")
    entries = list(read_record(path))
    assert [e.t for e in entries] == [T0 + n * 0.01 for n in range(5)]
    got = []
    player = Player(entries, got.append, speed=0)
    player.start()
    assert player.done.wait(5)
    assert got == entries and player.clock == entries[-1].t
    player = Player(entries, got.append, speed=2)
    player.start()
    assert player.done.wait(5)
    player.stop()
    (tmp_path / "bad.jsonl").write_text("hello\n")
    with pytest.raises(ValueError, match="not a miros-rabbitmq record"):
        list(read_record(str(tmp_path / "bad.jsonl")))


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_server_binds_to_loopback_and_refuses_requests_without_the_token(tmp_path) -> None:
    server = ViewServer(record_dir=str(tmp_path))
    assert server.host == "127.0.0.1"
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/", "/state", "/events", "/static/app.js", "/chain?item=1", "/nothing"):
            for query in ("", "?token=", "?token=wrong" + server.token[:4]):
                sep = "&" if "?" in path and query else ""
                status, body = _get(base + path + (sep + query[1:] if sep else query))
                assert status == 403, (path, query)
        status, _ = _get(base + "/export?fmt=svg", b"{}")
        assert status == 403
        status, page = _get(server.url)
        assert status == 200 and server.token.encode() in page
        assert b"http://" not in page.replace(b"http://www.w3.org/2000/svg", b"")  # offline
        status, js = _get(f"{base}/static/app.js?token={server.token}")
        assert status == 200 and b"EventSource" in js
        status, state = _get(f"{base}/state?token={server.token}")
        assert json.loads(state)["mode"] == "live"
        status, body = _get(f"{base}/export?fmt=mermaid&token={server.token}", b'{"items": []}')
        assert status == 200 and body.startswith(b"sequenceDiagram")
        status, body = _get(f"{base}/record?token={server.token}", b'{"on": true}')
        assert json.loads(body)["recording"] is True
        status, body = _get(f"{base}/record?token={server.token}", b'{"on": false}')
        assert json.loads(body)["recording"] is False
        assert list(read_record(json.loads(body)["path"])) == []
    finally:
        server.stop()


def test_the_server_serves_a_replay(tmp_path) -> None:
    model_lines = [[trace("a", 1, "start_at", "top", "idle")], [tx("a", 2, "relay", "a:1"),
                                                              trace("a", 2, "kick", "idle", "busy")]]
    path = str(tmp_path / "r.jsonl")
    recorder = Recorder(path)
    for n, payload in enumerate(model_lines):
        recorder.write("snoop_trace", SimpleNamespace(sender="a.1", signal_name="SNOOP_TRACE",
                                                      payload=payload), T0 + n)
    recorder.close()
    server = ViewServer(replay=list(read_record(path)), speed=0)
    server.start()
    try:
        assert server.player is not None and server.player.done.wait(5)
        deadline = threading.Event()
        for _ in range(100):
            if server.state()["items"] == 3:
                break
            deadline.wait(0.05)
        state = server.state()
        assert state["mode"] == "replay" and state["items"] == 3
        assert state["charts"][0]["state"] == "busy"
    finally:
        server.stop()


def test_the_page_ships_in_the_wheel_and_loads_nothing_from_outside() -> None:
    from importlib import resources
    from pathlib import Path

    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    package_data = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"view/static/*"' in package_data
    static = resources.files("miros_rabbitmq.view") / "static"
    for name in ("index.html", "app.js", "app.css"):
        text = (static / name).read_text()
        for outside in ("https://", "http://cdn", "//fonts.", "@import"):
            assert outside not in text, (name, outside)
