"""Initial sync: match what exists on both sides, create the rest, dead-letter what is ambiguous."""

from __future__ import annotations

import copy

import pytest

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.engine.apply import apply_batch
from shared.engine.delivery import DeadLetterViaLedger, handle_with_ledger
from shared.engine.initial_sync import initial_sync, normalise
from shared.engine.pull import pull_flow
from shared.engine.settle import settle
from shared.engine.verdicts import REASON_PROPERTY, verdict_outcome
from shared.errors import ConfigError, Reason
from shared.messages import parse_body
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import KeyLink, StateStore
from tests.fakes.memory_connector import MemoryConnector
from tests.unit.conftest import CONFIG


def _config(**flow_changes) -> dict:
    config = copy.deepcopy(CONFIG)
    config["flows"]["accounts"]["match_on"] = ["account_number"]
    config["flows"]["accounts"].update(flow_changes)
    return config


@pytest.fixture
def matching(app):
    app.config = parse_config(_config())
    return app


def crm(memory, key: str, number: str | None, name: str = "Acme", state: int = 0, limit: str = "100") -> None:
    memory["crm"].put("accounts", key, {"accountid": key, "accountnumber": number, "name": name,
                                        "statecode": state, "creditlimit": limit})


def erp(memory, number: str, name: str = "Acme", status: str = "active", limit: str = "100.00") -> None:
    memory["erp"].put("customers", number, {"account_number": number, "name": name, "status": status,
                                            "credit_limit": limit})


def drain(app: SyncApp) -> list:
    """The apply step with the verdict check first, as apply_batch is to do it."""
    outcomes = []
    while batch := app.bus.receive(app.queue, max_messages=100, max_wait=0.2):
        condemned, rest = [], []
        for received in batch:
            verdict = verdict_outcome(received, parse_body(received.envelope.body))
            (condemned if verdict else rest).append(verdict or received)
        step = condemned + apply_batch(app, rest)
        settle(app, app.bus.settler(app.queue), step)
        outcomes += step
    return outcomes


def dead_letters(app: SyncApp) -> dict[str, tuple[str, str]]:
    return {parse_body(m.envelope.body).key: (m.dead_letter_reason, m.dead_letter_description)
            for m in app.bus.peek_dead_letters(app.queue, max_messages=100)}


def test_matches_creates_and_dead_letters_what_is_ambiguous(matching, memory):
    app = matching
    crm(memory, "a1", "N1")  # the same on both sides
    crm(memory, "a2", "N2", name="Beta")  # exists, but the ERP spells it differently
    crm(memory, "a3", "N3")  # not in the ERP
    crm(memory, "a4", "N4")  # the ERP has it twice (N4 and n4)
    crm(memory, "a5", "N5")  # two CRM records for one ERP customer ...
    crm(memory, "a6", " n5 ")  # ... (case and blanks do not matter)
    crm(memory, "a7", "N7", name="Far too long a name")  # cannot be mapped
    for number, name in (("N1", "Acme"), ("N2", "BETA"), ("N4", "Acme"), ("n4", "Acme"), ("N5", "Acme"),
                         ("N9", "Only in ERP")):
        erp(memory, number, name)
    writes_before = memory["erp"].writes

    result = initial_sync(app, "accounts")

    assert (result.status, result.matched, result.aligned, result.created, result.ambiguous, result.failed,
            result.already_linked, result.targets) == ("ok", 2, 1, 1, 3, 1, 0, 6)
    assert result.total == 7
    assert memory["erp"].writes == writes_before  # initial sync itself never writes to the target
    assert app.state.lookup_keys("accounts", "crm", ["a1", "a2", "a3", "a4", "a5"]) == {"a1": "N1", "a2": "N2"}
    state = app.state.get_records("accounts", ["crm|a1"])["crm|a1"]
    assert state.versions["crm"] == f"{memory['crm'].versions[('accounts', 'a1')]:020d}"
    assert state.values["erp"] == {"account_number": "N1", "name": "Acme", "status": "active", "credit_limit": "100"}
    queued = {parse_body(m.envelope.body).key: m.envelope for m in app.bus.peek(app.queue, max_messages=50)}
    assert sorted(queued) == ["a2", "a3", "a4", "a5", "a6", "a7"]
    assert {k for k, e in queued.items() if REASON_PROPERTY in e.application_properties} == {"a4", "a5", "a6", "a7"}

    outcomes = drain(app)

    assert sorted((o.message.key, o.kind.value) for o in outcomes) == [
        ("a2", "applied"), ("a3", "applied"), ("a4", "dead_letter"), ("a5", "dead_letter"), ("a6", "dead_letter"),
        ("a7", "dead_letter")]
    dlq = dead_letters(app)
    assert {k: r for k, (r, _) in dlq.items()} == {"a4": Reason.AMBIGUOUS_MATCH, "a5": Reason.AMBIGUOUS_MATCH,
                                                   "a6": Reason.AMBIGUOUS_MATCH, "a7": Reason.VALIDATION_FAILED}
    assert "record a4" in dlq["a4"][1] and "account_number='N4'" in dlq["a4"][1] and "N4, n4" in dlq["a4"][1]
    assert "customers N5 is matched by 2 crm records: a5, a6" in dlq["a5"][1]
    assert "account_number=' n5 '" in dlq["a6"][1]
    assert "field name" in dlq["a7"][1]
    customers = memory["erp"].tables["customers"]
    assert customers["N2"]["name"] == "Beta" and customers["N3"]["name"] == "Acme"
    assert sorted(customers) == ["N1", "N2", "N3", "N4", "N5", "N9", "n4"]  # nothing guessed, nothing doubled


def test_it_is_the_flows_first_pull_and_a_rerun_changes_nothing(matching, memory):
    app = matching
    crm(memory, "a1", "N1")
    crm(memory, "a2", "N2")
    erp(memory, "N1")
    first = initial_sync(app, "accounts")
    assert (first.matched, first.created) == (1, 1)
    assert app.state.get_cursor("accounts").position is not None
    assert app.state.get_cursor("accounts").lease_owner is None
    assert pull_flow(app, "accounts", owner="t").pulled == 0  # the pull carries on after the initial read
    drain(app)

    again = initial_sync(app, "accounts")
    assert (again.already_linked, again.matched, again.created, again.ambiguous) == (2, 0, 0, 0)

    crm(memory, "a1", "N1", name="Renamed")
    assert pull_flow(app, "accounts", owner="t").pulled == 1
    drain(app)
    assert memory["erp"].tables["customers"]["N1"]["name"] == "Renamed"
    assert [r["kind"] for r in app.state.recent_runs("accounts", 10)].count("initial_sync") == 2


def test_a_condemned_message_is_never_applied_on_the_ledger_path_either(matching, memory):
    app = matching
    crm(memory, "a1", "N1")
    erp(memory, "N1")
    erp(memory, "n1")
    assert initial_sync(app, "accounts").ambiguous == 1
    (received,) = app.bus.receive(app.queue, max_messages=10, max_wait=0.2)
    failure = app.state.get_failure(app.queue, received.envelope.message_id)
    assert failure["reason"] == Reason.AMBIGUOUS_MATCH
    with pytest.raises(DeadLetterViaLedger, match="AmbiguousMatch"):
        handle_with_ledger(app, received)
    assert sorted(memory["erp"].tables["customers"]) == ["N1", "n1"]


def test_a_target_linked_to_another_record_is_not_taken(matching, memory):
    app = matching
    app.state.link_keys("accounts", [KeyLink("crm", "old", "erp", "N1")])
    crm(memory, "a1", "N1")
    erp(memory, "N1")
    result = initial_sync(app, "accounts")
    assert result.ambiguous == 1
    (envelope,) = [m.envelope for m in app.bus.peek(app.queue)]
    assert "N1 is already linked to crm record old" in envelope.application_properties["dead_letter_description"]


def test_a_missing_parent_outside_the_match_fields_waits_in_the_engine(app, memory):
    config = copy.deepcopy(CONFIG)
    config["flows"]["contacts"]["match_on"] = ["last_name"]
    app.config = parse_config(config)
    memory["crm"].put("contacts", "c1", {"contactid": "c1", "lastname": "Smith", "parent": "acc-x"})
    memory["crm"].put("contacts", "c2", {"contactid": "c2", "lastname": "Jones", "parent": "acc-x"})
    memory["erp"].put("contacts", "E1", {"contact_no": "E1", "last_name": "SMITH", "customer_no": None})
    memory["erp"].put("contacts", "E2", {"contact_no": "E2", "last_name": "", "customer_no": None})
    result = initial_sync(app, "contacts")
    # c1 matches E1 although its parent is not synced yet: linked, and sent so apply can wait for the parent.
    assert (result.matched, result.aligned, result.created, result.failed) == (1, 1, 1, 0)
    assert app.state.lookup_keys("contacts", "crm", ["c1", "c2"]) == {"c1": "E1"}
    assert "another key on erp than their mapping gives" in result.notes[0]
    outcomes = drain(app)
    assert {(o.message.key, o.kind.value, str(o.reason)) for o in outcomes} >= {
        ("c1", "retry", "MissingReference"), ("c2", "retry", "MissingReference")}


def test_a_missing_parent_of_a_match_field_fails_with_guidance(app, memory):
    config = copy.deepcopy(CONFIG)
    config["flows"]["contacts"]["match_on"] = ["customer_no"]
    app.config = parse_config(config)
    memory["crm"].put("contacts", "c1", {"contactid": "c1", "lastname": "Smith", "parent": "acc-x"})
    result = initial_sync(app, "contacts")
    assert result.failed == 1
    assert "run initial-sync for it first" in result.examples[0] and result.examples[0].startswith("MissingReference")


def test_a_flow_without_match_on_is_refused(app):
    with pytest.raises(ConfigError, match="match_on"):
        initial_sync(app, "accounts")


def test_normalise():
    assert normalise("  ANN@Example.COM ", "string") == "ann@example.com"
    assert normalise("12.50", "decimal") == normalise(12.5, "decimal") == "12.5"
    assert normalise("", None) is None and normalise("  ", None) is None and normalise(None, None) is None
    assert normalise("Straße", None) == normalise("STRASSE", None)


# -- pairs: the master's values win where the two sides differ ---------------------------------------

def _pair(tmp_path, master: str):
    from tests.unit.test_bidirectional import pair_config

    config = pair_config()
    for flow in config["flows"].values():
        flow["master"] = master
    config["flows"]["accounts-to-erp"]["match_on"] = ["account_number"]
    memory = {"crm": MemoryConnector(), "erp": MemoryConnector()}
    app = SyncApp(config=parse_config(config), state=StateStore(SqliteTables(":memory:")),
                  bus=SqliteBus(tmp_path / f"bus-{master}.db"), retry_base=0.01,
                  connector_factory=lambda name: memory[name])
    memory["crm"].put("accounts", "A1", {"accountnumber": "A1", "name": "Acme", "telephone1": "1"})
    memory["crm"].put("accounts", "A2", {"accountnumber": "A2", "name": "Same", "telephone1": "2"})
    memory["erp"].put("customers", "A1", {"account_number": "A1", "name": "ACME Corp", "phone": "1"})
    memory["erp"].put("customers", "A2", {"account_number": "A2", "name": "Same", "phone": "2"})
    return app, memory


@pytest.mark.parametrize("master", ["crm", "erp"])
def test_in_a_pair_the_master_side_is_sent_where_matched_records_differ(tmp_path, master):
    app, memory = _pair(tmp_path, master)
    try:
        result = initial_sync(app, "accounts-to-erp")
        assert (result.matched, result.aligned, result.created) == (2, 1, 0)
        (message,) = [parse_body(m.envelope.body) for m in app.bus.peek(app.queue)]
        expected_flow = "accounts-to-erp" if master == "crm" else "customers-to-crm"
        assert (message.flow, message.key) == (expected_flow, "A1")
        drain(app)
        winner = "Acme" if master == "crm" else "ACME Corp"
        assert memory["crm"].tables["accounts"]["A1"]["name"] == winner
        assert memory["erp"].tables["customers"]["A1"]["name"] == winner
        writes = (memory["crm"].writes, memory["erp"].writes)
        for flow in ("accounts-to-erp", "customers-to-crm"):  # first regular pulls: nothing travels back
            pull_flow(app, flow, owner="t")
        outcomes = drain(app)
        assert all(o.kind.value == "skipped" for o in outcomes), [(o.message.key, o.reason) for o in outcomes]
        assert (memory["crm"].writes, memory["erp"].writes) == writes
    finally:
        app.close()


def test_an_unmatched_record_whose_key_is_taken_is_not_created_over_it(app, memory):
    config = copy.deepcopy(CONFIG)
    config["flows"]["contacts"]["match_on"] = ["last_name"]
    app.config = parse_config(config)
    memory["crm"].put("contacts", "c1", {"contactid": "c1", "lastname": "Smith"})
    memory["erp"].put("contacts", "c1", {"contact_no": "c1", "last_name": "Jones"})  # someone else, same number
    result = initial_sync(app, "contacts")
    assert (result.ambiguous, result.created) == (1, 0)
    assert "c1 already exists under the key the mapping gives" in result.examples[0]
    assert "last_name='Smith'" in result.examples[0]
