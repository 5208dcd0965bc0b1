"""Event Grid trigger: a CSV file landed in a files system's inbox container; pull the flows that read it now
rather than at their next scheduled pull (the timer still pulls them on schedule, so a lost event delays a
file, never loses it).

Subscribe the storage account's Event Grid system topic to this function for `Microsoft.Storage.BlobCreated`,
with a subject filter beginning `/blobServices/default/containers/<inbox>/` (docs/deploy.md). As for the
timer, a flow's failure is recorded on the flow, and the invocation fails so that it shows in Application
Insights.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions import sync_app
from shared.connectors.files.arrivals import blob_of_subject, flows_reading
from shared.engine.schedule import pull_flows

bp = func.Blueprint()
log = logging.getLogger("dualsync.files")


class FilePullFailures(Exception):
    """One or more flows reading the arrived file failed to pull (each is recorded on its flow)."""


@bp.function_name("files_arrived")
@bp.event_grid_trigger(arg_name="event")
def files_arrived(event: func.EventGridEvent) -> None:
    blob = blob_of_subject(event.subject) if event.event_type == "Microsoft.Storage.BlobCreated" else None
    if blob is None:
        log.info("files_arrived: ignoring event %s (%s)", event.id, event.event_type)
        return
    app = sync_app()
    results = pull_flows(app, flows_reading(app.config, *blob))
    for result in results:
        log.info("pulled flow=%s status=%s pulled=%d deletes=%d run_id=%s", result.flow, result.status,
                 result.pulled, result.deletes_inferred, result.run_id)
    failed = [f"{r.flow}: {r.error}" for r in results if r.error]
    if failed:
        raise FilePullFailures(f"{len(failed)} flow(s) failed to pull: " + "; ".join(failed))
