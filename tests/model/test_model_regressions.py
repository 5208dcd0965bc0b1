"""The failures the model-based checker shrank to, as plain tests on the same world (tests/model/world.py).

Each names the invariant it broke and, where it is one, the item of issue 11. Those still failing on main
are strict xfails (an unexpected pass means the fix landed and the mark must go); the others failed on
main when the checker found them and pass since their fix was merged.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.model.world import TO_ARCHIVE, TO_CRM, TO_ERP, SettleError, World, business

DUE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def world(tmp_path):
    """Values in one form on both sides, so a scenario about something else does not ping-pong (item 4)."""
    w = World(tmp_path, same_forms=True)
    yield w
    w.close()


@pytest.fixture
def forms_world(tmp_path):
    """The CRM hands values back in Dataverse's forms; fields declare their types."""
    w = World(tmp_path, same_forms=False)
    yield w
    w.close()


def account(code: str, name: str = "ann", amount: int = 1000, due: datetime = DUE) -> dict:
    return {"code": code, "name": name, "amount": amount, "due": due}


def both(world: World, key: str) -> tuple[dict | None, dict | None]:
    return business(world.crm_row(key)), business(world.erp_row(key))


def test_a_datetime_and_a_decimal_that_come_back_in_another_form_settle(forms_world):
    """Issue 11 item 4 (settles): the CRM hands back `2024-05-01T10:00:00Z` and 10.5, the ERP
    `2024-05-01T10:00:00` and '10.50'; with `type: datetime` / `type: decimal` declared, the pair still wrote
    on every pass, forever."""
    world = forms_world
    world.user_write("crm", "K1", account("C1", amount=1050))
    try:
        world.quiesce()
    except SettleError:
        pytest.fail("settles: the pair kept writing the same values back and forth (ping-pong)")
    assert world.engine_noop_writes() == []
    assert both(world, "K1")[0] == both(world, "K1")[1] == account("C1", amount=1050)


def test_two_accounts_with_one_code_never_share_an_archive_row(world):
    """Issue 11 item 3 (one_source_per_row): K0 and K3 both carry code C0, the archive's key; both were
    written to row C0 and linked to it, so deleting one would delete the other's row."""
    world.user_write("crm", "K0", account("C0", name="ann"))
    world.user_write("crm", "K3", account("C0", name="bob"))
    world.pull(TO_ARCHIVE)
    world.drain()
    links = world.app.state.lookup_keys(TO_ARCHIVE, "crm", ["K0", "K3"])
    assert len(links) == 1, f"archive row C0 is linked to {sorted(links)}"
    [letter] = world.bus.peek_dead_letters(world.app.queue)
    assert "K0" in letter.dead_letter_description and "K3" in letter.dead_letter_description


def test_a_record_created_on_both_sides_in_one_poll_ends_as_the_masters(world):
    """Not in issue 11's list (create_conflict): K1 is created in the CRM (the master) and in the ERP before
    either is synced. With the ERP's change applied first, it overwrote the CRM's new record (no baseline,
    so no conflict was seen), and the CRM's own change then looked like the echo of that write: the
    master's values were lost."""
    world.user_write("crm", "K1", account("C1", name="ann"))
    world.user_write("erp", "K1", account("C1", name="new"))
    world.pull(TO_CRM)
    world.pull(TO_ERP)
    world.drain()
    world.quiesce()
    assert both(world, "K1") == (account("C1", name="ann"), account("C1", name="ann"))


def synced(world: World, key: str, **values) -> None:
    world.user_write("crm", key, account("C1", **values))
    world.quiesce()


def test_a_record_deleted_and_restored_with_the_same_values_is_written_again(world):
    """Issue 11 item 2 (policy_answer): K1 synced, deleted in the CRM (so in the ERP and the archive), then
    restored with the same key and values: skipped as an echo (pair) and as unchanged (one-way flow), so
    the ERP never got it back."""
    synced(world, "K1")
    world.user_delete("crm", "K1")
    world.quiesce()
    assert both(world, "K1") == (None, None)
    world.user_write("crm", "K1", account("C1"))
    world.quiesce()
    assert both(world, "K1") == (account("C1"), account("C1"))
    assert business(world.erp_row("C1", table="archive")) == account("C1")


def test_a_master_delete_racing_an_update_on_the_other_side_deletes_both(world):
    """Issue 11 item 2 (delete_conflict): the CRM (master) deletes K1 while the ERP updates it. With the
    ERP's update applied first it re-created the CRM's record, the CRM's delete then deleted the ERP's row,
    and the two sides stayed different for good."""
    synced(world, "K1")
    world.user_delete("crm", "K1")
    world.user_write("erp", "K1", {"name": "bob"})
    for flow in (TO_CRM, TO_ERP):
        world.pull(flow)
        world.reconcile(flow)
    world.drain()
    world.quiesce()
    assert both(world, "K1") == (None, None)


def test_a_master_update_racing_a_delete_on_the_other_side_keeps_the_record(world):
    """Issue 11 item 2, the other way round (delete_conflict): the ERP deletes K1 while the CRM (master)
    updates it; the ERP's delete was applied first and deleted the master's updated record: the master's
    change was lost."""
    synced(world, "K1")
    world.user_delete("erp", "K1")
    world.user_write("crm", "K1", {"name": "bob"})
    for flow in (TO_CRM, TO_ERP):
        world.pull(flow)
        world.reconcile(flow)
    world.drain()
    world.quiesce()
    assert both(world, "K1") == (account("C1", name="bob"), account("C1", name="bob"))


def test_two_workers_on_two_versions_of_one_record_end_on_the_newest(world):
    """Issue 11 item 1 (one_way_answer): v1 and v2 of K1 in flight on the one-way flow; worker A (v1)
    reads, decides, and is held just before its write while worker B applies v2; A then wrote v1 over v2,
    and its record state (version v1) over B's, so the archive kept the older version for good."""
    synced(world, "K1")
    world.user_write("crm", "K1", {"name": "bob"})
    world.pull(TO_ARCHIVE)
    world.user_write("crm", "K1", {"name": "cy"})
    world.pull(TO_ARCHIVE)
    world.two_workers(world.receive(1), world.receive(1), "target:before_write")
    world.quiesce()
    assert business(world.erp_row("C1", table="archive")) == account("C1", name="cy")


def test_an_erp_edit_made_while_a_change_is_being_applied_is_kept(world):
    """Issue 11 item 9 (policy_answer): the CRM renames K1; the worker applying it has read the ERP's row
    when an ERP user changes the amount; the worker then wrote every mapped field, the old amount included,
    and the user's edit was lost on both sides."""
    synced(world, "K1")
    world.user_write("crm", "K1", {"name": "bob"})
    world.pull(TO_ERP)
    held = world.receive_for(TO_ERP, "K1")
    world.interleave(held, "target:before_write", lambda: world.user_write("erp", "K1", {"amount": 99999}))
    world.quiesce()
    assert both(world, "K1") == (account("C1", name="bob", amount=99999), account("C1", name="bob", amount=99999))


def test_a_delete_is_not_superseded_by_an_older_change_of_the_deleted_record(world):
    """Not in issue 11's list (sides_agree, nothing_resurrected): K0 synced (v1), saved unchanged in the CRM
    (v2, pulled), then deleted. The next poll infers the delete with version 'v1~deleted' (the last applied
    version plus a suffix), which sorts below v2: in one batch the delete was dropped as superseded by v2,
    and v2 itself was skipped (source gone, unchanged). The ERP row and the archive row stayed until a later
    reconciliation re-sent the delete after the duplicate-detection window."""
    world.user_write("crm", "K0", account("C0"))
    world.quiesce()
    world.user_write("crm", "K0", {"name": "ann"})
    world.pull(TO_ERP)
    world.pull(TO_ARCHIVE)
    world.user_delete("crm", "K0")
    for flow in (TO_ERP, TO_ARCHIVE):
        world.reconcile(flow)
    world.drain()
    assert both(world, "K0") == (None, None)
    assert world.erp_rows("archive") == {}


def test_a_record_recreated_after_an_inferred_delete_is_synced(world):
    """Not in issue 11's list (sides_agree): K0 created in the ERP and synced to the CRM, so no CRM version
    was ever applied. Deleted in the CRM, a poll infers the delete with version '~deleted' (no last version,
    plus the suffix), which sorts above every real version; the CRM user re-creates K0 with other values,
    and that change was dropped as superseded by the delete (itself skipped: the source has the record
    again). The two sides stayed different for good."""
    world.user_write("erp", "K0", account("C0"))
    world.quiesce()
    world.user_delete("crm", "K0")
    world.reconcile(TO_ERP)
    world.user_write("crm", "K0", account("C0", name="new", amount=0))
    world.quiesce()
    assert both(world, "K0") == (account("C0", name="new", amount=0), account("C0", name="new", amount=0))


def test_an_older_delete_delivered_after_a_newer_restore_does_not_win(world):
    """Issue 11 item 1 (one_way_answer): K0 deleted in the CRM (a poll infers the delete, v1~deleted), then
    restored with its values (v2). Delivered newest first, v2 is skipped as unchanged, which records no
    version, so the older delete still applies after it: the archive lost K0 for good."""
    world.user_write("crm", "K0", account("C0"))
    world.quiesce()
    world.user_delete("crm", "K0")
    world.reconcile(TO_ARCHIVE)
    world.user_write("crm", "K0", account("C0"))
    world.pull(TO_ARCHIVE)
    for message in reversed(world.receive(10)):
        world.deliver([message])
    world.quiesce()
    assert business(world.erp_row("C0", table="archive")) == account("C0")


def test_a_target_key_freed_by_a_delete_goes_to_the_record_that_holds_it_now(world):
    """Not in issue 11's list (key_reuse, found after item 3's fix): K0 (code C0) is created and polled, then
    deleted, and K3 is created with code C0. K0's stale change (the one-way flow does not re-read its source)
    claimed archive row C0 in the same batch, so K3 was dead-lettered as DuplicateTargetKey; K0's delete then
    removed the row, and K3, the only record with code C0, never got it."""
    world.user_write("crm", "K0", account("C0"))
    world.pull(TO_ARCHIVE)
    world.user_delete("crm", "K0")
    world.user_write("crm", "K3", account("C0", name="bob"))
    world.quiesce()
    assert world.bus.peek_dead_letters(world.app.queue) == []
    assert business(world.erp_row("C0", table="archive")) == account("C0", name="bob")


def replay_steps(*steps: tuple[str, dict]) -> None:
    """Run a failing case as Hypothesis printed it: the state machine's rules in order, then its teardown."""
    from tests.model.test_model_sync import SyncModel

    state = SyncModel()
    try:
        for rule, arguments in steps:
            getattr(state, rule)(**arguments)
    finally:
        state.teardown()


def test_a_record_deleted_on_the_other_side_while_its_code_is_contended_settles():
    """Found by `make soak` after the key-reuse fix (settles): K3 synced with code C0, K0 created with C0 too,
    K3 deleted in the ERP. K0 waited for K3's archive row to be freed by a delete that never came, so the
    queue never drained. Now K0 sends K3's delete itself and waits for it, a bounded number of attempts."""
    replay_steps(("seed", {"seeded": [("crm", "K3")]}), ("write", {"key": "K0", "side": "crm", "values": {}}),
                 ("delete", {"key": "K3", "side": "erp"}))


def test_a_key_freed_by_a_delete_in_the_same_batch_goes_to_its_new_owner():
    """Found by `make soak` (key_reuse): K3 synced with code C0, deleted in the CRM, and K0 created with C0
    before the next poll. K3's delete and K0's create came in one batch: K0 was dead-lettered because K3 still
    held C0, although that very batch freed it. Now the delete goes first and K0 takes the row."""
    replay_steps(("seed", {"seeded": [("crm", "K3")]}), ("delete", {"key": "K3", "side": "crm"}),
                 ("write", {"key": "K0", "side": "crm", "values": {}}), ("users_stop", {}), ("poll", {}),
                 ("settle_and_check", {}))


def test_a_record_deleted_by_the_master_then_created_again_on_the_other_side_reaches_the_archive():
    """Found by `make soak` (one_way_answer): K0 synced, deleted in the CRM, settled; then the ERP creates K0
    again, which the pair writes back to the CRM. The delete had kept K0's state (versions, tombstone) under
    the CRM's key; the ERP's change, named by the ERP's key until linked, took that state for a concurrent
    writer's: its write was reported as a lost race and then skipped (target_has_it), so the pass applied
    nothing and the archive never got row C0. Now the first sync takes the stored state over."""
    replay_steps(("seed", {"seeded": [("crm", "K0")]}), ("delete", {"key": "K0", "side": "crm"}), ("users_stop", {}),
                 ("poll", {}), ("settle_and_check", {}), ("write", {"key": "K0", "side": "erp", "values": {}}))


def test_a_change_delivered_with_its_own_retry_clone_is_not_lost_when_it_fails_again():
    """Found by `make soak` (one_way_answer; the same on the pair as sides_agree): K0's change fails with a 503
    (a retry clone is sent), and the worker dies before completing it. Redelivered together, the original
    went on and the clone was completed as superseded; the original failed again, and its clone took the
    message id of the one just completed, which duplicate detection dropped: the archive never got K0."""
    replay_steps(("seed", {"seeded": []}), ("write", {"key": "K0", "side": "crm", "values": {}}), ("users_stop", {}),
                 ("pull", {"flow": "accounts-to-archive"}),
                 ("crash_apply", {"n": 1, "skip": 0, "step": "bus:complete", "transient": True}),
                 ("throttled", {"n": 2, "times": 1}))


def test_a_key_freed_by_a_delete_in_a_later_batch_goes_to_its_new_owner():
    """Found by `make soak` (key_reuse): K3 synced with code C0, deleted in the CRM, and K0 created with C0
    before the next poll. A worker took K0's archive change in a batch without K3's delete: K3, gone from
    its source, still held C0, so K0 was dead-lettered ("replay this once its delete has been applied"); the
    delete freed the row in the next batch, and nothing gave it to K0. Now K0 sends K3's delete itself (one
    already on the bus drops it) and waits for it."""
    replay_steps(("seed", {"seeded": [("crm", "K3")]}), ("delete", {"key": "K3", "side": "crm"}),
                 ("write", {"key": "K0", "side": "crm", "values": {}}), ("poll", {}), ("users_stop", {}),
                 ("deliver", {"n": 3, "order": "fifo"}), ("settle_and_check", {}))


def test_two_workers_never_link_one_archive_row_to_two_records():
    """Found by `make soak` (key_reuse): K0 and K3 both carry code C0. Worker A holds a batch with K0's
    archive change just before its write while worker B applies K3's; both wrote row C0 and both were linked
    to it."""
    replay_steps(("seed", {"seeded": []}), ("poll", {}), ("poll", {}), ("poll", {}),
                 ("write", {"key": "K0", "side": "crm", "values": {}}), ("pull", {"flow": "accounts-to-archive"}),
                 ("write", {"key": "K0", "side": "crm", "values": {}}),
                 ("write", {"key": "K3", "side": "crm", "values": {}}), ("poll", {}), ("users_stop", {}),
                 ("two_workers", {"m": 1, "n": 4, "same_record": False, "step": "target:before_write"}),
                 ("settle_and_check", {}))


def test_a_record_restored_after_a_delete_interrupted_at_its_key_links_is_written_again():
    """Found by `make soak` after the claim fix (sides_agree, one_way_answer): K0 deleted in the CRM, K1 created;
    the worker applying them dies while it writes key links (`state:link_keys`). After that settles, K0 is
    restored in the CRM and pulled: the ERP and the archive never got it back. The dead worker had deleted
    the row and unlinked it but not saved the record's state, and the redelivered delete was skipped as never
    synced, so the state kept the old values and the restore was skipped as unchanged. Now the redelivered
    delete saves what was left unsaved."""
    replay_steps(("seed", {"seeded": [("crm", "K0")]}), ("write", {"key": "K1", "side": "crm", "values": {}}),
                 ("delete", {"key": "K0", "side": "crm"}), ("poll", {}), ("users_stop", {}),
                 ("crash_apply", {"n": 2, "skip": 0, "step": "state:link_keys", "transient": False}),
                 ("settle_and_check", {}), ("restore", {"key": "K0", "side": "crm"}), ("users_stop", {}),
                 ("poll", {}), ("settle_and_check", {}))
