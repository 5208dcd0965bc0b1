"""Sample CRM and ERP databases for the demo, the end-to-end tests and the benchmarks.

The CRM side is shaped like Dataverse tables (accounts, contacts); the ERP side like a SQL ERP
(customers, contacts). `BAD_ROWS` lists the deliberately broken rows and why each must fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Column, DateTime, Integer, MetaData, Numeric, String, Table, create_engine, insert

CRM = MetaData()
crm_accounts = Table(
    "accounts", CRM,
    Column("accountid", String(36), primary_key=True),
    Column("accountnumber", String(40)),
    Column("name", String(300)),
    Column("statecode", Integer),
    Column("creditlimit", Numeric(18, 2)),
    Column("modifiedon", DateTime, nullable=False, index=True),
)
crm_contacts = Table(
    "contacts", CRM,
    Column("contactid", String(36), primary_key=True),
    Column("firstname", String(100)),
    Column("lastname", String(100)),
    Column("emailaddress1", String(200)),
    Column("parentaccountid", String(36)),
    Column("modifiedon", DateTime, nullable=False, index=True),
)

ERP = MetaData()
erp_customers = Table(
    "customers", ERP,
    Column("account_number", String(20), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("status", String(10)),
    Column("credit_limit", Numeric(18, 2)),
    Column("crm_id", String(36)),
)
erp_contacts = Table(
    "contacts", ERP,
    Column("contact_no", String(36), primary_key=True),
    Column("first_name", String(100)),
    Column("last_name", String(100), nullable=False),
    Column("email", String(100)),
    Column("customer_no", String(20)),
)


@dataclass(frozen=True)
class BadRow:
    flow: str
    key: str
    reason: str
    field: str


def account_id(i: int) -> str:
    return f"acc-{i:07d}"


def contact_id(i: int) -> str:
    return f"con-{i:07d}"


def bad_rows(accounts: int, contacts: int) -> list[BadRow]:
    return [
        BadRow("accounts-to-customers", account_id(3), "ValidationFailed", "name"),
        BadRow("accounts-to-customers", account_id(11), "ValidationFailed", "name"),
        BadRow("accounts-to-customers", account_id(17), "ValidationFailed", "account_number"),
        BadRow("accounts-to-customers", account_id(23), "MappingFailed", "status"),
        BadRow("contacts-to-erp", contact_id(5), "MissingReference", "customer_no"),
        BadRow("contacts-to-erp", contact_id(8), "ValidationFailed", "last_name"),
        BadRow("contacts-to-erp", contact_id(13), "ValidationFailed", "email"),
    ]


def build(directory: Path, accounts: int = 2000, contacts: int = 3000, with_bad_rows: bool = True) -> tuple[str, str]:
    """Creates crm.db and erp.db under `directory`; returns their SQLAlchemy URLs."""
    directory.mkdir(parents=True, exist_ok=True)
    crm_url, erp_url = f"sqlite:///{directory / 'crm.db'}", f"sqlite:///{directory / 'erp.db'}"
    base = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    crm = create_engine(crm_url)
    CRM.create_all(crm)
    ERP.create_all(create_engine(erp_url))
    account_rows = [
        {"accountid": account_id(i), "accountnumber": f"C{i:06d}", "name": f"Customer {i} Ltd",
         "statecode": i % 2, "creditlimit": Decimal(1000 + i) / 4,
         # Runs of 50 rows share a timestamp, so paging must break ties on the key.
         "modifiedon": base + timedelta(seconds=i // 50)}
        for i in range(accounts)
    ]
    contact_rows = [
        {"contactid": contact_id(i), "firstname": f"First{i}", "lastname": f"Last{i}",
         "emailaddress1": f"person{i}@example.com", "parentaccountid": account_id(i % accounts),
         "modifiedon": base + timedelta(seconds=i // 50)}
        for i in range(contacts)
    ]
    if with_bad_rows:
        _spoil(account_rows, contact_rows)
    with crm.begin() as conn:
        for start in range(0, len(account_rows), 5000):
            conn.execute(insert(crm_accounts), account_rows[start:start + 5000])
        for start in range(0, len(contact_rows), 5000):
            conn.execute(insert(crm_contacts), contact_rows[start:start + 5000])
    crm.dispose()
    return crm_url, erp_url


def _spoil(accounts: list[dict], contacts: list[dict]) -> None:
    accounts[3]["name"] = "A" * 140  # longer than the ERP's 100
    accounts[11]["name"] = "Very Long Trading Name " * 6
    accounts[17]["accountnumber"] = None  # the ERP key is required
    accounts[23]["statecode"] = 7  # no entry in the status map
    spoiled = {account_id(i) for i in (3, 11, 17, 23)}
    for contact in contacts:  # keep the failures independent: no contact hangs off a broken account
        if contact["parentaccountid"] in spoiled:
            contact["parentaccountid"] = account_id(0)
    contacts[5]["parentaccountid"] = "acc-missing"  # parent never synced
    contacts[8]["lastname"] = ""  # required
    contacts[13]["emailaddress1"] = "x" * 120 + "@example.com"  # longer than 100


FLOWS_YAML = """\
systems:
  crm: {kind: sql, url: "env:CRM_DB_URL"}
  erp: {kind: sql, url: "env:ERP_DB_URL"}
flows:
  accounts-to-customers:
    source: {system: crm, entity: accounts, key: accountid, changes: watermark, watermark: modifiedon}
    target: {system: erp, entity: customers, key: account_number}
    schedule: "0 */5 * * * *"
    master: crm
    deletes: deactivate
    page_size: 1000
    fields:
      - {from: accountnumber, to: account_number, required: true, max_length: 20}
      - {from: name, to: name, required: true, max_length: 100}
      - {from: statecode, to: status, map: {0: active, 1: inactive}}
      - {from: creditlimit, to: credit_limit, type: decimal}
      - {from: accountid, to: crm_id}
  contacts-to-erp:
    source: {system: crm, entity: contacts, key: contactid, changes: watermark, watermark: modifiedon}
    target: {system: erp, entity: contacts, key: contact_no}
    schedule: "0 */5 * * * *"
    master: crm
    missing_reference_attempts: 4
    page_size: 1000
    fields:
      - {from: contactid, to: contact_no, required: true}
      - {from: firstname, to: first_name}
      - {from: lastname, to: last_name, required: true}
      - {from: emailaddress1, to: email, max_length: 100}
      - {from: parentaccountid, to: customer_no, lookup: accounts-to-customers}
"""


def write_flows(directory: Path) -> Path:
    path = directory / "flows.yaml"
    path.write_text(FLOWS_YAML, encoding="utf-8")
    return path
