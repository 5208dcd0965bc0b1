"""The foundation's end-to-end scenario, asserted the same way whatever carries the messages and the state."""

from __future__ import annotations

from sqlalchemy import create_engine, func, select, text

from demo import sample_data
from shared.app import SyncApp
from shared.engine.ledger_reasons import peek_dead_letters
from shared.engine.tally import Tally


def erp_count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(text(table))).scalar_one()
    except Exception:  # noqa: BLE001 - the table may be mid-creation while the runtime starts
        return 0
    finally:
        engine.dispose()


def assert_demo_scenario(app: SyncApp, tally: Tally, erp_url: str) -> None:
    """2,000 accounts and 3,000 contacts with 7 bad rows: 1,996 + 2,997 applied, each bad row dead-lettered
    with a description naming its record and field, and every count adding up."""
    accounts, contacts = tally.flows["accounts-to-customers"], tally.flows["contacts-to-erp"]
    assert (accounts.pulled, accounts.applied, accounts.waiting) == (2000, 1996, 0)
    assert dict(accounts.dead_lettered) == {"ValidationFailed": 3, "MappingFailed": 1}
    assert (contacts.pulled, contacts.applied, contacts.waiting) == (3000, 2997, 0)
    assert dict(contacts.dead_lettered) == {"ValidationFailed": 2, "MissingReference": 1}
    assert contacts.retried == 3  # the missing parent waited missing_reference_attempts - 1 times
    assert accounts.adds_up() and contacts.adds_up()
    assert erp_count(erp_url, "customers") == 1996 == app.state.count_keys("accounts-to-customers", "erp")
    assert erp_count(erp_url, "contacts") == 2997 == app.state.count_keys("contacts-to-erp", "erp")
    # As operators read them (status, dead-letters list, replay): in ledger mode with the failure ledger's reason.
    dead = {(m.envelope.application_properties["flow"], m.envelope.application_properties["key"]):
            (m.dead_letter_reason, m.dead_letter_description) for m in peek_dead_letters(app)}
    for bad in sample_data.bad_rows(2000, 3000):
        reason, description = dead[(bad.flow, bad.key)]
        assert reason == bad.reason
        assert f"record {bad.key}" in description and f"field {bad.field} " in description
