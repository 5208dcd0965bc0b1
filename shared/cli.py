"""`dualsync`: the command line over the same core functions the Azure Functions call."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shared.config import Config, load_config
from shared.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="flows file")]
WorkdirOption = Annotated[Path, typer.Option("--workdir", help="where the embedded state and queue live")]


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {problem}")
        raise typer.Exit(2) from None
    except FileNotFoundError:
        err_console.print(f"[red]error[/red] no such flows file: {path}")
        raise typer.Exit(2) from None


@app.command()
def validate(file: Path) -> None:
    """Check a flows file; prints every error with its path and exits 2 if there are any."""
    config = _load(file)
    console.print(f"[green]ok[/green] {file}: {len(config.systems)} systems, {len(config.flows)} flows")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the flows file."""
    console.print_json(json.dumps(Config.model_json_schema(by_alias=True)))


@app.command()
def run(
    config: ConfigOption = Path("flows.yaml"),
    once: Annotated[bool, typer.Option(help="pull every flow once, drain the queue, exit")] = False,
    workers: Annotated[int, typer.Option(min=1, max=32)] = 2,
    workdir: WorkdirOption = Path(".dualsync"),
    retry_base: Annotated[float, typer.Option(help="backoff base in seconds")] = 2.0,
    drain_bound: Annotated[float, typer.Option(help="--once waits for retries due within this many seconds")] = 60,
) -> None:
    """Run the sync on this machine with the embedded SQLite state and queue."""
    from shared.app import SyncApp
    from shared.local_runtime import RunOptions, run_forever, run_once
    from shared.report import summary_table

    cfg = _load(config)
    sync = SyncApp.local(cfg, workdir, retry_base=retry_base)
    options = RunOptions(workers=workers, drain_bound=drain_bound)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:>8.0f} settled"),
                      TextColumn("{task.fields[pulled]:>8} pulled"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task("syncing", total=None, pulled=0)

            def on_progress(tally) -> None:  # noqa: ANN001
                pulled = sum(c.pulled for c in tally.flows.values())
                progress.update(task, completed=tally.settled_total(), pulled=pulled)

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
        err_console.print(f"[yellow]worker error[/yellow] {error}")
    if not all(c.adds_up() for c in tally.flows.values()):
        err_console.print("[red]counts do not add up[/red]")
        raise typer.Exit(1)


@app.command("dead-letters")
def dead_letters(
    workdir: WorkdirOption = Path(".dualsync"),
    limit: int = 50,
) -> None:
    """List dead-lettered messages of the embedded queue with their reasons."""
    from shared.bus.sqlite_bus import SqliteBus

    bus = SqliteBus(workdir / "bus.db")
    for m in bus.peek_dead_letters("dualsync-changes", max_messages=limit):
        props = m.envelope.application_properties
        console.print(f"{props.get('flow')} {props.get('key')} [red]{m.dead_letter_reason}[/red]: "
                      f"{m.dead_letter_description}")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {problem}")
        sys.exit(2)


if __name__ == "__main__":
    main()
