"""The ``miros-rabbitmq`` command line (click + rich): one module per command.

Commands: ``keygen``, ``init``, ``doctor``, ``discover``, ``hosts add|remove|list``,
``snoop``, ``sequence``, ``send``, ``demo``, ``view`` and ``list``. Each lives in
``miros_rabbitmq/cli/<name>.py`` and exposes ``command``; :data:`COMMANDS`
registers it with one line, and it is imported only when it runs (or for
``--help``), so a command never pays for another's imports. The commands are
thin: what they check, probe or edit is library code
(:mod:`miros_rabbitmq.diagnostics`, :mod:`miros_rabbitmq.discovery.hosts_editing`).

Every command has ``--help``; a failure ends with a one-line reason on
stderr and a non-zero exit code:

* 1 -- the command ran and found a problem (broker unreachable, credentials
  refused, file exists, corrupt file, events lost, ...);
* 2 -- the command line or the configuration is unusable (click's usage
  errors, a missing or malformed setting), or a feature is not available.

No command prints a secret: passwords and keys are shown masked. Output
conventions: colour only on a terminal (and never with NO_COLOR); ``--json``
where a script may read the output (``doctor``, ``discover``, ``snoop``).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterable

import click

from miros_rabbitmq import __version__
from miros_rabbitmq.cli._common import CliError, Context, console, fail
from miros_rabbitmq.diagnostics import BrokerProbe, probe_broker

__all__ = ["cli", "main", "CliError", "COMMANDS", "probe_broker", "BrokerProbe", "fail"]

#: command name -> module of miros_rabbitmq.cli defining ``command`` (one line each)
COMMANDS: dict[str, str] = {
    "keygen": "keygen",
    "init": "init",
    "doctor": "doctor",
    "discover": "discover",
    "hosts": "hosts",
    "snoop": "snoop",
    "sequence": "sequence",
    "send": "send",
    "demo": "demo",
    "view": "view",
    "list": "list",
    "cluster": "cluster",
}


class _Commands(click.Group):
    """A click group that imports a command's module when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = importlib.import_module(f"miros_rabbitmq.cli.{module}").command
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="miros-rabbitmq")
@click.option("--env-file", type=click.Path(dir_okay=False), envvar="MIROS_RABBITMQ_ENV_FILE",
              default=None, help="The .env to read (default: the first .env in this folder or "
              "a parent).")
@click.option("-v", "--verbose", count=True, help="Log what the library does (-vv: debug).")
@click.pass_context
def cli(click_ctx: click.Context, env_file: str | None, verbose: int) -> None:
    """Networked miros statecharts over RabbitMQ: set up, check, watch and draw."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    click_ctx.obj = Context(env_file=env_file, console=console(), err=console(stderr=True))


def main(argv: Iterable[str] | None = None) -> None:
    """Console entry point (``miros-rabbitmq``, ``python -m miros_rabbitmq``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="miros-rabbitmq")
