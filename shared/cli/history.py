"""`dualsync runs`: the stored run history, per flow, newest first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.text import Text

from shared.cli import common
from shared.cli.common import ConfigOption, FlowFilter, JsonOption, WorkdirOption, app, console, examples, known_flow
from shared.report import FitsOrStacks, indented, reasons, short_time


@app.command(epilog=examples(
    "dualsync runs                                   # the last 20 runs of every flow",
    "dualsync runs --flow accounts-to-customers --limit 5",
    "dualsync runs --json | jq '.[] | select(.error)'",
))
def runs(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: FlowFilter = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many runs")] = 20,
    as_json: JsonOption = False,
) -> None:
    """What each run did per flow: start, end, pulled, applied, skipped, retried, dead-lettered, error.

    Runs of `dualsync run`; a flow without any (on Azure: timer pulls, apply continuous) shows its pulls."""
    from shared.engine.run_history import list_runs

    with common.session(config, workdir) as sync:
        known_flow(sync, flow)
        found = list_runs(sync, flow, limit)
    if as_json:
        console.print_json(json.dumps([r.model_dump() for r in found]))
        return
    if not found:
        console.print("no runs yet")
        return
    headers = ["flow", "start", "end", "status", "pulled", "applied", "skipped", "retried", "dead-lettered", "error"]
    rows, stacked = [], []
    for r in found:
        counts = ["-" if v is None else str(v) for v in (r.applied, r.retried)]
        skipped = "-" if r.skipped is None else reasons(r.skipped, sep="\n")
        dead = "-" if r.dead_lettered is None else reasons(r.dead_lettered, sep="\n")
        start, end = short_time(r.started_at), short_time(r.finished_at)
        rows.append([r.flow, start, end, r.status, str(r.pulled), counts[0], skipped, counts[1], dead, r.error or ""])
        counted = [f"pulled {r.pulled}"] + [f"{name} {value}" for name, value in (
            ("applied", r.applied), ("skipped", r.skipped and reasons(r.skipped)), ("retried", r.retried),
            ("dead-lettered", r.dead_lettered and reasons(r.dead_lettered)), ("waiting", r.waiting)) if value]
        stacked += [Text(r.flow, style="bold").append(f"  {r.kind} {start} to {end}  {r.status}", style=""),
                    indented("  ".join(counted))]
        if r.error:
            stacked.append(indented(Text(f"error: {r.error}", style="red")))
    console.print(FitsOrStacks(headers, rows, Group(*stacked), right=("pulled", "applied", "retried")))
