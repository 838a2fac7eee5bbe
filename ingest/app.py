"""The edge application.

`POST /events` and `POST /events/batch` are served by a plain ASGI handler in front of Starlette:
they are the hot path, and Starlette's routing and Request objects cost a third of its ceiling.
Everything else (health, readiness, metrics, OpenAPI) is ordinary Starlette. The admin API is not
here: it is the console's (`console/`, its own process).
"""

from __future__ import annotations

import asyncio
import contextlib
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

from ingest import metrics
from ingest.body import ClientDisconnected, content_coding, parse_content_length, read_body
from ingest.commit import GroupCommitter, StorageUnavailable
from ingest.openapi import spec
from ingest.problems import Problem, RequestRejected, unsupported
from ingest.store import AsyncIngestStore, RedisPyCommands
from ingest.unauthorized import AuthFailure, UnauthorizedSample
from ingest.validate import MAX_BATCH_BYTES, MAX_EVENT_BYTES, check_batch, check_event
from ingest.wire import WireConnection
from trackpipe.auth import KeyRing
from trackpipe.config import Config, SourceConfig
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestRecord

log = logging.getLogger("trackpipe.edge")

SINGLE_ROUTE = "/events"
BATCH_ROUTE = "/events/batch"
OK_BODY = b'{"status":"ok"}'
UNKNOWN_SITE_BUCKET = "_unknown_site"
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
    """First value of each query parameter (the edge only reads `tc_s` and `token`)."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        if "%" in value or "+" in value:
            value = unquote_plus(value, errors="replace")
        out.setdefault(name, value)
    return out


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

    @classmethod
    def of(cls, raw: list[tuple[bytes, bytes]]) -> RequestHeaders:
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
        return headers


async def respond(send: Callable, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Edge:
    """State shared by the ingest handler and the Starlette routes of one edge process."""

    def __init__(
        self,
        config: Config,
        *,
        async_redis: Callable[[], AsyncRedis] | None = None,
        redis_py_writes: bool = False,
    ) -> None:
        self.config = config
        self.layout = KeyLayout(config.key_prefix)
        self.keyring = KeyRing(config.sources)
        self.known_sites = {s.site_id for s in config.sources}
        self.strict = config.edge.status_mode == "strict"
        self.retry_after = [(b"retry-after", str(config.edge.retry_after_seconds).encode())]
        self._async_redis = async_redis or (lambda: AsyncRedis.from_url(config.redis_url, **REDIS_TIMEOUTS))
        self._redis_py_writes = redis_py_writes  # for in-process tests on fakeredis
        self._commands: WireConnection | RedisPyCommands | None = None
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
        self.keyring = keyring
        self.known_sites = {s.site_id for s in config.sources}
        for name in ("redis_url", "key_prefix", "edge", "worker"):
            if getattr(config, name) != getattr(self.config, name):
                log.warning("config reload: %s changed; it takes effect only after a restart", name)
        self.config = msgspec.structs.replace(self.config, sources=config.sources)
        keys = sum(len(s.keys) for s in config.sources)
        log.info("config reloaded: %d sources, %d keys", len(config.sources), keys)

    async def start(self) -> None:
        self.redis = self._async_redis()
        self._commands = (
            RedisPyCommands(self.redis)
            if self._redis_py_writes
            else WireConnection(self.config.redis_url, **WIRE_TIMEOUTS)
        )
        self.store = AsyncIngestStore(
            self._commands,
            self.layout,
            self.config.edge.unauthorized_ring_size,
            self.config.worker,
            max_events=self.config.edge.commit_max_events,
        )
        self.committer = GroupCommitter(
            self.store.write,
            max_events=self.config.edge.commit_max_events,
            interval_seconds=self.config.edge.commit_interval_ms / 1000,
            min_events=self.config.edge.commit_min_events,
            on_write=metrics.observe_commit,
        )
        self._monitor = asyncio.get_running_loop().create_task(self._watch_backlog())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._stopping = True
            # One cancel is not enough on 3.11: a cancel that lands as a Redis reply arrives can be
            # swallowed inside redis-py's wait_for, and the poll loop would carry on.
            while not self._monitor.done():
                self._monitor.cancel()
                await asyncio.wait({self._monitor}, timeout=0.1)
        if self.committer is not None:
            await self.committer.drain()
        if self._commands is not None:
            self._commands.close()
        metrics.flush()
        if self.redis is not None:
            await self.redis.aclose()

    async def _watch_backlog(self) -> None:
        """Keep the backlog figure fresh even when no writes happen (e.g. while refusing)."""
        assert self.redis is not None and self.committer is not None
        queue_key = self.layout.queue("ingest")
        while not self._stopping:
            try:
                metrics.flush()
                self.committer.backlog = int(await self.redis.llen(queue_key))
                metrics.BACKLOG.set(self.committer.backlog)
            except Exception as exc:  # Redis down: writes will say so; keep watching
                log.debug("backlog poll failed: %s", exc)
            await asyncio.sleep(BACKLOG_POLL_SECONDS)

    # -- the hot path ----------------------------------------------------------------------

    async def handle_ingest(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        route = scope["path"]
        batch = route == BATCH_ROUTE
        status, body, extra = await self._ingest(scope, receive, batch)
        if status:
            metrics.count_request(route, status)
            await respond(send, status, body, extra)

    async def _ingest(self, scope: dict[str, Any], receive: Callable, batch: bool):
        received_at = time.time_ns() // 1_000_000
        if scope["method"] != "POST":
            return 405, error_body("method not allowed: use POST"), [(b"allow", b"POST")]
        query = parse_query(scope.get("query_string", b""))
        headers = RequestHeaders.of(scope["headers"])
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
        try:
            if failure is not None and self.strict:
                # Refused before the body is read: unauthenticated traffic costs little.
                raise RequestRejected(Problem.UNAUTHORIZED, failure.value)
            if not is_json_content_type(headers.content_type):
                raise unsupported(f"Content-Type must be application/json, got {headers.content_type!r}")
            if source is not None and self.committer and self.committer.backlog > self.config.edge.max_backlog:
                return 503, error_body("ingest backlog is full, retry later"), self.retry_after
            try:
                # The handler only awaits here, so a slow body holds a coroutine, never the loop.
                async with asyncio.timeout(self.config.edge.body_timeout_seconds):
                    body = await read_body(
                        receive,
                        limit=MAX_BATCH_BYTES if batch else MAX_EVENT_BYTES,
                        content_length=parse_content_length(headers.content_length),
                        gzip=content_coding(headers.content_encoding),
                    )
            except TimeoutError:
                raise RequestRejected(
                    Problem.BODY_TIMEOUT,
                    f"body not received within {self.config.edge.body_timeout_seconds:g} s",
                ) from None
            if batch:
                checked = check_batch(body)
                events, rejected = checked.accepted, checked.rejected
            else:
                events, rejected = [check_event(body)], []
        except RequestRejected as refused:
            status = refused.problem.status("strict" if self.strict else "compat")
            # A refused request's body may still be on its way (refused before or while reading it):
            # close the connection, or uvicorn keeps it (and its slot) while the client sends.
            extra = [*(WWW_AUTHENTICATE if status == 401 else ()), (b"connection", b"close")]
            return status, error_body(refused.reason), extra
        except ClientDisconnected:
            return 0, b"", ()
        if source is None:
            return self._dropped(site_id or "", failure or AuthFailure.MISSING_KEY, received_at, batch, body)
        return await self._store(source, site_id or "", received_at, events, rejected, batch)

    def _dropped(self, site_id: str, failure: AuthFailure, received_at: int, batch: bool, body: bytes):
        """compat mode: a missing/unknown key gets 200, its events are only counted and sampled."""
        if self.committer is not None:
            bucket = site_id if site_id in self.known_sites else UNKNOWN_SITE_BUCKET
            self.committer.add_sample(
                UnauthorizedSample.of(bucket, failure, received_at, BATCH_ROUTE if batch else SINGLE_ROUTE, body)
            )
        if batch:
            return 200, _json.encode(BatchAnswer("ok", 0, [])), ()
        return 200, OK_BODY, ()

    async def _store(
        self,
        source: SourceConfig,
        site_id: str,
        received_at: int,
        events: list[bytes],
        rejected: list[Any],
        batch: bool,
    ):
        if events:
            assert self.committer is not None, "edge not started"
            try:
                await self.committer.submit(IngestRecord(source.id, site_id, received_at, events))
            except StorageUnavailable:
                metrics.count_events(source.id, "unavailable", len(events))
                return 503, error_body("storage unavailable, nothing was stored"), self.retry_after
        metrics.count_events(source.id, "accepted", len(events))
        metrics.count_events(source.id, "rejected", len(rejected))
        if batch:
            return 200, _json.encode(BatchAnswer("ok", len(events), rejected)), ()
        return 200, OK_BODY, ()

    # -- the other routes ------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        assert self.redis is not None
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=2.0)
        except Exception as exc:
            return JSONResponse(
                {"status": "error", "error": f"redis unreachable: {type(exc).__name__}"},
                status_code=503,
                headers={"Retry-After": str(self.config.edge.retry_after_seconds)},
            )
        return JSONResponse({"status": "ready"})

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
        if scope["type"] == "http" and scope["path"] in (SINGLE_ROUTE, BATCH_ROUTE):
            await self.edge.handle_ingest(scope, receive, send)
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
