#!/usr/bin/env python3
"""Draw the library's own statecharts as mermaid diagrams, from their definitions.

    python scripts/chart_pictures.py            # rewrite docs/charts.md
    python scripts/chart_pictures.py --check    # exit 1 if docs/charts.md is stale

The charts are written in the miros ``spy_on`` style: one function per state,
``if e.signal == signals.X: ... return chart.trans(target)``, and the parent
named by ``chart.temp.fun = parent``. This script reads exactly that from the
source (with :mod:`ast`; nothing is imported or run), so the pictures follow
the code: a transition added to a chart appears here at the next run, and
tests/test_docs.py fails while the committed pictures are stale. A
transition taken only under a condition is marked ``[guard]``.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(REPO, "docs", "charts.md")
CHARTS = [  # (title, module file, what the picture shows)
    ("CacheFileChart", "miros_rabbitmq/cache/cache_file_chart.py",
     "reads and writes one JSON file shared by many processes (docs/cache.md)"),
    ("RabbitConsumerScoutChart", "miros_rabbitmq/discovery/rabbit_consumer_scout_chart.py",
     "asks one address whether a node holding our key is there (docs/scout.md)"),
    ("LanRecceChart", "miros_rabbitmq/discovery/lan_recce_chart.py",
     "scans the LAN with one scout per address (docs/discovery.md)"),
    ("LanChart", "miros_rabbitmq/discovery/lan_chart.py",
     "the LAN cache: fresh enough, or a new recce (docs/discovery.md)"),
    ("ManNetChart", "miros_rabbitmq/discovery/man_net_chart.py",
     "the manual hosts file: scouts every host listed (docs/discovery.md)"),
    ("ProducerFactoryChart", "miros_rabbitmq/discovery/producer_factory_chart.py",
     "turns discoveries into producers for every networked chart (docs/discovery.md)"),
]
INTERNAL = {"ENTRY_SIGNAL", "EXIT_SIGNAL", "INIT_SIGNAL", "SEARCH_FOR_SUPER_SIGNAL"}


@dataclass
class State:
    name: str
    parent: str | None = None
    edges: list[tuple[str, str, bool]] = field(default_factory=list)  # (signal, target, guarded)


def _signals(test: ast.expr) -> tuple[list[str], bool]:
    """The signal names an ``if`` tests for, and whether it adds another condition."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        found = [_signals(value) for value in test.values]
        names = [n for names, _ in found for n in names]
        return names, len(test.values) > 1
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left = ast.unparse(test.left)
        if not left.endswith(".signal"):
            return [], False
        right = test.comparators[0]
        items = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
        names = [item.attr for item in items
                 if isinstance(item, ast.Attribute) and ast.unparse(item.value) == "signals"]
        return names, False
    return [], False


def _transitions(body: list[ast.stmt]) -> list[tuple[str, bool]]:
    """Targets of ``X.trans(target)`` in ``body`` and whether each sits under a condition."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "trans" and node.args \
                and isinstance(node.args[0], ast.Name):
            found.append((node.args[0].id, guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded or isinstance(node, (ast.If, ast.IfExp, ast.For, ast.While)))

    for statement in body:
        visit(statement, False)
    return found


def read_chart(path: str) -> tuple[list[State], str | None]:
    with open(os.path.join(REPO, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    states: list[State] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not any(
                ast.unparse(d) == "spy_on" for d in node.decorator_list):
            continue
        state = State(node.name)
        for statement in ast.walk(node):
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                    and ast.unparse(statement.targets[0]).endswith(".temp.fun") \
                    and isinstance(statement.value, ast.Name):
                state.parent = statement.value.id
            if isinstance(statement, ast.If):
                names, guarded = _signals(statement.test)
                for signal in names:
                    if signal in INTERNAL:
                        continue
                    for target, nested in _transitions(statement.body):
                        edge = (signal, target, guarded or nested)
                        if edge not in state.edges:
                            state.edges.append(edge)
        states.append(state)
    known = {s.name for s in states}
    initial = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "start_at" and node.args \
                and isinstance(node.args[0], ast.Name) and node.args[0].id in known:
            initial = node.args[0].id
    return states, initial


def mermaid(states: list[State], initial: str | None) -> str:
    children: dict[str | None, list[State]] = {}
    for state in states:
        children.setdefault(state.parent, []).append(state)
    lines = ["stateDiagram-v2"]

    def nest(parent: str | None, depth: int) -> None:
        for state in children.get(parent, []):
            pad = "    " * depth
            if state.name in children:
                lines.append(f"{pad}state {state.name} {{")
                nest(state.name, depth + 1)
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{state.name}")

    nest(None, 1)
    if initial:
        lines.append(f"    [*] --> {initial}")
    for state in states:
        for signal, target, guarded in state.edges:
            lines.append(f"    {state.name} --> {target} : {signal}{' [guard]' if guarded else ''}")
    return "\n".join(lines) + "\n"


def render() -> str:
    parts = ["# The library's own statecharts\n\n",
             "Generated by `python scripts/chart_pictures.py` from the chart definitions "
             "(the `spy_on` state methods: parents from `chart.temp.fun = parent`, "
             "transitions from `if e.signal == signals.X: ... chart.trans(target)`); "
             "do not edit by hand. `tests/test_docs.py` fails when this page is stale. "
             "`[guard]`: the transition is taken only under a further condition. "
             "Nesting shows the state hierarchy; a signal a parent state handles "
             "applies in every state inside it. GitHub and mkdocs (with a mermaid "
             "plugin) draw these blocks; `mermaid-cli` turns them into SVG.\n"]
    for title, path, what in CHARTS:
        states, initial = read_chart(path)
        parts.append(f"\n## {title}\n\n`{path}` — {what}.\n\n```mermaid\n"
                     f"{mermaid(states, initial)}```\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/charts.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        try:
            with open(OUTPUT, encoding="utf-8") as handle:
                current = handle.read()
        except OSError:
            current = ""
        if current != text:
            print(f"{OUTPUT} is stale: run python scripts/chart_pictures.py", file=sys.stderr)
            return 1
        return 0
    with open(OUTPUT, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
