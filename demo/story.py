"""The seeds' story, end to end: Dataverse (the simulator) as the CRM, a SQLite database as the ERP.

Accounts and contacts go to the ERP; products, price lists and GL accounts come to the CRM; orders go to
the ERP; 2,000 invoices come to the CRM, 10 of which reference a GL account or a customer that does not
exist yet. The operator fixes the master data and replays; then one customer is edited on both sides.
Used by `make demo` (with progress and tables) and by tests/e2e/test_demo_story.py (headless).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Column, DateTime, Integer, MetaData, Numeric, String, Table, create_engine, insert, text

from dvsim import DataverseSimulator
from shared.app import SyncApp
from shared.config import load_config
from shared.engine.replay import ReplayFilter, ReplayResult, replay_dead_letters
from shared.engine.tally import Tally
from shared.local_runtime import RunOptions, run_once

ACCOUNTS, CONTACTS, ORDERS, PRODUCTS, INVOICES = 200, 300, 250, 80, 2000
GL_CODES = [f"{4000 + i}" for i in range(12)]
MISSING_GL = ["4900", "4901"]  # used by 5 invoices, absent from the ERP's chart of accounts at first
MISSING_CUSTOMERS = ["C900", "C901", "C902"]  # used by 5 invoices, not yet in the CRM
BAD_GL_INVOICES = {f"INV{n:05d}": MISSING_GL[n % 2] for n in (7, 311, 902, 1400, 1999)}
BAD_CUSTOMER_INVOICES = {f"INV{n:05d}": MISSING_CUSTOMERS[n % 3] for n in (42, 512, 777, 1234, 1888)}

ERP = MetaData()
_NOW = text("(strftime('%Y-%m-%d %H:%M:%f', 'now'))")
# Like most ERPs, every write stamps the row; so each of our writes comes back as a change to recognise.
_BUMP = """CREATE TRIGGER IF NOT EXISTS {table}_bump AFTER UPDATE ON {table} WHEN NEW.version = OLD.version BEGIN
    UPDATE {table} SET version = OLD.version + 1, modified = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE rowid = NEW.rowid; END"""


def _erp_table(name: str, *columns: Column) -> Table:
    return Table(name, ERP, *columns, Column("modified", DateTime, nullable=False, index=True, server_default=_NOW),
                 Column("version", Integer, nullable=False, server_default="1"))


customers = _erp_table("customers", Column("account_number", String(20), primary_key=True),
                       Column("name", String(100), nullable=False), Column("phone", String(50)),
                       Column("credit_limit", Numeric(18, 2)), Column("crm_id", String(36)))
contacts = _erp_table("contacts", Column("contact_no", String(40), primary_key=True),
                      Column("first_name", String(50)), Column("last_name", String(50), nullable=False),
                      Column("email", String(100)), Column("customer_no", String(20)), Column("crm_id", String(36)))
orders = _erp_table("orders", Column("order_no", String(40), primary_key=True), Column("name", String(300)),
                    Column("customer_no", String(20)), Column("total", Numeric(18, 2)))
products = _erp_table("products", Column("product_no", String(40), primary_key=True),
                      Column("name", String(100), nullable=False), Column("price", Numeric(18, 2)))
pricelists = _erp_table("pricelists", Column("name", String(100), primary_key=True))
gl_accounts = _erp_table("gl_accounts", Column("code", String(20), primary_key=True), Column("name", String(100)))
invoices = _erp_table("invoices", Column("invoice_no", String(40), primary_key=True), Column("name", String(300)),
                      Column("customer_no", String(20), nullable=False), Column("gl_account", String(20)),
                      Column("total", Numeric(18, 2)))


FLOWS = """\
systems:
  crm:
    kind: dataverse
    url: {crm_url}
    auth: {{static_token: "env:DEMO_CRM_TOKEN"}}
    max_concurrency: 4
  erp: {{kind: sql, url: "env:DEMO_ERP_URL"}}
flows:
  accounts-to-customers:
    pair: customers
    master: crm
    source: {{system: crm, entity: accounts, key: accountid, changes: change_tracking,
              select: [name, accountnumber, telephone1, creditlimit]}}
    target: {{system: erp, entity: customers, key: account_number}}
    fields:
      - {{from: accountnumber, to: account_number, required: true, max_length: 20}}
      - {{from: name, to: name, required: true, max_length: 100}}
      - {{from: telephone1, to: phone}}
      - {{from: creditlimit, to: credit_limit, type: decimal}}
      - {{from: accountid, to: crm_id}}
  customers-to-accounts:
    pair: customers
    master: crm
    source: {{system: erp, entity: customers, key: account_number, watermark: modified, version: version}}
    target: {{system: crm, entity: accounts, key: accountid}}
    fields:
      - {{from: crm_id, to: accountid, required: true}}
      - {{from: account_number, to: accountnumber}}
      - {{from: name, to: name}}
      - {{from: phone, to: telephone1}}
      - {{from: credit_limit, to: creditlimit, type: decimal}}
  contacts-to-erp:
    source: {{system: crm, entity: contacts, key: contactid, changes: change_tracking,
              select: [firstname, lastname, emailaddress1, dualsync_externalid, _parentcustomerid_value]}}
    target: {{system: erp, entity: contacts, key: contact_no}}
    fields:
      - {{from: dualsync_externalid, to: contact_no, required: true}}
      - {{from: firstname, to: first_name}}
      - {{from: lastname, to: last_name, required: true}}
      - {{from: emailaddress1, to: email, max_length: 100}}
      - {{from: _parentcustomerid_value, to: customer_no, lookup: accounts-to-customers}}
      - {{from: contactid, to: crm_id}}
  orders-to-erp:
    source: {{system: crm, entity: salesorders, key: salesorderid, changes: change_tracking,
              select: [ordernumber, name, totalamount, _customerid_value]}}
    target: {{system: erp, entity: orders, key: order_no}}
    fields:
      - {{from: ordernumber, to: order_no, required: true}}
      - {{from: name, to: name}}
      - {{from: _customerid_value, to: customer_no, lookup: accounts-to-customers, required: true}}
      - {{from: totalamount, to: total, type: decimal}}
  products-to-crm:
    source: {{system: erp, entity: products, key: product_no, watermark: modified, version: version}}
    target: {{system: crm, entity: products, key: productnumber}}
    fields:
      - {{from: product_no, to: productnumber}}
      - {{from: name, to: name, required: true, max_length: 100}}
      - {{from: price, to: price, type: decimal}}
  pricelists-to-crm:
    source: {{system: erp, entity: pricelists, key: name, watermark: modified, version: version}}
    target: {{system: crm, entity: pricelevels, key: name}}
    fields:
      - {{from: name, to: name}}
  glaccounts-to-crm:
    source: {{system: erp, entity: gl_accounts, key: code, watermark: modified, version: version}}
    target: {{system: crm, entity: dualsync_glaccounts, key: dualsync_code}}
    fields:
      - {{from: code, to: dualsync_code}}
      - {{from: name, to: dualsync_name}}
  invoices-to-crm:
    source: {{system: erp, entity: invoices, key: invoice_no, watermark: modified, version: version}}
    target: {{system: crm, entity: invoices, key: invoicenumber}}
    missing_reference_attempts: 3
    fields:
      - {{from: invoice_no, to: invoicenumber}}
      - {{from: name, to: name}}
      - {{from: total, to: totalamount, type: decimal}}
      - {{from: customer_no, to: customerid_account@odata.bind, lookup: customers-to-accounts, bind: accounts,
          required: true}}
      - {{from: gl_account, to: dualsync_glaccountid@odata.bind, lookup: glaccounts-to-crm,
          bind: "dualsync_glaccounts(dualsync_code)", required: true}}
"""


@dataclass
class Story:
    """Everything a run of the story leaves behind, for the tables and the assertions."""

    work: Path
    sim: DataverseSimulator
    erp_url: str
    app: SyncApp
    first: Tally | None = None
    dead_letters: list[tuple[str, str, str, str]] = field(default_factory=list)
    master_data: Tally | None = None
    replay: ReplayResult | None = None
    after_replay: Tally | None = None
    conflict: dict[str, str] = field(default_factory=dict)
    conflict_runs: list[Tally] = field(default_factory=list)

    def close(self) -> None:
        self.app.close()
        self.sim.close()


def setup(work: Path) -> Story:
    work.mkdir(parents=True, exist_ok=True)
    sim = DataverseSimulator(db_path=str(work / "crm.db"))
    crm_url = sim.start()
    _seed_crm(sim)
    erp_url = f"sqlite:///{work / 'erp.db'}"
    _seed_erp(erp_url)
    os.environ["DEMO_CRM_TOKEN"] = "demo-token"  # the simulator accepts any bearer token
    os.environ["DEMO_ERP_URL"] = erp_url
    flows = work / "flows.yaml"
    flows.write_text(FLOWS.format(crm_url=crm_url), encoding="utf-8")
    app = SyncApp.local(load_config(flows), work / "state", retry_base=0.05)
    return Story(work, sim, erp_url, app)


def _seed_crm(sim: DataverseSimulator) -> None:
    for i in range(ACCOUNTS):
        sim.insert("accounts", {"accountid": _guid(1, i), "name": f"Customer {i} Ltd", "accountnumber": f"C{i:03d}",
                                "telephone1": f"+44 20 7946 {i:04d}", "creditlimit": 1000 + 10 * i})
    for i in range(CONTACTS):
        sim.insert("contacts", {"firstname": f"Ann{i}", "lastname": f"Smith{i}", "emailaddress1": f"ann{i}@example.com",
                                "dualsync_externalid": f"P{i:04d}", "_parentcustomerid_value": _guid(1, i % ACCOUNTS)})
    for i in range(ORDERS):
        sim.insert("salesorders", {"ordernumber": f"SO{i:05d}", "name": f"Order {i}", "totalamount": 100 + i,
                                   "_customerid_value": _guid(1, i % ACCOUNTS)})


def _guid(kind: int, i: int) -> str:
    return f"{kind:08x}-0000-4000-8000-{i:012x}"


def _seed_erp(url: str) -> None:
    engine = create_engine(url)
    ERP.create_all(engine)
    now = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        for table in ERP.tables:
            conn.execute(text(_BUMP.format(table=table)))
        conn.execute(insert(products), [{"product_no": f"P-{i:04d}", "name": f"Widget {i}",
                                         "price": Decimal(5 + i) / 2, "modified": now} for i in range(PRODUCTS)])
        conn.execute(insert(pricelists), [{"name": n, "modified": now} for n in ("Retail", "Wholesale", "Export")])
        conn.execute(insert(gl_accounts), [{"code": c, "name": f"Revenue {c}", "modified": now} for c in GL_CODES])
        rows = []
        for n in range(INVOICES):
            number = f"INV{n:05d}"
            rows.append({
                "invoice_no": number, "name": f"Invoice {n}", "total": Decimal(50 + n % 500),
                "customer_no": BAD_CUSTOMER_INVOICES.get(number, f"C{n % ACCOUNTS:03d}"),
                "gl_account": BAD_GL_INVOICES.get(number, GL_CODES[n % len(GL_CODES)]),
                "modified": now + timedelta(milliseconds=n),
            })
        conn.execute(insert(invoices), rows)
    engine.dispose()


def sync(story: Story, on_progress: Callable[[Tally], None] | None = None) -> Tally:
    """One `dualsync run --once`."""
    return run_once(story.app, RunOptions(workers=2, drain_bound=10), on_progress)


def dead_letters(story: Story) -> list[tuple[str, str, str, str]]:
    found = []
    for m in story.app.bus.peek_dead_letters(story.app.queue, max_messages=1000):
        props = m.envelope.application_properties
        found.append((str(props["flow"]), str(props["key"]), m.dead_letter_reason or "",
                      m.dead_letter_description or ""))
    return sorted(found)


def fix_master_data(story: Story) -> None:
    """What the operator does after reading the dead letters: add the GL accounts and the customers."""
    engine = create_engine(story.erp_url)
    with engine.begin() as conn:
        conn.execute(insert(gl_accounts), [{"code": c, "name": f"Revenue {c}"} for c in MISSING_GL])
    engine.dispose()
    for i, number in enumerate(MISSING_CUSTOMERS):
        story.sim.insert("accounts", {"accountid": _guid(9, i), "name": f"New customer {number}",
                                      "accountnumber": number})


def edit_one_customer_on_both_sides(story: Story) -> dict[str, str]:
    """The same field changed in both systems before the next sync: the flow's master (the CRM) wins."""
    story.sim.update("accounts", _guid(1, 5), {"name": "Customer 5 Ltd (renamed in CRM)"})
    engine = create_engine(story.erp_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET name = :n, phone = :p WHERE account_number = 'C005'"),
                     {"n": "Customer 5 Limited (renamed in ERP)", "p": "+44 20 0000 0005"})
    engine.dispose()
    return {"crm_name": "Customer 5 Ltd (renamed in CRM)", "erp_name": "Customer 5 Limited (renamed in ERP)",
            "erp_phone": "+44 20 0000 0005"}


def customer_5(story: Story) -> dict[str, str]:
    crm = story.sim.get("accounts", _guid(1, 5)) or {}
    engine = create_engine(story.erp_url)
    with engine.connect() as conn:
        erp = conn.execute(text("SELECT name, phone FROM customers WHERE account_number = 'C005'")).one()
    engine.dispose()
    return {"crm_name": crm.get("name"), "crm_phone": crm.get("telephone1"), "erp_name": erp[0], "erp_phone": erp[1]}


def run(work: Path, on_progress: Callable[[str, Tally], None] | None = None) -> Story:
    story = setup(work)
    progress = (lambda stage: (lambda t: on_progress(stage, t))) if on_progress else (lambda stage: None)
    story.first = sync(story, progress("first sync"))
    story.dead_letters = dead_letters(story)
    fix_master_data(story)
    story.master_data = sync(story, progress("master data"))
    story.replay = replay_dead_letters(story.app, ReplayFilter())
    story.after_replay = sync(story, progress("replayed"))
    story.conflict = edit_one_customer_on_both_sides(story)
    story.conflict_runs = [sync(story, progress("conflict")) for _ in range(2)]
    return story


def crm_invoice_numbers(story: Story) -> list[str]:
    return [row["invoicenumber"] for row in story.sim.rows("invoices")]
