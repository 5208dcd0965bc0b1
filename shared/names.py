"""The nearest name: what a misspelt key, column or entity most likely meant, for errors that teach."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(name: str, existing: Iterable[str]) -> str | None:
    """The existing name closest to `name`: the same letters in another case first, then difflib's best
    (similarity 0.72 or more: "nmae" finds "name", "sync_xact" does not find "sync_status"), else None."""
    names = list(existing)
    same = [n for n in names if n.casefold() == name.casefold()]
    if same:
        return same[0]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.72)
    return close[0] if close else None
