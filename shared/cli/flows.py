"""Flows: check the flows file, see each flow's state, pause and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shared.cli import common
from shared.cli.common import ConfigOption, WorkdirOption, app, console, known_flow, load_flows
from shared.config import Config


@app.command()
def validate(file: Path) -> None:
    """Check a flows file on its own; prints every error with its file, line and path and exits 2 if there are any
    (`dualsync check` also checks it against the systems)."""
    config = load_flows(file)
    console.print(f"[green]ok[/green] {escape(str(file))}: {len(config.systems)} systems, {len(config.flows)} flows")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the flows file (every key with its description, for editor hover help).

    Example: dualsync schema > flows.schema.json
    """
    console.print_json(json.dumps(Config.model_json_schema(by_alias=True)))


@app.command()
def status(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (what the admin endpoint returns)")] = False,
) -> None:
    """Per flow: cursor, lag, queue depth, scheduled retries, dead letters by reason, last run, paused."""
    from rich.table import Table

    from shared.engine.status import collect_status

    with common.session(config, workdir) as sync:
        report = collect_status(sync)
    if as_json:
        console.print_json(report.model_dump_json())
        return
    if report.counts_unavailable:
        console.print(f"queue {escape(report.queue)}: counts unknown ({escape(report.counts_unavailable)}); "
                      f"{report.dead_letter} dead-lettered")
    else:
        console.print(f"queue {report.queue}: {report.active} active, {report.scheduled} scheduled, "
                      f"{report.dead_letter} dead-lettered", markup=False)
    table = Table()
    for column in ("flow", "state", "queued", "lag", "dead letters", "last run", "cursor"):
        table.add_column(column)
    for f in report.flows:
        state = f"[red]paused[/red]: {escape(str(f.paused_reason))}" if f.paused else "running"
        if f.last_error:
            since, at, error = (escape(str(f.last_error.get(k, d))) for k, d in
                                (("since", "?"), ("at", "?"), ("error", "")))
            state += f"\n[red]failing since {since}[/red] (last {at}): {error}"
        lag = "-" if f.lag_seconds is None else f"{f.lag_seconds:.0f}s"
        dead = ", ".join(f"{n} {why}" for why, n in sorted(f.dead_letters.items())) or "0"
        last = f.last_run
        run = "-"
        if last:
            run = f"{last.get('status', '-')} pulled {last.get('pulled', 0)} at {last.get('finished_at', '-')}"
        table.add_row(escape(f.flow), state, str(f.queued if f.queued is not None else "?"), lag, escape(dead),
                      escape(run), escape(json.dumps(f.cursor)) if f.cursor else "-")
    console.print(table)


@app.command()
def pause(flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync"),
          reason: str = "paused by operator") -> None:
    """Stop pulling and applying FLOW; its messages wait on the bus."""
    from shared.engine.cursor_lease import pause_flow

    with common.session(config, workdir) as sync:
        known_flow(sync, flow)
        pause_flow(sync.state, flow, reason)
    console.print(f"{flow} paused", markup=False)


@app.command()
def resume(flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Resume FLOW after a pause (an auth failure pauses its flow automatically)."""
    from shared.engine.cursor_lease import resume_flow

    with common.session(config, workdir) as sync:
        known_flow(sync, flow)
        resume_flow(sync.state, flow)
    console.print(f"{flow} resumed", markup=False)
