"""Reading helpers shared by the connector contract suite and the Dataverse connector tests."""

from __future__ import annotations

import json


def read_all(connector, source, position, page_size):  # noqa: ANN001, ANN201
    pages = list(connector.read_changes(source, position, page_size))
    for page in pages:  # positions are stored as JSON: they must survive the round trip
        assert json.loads(json.dumps(page.position)) == page.position
    return pages


def keys_of(pages) -> list[str]:  # noqa: ANN001
    return [r.key for page in pages for r in page.records]
