"""Saving what an apply batch wrote: key links and record states, batched, yet failing one record at a time.

The target is written before the state. A batched state write that fails (a row the store refuses, a lost
connection) must not fail every message of the batch on every redelivery: the batch is written again one
record at a time, so only the records whose state cannot be written fail, each with its own error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.errors import PermanentError, Reason, SyncError, TransientError
from shared.state.store import KeyLink, RecordState, StateStore


@dataclass
class StateWrite:
    link: KeyLink
    unlink: bool  # a delete: the link goes instead of being written
    record: RecordState
    where: str  # "flow F record K", for the error an operator reads


@dataclass
class Saved:
    failed: dict[int, SyncError] = field(default_factory=dict)  # index -> why its state could not be written
    lost: set[int] = field(default_factory=set)  # indexes whose guarded write found the state changed since read
    # indexes whose target key's claim ran out and was taken by another record while they wrote: nothing of
    # them is recorded, and their write may have overwritten that record's row
    unclaimed: set[int] = field(default_factory=set)


def save_states(state: StateStore, pair: str, writes: Sequence[StateWrite]) -> Saved:
    """Write every link and record state, each state guarded by the etag it was read (or claimed) with."""
    try:
        return _save(state, pair, writes)
    except Exception:  # noqa: BLE001 - which record failed is found below, one at a time
        pass
    saved = Saved()
    for index, write in enumerate(writes):
        try:
            one = _save(state, pair, [write])
        except Exception as exc:  # noqa: BLE001 - classified for this record's message alone
            saved.failed[index] = _classified(write, exc)
            continue
        if one.lost:
            saved.lost.add(index)
        if one.unclaimed:
            saved.unclaimed.add(index)
    return saved


def _save(state: StateStore, pair: str, writes: Sequence[StateWrite]) -> Saved:
    links = [w.link for w in writes if not w.unlink]
    unlinks = [w.link for w in writes if w.unlink]
    if unlinks:  # first: a target key a deleted record held may have been taken by another in this batch
        # ... whose claim on it stays in place until its link replaces it.
        state.unlink_keys(pair, unlinks, keep={(a.system_b, a.key_b) for a in links if a.claim})
    lost_links = {id(a) for a in state.link_keys(pair, links)} if links else set()
    unclaimed = {i for i, w in enumerate(writes) if id(w.link) in lost_links}
    lost = state.save_records(pair, [w.record for i, w in enumerate(writes) if i not in unclaimed])
    return Saved(lost={i for i, w in enumerate(writes) if w.record.record_id in lost and i not in unclaimed},
                 unclaimed=unclaimed)


def _classified(write: StateWrite, exc: Exception) -> SyncError:
    what = f"{write.where}: written to the target, but its sync state could not be saved"
    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, ValueError | TypeError):  # the store refuses this data: trying again cannot help
        return PermanentError(Reason.VALIDATION_FAILED, f"{what}: {exc}")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")
