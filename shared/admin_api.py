"""The admin API, framework-neutral: one request in, one status and JSON body out. The Azure HTTP function
(functions/admin.py) and the local `dualsync ui` server (shared/console_server.py) both call `handle`; each
says who the caller is in its own way (App Service authentication's principal; a per-launch token).

    GET  health                        none       flows ok / paused / failing (no details)
    GET  flows                         Reader     every flow: state, lag, last error (FlowView)
    GET  runs?flow=&limit=&busy=       Reader     run history (RunView), newest first; busy=true: only runs
                                                  that sent something or failed
    GET  dead-letters?flow=&reason=&key=&limit=   Reader
    POST dead-letters/purge            Operator   {"dry_run": true, filter...} -> {"count", "confirm"};
                                                  then {"confirm": "<that code>", same filter...}
    POST replay                        Operator   {"flow"?, "reason"?, "key"?, "dry_run"?, "all"?}: a dry run
                                                  answers at once; a replay is a job: 202 {"job": ...}
    GET  jobs/{id}                     Reader     a job's progress (JobView)
    POST flows/{flow}/pause            Operator   {"reason": "..."}
    POST flows/{flow}/resume           Operator
    GET  conflicts?flow=               Reader     one per record (ConflictView)
    POST conflicts/resolve             Operator   {"flow", "key", "take": "<system>"}
    GET  requests?flow=                Reader     change requests (ChangeRequestView)
    POST requests/approve              Operator   {"flow", "key"}
    POST requests/reject               Operator   {"flow", "key", "reason"}
    GET  console, console.js, console.css  none   the web console (static; every datum it shows comes from
                                                  the routes above)

Errors are JSON: 400 bad request, 401/403 not signed in / missing role, 404 unknown flow or job, 409 a
concurrent change, 415 a POST that is not JSON, 503 authentication is off (Azure), 500 otherwise (its
type only; the details go to the log). A POST must say `Content-Type: application/json`: a form on another
site cannot send that without the browser asking first (CORS), which this API never allows, so a signed-in
browser cannot be made to POST from elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import BaseModel

from shared.admin_access import OPERATOR, READER, AccessDenied, Principal
from shared.app import SyncApp
from shared.engine import held_changes, jobs, views
from shared.engine.cursor_lease import pause_flow
from shared.engine.dead_letters import DeadLetterFilter, plan_purge, purge_dead_letters
from shared.engine.decisions import DecisionError, approve_request, reject_request, resolve_conflict
from shared.engine.replay import ReplayFilter, replay_dead_letters
from shared.engine.status import collect_status
from shared.errors import ConcurrencyError

log = logging.getLogger("dualsync.admin")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
JSON = "application/json"
_STATIC = {"console": ("index.html", "text/html; charset=utf-8"),
           "console.js": ("console.js", "text/javascript; charset=utf-8"),
           "console.css": ("console.css", "text/css; charset=utf-8")}
# The page loads only its own script and style and talks only to this API.
CONSOLE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass
class ApiRequest:
    method: str
    path: str  # after /api/, without the query
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = ""
    # Asked only by routes that need a role: App Service's principal on Azure, the launch token locally.
    caller: Callable[[], Principal] = lambda: Principal("nobody")


@dataclass
class ApiResponse:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


# Starts a job's work after its row is stored: a thread locally, the first slice in the request on Azure.
JobStarter = Callable[[SyncApp, jobs.JobView], jobs.JobView]


def handle(app_of: Callable[[], SyncApp], request: ApiRequest, start_job: JobStarter) -> ApiResponse:
    """`app_of` is called only once the caller is let in (building the app reads settings and connects)."""
    try:
        route, params = _route(request.method, request.path.strip("/"))
        if route.static:
            return _static(route.static)
        who = None
        if route.role is not None:
            who = request.caller()
            if not who.may(route.role):
                raise AccessDenied(403, f"this needs the {route.role} app role")
            log.info("admin %s %s by %s", request.method, request.path, who.name)
        if request.method == "POST" and request.content_type.split(";")[0].strip().lower() != JSON:
            raise HttpError(415, "send the request body as JSON with Content-Type: application/json")
        context = _Context(app_of(), request, params, who, start_job)
        status, result = route.handler(context)
    except AccessDenied as exc:
        return _json({"error": str(exc)}, exc.status)
    except HttpError as exc:
        return _json(exc.body, exc.status)
    except views.UnknownName as exc:
        extra = {"flows": exc.known} if exc.what == "flow" else {"reasons": exc.known}
        return _json({"error": f"unknown {exc.what} {exc.name!r}", **extra}, 404 if exc.what == "flow" else 400)
    except DecisionError as exc:
        return _json({"error": str(exc)}, 404 if str(exc).startswith("no open") else 400)
    except ConcurrencyError as exc:
        return _json({"error": str(exc)}, 409)
    except Exception as exc:  # logged with its traceback; the caller gets the type only
        log.exception("admin request failed")
        return _json({"error": f"internal error ({type(exc).__name__}); see the logs"}, 500)
    return _json(result, status)


# -- routing ----------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    app: SyncApp
    request: ApiRequest
    params: dict[str, str]
    who: Principal | None
    start_job: JobStarter
    _body: dict[str, Any] | None = None

    @property
    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = _parse_body(self.request.body)
        return self._body


Handler = Callable[[_Context], tuple[int, Any]]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    role: str | None
    handler: Handler = lambda c: (200, None)
    static: str | None = None


_ROUTES: list[_Route] = []


def _on(method: str, path: str, role: str | None) -> Callable[[Handler], Handler]:
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(path).replace(r"\{", "{")
                                      .replace(r"\}", "}")) + "$")

    def register(handler: Handler) -> Handler:
        _ROUTES.append(_Route(method, pattern, role, handler))
        return handler

    return register


for _name in _STATIC:
    _ROUTES.append(_Route("GET", re.compile("^" + re.escape(_name) + "$"), None, static=_name))


def _route(method: str, path: str) -> tuple[_Route, dict[str, str]]:
    allowed = []
    for route in _ROUTES:
        found = route.pattern.match(path)
        if found:
            if route.method == method:
                return route, found.groupdict()
            allowed.append(route.method)
    if allowed:
        raise HttpError(405, f"{path} takes {', '.join(sorted(set(allowed)))}")
    raise HttpError(404, f"no route {path!r}")


def _json(body: Any, status: int = 200) -> ApiResponse:
    text = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(_plain(body), default=str)
    return ApiResponse(status, text.encode(), JSON, {"Cache-Control": "no-store"})


def _plain(body: Any) -> Any:
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json")
    if isinstance(body, list):
        return [_plain(item) for item in body]
    if isinstance(body, dict):
        return {k: _plain(v) for k, v in body.items()}
    return body


def _static(name: str) -> ApiResponse:
    filename, content_type = _STATIC[name]
    data = resources.files("shared.console").joinpath(filename).read_bytes()
    return ApiResponse(200, data, content_type, {"Content-Security-Policy": CONSOLE_POLICY,
                                                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


# -- routes -----------------------------------------------------------------------------------------------------


@_on("GET", "health", None)
def _health(c: _Context) -> tuple[int, Any]:
    report = collect_status(c.app)
    states = {f.flow: "paused" if f.paused else "ok" for f in report.flows}
    return 200, {"status": "ok" if all(v == "ok" for v in states.values()) else "degraded", "flows": states}


@_on("GET", "flows", READER)
def _flows(c: _Context) -> tuple[int, Any]:
    return 200, collect_status(c.app)


@_on("POST", "flows/{flow}/pause", OPERATOR)
def _pause(c: _Context) -> tuple[int, Any]:
    flow = views.check_flow(c.app, c.params["flow"])
    cursor = pause_flow(c.app.state, flow, _text(c.body, "reason") or "paused by an operator")
    return 200, {"flow": flow, "paused": cursor.paused, "paused_reason": cursor.paused_reason}


@_on("POST", "flows/{flow}/resume", OPERATOR)
def _resume(c: _Context) -> tuple[int, Any]:
    flow = views.check_flow(c.app, c.params["flow"])
    cursor, released = held_changes.resume(c.app, flow)
    return 200, {"flow": flow, "paused": cursor.paused, "paused_reason": cursor.paused_reason, "released": released}


@_on("GET", "runs", READER)
def _runs(c: _Context) -> tuple[int, Any]:
    limit = _limit(c.request.query.get("limit"), default=20)
    busy = (c.request.query.get("busy") or "").lower() == "true"
    return 200, {"runs": views.run_views(c.app, _text(c.request.query, "flow"), limit, busy)}


@_on("GET", "dead-letters", READER)
def _dead_letters(c: _Context) -> tuple[int, Any]:
    q = c.request.query
    return 200, views.dead_letter_list(c.app, _text(q, "flow"), _text(q, "reason"), _text(q, "key"),
                                       _limit(q.get("limit")))


@_on("POST", "dead-letters/purge", OPERATOR)
def _purge(c: _Context) -> tuple[int, Any]:
    body = c.body
    which = DeadLetterFilter(views.check_flow(c.app, _text(body, "flow")), views.check_reason(_text(body, "reason")),
                             _text(body, "key"))
    plan = plan_purge(c.app, which)
    if _flag(body, "dry_run"):
        return 200, {"dry_run": True, "count": plan.count, "confirm": plan.confirm}
    confirm = _text(body, "confirm")
    if confirm is None:
        raise HttpError(400, 'purging deletes dead letters for good: first send the same filter with '
                             '"dry_run": true, then send the "confirm" code it returns')
    if confirm != plan.confirm:
        raise HttpError(409, "the dead letters matching this filter are not the ones the dry run listed "
                             "(or the code is wrong): run the dry run again")
    result = purge_dead_letters(c.app, plan.which)
    return 200, {"purged": result.purged, "left": result.left}


@_on("POST", "replay", OPERATOR)
def _replay(c: _Context) -> tuple[int, Any]:
    body = c.body
    which = ReplayFilter(flow=views.check_flow(c.app, _text(body, "flow")),
                         reason=views.check_reason(_text(body, "reason")), key=_text(body, "key"))
    dry_run = _flag(body, "dry_run")
    if not dry_run and which == ReplayFilter() and not _flag(body, "all"):
        raise HttpError(400, 'a replay without "flow", "reason" or "key" replays every dead letter: '
                             'say so with "all": true')
    if dry_run:
        return 200, views.ReplayView.of(replay_dead_letters(c.app, which, dry_run=True))
    job = jobs.start_replay(c.app, which, c.who.name if c.who else "")
    return 202, {"job": c.start_job(c.app, job)}


@_on("GET", "jobs/{job_id}", READER)
def _job(c: _Context) -> tuple[int, Any]:
    job_id = c.params["job_id"]
    job = jobs.get_job(c.app, job_id) if re.fullmatch(r"[0-9a-f]{32}", job_id) else None
    if job is None:
        raise HttpError(404, "no such job")
    return 200, job


@_on("GET", "conflicts", READER)
def _conflicts(c: _Context) -> tuple[int, Any]:
    return 200, {"conflicts": views.conflict_views(c.app, _text(c.request.query, "flow"))}


@_on("POST", "conflicts/resolve", OPERATOR)
def _resolve(c: _Context) -> tuple[int, Any]:
    body = c.body
    flow, key, take = views.check_flow(c.app, _text(body, "flow")), _required(body, "key"), _required(body, "take")
    return 200, {"flow": flow, "key": key, "take": take, "message_id": resolve_conflict(c.app, key, take, flow)}


@_on("GET", "requests", READER)
def _requests(c: _Context) -> tuple[int, Any]:
    return 200, {"requests": views.change_request_views(c.app, _text(c.request.query, "flow"))}


@_on("POST", "requests/approve", OPERATOR)
def _approve(c: _Context) -> tuple[int, Any]:
    flow, key = views.check_flow(c.app, _text(c.body, "flow")), _required(c.body, "key")
    return 200, {"flow": flow, "key": key, "message_id": approve_request(c.app, key, flow)}


@_on("POST", "requests/reject", OPERATOR)
def _reject(c: _Context) -> tuple[int, Any]:
    flow, key, reason = (views.check_flow(c.app, _text(c.body, "flow")), _required(c.body, "key"),
                         _required(c.body, "reason"))
    reject_request(c.app, key, reason, flow)
    return 200, {"flow": flow, "key": key, "rejected": True}


# -- parsing ----------------------------------------------------------------------------------------------------


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw or not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise HttpError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return body


def _text(values: dict[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HttpError(400, f"{name!r} must be a string")
    return value


def _required(values: dict[str, Any], name: str) -> str:
    value = _text(values, name)
    if value is None:
        raise HttpError(400, f"{name!r} is required")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise HttpError(400, f"{name!r} must be true or false")
    return value


def _limit(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise HttpError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise HttpError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit
