"""Rich renderings of run summaries and flow listings, shared by the CLI and the demo.

What an operator pastes into the next command (a flow name, a reason) is never cut or broken inside a word:
a table is shown only when it fits the console whole; otherwise the same facts are printed flow by flow, one
short line per group of counts (`FitsOrStacks`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from shared.engine.tally import FlowCounts, Tally


class FitsOrStacks:
    """A table of `rows` under `headers` when it fits the width it is given whole (no cell wraps or is cut),
    else `narrow`, the same facts flow by flow. `right`: the headers of right-aligned (number) columns."""

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[str | Text]], narrow: RenderableType,
                 title: str | None = None, right: Collection[str] = ()) -> None:
        self.headers, self.rows, self.narrow, self.title, self.right = headers, rows, narrow, title, right

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table() if self.width() <= options.max_width else self.narrow

    def width(self) -> int:
        """What the table needs: each column's widest line plus its padding, and a border between columns."""
        widest = [max(_widest_line(cell) for cell in column) for column in zip(self.headers, *self.rows, strict=True)]
        return sum(w + 2 for w in widest) + len(widest) + 1

    def table(self) -> Table:
        table = Table(title=self.title, box=box.SIMPLE_HEAD, title_justify="left")
        for header in self.headers:
            table.add_column(header, no_wrap=True, justify="right" if header in self.right else "left")
        for row in self.rows:  # data, never markup: a name in square brackets is printed as it is
            table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in row))
        return table


def indented(text: str | Text) -> Padding:
    """A line under a flow's name in a stacked listing; it wraps under itself."""
    return Padding(text, (0, 0, 0, 2), expand=False)


def _widest_line(cell: str | Text) -> int:
    return max(cell_len(line) for line in str(cell).split("\n"))


def reasons(counts: Mapping[str, int], sep: str = ", ") -> str:
    """`1 MappingFailed, 3 ValidationFailed`: counts by reason, as the next command's --reason takes them."""
    return sep.join(f"{n} {why}" for why, n in sorted(counts.items())) or "0"


def short_time(iso: str | datetime | None) -> str:
    """`12-02 10:14:03` in the local time zone (the year and zone are in --json)."""
    if not iso:
        return "-"
    try:
        moment = iso if isinstance(iso, datetime) else datetime.fromisoformat(iso)
    except ValueError:
        return str(iso)
    return (moment.astimezone() if moment.tzinfo else moment).strftime("%m-%d %H:%M:%S")


_COUNTS = ("backlog", "pulled", "dupes", "applied", "skipped", "retried", "dead-lettered", "waiting", "adds up")


def _numbers(c: FlowCounts) -> list[str]:
    return [str(c.backlog), str(c.pulled), str(c.duplicates), str(c.applied), str(sum(c.skipped.values())),
            str(c.retried), str(sum(c.dead_lettered.values())), str(c.waiting), "yes" if c.adds_up() else "NO"]


def summary_table(tally: Tally, title: str = "dualsync run") -> RenderableType:
    """Per flow: backlog + pulled - dupes = applied + skipped + dead-lettered + waiting ("adds up")."""
    flows = sorted(tally.flows.items())
    rows = [[flow, *_numbers(c), _reasons_line(c)] for flow, c in flows]
    return FitsOrStacks(["flow", *_COUNTS, "reasons"], rows, Group(Text(title, style="italic"), *_stacked(flows)),
                        title=title, right=_COUNTS)


def _reasons_line(c: FlowCounts) -> str:
    parts = []
    if c.skipped:
        parts.append(f"skipped {reasons(c.skipped)}")
    if c.dead_lettered:
        parts.append(f"dead-lettered {reasons(c.dead_lettered)}")
    return "\n".join(parts)


def _stacked(flows: list[tuple[str, FlowCounts]]) -> Iterator[RenderableType]:
    """Each flow's name on a line of its own, then its counts that are not zero and whether they add up."""
    for flow, c in flows:
        counts = [("backlog", c.backlog), ("pulled", c.pulled), ("dupes", c.duplicates), ("applied", c.applied),
                  ("skipped", c.skipped), ("retried", c.retried), ("dead-lettered", c.dead_lettered),
                  ("waiting", c.waiting)]
        shown = [f"{name} {reasons(n)}" if isinstance(n, dict) else f"{name} {n}" for name, n in counts if n]
        yield Text(flow, style="bold")
        yield indented("  ".join([*shown, f"adds up {_numbers(c)[-1]}"]))
