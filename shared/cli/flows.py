"""Flows: check the flows file, see each flow's state, pause and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text

from shared.cli import common
from shared.cli.common import (
    ConfigOption,
    FlowFilter,
    WorkdirOption,
    app,
    console,
    examples,
    known_flow,
    load_flows,
)
from shared.config import Config
from shared.report import FitsOrStacks, indented, reasons, short_time

if TYPE_CHECKING:
    from shared.engine.status import FlowStatus


@app.command()
def validate(file: Path) -> None:
    """Check a flows file; prints every error with its path and exits 2 if there are any."""
    config = load_flows(file)
    console.print(f"[green]ok[/green] {escape(str(file))}: {len(config.systems)} systems, {len(config.flows)} flows")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the flows file."""
    console.print_json(json.dumps(Config.model_json_schema(by_alias=True)))


@app.command(epilog=examples(
    "dualsync status                      # every flow: state, queued, lag, dead letters, last pull",
    "dualsync status --flow accounts-to-customers",
    "dualsync status --json               # also each flow's cursor; what GET /api/flows returns",
))
def status(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: FlowFilter = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (what the admin endpoint returns)")] = False,
) -> None:
    """Per flow: paused or running, queued changes, lag, dead letters by reason, last pull (--json: cursor too)."""
    from shared.engine.status import collect_status

    with common.session(config, workdir) as sync:
        known_flow(sync, flow)
        report = collect_status(sync)
    if flow is not None:
        report.flows = [f for f in report.flows if f.flow == flow]
    if as_json:
        console.print_json(report.model_dump_json())
        return
    if report.counts_unavailable:
        console.print(f"queue {escape(report.queue)}: counts unknown ({escape(report.counts_unavailable)}); "
                      f"{report.dead_letter} dead-lettered", highlight=False)
    else:
        console.print(f"queue {report.queue}: {report.active} active, {report.scheduled} scheduled, "
                      f"{report.dead_letter} dead-lettered", highlight=False, markup=False)
    console.print(_status_view(report.flows))


def _status_view(flows: list[FlowStatus]) -> RenderableType:
    rows: list[list[str | Text]] = []
    stacked: list[RenderableType] = []
    for f in flows:
        state = Text("paused", style="red").append(f": {f.paused_reason}", style="") if f.paused else Text("running")
        if f.last_error:
            state.append(f"\nfailing since {short_time(f.last_error.get('since'))} "
                         f"(last {short_time(f.last_error.get('at'))}): ", style="red")
            state.append(str(f.last_error.get("error", "")))
        queued = str(f.queued if f.queued is not None else "?")
        lag = "-" if f.lag_seconds is None else f"{f.lag_seconds:.0f}s"
        dead = reasons(f.dead_letters, sep="\n")
        last = f.last_run
        pull = f"{last.get('status', '-')}, {last.get('pulled', 0)} pulled" if last else "-"
        when = short_time(last.get("finished_at")) if last else ""
        rows.append([f.flow, state, queued, lag, dead, f"{pull}\n{when}"])
        stacked += [Text(f.flow, style="bold"), indented(state),
                    indented(f"queued {queued}  lag {lag}  last pull {pull} {when}"),
                    indented(f"dead letters {reasons(f.dead_letters)}")]
    return FitsOrStacks(["flow", "state", "queued", "lag", "dead letters", "last pull"], rows, Group(*stacked),
                        right=("queued", "lag"))


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
    """Resume FLOW after a pause (an auth failure pauses its flow automatically); the changes held while it was
    paused are due at once."""
    from shared.engine.held_changes import resume as resume_and_release

    with common.session(config, workdir) as sync:
        known_flow(sync, flow)
        _, released = resume_and_release(sync, flow)
    console.print(f"{flow} resumed; {released} held changes due now", highlight=False, markup=False)
