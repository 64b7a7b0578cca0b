"""``miros-rabbitmq discover``: scout for nodes of this mesh once."""

from __future__ import annotations

import json
import os

import click
from rich.table import Table
from rich.text import Text

from miros_rabbitmq.cli._common import EXIT_UNUSABLE, HOSTS_FILE, Context, check_keys, fail, load
from miros_rabbitmq.config import mask_url
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.terminal import printable


@click.command()
@click.option("--network", "network", metavar="CIDR",
              help="Scout every address of this network (e.g. 192.168.1.0/24).")
@click.option("--hosts", "hosts_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Scout the hosts of this hosts file.")
@click.option("--timeout", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds an address has to answer.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON document: {"found": N, "scouted": M, "peers": [{address, found, '
                   'state, reason, elapsed_ms}]}.')
@click.pass_obj
def discover(ctx: Context, network: str | None, hosts_file: str | None, timeout: float,
             as_json: bool) -> None:
    """Scout for nodes of this mesh once and print a table of peers.

    A peer is found when a broker there accepts our credentials AND a node
    there proves it holds our mesh key. Without --network/--hosts: the LAN
    (this host's subnets, as LanRecceChart scans them), unless
    MIROS_RABBITMQ_LAN_DISCOVERY=0, then the hosts file in this folder.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from miros_rabbitmq.discovery.discovery import discover_once

    settings = load(ctx)
    check_keys(settings)
    if not network and not hosts_file and not settings.lan_discovery:
        if not os.path.exists(HOSTS_FILE):
            fail("LAN discovery is off (MIROS_RABBITMQ_LAN_DISCOVERY=0) and there is no "
                 f"{HOSTS_FILE}: give --network CIDR or --hosts FILE", EXIT_UNUSABLE)
        hosts_file = HOSTS_FILE
    with Progress(TextColumn("scouting"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), console=ctx.err, transient=True,
                  disable=as_json) as bar:
        task = bar.add_task("scout", total=None, last="")
        try:
            reports = discover_once(
                network=network, hosts_file=hosts_file, timeout=timeout, settings=settings,
                progress=lambda report: bar.update(task, advance=1,
                                                   last=printable(mask_url(report.address))))
        except ConfigurationError as error:
            fail(str(error), EXIT_UNUSABLE)
    if as_json:
        click.echo(json.dumps({
            "found": sum(r.found for r in reports), "scouted": len(reports),
            "peers": [{"address": mask_url(r.address), "found": r.found, "state": r.state,
                       "reason": r.reason, "elapsed_ms": round(r.elapsed * 1000, 1)}
                      for r in reports]}))
    if not reports:
        fail("nothing to scout (no addresses found)")
    if as_json:
        return
    table = Table(title=f"peers ({sum(r.found for r in reports)} of {len(reports)} found)",
                  title_justify="left")
    table.add_column("address")
    table.add_column("state")
    table.add_column("answer in", justify="right")
    for report in reports:
        # a URL's password is never shown; texts from the network are escaped
        state = Text("mesh node (key proven)", style="green") if report.found else Text(
            printable(f"{report.state}: {report.reason or 'no answer'}"), style="dim")
        table.add_row(Text(printable(mask_url(report.address))), state,
                      f"{report.elapsed * 1000:.0f} ms")
    ctx.console.print(table)


command = discover
