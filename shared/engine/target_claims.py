"""One target row belongs to one source record.

Two source records that map to the same target key (two CRM accounts with one account number, which
Dataverse allows unless an alternate key forbids it) would otherwise share one target row silently: each
write overwrites the other's values, and deleting either deletes the row of both. So before a batch is
written, every change that would create a link claims its target key. The claim fails when the key map
already links that target key to another source key, or when an earlier change of the same batch claimed
it; apply dead-letters the change (DuplicateTargetKey) and never links it, so deleting that source record
later touches nothing.

A record already linked keeps the target key it was linked to (apply pins it), so only changes of records
not linked yet need a claim: one key-map read per batch, for those alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.state.store import StateStore


@dataclass(frozen=True)
class Claim:
    source_key: str
    target_key: str  # formatted, as the key map stores it


@dataclass(frozen=True)
class Rival:
    owner: str  # the source key that holds the target key
    same_batch: bool  # claimed by an earlier change of this batch, not (yet) in the key map


def rivals(state: StateStore, pair: str, target_system: str, claims: Sequence[Claim]) -> dict[str, Rival]:
    """Source key -> who holds its target key already, for every claim that fails; first claim wins."""
    if not claims:
        return {}
    linked = state.lookup_keys(pair, target_system, [c.target_key for c in claims])
    claimed: dict[str, str] = {}
    failed: dict[str, Rival] = {}
    for claim in claims:
        owner = linked.get(claim.target_key)
        if owner is not None and owner != claim.source_key:
            failed[claim.source_key] = Rival(owner, same_batch=False)
            continue
        first = claimed.setdefault(claim.target_key, claim.source_key)
        if first != claim.source_key:
            failed[claim.source_key] = Rival(first, same_batch=True)
    return failed
