"""``miros-rabbitmq sequence``: a sequence diagram from a snoop trace log."""

from __future__ import annotations

from typing import Any

import click

from miros_rabbitmq.cli._common import fail
from miros_rabbitmq.terminal import printable


@click.command()
@click.argument("logfile", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--svg", "svg_out", type=click.Path(dir_okay=False), help="Also write an SVG.")
@click.option("--mermaid", "mermaid_out", type=click.Path(dir_okay=False),
              help="Also write a Mermaid sequenceDiagram.")
@click.option("--chart", "charts", multiple=True, metavar="NAME",
              help="Only this chart (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the text diagram.")
def sequence(logfile: Any, svg_out: str | None, mermaid_out: str | None,
             charts: tuple[str, ...], quiet: bool) -> None:
    """Turn a snoop trace log into a sequence diagram across charts and machines.

    LOGFILE is what `miros-rabbitmq snoop --no-color` or a chart with snoop
    trace printed ('-' reads stdin); other lines are ignored. Steps are
    numbered in timestamp order across every chart.
    """
    from miros_rabbitmq.view.sequence import parse_log, render_mermaid, render_svg, render_text

    trace = parse_log(logfile, charts=charts)
    if not trace.items:
        fail(f"no trace lines in {logfile.name} (expected lines like "
             "' [+t] [2018-05-25 18:50:34.888810] [name] e->signal() source->target')")
    for out, render in ((svg_out, render_svg), (mermaid_out, render_mermaid)):
        if out:
            try:
                with open(out, "w", encoding="utf-8") as handle:
                    handle.write(render(trace))
            except OSError as error:
                fail(f"cannot write {out}: {error.strerror or error}")
            click.echo(f"wrote {out}", err=True)
    if not quiet:  # chart names come from the network: escaped, line by line
        click.echo("\n".join(printable(line) for line in render_text(trace).split("\n")),
                   nl=False)


command = sequence
