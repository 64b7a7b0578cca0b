"""``miros-rabbitmq list``: the charts alive on the mesh now, from their presence lines."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import click
from rich.table import Table

__all__ = ["list_charts"]


@click.command("list")
@click.option("--wait", default=3.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Seconds to listen (charts announce themselves every 2 s).")
@click.option("--all", "show_all", is_flag=True, help="Also charts that stopped or went silent.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per chart.")
@click.option("--connect-timeout", default=5.0, show_default=True,
              type=click.FloatRange(0.1, 120), help="Seconds to wait for the broker.")
@click.pass_obj
def list_charts(ctx: Any, wait: float, show_all: bool, as_json: bool,
                connect_timeout: float) -> None:
    """List the charts alive on the mesh: name, host, process, current state.

    Every networked chart announces itself on the snoop trace network when it
    starts, every few seconds while it runs, and when it stops; this listens
    for --wait seconds and prints what it heard.
    """
    from miros_rabbitmq.cli._common import check_keys, fail, load
    from miros_rabbitmq.mesh import snoop as snooping
    from miros_rabbitmq.view.live import ListenError, listen
    from miros_rabbitmq.view.model import ViewModel

    settings = load(ctx, require_mesh_key=False)  # the snoop keys are enough
    check_keys(settings, mesh=False)
    model = ViewModel(max_items=1000)
    lock = threading.Lock()

    def tap(network: str, envelope: object) -> None:
        with lock:
            model.feed(envelope.signal_name, envelope.payload, time.time())  # type: ignore[attr-defined]

    try:
        listeners = listen(settings, tap, networks=(snooping.TRACE,), timeout=connect_timeout)
    except ListenError as error:
        fail(str(error))
    click.echo(f"listening for {wait:g} s", err=True)
    try:
        time.sleep(wait)  # listening is the point: presence lines arrive every few seconds
    finally:
        for listener in listeners:
            listener.stop()
    with lock:
        model.tick(time.time())
        charts = sorted(model.charts.values(), key=lambda c: c.name)
    if not show_all:
        charts = [c for c in charts if c.status == "alive"]
    if as_json:
        for chart in charts:
            click.echo(json.dumps({"name": chart.name, "host": chart.host, "pid": chart.pid,
                                   "program": chart.program, "state": chart.state,
                                   "status": chart.status}))
        return
    if not charts:
        click.echo(f"no charts heard in {wait:g} s", err=True)
        return
    table = Table(title=f"charts on the mesh ({len(charts)})", title_justify="left")
    for column in ("chart", "host", "process", "state", "status"):
        table.add_column(column)
    for chart in charts:
        table.add_row(chart.name, chart.host, f"{chart.pid} {chart.program}".strip()
                      if chart.pid else "", chart.state, chart.status)
    ctx.console.print(table)


command = list_charts
