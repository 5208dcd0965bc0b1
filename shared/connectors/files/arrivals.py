"""Which flows read a file that just arrived: a Blob Storage event names a container and a blob, and the flows
whose source is a files system with that inbox container and that entity (the blob's first path segment) are
the ones to pull now instead of at their next scheduled pull."""

from __future__ import annotations

import re

from shared.config import Config
from shared.connectors.files_settings import FilesSystem

_BLOB_SUBJECT = re.compile(r"^/blobServices/default/containers/(?P<container>[^/]+)/blobs/(?P<name>.+)$")


def blob_of_subject(subject: str) -> tuple[str, str] | None:
    """(container, blob name) of an Event Grid Blob Storage event's subject, or None for any other subject."""
    match = _BLOB_SUBJECT.match(subject)
    return (match["container"], match["name"]) if match else None


def flows_reading(config: Config, container: str, name: str) -> list[str]:
    entity, _, file = name.partition("/")
    if not file or not file.lower().endswith(".csv"):
        return []
    return [flow_name for flow_name, flow in config.flows.items()
            if flow.enabled and flow.source.entity == entity
            and isinstance(system := config.systems.get(flow.source.system), FilesSystem)
            and (system.blob_endpoint or system.blob_connection) and system.inbox == container]
