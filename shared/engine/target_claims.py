"""One target row belongs to one source record.

Two source records that map to the same target key (two CRM accounts with one account number, which
Dataverse allows unless an alternate key forbids it) would otherwise share one target row silently: each
write overwrites the other's values, and deleting either deletes the row of both. So before a batch is
written, every change that would create a link claims its target key. The claim fails when the key map
already links that target key to another source key, or when an earlier change of the same batch claimed
it; apply dead-letters the change (DuplicateTargetKey) and never links it, so deleting that source record
later touches nothing.

Reading the key map is not enough when appliers run concurrently: two workers applying two records with
one target key would both read it unlinked, both write the row and both link it. So a claim that passes
is written to state before the target is: in the key map row the link will take, guarded by that row's
etag (insert-if-absent for a free key). Of two concurrent claimants one wins that write; the other, and
anyone who reads the claim while it is live, waits (`record_busy`, spending no attempt) and then finds the
link, or the claim given back. The commit writes the link over the claim, guarded by the claim's etag; a
change that ends without a commit gives its claim back. A claim runs out like a record lease does, so a
crashed holder never blocks a key for good; the owner is the source record, so its own redelivered change
takes the claim over at once.

A record already linked keeps the target key it was linked to (apply pins it), so only changes of records
not linked yet need a claim: one key-map read and one guarded write per batch, for those alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.engine.record_lock import LEASE_SECONDS
from shared.state.store import KeyClaim, KeyHolder, StateStore

CLAIM_SECONDS = LEASE_SECONDS  # as long as the record lease taken with it: both cover the target write


@dataclass(frozen=True)
class Claim:
    source_key: str
    target_key: str  # formatted, as the key map stores it


@dataclass(frozen=True)
class Rival:
    owner: str  # the source key that holds the target key
    same_batch: bool  # claimed by an earlier change of this batch, not (yet) in the key map
    busy_until: datetime | None = None  # the owner's live claim, not a link: its change is being applied


@dataclass
class Survey:
    refused: dict[str, Rival]  # source key -> who holds its target key already
    holders: dict[str, KeyHolder] = field(default_factory=dict)  # target key -> its key map row, as read


def rivals(state: StateStore, pair: str, target_system: str, claims: Sequence[Claim], now: datetime) -> Survey:
    """Every claim that fails, and the key map rows the others are to be written over; first claim wins."""
    if not claims:
        return Survey({})
    holders = state.key_holders(pair, target_system, [c.target_key for c in claims])
    claimed: dict[str, str] = {}
    failed: dict[str, Rival] = {}
    for claim in claims:
        holder = holders.get(claim.target_key)
        if holder is not None and holder.owner != claim.source_key:
            if holder.until is None:
                failed[claim.source_key] = Rival(holder.owner, same_batch=False)
                continue
            if holder.until > now:
                failed[claim.source_key] = Rival(holder.owner, same_batch=False, busy_until=holder.until)
                continue
        first = claimed.setdefault(claim.target_key, claim.source_key)
        if first != claim.source_key:
            failed[claim.source_key] = Rival(first, same_batch=True)
    return Survey(failed, holders)


def take(state: StateStore, pair: str, source_system: str, target_system: str, claims: Sequence[Claim],
         holders: dict[str, KeyHolder], now: datetime) -> tuple[dict[str, KeyClaim], set[str]]:
    """Write the claims that passed, each over its row as read. Returns source key -> the claim taken, and
    the source keys whose row changed since it was read (claimed or linked by someone else meanwhile)."""
    until = now + timedelta(seconds=CLAIM_SECONDS)
    taken = {c.source_key: KeyClaim(target_system, c.target_key, source_system, c.source_key, until,
                                    holders[c.target_key].etag if c.target_key in holders else None)
             for c in claims}
    if not taken:
        return {}, set()
    lost_keys = state.claim_keys(pair, list(taken.values()))
    lost = {source_key for source_key, claim in taken.items() if claim.key in lost_keys}
    return {k: c for k, c in taken.items() if k not in lost}, lost


def release(state: StateStore, pair: str, claims: Sequence[KeyClaim]) -> None:
    if claims:
        state.release_keys(pair, claims)
