"""``miros-rabbitmq doctor``: check the .env, the keys, the broker, the files."""

from __future__ import annotations

import click
from rich.text import Text

from miros_rabbitmq.cli._common import Context, fail
from miros_rabbitmq.diagnostics import checks_as_json, doctor_checks


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help='One JSON document: {"ok": bool, "checks": [{name, status, detail, fix}]}.')
@click.pass_obj
def doctor(ctx: Context, as_json: bool) -> None:
    """Check the .env, the keys, the local broker and the hosts/cache files.

    Says in plain words what is wrong and how to fix it; exit code 1 when a
    check failed. Secrets are shown masked.
    """
    checks = doctor_checks(ctx.env_file)
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        click.echo(checks_as_json(checks))
        if failed:
            fail(f"{len(failed)} problem(s): {failed[0].detail}")
        return
    marks = {"ok": ("[ ok ]", "green"), "warn": ("[warn]", "yellow"), "fail": ("[FAIL]", "red")}
    for check in checks:
        mark, style = marks[check.status]
        line = Text()
        line.append(mark, style=style)
        line.append(f" {check.name:<10} {check.detail}")
        ctx.console.print(line)
        if check.fix and check.status != "ok":
            ctx.console.print(Text(f"{'':17}fix: {check.fix}", style="dim"))
    if failed:
        fail(f"{len(failed)} problem(s): {failed[0].detail}")
    ctx.console.print("all checks passed" if not any(c.status == "warn" for c in checks)
                      else "no problems (see the warnings above)")


command = doctor
