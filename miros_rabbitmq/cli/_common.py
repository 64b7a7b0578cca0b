"""What every command shares: the context, failing with an exit code, settings."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import click
from rich.console import Console

from miros_rabbitmq.config import Settings, load_settings
from miros_rabbitmq.diagnostics import find_env_file, key_problems
from miros_rabbitmq.errors import ConfigurationError, EnvContractBroken
from miros_rabbitmq.wire.names import HOSTS_FILE, LAN_CACHE_FILE

__all__ = ["EXIT_PROBLEM", "EXIT_UNUSABLE", "HOSTS_FILE", "LAN_CACHE_FILE", "CliError",
           "Context", "check_keys", "console", "fail", "load", "use_color"]
EXIT_PROBLEM = 1
EXIT_UNUSABLE = 2


class CliError(click.ClickException):
    """A one-line reason and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it a ClassVar

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def fail(message: str, exit_code: int = EXIT_PROBLEM) -> NoReturn:
    raise CliError(message, exit_code)


@dataclass
class Context:
    env_file: str | None
    console: Console
    err: Console


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def use_color(choice: bool | None = None) -> bool:
    """``--color`` / ``--no-color`` when given; else colour only for a terminal without NO_COLOR."""
    if choice is not None:
        return choice
    return not os.environ.get("NO_COLOR") and sys.stdout.isatty()


def load(ctx: Context, **overrides: Any) -> Settings:
    """Settings or a one-line reason (exit 2)."""
    if ctx.env_file and not os.path.exists(ctx.env_file):
        fail(f"{ctx.env_file} does not exist (make one with: miros-rabbitmq init)", EXIT_UNUSABLE)
    try:
        return load_settings(dotenv_path=ctx.env_file, **overrides)
    except (EnvContractBroken, ConfigurationError) as error:
        hint = "" if find_env_file(ctx.env_file) else " (no .env found: run `miros-rabbitmq init`)"
        fail(f"{error}{hint}", EXIT_UNUSABLE)


def check_keys(settings: Settings, *, mesh: bool = True) -> None:
    """Exit 2 naming the first key setting that is not a Fernet key (``mesh=False``: snoop keys only)."""
    for variable, reason in key_problems(settings, mesh=mesh):
        fail(f"{variable}: {reason}", EXIT_UNUSABLE)
