"""Formatted keys in ascending Python string order with bounded memory, for `Connector.iter_keys`.

`sorted_keys` is an external merge sort: keys are collected in runs of at most `run_size`, each run is
sorted and spilled to a temporary file (one JSON string per line, so keys holding newlines survive), and
the runs are merged with `heapq.merge`. Memory is one run plus one line per spilled run, whatever the
number of keys; a key set that fits in one run never touches the disk. Duplicates are dropped.

`ascending` guards a stream that should already be sorted (a database's ORDER BY under a binary
collation): it drops repeats and raises ConfigError the moment a key sorts before its predecessor, because
a merge-join fed out-of-order keys would report present records as deleted.
"""

from __future__ import annotations

import heapq
import json
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

from shared.errors import ConfigError

RUN_SIZE = 100_000


def _spill(run: list[str]) -> IO[str]:
    run.sort()
    handle = tempfile.TemporaryFile(mode="w+", encoding="utf-8", newline="\n")
    handle.writelines(json.dumps(key, ensure_ascii=False) + "\n" for key in run)
    handle.seek(0)
    return handle


def _read(handle: IO[str]) -> Iterator[str]:
    for line in handle:
        yield json.loads(line)


def sorted_keys(keys: Iterable[str], run_size: int = RUN_SIZE) -> Iterator[str]:
    """`keys` in ascending order without duplicates, holding at most `run_size` of them at a time."""
    if run_size < 1:
        raise ValueError("run_size must be at least 1")
    runs: list[IO[str]] = []
    run: list[str] = []
    try:
        for key in keys:
            run.append(key)
            if len(run) >= run_size:
                runs.append(_spill(run))
                run = []
        run.sort()
        merged = heapq.merge(*(_read(h) for h in runs), iter(run)) if runs else iter(run)
        previous: str | None = None
        for key in merged:
            if key != previous:
                yield key
                previous = key
    finally:
        for handle in runs:
            handle.close()


def ascending(keys: Iterable[str], what: str) -> Iterator[str]:
    """Pass through a stream that must be ascending; repeats are dropped, a step backwards raises."""
    previous: str | None = None
    for key in keys:
        if previous is not None and key <= previous:
            if key == previous:
                continue
            raise ConfigError([
                f"{what}: keys are not in ascending code point order ({previous!r} came before {key!r}); "
                "the database's ordering differs from Python's (encoding or collation), so a key-set "
                "comparison would be wrong"
            ])
        previous = key
        yield key
