"""OpenAPI 3 description of the console's routes (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from trackpipe import __version__
from trackpipe.keys import HISTORY_FIELDS

_ERROR = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {"status": {"type": "string", "enum": ["error"]}, "error": {"type": "string"}},
}
_TIME = {"type": "string", "description": "epoch ms, epoch s or ISO-8601"}
_LIMIT = {"type": "string", "description": "a whole number from 1 to 1000 (default 100; anything else: 400)"}
_STATUSES = ["DUPLICATE", "INVALID_ACCEPTED", "INVALID_REJECTED", "VALID"]
_COUNT = {"type": "integer", "minimum": 0}
_STATUS_COUNTS = {
    "type": "object",
    "description": "status -> events processed since the counters began",
    "additionalProperties": _COUNT,
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_WHY = {
    "400": "a bad parameter or body, named in `error`",
    "404": "no such source, destination or site in the config",
    "503": "Redis unreachable or timed out",
}


def _admin(summary: str, params: list[dict[str, Any]], ok: dict[str, Any], *codes: str, **extra: Any) -> dict[str, Any]:
    responses = {"200": _json(ok, "the answer"), "401": _json(_ERROR, "missing or wrong admin token")}
    responses |= {code: _json(_ERROR, _WHY[code]) for code in codes}
    return {"summary": summary, "security": [{"admin": []}], "parameters": params, "responses": responses, **extra}


def spec() -> dict[str, Any]:
    replay_body = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "to": {"type": "string", "description": "destination to send them to (default: the DLQ's own)"},
            "dry_run": {"type": "boolean"},
            "event": {"type": "string", "description": "event name"},
            "reason": {"type": "string", "description": "substring of the reason"},
            "since": _TIME,
            "until": _TIME,
            "limit": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        },
    }
    replay_ok = {
        "type": "object",
        "required": ["status", "to"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "to": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "replayed": _COUNT,
            "would_replay": _COUNT,
        },
    }
    counts = {k: _COUNT for k in HISTORY_FIELDS}
    inspector_record = {
        "type": "object",
        "properties": {
            "received_at": {"type": "integer"},
            "status": {"type": "string", "enum": _STATUSES},
            "event_id": {"type": "string", "nullable": True},
            "event_name": {"type": "string", "nullable": True},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "array", "items": {"type": "string"}},
            "destinations": {
                "type": "object",
                "description": "destination id -> queued, FILTERED (by routing, or skipped by the destination), "
                "or FAILED (its delivery ended in the DLQ)",
                "additionalProperties": {"type": "string"},
            },
            "failures": {
                "type": "object",
                "description": "destination id -> why its delivery was dead-lettered, or why the destination "
                "skipped the event (only when one was)",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"reason": {"type": "string"}, "at": {"type": "integer"}},
                },
            },
            "test_code": {"type": "string", "nullable": True},
            "payload": {},
        },
    }
    exchange = {
        "type": "object",
        "required": ["at", "method", "url", "request_body", "events"],
        "properties": {
            "at": {"type": "integer", "description": "epoch ms"},
            "method": {"type": "string"},
            "url": {"type": "string", "description": "secrets masked as ***"},
            "request_body": {"type": "string", "description": "the start of the body (4 KB), secrets masked"},
            "events": _COUNT,
            "status": {"type": "integer", "nullable": True, "description": "null: no answer (dry run, timeout)"},
            "response_body": {"type": "string", "nullable": True},
            "error": {"type": "string", "nullable": True},
            "dry_run": {"type": "boolean"},
        },
    }
    source_view = {
        "type": "object",
        "required": ["id", "processed", "duplicates", "by_status"],
        "properties": {
            "id": {"type": "string"},
            "site_id": {"type": "string"},
            "processed": _COUNT,
            "duplicates": _COUNT,
            "by_status": _STATUS_COUNTS,
            "dedup": {"type": "boolean"},
            "dedup_window_seconds": {"type": "integer", "minimum": 1},
            "shard": {"type": "string", "description": "the shard its events go to (`main` without [[shards]])"},
        },
    }
    shard_view = {
        "type": "object",
        "required": ["name", "url", "home", "sources", "reachable", "backlog", "error"],
        "properties": {
            "name": {"type": "string"},
            "url": {"type": "string", "description": "its redis_url, password masked"},
            "home": {"type": "boolean", "description": "the first shard: refused requests, sessions, alerts"},
            "sources": {"type": "array", "items": {"type": "string"}, "description": "sources whose events go to it"},
            "reachable": {"type": "boolean"},
            "backlog": {"type": "integer", "minimum": 0, "nullable": True, "description": "ingest jobs waiting"},
            "error": {"type": "string", "nullable": True, "description": "why it could not be read"},
        },
    }
    refused_sample = {
        "type": "object",
        "properties": {
            "received_at": {"type": "integer", "description": "epoch ms"},
            "reason": {"type": "string", "description": "missing key, unknown key or missing tc_s"},
            "route": {"type": "string", "description": "the path, never the query string"},
            "body": {"type": "string", "description": "the start of the body (2 KB), anything key-like masked"},
            "body_bytes": _COUNT,
        },
    }
    refused_site = {
        "type": "object",
        "required": ["site_id", "total", "by_reason", "latest"],
        "properties": {
            "site_id": {"type": "string", "description": "a configured site, or _unknown_site for any other tc_s"},
            "total": _COUNT,
            "by_reason": {"type": "object", "additionalProperties": _COUNT},
            "latest": {"type": "array", "items": refused_sample, "description": "newest first"},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "trackpipe console (admin API)", "version": __version__},
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/admin/sources": {
                "get": _admin(
                    "Every source: events per status, duplicates (a producer reusing event ids), dedup settings",
                    [],
                    {
                        "type": "object",
                        "required": ["sources"],
                        "properties": {"sources": {"type": "array", "items": source_view}},
                    },
                    "503",
                )
            },
            "/admin/refused": {
                "get": _admin(
                    "Requests the edge refused for a missing or unknown key, per site: counts and the latest samples",
                    [
                        _query("site", {"type": "string", "description": "one site id (or _unknown_site)"}),
                        _query(
                            "limit",
                            {"type": "string", "description": "samples per site, 1 to 1000 (default 20)"},
                        ),
                    ],
                    {
                        "type": "object",
                        "required": ["sites"],
                        "properties": {"sites": {"type": "array", "items": refused_site}},
                    },
                    "400",
                    "404",
                    "503",
                )
            },
            "/admin/shards": {
                "get": _admin(
                    "Every shard: reachable or not, its ingest backlog, the sources whose events go to it",
                    [],
                    {
                        "type": "object",
                        "required": ["shards"],
                        "properties": {"shards": {"type": "array", "items": shard_view}},
                    },
                )
            },
            "/admin/sources/{source_id}/events": {
                "get": _admin(
                    "The live inspector: a source's recent events, newest first",
                    [
                        _path("source_id"),
                        _query("limit", _LIMIT),
                        _query("status", {"type": "string", "enum": _STATUSES}),
                        _query("test_code", {"type": "string"}),
                    ],
                    {
                        "type": "object",
                        "required": ["source_id", "counts", "duplicates", "events"],
                        "properties": {
                            "source_id": {"type": "string"},
                            "counts": _STATUS_COUNTS,
                            "duplicates": {**_COUNT, "description": "events found DUPLICATE, since counters began"},
                            "events": {"type": "array", "items": inspector_record},
                        },
                    },
                    "400",
                    "404",
                    "503",
                )
            },
            "/admin/destinations/{destination_id}/delivery": {
                "get": _admin(
                    "A destination's last hour: counts, DLQ size, error details, per-minute trend",
                    [_path("destination_id")],
                    {
                        "type": "object",
                        "required": ["destination_id", "last_hour", "dlq", "errors", "trend"],
                        "properties": {
                            "destination_id": {"type": "string"},
                            "last_hour": {"type": "object", "properties": counts},
                            "dlq": _COUNT,
                            "errors": {"type": "array"},
                            "trend": {"type": "array"},
                        },
                    },
                    "404",
                    "503",
                )
            },
            "/admin/destinations/{destination_id}/requests": {
                "get": _admin(
                    "The destination inspector: the last requests sent to a destination, newest first",
                    [
                        _path("destination_id"),
                        _query(
                            "limit", {"type": "string", "description": "a whole number from 1 to 1000 (default 50)"}
                        ),
                    ],
                    {
                        "type": "object",
                        "required": ["destination_id", "requests"],
                        "properties": {
                            "destination_id": {"type": "string"},
                            "requests": {"type": "array", "items": exchange},
                        },
                    },
                    "400",
                    "404",
                    "503",
                )
            },
            "/admin/dlq/{destination_id}": {
                "get": _admin(
                    "A destination's dead letters, newest first",
                    [
                        _path("destination_id"),
                        _query("event", {"type": "string"}),
                        _query("reason", {"type": "string"}),
                        _query("since", _TIME),
                        _query("until", _TIME),
                        _query("limit", _LIMIT),
                    ],
                    {
                        "type": "object",
                        "required": ["destination_id", "dead_letters"],
                        "properties": {"destination_id": {"type": "string"}, "dead_letters": {"type": "array"}},
                    },
                    "400",
                    "404",
                    "503",
                )
            },
            "/admin/dlq/{destination_id}/replay": {
                "post": _admin(
                    "Send dead letters back to a delivery queue (as `trackpipe dlq replay`)",
                    [_path("destination_id")],
                    replay_ok,
                    "400",
                    "404",
                    "503",
                    requestBody={"required": False, "content": {"application/json": {"schema": replay_body}}},
                )
            },
            "/healthz": {
                "get": {
                    "summary": "process alive",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object", "properties": {"status": {"type": "string"}}}, "alive")
                    },
                }
            },
        },
    }
