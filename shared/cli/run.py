"""`dualsync run`: the sync on this machine, with a progress bar and a summary of what each flow did."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shared.cli.check import refuse_unless_ready
from shared.cli.common import ConfigOption, WorkdirOption, app, console, err_console, load_flows


@app.command()
def run(
    config: ConfigOption = Path("flows.yaml"),
    once: Annotated[bool, typer.Option(help="pull every flow once, drain the queue, exit")] = False,
    workers: Annotated[int | None, typer.Option(
        min=0, max=32, help="apply worker processes (default: one per core, at most 4); 0 applies in this process",
        show_default=False)] = None,
    workdir: WorkdirOption = Path(".dualsync"),
    retry_base: Annotated[float, typer.Option(help="backoff base in seconds")] = 2.0,
    drain_bound: Annotated[float, typer.Option(help="--once waits for retries due within this many seconds")] = 60,
) -> None:
    """Run the sync on this machine with the embedded SQLite state and queue."""
    from shared import telemetry
    from shared.app import SyncApp
    from shared.local_runtime import RunOptions, run_forever, run_once
    from shared.report import summary_table

    cfg = load_flows(config)
    refuse_unless_ready(cfg)
    telemetry.configure(console=not once)  # a long run reports metrics every minute; --once prints a table
    sync = SyncApp.local(cfg, workdir, retry_base=retry_base)
    if not once:
        from shared import flow_health

        flow_health.watch(sync)  # reported with the other metrics every minute
    options = RunOptions(drain_bound=drain_bound, telemetry_console=not once)
    if workers is not None:
        options.workers = workers
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:>8.0f} settled"),
                      TextColumn("{task.fields[pulled]:>8} pulled"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task("syncing", total=None, pulled=0)

            shown = 0
            printing = threading.Lock()  # called from the pull thread and the apply loop

            def on_progress(tally) -> None:
                nonlocal shown
                pulled = sum(c.pulled for c in tally.flows.values())
                progress.update(task, completed=tally.settled_total(), pulled=pulled)
                with printing:
                    for flow, error in tally.pull_errors[shown:]:  # as they happen, above the progress bar
                        err_console.print(f"[red]pull failed[/red] {escape(flow)}: {escape(error)}", highlight=False)
                    shown = len(tally.pull_errors)

            if once:
                tally = run_once(sync, options, on_progress)
            else:
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                try:
                    tally = run_forever(sync, options, stop, on_progress)
                except KeyboardInterrupt:
                    stop.set()
                    return
    finally:
        sync.close()
    console.print(summary_table(tally))
    for error in getattr(tally, "errors", [])[:10]:
        err_console.print(f"[yellow]worker error[/yellow] {escape(str(error))}")
    failed = sorted({flow for flow, _ in tally.pull_errors})
    if failed:
        err_console.print(f"[red]pull failed[/red] for {escape(', '.join(failed))} (see `dualsync status`)")
    if not all(c.adds_up() for c in tally.flows.values()):
        err_console.print("[red]counts do not add up[/red]")
        raise typer.Exit(1)
    if failed and once:
        raise typer.Exit(1)
