"""`dualsync run`: the sync on this machine, with a progress bar and a summary of what each flow did."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.cli import run_lock
from shared.cli.check import refuse_unless_ready
from shared.cli.common import ConfigOption, app, console, err_console, examples, fail, load_flows

if TYPE_CHECKING:
    from shared.app import SyncApp
    from shared.engine.tally import Tally
    from shared.local_runtime import RunOptions

INTERRUPTED = 130  # a shell's code for "ended by SIGINT"


@app.command(epilog=examples(
    "dualsync run --config flows.yaml --once       # pull every flow once, drain the queue, exit",
    "dualsync run --config flows.yaml              # keep going, each flow on its schedule, until Ctrl+C",
    "dualsync -v run --once --workers 0            # with the log (retries and their reasons), in one process",
))
def run(
    config: ConfigOption = Path("flows.yaml"),
    once: Annotated[bool, typer.Option(help="pull every flow once, drain the queue, exit")] = False,
    workers: Annotated[int | None, typer.Option(
        min=0, max=32, help="apply worker processes (default: one per core, at most 4); 0 applies in this process",
        show_default=False)] = None,
    workdir: Annotated[Path, typer.Option(
        "--workdir", help="where the embedded state and queue live; created if missing, one run at a time")
    ] = Path(".dualsync"),
    retry_base: Annotated[float, typer.Option(help="backoff base in seconds")] = 2.0,
    drain_bound: Annotated[float, typer.Option(help="--once waits for retries due within this many seconds")] = 60,
) -> None:
    """Run the sync on this machine with the embedded SQLite state and queue.

    Ctrl+C stops it: workers finish their batch, and what is still queued waits for the next run."""
    from shared import telemetry
    from shared.app import SyncApp
    from shared.local_runtime import RunOptions

    cfg = load_flows(config)
    refuse_unless_ready(cfg)  # before the workdir is made: a flows file that cannot run leaves nothing behind
    lock = _lock(workdir)
    try:
        telemetry.configure(console=not once)  # a long run reports metrics every minute; --once prints a table
        sync = SyncApp.local(cfg, workdir, retry_base=retry_base)
        try:
            if not once:
                from shared import flow_health

                flow_health.watch(sync)  # reported with the other metrics every minute
            options = RunOptions(drain_bound=drain_bound, telemetry_console=not once)
            if workers is not None:
                options.workers = workers
            tally, how = _with_progress(sync, options, once)
            queued = _queued(sync)
        finally:
            if not once:
                from shared import flow_health

                flow_health.unwatch(sync)  # the exporter's last collection at exit must not read a closed store
            sync.close()
    finally:
        lock.release()
    adds_up = _report(tally)
    if how == "interrupted":
        _print_interrupted(queued, config, workdir, once)
        raise typer.Exit(INTERRUPTED)
    if not adds_up or (tally.pull_errors and once):
        raise typer.Exit(1)


def _lock(workdir: Path) -> run_lock.RunLock:
    """The workdir, created on purpose (this is the command that makes one), and locked for this run."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        return run_lock.take(workdir)
    except run_lock.WorkdirInUse as exc:
        fail(f"workdir {workdir} is in use by {exc.holder} (another `dualsync run`; stop it first, "
             "or use another --workdir)")
    except (FileExistsError, NotADirectoryError):
        fail(f"workdir {workdir} is not a directory")
    except OSError as exc:
        fail(f"workdir {workdir}: {exc.strerror or exc}")


def _with_progress(sync: SyncApp, options: RunOptions, once: bool) -> tuple[Tally, str]:
    """Run with a progress bar; returns the tally and how the run ended (ok | stopped | interrupted)."""
    from shared.local_runtime import run_forever, run_once

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("settled"),
                  TextColumn("{task.fields[pulled]:>8} pulled"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("syncing", total=None, pulled=0)
        shown = 0
        printing = threading.Lock()  # called from the pull thread and the apply loop

        def on_progress(tally: Tally) -> None:
            nonlocal shown
            flows = list(tally.flows.values())
            # What this run has to settle so far: the backlog it found and what it pulled (less duplicates).
            total = sum(c.backlog + c.pulled - c.duplicates for c in flows)
            progress.update(task, completed=tally.settled_total(), total=max(total, 1),
                            pulled=sum(c.pulled for c in flows))
            with printing:
                for flow, error in tally.pull_errors[shown:]:  # as they happen, above the progress bar
                    err_console.print(f"[red]pull failed[/red] {escape(flow)}: {escape(error)}", highlight=False)
                shown = len(tally.pull_errors)

        stop = threading.Event()
        ended = {"how": "ok"}

        def interrupt(*_: object) -> None:
            ended["how"] = "interrupted"
            stop.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C does not wait

        def terminate(*_: object) -> None:
            ended["how"] = "stopped"
            stop.set()

        previous = signal.signal(signal.SIGINT, interrupt), signal.signal(signal.SIGTERM, terminate)
        try:
            tally = (run_once(sync, options, on_progress, stop) if once
                     else run_forever(sync, options, stop, on_progress))
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
        return tally, ended["how"]


def _queued(sync: SyncApp) -> dict[str, int]:
    by_flow = getattr(sync.bus, "counts_by_flow", None)
    return by_flow(sync.queue) if by_flow else {}


def _report(tally: Tally) -> bool:
    """Print the summary and what went wrong; whether every flow's counts add up."""
    from shared.report import summary_table

    console.print(summary_table(tally))
    for error in getattr(tally, "errors", [])[:10]:
        err_console.print(f"[yellow]worker error[/yellow] {escape(str(error))}", highlight=False)
    failed = sorted({flow for flow, _ in tally.pull_errors})
    if failed:
        err_console.print(f"[red]pull failed[/red] for {escape(', '.join(failed))} (see `dualsync status`)", highlight=False)
    if all(c.adds_up() for c in tally.flows.values()):
        return True
    err_console.print("[red]counts do not add up[/red]")
    return False


def _print_interrupted(queued: dict[str, int], config: Path, workdir: Path, once: bool) -> None:
    waiting = {flow: n for flow, n in sorted(queued.items()) if n}
    if waiting:
        err_console.print("interrupted; still queued: " + ", ".join(f"{flow} {n}" for flow, n in waiting.items()),
                          highlight=False)
    else:
        err_console.print("interrupted; nothing is queued", highlight=False)
    where = ["--config", str(config), "--workdir", str(workdir)]
    again = ["dualsync", "run", *(["--once"] if once else []), *where]
    err_console.print(f"to continue: {escape(shlex.join(again))}", highlight=False,
                      soft_wrap=True)
    err_console.print(f"each flow's state: {escape(shlex.join(['dualsync', 'status', *where]))}", highlight=False,
                      soft_wrap=True)
