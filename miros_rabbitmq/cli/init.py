"""``miros-rabbitmq init``: write a .env with fresh keys (mode 0600)."""

from __future__ import annotations

import os
import tempfile
import time

import click

from miros_rabbitmq.cli._common import EXIT_UNUSABLE, Context, fail

ENV_TEMPLATE = """\
# miros-rabbitmq settings, written by `miros-rabbitmq init` ({when}).
# Keep this file private (mode 0600); copy the same keys to every machine of the mesh.
RABBIT_USER={user}
RABBIT_PASSWORD={password}
RABBIT_HOST={host}
RABBIT_PORT={port}
RABBIT_HEARTBEAT_INTERVAL=30
CONNECTION_ATTEMPTS=3
MESH_ENCRYPTION_KEY={mesh}
SNOOP_TRACE_ENCRYPTION_KEY={trace}
SNOOP_SPY_ENCRYPTION_KEY={spy}
"""


def write_private_file(path: str, text: str) -> None:
    """Write ``text`` atomically with mode 0600 (temp file in the same folder, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, temp = tempfile.mkstemp(prefix=".env.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


@click.command()
@click.option("--path", "path", default=".env", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the file.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--user", default="guest", show_default=True, help="RABBIT_USER.")
@click.option("--password", default="guest", show_default=True,
              help="RABBIT_PASSWORD (never printed).")
@click.option("--host", default="127.0.0.1", show_default=True, help="RABBIT_HOST.")
@click.option("--port", default=5672, show_default=True, type=click.IntRange(1, 65535),
              help="RABBIT_PORT.")
@click.pass_obj
def init(ctx: Context, path: str, force: bool, user: str, password: str, host: str,
         port: int) -> None:
    """Write a .env with fresh keys and the local broker's settings (mode 0600)."""
    from cryptography.fernet import Fernet

    if os.path.exists(path) and not force:
        fail(f"{path} already exists; use --force to overwrite it")
    if os.path.isdir(path):
        fail(f"{path} is a folder")
    if any(c in value for value in (user, password, host) for c in "\n\r"):
        fail("--user, --password and --host must be one line each", EXIT_UNUSABLE)
    text = ENV_TEMPLATE.format(
        when=time.strftime("%Y-%m-%d %H:%M:%S"), user=user, password=password, host=host,
        port=port, mesh=Fernet.generate_key().decode(), trace=Fernet.generate_key().decode(),
        spy=Fernet.generate_key().decode())
    try:
        write_private_file(path, text)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}")
    click.echo(f"wrote {os.path.abspath(path)} (mode 0600, fresh keys; copy it to every "
               "machine of your mesh)")


command = init
