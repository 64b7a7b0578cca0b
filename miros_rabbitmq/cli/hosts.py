"""``miros-rabbitmq hosts add|remove|list``: edit the manual hosts file.

Thin over :mod:`miros_rabbitmq.discovery.hosts_editing` (locked, atomic).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from miros_rabbitmq.cli._common import EXIT_UNUSABLE, HOSTS_FILE, fail
from miros_rabbitmq.config import mask_url
from miros_rabbitmq.discovery.hosts_editing import (
    HostsFileError,
    add_hosts,
    list_hosts,
    remove_hosts,
)
from miros_rabbitmq.errors import Error
from miros_rabbitmq.terminal import printable


@contextmanager
def _reasons() -> Iterator[None]:
    """A file problem exits 1, a bad entry exits 2, each with its one-line reason."""
    try:
        yield
    except HostsFileError as error:
        fail(str(error))
    except Error as error:
        fail(str(error), EXIT_UNUSABLE)


def _options(click_ctx: click.Context) -> tuple[str, float]:
    return click_ctx.meta["hosts.path"], click_ctx.meta["hosts.timeout"]


@click.group()
@click.option("--file", "path", default=HOSTS_FILE, show_default=True,
              type=click.Path(dir_okay=False), help="The hosts file.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds to wait for the file's lock.")
@click.pass_context
def hosts(click_ctx: click.Context, path: str, timeout: float) -> None:
    """Edit the manual hosts file (locked and atomic, like CacheFileChart)."""
    click_ctx.meta["hosts.path"] = path
    click_ctx.meta["hosts.timeout"] = timeout


@hosts.command("add")
@click.argument("entries", nargs=-1, required=True)
@click.pass_context
def hosts_add(click_ctx: click.Context, entries: tuple[str, ...]) -> None:
    """Add hosts (host, host:port or amqp://host:port)."""
    path, timeout = _options(click_ctx)
    with _reasons():
        added, result = add_hosts(path, entries, timeout=timeout)
    for entry in dict.fromkeys(e.strip() for e in entries):
        click.echo(f"{'added' if entry in added else 'already listed'}: {entry}")
    click.echo(f"{path}: {len(result)} host(s)", err=True)


@hosts.command("remove")
@click.argument("entries", nargs=-1, required=True)
@click.pass_context
def hosts_remove(click_ctx: click.Context, entries: tuple[str, ...]) -> None:
    """Remove hosts."""
    path, timeout = _options(click_ctx)
    with _reasons():
        missing, result = remove_hosts(path, entries, timeout=timeout)
    for entry in (e.strip() for e in entries):
        if entry not in missing:
            click.echo(f"removed: {entry}")
    click.echo(f"{path}: {len(result)} host(s)", err=True)
    if missing:
        fail(f"not in {path}: {', '.join(missing)}")


@hosts.command("list")
@click.pass_context
def hosts_list(click_ctx: click.Context) -> None:
    """List the hosts, one per line."""
    path, timeout = _options(click_ctx)
    with _reasons():
        entries = list_hosts(path, timeout=timeout)
    if entries is None:
        click.echo(f"no hosts file at {path}", err=True)
        return
    for entry in entries:  # a shared file: no password shown, no control character obeyed
        click.echo(printable(mask_url(entry)))
    if not entries:
        click.echo(f"{path}: no hosts", err=True)


command = hosts
