"""Rich renderings of run summaries, shared by `dualsync run` and the demo."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from shared.engine.tally import Tally


def summary_table(tally: Tally, title: str = "dualsync run") -> Table:
    table = Table(title=title)
    for column in ("flow", "backlog", "pulled", "dupes", "applied", "skipped", "retried", "dead-lettered",
                   "waiting", "adds up"):
        table.add_column(column, justify="left" if column in ("flow", "skipped", "dead-lettered") else "right")
    for flow, c in sorted(tally.flows.items()):
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(c.skipped.items())) or "0"
        dead = ", ".join(f"{n} {why}" for why, n in sorted(c.dead_lettered.items())) or "0"
        table.add_row(escape(flow), str(c.backlog), str(c.pulled), str(c.duplicates), str(c.applied), skipped,
                      str(c.retried), dead, str(c.waiting), "yes" if c.adds_up() else "NO")
    return table
