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


def _ingest_operation(summary: str, body_schema: dict[str, Any], ok: dict[str, Any], limit: int):
    return {
        "post": {
            "summary": summary,
            "parameters": _AUTH_PARAMS,
            "security": [{}, {"bearer": []}],
            "requestBody": {
                "required": True,
                "description": f"At most {limit} bytes after gzip decompression.",
                "content": {"application/json": {"schema": body_schema}},
            },
            "responses": {
                "200": _json(ok, "stored (or, in compat mode, a missing/unknown key: dropped)"),
                "400": _json(_ERROR, "invalid body (compat mode: also too large or wrong content type)"),
                "401": _json(_ERROR, "strict mode: missing or unknown key"),
                "405": _json(_ERROR, "method not allowed"),
                "413": _json(_ERROR, "strict mode: body too large"),
                "415": _json(_ERROR, "strict mode: content type is not JSON, or unsupported encoding"),
                "408": _json(_ERROR, "the body did not arrive within edge.body_timeout_seconds"),
                "503": _json(_ERROR, "Redis unreachable or backlog too deep: nothing stored", _RETRY_AFTER),
            },
        }
    }


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
            "/events": _ingest_operation("Send one event", event, _OK, MAX_EVENT_BYTES),
            "/events/batch": _ingest_operation(
                "Send a batch of events (each at most 32 KB)", batch, _BATCH_OK, MAX_BATCH_BYTES
            ),
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
