"""Admin HTTP functions: health, flow status, pause/resume, replay, dead-letter list and purge.

Each handler checks the caller, parses the request, calls one core function and answers JSON; errors are JSON
too: 400 bad request, 401/403 not signed in / missing app role, 404 unknown flow, 409 a flow's cursor kept
changing or the dead letters changed since the dry run, 503 App Service authentication is off, 500 otherwise.

    GET  /api/health                      function key   flows ok / paused / failing (no details)
    GET  /api/flows                       Reader         status of every flow (collect_status)
    GET  /api/dead-letters?flow=&reason=&key=&limit=     Reader
    POST /api/flows/{flow}/pause          Operator       body {"reason": "..."}
    POST /api/flows/{flow}/resume         Operator
    POST /api/replay                      Operator       body {"flow"?, "reason"?, "key"?, "dry_run"?, "all"?}
    POST /api/dead-letters/purge          Operator       body {"dry_run": true, filter...} -> {"count", "confirm"};
                                                         then {"confirm": "<that code>", same filter...}

Roles are Entra ID app roles checked from App Service authentication's principal (shared/admin_access.py); a
function key opens only /api/health. A replay without a filter must say ``"all": true``. A purge deletes
exactly the dead letters its dry run listed, confirmed by the code the dry run returned. Replay and purge work
through the queue in batches within the request: an HTTP request is cut off after about 230 seconds on Azure,
so a very large dead-letter queue is better handled with the CLI, which calls the same core functions.
"""

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions import sync_app
from shared.admin_access import OPERATOR, READER, AccessDenied, require
from shared.app import SyncApp
from shared.engine.cursor_lease import pause_flow
from shared.engine.dead_letters import DeadLetterFilter, list_dead_letters, plan_purge, purge_dead_letters
from shared.engine.held_changes import resume as resume_flow
from shared.engine.replay import ReplayFilter, ReplayResult, replay_dead_letters
from shared.engine.status import collect_status
from shared.errors import ConcurrencyError
from shared.settings import setting

bp = func.Blueprint()
log = logging.getLogger("dualsync.admin")

# Entra ID (App Service authentication) guards the role routes, so the host asks for no key there; the health
# route is the only one a function key opens.
ROLE_ROUTE = func.AuthLevel.ANONYMOUS
KEY_ROUTE = func.AuthLevel.FUNCTION
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class RawJson(str):
    """A body that is already JSON text (pydantic's model_dump_json)."""


@bp.function_name("health")
@bp.route(route="health", methods=[func.HttpMethod.GET], auth_level=KEY_ROUTE)
def health(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        report = collect_status(app)
        states = {f.flow: "paused" if f.paused else "ok" for f in report.flows}
        return {"status": "ok" if all(v == "ok" for v in states.values()) else "degraded", "flows": states}

    return _respond(action)


@bp.function_name("flows")
@bp.route(route="flows", methods=[func.HttpMethod.GET], auth_level=ROLE_ROUTE)
def flows(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(lambda app: RawJson(collect_status(app).model_dump_json()), req, READER)


@bp.function_name("pause_flow")
@bp.route(route="flows/{flow}/pause", methods=[func.HttpMethod.POST], auth_level=ROLE_ROUTE)
def pause(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        flow = _known_flow(app, req.route_params.get("flow"))
        reason = _text(_body(req), "reason") or "paused by an operator"
        cursor = pause_flow(app.state, flow, reason)
        return {"flow": flow, "paused": cursor.paused, "paused_reason": cursor.paused_reason}

    return _respond(action, req, OPERATOR)


@bp.function_name("resume_flow")
@bp.route(route="flows/{flow}/resume", methods=[func.HttpMethod.POST], auth_level=ROLE_ROUTE)
def resume(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        flow = _known_flow(app, req.route_params.get("flow"))
        cursor, released = resume_flow(app, flow)
        return {"flow": flow, "paused": cursor.paused, "paused_reason": cursor.paused_reason, "released": released}

    return _respond(action, req, OPERATOR)


@bp.function_name("replay")
@bp.route(route="replay", methods=[func.HttpMethod.POST], auth_level=ROLE_ROUTE)
def replay(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        body = _body(req)
        which = ReplayFilter(flow=_known_flow(app, _text(body, "flow")), reason=_text(body, "reason"),
                             key=_text(body, "key"))
        dry_run = _flag(body, "dry_run")
        if not dry_run and which == ReplayFilter() and not _flag(body, "all"):
            raise HttpError(400, 'a replay without "flow", "reason" or "key" replays every dead letter: '
                                 'say so with "all": true')
        return replay_json(replay_dead_letters(app, which, dry_run=dry_run))

    return _respond(action, req, OPERATOR)


@bp.function_name("dead_letters")
@bp.route(route="dead-letters", methods=[func.HttpMethod.GET], auth_level=ROLE_ROUTE)
def dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        which = _dead_letter_filter(app, dict(req.params))
        limit = _limit(req.params.get("limit"))
        found = list_dead_letters(app, which, limit=limit + 1)
        return {"queue": app.queue, "count": min(len(found), limit), "truncated": len(found) > limit,
                "dead_letters": [letter.to_dict() for letter in found[:limit]]}

    return _respond(action, req, READER)


@bp.function_name("purge_dead_letters")
@bp.route(route="dead-letters/purge", methods=[func.HttpMethod.POST], auth_level=ROLE_ROUTE)
def purge(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        body = _body(req)
        plan = plan_purge(app, _dead_letter_filter(app, body))
        if _flag(body, "dry_run"):
            return {"dry_run": True, "count": plan.count, "confirm": plan.confirm}
        confirm = _text(body, "confirm")
        if confirm is None:
            raise HttpError(400, 'purging deletes dead letters for good: first send the same filter with '
                                 '"dry_run": true, then send the "confirm" code it returns')
        if confirm != plan.confirm:
            raise HttpError(409, "the dead letters matching this filter are not the ones the dry run listed "
                                 "(or the code is wrong): run the dry run again")
        result = purge_dead_letters(app, plan.which)
        return {"purged": result.purged, "left": result.left}

    return _respond(action, req, OPERATOR)


# -- helpers ----------------------------------------------------------------------------------------------------


def replay_json(result: ReplayResult) -> dict[str, Any]:
    return {"dry_run": result.dry_run, "matched": result.matched, "replayed": result.replayed,
            "skipped": dict(result.skipped), "left": result.left, "keys": list(result.keys)}


def _respond(action: Callable[[SyncApp], Any], req: func.HttpRequest | None = None,
             role: str | None = None) -> func.HttpResponse:
    try:
        if role is not None:
            assert req is not None
            who = require(req.headers, role, (setting("WEBSITE_AUTH_ENABLED") or "").lower() == "true")
            log.info("admin %s %s by %s", req.method, req.url.split("?")[0], who.name)
        result = action(sync_app())
    except AccessDenied as exc:
        return _json({"error": str(exc)}, exc.status)
    except HttpError as exc:
        return _json(exc.body, exc.status)
    except ConcurrencyError as exc:
        return _json({"error": str(exc)}, 409)
    except Exception as exc:  # noqa: BLE001 - logged with its traceback; the caller gets the type only
        log.exception("admin request failed")
        return _json({"error": f"internal error ({type(exc).__name__}); see the function app's logs"}, 500)
    if isinstance(result, RawJson):
        return func.HttpResponse(str(result), status_code=200, mimetype="application/json")
    return _json(result)


def _json(body: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype="application/json")


def _body(req: func.HttpRequest) -> dict[str, Any]:
    raw = req.get_body()
    if not raw or not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise HttpError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HttpError(400, f"{name!r} must be a string")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise HttpError(400, f"{name!r} must be true or false")
    return value


def _known_flow(app: SyncApp, flow: str | None) -> str | None:
    if flow is not None and flow not in app.config.flows:
        raise HttpError(404, f"unknown flow {flow!r}", flows=sorted(app.config.flows))
    return flow


def _dead_letter_filter(app: SyncApp, values: dict[str, Any]) -> DeadLetterFilter:
    return DeadLetterFilter(flow=_known_flow(app, _text(values, "flow")), reason=_text(values, "reason"),
                            key=_text(values, "key"))


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise HttpError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise HttpError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit
