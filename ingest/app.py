"""The edge application.

`/events` and `/events/batch` (also with a trailing slash) are served by a plain ASGI handler in front
of Starlette: they are the hot path, and Starlette's routing and Request objects cost a third of its
ceiling. The handler takes `POST` (JSON events), `GET /events` (the Pixel Tracking API: the event in
the query, a GIF back) and `OPTIONS` (CORS preflights). Everything else (health, readiness, metrics,
OpenAPI) is ordinary Starlette. The admin API is not here: it is the console's (`console/`, its own
process).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote_plus

import msgspec
from redis.asyncio import Redis as AsyncRedis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest import metrics, pixel
from ingest.body import ClientDisconnected, body_arrived, content_coding, parse_content_length, read_body
from ingest.client import TrustedProxies, apply_ip_mode, client_address, scrub_event_ip, user_agent
from ingest.commit import GroupCommitter, StorageUnavailable
from ingest.cors import NOBODY, CorsPolicy, preflight
from ingest.openapi import spec
from ingest.problems import Problem, RequestRejected, invalid, too_large, unsupported
from ingest.sharding import ShardWriter, route
from ingest.store import AsyncIngestStore, RedisPyCommands
from ingest.unauthorized import AuthFailure, UnauthorizedSample
from ingest.validate import MAX_BATCH_BYTES, MAX_EVENT_BYTES, check_batch, check_event
from ingest.wire import WireConnection
from trackpipe.auth import KeyRing
from trackpipe.config import Config, SourceConfig
from trackpipe.connection import async_client
from trackpipe.keys import UNKNOWN_SITE_BUCKET, KeyLayout
from trackpipe.messages import IngestRecord
from trackpipe.shards import Shard, shards

log = logging.getLogger("trackpipe.edge")

SINGLE_ROUTE = "/events"
BATCH_ROUTE = "/events/batch"
PIXEL_SAMPLE_ROUTE = "GET /events"
# Served paths -> the route they are (and are counted as): a trailing slash changes nothing.
INGEST_PATHS = {
    SINGLE_ROUTE: SINGLE_ROUTE,
    SINGLE_ROUTE + "/": SINGLE_ROUTE,
    BATCH_ROUTE: BATCH_ROUTE,
    BATCH_ROUTE + "/": BATCH_ROUTE,
}
METHODS = {SINGLE_ROUTE: ("POST", "GET", "OPTIONS"), BATCH_ROUTE: ("POST", "OPTIONS")}
ALLOW = {route: [(b"allow", ", ".join(methods).encode())] for route, methods in METHODS.items()}
OK_BODY = b'{"status":"ok"}'
BACKLOG_POLL_SECONDS = 1.0
WWW_AUTHENTICATE = [(b"www-authenticate", b'Bearer realm="trackpipe"')]
REDIS_TIMEOUTS = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
WIRE_TIMEOUTS = {"connect_timeout": 2.0, "timeout": 5.0}

_json = msgspec.json.Encoder()


class BatchAnswer(msgspec.Struct):
    status: str
    accepted: int
    rejected: list[Any]


def error_body(reason: str) -> bytes:
    return _json.encode({"status": "error", "error": reason})


def parse_query(raw: bytes) -> dict[str, str]:
    """First value of each query parameter (the edge only reads `tc_s` and `token`); names and values
    percent-decoded (`tc%5Fs` is `tc_s`, as for the vendor)."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name, errors="replace")
        if "%" in value or "+" in value:
            value = unquote_plus(value, errors="replace")
        out.setdefault(name, value)
    return out


def redacted_query(raw: bytes) -> bytes:
    """The query without its `token` (a sample of a refused pixel hit must not hold the key)."""
    kept = [p for p in raw.split(b"&") if parse_query(p.partition(b"=")[0]).keys() != {"token"}]
    return b"&".join(kept)


def bearer_key(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def is_json_content_type(header: str | None) -> bool:
    if header is None:
        return False
    return header.split(";", 1)[0].strip().lower() == "application/json"


class RequestHeaders(msgspec.Struct):
    content_type: str | None = None
    content_encoding: str | None = None
    content_length: str | None = None
    authorization: str | None = None
    user_agent: bytes | None = None  # decoded only when a record is stored
    origin: str | None = None
    forwarded: str | None = None
    x_forwarded_for: str | None = None

    @classmethod
    def of(cls, raw: list[tuple[bytes, bytes]]) -> RequestHeaders:
        found = dict(raw)  # one C call; the few lookups below are then cheap
        if len(found) != len(raw):
            return cls._of_repeated(raw)  # a header line repeated: some of them are joined
        get = found.get
        content_type = get(b"content-type")
        encoding = get(b"content-encoding")
        length = get(b"content-length")
        authorization = get(b"authorization")
        origin = get(b"origin")
        forwarded = get(b"forwarded")
        x_forwarded_for = get(b"x-forwarded-for")
        return cls(
            None if content_type is None else content_type.decode("latin-1"),
            None if encoding is None else encoding.decode("latin-1"),
            None if length is None else length.decode("latin-1"),
            None if authorization is None else authorization.decode("latin-1"),
            get(b"user-agent"),
            None if origin is None else origin.decode("latin-1"),
            None if forwarded is None else forwarded.decode("latin-1"),
            None if x_forwarded_for is None else x_forwarded_for.decode("latin-1"),
        )

    @classmethod
    def _of_repeated(cls, raw: list[tuple[bytes, bytes]]) -> RequestHeaders:
        """Line by line: the last of a repeated header wins, except the forwarding chains, which join."""
        headers = cls()
        for name, value in raw:
            if name == b"content-type":
                headers.content_type = value.decode("latin-1")
            elif name == b"content-encoding":
                headers.content_encoding = value.decode("latin-1")
            elif name == b"content-length":
                headers.content_length = value.decode("latin-1")
            elif name == b"authorization":
                headers.authorization = value.decode("latin-1")
            elif name == b"user-agent":
                headers.user_agent = value
            elif name == b"origin":
                headers.origin = value.decode("latin-1")
            elif name == b"x-forwarded-for":  # several header lines make one list (RFC 9110 5.3)
                text = value.decode("latin-1")
                before = headers.x_forwarded_for
                headers.x_forwarded_for = text if before is None else f"{before},{text}"
            elif name == b"forwarded":
                text = value.decode("latin-1")
                before = headers.forwarded
                headers.forwarded = text if before is None else f"{before},{text}"
        return headers


def header_value(raw: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    for name, value in raw:
        if name == wanted:
            return value.decode("latin-1")
    return None


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
JSON_HEADER = (b"content-type", b"application/json")


# The plain 200 of a stored request, built once (uvicorn only reads the messages it is sent).
_OK_HEADERS = [JSON_HEADER, (b"content-length", str(len(OK_BODY)).encode())]
_OK_START = {"type": "http.response.start", "status": 200, "headers": _OK_HEADERS}
_OK_END = {"type": "http.response.body", "body": OK_BODY}


async def respond(send: Callable, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON answer; `extra` may name another content type (the GIF), which then replaces JSON's."""
    if body is OK_BODY and not extra:
        await send(_OK_START)
        await send(_OK_END)
        return
    if status == 204 or (extra and extra[0][0] == b"content-type"):
        headers = list(extra)
    else:
        headers = [JSON_HEADER, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The collector's first generation runs every 700 net allocations of containers by default: every
# ~75 requests, each time walking every object the 64-odd requests in flight hold, and now and then
# the whole heap (~60,000 objects of imported modules), 5-10 µs per request in all. What a request
# allocates is freed by reference counting; at 10,000 the collector runs only when something grows.
GC_GEN0_THRESHOLD = 10_000
_gc_default: tuple[int, int, int] | None = None


def tune_gc() -> None:
    """At the edge's start: the heap built so far (modules, config) is frozen out of the collector's
    walks, and its first generation runs less often (GC_GEN0_THRESHOLD)."""
    global _gc_default
    if _gc_default is None:
        _gc_default = gc.get_threshold()
        gc.collect()  # garbage frozen now would never be freed
        gc.freeze()
        gc.set_threshold(max(GC_GEN0_THRESHOLD, _gc_default[0]), *_gc_default[1:])


def untune_gc() -> None:
    global _gc_default
    if _gc_default is not None:
        gc.set_threshold(*_gc_default)
        gc.unfreeze()
        _gc_default = None


class Edge:
    """State shared by the ingest handler and the Starlette routes of one edge process."""

    def __init__(
        self,
        config: Config,
        *,
        async_redis: Callable[[], AsyncRedis] | None = None,
        shard_redis: Callable[[Shard], AsyncRedis] | None = None,
        redis_py_writes: bool = False,
    ) -> None:
        """`async_redis` makes the client of every shard (in-process tests on one server), `shard_redis`
        the client of a given shard; by default each shard's client is made from its redis_url."""
        self.config = config
        self.layout = KeyLayout(config.key_prefix)
        self.keyring = KeyRing(config.sources)
        self.known_sites = {s.site_id for s in config.sources}
        self.cors = CorsPolicy(config.sources)
        self.trusted = TrustedProxies(config.edge.trusted_proxies)
        self.strict = config.edge.status_mode == "strict"
        self.retry_after = [(b"retry-after", str(config.edge.retry_after_seconds).encode())]
        self._async_redis = async_redis
        self._shard_redis = shard_redis
        self._redis_py_writes = redis_py_writes  # for in-process tests on fakeredis
        self.shard_list = shards(config)
        # One writer per shard, the home shard first; a source's writer is looked up once per request.
        self.writers: dict[str, ShardWriter] = {}
        self._writer_of: dict[str, ShardWriter] = {}
        # The home shard's (what belongs to no source: refused-key samples).
        self.redis: AsyncRedis | None = None
        self.store: AsyncIngestStore | None = None
        self.committer: GroupCommitter | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Apply a re-read config's sources and keys (SIGHUP): key rotation without a restart.
        Other settings need a restart; a changed one is named in the log."""
        keyring = KeyRing(config.sources)  # built first: a failure here changes nothing
        cors = CorsPolicy(config.sources)
        names = [shard.name for shard in self.shard_list]
        before = {source_id: writer.name for source_id, writer in self._writer_of.items()}
        routes = route(names, config.sources)
        writer_of = {source_id: self.writers[name] for source_id, name in routes.items()} if self.writers else {}
        self.keyring = keyring
        self.cors = cors
        self.known_sites = {s.site_id for s in config.sources}
        self._writer_of = writer_of
        for name in ("redis_url", "key_prefix", "edge", "worker", "shards"):
            if getattr(config, name) != getattr(self.config, name):
                log.warning("config reload: %s changed; it takes effect only after a restart", name)
        self._log_moves(before, routes, config)
        self.config = msgspec.structs.replace(self.config, sources=config.sources)
        keys = sum(len(s.keys) for s in config.sources)
        log.info("config reloaded: %d sources, %d keys", len(config.sources), keys)

    def _log_moves(self, before: dict[str, str], after: dict[str, str], config: Config) -> None:
        """Say where a reload sent a source's events when that changed (a move between running shards
        takes effect at once) or differs from what the new config asks (its shard is not running)."""
        wanted = {source.id: source.shard for source in config.sources}
        for source_id, name in after.items():
            if wanted.get(source_id) is not None and wanted[source_id] != name:
                log.warning(
                    "config reload: source %s: shard %s is not running at this edge until a restart; "
                    "its events go to shard %s",
                    source_id,
                    wanted[source_id],
                    name,
                )
            if source_id in before and before[source_id] != name:
                log.warning(
                    "config reload: source %s moved from shard %s to shard %s: its new events go to %s; "
                    "what %s holds is still delivered by that shard's workers",
                    source_id,
                    before[source_id],
                    name,
                    name,
                    before[source_id],
                )

    def _client(self, shard: Shard) -> AsyncRedis:
        if self._shard_redis is not None:
            return self._shard_redis(shard)
        if self._async_redis is not None:
            return self._async_redis()
        return async_client(shard.redis_url, **REDIS_TIMEOUTS)

    def _wire_timeouts(self) -> dict[str, float]:
        """A write may wait up to replica_timeout_ms in WAITAOF: that is not a lost connection."""
        edge = self.config.edge
        extra = edge.replica_timeout_ms / 1000 if edge.min_replicas else 0.0
        return {**WIRE_TIMEOUTS, "timeout": WIRE_TIMEOUTS["timeout"] + extra}

    def _writer(self, shard: Shard) -> ShardWriter:
        """A shard's client, write connection, store and group committer. Each store does its own
        WAITAOF (edge.min_replicas counts the replicas of the shard written to)."""
        redis = self._client(shard)
        commands: WireConnection | RedisPyCommands
        if self._redis_py_writes:
            commands = RedisPyCommands(redis)
        else:
            commands = WireConnection(shard.redis_url, **self._wire_timeouts())
        edge = self.config.edge
        store = AsyncIngestStore(
            commands,
            self.layout,
            edge.unauthorized_ring_size,
            self.config.worker,
            max_events=edge.commit_max_events,
            min_replicas=edge.min_replicas,
            replica_timeout_ms=edge.replica_timeout_ms,
        )
        committer = GroupCommitter(
            store.write,
            max_events=edge.commit_max_events,
            interval_seconds=edge.commit_interval_ms / 1000,
            min_events=edge.commit_min_events,
            on_write=metrics.observe_commit,
            name=shard.name if len(self.shard_list) > 1 else "",
        )
        return ShardWriter(shard.name, redis, commands, store, committer)

    async def start(self) -> None:
        tune_gc()
        self.writers = {shard.name: self._writer(shard) for shard in self.shard_list}
        home = next(iter(self.writers.values()))
        self.redis, self.store, self.committer = home.redis, home.store, home.committer
        routes = route(list(self.writers), self.config.sources)
        self._writer_of = {source_id: self.writers[name] for source_id, name in routes.items()}
        if len(self.writers) > 1:
            counts = {name: sum(1 for n in routes.values() if n == name) for name in self.writers}
            log.info("shards: %s", ", ".join(f"{name} ({n} sources)" for name, n in counts.items()))
        self._monitor = asyncio.get_running_loop().create_task(self._watch_backlog())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._stopping = True
            # One cancel is not enough on 3.11: a cancel that lands as a Redis reply arrives can be
            # swallowed inside redis-py's wait_for, and the poll loop would carry on.
            while not self._monitor.done():
                self._monitor.cancel()
                await asyncio.wait({self._monitor}, timeout=0.1)
        for writer in self.writers.values():
            await writer.committer.drain()
            writer.close()
        metrics.flush()
        for writer in self.writers.values():
            await writer.redis.aclose()
        untune_gc()

    async def _watch_backlog(self) -> None:
        """Keep each shard's backlog figure fresh even when no writes happen (e.g. while refusing)."""
        queue_key = self.layout.queue("ingest")
        writers = list(self.writers.values())

        async def poll(writer: ShardWriter) -> None:
            try:
                writer.committer.backlog = int(await writer.redis.llen(queue_key))
                metrics.BACKLOG.labels(writer.name).set(writer.committer.backlog)
            except Exception as exc:  # Redis down: writes will say so; keep watching
                log.debug("backlog poll of shard %s failed: %s", writer.name, exc)

        while not self._stopping:
            metrics.flush()
            if len(writers) == 1:
                await poll(writers[0])
            else:  # side by side: a shard that hangs does not hold up the others' figures
                await asyncio.gather(*(poll(w) for w in writers))
            await asyncio.sleep(BACKLOG_POLL_SECONDS)

    # -- the hot path ----------------------------------------------------------------------

    async def handle_ingest(self, scope: dict[str, Any], receive: Callable, send: Callable, route: str) -> None:
        method = scope["method"]
        headers = RequestHeaders.of(scope["headers"])
        if method == "POST" or (method == "GET" and route == SINGLE_ROUTE):
            received_at = time.time_ns() // 1_000_000
            query = parse_query(scope.get("query_string", b""))
            site_id = query.get("tc_s") or None
            key = query.get("token") or bearer_key(headers.authorization)
            source = self.keyring.resolve(site_id, key)
            failure: AuthFailure | None = None
            if source is None:
                failure = (
                    AuthFailure.MISSING_KEY
                    if not key
                    else AuthFailure.MISSING_SITE
                    if not site_id
                    else AuthFailure.UNKNOWN_KEY
                )
                metrics.UNAUTHORIZED.labels(failure.value).inc()
            if method == "POST":
                status, body, extra = await self._ingest(
                    scope, receive, headers, route == BATCH_ROUTE, source, site_id, failure, received_at
                )
            else:
                status, body, extra = await self._pixel(scope, headers, source, site_id, failure, received_at)
            if headers.origin is not None and status:
                extra = self._cors_headers(headers.origin, source, site_id, extra)
        elif method == "OPTIONS":
            status, body, extra = self._options(scope, route)
        else:
            methods = " or ".join(METHODS[route][:-1])
            status, body, extra = 405, error_body(f"method not allowed: use {methods}"), ALLOW[route]
            if headers.origin is not None:
                site_id = parse_query(scope.get("query_string", b"")).get("tc_s") or None
                extra = self._cors_headers(headers.origin, None, site_id, extra)
        if status:
            metrics.count_request(route, status)
            await respond(send, status, body, extra)

    def _cors_headers(
        self, origin: str, source: SourceConfig | None, site_id: str | None, extra: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """`extra` plus the CORS headers of an allowed origin: the source's list when the key is good,
        else the site's (so that a page can read even a refusal)."""
        origins = self.cors.for_source(source.id) if source is not None else self.cors.for_site(site_id) or NOBODY
        granted = origins.answer(origin)
        return [*extra, *granted] if granted else extra

    def _options(self, scope: dict[str, Any], route: str) -> Answer:
        """A CORS preflight (contract §2), or a plain OPTIONS (the allowed methods)."""
        raw = scope["headers"]
        origin = header_value(raw, b"origin")
        method = header_value(raw, b"access-control-request-method")
        if origin is None or method is None:
            return 204, b"", ALLOW[route]
        site_id = parse_query(scope.get("query_string", b"")).get("tc_s") or None
        verdict = preflight(
            self.cors, site_id, origin, method, header_value(raw, b"access-control-request-headers"), METHODS[route]
        )
        if verdict.refusal is not None:
            return verdict.status, error_body(verdict.refusal), verdict.headers
        return verdict.status, b"", verdict.headers

    async def _ingest(
        self,
        scope: dict[str, Any],
        receive: Callable,
        headers: RequestHeaders,
        batch: bool,
        source: SourceConfig | None,
        site_id: str | None,
        failure: AuthFailure | None,
        received_at: int,
    ) -> Answer:
        json_type = is_json_content_type(headers.content_type)
        # The source's shard, as the request found it (a reload while the body arrives moves nothing).
        writer = self._writer_of.get(source.id) if source is not None else None
        try:
            if failure is not None and self.strict:
                # Refused before the body is read: unauthenticated traffic costs little.
                raise RequestRejected(Problem.UNAUTHORIZED, failure.value)
            if not json_type and self.strict:
                raise unsupported(f"Content-Type must be application/json, got {headers.content_type!r}")
            if self._backlog_full(writer):
                return 503, error_body("ingest backlog is full, retry later"), self.retry_after
            limit = MAX_BATCH_BYTES if batch else MAX_EVENT_BYTES
            content_length = parse_content_length(headers.content_length)
            gzip = content_coding(headers.content_encoding)
            try:
                if body_arrived(receive):  # nothing to wait for: no timer (a tenth of a request's CPU)
                    body = await read_body(receive, limit=limit, content_length=content_length, gzip=gzip)
                else:
                    # The handler only awaits here, so a slow body holds a coroutine, never the loop.
                    async with asyncio.timeout(self.config.edge.body_timeout_seconds):
                        body = await read_body(receive, limit=limit, content_length=content_length, gzip=gzip)
            except TimeoutError:
                raise RequestRejected(
                    Problem.BODY_TIMEOUT,
                    f"body not received within {self.config.edge.body_timeout_seconds:g} s",
                ) from None
            try:
                if batch:
                    checked = check_batch(body)
                    events, rejected = checked.accepted, checked.rejected
                else:
                    events, rejected = [check_event(body)], []
            except RequestRejected as refused:
                if json_type:
                    raise
                # compat takes JSON whatever its declared type (sendBeacon sends text/plain); what is
                # not JSON gets the usual 400, saying what it was declared as.
                raise unsupported(f"{refused.reason} (sent as Content-Type {headers.content_type!r})") from None
        except RequestRejected as refused:
            status = refused.problem.status("strict" if self.strict else "compat")
            # A refused request's body may still be on its way (refused before or while reading it):
            # close the connection, or uvicorn keeps it (and its slot) while the client sends.
            extra = [*(WWW_AUTHENTICATE if status == 401 else ()), (b"connection", b"close")]
            return status, error_body(refused.reason), extra
        except ClientDisconnected:
            return 0, b"", []
        if source is None:
            route = BATCH_ROUTE if batch else SINGLE_ROUTE
            self._sample(site_id or "", failure or AuthFailure.MISSING_KEY, received_at, route, body)
            if batch:
                return 200, _json.encode(BatchAnswer("ok", 0, [])), []
            return 200, OK_BODY, []
        status, extra, why = await self._store(scope, headers, source, writer, site_id or "", received_at, events)
        metrics.count_events(source.id, "rejected", len(rejected))
        if status != 200:
            return status, error_body(why), extra
        if batch:
            return 200, _json.encode(BatchAnswer("ok", len(events), rejected)), extra
        return 200, OK_BODY, extra

    async def _pixel(
        self,
        scope: dict[str, Any],
        headers: RequestHeaders,
        source: SourceConfig | None,
        site_id: str | None,
        failure: AuthFailure | None,
        received_at: int,
    ) -> Answer:
        """`GET /events`, the Pixel Tracking API: the event is in the query (ingest/pixel.py); the answer is
        a 1x1 GIF. Same keys, size limit and status modes as a POST; compat answers the GIF even to a bad
        key or a query that makes no event, strict the same JSON errors as a POST."""
        raw = scope.get("query_string", b"")
        event = b""
        writer = self._writer_of.get(source.id) if source is not None else None
        try:
            if failure is not None and self.strict:
                raise RequestRejected(Problem.UNAUTHORIZED, failure.value)
            if len(raw) > MAX_EVENT_BYTES:
                raise too_large(f"query of {len(raw)} bytes is over the limit of {MAX_EVENT_BYTES} bytes")
            if self._backlog_full(writer):
                return 503, error_body("ingest backlog is full, retry later"), self.retry_after
            try:
                event = pixel.event_from_query(raw).event
            except pixel.PixelError as exc:
                raise invalid(f"query is not an event: {exc}") from None
            if len(event) > MAX_EVENT_BYTES:
                raise too_large(f"event of {len(event)} bytes is over the limit of {MAX_EVENT_BYTES} bytes")
        except RequestRejected as refused:
            if self.strict:
                status = refused.problem.status("strict")
                return status, error_body(refused.reason), list(WWW_AUTHENTICATE if status == 401 else ())
            if source is not None:
                metrics.count_events(source.id, "rejected", 1)
                return 200, pixel.GIF, list(pixel.GIF_HEADERS)
        if source is None:  # compat: a missing or unknown key is counted and sampled, as for a POST
            sample = event or redacted_query(raw)
            self._sample(site_id or "", failure or AuthFailure.MISSING_KEY, received_at, PIXEL_SAMPLE_ROUTE, sample)
            return 200, pixel.GIF, list(pixel.GIF_HEADERS)
        status, extra, why = await self._store(scope, headers, source, writer, site_id or "", received_at, [event])
        if status != 200:
            return status, error_body(why), extra
        return 200, pixel.GIF, [*pixel.GIF_HEADERS, *extra]

    def _backlog_full(self, writer: ShardWriter | None) -> bool:
        """Over edge.max_backlog on the source's own shard (a full shard refuses only its sources)."""
        return writer is not None and writer.committer.backlog > self.config.edge.max_backlog

    def _sample(self, site_id: str, failure: AuthFailure, received_at: int, route: str, body: bytes) -> None:
        """compat mode: a missing/unknown key gets 200, its events are only counted and sampled."""
        if self.committer is not None:
            bucket = site_id if site_id in self.known_sites else UNKNOWN_SITE_BUCKET
            self.committer.add_sample(UnauthorizedSample.of(bucket, failure, received_at, route, body))

    def _client_ip(self, scope: dict[str, Any], headers: RequestHeaders, source: SourceConfig) -> str | None:
        """The client's address as the source keeps it (ingest/client.py); the peer's by default."""
        mode = source.ip_mode
        if mode == "drop":
            return None
        peer = scope.get("client")
        address = client_address(peer[0] if peer else None, headers.forwarded, headers.x_forwarded_for, self.trusted)
        if mode == "keep" and address is not None and not address.startswith("::ffff:"):
            return address  # the peer as the socket reports it: already a plain address
        return apply_ip_mode(address, mode)

    async def _store(
        self,
        scope: dict[str, Any],
        headers: RequestHeaders,
        source: SourceConfig,
        writer: ShardWriter | None,
        site_id: str,
        received_at: int,
        events: list[bytes],
    ) -> tuple[int, list[tuple[bytes, bytes]], str]:
        """Stores the request's accepted events (one IngestRecord, through the group commit of the
        source's shard): (200, [], "") once stored, (503, Retry-After, why) when storage failed."""
        if events:
            assert writer is not None, "edge not started"
            if source.ip_mode != "keep":  # an address the event carries goes the way of the client's
                events = [scrub_event_ip(e, source.ip_mode) for e in events]
            record = IngestRecord(
                source.id,
                site_id,
                received_at,
                events,
                self._client_ip(scope, headers, source),
                user_agent(headers.user_agent),
            )
            try:
                await writer.committer.submit(record)
            except StorageUnavailable as failed:
                metrics.count_events(source.id, "unavailable", len(events))
                return 503, self.retry_after, failed.public_reason()
        metrics.count_events(source.id, "accepted", len(events))
        return 200, [], ""

    # -- the other routes ------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready while a shard answers. With several shards, one that does not is named
        (`degraded`, still 200): every edge sees the same shards, so taking the edges out of a
        load balancer would refuse the sources of the healthy shards too; the lost shard's
        sources get 503 from their writes meanwhile."""
        writers = list(self.writers.values())
        assert writers, "edge not started"

        async def ping(writer: ShardWriter) -> str | None:
            try:
                await asyncio.wait_for(writer.redis.ping(), timeout=2.0)
            except Exception as exc:
                return type(exc).__name__
            return None

        problems = await asyncio.gather(*(ping(w) for w in writers))
        down = [(w.name, p) for w, p in zip(writers, problems, strict=True) if p is not None]
        if not down:
            return JSONResponse({"status": "ready"})
        if len(writers) == 1:
            error = f"redis unreachable: {down[0][1]}"
        else:
            error = "redis unreachable: " + ", ".join(f"shard {name} ({problem})" for name, problem in down)
        if len(down) < len(writers):
            return JSONResponse({"status": "degraded", "error": error, "unreachable": [n for n, _ in down]})
        return JSONResponse(
            {"status": "error", "error": error},
            status_code=503,
            headers={"Retry-After": str(self.config.edge.retry_after_seconds)},
        )

    async def metrics(self, request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(spec())


class EdgeApp:
    """ASGI entry: ingest routes go straight to the edge, the rest to Starlette."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await edge.start()
            try:
                yield
            finally:
                await edge.stop()

        self.starlette = Starlette(
            routes=[
                Route("/healthz", edge.healthz),
                Route("/readyz", edge.readyz),
                Route("/metrics", edge.metrics),
                Route("/openapi.json", edge.openapi),
            ],
            lifespan=lifespan,
        )

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            route = INGEST_PATHS.get(scope["path"])
            if route is not None:
                await self.edge.handle_ingest(scope, receive, send, route)
                return
        await self.starlette(scope, receive, send)


def create_app(config: Config, **redis_factories: Any) -> EdgeApp:
    return EdgeApp(Edge(config, **redis_factories))


def create_app_from_env() -> EdgeApp:
    """uvicorn factory for `trackpipe edge --workers N`: the config comes from TRACKPIPE_CONFIG."""
    from trackpipe.config import load_from
    from trackpipe.logs import setup_logging

    setup_logging()
    return create_app(load_from(None))
