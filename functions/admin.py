"""Admin HTTP functions: the admin API (shared/admin_api.py, routes and roles listed there) and the web console,
plus the timer that carries on long jobs.

- `health` (GET /api/health) is the one route a function key opens.
- `admin` (every other /api/... route) lets the host ask for no key: Entra ID app roles guard it, checked from
  App Service authentication's principal (shared/admin_access.py); with that authentication off every route
  answers 503. The console's page and script carry no data and need no role; the page calls the API with the
  browser's App Service session (sign in at /.auth/login/aad), so it can do what the signed-in person's role
  allows and nothing more.
- `jobs` (timer, every minute) carries on replays that outlive their request: the request runs the first slice
  itself (up to FIRST_SLICE seconds, well inside the 230 s Azure allows a request), the timer the rest.
"""

import logging

import azure.functions as func

from functions import sync_app
from shared.admin_access import Principal, principal_of
from shared.admin_api import ApiRequest, ApiResponse, handle
from shared.app import SyncApp
from shared.engine import jobs
from shared.process_identity import current_holder
from shared.settings import setting

bp = func.Blueprint()
log = logging.getLogger("dualsync.admin")

ROLE_ROUTE = func.AuthLevel.ANONYMOUS  # Entra ID (App Service authentication) guards these, not a key
KEY_ROUTE = func.AuthLevel.FUNCTION
FIRST_SLICE = 60.0  # seconds of a replay job run inside the request that starts it
TIMER_BUDGET = 240.0  # seconds of job work per timer tick (the function timeout is 10 minutes)


@bp.function_name("health")
@bp.route(route="health", methods=[func.HttpMethod.GET], auth_level=KEY_ROUTE)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(handle(sync_app, _request(req, "health"), _first_slice))


@bp.function_name("admin")
@bp.route(route="{*path}", methods=[func.HttpMethod.GET, func.HttpMethod.POST], auth_level=ROLE_ROUTE)
def admin(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(handle(sync_app, _request(req, req.route_params.get("path") or ""), _first_slice))


@bp.function_name("jobs")
@bp.timer_trigger(arg_name="timer", schedule="0 * * * * *", run_on_startup=False, use_monitor=False)
def carry_on_jobs(timer: func.TimerRequest) -> None:
    for job_id in jobs.run_due_jobs(sync_app(), current_holder(), TIMER_BUDGET):
        log.info("job %s carried on", job_id)


def _first_slice(app: SyncApp, job: jobs.JobView) -> jobs.JobView:
    return jobs.run_slice(app, job.id, current_holder(), FIRST_SLICE) or jobs.get_job(app, job.id) or job


def _request(req: func.HttpRequest, path: str) -> ApiRequest:
    headers = dict(req.headers)

    def caller() -> Principal:
        return principal_of(headers, (setting("WEBSITE_AUTH_ENABLED") or "").lower() == "true")

    return ApiRequest(method=req.method.upper(), path=path, query=dict(req.params), body=req.get_body() or b"",
                      content_type=req.headers.get("content-type", ""), caller=caller)


def _respond(response: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(response.body, status_code=response.status, headers=response.headers,
                             mimetype=response.content_type.split(";")[0])
