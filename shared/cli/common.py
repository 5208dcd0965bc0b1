"""What every command shares: the typer app, the consoles, the common options, and opening the stores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from shared.config import Config, load_config
from shared.errors import ConfigError, SyncError

if TYPE_CHECKING:
    from shared.app import SyncApp

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="`dualsync`: the command line over the same core functions the Azure Functions call.")
console = Console()
err_console = Console(stderr=True)
if not console.is_terminal:  # piped into a log or CI: keep table rows on one line
    console.width = err_console.width = 200

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="flows file")]
WorkdirOption = Annotated[Path, typer.Option("--workdir", help="where the embedded state and queue live")]


def load_flows(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {escape(problem)}")
        raise typer.Exit(2) from None
    except FileNotFoundError:
        err_console.print(f"[red]error[/red] no such flows file: {escape(str(path))}")
        raise typer.Exit(2) from None


@contextmanager
def session(config: Path, workdir: Path) -> Iterator[SyncApp]:
    """The embedded stores under --workdir, or Azure's when the app settings choose them; closed after."""
    from shared.app import SyncApp
    from shared.engine.decisions import DecisionError
    from shared.settings import setting

    cfg = load_flows(config)
    if setting("BUS_BACKEND") == "servicebus" or setting("STATE_BACKEND") == "tables":
        sync = SyncApp.from_settings(cfg)
    else:
        sync = SyncApp.local(cfg, workdir)
    try:
        yield sync
    except DecisionError as exc:  # the operator asked for something that cannot be done as asked
        err_console.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {escape(problem)}")
        raise typer.Exit(2) from None
    except SyncError as exc:  # the systems said no (missing record, throttled, unreachable)
        err_console.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        sync.close()


def known_flow(sync, flow: str) -> None:
    if flow not in sync.config.flows:
        known = ", ".join(sync.config.flows)
        err_console.print(f"[red]error[/red] {escape(f'no flow named {flow!r}; flows: {known}')}")
        raise typer.Exit(2)
