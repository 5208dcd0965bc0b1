"""`dualsync`: the command line over the same core functions the Azure Functions call."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shared.config import Config, load_config
from shared.errors import ConfigError, SyncError

if TYPE_CHECKING:
    from shared.app import SyncApp

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()
err_console = Console(stderr=True)
if not console.is_terminal:  # piped into a log or CI: keep table rows on one line
    console.width = err_console.width = 200

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

    cfg = _load(config)
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

            def on_progress(tally) -> None:  # noqa: ANN001
                nonlocal shown
                pulled = sum(c.pulled for c in tally.flows.values())
                progress.update(task, completed=tally.settled_total(), pulled=pulled)
                with printing:
                    for flow, error in tally.pull_errors[shown:]:  # as they happen, above the progress bar
                        err_console.print(f"[red]pull failed[/red] {flow}: {escape(error)}", highlight=False)
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
        err_console.print(f"[yellow]worker error[/yellow] {error}")
    failed = sorted({flow for flow, _ in tally.pull_errors})
    if failed:
        err_console.print(f"[red]pull failed[/red] for {', '.join(failed)} (see `dualsync status`)")
    if not all(c.adds_up() for c in tally.flows.values()):
        err_console.print("[red]counts do not add up[/red]")
        raise typer.Exit(1)
    if failed and once:
        raise typer.Exit(1)


dead_letters_app = typer.Typer(no_args_is_help=True, help="The dead-letter queue: what failed and why.")
app.add_typer(dead_letters_app, name="dead-letters")
simulate_app = typer.Typer(no_args_is_help=True, help="Local stand-ins for the systems dualsync connects.")
app.add_typer(simulate_app, name="simulate")


@dead_letters_app.command("list")
def dead_letters_list(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option()] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    key: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
) -> None:
    """Dead-lettered changes with reason, description, flow, key, attempt and enqueued time."""
    from rich.table import Table

    from shared.engine.dead_letters import DeadLetterFilter, list_dead_letters

    with _session(config, workdir) as sync:
        found = list_dead_letters(sync, DeadLetterFilter(flow, reason, key), limit=limit)
    table = Table(title=f"dead letters: {len(found)}")
    for column in ("flow", "key", "reason", "description", "attempt", "enqueued"):
        table.add_column(column, overflow="fold")
    for d in found:
        table.add_row(d.flow, d.key, d.reason, d.description, str(d.attempt), str(d.enqueued_at))
    console.print(table)


@dead_letters_app.command("purge")
def dead_letters_purge(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option()] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    key: Annotated[str | None, typer.Option()] = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: purged changes are gone for good")] = False,
) -> None:
    """Delete dead-lettered changes for good (replay is usually what you want)."""
    from shared.engine.dead_letters import DeadLetterFilter, purge_dead_letters

    if not yes:
        err_console.print("[red]refusing[/red]: purging deletes dead-lettered changes for good; add --yes to confirm "
                          "(or use `dualsync replay` to send them again)")
        raise typer.Exit(2)
    with _session(config, workdir) as sync:
        result = purge_dead_letters(sync, DeadLetterFilter(flow, reason, key))
    console.print(f"purged {result.purged}, left {result.left}")


@simulate_app.command("dataverse")
def simulate_dataverse(
    port: Annotated[int, typer.Option(help="loopback port")] = 5555,
    db: Annotated[str, typer.Option(help="SQLite file for the simulated org (default: in memory)")] = ":memory:",
    rate_429: Annotated[float, typer.Option(help="share of requests answered 429")] = 0.0,
) -> None:
    """Serve the Dataverse Web API simulator (the demo's CRM) until interrupted."""
    import dvsim

    dvsim.serve(port=port, db_path=db, rate_429=rate_429)


@contextmanager
def _session(config: Path, workdir: Path) -> Iterator[SyncApp]:
    """The embedded stores under --workdir, or Azure's when the app settings choose them; closed after."""
    from shared.app import SyncApp
    from shared.engine.decisions import DecisionError
    from shared.settings import setting

    cfg = _load(config)
    if setting("BUS_BACKEND") == "servicebus" or setting("STATE_BACKEND") == "tables":
        sync = SyncApp.from_settings(cfg)
    else:
        sync = SyncApp.local(cfg, workdir)
    try:
        yield sync
    except DecisionError as exc:  # the operator asked for something that cannot be done as asked
        err_console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {problem}")
        raise typer.Exit(2) from None
    except SyncError as exc:  # the systems said no (missing record, throttled, unreachable)
        err_console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        sync.close()


@app.command()
def status(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (what the admin endpoint returns)")] = False,
) -> None:
    """Per flow: cursor, lag, queue depth, scheduled retries, dead letters by reason, last run, paused."""
    from rich.table import Table

    from shared.engine.status import collect_status

    with _session(config, workdir) as sync:
        report = collect_status(sync)
    if as_json:
        console.print_json(report.model_dump_json())
        return
    console.print(f"queue {report.queue}: {report.active} active, {report.scheduled} scheduled, "
                  f"{report.dead_letter} dead-lettered")
    table = Table()
    for column in ("flow", "state", "queued", "lag", "dead letters", "last run", "cursor"):
        table.add_column(column)
    for f in report.flows:
        state = f"[red]paused[/red]: {f.paused_reason}" if f.paused else "running"
        if f.last_error:
            state += (f"\n[red]failing since {f.last_error.get('since', '?')}[/red] "
                      f"(last {f.last_error.get('at', '?')}): {escape(str(f.last_error.get('error', '')))}")
        lag = "-" if f.lag_seconds is None else f"{f.lag_seconds:.0f}s"
        dead = ", ".join(f"{n} {why}" for why, n in sorted(f.dead_letters.items())) or "0"
        last = f.last_run
        run = "-"
        if last:
            run = f"{last.get('status', '-')} pulled {last.get('pulled', 0)} at {last.get('finished_at', '-')}"
        table.add_row(f.flow, state, str(f.queued if f.queued is not None else "?"), lag, dead, run,
                      json.dumps(f.cursor) if f.cursor else "-")
    console.print(table)


@app.command()
def pause(flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync"),
          reason: str = "paused by operator") -> None:
    """Stop pulling and applying FLOW; its messages wait on the bus."""
    from shared.engine.cursor_lease import pause_flow

    with _session(config, workdir) as sync:
        _known_flow(sync, flow)
        pause_flow(sync.state, flow, reason)
    console.print(f"{flow} paused")


@app.command()
def resume(flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Resume FLOW after a pause (an auth failure pauses its flow automatically)."""
    from shared.engine.cursor_lease import resume_flow

    with _session(config, workdir) as sync:
        _known_flow(sync, flow)
        resume_flow(sync.state, flow)
    console.print(f"{flow} resumed")


def _known_flow(sync, flow: str) -> None:  # noqa: ANN001
    if flow not in sync.config.flows:
        err_console.print(f"[red]error[/red] no flow named {flow!r}; flows: {', '.join(sync.config.flows)}")
        raise typer.Exit(2)


@app.command()
def replay(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option(help="only this flow")] = None,
    reason: Annotated[str | None, typer.Option(help="only this dead-letter reason")] = None,
    key: Annotated[str | None, typer.Option(help="only this record key")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be replayed")] = False,
) -> None:
    """Send dead-lettered changes again, re-reading each record from its source first."""
    from shared.engine.replay import ReplayFilter, replay_dead_letters

    with _session(config, workdir) as sync:
        if flow is not None:
            _known_flow(sync, flow)
        with Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.completed:>6.0f} matched"),
                      console=console, transient=True) as progress:
            task = progress.add_task("replay", total=None)
            result = replay_dead_letters(sync, ReplayFilter(flow, reason, key), dry_run=dry_run,
                                         on_progress=lambda r: progress.update(task, completed=r.matched))
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())) or "0"
    verb = "would replay" if dry_run else "replayed"
    console.print(f"matched {result.matched}, {verb} {result.matched if dry_run else result.replayed}, "
                  f"skipped {skipped}, left in the dead-letter queue {result.left}")
    for k in result.keys[:50]:
        console.print(f"  {k}")


conflicts_app = typer.Typer(no_args_is_help=True, help="Field conflicts parked by flows with conflicts: manual.")
requests_app = typer.Typer(no_args_is_help=True, help="Change requests from flows with review: true.")
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(requests_app, name="requests")


def _print_parked(table_name: str, flow: str | None, config: Path, workdir: Path, title: str) -> None:
    from rich.table import Table

    from shared.engine.decisions import list_parked

    with _session(config, workdir) as sync:
        items = list_parked(sync, table_name, flow)
    table = Table(title=f"{title}: {len(items)}")
    for column in ("flow", "record", "detail", "since"):
        table.add_column(column)
    for item in items:
        data = item.data
        if data.get("detail"):  # a delete racing an update: no field values to show
            detail, since = data["detail"], data.get("detected_at", "")
        elif "fields" in data:
            detail = "; ".join(f"{f}: incoming {data['incoming'].get(f)!r} vs target {data['target'].get(f)!r}"
                               for f in data["fields"])
            since = data.get("detected_at", "")
        else:
            detail = json.dumps(data["message"].get("payload", {}), default=str)[:120]
            since = data.get("created_at", "")
        table.add_row(item.flow, item.key, detail, since)
    console.print(table)



@conflicts_app.command("list")
def conflicts_list(flow: Annotated[str | None, typer.Option()] = None, config: ConfigOption = Path("flows.yaml"),
                   workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Records whose same fields changed on both sides, waiting for an operator."""
    from shared.state.store import CONFLICTS

    _print_parked(CONFLICTS, flow, config, workdir, "open conflicts")


@conflicts_app.command("resolve")
def conflicts_resolve(
    key: str,
    take: Annotated[str, typer.Option("--take", help="the system whose values win, e.g. crm or erp")],
    flow: Annotated[str | None, typer.Option()] = None,
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
) -> None:
    """Settle a parked conflict: TAKE's values are written to the other side."""
    from shared.engine.decisions import resolve_conflict

    with _session(config, workdir) as sync:
        console.print(f"sent {resolve_conflict(sync, key, take, flow)}")


@requests_app.command("list")
def requests_list(flow: Annotated[str | None, typer.Option()] = None, config: ConfigOption = Path("flows.yaml"),
                  workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Changes waiting for approval before they are written into the master."""
    from shared.state.store import REQUESTS

    _print_parked(REQUESTS, flow, config, workdir, "pending change requests")


@requests_app.command("approve")
def requests_approve(key: str, flow: Annotated[str | None, typer.Option()] = None,
                     config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Apply a pending change request."""
    from shared.engine.decisions import approve_request

    with _session(config, workdir) as sync:
        console.print(f"approved; sent {approve_request(sync, key, flow)}")


@requests_app.command("reject")
def requests_reject(key: str, reason: Annotated[str, typer.Option(help="why, kept in the run history")],
                    flow: Annotated[str | None, typer.Option()] = None,
                    config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Drop a pending change request; nothing is written."""
    from shared.engine.decisions import reject_request

    with _session(config, workdir) as sync:
        reject_request(sync, key, reason, flow)
    console.print(f"rejected {key}")


@app.command()
def reconcile(flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Compare FLOW's source keys with the linked keys and send a delete for every record the source lost."""
    from shared.engine.reconcile import reconcile_deletes

    with _session(config, workdir) as sync:
        _known_flow(sync, flow)
        result = reconcile_deletes(sync, flow)
    if result.status != "ok":
        console.print(f"{flow}: not reconciled ({result.status})")
        return
    console.print(f"{flow}: scanned {result.scanned} source keys, {result.known} linked, "
                  f"sent {result.deleted} deletes" + (f" ({result.present_on_recheck} reappeared on recheck)"
                                                      if result.present_on_recheck else ""))


@app.command("initial-sync")
def initial_sync_command(
    flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync"),
) -> None:
    """Link records that already exist on both sides by FLOW's match_on fields; create only the rest."""
    from shared.engine.initial_sync import initial_sync

    with _session(config, workdir) as sync:
        _known_flow(sync, flow)
        result = initial_sync(sync, flow)
    if result.status != "ok":
        err_console.print(f"[yellow]{flow}: initial sync did not run ({result.status})[/yellow]")
        raise typer.Exit(1)
    console.print(f"{flow}: matched {result.matched} (of which {result.aligned} sent to align values), "
                  f"created {result.created}, ambiguous {result.ambiguous}, already linked {result.already_linked}, "
                  f"failed {result.failed} ({result.targets} target records scanned)")
    for line in result.examples[:10]:
        console.print(f"  [red]dead-lettered[/red] {line}")
    for note in result.notes:
        console.print(f"  [yellow]note[/yellow] {note}")


@app.command()
def resync(
    flow: str, key: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync"),
) -> None:
    """Re-read one record of FLOW from its source and send it again, forced past version, echo and conflicts."""
    from shared.engine.resync import resync as resync_record

    with _session(config, workdir) as sync:
        _known_flow(sync, flow)
        result = resync_record(sync, flow, key)
    console.print(f"{flow} {result.key}: sent version {result.version} as {result.message_id}")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {problem}")
        sys.exit(2)


if __name__ == "__main__":
    main()
