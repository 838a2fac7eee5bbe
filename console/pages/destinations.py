"""Destinations: every destination's last hour and DLQ size (`/destinations`), and one destination's
delivery (`/destinations/{id}?span=hour|day|week|month`), as the vendor's event-delivery page shows it:
key figures over the span, a chart of outcomes over time, error kinds with count and last seen, FILTERED
split by consent and conditions (and what the destination itself skipped), the DLQ size with a link to
the dead-letter page, and the destination inspector's last requests. The live part refreshes by itself.

Counts come from the per-minute (last hour) and per-hour (day, week, month) counters the workers keep
(trackpipe.queries.delivery_history). Requests were stored with the destination's secrets masked; they
are masked again here (its secrets, the admin token, plain source keys) so that no page can show one.
Several shards: every figure is summed over them, and their last requests merged newest first.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.charts import stacked_bars
from console.web import Endpoint, console_of, page, render, run_blocking
from trackpipe.logs import mask, mask_values

# trackpipe.queries imports RQ, which reads its key prefix once, at import: imported where used.

NAV = ("Destinations", "/destinations")
SPANS = ("hour", "day", "week", "month")
SPAN_LABELS = {"hour": "Last hour", "day": "Last day", "week": "Last week", "month": "Last month"}
STEP_NAMES = {60: "minute", 3_600: "hour", 86_400: "day"}
LABEL_FORMATS = {"hour": "%H:%M", "day": "%H:%M", "week": "%a %H:%M", "month": "%m-%d"}
REQUESTS_SHOWN = 20
REFRESH_SECONDS = 10
# The chart's lines: outcome field -> legend.
CHART_SERIES = {
    "delivered": "delivered",
    "retried": "retried",
    "dead_lettered": "dead-lettered",
    "filtered": "filtered",
}


class Problem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Bad input answers an error page naming it; Redis down answers 503, never 500."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Problem as exc:
            return render(request, "error.html", status_code=exc.status, status=exc.status, detail=exc.detail)
        except (OSError, RedisError) as exc:
            return render(
                request, "error.html", status_code=503, status=503, detail=f"storage unavailable: {type(exc).__name__}"
            )

    return run


def _masked(text: Any, values: list[str]) -> str:
    return mask("" if text is None else str(text), values)


def _secrets_of(request: Request, destination_id: str) -> list[str]:
    from trackpipe.queries import plain_keys

    config = console_of(request).config
    found = [config.admin_token or "", *plain_keys(config)]
    for destination in config.destinations:
        if destination.id == destination_id:
            found += destination.secrets()
    return mask_values(found)


def _type_of(destination: Any) -> str:
    """The config's `type` of a destination (the tag of its settings Struct)."""
    return str(type(destination).__struct_config__.tag)


def _destination_id(request: Request) -> str:
    destination_id = request.path_params["destination_id"]
    if destination_id not in {d.id for d in console_of(request).config.destinations}:
        raise Problem(404, f"no destination {destination_id!r}")
    return destination_id


def _span(request: Request) -> str:
    span = request.query_params.get("span", "hour")
    if span not in SPANS:
        raise Problem(400, f"span: {span!r} is not one of {', '.join(SPANS)}")
    return span


# -- the list ------------------------------------------------------------------------------------------


def _list_view(request: Request) -> dict[str, Any]:
    from trackpipe.queries import combine_by_destination, last_hour_by_destination

    console = console_of(request)
    destinations = console.config.destinations
    now = time.time()
    ids = [d.id for d in destinations]
    counts = combine_by_destination(
        [last_hour_by_destination(c.redis, console.layout, ids, now) for c in console.sharded]
    )
    return {"rows": [{"id": d.id, "type": _type_of(d), **counts[d.id]} for d in destinations]}


@_guarded
async def destination_list(request: Request) -> Response:
    return render(request, "destinations.html", **await run_blocking(_list_view, request))


# -- one destination -----------------------------------------------------------------------------------


def _decode_request(raw: bytes, masks: list[str]) -> dict[str, Any] | None:
    try:
        found = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None  # a damaged entry is left out, not a 500
    if not isinstance(found, dict):
        return None
    return {
        "at": found.get("at"),
        "method": _masked(found.get("method"), masks),
        "url": _masked(found.get("url"), masks),
        "request_body": _masked(found.get("request_body"), masks),
        "events": found.get("events"),
        "status": found.get("status"),
        "response_body": _masked(found.get("response_body"), masks),
        "error": _masked(found.get("error"), masks) if found.get("error") else "",
        "dry_run": bool(found.get("dry_run")),
    }


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _destination_view(request: Request, destination_id: str, span: str) -> dict[str, Any]:
    from trackpipe.queries import combine_histories, delivery_history, newest_requests

    console = console_of(request)
    layout = console.layout
    now = time.time()
    histories = []
    errors: dict[bytes, int] = {}
    last_seen: dict[bytes, int] = {}
    dlq_size = 0
    per_shard: list[list[bytes]] = []
    for client in console.sharded:  # each shard's workers keep their own counters: summed
        histories.append(delivery_history(client.redis, layout, destination_id, span, now))
        pipe = client.redis.pipeline(transaction=False)
        pipe.hgetall(layout.destination_errors(destination_id))
        pipe.hgetall(layout.destination_errors_last(destination_id))
        pipe.llen(layout.dlq(destination_id))
        pipe.lrange(layout.destination_requests(destination_id), 0, REQUESTS_SHOWN - 1)
        shard_errors, shard_last, shard_dlq, shard_stored = pipe.execute()
        for kind, n in shard_errors.items():
            errors[kind] = errors.get(kind, 0) + int(n)
        for kind, at in shard_last.items():
            last_seen[kind] = max(last_seen.get(kind, 0), int(at))
        dlq_size += int(shard_dlq)
        per_shard.append(shard_stored)
    history = histories[0] if len(histories) == 1 else combine_histories(histories)
    stored = per_shard[0] if len(per_shard) == 1 else newest_requests(per_shard, REQUESTS_SHOWN)
    masks = _secrets_of(request, destination_id)
    error_rows = sorted(
        (
            {
                "kind": _masked(kind.decode("utf-8", "replace"), masks),
                "count": int(n),
                "last_seen": int(last_seen.get(kind, 0)),
            }
            for kind, n in errors.items()
        ),
        key=lambda row: (-row["last_seen"], -row["count"]),
    )
    requests = [r for r in (_decode_request(raw, masks) for raw in stored) if r is not None]
    totals = history.totals
    ended = totals["delivered"] + totals["dead_lettered"]  # events whose delivery ended in the span
    unit = STEP_NAMES[history.step_seconds]
    # One bar per minute, hour or day, its outcomes stacked; labelled in UTC.
    label = LABEL_FORMATS[span]
    chart = stacked_bars(
        [time.strftime(label, time.gmtime(p.at)) for p in history.points],
        {name: [float(p.counts[field]) for p in history.points] for field, name in CHART_SERIES.items()},
        x_label=f"time (UTC), per {unit}",
        y_label=f"events per {unit}",
    )
    destination = next(d for d in console.config.destinations if d.id == destination_id)
    return {
        "destination_id": destination_id,
        "destination_type": _type_of(destination),
        "consent_category": destination.consent_category,
        "has_conditions": bool(destination.sources or destination.events or destination.filters),
        "span": span,
        "spans": [(s, SPAN_LABELS[s]) for s in SPANS],
        "span_label": SPAN_LABELS[span],
        "unit": unit,
        "totals": totals,
        "delivered_share": _share(totals["delivered"], ended),
        "failed_share": _share(totals["dead_lettered"], ended),
        # Filtered before the split existed: counted in `filtered` only.
        "filtered_other": max(
            0,
            totals["filtered"] - totals["filtered_consent"] - totals["filtered_conditions"] - totals["skipped"],
        ),
        "chart": chart,
        "errors": error_rows,
        "dlq": int(dlq_size),
        "requests": requests,
        "refresh_seconds": REFRESH_SECONDS,
    }


@_guarded
async def destination_page(request: Request) -> Response:
    destination_id = _destination_id(request)
    span = _span(request)
    view = await run_blocking(_destination_view, request, destination_id, span)
    return render(request, "destination.html", **view)


@_guarded
async def destination_fragment(request: Request) -> Response:
    """The live part of the destination page, for its data-refresh element."""
    destination_id = _destination_id(request)
    span = _span(request)
    view = await run_blocking(_destination_view, request, destination_id, span)
    return render(request, "destination_live.html", **view)


ROUTES = [
    Route("/destinations", page(destination_list)),
    Route("/destinations/{destination_id}", page(destination_page)),
    Route("/destinations/{destination_id}/live", page(destination_fragment)),
]
