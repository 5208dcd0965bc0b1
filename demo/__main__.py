"""`make demo`: the seeds' story on the Dataverse simulator (CRM) and a SQLite ERP, through the real pipeline."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from demo import story as st
from shared.engine.tally import Tally
from shared.report import summary_table

console = Console(width=max(Console().width, 150))


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dualsync-demo-"))
    console.rule("[bold]dualsync demo: a Dataverse CRM and a SQL ERP kept in sync")
    console.print(f"CRM: Dataverse simulator with {st.ACCOUNTS} accounts, {st.CONTACTS} contacts, {st.ORDERS} orders. "
                  f"ERP: SQLite with {st.PRODUCTS} products, 3 price lists, {len(st.GL_CODES)} GL accounts and "
                  f"{st.INVOICES} invoices, 10 of which reference a GL account or customer that does not exist yet.")
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.completed:>6.0f} settled"),
                  TextColumn("{task.fields[pulled]:>6} pulled"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, tally: Tally) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=None, pulled=0)
            progress.update(tasks[stage], completed=tally.settled_total(),
                            pulled=sum(c.pulled for c in tally.flows.values()))

        story = st.run(work, on_progress)
    try:
        ok = report(story)
    finally:
        story.close()
    console.print(f"\n{'[green]done' if ok else '[red]something did not add up'}[/] in "
                  f"{time.monotonic() - started:.1f}s; state, queue and databases are in {work}")
    return 0 if ok else 1


def report(story: st.Story) -> bool:
    console.print(summary_table(story.first, title="1. first sync: every flow, one run"))
    dead = Table(title="2. the dead-letter queue says exactly why each record failed")
    for column in ("flow", "record", "reason", "description"):
        dead.add_column(column, overflow="fold")
    for flow, key, reason, description in story.dead_letters:
        dead.add_row(flow, key, reason, description)
    console.print(dead)
    console.print("3. the operator adds GL accounts 4900 and 4901 in the ERP and customers C900-C902 in the CRM, "
                  "then runs [bold]dualsync replay[/bold]:")
    console.print(summary_table(story.master_data, title="master data synced"))
    replay = story.replay
    console.print(f"   replay: {replay.matched} dead letters matched, {replay.replayed} re-read from the ERP and "
                  f"sent again, {sum(replay.skipped.values())} skipped, {replay.left} left")
    console.print(summary_table(story.after_replay, title="after the replay"))
    numbers = st.crm_invoice_numbers(story)
    console.print(f"   invoices in the CRM: {len(numbers)}, distinct: {len(set(numbers))}, "
                  f"dead letters left: {story.app.bus.counts(story.app.queue).dead_letter}")
    final = st.customer_5(story)
    console.print("4. customer C005 renamed in both systems before the next sync (the CRM is the master); "
                  "the ERP also changed the phone number:")
    table = Table(title="conflict outcome")
    for column in ("", "CRM", "ERP"):
        table.add_column(column)
    table.add_row("edited name", story.conflict["crm_name"], story.conflict["erp_name"])
    table.add_row("final name", final["crm_name"], final["erp_name"])
    table.add_row("final phone", final["crm_phone"], final["erp_phone"])
    console.print(table)
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
