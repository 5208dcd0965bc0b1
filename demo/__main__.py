"""`make demo`: sample CRM and ERP databases, one `dualsync run --once`, the summary and every dead letter."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from demo import sample_data
from shared.app import SyncApp
from shared.config import load_config
from shared.local_runtime import RunOptions, run_once
from shared.report import summary_table

console = Console()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="dualsync-demo-"))
    started = time.monotonic()
    console.rule("[bold]dualsync demo")
    crm_url, erp_url = sample_data.build(work / "data")
    os.environ["CRM_DB_URL"], os.environ["ERP_DB_URL"] = crm_url, erp_url
    flows = sample_data.write_flows(work)
    console.print(f"CRM and ERP sample databases and {flows.name} in {work}")
    app = SyncApp.local(load_config(flows), work / "state", retry_base=0.05)
    try:
        tally = run_once(app, RunOptions(workers=2, drain_bound=30))
        console.print(summary_table(tally, title="dualsync run --once"))
        console.print(dead_letter_table(app))
    finally:
        app.close()
    ok = all(c.adds_up() for c in tally.flows.values())
    console.print(f"{'[green]counts add up' if ok else '[red]counts do not add up'}[/] "
                  f"in {time.monotonic() - started:.1f}s. Replay a fixed record with `dualsync replay` (see README).")
    return 0 if ok else 1


def dead_letter_table(app: SyncApp) -> Table:
    table = Table(title="dead-letter queue: why each record failed")
    for column in ("flow", "record", "reason", "description"):
        table.add_column(column)
    for m in app.bus.peek_dead_letters(app.queue, max_messages=1000):
        props = m.envelope.application_properties
        table.add_row(str(props.get("flow")), str(props.get("key")), m.dead_letter_reason or "",
                      m.dead_letter_description or "")
    return table


if __name__ == "__main__":
    sys.exit(main())
