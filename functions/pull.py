"""Timer trigger: pull every flow whose own schedule came round.

Every due flow is pulled, whatever happens to the others: a flow's failure is recorded on the flow itself
(`dualsync status`, `GET /api/flows`) and logged as an error. Only once every flow had its turn does the
invocation raise, so the Functions host marks it Failed: Application Insights counts it in the function's
failures (where the standard alerts on failed executions look) instead of a green run that hid a broken
flow. Raising costs nothing here: a timer trigger has no retry policy unless one is configured (none is),
the schedule monitor (`use_monitor`) moves on to the next occurrence either way, and every flow already
holds its own state, so the next tick simply tries the failing flow again.

Before a flow's first pull on this host, its part of the flows file is checked against its systems
(`dualsync check`'s preflight: env: references, connections, entities, columns). A flow that fails the check
is not pulled; the findings are its last_error (status, `GET /api/flows`) and fail the invocation like any
pull failure, and every tick checks it again until it passes. So a misspelt column stops one flow visibly
instead of writing NULLs or dead-lettering every record. A system that does not answer is left to the pull,
which fails (or pauses the flow on 401/403) as before.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions import sync_app
from shared.engine.schedule import pull_due_flows

bp = func.Blueprint()
log = logging.getLogger("dualsync.pull")


class PullFailures(Exception):
    """One or more flows failed to pull in this invocation (each is recorded on its flow)."""


@bp.function_name("pull")
@bp.timer_trigger(arg_name="timer", schedule="%PULL_SCHEDULE%", run_on_startup=False, use_monitor=True)
def pull(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.info("pull timer is past due; pulling now")
    failed = []
    for result in pull_due_flows(sync_app(), check=True):
        log.info("pulled flow=%s status=%s pulled=%d deletes=%d run_id=%s", result.flow, result.status,
                 result.pulled, result.deletes_inferred, result.run_id)
        if result.error:  # logged as an error where it happened, with the flow and run id
            failed.append(f"{result.flow}: {result.error}")
    if failed:
        raise PullFailures(f"{len(failed)} flow(s) failed to pull: " + "; ".join(failed))
