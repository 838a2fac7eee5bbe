"""Sources: the list with their counts, each source's live event inspector (filters, search, an
event's detail with its per-destination outcome) and its data-quality view.

The inspector keeps a bounded sample per source (workers.inspector: per event name and minute, test
events apart, rejected events always); filtering, search and paging happen here, over that sample.
Records are stored with the IP already masked; any plain source key found in a payload is masked too.

Several shards: the inspector is read from the shard the source's events go to; its counters and
quality are summed over every shard (after a move, the old shard's counts still count).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.app import STATUSES, _failures_by_event, merge_failures
from console.charts import stacked_bars
from console.web import console_of, page, render, run_blocking
from trackpipe.config import Config
from trackpipe.keys import KeyLayout

NAV = ("Sources", "/sources")
PAGE_SIZE = 50
MAX_QUERY = 200  # characters of a search or filter value
RANGES = {"24h": 24, "7d": 7 * 24, "35d": 35 * 24}  # the hourly counters are kept 35 days
ORDER = ("VALID", "INVALID_ACCEPTED", "INVALID_REJECTED", "DUPLICATE")
_json = msgspec.json.Encoder(order="sorted")


class Filters(msgspec.Struct):
    status: str = ""
    event: str = ""
    test_code: str = ""
    tests_only: bool = False
    q: str = ""
    page: int = 1

    def query(self, **change: Any) -> str:
        """This filter set as a query string (with `change` applied), for links and fragments."""
        from urllib.parse import urlencode

        values = {**msgspec.structs.asdict(self), **change}
        pairs = {k: ("1" if v is True else v) for k, v in values.items() if v not in ("", False, None)}
        if pairs.get("page") == 1:
            del pairs["page"]
        return urlencode(pairs)


class Problem(Exception):
    """A bad filter value: shown on the page with what is wrong, never a 500."""


def filters_of(request: Request) -> Filters:
    params = request.query_params
    for name in ("status", "event", "test_code", "q"):
        if len(params.get(name, "")) > MAX_QUERY:
            raise Problem(f"{name}: at most {MAX_QUERY} characters")
    status = params.get("status", "")
    if status and status not in STATUSES:
        raise Problem(f"status: {status!r} is not one of {', '.join(ORDER)}")
    raw_page = params.get("page", "1") or "1"
    if not raw_page.isdigit() or not 1 <= int(raw_page) <= 10_000:
        raise Problem(f"page: {raw_page[:20]!r} is not a page number")
    return Filters(
        status=status,
        event=params.get("event", "").strip(),
        test_code=params.get("test_code", "").strip(),
        tests_only=params.get("tests_only") in ("1", "on", "true"),
        q=params.get("q", "").strip(),
        page=int(raw_page),
    )


def digest(raw: bytes) -> str:
    """A record's handle in links: the digest of it as stored (stable while it is kept)."""
    return hashlib.sha256(raw).hexdigest()[:16]


def _mask_keys(text: str, config: Config) -> str:
    for source in config.sources:
        for key in source.keys:
            if not key.startswith("sha256:") and key in text:
                text = text.replace(key, "***")
    return text


def _source_or_none(request: Request) -> Any:
    source_id = request.path_params["source_id"]
    return next((s for s in console_of(request).config.sources if s.id == source_id), None)


def _not_found(request: Request, what: str) -> Response:
    return render(request, "error.html", status_code=404, status=404, detail=what)


def _unavailable(request: Request, exc: Exception) -> Response:
    return render(
        request, "error.html", status_code=503, status=503, detail=f"storage unavailable: {type(exc).__name__}"
    )


# --- reading ---------------------------------------------------------------------------------------


class Row(msgspec.Struct):
    handle: str
    record: dict[str, Any]


def read_rows(config: Config, layout: KeyLayout, redis: Any, source_id: str) -> tuple[dict[str, int], list[Row]]:
    """The source's status counts and every record kept, newest first, failures merged in."""
    from trackpipe.queries import inspector_lists

    lists = inspector_lists(redis, layout, source_id)
    failures = _failures_by_event(lists.failures)
    rows = []
    for raw in [*lists.ordinary, *lists.tests]:
        try:
            record = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            continue
        if not isinstance(record, dict):
            continue
        of_event = failures.get(record.get("event_id"))
        if of_event:
            merge_failures(record, of_event)
        rows.append(Row(digest(raw), record))
    rows.sort(key=lambda r: -int(r.record.get("received_at") or 0))  # stable: list order within a ms
    return lists.counts, rows


def matches(row: Row, filters: Filters) -> bool:
    record = row.record
    if filters.status and record.get("status") != filters.status:
        return False
    if filters.event and (record.get("event_name") or "") != filters.event:
        return False
    if filters.tests_only and record.get("test_code") is None:
        return False
    if filters.test_code and record.get("test_code") != filters.test_code:
        return False
    if filters.q:
        payload = record.get("payload")
        text = payload if isinstance(payload, str) else _json.encode(payload).decode()
        if filters.q.casefold() not in text.casefold():
            return False
    return True


def view_of(row: Row, config: Config) -> dict[str, Any]:
    """What a template shows of a record: payload as indented JSON, keys masked."""
    record = row.record
    payload = record.get("payload")
    shown = payload if isinstance(payload, str) else msgspec.json.format(_json.encode(payload), indent=2).decode()
    destinations = record.get("destinations") if isinstance(record.get("destinations"), dict) else {}
    failures = record.get("failures") if isinstance(record.get("failures"), dict) else {}
    outcomes = [
        {
            "id": d,
            "outcome": outcome,
            "reason": (failures.get(d) or {}).get("reason"),
            "at": (failures.get(d) or {}).get("at"),
        }
        for d, outcome in sorted(destinations.items())
    ]
    return {
        "handle": row.handle,
        "received_at": record.get("received_at"),
        "status": record.get("status") or "?",
        "event_id": record.get("event_id"),
        "event_name": record.get("event_name"),
        "test_code": record.get("test_code"),
        "warnings": [str(w) for w in record.get("warnings") or []],
        "errors": [str(e) for e in record.get("errors") or []],
        "outcomes": outcomes,
        "payload": _mask_keys(shown, config),
    }


def quality_of(console: Any, source_id: str, *, hours: int, top: int = 20) -> Any:
    """A source's data quality summed over every shard (the same hours on each)."""
    from trackpipe.queries import combine_quality, source_quality

    now_ms = time.time_ns() // 1_000_000
    found = [
        source_quality(c.redis, console.layout, source_id, hours=hours, now_ms=now_ms, top=top) for c in console.sharded
    ]
    return found[0] if len(found) == 1 else combine_quality(found, top)


# --- pages -----------------------------------------------------------------------------------------


async def sources_page(request: Request) -> Response:
    console = console_of(request)
    from trackpipe.queries import combine_sources, source_statuses

    def read() -> list[dict[str, Any]]:
        statuses = {
            s.id: s for s in combine_sources([source_statuses(console.config, c.redis) for c in console.sharded])
        }
        out = []
        for source in console.config.sources:
            quality = quality_of(console, source.id, hours=24, top=1)
            day = sum(quality.totals.values())
            invalid = quality.totals.get("INVALID_ACCEPTED", 0) + quality.totals.get("INVALID_REJECTED", 0)
            found = statuses.get(source.id)
            out.append(
                {
                    "id": source.id,
                    "site_id": source.site_id,
                    "processed": found.processed if found else 0,
                    "by_status": found.by_status if found else {},
                    "day": day,
                    "invalid_share": (100.0 * invalid / day) if day else None,
                }
            )
        return out

    try:
        sources = await run_blocking(read)
    except (OSError, RedisError) as exc:
        return _unavailable(request, exc)
    return render(request, "sources.html", sources=sources, statuses=ORDER)


async def _inspector_context(request: Request) -> dict[str, Any] | Response:
    source = _source_or_none(request)
    if source is None:
        return _not_found(request, f"no source {request.path_params['source_id']!r}")
    try:
        filters = filters_of(request)
    except Problem as exc:
        return render(request, "error.html", status_code=400, status=400, detail=str(exc))
    console = console_of(request)
    try:
        counts, rows = await run_blocking(
            read_rows, console.config, console.layout, console.of_source(source.id), source.id
        )
    except (OSError, RedisError) as exc:
        return _unavailable(request, exc)
    picked = [row for row in rows if matches(row, filters)]
    pages = max(1, -(-len(picked) // PAGE_SIZE))
    shown = picked[(filters.page - 1) * PAGE_SIZE : filters.page * PAGE_SIZE]
    return {
        "source": source,
        "filters": filters,
        "counts": counts,
        "kept": len(rows),
        "matched": len(picked),
        "pages": pages,
        "events": [view_of(row, console.config) for row in shown],
        "names": sorted({str(r.record.get("event_name")) for r in rows if r.record.get("event_name")}),
        "statuses": ORDER,
    }


async def inspector_page(request: Request) -> Response:
    context = await _inspector_context(request)
    if isinstance(context, Response):
        return context
    return render(request, "source.html", **context)


async def inspector_fragment(request: Request) -> Response:
    context = await _inspector_context(request)
    if isinstance(context, Response):
        return context
    return render(request, "source_events.html", **context)


async def event_page(request: Request) -> Response:
    source = _source_or_none(request)
    if source is None:
        return _not_found(request, f"no source {request.path_params['source_id']!r}")
    handle = request.path_params["handle"]
    console = console_of(request)
    try:
        _, rows = await run_blocking(read_rows, console.config, console.layout, console.of_source(source.id), source.id)
    except (OSError, RedisError) as exc:
        return _unavailable(request, exc)
    row = next((r for r in rows if r.handle == handle), None)
    if row is None:
        return _not_found(request, "this event is no longer kept by the inspector (newer events replaced it)")
    return render(request, "source_event.html", source=source, event=view_of(row, console.config))


async def quality_page(request: Request) -> Response:
    source = _source_or_none(request)
    if source is None:
        return _not_found(request, f"no source {request.path_params['source_id']!r}")
    span = request.query_params.get("range", "24h")
    if span not in RANGES:
        return render(
            request,
            "error.html",
            status_code=400,
            status=400,
            detail=f"range: {span[:20]!r} is not one of 24h, 7d, 35d",
        )
    console = console_of(request)
    try:
        quality = await run_blocking(quality_of, console, source.id, hours=RANGES[span])
    except (OSError, RedisError) as exc:
        return _unavailable(request, exc)
    # Hours for a day, days for longer ranges: a chart stays readable.
    step = 1 if span == "24h" else 24
    buckets: list[tuple[int, dict[str, int]]] = []
    for i in range(0, len(quality.hours), step):
        merged: dict[str, int] = {}
        for counts in quality.by_hour[i : i + step]:
            for status, n in counts.items():
                merged[status] = merged.get(status, 0) + n
        buckets.append((quality.hours[i], merged))
    unit = "hour" if step == 1 else "day"
    label_format = "%H:00" if step == 1 else "%m-%d"
    categories = [time.strftime(label_format, time.gmtime(hour * 3600)) for hour, _ in buckets]
    counts_chart = stacked_bars(
        categories,
        {s: [float(c.get(s, 0)) for _, c in buckets] for s in ORDER},
        x_label=f"{unit} (UTC)",
        y_label=f"events per {unit}",
    )
    # Shares as 100 % bars: readable from a single busy hour up (a line needs two points).
    share: dict[str, list[float]] = {s: [] for s in ORDER}
    for _, counts in buckets:
        total_of = sum(counts.values())
        for status in ORDER:
            share[status].append(100.0 * counts.get(status, 0) / total_of if total_of else 0.0)
    share_chart = stacked_bars(categories, share, x_label=f"{unit} (UTC)", y_label="share of events (%)")
    total = sum(quality.totals.values())
    return render(
        request,
        "source_quality.html",
        source=source,
        span=span,
        ranges=list(RANGES),
        totals=[
            (s, quality.totals.get(s, 0), (100.0 * quality.totals.get(s, 0) / total) if total else None) for s in ORDER
        ],
        total=total,
        share_chart=share_chart,
        counts_chart=counts_chart,
        messages=quality.messages,
    )


ROUTES = [
    Route("/sources", page(sources_page)),
    Route("/sources/{source_id}", page(inspector_page)),
    Route("/sources/{source_id}/events", page(inspector_fragment)),
    Route("/sources/{source_id}/events/{handle}", page(event_page)),
    Route("/sources/{source_id}/quality", page(quality_page)),
]
