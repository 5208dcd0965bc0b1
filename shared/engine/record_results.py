"""Saving what an apply batch wrote: key links and record states, batched, yet failing one record at a time.

The target is written before the state. A batched state write that fails (a row the store refuses, a lost
connection) must not fail every message of the batch on every redelivery: the batch is written again one
record at a time, so only the records whose state cannot be written fail, each with its own error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import PermanentError, Reason, SyncError, TransientError
from shared.state.store import KeyLink, RecordState, StateStore


@dataclass
class StateWrite:
    link: KeyLink
    unlink: bool  # a delete: the link goes instead of being written
    record: RecordState
    where: str  # "flow F record K", for the error an operator reads


def save_states(state: StateStore, pair: str, writes: Sequence[StateWrite]) -> dict[int, SyncError]:
    """Write every link and record state; returns index -> error for the writes that failed."""
    try:
        _save(state, pair, writes)
        return {}
    except Exception:  # noqa: BLE001 - which record failed is found below, one at a time
        pass
    failed: dict[int, SyncError] = {}
    for index, write in enumerate(writes):
        try:
            _save(state, pair, [write])
        except Exception as exc:  # noqa: BLE001 - classified for this record's message alone
            failed[index] = _classified(write, exc)
    return failed


def _save(state: StateStore, pair: str, writes: Sequence[StateWrite]) -> None:
    links = [w.link for w in writes if not w.unlink]
    unlinks = [w.link for w in writes if w.unlink]
    if links:
        state.link_keys(pair, links)
    if unlinks:
        state.unlink_keys(pair, unlinks)
    state.put_records(pair, [w.record for w in writes])


def _classified(write: StateWrite, exc: Exception) -> SyncError:
    what = f"{write.where}: written to the target, but its sync state could not be saved"
    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, ValueError | TypeError):  # the store refuses this data: trying again cannot help
        return PermanentError(Reason.VALIDATION_FAILED, f"{what}: {exc}")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")
