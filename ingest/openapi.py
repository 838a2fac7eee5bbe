"""OpenAPI 3 description of the edge's public routes (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from ingest.validate import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from trackpipe import __version__

_ERROR = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {"status": {"type": "string", "enum": ["error"]}, "error": {"type": "string"}},
}
_OK = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}}
_BATCH_OK = {
    "type": "object",
    "required": ["status", "accepted", "rejected"],
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "accepted": {"type": "integer", "minimum": 0},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "error"],
                "properties": {"index": {"type": "integer", "minimum": 0}, "error": {"type": "string"}},
            },
        },
    },
}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
_CORS = {
    "Access-Control-Allow-Origin": {
        "schema": {"type": "string"},
        "description": "with an Origin header the source (or, without a good key, the site) allows: that "
        "origin, or * when only '*' allows it",
    },
    "Vary": {"schema": {"type": "string"}, "description": "Origin, when the answer depends on it"},
}
_UNAVAILABLE = {**_RETRY_AFTER, **_CORS}
_GIF = {
    "description": "a 1x1 transparent GIF, never cached: the event is stored (compat mode: also for a bad key "
    "or a query that makes no event, which are dropped)",
    "headers": {**_CORS, "Cache-Control": {"schema": {"type": "string"}, "description": "no-store, no-cache"}},
    "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
}
_AUTH_PARAMS = [
    {"name": "tc_s", "in": "query", "required": False, "schema": {"type": "string"}, "description": "site id"},
    {
        "name": "token",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "source key (or send it as Authorization: Bearer)",
    },
]


def _pixel_operation() -> dict[str, Any]:
    return {
        "summary": "Pixel Tracking API: one event in the query string, a GIF back",
        "description": "Every parameter but tc_s and token is a property of the event, in bracket notation: "
        "user[id]=1, items[0][product][name]=T, user[consent_categories][]=1. Values are strings, except "
        f"the vendor's numeric and boolean properties (value, price, quantity, ...). At most {MAX_EVENT_BYTES} "
        "bytes of query and of event.",
        "parameters": [
            *_AUTH_PARAMS,
            {
                "name": "event_name",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "the event's name; any other property goes the same way",
            },
        ],
        "responses": {
            "200": _GIF,
            "400": _json(_ERROR, "strict mode: the query is not an event", _CORS),
            "401": _json(_ERROR, "strict mode: missing or unknown key", _CORS),
            "413": _json(_ERROR, "strict mode: query or event too large", _CORS),
            "503": _json(_ERROR, "Redis unreachable or backlog too deep: nothing stored", _UNAVAILABLE),
        },
    }


def _preflight_operation(methods: str) -> dict[str, Any]:
    return {
        "summary": "CORS preflight (with Origin and Access-Control-Request-Method), else the allowed methods",
        "parameters": [
            {
                "name": "tc_s",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "site id: an origin listed by any of the site's sources (cors_origins) is allowed",
            },
            {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "Access-Control-Request-Method", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "Access-Control-Request-Headers", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "204": {
                "description": f"allowed (methods {methods}), or a plain OPTIONS",
                "headers": {
                    **_CORS,
                    "Access-Control-Allow-Methods": {"schema": {"type": "string"}},
                    "Access-Control-Allow-Headers": {"schema": {"type": "string"}},
                    "Access-Control-Max-Age": {"schema": {"type": "integer"}},
                    "Allow": {"schema": {"type": "string"}, "description": "plain OPTIONS: the methods served"},
                },
            },
            "403": _json(_ERROR, "preflight refused: unknown or missing site, origin or method not allowed"),
        },
    }


def _ingest_operation(summary: str, body_schema: dict[str, Any], ok: dict[str, Any], limit: int, pixel: bool):
    operations = {
        "post": {
            "summary": summary,
            "parameters": _AUTH_PARAMS,
            "security": [{}, {"bearer": []}],
            "requestBody": {
                "required": True,
                "description": f"At most {limit} bytes after gzip decompression. Compat mode takes a body that "
                "is valid JSON whatever its Content-Type (navigator.sendBeacon sends text/plain); strict "
                "mode wants application/json.",
                "content": {"application/json": {"schema": body_schema}, "text/plain": {"schema": {"type": "string"}}},
            },
            "responses": {
                "200": _json(ok, "stored (or, in compat mode, a missing/unknown key: dropped)", _CORS),
                "400": _json(_ERROR, "invalid body (compat mode: also too large or wrong content type)", _CORS),
                "401": _json(_ERROR, "strict mode: missing or unknown key", _CORS),
                "405": _json(_ERROR, "method not allowed"),
                "413": _json(_ERROR, "strict mode: body too large", _CORS),
                "415": _json(_ERROR, "strict mode: content type is not JSON, or unsupported encoding", _CORS),
                "408": _json(_ERROR, "the body did not arrive within edge.body_timeout_seconds", _CORS),
                "503": _json(_ERROR, "Redis unreachable or backlog too deep: nothing stored", _UNAVAILABLE),
            },
        },
        "options": _preflight_operation("POST, GET, OPTIONS" if pixel else "POST, OPTIONS"),
    }
    if pixel:
        operations["get"] = _pixel_operation()
    return operations


def spec() -> dict[str, Any]:
    event = {"type": "object", "description": "one event, Commanders Act v1 or v2 format"}
    batch = {
        "type": "object",
        "required": ["batch"],
        "properties": {"batch": {"type": "array", "items": {}}},
    }
    plain = {"type": "object", "properties": {"status": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "trackpipe edge", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            # The same routes with a trailing slash are served alike.
            **{
                path: _ingest_operation("Send one event", event, _OK, MAX_EVENT_BYTES, pixel=True)
                for path in ("/events", "/events/")
            },
            **{
                path: _ingest_operation(
                    "Send a batch of events (each at most 32 KB)", batch, _BATCH_OK, MAX_BATCH_BYTES, pixel=False
                )
                for path in ("/events/batch", "/events/batch/")
            },
            "/healthz": {"get": {"summary": "process alive", "responses": {"200": _json(plain, "alive")}}},
            "/readyz": {
                "get": {
                    "summary": "Redis reachable",
                    "responses": {
                        "200": _json(plain, "ready"),
                        "503": _json(_ERROR, "Redis unreachable", _RETRY_AFTER),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
                }
            },
        },
    }
