"""``miros-rabbitmq init``: write a .env with fresh keys (mode 0600).

The password comes from a hidden prompt or ``--password-stdin`` (``--password``
works but warns: it shows in the process list and the shell history).
"""

from __future__ import annotations

import os
import sys
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
{scout}"""

SCOUT_TEMPLATE = """\
# The scout account: scouts log in with it until a node proves our mesh key, so
# RABBIT_PASSWORD never goes to a stranger (without these two lines: the
# well-known miros_scout account). Create it on every broker of the mesh:
#   rabbitmqctl add_user {user} '<SCOUT_PASSWORD below>'
#   rabbitmqctl set_permissions -p / {user} '^$' '^miros\\.scout\\.exchange$' '^$'
SCOUT_USER={quser}
SCOUT_PASSWORD={password}
"""

DEFAULT_SCOUT_TEMPLATE = """\
# Scouts log in with the well-known scout account miros_scout until a node proves
# our mesh key, so RABBIT_PASSWORD never goes to a stranger. Create it on every
# broker of the mesh (`miros-rabbitmq doctor` checks it):
#   rabbitmqctl add_user miros_scout 'miros_scout'
#   rabbitmqctl set_permissions -p / miros_scout '^$' '^miros\\.scout\\.exchange$' '^$'
"""


def env_quote(value: str) -> str:
    """``value`` single-quoted for a .env (python-dotenv reads it back literally)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _read_password(password: str | None, password_stdin: bool) -> str:
    """The password from stdin, a hidden prompt, or (discouraged) the command line."""
    if password_stdin:
        line = sys.stdin.readline()
        if not line:
            fail("--password-stdin: nothing on stdin", EXIT_UNUSABLE)
        return line.rstrip("\r\n")
    if password is not None:
        click.echo("warning: --password is visible to other users (process list) and stays "
                   "in your shell history; prefer the prompt or --password-stdin", err=True)
        return password
    if sys.stdin.isatty():
        return str(click.prompt("RABBIT_PASSWORD", default="guest", hide_input=True,
                                confirmation_prompt=True, show_default=False, err=True))
    return "guest"


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
@click.option("--password", default=None,
              help="RABBIT_PASSWORD (discouraged: visible in the process list and shell "
                   "history; without it you are asked, hidden; default guest).")
@click.option("--password-stdin", is_flag=True,
              help="Read RABBIT_PASSWORD from the first line of stdin.")
@click.option("--scout-account", "scout_user", default=None, metavar="USER",
              help="Also write SCOUT_USER=USER and a fresh SCOUT_PASSWORD (see docs/security.md).")
@click.option("--host", default="127.0.0.1", show_default=True, help="RABBIT_HOST.")
@click.option("--port", default=5672, show_default=True, type=click.IntRange(1, 65535),
              help="RABBIT_PORT.")
@click.pass_obj
def init(ctx: Context, path: str, force: bool, user: str, password: str | None,
         password_stdin: bool, scout_user: str | None, host: str, port: int) -> None:
    """Write a .env with fresh keys and the local broker's settings (mode 0600)."""
    import secrets

    from cryptography.fernet import Fernet

    if os.path.exists(path) and not force:
        fail(f"{path} already exists; use --force to overwrite it")
    if os.path.isdir(path):
        fail(f"{path} is a folder")
    password = _read_password(password, password_stdin)
    if any(c in value for value in (user, password, host, scout_user or "") for c in "\n\r"):
        fail("--user, --password and --host must be one line each", EXIT_UNUSABLE)
    scout = DEFAULT_SCOUT_TEMPLATE
    if scout_user:
        if not all(c.isalnum() or c in "._-" for c in scout_user):
            fail("--scout-account: letters, digits, '.', '_' and '-' only", EXIT_UNUSABLE)
        scout = SCOUT_TEMPLATE.format(user=scout_user, quser=env_quote(scout_user),
                                      password=env_quote(secrets.token_urlsafe(24)))
    text = ENV_TEMPLATE.format(
        when=time.strftime("%Y-%m-%d %H:%M:%S"), user=env_quote(user),
        password=env_quote(password), host=env_quote(host),
        port=port, mesh=Fernet.generate_key().decode(), trace=Fernet.generate_key().decode(),
        spy=Fernet.generate_key().decode(), scout=scout)
    try:
        write_private_file(path, text)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}")
    click.echo(f"wrote {os.path.abspath(path)} (mode 0600, fresh keys; copy it to every "
               "machine of your mesh)")
    click.echo(f"create the scout account {scout_user or 'miros_scout'} on every broker of the "
               f"mesh: see the commands in {path} (docs/security.md)")


command = init
