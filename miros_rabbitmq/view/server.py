"""The live view's web server: stdlib ``ThreadingHTTPServer`` and server-sent events.

One :class:`ViewServer` holds a :class:`~miros_rabbitmq.view.model.ViewModel`
and serves the page (``static/``, shipped in the wheel, nothing from the
internet). Snoop listeners (or a :class:`~miros_rabbitmq.view.record.Player`)
hand it messages through :meth:`ViewServer.tap`, which only appends to a
queue: the broker's I/O thread never waits for the model or a browser. One
pump thread feeds the model and sends what changed to every page as one
server-sent event every :data:`BATCH_INTERVAL` seconds, so a page keeps up
with thousands of lines a second (it draws once per batch).

Every request must carry the token (``?token=...``) the server was started
with (a random one by default); the server binds to 127.0.0.1 unless told
otherwise.

Endpoints: ``/`` the page, ``/static/*``, ``/events`` (SSE: ``snapshot``,
then ``batch`` events of update lists), ``/state`` (JSON), ``/chain?item=N``
(JSON: the causal chain of an item), ``POST /export?fmt=svg|mermaid``
(body ``{"items": [ids]}``: the ``sequence`` rendering of those items),
``POST /record`` (``{"on": bool}``), ``POST /speed`` (``{"speed": x}``, replay).
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from miros_rabbitmq.view.model import ViewModel
from miros_rabbitmq.view.record import Entry, Player, Recorder
from miros_rabbitmq.view.sequence import render_mermaid, render_svg

__all__ = ["ViewServer", "BATCH_INTERVAL", "LOOPBACK"]

logger = logging.getLogger(__name__)

BATCH_INTERVAL = 0.025  # seconds between batches sent to the pages
MAX_CLIENT_BACKLOG = 200  # batches a slow page may lag before it is sent a fresh snapshot
MAX_INBOX = 200_000  # messages waiting for the model (beyond: dropped and counted)
KEEPALIVE = 10.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}


class _Client:
    """One page's SSE stream: batches waiting to be written."""

    def __init__(self) -> None:
        self.batches: collections.deque[str] = collections.deque()
        self.wake = threading.Condition()
        self.reset = False
        self.closed = False

    def put(self, data: str) -> None:
        with self.wake:
            if len(self.batches) >= MAX_CLIENT_BACKLOG:
                self.batches.clear()
                self.reset = True  # it fell behind: it gets a fresh snapshot instead
            else:
                self.batches.append(data)
            self.wake.notify()


class ViewServer:
    """The page, the model and the pump; :meth:`start` / :meth:`stop`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 record_dir: str = ".", replay: list[Entry] | None = None,
                 speed: float = 1.0, title: str = "") -> None:
        self.model = ViewModel()
        self.lock = threading.Lock()  # the model's
        self.token = token or secrets.token_urlsafe(18)
        self.record_dir = record_dir
        self.title = title
        self.recorder: Recorder | None = None
        self.dropped = 0
        self.batches_sent = 0
        self._inbox: collections.deque[tuple[str, str, str, Any, float]] = collections.deque()
        self._clients: list[_Client] = []
        self._clients_lock = threading.Lock()
        self._stop = threading.Event()
        self.player: Player | None = None
        if replay is not None:
            self.player = Player(replay, self._replayed, speed=speed)
        self.httpd = (_Server6 if ":" in host else _Server)((host, port), _handler(self))
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ life cycle
    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    @property
    def replaying(self) -> bool:
        return self.player is not None

    def start(self) -> None:
        for target, name in ((self.httpd.serve_forever, "miros-rabbitmq-view-http"),
                             (self._pump, "miros-rabbitmq-view-pump")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.player is not None:
            self.player.start()

    def stop(self) -> None:
        self._stop.set()
        if self.player is not None:
            self.player.stop()
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            with client.wake:
                client.closed = True
                client.wake.notify()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(3)
        self.set_recording(False)

    # ------------------------------------------------------------------ input
    def tap(self, network: str, envelope: Any) -> None:
        """A snoop listener's tap (I/O thread): queue the message, never wait."""
        now = time.time()
        if len(self._inbox) >= MAX_INBOX:
            self.dropped += 1
            return
        self._inbox.append((network, envelope.sender, envelope.signal_name, envelope.payload,
                            now))
        recorder = self.recorder
        if recorder is not None:
            recorder.write(network, envelope, now)

    def _replayed(self, entry: Entry) -> None:
        self._inbox.append((entry.network, entry.sender, entry.signal, entry.payload, entry.t))

    def _now(self) -> float:
        return self.player.clock if self.player is not None else time.time()

    def _pump(self) -> None:
        last_tick = 0.0
        while not self._stop.wait(BATCH_INTERVAL):
            with self.lock:
                while self._inbox:
                    _, _, signal, payload, when = self._inbox.popleft()
                    try:
                        self.model.feed(signal, payload, when)
                    except Exception:  # a malformed line must not stop the view
                        logger.exception("view: could not take a snoop message")
                now = self._now()
                if now - last_tick >= 0.5:
                    self.model.tick(now)
                    last_tick = now
                updates = self.model.drain()
            if updates:
                self._broadcast(json.dumps(updates, separators=(",", ":")))

    def _broadcast(self, data: str) -> None:
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            client.put(data)
        self.batches_sent += 1

    # ------------------------------------------------------------------ actions
    def set_recording(self, on: bool) -> str | None:
        """Start or stop recording what arrives; returns the file being written."""
        if on and self.recorder is None:
            name = time.strftime("miros-view-%Y%m%d-%H%M%S.jsonl")
            self.recorder = Recorder(os.path.join(self.record_dir, name))
            return self.recorder.path
        if not on and self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            recorder.close()
            return recorder.path
        return self.recorder.path if self.recorder is not None else None

    def export(self, fmt: str, items: list[int] | None) -> str:
        with self.lock:
            trace = self.model.trace_of(items)
        return render_svg(trace) if fmt == "svg" else render_mermaid(trace)

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "mode": "replay" if self.replaying else "live",
                "charts": [chart.as_dict() for chart in self.model.charts.values()],
                "items": len(self.model.items),
                "links": len(self.model.links),
                "lines": self.model.lines,
                "dropped": self.dropped,
                "recording": self.recorder.path if self.recorder is not None else None,
                "played": self.player.played if self.player is not None else None,
                "replay_done": self.player.done.is_set() if self.player is not None else None,
            }

    def _attach(self) -> tuple[_Client, str]:
        client = _Client()
        with self.lock:  # snapshot and registration together: no update falls between
            snapshot = json.dumps(self.model.snapshot(), separators=(",", ":"))
            with self._clients_lock:
                self._clients.append(client)
        return client, snapshot

    def _detach(self, client: _Client) -> None:
        with self._clients_lock:
            if client in self._clients:
                self._clients.remove(client)

    def _fresh_snapshot(self) -> str:
        with self.lock:
            return json.dumps(self.model.snapshot(), separators=(",", ":"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an open page never keeps the process alive


class _Server6(_Server):
    address_family = socket.AF_INET6


def _static(name: str) -> bytes:
    return (resources.files("miros_rabbitmq.view") / "static" / name).read_bytes()


def _handler(server: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "miros-rabbitmq-view"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("view: " + format, *args)

        # -- helpers
        def _query(self) -> tuple[str, dict[str, str]]:
            parts = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
            return parts.path, query

        def _authorised(self, query: dict[str, str]) -> bool:
            given = query.get("token", "")
            return hmac.compare_digest(given.encode(), server.token.encode())

        def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy",
                             "default-src 'self'; img-src 'self' data: blob:; "
                             "style-src 'self' 'unsafe-inline'")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, value: Any) -> None:
            self._send(200, json.dumps(value).encode(), "application/json")

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 16 * 1024 * 1024:
                raise ValueError("body too large")
            raw = self.rfile.read(length) if length else b"{}"
            return json.loads(raw or b"{}")

        # -- routes
        def do_GET(self) -> None:  # noqa: N802
            path, query = self._query()
            if not self._authorised(query):
                self._send(HTTPStatus.FORBIDDEN, b"forbidden: this page needs its token "
                           b"(the URL that miros-rabbitmq view printed)\n")
                return
            if path in ("/", "/index.html"):
                page = _static("index.html").decode()
                page = page.replace("__TOKEN__", urllib.parse.quote(server.token))
                page = page.replace("__MODE__", "replay" if server.replaying else "live")
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif path.startswith("/static/") and path[8:] in STATIC:
                self._send(200, _static(path[8:]), STATIC[path[8:]])
            elif path == "/events":
                self._events()
            elif path == "/state":
                self._json(server.state())
            elif path == "/chain":
                try:
                    item = int(query.get("item", ""))
                except ValueError:
                    self._send(400, b"item=N expected\n")
                    return
                with server.lock:
                    self._json(server.model.chain(item))
            else:
                self._send(404, b"not found\n")

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_POST(self) -> None:  # noqa: N802
            path, query = self._query()
            if not self._authorised(query):
                self._send(HTTPStatus.FORBIDDEN, b"forbidden\n")
                return
            try:
                body = self._body()
            except ValueError:
                self._send(400, b"a JSON body expected\n")
                return
            if path == "/export":
                fmt = query.get("fmt", "svg")
                if fmt not in ("svg", "mermaid"):
                    self._send(400, b"fmt=svg or fmt=mermaid\n")
                    return
                items = body.get("items") if isinstance(body, dict) else None
                if items is not None and not (isinstance(items, list)
                                              and all(isinstance(i, int) for i in items)):
                    self._send(400, b"items: a list of item ids\n")
                    return
                text = server.export(fmt, items)
                self._send(200, text.encode(), "image/svg+xml" if fmt == "svg"
                           else "text/plain; charset=utf-8")
            elif path == "/record":
                on = bool(body.get("on")) if isinstance(body, dict) else False
                try:
                    where = server.set_recording(on)
                except OSError as error:
                    self._send(500, f"cannot record: {error}\n".encode())
                    return
                self._json({"recording": server.recorder is not None, "path": where})
            elif path == "/speed" and server.player is not None:
                speed = body.get("speed") if isinstance(body, dict) else None
                if not isinstance(speed, (int, float)) or speed < 0:
                    self._send(400, b"speed: a number >= 0\n")
                    return
                server.player.speed = float(speed)
                self._json({"speed": server.player.speed})
            else:
                self._send(404, b"not found\n")

        def _events(self) -> None:
            client, snapshot = server._attach()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                self.wfile.write(f"event: snapshot\ndata: {snapshot}\n\n".encode())
                self.wfile.flush()
                while not server._stop.is_set():
                    with client.wake:
                        client.wake.wait_for(lambda: client.batches or client.reset
                                             or client.closed, KEEPALIVE)
                        if client.closed:
                            return
                        reset, client.reset = client.reset, False
                        batches = list(client.batches)
                        client.batches.clear()
                    if reset:
                        chunk = f"event: snapshot\ndata: {server._fresh_snapshot()}\n\n"
                    elif batches:
                        chunk = "".join(f"event: batch\ndata: {b}\n\n" for b in batches)
                    else:
                        chunk = ": keep-alive\n\n"
                    self.wfile.write(chunk.encode())
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            finally:
                server._detach(client)

    return Handler
