"""The Web API itself, independent of the HTTP transport: one request in, one response out.

The HTTP server (server.py) and the ``$batch`` executor (batch.py) both call ``DataverseApi.handle``, so an
operation behaves the same on its own and inside a batch.

Formats follow Microsoft's Dataverse Web API documentation: "Query data" / "Page results" (maxpagesize,
nextLink), "Use change tracking to synchronize data with external systems" (track-changes, deltaLink,
$deletedEntity), "Create a table row" / "Update and delete table rows" / "Perform conditional operations"
(204 vs 201/200, OData-EntityId, If-Match / If-None-Match), "Compose HTTP requests and handle errors".
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import quote

from . import errors
from .errors import ODataError
from .metadata import entity_definitions, is_definitions_path
from .odata_query import GuidLiteral, format_key_value, parse_filter, parse_key_predicate, parse_orderby, parse_select
from .schema import Attribute, Entity, Schema
from .stats import Stats
from .store import Store
from .tokens import (
    make_delta_token,
    make_skip_token,
    parse_delta_token,
    parse_skip_token,
    quote_delta_token,
)
from .values import check_payload_type, dumps, from_column, is_guid, loads, new_guid, norm_guid, to_column, utcnow

JSON_CONTENT_TYPE = "application/json; odata.metadata=minimal"
LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
MAX_PAGE_SIZE = 5000  # Dataverse ignores odata.maxpagesize above 5,000 ("Page results")

_SUPPORTED_OPTIONS = {"$select", "$filter", "$orderby", "$top", "$skiptoken", "$deltatoken", "$count"}
MAX_COUNT = 5000  # @odata.count stops at 5,000 in Dataverse
_RESOURCE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\((.*)\))?$", re.DOTALL)
_BIND_PATH_RE = re.compile(r"^(?:.*?/api/data/v\d+\.\d+/)?/?([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$", re.DOTALL)

# Fixed identities for WhoAmI, so a connector's "test connection" has something to call.
WHOAMI = {
    "BusinessUnitId": "8a1b2c3d-0000-4000-8000-000000000001",
    "UserId": "8a1b2c3d-0000-4000-8000-000000000002",
    "OrganizationId": "8a1b2c3d-0000-4000-8000-000000000003",
}


@dataclass
class ApiRequest:
    method: str
    path: str  # percent-decoded resource path after the service root, e.g. "accounts(accountnumber='A-1')"
    query: dict[str, str]  # decoded query options, first value wins
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    service_root: str  # e.g. "http://127.0.0.1:5555/api/data/v9.2/"

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    kind: str = "error"  # what the request was, for Stats

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class BatchScope:
    """State a change set shares between its operations: Content-ID -> URL of the record it created."""

    content_ids: dict[str, str] = field(default_factory=dict)
    in_changeset: bool = False


def error_response(err: ODataError, kind: str = "error") -> ApiResponse:
    headers = {"Content-Type": JSON_CONTENT_TYPE, "OData-Version": "4.0", **err.headers}
    return ApiResponse(err.status, headers, json.dumps(err.body()).encode(), kind)


def json_response(status: int, body: Any, kind: str, headers: dict[str, str] | None = None) -> ApiResponse:
    h = {"Content-Type": JSON_CONTENT_TYPE, "OData-Version": "4.0", **(headers or {})}
    return ApiResponse(status, h, dumps(body).encode(), kind)


def parse_prefer(value: str | None) -> dict[str, str | None]:
    """``Prefer: odata.maxpagesize=10, odata.track-changes`` -> {"odata.maxpagesize": "10", ...}."""
    prefs: dict[str, str | None] = {}
    for part in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", value or ""):
        part = part.strip()
        if not part:
            continue
        name, _, val = part.partition("=")
        prefs[name.strip().lower()] = val.strip().strip('"') if val else None
    return prefs


def wants_annotation(prefs: Mapping[str, str | None], name: str) -> bool:
    """Whether ``Prefer: odata.include-annotations="..."`` asks for this annotation (a list, ``*``, or a
    namespace wildcard such as ``Microsoft.Dynamics.CRM.*``)."""
    wanted = prefs.get("odata.include-annotations")
    if not wanted:
        return False
    for pattern in (p.strip() for p in wanted.split(",")):
        if pattern == "*" or pattern == name or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
            return True
    return False


def _encode_option(name: str, value: str) -> str:
    if name == "$deltatoken":
        return quote_delta_token(value)
    if name == "$skiptoken":
        return quote(value, safe="")
    return quote(value, safe=",()*:/'$")


def _wire(entity: Entity, column: str) -> str:
    attr = entity.attributes.get(column)
    return attr.wire_name if attr is not None else column


def _key_literal(entity: Entity, column: str, value: Any) -> str:
    attr = entity.attributes.get(column)
    return str(value) if attr is not None and attr.type == "lookup" else format_key_value(value)


def etag_of(row: Mapping[str, Any]) -> str:
    return f'W/"{row["versionnumber"]}"'


def _etag_matches(header: str, etag: str) -> bool:
    """If-Match / If-None-Match list semantics; weak comparison, as Dataverse ETags are weak."""
    wanted = etag.removeprefix("W/")
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


class DataverseApi:
    def __init__(self, schema: Schema, store: Store, stats: Stats, token_expired: Callable[[Any], bool]):
        self.schema = schema
        self.store = store
        self.stats = stats
        self._token_expired = token_expired  # (DeltaToken) -> bool, from the fault settings
        # How a delta reports a deleted row: "deletedEntity" (Dataverse's own form) or "removed" (the
        # OData JSON form other services send: {"@odata.id": "accounts(<id>)", "@removed": {...}}).
        self.deleted_form = "deletedEntity"
        # Execution time every write operation takes ("Service protection API limits" charges it to the
        # caller). Spent outside the store's lock, between deciding what to do and writing the row, so
        # concurrent writes interleave as they do in Dataverse.
        self.op_time_s = 0.0
        self.echo_track_changes = True

    def _spend_operation_time(self) -> None:
        if self.op_time_s > 0:
            time.sleep(self.op_time_s)

    # --- dispatch --------------------------------------------------------------------------------

    def handle(self, req: ApiRequest, scope: BatchScope | None = None) -> ApiResponse:
        try:
            return self._dispatch(req, scope)
        except ODataError as err:
            return error_response(err)

    def _dispatch(self, req: ApiRequest, scope: BatchScope | None) -> ApiResponse:
        path = req.path
        if path == "$batch":
            if scope is not None:
                raise errors.bad_request("A batch request cannot contain another batch request.")
            if req.method != "POST":
                raise errors.method_not_allowed(req.method, path)
            from .batch import execute_batch  # batch builds on this module

            return execute_batch(self, req)
        if path in ("WhoAmI", "WhoAmI()"):
            if req.method != "GET":
                raise errors.method_not_allowed(req.method, path)
            return json_response(
                200, {"@odata.context": f"{req.service_root}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", **WHOAMI}, "whoami"
            )
        if is_definitions_path(path):
            if req.method != "GET":
                raise errors.method_not_allowed(req.method, path)
            return json_response(*entity_definitions(self.schema, path, req.query), "metadata")
        if path.startswith("$") and scope is not None:
            path = self._resolve_content_id(path, scope)

        m = _RESOURCE_RE.match(path)
        entity = self.schema.by_set(m.group(1)) if m else None
        if m is None or entity is None:
            raise errors.segment_not_found(path.split("(")[0] or path)
        unsupported = sorted(k for k in req.query if k.startswith("$") and k not in _SUPPORTED_OPTIONS)
        if unsupported:
            raise errors.bad_request(f"The query option '{unsupported[0]}' is not supported by the simulator.")

        key_text = m.group(2)
        if key_text is None:
            if req.method == "GET":
                return self._get_collection(entity, req)
            if req.method == "POST":
                return self._create(entity, req, scope)
            raise errors.method_not_allowed(req.method, path)
        if req.method == "GET":
            return self._retrieve(entity, key_text, req)
        if req.method == "PATCH":
            return self._upsert(entity, key_text, req, scope)
        if req.method == "DELETE":
            return self._delete(entity, key_text, req)
        raise errors.method_not_allowed(req.method, path)

    def _resolve_content_id(self, path: str, scope: BatchScope) -> str:
        ref, sep, rest = path[1:].partition("/")
        if ref not in scope.content_ids:
            raise errors.bad_request(f"Content-ID Reference: '${ref}' does not exist in the batch context.")
        if rest:
            raise errors.bad_request(f"The path '{path}' is not supported by the simulator.")
        return scope.content_ids[ref]

    # --- shaping rows ----------------------------------------------------------------------------

    def _selection(self, entity: Entity, req: ApiRequest) -> list[Attribute] | None:
        text = req.query.get("$select")
        return parse_select(entity, text) if text else None

    def serialize(self, entity: Entity, row: Mapping[str, Any], attrs: list[Attribute] | None,
                  lookup_names: bool = False) -> dict[str, Any]:
        """A stored row as Web API JSON: selected attributes, then the primary id (as Dataverse orders it).
        ``lookup_names``: each set lookup carries ``@Microsoft.Dynamics.CRM.lookuplogicalname`` (the table it
        points to), as Dataverse does when the request asks for that annotation."""
        out: dict[str, Any] = {}
        id_attr = entity.by_wire[entity.id_attr]
        for attr in attrs if attrs is not None else entity.readable:
            if attr is id_attr:
                continue
            value = from_column(attr.type, row.get(attr.name))
            if lookup_names and attr.type == "lookup" and value is not None:
                target = self.schema.by_set(row.get(attr.table_column) or attr.target or "")
                if target is not None:
                    out[f"{attr.wire_name}@{LOOKUP_LOGICAL_NAME}"] = target.logical_name
            out[attr.wire_name] = value
        out[entity.id_attr] = row[entity.id_attr]
        return out

    def _entity_json(self, entity: Entity, row: Mapping[str, Any], attrs: list[Attribute] | None,
                     lookup_names: bool = False) -> dict[str, Any]:
        return {"@odata.etag": etag_of(row), **self.serialize(entity, row, attrs, lookup_names)}

    @staticmethod
    def _lookup_names(req: ApiRequest) -> bool:
        return wants_annotation(parse_prefer(req.header("prefer")), LOOKUP_LOGICAL_NAME)

    @staticmethod
    def _context(req: ApiRequest, entity: Entity, attrs: list[Attribute] | None, suffix: str = "") -> str:
        selection = f"({','.join(a.wire_name for a in attrs)})" if attrs else ""
        return f"{req.service_root}$metadata#{entity.set_name}{selection}{suffix}"

    # --- addressing ------------------------------------------------------------------------------

    def _key_values(self, entity: Entity, values: dict[str, Any]) -> dict[str, Any]:
        """Validate alternate key values from a URL against the schema; return column values.

        A lookup column is named as it is read (``_primarycontactid_value``) and its value is a bare GUID; a
        quoted one is a string, which does not convert to Edm.Guid (as Dataverse answers)."""
        columns: dict[str, Any] = {}
        for name, value in values.items():
            attr = entity.by_wire.get(name)
            if attr is None or attr.readonly:
                attr = entity.attributes.get(name)
            columns[attr.name if attr is not None else name] = (attr, name, value)
        if entity.key_for(set(columns)) is None:
            names = ",".join(values)
            raise errors.bad_request(f"The key '{names}' is not an alternate key of entity '{entity.logical_name}'.")
        result = {}
        for column, (attr, name, value) in columns.items():
            if attr.type == "lookup":
                if not isinstance(value, GuidLiteral):
                    raise errors.bad_request(f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid'.")
                result[column] = str(value)
                continue
            expected_str = attr.type == "string"
            if expected_str != isinstance(value, str) or isinstance(value, GuidLiteral):
                raise errors.bad_request(f"The value of key attribute '{name}' has the wrong type.")
            result[column] = value
        return result

    def _locate(self, entity: Entity, key_text: str) -> tuple[str | None, dict[str, Any] | None]:
        """(id if the record exists or is addressed by id, key values if addressed by alternate key)."""
        key = parse_key_predicate(entity, key_text)
        if isinstance(key, str):
            return key, None
        values = self._key_values(entity, key)
        return self.store.find_by_key(entity, values), values

    @staticmethod
    def _not_found(entity: Entity, record_id: str | None, key_values: dict[str, Any] | None) -> ODataError:
        if key_values is not None:
            return errors.key_not_found(entity.logical_name)
        return errors.record_not_found(entity.logical_name, record_id or "")

    # --- reads -----------------------------------------------------------------------------------

    def _page_size(self, prefs: dict[str, str | None]) -> tuple[int, bool]:
        """(page size, whether the preference was applied)."""
        raw = prefs.get("odata.maxpagesize")
        if raw is None:
            return MAX_PAGE_SIZE, False
        try:
            size = int(raw)
        except ValueError:
            raise errors.bad_request(f"The value '{raw}' is not valid for odata.maxpagesize.") from None
        if size <= 0:
            raise errors.bad_request(f"The value '{raw}' is not valid for odata.maxpagesize.")
        return (size, True) if size <= MAX_PAGE_SIZE else (MAX_PAGE_SIZE, False)

    def _retrieve(self, entity: Entity, key_text: str, req: ApiRequest) -> ApiResponse:
        attrs = self._selection(entity, req)
        record_id, key_values = self._locate(entity, key_text)
        row = self.store.get(entity, record_id) if record_id else None
        if row is None:
            raise self._not_found(entity, record_id, key_values)
        etag = etag_of(row)
        if_none_match = req.header("if-none-match")
        if if_none_match and if_none_match != "null" and _etag_matches(if_none_match, etag):
            return ApiResponse(304, {"OData-Version": "4.0", "ETag": etag}, b"", "retrieve")
        body = {"@odata.context": self._context(req, entity, attrs, "/$entity"),
                **self._entity_json(entity, row, attrs, self._lookup_names(req))}
        return json_response(200, body, "retrieve", {"ETag": etag})

    def _get_collection(self, entity: Entity, req: ApiRequest) -> ApiResponse:
        prefs = parse_prefer(req.header("prefer"))
        page_size, size_applied = self._page_size(prefs)
        page_number, state = parse_skip_token(req.query["$skiptoken"]) if "$skiptoken" in req.query else (1, None)
        if "$deltatoken" in req.query:
            return self._delta(entity, req, page_size, size_applied, page_number, state)
        if not entity.change_tracking:
            # "Track changes" is off: Dataverse ignores the preference and answers a plain query (no delta
            # link, the preference not applied).
            return self._query(entity, req, page_size, size_applied, page_number, state)
        if "odata.track-changes" in prefs or (state is not None and state.get("m") == "ct"):
            return self._track_changes(entity, req, prefs, page_size, size_applied, page_number, state)
        return self._query(entity, req, page_size, size_applied, page_number, state)

    def _link(self, req: ApiRequest, entity: Entity, extra: list[tuple[str, str]], keep: tuple[str, ...]) -> str:
        """A next/delta link: the kept query options as the client sent them, plus the extra ones."""
        params = [(k, v) for k, v in req.query.items() if k in keep] + extra
        return f"{req.service_root}{entity.set_name}?" + "&".join(f"{k}={_encode_option(k, v)}" for k, v in params)

    @staticmethod
    def _applied(*prefs: str | None) -> dict[str, str]:
        applied = [p for p in prefs if p]
        return {"Preference-Applied": ",".join(applied)} if applied else {}

    def _query(
        self, entity: Entity, req: ApiRequest, page_size: int, size_applied: bool, page: int, state: dict | None
    ) -> ApiResponse:
        attrs = self._selection(entity, req)
        where, params = parse_filter(entity, req.query["$filter"]) if "$filter" in req.query else ("1", [])
        order = parse_orderby(entity, req.query["$orderby"]) if "$orderby" in req.query else []
        order.append((entity.id_attr, False))  # a total order, so pages never overlap or skip
        top = None
        if "$top" in req.query:
            if not req.query["$top"].isdigit():
                raise errors.bad_request(f"Invalid value '{req.query['$top']}' for $top query option.")
            top = int(req.query["$top"])
        offset = 0
        if state is not None:
            if state.get("m") != "q":
                raise errors.bad_request("The $skiptoken does not belong to this query.")
            offset = int(state["o"])
        limit = page_size if top is None else max(0, min(page_size, top - offset))
        rows = self.store.select(entity, where, params, order, limit + 1, offset)
        more = len(rows) > limit and (top is None or offset + limit < top)
        rows = rows[:limit]
        body: dict[str, Any] = {"@odata.context": self._context(req, entity, attrs)}
        if req.query.get("$count") == "true":
            body["@odata.count"] = min(self.store.count(entity, where, params), MAX_COUNT)
        body["value"] = [self._entity_json(entity, r, attrs, self._lookup_names(req)) for r in rows]
        if more:
            token = make_skip_token(page + 1, {"m": "q", "o": offset + limit})
            body["@odata.nextLink"] = self._link(
                req, entity, [("$skiptoken", token)], ("$select", "$filter", "$orderby", "$top", "$count")
            )
        headers = self._applied(f"odata.maxpagesize={page_size}" if size_applied else None,
                                self._annotations_applied(req))
        return json_response(200, body, "query" if state is None else "query_next_page", headers)

    def _annotations_applied(self, req: ApiRequest) -> str | None:
        wanted = parse_prefer(req.header("prefer")).get("odata.include-annotations")
        return f'odata.include-annotations="{wanted}"' if wanted else None

    def _track_changes(
        self,
        entity: Entity,
        req: ApiRequest,
        prefs: dict[str, str | None],
        page_size: int,
        size_applied: bool,
        page: int,
        state: dict | None,
    ) -> ApiResponse:
        """The initial change-tracking read: every current row, then a delta link on the last page."""
        for option in ("$filter", "$orderby", "$top"):
            if option in req.query:
                raise errors.track_changes_option_not_supported(option)
        attrs = self._selection(entity, req)
        with self.store.lock:  # the watermark and the first page come from one consistent snapshot
            upto = int(state["u"]) if state else self.store.current_version
            after = int(state["a"]) if state else 0
            rows = self.store.changed_rows(entity, after, upto, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        body: dict[str, Any] = {
            "@odata.context": self._context(req, entity, attrs),
            "value": [self._entity_json(entity, r, attrs, self._lookup_names(req)) for r in rows],
        }
        if more:
            token = make_skip_token(page + 1, {"m": "ct", "u": upto, "a": rows[-1]["versionnumber"]})
            body["@odata.nextLink"] = self._link(req, entity, [("$skiptoken", token)], ("$select",))
        else:
            # The pessimistic reading of the docs: the token is stamped when the last page is served, so a
            # write made while the client paged through the snapshot (version in (upto, now]) is in neither
            # the full read nor the next delta. Nothing documented promises otherwise.
            delta = str(make_delta_token(self.store.current_version, utcnow()))
            body["@odata.deltaLink"] = self._link(req, entity, [("$deltatoken", delta)], ("$select",))
        headers = self._applied(
            "odata.track-changes" if "odata.track-changes" in prefs and self.echo_track_changes else None,
            f"odata.maxpagesize={page_size}" if size_applied else None,
            self._annotations_applied(req),
        )
        return json_response(200, body, "track_changes" if state is None else "track_changes_next_page", headers)

    def _delta(
        self, entity: Entity, req: ApiRequest, page_size: int, size_applied: bool, page: int, state: dict | None
    ) -> ApiResponse:
        """Changes since a delta token: new/updated rows first (by version), then deleted rows."""
        for option in ("$filter", "$orderby", "$top"):
            if option in req.query:
                raise errors.track_changes_option_not_supported(option)
        token = parse_delta_token(req.query["$deltatoken"])
        if token.version < self.store.token_floor or self._token_expired(token):
            raise errors.expired_delta_token()
        attrs = self._selection(entity, req)
        since = token.version
        if state is not None and state.get("m") != "d":
            raise errors.bad_request("The $skiptoken does not belong to this query.")
        phase = state["p"] if state else "u"
        after = int(state["a"]) if state else since
        items: list[tuple[str, Any]] = []
        with self.store.lock:
            upto = int(state["u"]) if state else self.store.current_version
            if phase == "u":
                items += [("u", r) for r in self.store.changed_rows(entity, after, upto, page_size + 1)]
                if len(items) <= page_size:
                    phase, after = "d", since  # updates exhausted: deletions start from the token
            if phase == "d" and len(items) <= page_size:
                deleted = self.store.deleted_rows(entity, after, upto, page_size + 1 - len(items))
                items += [("d", d) for d in deleted]
        more = len(items) > page_size
        items = items[:page_size]
        value: list[dict[str, Any]] = []
        for kind, item in items:
            if kind == "u":
                value.append(self._entity_json(entity, item, attrs, self._lookup_names(req)))
            elif self.deleted_form == "removed":
                value.append({"@odata.id": f"{entity.set_name}({item[0]})", "@removed": {"reason": "deleted"}})
            else:
                value.append({
                    "@odata.context": f"{req.service_root}$metadata#{entity.set_name}/$deletedEntity",
                    "id": item[0],
                    "reason": "deleted",
                })
        body: dict[str, Any] = {"@odata.context": self._context(req, entity, attrs, "/$delta"), "value": value}
        if more:
            last_kind, last = items[-1]
            last_version = last["versionnumber"] if last_kind == "u" else last[1]
            skip = make_skip_token(page + 1, {"m": "d", "u": upto, "p": last_kind, "a": last_version})
            body["@odata.nextLink"] = self._link(
                req, entity, [("$skiptoken", skip)], ("$select", "$deltatoken")
            )
        else:
            delta = str(make_delta_token(upto, utcnow()))
            body["@odata.deltaLink"] = self._link(req, entity, [("$deltatoken", delta)], ("$select",))
        prefs = parse_prefer(req.header("prefer"))
        headers = self._applied(
            "odata.track-changes" if "odata.track-changes" in prefs and self.echo_track_changes else None,
            f"odata.maxpagesize={page_size}" if size_applied else None,
            self._annotations_applied(req),
        )
        return json_response(200, body, "delta" if state is None else "delta_next_page", headers)

    # --- writes ----------------------------------------------------------------------------------

    @staticmethod
    def _payload(entity: Entity, req: ApiRequest) -> dict[str, Any]:
        try:
            payload = loads(req.body or b"{}")
        except ValueError as exc:
            raise errors.bad_payload(entity.set_name, f"Invalid JSON in the request body: {exc}") from None
        if not isinstance(payload, dict):
            raise errors.bad_payload(entity.set_name, "The request body must be a JSON object.")
        return payload

    def coerce(
        self,
        entity: Entity,
        payload: Mapping[str, Any],
        *,
        creating: bool,
        scope: BatchScope | None = None,
        raw_lookups: bool = False,
    ) -> tuple[dict[str, Any], str | None]:
        """Validate a write payload against the schema; return (column values, id given in the body).

        Order mirrors Dataverse: deserialization errors (unknown property, wrong JSON type) first, then
        lookup binds, then validation (length, option values), then required attributes.
        ``raw_lookups`` lets test helpers write ``_x_value`` directly.
        """
        values: dict[str, Any] = {}
        binds: list[tuple[Attribute, str, Any]] = []
        tables: dict[str, str | None] = {}  # lookup table columns: the entity set each lookup points to
        body_id: str | None = None
        for key, value in payload.items():
            if key.endswith("@odata.bind"):
                nav = key[: -len("@odata.bind")]
                attr = entity.by_nav.get(nav)
                if attr is None:
                    raise errors.bad_payload(
                        entity.set_name,
                        f"An undeclared property '{nav}' which only has property annotations in the payload but no "
                        "property value was found in the payload. In OData, only declared navigation properties and "
                        "declared named streams can be represented as properties without values.",
                    )
                binds.append((attr, nav, value))
                continue
            if "@" in key:
                continue  # instance annotations such as @odata.type or @odata.etag carry no data
            if key == entity.id_attr:
                if not is_guid(value):
                    raise errors.bad_literal(entity.set_name, value, "Edm.Guid")
                body_id = norm_guid(value)
                continue
            attr = entity.attributes.get(key)
            if attr is None and raw_lookups and key in entity.by_wire and entity.by_wire[key].type == "lookup":
                attr = entity.by_wire[key]
                if value is not None and not is_guid(value):
                    raise errors.bad_literal(entity.set_name, value, "Edm.Guid")
                values[attr.name] = value
                tables[attr.table_column] = attr.target if value is not None else None
                continue
            if attr is None:
                if key in ("createdon", "modifiedon", "versionnumber"):
                    continue  # read-only system columns: ignored on write, as Dataverse does
                raise errors.unknown_property(entity.set_name, entity.type_name, key)
            if attr.type == "lookup":
                # Writing a navigation property as a plain value: Dataverse wants @odata.bind.
                raise errors.bad_payload(
                    entity.set_name,
                    "A 'PrimitiveValue' node with non-null value was found when trying to read the value of a "
                    "navigation property; however, a 'StartArray' node, a 'StartObject' node, or a "
                    "'PrimitiveValue' node with null value was expected.",
                )
            if value is not None and not check_payload_type(attr.type, value):
                raise errors.bad_literal(entity.set_name, value, attr.edm_type)
            values[attr.name] = value

        for attr, nav, ref in binds:
            target = next(t for t, n in attr.targets if n == nav)
            values[attr.name] = None if ref is None else self._resolve_bind(entity, attr, nav, target, ref, scope)
            tables[attr.table_column] = None if ref is None else target

        for name, value in values.items():
            attr = entity.attributes[name]
            if value is None:
                continue
            if attr.type == "string" and attr.max_length is not None and len(value) > attr.max_length:
                raise errors.max_length_exceeded(entity.logical_name, name, attr.max_length)
            if attr.type == "optionset" and attr.options and value not in attr.options:
                raise errors.option_out_of_range(entity.logical_name, name, value, attr.options)

        if creating:
            if entity.created_state:
                # Orders and invoices start in their default state whatever the create asks for.
                values.update(entity.created_state)
                values.pop("statuscode", None)
            for attr in entity.attributes.values():
                if attr.default is not None and values.get(attr.name) is None:
                    values[attr.name] = attr.default
        # Business-required columns (`required`) are not checked: the Web API does not enforce them
        # ("Business-required columns aren't enforced by the API"); only forms and business rules do.

        columns = {name: to_column(entity.attributes[name].type, v) for name, v in values.items()}
        columns.update(tables)
        return columns, body_id

    def check_status(self, entity: Entity, values: dict[str, Any], current: Mapping[str, Any] | None,
                     record_id: str) -> None:
        """statecode and statuscode must be a valid pair ("Status reasons"); a statecode written alone takes
        its state's default status reason. Changes ``values`` in place."""
        reasons = entity.status_reasons
        if not reasons or ("statecode" not in values and "statuscode" not in values):
            return
        state = values.get("statecode", (current or {}).get("statecode"))
        state = 0 if state is None else int(state)
        allowed = reasons.get(state, ())
        status = values.get("statuscode")
        if status is None:
            if "statecode" in values or current is None:
                values["statuscode"] = allowed[0] if allowed else None
            return
        if int(status) not in allowed:
            raise errors.invalid_status(entity.logical_name, record_id, int(status), state)

    def _resolve_bind(self, entity: Entity, attr: Attribute, nav: str, target_set: str, ref: Any,
                      scope: BatchScope | None) -> str:
        """``"/accounts(<guid>)"``, ``"accounts(accountnumber='A-1')"``, a full URL, or ``"$1"`` -> the id."""
        if not isinstance(ref, str):
            raise errors.bad_literal(entity.set_name, ref, "Edm.String")
        if ref.startswith("$"):
            if scope is None or ref[1:] not in scope.content_ids:
                raise errors.bad_request(f"Content-ID Reference: '{ref}' does not exist in the batch context.")
            ref = scope.content_ids[ref[1:]]
        m = _BIND_PATH_RE.match(ref)
        if not m:
            raise errors.bad_payload(entity.set_name, f"The @odata.bind value '{ref}' is not a valid entity reference.")
        if m.group(1) != target_set:
            raise errors.bind_wrong_target(entity.set_name, nav, target_set)
        target = self.schema.entity(m.group(1))
        key = parse_key_predicate(target, m.group(2))
        if isinstance(key, str):
            if self.store.get(target, key) is None:
                raise errors.record_not_found(target.logical_name, key, status=400)
            return key
        found = self.store.find_by_key(target, self._key_values(target, key))
        if found is None:
            raise errors.key_not_found(target.logical_name, status=400)
        return found

    def _write_response(
        self, entity: Entity, row: Mapping[str, Any], req: ApiRequest, created: bool, kind: str,
        key_values: dict[str, Any] | None = None,
    ) -> ApiResponse:
        url = f"{req.service_root}{entity.set_name}({row[entity.id_attr]})"
        headers = {"OData-Version": "4.0", "OData-EntityId": url}
        if key_values:
            # An upsert addressed by alternate key answers with the key form ("Use Upsert").
            predicate = ",".join(f"{_wire(entity, k)}={_key_literal(entity, k, v)}" for k, v in key_values.items())
            headers["OData-EntityId"] = f"{req.service_root}{entity.set_name}({predicate})"
        if parse_prefer(req.header("prefer")).get("return") == "representation":
            attrs = self._selection(entity, req)
            body = {"@odata.context": self._context(req, entity, attrs, "/$entity"),
                    **self._entity_json(entity, row, attrs, self._lookup_names(req))}
            headers.update({"Preference-Applied": "return=representation", "ETag": etag_of(row)})
            return json_response(201 if created else 200, body, kind, headers)
        if created and req.method == "POST":
            headers["Location"] = url
        return ApiResponse(204, headers, b"", kind)

    def _create(self, entity: Entity, req: ApiRequest, scope: BatchScope | None) -> ApiResponse:
        payload = self._payload(entity, req)
        self._spend_operation_time()
        with self.store.transaction():
            values, body_id = self.coerce(entity, payload, creating=True, scope=scope)
            new_id = body_id or new_guid()
            self.check_status(entity, values, None, new_id)
            row = self.store.insert(entity, new_id, values, req.query.get("tag"))
        return self._write_response(entity, row, req, created=True, kind="create")

    def _upsert(self, entity: Entity, key_text: str, req: ApiRequest, scope: BatchScope | None) -> ApiResponse:
        """PATCH is an upsert; If-Match: * makes it update-only, If-None-Match: * create-only.

        Create-or-update is decided first and the row written after the operation's execution time, not in
        one atomic step: a create of the same key by a concurrent request in between makes this create fail
        with 412 (duplicate key), as an upsert racing another create does in Dataverse."""
        payload = self._payload(entity, req)
        if_match = req.header("if-match")
        if_none_match = req.header("if-none-match")
        if if_none_match == "null":  # clients send "If-None-Match: null" on every request as advised
            if_none_match = None
        tag = req.query.get("tag")
        record_id, key_values = self._locate(entity, key_text)
        existing = self.store.get(entity, record_id) if record_id else None
        if existing is None and if_match is not None:
            raise self._not_found(entity, record_id, key_values)
        self._spend_operation_time()
        with self.store.transaction():
            if existing is not None:
                current = self.store.get(entity, existing[entity.id_attr])
                if current is None:  # deleted meanwhile
                    raise self._not_found(entity, record_id, key_values)
                if if_none_match is not None and if_none_match.strip() == "*":
                    raise errors.record_exists()
                if if_match is not None and not _etag_matches(if_match, etag_of(current)):
                    raise errors.version_mismatch()
                values, body_id = self.coerce(entity, payload, creating=False, scope=scope)
                if body_id is not None and body_id != record_id:
                    raise errors.bad_request("The id in the request body does not match the id in the URL.")
                self.check_status(entity, values, current, current[entity.id_attr])
                row = self.store.update(entity, current[entity.id_attr], values, tag)
                created = False
            else:
                if key_values:
                    payload = {**payload, **self._key_payload(entity, key_values)}  # the URL's key is data too
                values, body_id = self.coerce(entity, payload, creating=True, scope=scope)
                new_id = (record_id if key_values is None else body_id) or new_guid()
                self.check_status(entity, values, None, new_id)
                row = self.store.insert(entity, new_id, values, tag)
                created = True
        return self._write_response(entity, row, req, created=created, kind="upsert", key_values=key_values)

    @staticmethod
    def _key_payload(entity: Entity, key_values: dict[str, Any]) -> dict[str, Any]:
        """Alternate key values as payload properties: a lookup part as a bind to the table it points to."""
        payload: dict[str, Any] = {}
        for column, value in key_values.items():
            attr = entity.attributes[column]
            if attr.type == "lookup":
                payload[f"{attr.nav}@odata.bind"] = f"/{attr.target}({value})"
            else:
                payload[column] = value
        return payload

    def _delete(self, entity: Entity, key_text: str, req: ApiRequest) -> ApiResponse:
        self._spend_operation_time()
        with self.store.transaction():
            record_id, key_values = self._locate(entity, key_text)
            existing = self.store.get(entity, record_id) if record_id else None
            if existing is None:
                raise self._not_found(entity, record_id, key_values)
            if_match = req.header("if-match")
            if if_match is not None and not _etag_matches(if_match, etag_of(existing)):
                raise errors.version_mismatch()
            self.store.delete(entity, existing[entity.id_attr], req.query.get("tag"))
        return ApiResponse(204, {"OData-Version": "4.0"}, b"", "delete")
