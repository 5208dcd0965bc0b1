"""`make demo`: the seeds' story on the Dataverse simulator (CRM) and a SQLite ERP, through the real pipeline.

Each step is shown as the `dualsync` command that does the same on the demo's files, so every table can be
produced again from the command line; the demo ends with the command to try next.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console, Group
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from demo import story as st
from shared.engine.tally import Tally
from shared.report import FitsOrStacks, indented, summary_table

console = Console()
WHERE = "--config flows.yaml --workdir state"  # run in the demo's directory


def command(line: str) -> None:
    console.print(Text(f"$ dualsync {line}", style="bold cyan"), soft_wrap=True)


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dualsync-demo-"))
    console.rule("[bold]dualsync demo: a Dataverse CRM and a SQL ERP kept in sync")
    console.print(f"CRM: Dataverse simulator with {st.ACCOUNTS} accounts, {st.CONTACTS} contacts, {st.ORDERS} orders. "
                  f"ERP: SQLite with {st.PRODUCTS} products, 3 price lists, {len(st.GL_CODES)} GL accounts and "
                  f"{st.INVOICES} invoices, 10 of which reference a GL account or customer that does not exist yet.")
    console.print(Text(f"$ cd {work}", style="bold cyan"))
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("settled"),
                  TextColumn("{task.fields[pulled]:>6} pulled"), TimeElapsedColumn(), console=console,
                  transient=True) as progress, _log_above(progress):
        tasks: dict[str, int] = {}

        def on_progress(stage: str, tally: Tally) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=None, pulled=0)
            flows = list(tally.flows.values())
            total = sum(c.backlog + c.pulled - c.duplicates for c in flows)  # known so far: grows while pulling
            progress.update(tasks[stage], completed=tally.settled_total(), total=max(total, 1),
                            pulled=sum(c.pulled for c in flows))

        story = st.run(work, on_progress)
    try:
        ok = report(story)
    finally:
        story.close()
    console.print(f"\n{'[green]done' if ok else '[red]something did not add up'}[/] in "
                  f"{time.monotonic() - started:.1f}s; state, queue and databases are in {work}")
    console.print("Try next (the CRM simulator has stopped; state and queue stay):")
    console.print(Text(f"  cd {work} && {_dualsync()} status {WHERE}", style="bold cyan"), soft_wrap=True)
    return 0 if ok else 1


def _dualsync() -> str:
    """The command as this shell can run it: `dualsync` when it is on PATH (an activated venv), else its path."""
    beside = Path(sys.executable).with_name("dualsync")
    return str(beside) if shutil.which("dualsync") is None and beside.exists() else "dualsync"


class _log_above:  # a context manager, named for what it does
    """While the progress bar is live, the `dualsync` log (dead letters, worker errors) prints above it through
    rich, instead of straight onto the terminal where it would break the bar."""

    def __init__(self, progress: Progress) -> None:
        self.handler = RichHandler(console=progress.console, show_path=False, markup=False, log_time_format="%H:%M:%S")
        self.log = logging.getLogger("dualsync")

    def __enter__(self) -> None:
        self.log.addHandler(self.handler)

    def __exit__(self, *_: object) -> None:
        self.log.removeHandler(self.handler)


def report(story: st.Story) -> bool:
    command(f"run --once {WHERE}")
    console.print(summary_table(story.first, title="1. first sync: every flow, one run"))
    command(f"dead-letters list {WHERE}")
    rows = [list(d) for d in story.dead_letters]
    stacked = [item for flow, key, reason, description in story.dead_letters
               for item in (Text(f"{flow} {key} {reason}"), indented(description))]
    console.print(FitsOrStacks(["flow", "record", "reason", "description"], rows, Group(*stacked),
                               title="2. the dead-letter queue says exactly why each record failed"))
    console.print("3. the operator adds GL accounts 4900 and 4901 in the ERP and customers C900-C902 in the CRM, "
                  "then runs the master-data flows and replays:")
    command(f"run --once {WHERE}")
    console.print(summary_table(story.master_data, title="master data synced"))
    command(f"replay {WHERE}")
    replay = story.replay
    console.print(f"   replay: {replay.matched} dead letters matched, {replay.replayed} re-read from the ERP and "
                  f"sent again, {sum(replay.skipped.values())} skipped, {replay.left} left")
    command(f"run --once {WHERE}")
    console.print(summary_table(story.after_replay, title="after the replay"))
    numbers = st.crm_invoice_numbers(story)
    console.print(f"   invoices in the CRM: {len(numbers)}, distinct: {len(set(numbers))}, "
                  f"dead letters left: {story.app.bus.counts(story.app.queue).dead_letter}")
    final = st.customer_5(story)
    console.print("4. customer C005 renamed in both systems before the next sync (the CRM is the master); "
                  "the ERP also changed the phone number:")
    command(f"run --once {WHERE}   # twice: the second pass finds only our own echoes")
    conflict = FitsOrStacks(
        ["", "CRM", "ERP"],
        [["edited name", story.conflict["crm_name"], story.conflict["erp_name"]],
         ["final name", final["crm_name"], final["erp_name"]],
         ["final phone", final["crm_phone"], final["erp_phone"]]],
        Group(*(Text(f"{what}: CRM {crm!r}, ERP {erp!r}") for what, crm, erp in (
            ("edited name", story.conflict["crm_name"], story.conflict["erp_name"]),
            ("final name", final["crm_name"], final["erp_name"]),
            ("final phone", final["crm_phone"], final["erp_phone"])))),
        title="conflict outcome")
    console.print(conflict)
    conflicts = sum(c.conflicts for t in story.conflict_runs for c in t.flows.values())
    echoes = sum(c.skipped["echo"] for c in story.conflict_runs[-1].flows.values())
    console.print(f"   {conflicts} field conflict settled by the master, the phone change merged; the next pass "
                  f"found {echoes} echoes of our own writes and wrote nothing")
    runs = [story.first, story.master_data, story.after_replay, *story.conflict_runs]
    return (len(numbers) == len(set(numbers)) == st.INVOICES
            and all(c.adds_up() for t in runs for c in t.flows.values())
            and final["crm_name"] == final["erp_name"] == story.conflict["crm_name"]
            and final["crm_phone"] == final["erp_phone"] == story.conflict["erp_phone"])


if __name__ == "__main__":
    sys.exit(main())
