"""How a record is named in the record state, the same way for both flows of a pair.

Both flows name a record by its key in the pair's anchor system; before the first sync of a record
created on the other side, its own key stands in until apply has mapped it: apply then takes the anchor
name, and whatever state is stored there (a deleted record's versions and tombstones), before writing.
"""

from __future__ import annotations

from shared.config import Config


def record_id(config: Config, flow_name: str, key: str, links: dict[str, str]) -> str:
    """`links`: this flow's source keys -> target keys, from the key map."""
    source = config.flows[flow_name].source.system
    anchor = config.anchor_of(flow_name)
    if source == anchor:
        return f"{source}|{key}"
    linked = links.get(key)
    return f"{anchor}|{linked}" if linked else f"{source}|{key}"
