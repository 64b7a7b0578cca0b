"""``miros-rabbitmq view``: a live web page of every chart and the events between them."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import click

__all__ = ["view"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve the page on (anything but loopback exposes it: "
              "the token is then all that protects it).")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free port).")
@click.option("--token", default=None, metavar="TEXT",
              help="The token the page's URL carries (default: a random one).")
@click.option("--replay", "replay_file", type=click.Path(exists=True, dir_okay=False),
              help="Play back a record (from `snoop --record` or the page's Record button) "
              "instead of listening to the broker.")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(0, None),
              help="Replay speed (2: twice as fast, 0: as fast as possible).")
@click.option("--record-dir", default=".", show_default=True,
              type=click.Path(file_okay=False), help="Where the Record button writes.")
@click.option("--duration", type=click.FloatRange(0, None), default=None,
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--connect-timeout", default=5.0, show_default=True,
              type=click.FloatRange(0.1, 120), help="Seconds to wait for the broker.")
@click.pass_obj
def view(ctx: Any, host: str, port: int, token: str | None, replay_file: str | None,
         speed: float, record_dir: str, duration: float | None, connect_timeout: float) -> None:
    """Serve a live page of the mesh: charts, states, events, causal chains.

    Joins the snoop networks of the local broker (as `snoop` does) and prints
    the page's URL, which carries a random token; the page is served on
    127.0.0.1 unless --host says otherwise. Ctrl-C stops it.
    """
    from miros_rabbitmq.cli._common import EXIT_UNUSABLE, check_keys, fail, load
    from miros_rabbitmq.view.live import ListenError, listen
    from miros_rabbitmq.view.record import read_record
    from miros_rabbitmq.view.server import LOOPBACK, ViewServer

    entries = None
    if replay_file:
        try:
            entries = list(read_record(replay_file))
        except (OSError, ValueError) as error:
            fail(str(error), EXIT_UNUSABLE)
        settings = None
    else:
        settings = load(ctx, require_mesh_key=False)  # the snoop keys are enough
        check_keys(settings, mesh=False)
    if not os.path.isdir(record_dir):
        fail(f"--record-dir {record_dir} is not a folder", EXIT_UNUSABLE)
    try:
        server = ViewServer(host=host, port=port, token=token, record_dir=record_dir,
                            replay=entries, speed=speed)
    except OSError as error:
        fail(f"cannot serve on {host}:{port}: {error.strerror or error}")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    listeners = []
    try:
        if settings is not None:
            try:
                listeners = listen(settings, server.tap, timeout=connect_timeout,
                                   stop=stop.is_set)
            except ListenError as error:
                fail(str(error))
        server.start()
        if host not in LOOPBACK:
            click.echo(f"warning: serving on {host}, not loopback: anyone who can reach it "
                       "and has the URL sees the mesh", err=True)
        what = (f"replaying {replay_file} ({len(entries or [])} messages, speed {speed:g})"
                if replay_file else "live")
        click.echo(f"miros-rabbitmq view ({what}) at {server.url}", err=False)
        click.echo("Ctrl-C to stop", err=True)
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        for listener in listeners:
            listener.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


command = view
