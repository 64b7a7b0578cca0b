"""``miros-rabbitmq snoop``: print the live trace/spy of every chart on the mesh.

Colour only on a terminal (a pipe or a file gets plain text), ``--count N`` /
``--once`` to stop after N lines, ``--json`` for one JSON object per line.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from typing import Any

import click

from miros_rabbitmq.cli._common import Context, check_keys, fail, load, use_color

_STAMPED = re.compile(r"^\[(?P<time>[^\]]+)\] \[(?P<chart>[^\]]*)\] ?(?P<text>.*)$")


def json_line(record: object, network: str, local: bool) -> str:
    """One snoop record as a JSON object (keys: network, kind, chart, time, text, local)."""
    from miros_rabbitmq.mesh.snoop import SnoopRecord, strip_ansi

    assert isinstance(record, SnoopRecord)
    text = strip_ansi(record.text).replace("\n", " ").rstrip()
    when = None
    stamped = _STAMPED.match(text)
    if stamped and record.kind != "spy":
        when, text = stamped["time"], stamped["text"]
        if record.kind == "scribble" and text.startswith("# "):
            text = text[2:]
    return json.dumps({"network": network.replace("snoop_", ""), "kind": record.kind,
                       "chart": record.name, "time": when, "text": text, "local": local})


@click.command()
@click.option("--trace", "want_trace", is_flag=True, help="The snoop trace network.")
@click.option("--spy", "want_spy", is_flag=True, help="The snoop spy network.")
@click.option("--color/--no-color", "color_choice", default=None,
              help="Force colour, or plain text (default: colour on a terminal only, none "
                   "when NO_COLOR is set).")
@click.option("--grep", "names", multiple=True, metavar="NAME",
              help="Only charts whose name contains NAME (repeatable).")
@click.option("--duration", type=click.FloatRange(0, None), default=None,
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--count", type=click.IntRange(1, None), default=None, metavar="N",
              help="Stop after printing N lines.")
@click.option("--once", is_flag=True, help="Stop after the first line (--count 1).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: network, kind, chart, time, text, local.")
@click.option("--connect-timeout", default=5.0, show_default=True,
              type=click.FloatRange(0.1, 120), help="Seconds to wait for the broker.")
@click.option("--record", "record_file", type=click.Path(dir_okay=False), default=None,
              help="Also write everything seen, with timestamps, to this file "
              "(replay it with `miros-rabbitmq view --replay FILE`).")
@click.pass_obj
def snoop(ctx: Context, want_trace: bool, want_spy: bool, color_choice: bool | None,
          names: tuple[str, ...], duration: float | None, count: int | None, once: bool,
          as_json: bool, connect_timeout: float, record_file: str | None) -> None:
    """Print the live trace/spy of every chart on the mesh (Ctrl-C to stop).

    Joins the snoop networks of the local broker (or the cluster: RABBIT_CLUSTER)
    without being a chart. With neither --trace nor --spy, both. Exit code 1
    when --count lines did not come within --duration.
    """
    from miros_rabbitmq.mesh import snoop as snooping
    from miros_rabbitmq.view.live import ListenError, listen

    settings = load(ctx, require_mesh_key=False)  # the snoop keys are enough
    check_keys(settings, mesh=False)
    networks = [n for n, wanted in ((snooping.TRACE, want_trace), (snooping.SPY, want_spy))
                if wanted] or [snooping.TRACE, snooping.SPY]
    limit = 1 if once else count
    color = use_color(color_choice) and not as_json
    recorder = _recorder(record_file)
    stop = threading.Event()
    printed = 0

    def write(line: str) -> None:  # on the one printer thread: no lock needed
        nonlocal printed
        if limit is not None and printed >= limit:
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):  # the reader went away (| head): we are done
            stop.set()
            return
        printed += 1
        if limit is not None and printed >= limit:
            stop.set()

    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    listeners: list[Any] = []
    try:
        try:
            listeners = listen(
                settings, recorder.write if recorder is not None else None, networks=networks,
                timeout=connect_timeout, stop=stop.is_set, quiet=False, color=color,
                grep=names, write=write, render=json_line if as_json else None)
        except ListenError as error:
            if stop.is_set():  # Ctrl-C while connecting
                return
            fail(str(error))
        what = " and ".join(n.replace("snoop_", "") for n in networks)
        link = listeners[0].link
        at = link.address.url if link is not None else "?"  # the node in use, after failover
        click.echo(f"snooping on {what} at {at}"
                   + (f" (charts matching {', '.join(names)})" if names else "")
                   + (f" for {duration:g} s" if duration is not None else "; Ctrl-C to stop"),
                   err=True)
        stop.wait(duration)
    finally:
        for listener in listeners:
            listener.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if recorder is not None:
            recorder.close()
            click.echo(f"recorded {recorder.written} snoop message(s) to {record_file}", err=True)
    drops = sum(sum(listener.drops.counts.values()) for listener in listeners)
    if drops:
        click.echo(f"{drops} snoop message(s) could not be read (wrong key?)", err=True)
    if limit is not None and printed < limit:
        fail(f"{printed} of {limit} line(s) within {duration:g} s" if duration is not None
             else f"{printed} of {limit} line(s)")


def _recorder(path: str | None) -> Any:
    """A :class:`~miros_rabbitmq.view.record.Recorder` for ``--record`` (None: off)."""
    if path is None:
        return None
    from miros_rabbitmq.view.record import Recorder

    try:
        return Recorder(path)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}")


command = snoop
