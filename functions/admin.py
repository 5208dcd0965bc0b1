"""Admin HTTP functions (function-key auth): flow status, pause/resume, replay, dead-letter list and purge.

Each handler parses the request, calls one core function and answers JSON; errors are JSON too:
400 for a bad request, 404 for an unknown flow, 409 when a flow's cursor kept changing, 500 otherwise.

    GET  /api/flows                              status of every flow (collect_status)
    POST /api/flows/{flow}/pause                 body {"reason": "..."}
    POST /api/flows/{flow}/resume
    POST /api/replay                             body {"flow"?, "reason"?, "key"?, "dry_run"?}
    GET  /api/dead-letters?flow=&reason=&key=&limit=
    POST /api/dead-letters/purge                 body {"confirm": "<queue name>", "flow"?, "reason"?, "key"?}

Call them with the function key (``x-functions-key`` header or ``?code=``). Replay and purge work through the
queue in batches within the request: an HTTP request is cut off after about 230 seconds on Azure, so a very
large dead-letter queue is better handled with the CLI, which calls the same core functions.
"""

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions import sync_app
from shared.app import SyncApp
from shared.engine.cursor_lease import pause_flow, resume_flow
from shared.engine.dead_letters import DeadLetterFilter, list_dead_letters, purge_dead_letters
from shared.engine.replay import ReplayFilter, ReplayResult, replay_dead_letters
from shared.engine.status import collect_status
from shared.errors import ConcurrencyError

bp = func.Blueprint()
log = logging.getLogger("dualsync.admin")

AUTH = func.AuthLevel.FUNCTION
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class RawJson(str):
    """A body that is already JSON text (pydantic's model_dump_json)."""


@bp.function_name("flows")
@bp.route(route="flows", methods=[func.HttpMethod.GET], auth_level=AUTH)
def flows(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(lambda app: RawJson(collect_status(app).model_dump_json()))


@bp.function_name("pause_flow")
@bp.route(route="flows/{flow}/pause", methods=[func.HttpMethod.POST], auth_level=AUTH)
def pause(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        flow = _known_flow(app, req.route_params.get("flow"))
        reason = _text(_body(req), "reason") or "paused by an operator"
        cursor = pause_flow(app.state, flow, reason)
        return {"flow": flow, "paused": cursor.paused, "paused_reason": cursor.paused_reason}

    return _respond(action)


@bp.function_name("resume_flow")
@bp.route(route="flows/{flow}/resume", methods=[func.HttpMethod.POST], auth_level=AUTH)
def resume(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        flow = _known_flow(app, req.route_params.get("flow"))
        cursor = resume_flow(app.state, flow)
        return {"flow": flow, "paused": cursor.paused, "paused_reason": cursor.paused_reason}

    return _respond(action)


@bp.function_name("replay")
@bp.route(route="replay", methods=[func.HttpMethod.POST], auth_level=AUTH)
def replay(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        body = _body(req)
        which = ReplayFilter(flow=_known_flow(app, _text(body, "flow")), reason=_text(body, "reason"),
                             key=_text(body, "key"))
        return replay_json(replay_dead_letters(app, which, dry_run=_flag(body, "dry_run")))

    return _respond(action)


@bp.function_name("dead_letters")
@bp.route(route="dead-letters", methods=[func.HttpMethod.GET], auth_level=AUTH)
def dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        which = _dead_letter_filter(app, dict(req.params))
        limit = _limit(req.params.get("limit"))
        found = list_dead_letters(app, which, limit=limit + 1)
        return {"queue": app.queue, "count": min(len(found), limit), "truncated": len(found) > limit,
                "dead_letters": [letter.to_dict() for letter in found[:limit]]}

    return _respond(action)


@bp.function_name("purge_dead_letters")
@bp.route(route="dead-letters/purge", methods=[func.HttpMethod.POST], auth_level=AUTH)
def purge(req: func.HttpRequest) -> func.HttpResponse:
    def action(app: SyncApp) -> dict[str, Any]:
        body = _body(req)
        if _text(body, "confirm") != app.queue:
            raise HttpError(
                400,
                "purging deletes dead-lettered messages for good; to confirm, send the queue name as "
                f'{{"confirm": "{app.queue}"}} (optionally with "flow", "reason" and "key" to purge only those)',
            )
        result = purge_dead_letters(app, _dead_letter_filter(app, body))
        return {"queue": app.queue, "purged": result.purged, "left": result.left}

    return _respond(action)


# -- helpers ----------------------------------------------------------------------------------------------------


def replay_json(result: ReplayResult) -> dict[str, Any]:
    return {"dry_run": result.dry_run, "matched": result.matched, "replayed": result.replayed,
            "skipped": dict(result.skipped), "left": result.left, "keys": list(result.keys)}


def _respond(action: Callable[[SyncApp], Any]) -> func.HttpResponse:
    try:
        result = action(sync_app())
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
