"""The edge as an ASGI app, in process, on fakeredis: every answer of §2 of the contract, both modes.

The app's own lifespan (Starlette's, wired by EdgeApp) is driven through the ASGI protocol, requests
go through httpx's ASGI transport (or straight ASGI messages where httpx cannot say what we need),
and what the edge stored is read back the way a worker reads it: RQ jobs on the ingest queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import pytest

from ingest.app import EdgeApp, create_app
from tests.support import (
    OTHER_KEY,
    TEST_KEY,
    batch_body,
    config_text,
    job_keys,
    sized_batch,
    sized_event,
    stored_events,
    stored_job_ids,
    stored_records,
)
from trackpipe.config import parse
from trackpipe.keys import KeyLayout

pytestmark = pytest.mark.anyio

LAYOUT = KeyLayout()
QUEUE_KEY = LAYOUT.queue("ingest")
JSON = {"content-type": "application/json"}
AUTH = {"tc_s": "29", "token": TEST_KEY}
OK = {"status": "ok"}
MODES = ["compat", "strict"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def event(marker: str) -> bytes:
    return json.dumps(
        {"event_name": "page_view", "context": {"event_id": marker}, "page": {"url": "https://x/p"}},
        separators=(",", ":"),
    ).encode()


# -- running the app ---------------------------------------------------------------------------


class Lifespan:
    """Drives the ASGI lifespan protocol of an app, as uvicorn does."""

    def __init__(self, app: EdgeApp) -> None:
        self.app = app
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.create_task(self.app(scope, self.to_app.get, self.from_app.put))
        await self.to_app.put({"type": "lifespan.startup"})
        message = await asyncio.wait_for(self.from_app.get(), 10)
        assert message["type"] == "lifespan.startup.complete", message
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.to_app.put({"type": "lifespan.shutdown"})
        message = await asyncio.wait_for(self.from_app.get(), 10)
        assert message["type"] == "lifespan.shutdown.complete", message
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


@dataclass
class Harness:
    app: EdgeApp
    client: httpx.AsyncClient
    redis: fakeredis.FakeRedis
    server: fakeredis.FakeServer
    mode: str

    async def post(
        self,
        content: bytes = b"",
        *,
        path: str = "/events",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        params = AUTH if params is None else params
        headers = JSON if headers is None else headers
        return await self.client.post(path, params=params, headers=headers, content=content)

    def events(self) -> list[tuple[str, str, bytes]]:
        return stored_events(self.redis)

    def assert_nothing_stored(self) -> None:
        assert self.redis.llen(QUEUE_KEY) == 0
        assert job_keys(self.redis) == []


class WatchedAsyncRedis(fakeredis.aioredis.FakeRedis):
    """The edge's async client, counting the backlog monitor's polls (LLEN)."""

    polls = 0
    polling = False

    async def llen(self, name: str) -> int:
        self.polling = True
        try:
            return await super().llen(name)
        finally:
            self.polling = False
            self.polls += 1


def make_app(server: fakeredis.FakeServer, mode: str = "compat", **config: Any) -> tuple[EdgeApp, list]:
    async_clients: list[WatchedAsyncRedis] = []

    def async_redis() -> WatchedAsyncRedis:
        async_clients.append(WatchedAsyncRedis(server=server))
        return async_clients[-1]

    app = create_app(
        parse(config_text("redis://127.0.0.1:1/0", mode=mode, **config)),
        async_redis=async_redis,
        redis_py_writes=True,
    )
    return app, async_clients


@contextlib.asynccontextmanager
async def running(mode: str = "compat", **config: Any) -> AsyncIterator[Harness]:
    server = fakeredis.FakeServer()
    check = fakeredis.FakeRedis(server=server)
    app, async_clients = make_app(server, mode, **config)
    async with Lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            yield Harness(app, client, check, server, mode)
        # Shut down between two backlog polls: a shutdown that lands mid-poll is its own test
        # (test_shutdown_while_the_backlog_monitor_polls), not something every test should trip on.
        monitor = async_clients[0]
        await eventually(lambda: monitor.polls >= 1 and not monitor.polling)
    check.close()


@pytest.fixture(params=MODES)
async def edge(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with running(request.param) as harness:
        yield harness


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Polls `check` until it returns something truthy (or raises AssertionError at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.01)


def assert_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status", "error"}, body
    assert body["status"] == "error"
    assert reason.lower() in body["error"].lower(), body


# -- accepted requests ------------------------------------------------------------------------


async def test_token_in_query_is_stored_as_one_ingest_job(edge: Harness) -> None:
    body = event("q-1")
    before = time.time_ns() // 1_000_000
    response = await edge.post(body)
    after = time.time_ns() // 1_000_000
    assert response.status_code == 200
    assert response.json() == OK
    assert len(stored_job_ids(edge.redis)) == 1
    [record] = stored_records(edge.redis)
    assert (record.source_id, record.site_id, record.events) == ("shop-web", "29", [body])
    assert before <= record.received_at <= after  # ms since the epoch, stamped by the edge


async def test_token_as_bearer_header(edge: Harness) -> None:
    body = event("h-1")
    response = await edge.post(body, params={"tc_s": "29"}, headers={**JSON, "authorization": f"Bearer {TEST_KEY}"})
    assert response.status_code == 200
    assert response.json() == OK
    assert edge.events() == [("shop-web", "29", body)]


async def test_bearer_scheme_is_case_insensitive(edge: Harness) -> None:
    body = event("h-2")
    response = await edge.post(body, params={"tc_s": "29"}, headers={**JSON, "authorization": f"bearer {TEST_KEY}"})
    assert response.status_code == 200
    assert edge.events() == [("shop-web", "29", body)]


async def test_each_key_stores_under_its_own_source_and_site(edge: Harness) -> None:
    first, second = event("s-29"), event("s-30")
    assert (await edge.post(first)).status_code == 200
    assert (await edge.post(second, params={"tc_s": "30", "token": OTHER_KEY})).status_code == 200
    assert sorted(edge.events()) == [("other-site", "30", second), ("shop-web", "29", first)]


async def test_json_content_type_with_charset_is_accepted(edge: Harness) -> None:
    body = event("charset")
    response = await edge.post(body, headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200
    assert response.json() == OK
    assert edge.events() == [("shop-web", "29", body)]


async def test_single_event_of_exactly_32768_bytes_is_accepted(edge: Harness) -> None:
    body = sized_event(32_768, "max")
    response = await edge.post(body)
    assert response.status_code == 200, response.text
    assert edge.events() == [("shop-web", "29", body)]


async def test_batch_of_exactly_512000_bytes_is_accepted(edge: Harness) -> None:
    body, events = sized_batch(512_000)
    response = await edge.post(body, path="/events/batch")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "accepted": len(events), "rejected": []}
    assert edge.events() == [("shop-web", "29", e) for e in events]


async def test_gzip_body_is_inflated_before_it_is_stored(edge: Harness) -> None:
    body = event("gz")
    response = await edge.post(gzip.compress(body), headers={**JSON, "content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert edge.events() == [("shop-web", "29", body)]


async def test_gzip_batch_inflating_to_exactly_the_limit_is_accepted(edge: Harness) -> None:
    body, events = sized_batch(512_000, marker="gzb")
    response = await edge.post(gzip.compress(body), path="/events/batch", headers={**JSON, "content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(events)
    assert edge.events() == [("shop-web", "29", e) for e in events]


async def test_body_arriving_in_several_chunks_is_reassembled(edge: Harness) -> None:
    body = sized_event(20_000, "chunks")

    async def chunks():
        for start in range(0, len(body), 3_000):
            yield body[start : start + 3_000]

    response = await edge.client.post("/events", params=AUTH, headers=JSON, content=chunks())
    assert response.status_code == 200, response.text
    assert edge.events() == [("shop-web", "29", body)]


async def test_batch_keeps_good_events_and_says_which_were_rejected(edge: Harness) -> None:
    good = [event("g0"), sized_event(32_768, "g3"), event("g7")]
    items = [good[0], sized_event(32_769, "big"), b"5", good[1], b'"text"', b"[1,2]", b"null", good[2]]
    response = await edge.post(batch_body(items), path="/events/batch")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "accepted": 3,
        "rejected": [
            {"index": 1, "error": "event too large"},
            {"index": 2, "error": "event is not a JSON object"},
            {"index": 4, "error": "event is not a JSON object"},
            {"index": 5, "error": "event is not a JSON object"},
            {"index": 6, "error": "event is not a JSON object"},
        ],
    }
    assert edge.events() == [("shop-web", "29", e) for e in good]


async def test_batch_with_whitespace_around_events_stores_each_event(edge: Harness) -> None:
    body = b'{"batch": [ {"event_name":"a"} ,\n\t{"event_name":"b"}\n]}'
    response = await edge.post(body, path="/events/batch")
    assert response.json() == {"status": "ok", "accepted": 2, "rejected": []}
    stored = [json.loads(e) for _, _, e in edge.events()]
    assert stored == [{"event_name": "a"}, {"event_name": "b"}]


async def test_batch_of_only_rejected_events_stores_nothing(edge: Harness) -> None:
    response = await edge.post(batch_body([b"1", sized_event(32_769)]), path="/events/batch")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "accepted": 0,
        "rejected": [{"index": 0, "error": "event is not a JSON object"}, {"index": 1, "error": "event too large"}],
    }
    edge.assert_nothing_stored()


async def test_empty_batch_is_ok_and_stores_nothing(edge: Harness) -> None:
    response = await edge.post(b'{"batch":[]}', path="/events/batch")
    assert response.json() == {"status": "ok", "accepted": 0, "rejected": []}
    edge.assert_nothing_stored()


# -- key problems ------------------------------------------------------------------------------


@dataclass
class AuthCase:
    id: str
    params: dict[str, str]
    reason: str  # AuthFailure value
    bucket: str  # where compat mode keeps the sample
    headers: dict[str, str] = field(default_factory=dict)


AUTH_CASES = [
    AuthCase("missing-key", {"tc_s": "29"}, "missing key", "29"),
    AuthCase("empty-token", {"tc_s": "29", "token": ""}, "missing key", "29"),
    AuthCase("bearer-without-key", {"tc_s": "29"}, "missing key", "29", {"authorization": "Bearer "}),
    AuthCase("basic-auth-is-no-key", {"tc_s": "29"}, "missing key", "29", {"authorization": f"Basic {TEST_KEY}"}),
    AuthCase("unknown-key", {"tc_s": "29", "token": "not-a-key-at-all"}, "unknown key", "29"),
    AuthCase("unknown-bearer-key", {"tc_s": "29"}, "unknown key", "29", {"authorization": "Bearer nope-nope-nope"}),
    AuthCase("key-of-another-site", {"tc_s": "30", "token": TEST_KEY}, "unknown key", "30"),
    AuthCase("unknown-site", {"tc_s": "999", "token": TEST_KEY}, "unknown key", "_unknown_site"),
    AuthCase("missing-tc_s", {"token": TEST_KEY}, "missing tc_s", "_unknown_site"),
    AuthCase("missing-tc_s-bearer", {}, "missing tc_s", "_unknown_site", {"authorization": f"Bearer {TEST_KEY}"}),
]


@pytest.mark.parametrize("route", ["/events", "/events/batch"])
@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
async def test_missing_or_unknown_key(edge: Harness, case: AuthCase, route: str) -> None:
    body = event(f"auth-{case.id}")
    if route == "/events/batch":
        body = batch_body([body])
    response = await edge.post(body, path=route, params=case.params, headers={**JSON, **case.headers})
    if edge.mode == "strict":
        assert_error(response, 401, case.reason)
        assert response.headers["www-authenticate"].startswith("Bearer")
        edge.assert_nothing_stored()
        return
    assert response.status_code == 200, response.text
    if route == "/events":
        assert response.json() == OK
    else:
        assert response.json() == {"status": "ok", "accepted": 0, "rejected": []}
    # Dropped: only counted and sampled for the inspector, never queued for delivery.
    counts = await eventually(lambda: edge.redis.hgetall(LAYOUT.unauthorized_count))
    assert counts == {f"{case.bucket}|{case.reason}".encode(): b"1"}
    ring = edge.redis.lrange(LAYOUT.unauthorized_ring(case.bucket), 0, -1)
    assert len(ring) == 1
    sample = json.loads(ring[0])
    assert sample["reason"] == case.reason
    assert sample["route"] == route
    assert sample["body"] == body.decode()
    assert TEST_KEY not in ring[0].decode()
    edge.assert_nothing_stored()


# -- refused requests --------------------------------------------------------------------------


def _gzip_bomb(size: int) -> bytes:
    return gzip.compress(b'{"event_name":"bomb","pad":"' + b" " * size + b'"}', 9)


@dataclass
class Refusal:
    id: str
    content: bytes
    compat: int | None  # None: compat takes it (valid JSON whatever its type; tests/test_edge_compat.py)
    strict: int
    reason: str
    path: str = "/events"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


GZ = {**JSON, "content-encoding": "gzip"}
_good_gzip = gzip.compress(event("gz-trunc"))
REFUSALS = [
    Refusal("no-content-type", event("ct"), None, 415, "Content-Type", headers={}),
    Refusal("text-plain", event("ct"), None, 415, "Content-Type", headers={"content-type": "text/plain"}),
    Refusal("form", b"a=1", 400, 415, "Content-Type", headers={"content-type": "application/x-www-form-urlencoded"}),
    Refusal("json-suffix-type", event("ct"), None, 415, "Content-Type", headers={"content-type": "text/json"}),
    Refusal("text-plain-not-json", b"event=1", 400, 415, "Content-Type", headers={"content-type": "text/plain"}),
    Refusal("event-32769", sized_event(32_769), 400, 413, "limit"),
    Refusal("event-far-too-large", sized_event(2_000_000), 400, 413, "limit"),
    Refusal("batch-512001", sized_batch(512_001)[0], 400, 413, "limit", path="/events/batch"),
    Refusal("event-gzip-bomb", _gzip_bomb(10_000_000), 400, 413, "limit", headers=GZ),
    Refusal("event-gzip-32769", gzip.compress(sized_event(32_769)), 400, 413, "limit", headers=GZ),
    Refusal("batch-gzip-512001", gzip.compress(sized_batch(512_001)[0]), 400, 413, "limit", "/events/batch", GZ),
    Refusal("batch-gzip-bomb", _gzip_bomb(50_000_000), 400, 413, "limit", "/events/batch", GZ),
    Refusal("corrupt-gzip", b"\x1f\x8b\x08\x00" + b"garbage!" * 20, 400, 400, "gzip", headers=GZ),
    Refusal("plain-json-sent-as-gzip", event("nogz"), 400, 400, "gzip", headers=GZ),
    Refusal("truncated-gzip", _good_gzip[:-6], 400, 400, "gzip", headers=GZ),
    Refusal("brotli", event("br"), 400, 415, "Content-Encoding", headers={**JSON, "content-encoding": "br"}),
    Refusal("invalid-utf8", b'{"event_name":"caf\xe9"}', 400, 400, "UTF-8"),
    Refusal("invalid-utf8-in-key", b'{"\xff\xfe":1}', 400, 400, "UTF-8"),
    Refusal("invalid-json", b'{"event_name": }', 400, 400, "JSON"),
    Refusal("trailing-garbage", b'{"event_name":"x"} {"event_name":"y"}', 400, 400, "JSON"),
    Refusal("json-array", b'[{"event_name":"x"}]', 400, 400, "not a JSON object"),
    Refusal("json-string", b'"event"', 400, 400, "not a JSON object"),
    Refusal("json-number", b"42", 400, 400, "not a JSON object"),
    Refusal("json-null", b"null", 400, 400, "not a JSON object"),
    Refusal("empty-body", b"", 400, 400, "empty"),
    Refusal("blank-body", b" \r\n\t ", 400, 400, "empty"),
    Refusal("nested-16000", b'{"a":' + b"[" * 16_000 + b"]" * 16_000 + b"}", 400, 400, "JSON"),
    Refusal("nested-objects", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, 400, 400, "JSON"),
    Refusal("batch-nested-50000", batch_body([b"[" * 50_000 + b"]" * 50_000]), 400, 400, "JSON", "/events/batch"),
    Refusal("batch-is-array", b"[" + event("x") + b"]", 400, 400, "object", "/events/batch"),
    Refusal("batch-is-string", b'"batch"', 400, 400, "object", "/events/batch"),
    Refusal("batch-not-array", b'{"batch":{"event_name":"x"}}', 400, 400, "batch", "/events/batch"),
    Refusal("batch-missing", b'{"events":[' + event("x") + b"]}", 400, 400, "batch", "/events/batch"),
    Refusal("batch-empty-body", b"", 400, 400, "empty", "/events/batch"),
    Refusal("batch-invalid-json", b'{"batch":[{"a":1},]}', 400, 400, "JSON", "/events/batch"),
    Refusal("batch-invalid-utf8", b'{"batch":[{"a":"\xc3\x28"}]}', 400, 400, "UTF-8", "/events/batch"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.id for c in REFUSALS])
async def test_refused_request(edge: Harness, case: Refusal) -> None:
    response = await edge.post(case.content, path=case.path, headers=case.headers)
    if edge.mode == "compat" and case.compat is None:  # compat takes valid JSON whatever its type
        assert response.status_code == 200, response.text
        return
    assert_error(response, case.compat if edge.mode == "compat" else case.strict, case.reason)
    edge.assert_nothing_stored()


ALLOWED = {"/events": "POST, GET, OPTIONS", "/events/batch": "POST, OPTIONS"}  # GET: the pixel (test_edge_compat)


NOT_ALLOWED = [
    (method, path)
    for path in ("/events", "/events/batch")
    for method in ("GET", "PUT", "DELETE", "HEAD")
    if (method, path) != ("GET", "/events")  # the Pixel Tracking API (test_edge_compat)
]


@pytest.mark.parametrize(("method", "path"), NOT_ALLOWED)
async def test_only_post_is_allowed_on_ingest_routes(edge: Harness, method: str, path: str) -> None:
    response = await edge.client.request(method, path, params=AUTH)
    assert response.status_code == 405
    if method != "HEAD":
        assert_error(response, 405, "POST")
    assert response.headers["allow"] == ALLOWED[path]
    edge.assert_nothing_stored()


# -- bodies httpx cannot send: raw ASGI messages ----------------------------------------------


async def asgi_post(
    app: EdgeApp, headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]], path: str = "/events"
) -> tuple[int | None, bytes]:
    """One POST as plain ASGI messages; (status or None when nothing was answered, body)."""
    inbox = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": f"tc_s=29&token={TEST_KEY}".encode(),
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }
    await app(scope, receive, send)
    if not sent:
        return None, b""
    assert sent[0]["type"] == "http.response.start"
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def chunk(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_body_longer_than_its_content_length_is_refused(edge: Harness) -> None:
    body = event("long")
    status, answer = await asgi_post(edge.app, [(b"content-length", b"10")], [chunk(body)])
    assert status == 400
    assert "Content-Length" in json.loads(answer)["error"]
    edge.assert_nothing_stored()


async def test_body_shorter_than_its_content_length_is_refused(edge: Harness) -> None:
    body = event("short")
    status, answer = await asgi_post(edge.app, [(b"content-length", b"100")], [chunk(body)])
    assert status == 400
    assert "Content-Length" in json.loads(answer)["error"]
    edge.assert_nothing_stored()


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1e3", b"\xd9\xa3"])
async def test_malformed_content_length_is_refused(edge: Harness, value: bytes) -> None:
    status, answer = await asgi_post(edge.app, [(b"content-length", value)], [chunk(event("cl"))])
    assert status == 400
    assert json.loads(answer)["status"] == "error"
    edge.assert_nothing_stored()


async def test_client_gone_mid_body_gets_no_answer_and_nothing_is_stored(edge: Harness) -> None:
    body = event("gone")
    messages = [chunk(body[:10], more=True), {"type": "http.disconnect"}]
    status, _ = await asgi_post(edge.app, [(b"content-length", str(len(body)).encode())], messages)
    assert status is None
    edge.assert_nothing_stored()


async def test_unannounced_body_over_the_limit_is_refused_while_streaming(edge: Harness) -> None:
    piece = b" " * 8_192
    messages = [chunk(b'{"event_name":"x","pad":"', more=True)] + [chunk(piece, more=True)] * 5 + [chunk(b'"}')]
    status, answer = await asgi_post(edge.app, [], messages)
    assert status == (400 if edge.mode == "compat" else 413)
    assert "limit" in json.loads(answer)["error"]
    edge.assert_nothing_stored()


# -- back-pressure and Redis outages --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_backlog_over_its_ceiling_answers_503_and_stores_nothing(mode: str) -> None:
    async with running(mode, max_backlog=5) as edge:
        filler = [f"queued-{i}".encode() for i in range(10)]
        edge.redis.rpush(QUEUE_KEY, *filler)
        await eventually(lambda: edge.app.edge.committer.backlog > 5)

        single = await edge.post(event("bp-1"))
        assert_error(single, 503, "backlog")
        assert single.headers["retry-after"] == "1"
        batch = await edge.post(batch_body([event("bp-2")]), path="/events/batch")
        assert_error(batch, 503, "backlog")
        assert batch.headers["retry-after"] == "1"
        assert edge.redis.lrange(QUEUE_KEY, 0, -1) == filler
        assert job_keys(edge.redis) == []

        # Once the backlog drains, the same request is stored.
        edge.redis.delete(QUEUE_KEY)
        body = event("bp-3")

        async def accepted() -> httpx.Response:
            while True:
                response = await edge.post(body)
                if response.status_code != 503:
                    return response
                await asyncio.sleep(0.05)

        response = await asyncio.wait_for(accepted(), 10)
        assert response.status_code == 200
        assert edge.events() == [("shop-web", "29", body)]


@pytest.mark.parametrize("mode", MODES)
async def test_redis_unreachable_answers_503_and_readyz_says_so(mode: str) -> None:
    async with running(mode) as edge:
        assert (await edge.client.get("/readyz")).status_code == 200
        edge.server.connected = False
        try:
            single = await edge.post(event("down-1"))
            batch = await edge.post(batch_body([event("down-2"), event("down-3")]), path="/events/batch")
            ready = await edge.client.get("/readyz")
        finally:
            edge.server.connected = True
        for response in (single, batch):
            assert_error(response, 503, "nothing was stored")
            assert response.headers["retry-after"] == "1"
        assert_error(ready, 503, "redis")
        assert ready.headers["retry-after"] == "1"
        edge.assert_nothing_stored()

        body = event("up-again")
        assert (await edge.post(body)).status_code == 200
        assert (await edge.client.get("/readyz")).json() == {"status": "ready"}
        assert edge.events() == [("shop-web", "29", body)]


# -- group commit --------------------------------------------------------------------------------


async def test_concurrent_requests_are_each_stored_once_in_fewer_jobs(edge: Harness) -> None:
    singles = [event(f"c-{i}") for i in range(300)]
    batches = [[event(f"cb-{i}-{j}") for j in range(3)] for i in range(30)]
    responses = await asyncio.gather(
        *(edge.post(body) for body in singles),
        *(edge.post(batch_body(b), path="/events/batch") for b in batches),
    )
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert [r.json()["accepted"] for r in responses[len(singles) :]] == [3] * len(batches)
    stored = edge.events()
    expected = singles + [e for b in batches for e in b]
    assert sorted(e for _, _, e in stored) == sorted(expected)  # each exactly once
    assert {(source, site) for source, site, _ in stored} == {("shop-web", "29")}
    jobs = stored_job_ids(edge.redis)
    assert 1 <= len(jobs) < len(responses)
    # A request's events stay together, in order, in one record.
    for batch in batches:
        positions = [stored.index(("shop-web", "29", e)) for e in batch]
        assert positions == list(range(positions[0], positions[0] + 3))


# -- lifecycle ---------------------------------------------------------------------------------


async def test_shutdown_while_the_backlog_monitor_polls() -> None:
    """SIGTERM right after start (the monitor's first LLEN in flight) must still shut the edge down.

    On Python 3.11, asyncio.wait_for (used inside redis-py and fakeredis) can swallow a cancellation
    that lands as the awaited reply arrives; the monitor must not rely on a single cancel to stop.
    """
    server = fakeredis.FakeServer()
    app, async_clients = make_app(server)
    lifespan = Lifespan(app)
    await lifespan.__aenter__()
    assert lifespan.task is not None
    await lifespan.to_app.put({"type": "lifespan.shutdown"})
    answer = asyncio.ensure_future(lifespan.from_app.get())
    try:
        done, _ = await asyncio.wait({answer}, timeout=5)
        assert done, "lifespan shutdown did not complete within 5 s: Edge.stop() is stuck on the backlog monitor"
        assert answer.result()["type"] == "lifespan.shutdown.complete"
        await asyncio.wait_for(lifespan.task, 10)
    finally:
        answer.cancel()
        monitor = app.edge._monitor
        while monitor is not None and not monitor.done():  # free the stuck task, whatever happened
            monitor.cancel()
            await asyncio.wait({monitor}, timeout=0.1)
        if not lifespan.task.done():
            await asyncio.wait({lifespan.task}, timeout=10)
        for client in async_clients:
            await client.aclose()


async def test_the_edge_tunes_the_collector_while_it_runs_and_restores_it() -> None:
    """While the edge runs, what existed at its start is frozen out of the collector's walks and
    the first generation runs less often (GC_GEN0_THRESHOLD); stopping gives both back."""
    import gc

    from ingest.app import GC_GEN0_THRESHOLD

    before = gc.get_threshold()
    async with running() as harness:
        assert gc.get_threshold()[0] >= GC_GEN0_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
        assert (await harness.post(event("gc"))).status_code == 200
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


# -- the other routes --------------------------------------------------------------------------


async def test_healthz(edge: Harness) -> None:
    response = await edge.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz(edge: Harness) -> None:
    response = await edge.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_metrics_count_answered_requests(edge: Harness) -> None:
    await edge.post(event("m-1"))
    await edge.post(b"[]")
    response = await edge.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE trackpipe_http_requests_total counter" in text
    assert 'trackpipe_http_requests_total{code="200",route="/events"}' in text
    assert 'trackpipe_http_requests_total{code="400",route="/events"}' in text
    assert 'trackpipe_edge_events_total{outcome="accepted",source="shop-web"}' in text


async def test_openapi_describes_the_ingest_routes(edge: Harness) -> None:
    response = await edge.client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    for path in ("/events", "/events/batch"):
        operation = spec["paths"][path]["post"]
        params = {p["name"]: p["in"] for p in operation["parameters"]}
        assert params == {"tc_s": "query", "token": "query"}
        assert "application/json" in operation["requestBody"]["content"]
        codes = set(operation["responses"])
        assert {"200", "400", "401", "405", "413", "415", "503"} <= codes
        for code, answer in operation["responses"].items():
            assert code.isdigit() and answer["description"]
        assert "Retry-After" in operation["responses"]["503"]["headers"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "get" in spec["paths"][path]
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    # Every $ref (if any) resolves inside the document.
    text = json.dumps(spec)
    assert "$ref" not in text or all(ref.startswith("#/") for ref in _refs(spec))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_unknown_route_is_404(edge: Harness) -> None:
    assert (await edge.client.post("/event", params=AUTH, headers=JSON, content=event("x"))).status_code == 404
    edge.assert_nothing_stored()
