"""Apply: every delivered message ends in exactly one outcome, and the target sees each change once."""

from __future__ import annotations

import time
from decimal import Decimal

from shared.engine.outcome import Kind
from shared.errors import AuthError, PermanentError, Reason, TransientError
from tests.unit.conftest import account, change, deliver


def kinds(outcomes):
    return sorted((o.kind.value, str(o.reason)) for o in outcomes)


def test_applies_maps_and_records_state(app, memory):
    [o] = deliver(app, account("a1", 1, name="Acme", creditlimit="100.50"))
    assert (o.kind, o.reason) == (Kind.APPLIED, "upsert")
    assert memory["erp"].tables["customers"]["N-a1"] == {
        "account_number": "N-a1", "name": "Acme", "status": "active", "credit_limit": Decimal("100.50")}
    assert app.state.lookup_keys("accounts", "crm", ["a1"]) == {"a1": "N-a1"}
    assert app.state.lookup_keys("accounts", "erp", ["N-a1"]) == {"N-a1": "a1"}
    state = app.state.get_records("accounts", ["crm|a1"])["crm|a1"]
    assert state.versions == {"crm": f"{1:020d}"} and state.values["erp"]["credit_limit"] == "100.5"
    assert app.bus.counts(app.queue).active == 0


def test_redelivered_or_older_versions_are_skipped(app, memory):
    deliver(app, account("a1", 5, name="New"))
    outcomes = deliver(app, account("a1", 5, name="New"), account("a2", 1))
    assert kinds(outcomes) == [("applied", "upsert"), ("skipped", "already_applied")]
    [stale] = deliver(app, account("a1", 3, name="Old"))
    assert stale.reason == "already_applied"
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "New"


def test_only_newest_version_in_a_batch_is_written(app, memory):
    outcomes = deliver(app, account("a1", 2, name="Two"), account("a1", 9, name="Nine"), account("a1", 4, name="Four"))
    assert kinds(outcomes) == [("applied", "upsert"), ("skipped", "superseded"), ("skipped", "superseded")]
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Nine"
    assert memory["erp"].writes == 1


def test_validation_and_mapping_errors_name_record_field_and_rule(app, memory):
    outcomes = deliver(app, account("long", 1, name="x" * 11),
                       change("badmap", 1, accountnumber="N", name="ok", statecode=7),
                       change("noname", 1, accountnumber="N2", name=""),
                       change("money", 1, accountnumber="N3", name="ok", creditlimit="12abc"))
    dead = {o.message.key: o for o in outcomes}
    assert all(o.kind is Kind.DEAD_LETTER for o in outcomes)
    assert dead["long"].reason == Reason.VALIDATION_FAILED
    assert dead["long"].description == ("flow accounts record long: field name (from name): is 11 characters, "
                                        "longer than max_length 10")
    assert dead["badmap"].reason == Reason.MAPPING_FAILED
    assert "field status (from statecode): value 7 has no entry in its map (known: 0, 1)" in dead["badmap"].description
    assert dead["noname"].description.endswith("field name (from name): is required but empty")
    assert "field credit_limit (from creditlimit): '12abc' is not a valid decimal" in dead["money"].description
    assert "customers" not in memory["erp"].tables
    dlq = app.bus.peek_dead_letters(app.queue)
    assert sorted(m.dead_letter_reason for m in dlq) == ["MappingFailed", "ValidationFailed", "ValidationFailed",
                                                         "ValidationFailed"]


def test_malformed_body_and_unknown_flow_dead_letter(app):
    outcomes = deliver(app, change("k", 1, flow="nope"), raw=[b"not json", b'{"flow": "accounts"}'])
    reasons = sorted(str(o.reason) for o in outcomes)
    assert reasons == ["MalformedMessage", "MalformedMessage", "UnknownFlow"]
    unknown = next(o for o in outcomes if o.reason == Reason.UNKNOWN_FLOW)
    assert unknown.description == "flow nope record k: no such flow in the config"


def test_transient_failure_schedules_a_clone_then_completes(app, memory):
    memory["erp"].fail_next.append(TransientError("429 Too Many Requests", retry_after=0.5))
    [o] = deliver(app, account("a1", 1))
    assert o.kind is Kind.RETRY
    counts = app.bus.counts(app.queue)
    assert (counts.active, counts.scheduled) == (0, 1)
    time.sleep(0.6)
    [clone] = app.bus.receive(app.queue, max_messages=5, max_wait=2)
    assert clone.envelope.message_id.endswith(":r1t1")  # throttled: one more throttle, still the first attempt
    assert clone.envelope.application_properties["attempt"] == 1
    from shared.engine.delivery import handle_delivery

    [done] = handle_delivery(app, [clone], app.bus.settler(app.queue))
    assert done.kind is Kind.APPLIED and "N-a1" in memory["erp"].tables["customers"]


def test_retries_exhausted_dead_letters(app, memory):
    memory["erp"].fail_next.append(TransientError("503 Service Unavailable"))
    [o] = deliver(app, change("a1", 1, attempt=3, accountnumber="N", name="x"))
    assert o.kind is Kind.DEAD_LETTER and o.reason == Reason.RETRIES_EXHAUSTED
    assert "TransientError: 503 Service Unavailable (after 3 attempts)" in o.description


def test_one_bad_record_from_the_target_does_not_fail_neighbours(app, memory):
    memory["erp"].fail_keys["N-b"] = PermanentError(Reason.TARGET_REJECTED, "customers key N-b: rejected")
    outcomes = deliver(app, account("a", 1), account("b", 1), account("c", 1))
    assert kinds(outcomes) == [("applied", "upsert"), ("applied", "upsert"), ("dead_letter", "TargetRejected")]


def test_missing_parent_waits_then_dead_letters_naming_it(app, memory):
    [o] = deliver(app, change("c1", 1, flow="contacts", contactid="c1", lastname="L", parent="a9"))
    assert o.kind is Kind.RETRY and o.reason == Reason.MISSING_REFERENCE
    [o2] = deliver(app, change("c1", 1, flow="contacts", attempt=2, contactid="c1", lastname="L", parent="a9"))
    assert o2.kind is Kind.DEAD_LETTER and o2.reason == Reason.MISSING_REFERENCE
    assert "parent 'a9' has not been synced by flow accounts yet" in o2.description


def test_parent_synced_first_resolves_the_lookup(app, memory):
    deliver(app, account("a9", 1))
    [o] = deliver(app, change("c1", 1, flow="contacts", contactid="c1", lastname="L", parent="a9"))
    assert o.kind is Kind.APPLIED
    assert memory["erp"].tables["contacts"]["c1"]["customer_no"] == "N-a9"


def test_auth_failure_pauses_the_flow_and_keeps_the_message(app, memory):
    memory["erp"].fail_next.append(AuthError("401 Unauthorized"))
    [o] = deliver(app, account("a1", 1))
    assert o.kind is Kind.DEFERRED
    cursor = app.state.get_cursor("accounts")
    assert cursor.paused and "401" in cursor.paused_reason
    assert app.bus.counts(app.queue).scheduled == 1 and app.bus.counts(app.queue).dead_letter == 0
    [later] = deliver(app, account("a2", 1))
    assert later.kind is Kind.DEFERRED and later.reason == "flow_paused"


def test_delete_policies(app, memory):
    deliver(app, account("a1", 1), change("c1", 1, flow="contacts", contactid="c1", lastname="L"))
    [deact] = deliver(app, change("a1", 2, op="delete"))
    assert deact.kind is Kind.APPLIED and memory["erp"].tables["customers"]["N-a1"]["status"] == "inactive"
    [gone] = deliver(app, change("c1", 2, flow="contacts", op="delete"))
    assert gone.kind is Kind.APPLIED and "c1" not in memory["erp"].tables["contacts"]
    assert app.state.lookup_keys("contacts", "crm", ["c1"]) == {}
    [never] = deliver(app, change("zz", 1, flow="contacts", op="delete"))
    assert (never.kind, never.reason) == (Kind.SKIPPED, "never_synced")


def test_a_change_to_unmanaged_fields_only_is_skipped_as_unchanged(app, memory):
    deliver(app, account("a1", 1, name="Acme", creditlimit="10"))
    [o] = deliver(app, account("a1", 2, name="Acme", creditlimit="10.00", telephone="555"))
    assert (o.kind, o.reason) == (Kind.SKIPPED, "unchanged")


def test_flows_without_their_own_max_attempts_use_the_app_setting(app, memory):
    assert app.config.flows["contacts"].max_attempts is None  # the fixture sets one on accounts only
    app.max_attempts = 2
    memory["erp"].fail_next.append(TransientError("503"))
    [o] = deliver(app, change("c1", 1, flow="contacts", attempt=2, contactid="c1", lastname="L"))
    assert (o.kind, o.reason) == (Kind.DEAD_LETTER, Reason.RETRIES_EXHAUSTED)


def test_a_change_delivered_with_its_own_retry_is_not_lost_when_it_fails_again(app, memory):
    """A crash between sending a retry clone and completing its original leaves both on the bus. Delivered in
    one batch, the original went on and its clone was completed as superseded; the original failed again, and
    its new clone took the message id of the one just completed, which duplicate detection dropped: nothing
    was left on the bus to apply the change, and nothing said so."""
    from shared.engine.delivery import handle_delivery
    from shared.messages import to_envelope

    original = account("a1", 1)
    app.bus.send(app.queue, [to_envelope(original), to_envelope(original.retry_clone())])
    memory["erp"].fail_next.append(TransientError("503 Service Unavailable"))
    received = app.bus.receive(app.queue, max_messages=2, max_wait=1)
    outcomes = handle_delivery(app, received, app.bus.settler(app.queue))
    assert kinds(outcomes) == [("retry", "transient"), ("skipped", "superseded")]
    assert app.bus.counts(app.queue).scheduled == 1
    time.sleep(0.1)
    [again] = app.bus.receive(app.queue, max_messages=5, max_wait=2)
    [done] = handle_delivery(app, [again], app.bus.settler(app.queue))
    assert done.kind is Kind.APPLIED and "N-a1" in memory["erp"].tables["customers"]
