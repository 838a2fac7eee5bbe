"""The admin API (docs/CONTRACT.md §9), behind `Authorization: Bearer <admin_token>`.

- GET  /admin/sources                                                every source: events per status, duplicates
- GET  /admin/sources/{source_id}/events?limit=&status=&test_code=   the live event inspector
- GET  /admin/refused?site=&limit=                                   requests refused for their key, per site
- GET  /admin/shards                                                 every shard: reachable, backlog, its sources
- GET  /admin/destinations/{destination_id}/delivery                 counts, error details, trend
- GET  /admin/destinations/{destination_id}/requests?limit=          the destination inspector
- GET  /admin/dlq/{destination_id}?event=&reason=&since=&until=&limit=
- POST /admin/dlq/{destination_id}/replay   body: {"to", "dry_run", "event", "reason", "since", "until", "limit"}
- GET  /healthz, GET /openapi.json (no token)

With several shards (`[[shards]]`) the console holds a client per shard and answers with their union:
a source's inspector is read from the shard its events go to, its counters summed over every shard;
destinations' counters, DLQs and last requests are summed or merged over every shard; refused
requests, sessions and alerts live on the home shard (the first).

It runs in its own process (`trackpipe console`), so its work never competes with ingestion. Every
Redis call is a blocking redis-py call made on a thread: a DLQ listing may read and decode
`dlq.max_events` records, and the event loop must stay free to answer meanwhile.

Inspector records are stored with the IP already masked and without keys. The inspector merges into
them the deliveries that ended in a dead-letter queue (`destinations[d] = "FAILED"`, reason in
`failures[d]`) and those a destination skipped (`"FILTERED"`, reason in `failures[d]` too).
Refused-request samples never held the key's parameter or header; keys a producer put in the body
are masked before they are served (trackpipe.queries.mask_keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from redis import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from console import web
from console.openapi import spec
from trackpipe.config import Config
from trackpipe.connection import sync_client
from trackpipe.keys import DESTINATION_REQUESTS_KEPT, HISTORY_FIELDS, INGEST_QUEUE, UNKNOWN_SITE_BUCKET, KeyLayout
from trackpipe.logs import masked_url
from trackpipe.sharded import connect
from trackpipe.shards import assignment

if TYPE_CHECKING:
    from trackpipe.dlq import Selection
    from trackpipe.queries import DeliveryFailure

# trackpipe.dlq and trackpipe.queries import RQ, which reads its key prefix once, at import: they are
# imported where used, after create_app has bound the config's prefix.

log = logging.getLogger("trackpipe.console")

MAX_LIMIT = 1_000
TREND_MINUTES = 60
# The delivery counters, as the destination page and its history read them.
OUTCOMES = HISTORY_FIELDS
STATUSES = {"VALID", "INVALID_ACCEPTED", "INVALID_REJECTED", "DUPLICATE"}
# Statuses of events that went to destinations (only those can have FAILED for one).
SENT_STATUSES = {"VALID", "INVALID_ACCEPTED"}
REFUSED_DEFAULT_LIMIT = "20"
# Bounded connect; reads may be long (a whole DLQ), but not endless.
REDIS_TIMEOUTS = {"socket_connect_timeout": 3.0, "socket_timeout": 30.0}
_json = msgspec.json.Encoder()


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    to: str | None = None
    dry_run: bool = False
    event: str | None = None
    reason: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int | None = None


def error(status: int, reason: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="trackpipe-admin"'} if status == 401 else None
    return JSONResponse({"status": "error", "error": reason}, status_code=status, headers=headers)


def raw_json(data: bytes) -> Response:
    return Response(data, media_type="application/json")


def _limit(request: Request, default: str = "100") -> int | Response:
    text = request.query_params.get("limit", default)
    # isascii: str.isdigit also accepts digits such as "²" that int() refuses; the length check
    # keeps int() away from its 4,300-digit limit.
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not 1 <= int(text) <= MAX_LIMIT:
        return error(400, f"limit: {text!r} is not a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _failures_by_event(failures: list[DeliveryFailure]) -> dict[str, list[DeliveryFailure]]:
    """Event id -> its failures, newest first (the list is)."""
    by_event: dict[str, list[DeliveryFailure]] = {}
    for failure in failures:
        by_event.setdefault(failure.event_id, []).append(failure)
    return by_event


def merge_failures(record: dict[str, Any], failures: list[DeliveryFailure]) -> bool:
    """Mark the record's destinations whose delivery was dead-lettered as FAILED (or that skipped
    the event as FILTERED), with the reason in `failures`; the newest failure per destination wins.
    True if the record changed. A failure of another event with the same id (a reused id, received
    at another time) is not this one's."""
    if record.get("status") not in SENT_STATUSES:
        return False
    destinations = record.get("destinations")
    if not isinstance(destinations, dict):
        return False
    shown: dict[str, Any] = {}
    for failure in failures:
        if failure.received_at is not None and failure.received_at != record.get("received_at"):
            continue
        if failure.destination_id in shown:
            continue
        shown[failure.destination_id] = {"reason": failure.reason, "at": failure.at}
        destinations[failure.destination_id] = failure.status  # FAILED, or FILTERED by the destination
    if not shown:
        return False
    record["failures"] = shown
    return True


def _with_shard(raw: bytes, shard: str) -> bytes:
    """A stored dead letter (a JSON object) with `"shard"` added."""
    body = raw.rstrip()
    if not body.endswith(b"}"):
        return raw
    return body[:-1] + b',"shard":' + _json.encode(shard) + b"}"


def _counts(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in sorted(raw.items())}


def _selection(event: str | None, reason: str | None, since: str | None, until: str | None) -> Selection:
    from trackpipe import dlq

    return dlq.Selection(
        event_name=event,
        reason_contains=reason,
        since_ms=dlq.parse_time(since, "since") if since else None,
        until_ms=dlq.parse_time(until, "until") if until else None,
    )


Endpoint = Callable[[Request], Awaitable[Response]]


class Console:
    """The admin API over one config and a blocking Redis client per shard (their pools are
    thread-safe); `redis` is the home shard's (the only one without `[[shards]]`)."""

    def __init__(self, config: Config, redis: Redis | None = None) -> None:
        self.config = config
        self._token = config.admin_token.encode() if config.admin_token else None
        self.layout = KeyLayout(config.key_prefix)
        self.sharded = connect(config, redis or sync_client(config.redis_url, **REDIS_TIMEOUTS), **REDIS_TIMEOUTS)
        self.redis = self.sharded.home

    def close(self) -> None:
        self.sharded.close()

    def of_source(self, source_id: str) -> Redis:
        """The client of the shard holding source_id's events."""
        return self.sharded.of_source(source_id).redis

    def authorized(self, request: Request) -> Response | None:
        """None when the request carries the admin token; the 401 answer otherwise."""
        if self._token is None:
            return error(401, "the admin API is off: no admin_token in the config")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
            return error(401, "missing or wrong admin token")
        return None

    def routes(self) -> list[Route]:
        return [
            Route("/admin/sources", self.guard(self.sources)),
            Route("/admin/sources/{source_id}/events", self.guard(self.inspector)),
            Route("/admin/refused", self.guard(self.refused)),
            Route("/admin/shards", self.guard(self.shards)),
            Route("/admin/destinations/{destination_id}/delivery", self.guard(self.delivery)),
            Route("/admin/destinations/{destination_id}/requests", self.guard(self.destination_requests)),
            Route("/admin/dlq/{destination_id}", self.guard(self.dlq_list)),
            Route("/admin/dlq/{destination_id}/replay", self.guard(self.dlq_replay), methods=["POST"]),
            Route("/healthz", self.healthz),
            Route("/openapi.json", self.openapi),
        ]

    def guard(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            refused = self.authorized(request)
            if refused is not None:
                return refused
            try:
                return await endpoint(request)
            except (OSError, RedisError) as exc:  # Redis unreachable, timed out, or refusing writes
                return error(503, f"storage unavailable: {type(exc).__name__}")

        return guarded

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(spec())

    # -- inspector --------------------------------------------------------------------------

    async def inspector(self, request: Request) -> Response:
        source_id = request.path_params["source_id"]
        if source_id not in {s.id for s in self.config.sources}:
            return error(404, f"no source {source_id!r}")
        limit = _limit(request)
        if isinstance(limit, Response):
            return limit
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            return error(400, f"status: {status!r} is not one of {', '.join(sorted(STATUSES))}")
        test_code = request.query_params.get("test_code")
        counts, picked = await asyncio.to_thread(self._inspector_pick, source_id, limit, status, test_code)
        head = {"source_id": source_id, "counts": counts, "duplicates": counts.get("DUPLICATE", 0)}
        return raw_json(_json.encode(head)[:-1] + b',"events":[' + b",".join(picked) + b"]}")

    def _inspector_pick(
        self, source_id: str, limit: int, status: str | None, test_code: str | None
    ) -> tuple[dict[str, int], list[bytes]]:
        """The source's status counts, and its newest records that match, failures merged in."""
        from trackpipe.queries import decode_failures, decode_records, newest_first

        pipe = self.of_source(source_id).pipeline(transaction=False)
        pipe.hgetall(self.layout.source_stats(source_id))
        pipe.lrange(self.layout.inspector(source_id), 0, -1)
        pipe.lrange(self.layout.inspector_tests(source_id), 0, -1)
        pipe.lrange(self.layout.inspector_failures(source_id), 0, -1)
        stats, raw, tests, failed = pipe.execute()
        # Events with a test_code are kept in a list of their own (workers.inspector).
        if test_code is not None:
            raw = tests
        elif tests:
            raw = [_json.encode(r) for r in newest_first(decode_records(raw), decode_records(tests))]
        failures = _failures_by_event(decode_failures(failed))
        picked: list[bytes] = []
        for item in raw:
            if status is not None or test_code is not None or failures:
                record = msgspec.json.decode(item)
                if status is not None and record.get("status") != status:
                    continue
                if test_code is not None and record.get("test_code") != test_code:
                    continue
                of_event = failures.get(record.get("event_id"))
                if of_event and merge_failures(record, of_event):
                    item = _json.encode(record)
            picked.append(item)
            if len(picked) >= limit:
                break
        return _counts(stats), picked

    # -- sources and refused requests -----------------------------------------------------------

    async def sources(self, request: Request) -> Response:
        return JSONResponse({"sources": await asyncio.to_thread(self._sources_view)})

    def _sources_view(self) -> list[dict[str, Any]]:
        from trackpipe.queries import combine_sources, source_statuses

        settings = {s.id: s for s in self.config.sources}
        shard_of = assignment(self.config)
        return [
            {
                "id": found.id,
                "site_id": settings[found.id].site_id,
                "processed": found.processed,
                "duplicates": found.duplicates,
                "by_status": found.by_status,
                "dedup": settings[found.id].dedup,
                "dedup_window_seconds": settings[found.id].dedup_window_seconds or self.config.dedup.window_seconds,
                "shard": shard_of[found.id],
            }
            for found in combine_sources([source_statuses(self.config, c.redis) for c in self.sharded])
        ]

    async def shards(self, request: Request) -> Response:
        return JSONResponse({"shards": await asyncio.to_thread(self._shards_view)})

    def _shards_view(self) -> list[dict[str, Any]]:
        """Every shard: whether it answers, its ingest backlog, and the sources whose events go to it."""
        shard_of = assignment(self.config)
        found = []
        for i, client in enumerate(self.sharded):
            row: dict[str, Any] = {
                "name": client.name,
                "url": masked_url(client.shard.redis_url),
                "home": i == 0,
                "sources": sorted(s for s, name in shard_of.items() if name == client.name),
            }
            try:
                backlog = int(client.redis.llen(self.layout.queue(INGEST_QUEUE)))
                row |= {"reachable": True, "backlog": backlog, "error": None}
            except (OSError, RedisError) as exc:
                row |= {"reachable": False, "backlog": None, "error": f"storage unavailable: {type(exc).__name__}"}
            found.append(row)
        return found

    async def refused(self, request: Request) -> Response:
        limit = _limit(request, REFUSED_DEFAULT_LIMIT)
        if isinstance(limit, Response):
            return limit
        site = request.query_params.get("site")
        if site is not None and site != UNKNOWN_SITE_BUCKET and site not in {s.site_id for s in self.config.sources}:
            return error(404, f"site: no source has site id {site!r} (other sites are under {UNKNOWN_SITE_BUCKET!r})")
        return raw_json(await asyncio.to_thread(self._refused_view, limit, site))

    def _refused_view(self, limit: int, site: str | None) -> bytes:
        from trackpipe.queries import refused_sites

        return _json.encode({"sites": refused_sites(self.config, self.redis, limit, site)})

    # -- delivery view ----------------------------------------------------------------------

    async def delivery(self, request: Request) -> Response:
        destination_id = request.path_params["destination_id"]
        if destination_id not in {d.id for d in self.config.destinations}:
            return error(404, f"no destination {destination_id!r}")
        return JSONResponse(await asyncio.to_thread(self._delivery_view, destination_id))

    def _delivery_view(self, destination_id: str) -> dict[str, Any]:
        now_minute = int(time.time() // 60)
        minutes = list(range(now_minute - TREND_MINUTES + 1, now_minute + 1))
        per_minute: list[dict[bytes, int]] = [{} for _ in minutes]
        errors: dict[bytes, int] = {}
        last_seen: dict[bytes, int] = {}
        dlq_size = 0
        for client in self.sharded:  # each shard's workers count their own deliveries: summed
            pipe = client.redis.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(self.layout.destination_stats(destination_id, minute))
            pipe.hgetall(self.layout.destination_errors(destination_id))
            pipe.hgetall(self.layout.destination_errors_last(destination_id))
            pipe.llen(self.layout.dlq(destination_id))
            *shard_minutes, shard_errors, shard_last, shard_dlq = pipe.execute()
            for held, counts in zip(per_minute, shard_minutes, strict=True):
                for key, value in counts.items():
                    held[key] = held.get(key, 0) + int(value)
            for kind, n in shard_errors.items():
                errors[kind] = errors.get(kind, 0) + int(n)
            for kind, at in shard_last.items():
                last_seen[kind] = max(last_seen.get(kind, 0), int(at))
            dlq_size += int(shard_dlq)
        totals: dict[str, int] = {}
        trend = []
        for minute, counts in zip(minutes, per_minute, strict=True):
            decoded = {k.decode(): int(v) for k, v in counts.items()}
            for key, value in decoded.items():
                totals[key] = totals.get(key, 0) + value
            if decoded:
                trend.append({"minute": minute * 60, **decoded})
        details = sorted(
            (
                {"reason": kind.decode(), "count": int(count), "last_seen": int(last_seen.get(kind, 0))}
                for kind, count in errors.items()
            ),
            key=lambda d: -d["count"],
        )
        return {
            "destination_id": destination_id,
            "last_hour": {k: totals.get(k, 0) for k in OUTCOMES},
            "dlq": int(dlq_size),
            "errors": details,
            "trend": trend,
        }

    # -- destination inspector --------------------------------------------------------------

    async def destination_requests(self, request: Request) -> Response:
        """The last requests sent to the destination (or built, in a dry run), newest first; the
        worker masked the destination's secrets before storing them."""
        destination_id = request.path_params["destination_id"]
        if destination_id not in {d.id for d in self.config.destinations}:
            return error(404, f"no destination {destination_id!r}")
        limit = _limit(request, str(DESTINATION_REQUESTS_KEPT))
        if isinstance(limit, Response):
            return limit
        key = self.layout.destination_requests(destination_id)
        stored = await asyncio.to_thread(self._requests, key, limit)
        body = b'{"destination_id":' + _json.encode(destination_id) + b',"requests":[' + b",".join(stored) + b"]}"
        return raw_json(body)

    def _requests(self, key: str, limit: int) -> list[bytes]:
        """The newest `limit` entries of a destination inspector, merged over the shards."""
        from trackpipe.queries import newest_requests

        per_shard = [c.redis.lrange(key, 0, limit - 1) for c in self.sharded]
        return per_shard[0] if len(per_shard) == 1 else newest_requests(per_shard, limit)

    # -- dead letters -----------------------------------------------------------------------

    async def dlq_list(self, request: Request) -> Response:
        from trackpipe import dlq

        destination_id = request.path_params["destination_id"]
        limit = _limit(request)
        if isinstance(limit, Response):
            return limit
        query = request.query_params
        try:
            dlq.check_destination(self.config, destination_id, "destination")
            selection = _selection(query.get("event"), query.get("reason"), query.get("since"), query.get("until"))
        except dlq.DlqError as exc:
            return error(404 if "no destination" in str(exc) else 400, str(exc))
        picked = await asyncio.to_thread(self._dlq_pick, destination_id, selection, limit)
        body = b'{"destination_id":' + _json.encode(destination_id) + b',"dead_letters":[' + b",".join(picked) + b"]}"
        return raw_json(body)

    def _dlq_pick(self, destination_id: str, selection: Selection, limit: int) -> list[bytes]:
        from trackpipe import dlq

        picked = dlq.select_union(self.sharded, self.layout, destination_id, selection, limit)
        if not self.config.shards:
            return [raw for _, raw, _ in picked]
        # Several shards: each record as stored, with the shard holding it.
        return [_with_shard(raw, shard) for shard, raw, _ in picked]

    async def dlq_replay(self, request: Request) -> Response:
        from trackpipe import dlq

        destination_id = request.path_params["destination_id"]
        try:
            ask = msgspec.json.decode(await request.body() or b"{}", type=ReplayRequest)
        except msgspec.DecodeError as exc:
            return error(400, f"body: {exc}")
        try:
            dlq.check_destination(self.config, destination_id, "destination")
            target = ask.to or destination_id
            dlq.check_destination(self.config, target, "to")
            selection = _selection(ask.event, ask.reason, ask.since, ask.until)
        except dlq.DlqError as exc:
            return error(404 if "destination:" in str(exc) else 400, str(exc))
        if ask.limit is not None and not 1 <= ask.limit <= 1_000_000:
            return error(400, "limit: must be from 1 to 1000000")
        # RQ is synchronous: the replay runs on a thread like every other Redis call here.
        try:
            return JSONResponse(await asyncio.to_thread(self._replay, destination_id, target, selection, ask))
        except dlq.DlqError as exc:
            return error(409, str(exc))

    def _replay(self, destination_id: str, target: str, selection: Selection, ask: ReplayRequest) -> dict[str, Any]:
        from trackpipe import dlq

        if ask.dry_run:
            chosen = list(dlq.select_union(self.sharded, self.layout, destination_id, selection, ask.limit))
            return {"status": "ok", "dry_run": True, "would_replay": len(chosen), "to": target}
        # Under the DLQ's replay lock (on every shard): a replay running from the pages must not send
        # the same letters. Each letter goes back to a delivery queue on its own shard.
        with dlq.exclusive_replay_union(self.sharded, self.layout, destination_id) as renew:
            chosen = list(dlq.select_union(self.sharded, self.layout, destination_id, selection, ask.limit))
            replayed = dlq.replay_union(
                self.sharded, self.config, destination_id, chosen, target, progress=lambda *_: renew()
            )
        return {"status": "ok", "replayed": replayed, "to": target}


class ConsoleApp(Starlette):
    """The console's ASGI app; `console` is the Console behind it."""

    console: Console


def create_app(config: Config, redis: Redis | None = None) -> ConsoleApp:
    console = Console(config, redis)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if console._token is None:
            log.warning("no admin_token in the config: every admin route answers 401")
        # Alert rules are checked from the console process, on a thread of their own.
        from console.alerting import Evaluator

        evaluator = Evaluator(config, console.redis, shards=[c.redis for c in console.sharded])
        evaluator.start()
        try:
            yield
        finally:
            await asyncio.to_thread(evaluator.stop)
            console.close()

    app = ConsoleApp(
        routes=console.routes() + web_routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: web.forbidden},
    )
    app.console = console
    return app


def web_routes() -> list[BaseRoute]:
    """The pages (console/pages/), sign-in, and the static files they use."""
    from console.pages import PAGE_MODULES

    routes: list[BaseRoute] = [
        Route("/login", web.login, methods=["GET", "POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=web.HERE / "static"), name="static"),
    ]
    for module in PAGE_MODULES:
        routes += module.ROUTES
    return routes
