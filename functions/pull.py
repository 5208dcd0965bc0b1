"""Timer trigger: pull every flow whose own schedule came round."""

from __future__ import annotations

import logging

import azure.functions as func

from functions import sync_app
from shared.engine.schedule import pull_due_flows

bp = func.Blueprint()
log = logging.getLogger("dualsync.pull")


@bp.function_name("pull")
@bp.timer_trigger(arg_name="timer", schedule="%PULL_SCHEDULE%", run_on_startup=False, use_monitor=True)
def pull(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.info("pull timer is past due; pulling now")
    for result in pull_due_flows(sync_app()):
        log.info("pulled flow=%s status=%s pulled=%d run_id=%s", result.flow, result.status, result.pulled,
                 result.run_id)
