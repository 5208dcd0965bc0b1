"""What every command shares: the typer app, the consoles, the common options, and opening the stores."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from shared.config import Config, load_config
from shared.errors import ConfigError, SyncError

if TYPE_CHECKING:
    from shared.app import SyncApp


def examples(*lines: str) -> str:
    """An epilog for --help from `command  # what it does` lines: the comment goes on a line of its own above its
    command, so both fit 80 columns; typer's rich help joins single lines, so each line is a paragraph."""
    shown = ["Examples:"]
    for line in lines:
        command, _, comment = line.partition("#")
        shown += [f"# {comment.strip()}"] if comment else []
        shown.append(command.strip())
    return "\n\n".join(shown)


EXAMPLES = examples(
    "dualsync validate flows.yaml",
    "dualsync run --config flows.yaml --once      # pull every flow, apply, print what each did",
    "dualsync status                              # per flow: state, queue, lag, dead letters",
    "dualsync runs --flow accounts-to-customers   # the run history",
    "dualsync replay --reason MissingReference    # after fixing the cause",
    "dualsync -v run                              # with the log: retries and their reasons",
)

app = typer.Typer(
    no_args_is_help=True, add_completion=False,
    # A traceback's local variables can hold resolved secrets (a connection string, a client secret).
    pretty_exceptions_show_locals=False,
    help="`dualsync`: the command line over the same core functions the Azure Functions call.",
    epilog=EXAMPLES,
)
# Piped into a file or CI, rich uses 80 columns (or COLUMNS); listings that do not fit as a table whole are
# printed flow by flow (shared/report.py), so nothing is cut.
console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="flows file")]
WorkdirOption = Annotated[Path, typer.Option(
    "--workdir", help="where the embedded state and queue live (must exist; `dualsync run` creates it)")]
FlowFilter = Annotated[str | None, typer.Option("--flow", help="only this flow")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


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
def session(config: Path, workdir: Path, *, starts_sync: bool = False) -> Iterator[SyncApp]:
    """The embedded stores under --workdir, or Azure's when the app settings choose them; closed after.
    `starts_sync`: a command that may be the first to sync (initial-sync) makes the workdir, as `run` does."""
    from shared.app import SyncApp
    from shared.engine.decisions import DecisionError
    from shared.settings import setting

    cfg = load_flows(config)
    if setting("BUS_BACKEND") == "servicebus" or setting("STATE_BACKEND") == "tables":
        sync = SyncApp.from_settings(cfg)
    else:
        if not starts_sync:
            existing_workdir(workdir)
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


def known_flow(sync, flow: str | None) -> None:
    """Exit 2 naming the flows there are, rather than answer with an empty list (None: every flow)."""
    if flow is not None and flow not in sync.config.flows:
        fail(f"no flow named {flow!r}; flows: {', '.join(sync.config.flows)}")


def existing_workdir(workdir: Path) -> None:
    """Every command but `run` reads a workdir a run made: a mistyped one would be an empty new one."""
    if workdir.is_dir():
        return
    what = "is not a directory" if workdir.exists() else "does not exist"
    hint = "" if workdir.exists() else " (`dualsync run` creates it; or pass --workdir)"
    fail(f"workdir {workdir} {what}{hint}")


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, however narrow the terminal (a script greps it), and the exit code."""
    err_console.print(f"[red]error[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dualsync")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"dualsync {package_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def global_options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the version and exit")] = False,
    verbose: Annotated[int, typer.Option(
        "--verbose", "-v", count=True,
        help="show the log: -v at INFO (retries and their reasons), -vv at DEBUG")] = 0,
) -> None:
    show_log(verbose)


_log_handler: logging.Handler | None = None


def show_log(verbosity: int) -> None:
    """The `dualsync` logger to stderr through rich, so its lines print above a live progress bar; warnings
    (dead letters) always, INFO with -v, DEBUG with -vv. Apply workers forward their records at this level."""
    global _log_handler
    from rich.logging import RichHandler

    log = logging.getLogger("dualsync")
    if _log_handler is None:
        _log_handler = RichHandler(console=err_console, show_path=False, markup=False, rich_tracebacks=False,
                                   log_time_format="%H:%M:%S")
        log.addHandler(_log_handler)
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    _log_handler.setLevel(level)
    if verbosity > 0:  # without -v the logger keeps its level (the Functions host or a test may have set one)
        log.setLevel(level)
