"""The admin API (the console, `console/`) against a real valkey: inspector, delivery view, DLQ list
and replay; 401 without the admin token, and nothing leaks; the edge no longer serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
import uvicorn

from commands.console import console_server_config
from commands.serving import bind_socket
from console.app import create_app
from ingest.app import create_app as create_edge_app
from tests.support import ROOT, TEST_KEY, delivery_batches_of, poll_until, running_console, running_edge
from trackpipe.config import parse
from trackpipe.jobs import delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeadLetter, IngestBatch, IngestRecord, encode_batch, encode_dead_letter
from workers.context import WorkerContext
from workers.ingest import process_ingest

LAYOUT = KeyLayout()
ADMIN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def config_text(redis_url: str, tmp_path: Path) -> str:
    return f"""
redis_url = "{redis_url}"
admin_token = "{ADMIN}"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]
[[destinations]]
id = "crm"
type = "webhook"
url = "http://127.0.0.1:9/hook"
[[destinations]]
id = "lake"
type = "file"
path = "{tmp_path / "lake"}"
"""


def run(config_text_: str, test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """`test` against the console's ASGI app, in this process."""

    async def main() -> None:
        app = create_app(parse(config_text_))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
                await test(client)
        finally:
            app.console.close()

    asyncio.run(main())


@pytest.fixture
def filled(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> str:
    """A config whose Redis holds processed events, delivery counters and dead letters."""
    text = config_text(valkey_url, tmp_path)
    config = parse(text)
    events = [
        {
            "event_name": "sign_up",
            "user": {"id": "1", "consistent_anonymous_id": "anon-1", "consent_categories": ["1"]},
            "context": {"event_id": "a-1", "event_timestamp": 1, "device": {"ip": "203.0.113.77"}},
        },
        {"context": {"event_id": "a-2"}},  # no event_name: rejected
        {
            "event_name": "sign_up",
            "test_code": "qa-7",
            "user": {"id": "2", "consent_categories": ["1"]},
            "context": {"event_id": "a-3", "event_timestamp": 1},
        },
    ]
    payload = encode_batch(
        IngestBatch([IngestRecord("shop-web", "29", int(time.time() * 1000), [json.dumps(e).encode() for e in events])])
    )
    process_ingest(WorkerContext(config, valkey_client), valkey_client, "job-a", "trackpipe:rq:job:job-a", payload)
    minute = int(time.time() // 60)
    valkey_client.hset(LAYOUT.destination_stats("crm", minute), mapping={"delivered": 5, "retried": 2})
    valkey_client.hset(LAYOUT.destination_errors("crm"), mapping={"HTTP 500": 2})
    valkey_client.hset(LAYOUT.destination_errors_last("crm"), mapping={"HTTP 500": 1_780_000_000_000})
    for n, reason in enumerate(["HTTP 500: down", "HTTP 422: schema"]):
        body = msgspec.json.encode({"event_name": "sign_up", "context": {"event_id": f"d-{n}"}})
        record = DeadLetter(f"d-{n}", "sign_up", "crm", reason, 6, 1, 2, msgspec.Raw(body))
        valkey_client.lpush(LAYOUT.dlq("crm"), encode_dead_letter(record))
    return text


ROUTES = [
    ("GET", "/admin/sources"),
    ("GET", "/admin/sources/shop-web/events"),
    ("GET", "/admin/refused"),
    ("GET", "/admin/shards"),
    ("GET", "/admin/destinations/crm/delivery"),
    ("GET", "/admin/destinations/crm/requests"),
    ("GET", "/admin/dlq/crm"),
    ("POST", "/admin/dlq/crm/replay"),
]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}])
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_needs_the_token(filled: str, method: str, path: str, headers: dict[str, str]) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.json()["status"] == "error"
        assert "a-1" not in response.text and "d-0" not in response.text

    run(filled, test)


def test_inspector_lists_statuses_with_masked_ips_and_filters(filled: str) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        everything = (await client.get("/admin/sources/shop-web/events", headers=AUTH)).json()
        by_id = {e["event_id"]: e for e in everything["events"]}
        assert by_id["a-1"]["status"] == "VALID"
        assert by_id["a-1"]["payload"]["context"]["device"]["ip"] == "203.0.113.0"
        rejected = [e for e in everything["events"] if e["status"] == "INVALID_REJECTED"]
        assert rejected and rejected[0]["errors"] == ["event_name is missing"]
        only = await client.get("/admin/sources/shop-web/events", params={"status": "INVALID_REJECTED"}, headers=AUTH)
        assert {e["status"] for e in only.json()["events"]} == {"INVALID_REJECTED"}
        tests = await client.get("/admin/sources/shop-web/events", params={"test_code": "qa-7"}, headers=AUTH)
        assert [e["event_id"] for e in tests.json()["events"]] == ["a-3"]
        limited = await client.get("/admin/sources/shop-web/events", params={"limit": "1"}, headers=AUTH)
        assert len(limited.json()["events"]) == 1
        assert TEST_KEY not in everything.__repr__() and "203.0.113.77" not in json.dumps(everything)
        for params, status in (({"limit": "0"}, 400), ({"status": "NOPE"}, 400)):
            bad = await client.get("/admin/sources/shop-web/events", params=params, headers=AUTH)
            assert bad.status_code == status and bad.json()["status"] == "error"
        assert (await client.get("/admin/sources/nosuch/events", headers=AUTH)).status_code == 404

    run(filled, test)


def test_delivery_view_has_counts_errors_and_trend(filled: str) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        view = (await client.get("/admin/destinations/crm/delivery", headers=AUTH)).json()
        assert view["last_hour"]["delivered"] == 5 and view["last_hour"]["retried"] == 2
        assert view["last_hour"]["queued"] >= 1  # the ingest job above queued sign_up events for crm
        assert view["errors"] == [{"reason": "HTTP 500", "count": 2, "last_seen": 1_780_000_000_000}]
        assert view["dlq"] == 2
        assert any(point.get("delivered") == 5 for point in view["trend"])
        assert (await client.get("/admin/destinations/nosuch/delivery", headers=AUTH)).status_code == 404

    run(filled, test)


def test_dlq_list_and_replay(filled: str, valkey_client: redis.Redis) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        listed = (await client.get("/admin/dlq/crm", params={"reason": "422"}, headers=AUTH)).json()
        assert [d["event_id"] for d in listed["dead_letters"]] == ["d-1"]
        dry = (await client.post("/admin/dlq/crm/replay", json={"dry_run": True}, headers=AUTH)).json()
        assert dry == {"status": "ok", "dry_run": True, "would_replay": 2, "to": "crm"}
        assert valkey_client.llen(LAYOUT.dlq("crm")) == 2
        done = await client.post("/admin/dlq/crm/replay", json={"to": "lake", "reason": "500"}, headers=AUTH)
        assert done.json() == {"status": "ok", "replayed": 1, "to": "lake"}
        jobs = delivery_queue("lake", valkey_client).jobs
        replayed = [b for j in jobs for b in delivery_batches_of(valkey_client, j) if b.origin == "replay"]
        assert [e.event_id for b in replayed for e in b.events] == ["d-0"]
        assert valkey_client.llen(LAYOUT.dlq("crm")) == 1
        bad: list[tuple[Any, int]] = [
            ({"to": "nosuch"}, 400),  # a bad body field; the URL names a real DLQ
            ({"since": "yesterday"}, 400),
            ({"unknown": 1}, 400),
        ]
        for body, status in bad:
            response = await client.post("/admin/dlq/crm/replay", json=body, headers=AUTH)
            assert response.status_code == status, (body, response.text)
        missing = await client.post("/admin/dlq/nosuch/replay", json={}, headers=AUTH)
        assert missing.status_code == 404

    run(filled, test)


def test_admin_is_off_without_a_token(tmp_path: Path, valkey_url: str) -> None:
    text = config_text(valkey_url, tmp_path).replace(f'admin_token = "{ADMIN}"\n', "")

    async def test(client: httpx.AsyncClient) -> None:
        response = await client.get("/admin/dlq/crm", headers=AUTH)
        assert response.status_code == 401 and "no admin_token" in response.json()["error"]

    run(text, test)


def test_the_console_answers_healthz_and_describes_the_admin_routes(filled: str) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        spec = (await client.get("/openapi.json")).json()
        assert sorted(spec["paths"]) == sorted([path for _, path in ROUTES_TEMPLATES] + ["/healthz"])
        for method, path in ROUTES_TEMPLATES:
            assert spec["paths"][path][method.lower()]["security"] == [{"admin": []}]

    run(filled, test)


ROUTES_TEMPLATES = [
    ("GET", "/admin/sources"),
    ("GET", "/admin/sources/{source_id}/events"),
    ("GET", "/admin/refused"),
    ("GET", "/admin/shards"),
    ("GET", "/admin/destinations/{destination_id}/delivery"),
    ("GET", "/admin/destinations/{destination_id}/requests"),
    ("GET", "/admin/dlq/{destination_id}"),
    ("POST", "/admin/dlq/{destination_id}/replay"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_the_edge_no_longer_serves_the_admin_api(filled: str, method: str, path: str) -> None:
    """With the right token too: the admin API lives in the console, not on the public port."""

    async def main() -> None:
        app = create_edge_app(parse(filled))
        await app.edge.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                response = await client.request(method, path, headers=AUTH, json={})
                assert response.status_code == 404, response.text
                assert "d-0" not in response.text and "a-1" not in response.text
                assert (await client.get("/healthz")).status_code == 200
                assert "/admin" not in json.dumps((await client.get("/openapi.json")).json()["paths"])
        finally:
            await app.edge.stop()

    asyncio.run(main())


# -- a large DLQ is read off the event loop ---------------------------------------------------

BIG_DLQ = 50_000
DECODE_SECONDS = 40e-6  # the slowed-down decoder's CPU time per record


def fill_big_dlq(conn: redis.Redis, count: int = BIG_DLQ) -> None:
    """`count` dead letters of about 1 KB each for crm, none of them a `nosuch` event."""
    body = msgspec.json.encode({"event_name": "purchase", "context": {"event_id": "x"}, "pad": "p" * 900})
    pipe = conn.pipeline(transaction=False)
    for start in range(0, count, 1000):
        letters = [
            encode_dead_letter(DeadLetter(f"big-{n}", "purchase", "crm", "HTTP 500: down", 6, 1, 2, msgspec.Raw(body)))
            for n in range(start, min(count, start + 1000))
        ]
        pipe.lpush(LAYOUT.dlq("crm"), *letters)
        pipe.execute()


@contextlib.contextmanager
def console_in_thread(config_text_: str) -> Iterator[str]:
    """The console under uvicorn, as `trackpipe console` runs it, on a thread of this process (so a
    test can slow parts of it down); yields its base URL."""
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(console_server_config(parse(config_text_), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        poll_until(lambda: server.started or not thread.is_alive(), 30, "the console did not start")
        assert thread.is_alive(), "the console stopped at start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.mark.slow
def test_listing_a_large_dlq_leaves_the_console_and_the_edge_responsive(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the console scans 50,000 dead letters of ~1 KB for a filter that matches none, the
    console itself keeps answering /healthz and the edge (another process) keeps storing events,
    each in a fraction of the time the listing takes. Decoding is made slow (40 µs of CPU a record,
    as on a slow machine or with a far larger DLQ) so that the listing lasts at least 2 s: read and
    decoded on the console's event loop, it would hold its /healthz until it ended."""
    import trackpipe.dlq

    fill_big_dlq(valkey_client)
    real_decode = trackpipe.dlq.decode_dead_letter

    def slow_decode(data: bytes) -> DeadLetter:
        until = time.perf_counter() + DECODE_SECONDS
        while time.perf_counter() < until:  # CPU, holding the GIL as a real decoder does
            pass
        return real_decode(data)

    monkeypatch.setattr(trackpipe.dlq, "decode_dead_letter", slow_decode)  # what the listing decodes with
    event = json.dumps({"event_name": "page_view", "context": {"event_id": "live-1"}}).encode()
    config_file = tmp_path / "trackpipe.toml"
    config_file.write_text(config_text(valkey_url, tmp_path))
    with running_edge(config_file) as edge, console_in_thread(config_file.read_text()) as console:
        listing: dict[str, Any] = {}
        done = threading.Event()

        def list_dlq() -> None:
            started = time.monotonic()
            try:
                with httpx.Client(base_url=console, timeout=300) as client:
                    listing["response"] = client.get("/admin/dlq/crm", params={"event": "nosuch"}, headers=AUTH)
            finally:
                listing["seconds"] = time.monotonic() - started
                done.set()

        latencies: list[float] = []
        with httpx.Client(timeout=300) as client:
            assert client.get(f"{console}/healthz").status_code == 200  # connected before the listing starts
            assert client.get(f"{edge}/healthz").status_code == 200
            lister = threading.Thread(target=list_dlq)
            lister.start()
            while not done.is_set():
                sent = time.monotonic()
                if len(latencies) % 2:
                    answer = client.post(
                        f"{edge}/events",
                        params={"tc_s": "29", "token": TEST_KEY},
                        content=event,
                        headers={"Content-Type": "application/json"},
                    )
                else:
                    answer = client.get(f"{console}/healthz")
                assert answer.status_code == 200, answer.text
                latencies.append(time.monotonic() - sent)  # every one was sent while the listing ran
            lister.join(timeout=300)
    response = listing["response"]
    assert response.status_code == 200, response.text
    assert response.json() == {"destination_id": "crm", "dead_letters": []}
    seconds = listing["seconds"]
    assert seconds >= BIG_DLQ * DECODE_SECONDS  # the slow decoder really ran for every record
    assert len(latencies) >= 5, f"only {len(latencies)} requests sent during a {seconds:.1f}s listing"
    assert max(latencies) < seconds / 3, f"a request waited {max(latencies):.2f}s during a {seconds:.1f}s listing"


# -- the `trackpipe console` command ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "abc"], "argument --port: 'abc' is not a port number"),
        (["--port", "70000"], "70000 is not a port number"),
        (["--config", "/nonexistent/trackpipe.toml"], "no such config file"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_console_refuses_bad_arguments_with_exit_2(args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "console", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "TRACKPIPE_CONFIG"},
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_console_on_a_taken_port_says_so_and_exits_2(tmp_path: Path, valkey_url: str) -> None:
    config_file = tmp_path / "trackpipe.toml"
    config_file.write_text(config_text(valkey_url, tmp_path))
    with running_console(config_file) as base:
        port = base.rsplit(":", 1)[1]
        done = subprocess.run(
            [sys.executable, "-m", "commands", "console", "--config", str(config_file), "--port", port],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert httpx.get(f"{base}/healthz").status_code == 200  # the first one is unharmed
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"--port {port}" in done.stderr and "in use" in done.stderr and "Traceback" not in done.stderr
    assert ADMIN not in done.stderr


# -- duplicates per source, FAILED per destination, refused requests ---------------------------


def test_sources_and_the_inspector_count_duplicates_per_source(filled: str, valkey_client: redis.Redis) -> None:
    """A producer reusing event ids shows: the same events again are DUPLICATE, counted per source."""
    config = parse(filled)
    again = [{"event_name": "sign_up", "user": {"id": "1"}, "context": {"event_id": f"a-{n}"}} for n in (1, 3)]
    payload = encode_batch(
        IngestBatch([IngestRecord("shop-web", "29", int(time.time() * 1000), [json.dumps(e).encode() for e in again])])
    )
    process_ingest(WorkerContext(config, valkey_client), valkey_client, "job-b", "trackpipe:rq:job:job-b", payload)

    async def test(client: httpx.AsyncClient) -> None:
        inspected = (await client.get("/admin/sources/shop-web/events", headers=AUTH)).json()
        assert inspected["duplicates"] == 2
        assert inspected["counts"]["DUPLICATE"] == 2 and sum(inspected["counts"].values()) == 5
        assert [e["event_id"] for e in inspected["events"] if e["status"] == "DUPLICATE"] == ["a-3", "a-1"]
        (source,) = (await client.get("/admin/sources", headers=AUTH)).json()["sources"]
        assert source["id"] == "shop-web" and source["site_id"] == "29"
        assert (source["processed"], source["duplicates"]) == (5, 2)
        assert (source["dedup"], source["dedup_window_seconds"]) == (True, 86_400)

    run(filled, test)


def test_a_dead_lettered_delivery_shows_failed_for_its_destination(filled: str, valkey_client: redis.Redis) -> None:
    """The delivery job records the dead letter for its source in its settlement's MULTI; the
    inspector shows that destination FAILED with the reason, the others as they were."""
    from destinations.base import Rejected
    from trackpipe.types import RetryConfig
    from workers.deliver import commit_settlement, settle

    config = parse(filled)
    ctx = WorkerContext(config, valkey_client)
    (job,) = delivery_queue("crm", valkey_client).jobs
    (batch,) = delivery_batches_of(valkey_client, job)
    assert sorted(e.event_id for e in batch.events) == ["a-1", "a-3"]
    outcomes = [Rejected(f"HTTP 400: no {e.event_id} token=secret-value") for e in batch.events]
    now = time.time()
    settled = settle(batch.events, outcomes, RetryConfig(), now)
    commit_settlement(ctx, valkey_client, batch, settled, job.key, now)
    stored = [json.loads(r) for r in valkey_client.lrange(LAYOUT.inspector_failures("shop-web"), 0, -1)]
    assert {(f["event_id"], f["destination_id"]) for f in stored} == {("a-1", "crm"), ("a-3", "crm")}
    assert all("secret-value" not in f["reason"] for f in stored)

    async def test(client: httpx.AsyncClient) -> None:
        events = (await client.get("/admin/sources/shop-web/events", headers=AUTH)).json()["events"]
        by_id = {e["event_id"]: e for e in events}
        assert by_id["a-1"]["destinations"] == {"crm": "FAILED", "lake": "queued"}
        assert by_id["a-1"]["failures"]["crm"]["reason"] == "HTTP 400: no a-1 token=***"
        assert by_id["a-3"]["destinations"]["crm"] == "FAILED"
        rejected = [e for e in events if e["status"] == "INVALID_REJECTED"]
        assert rejected and all("failures" not in e for e in rejected)
        # Filters still apply to the merged records.
        only = await client.get("/admin/sources/shop-web/events", params={"test_code": "qa-7"}, headers=AUTH)
        assert [e["destinations"]["crm"] for e in only.json()["events"]] == ["FAILED"]

    run(filled, test)


def test_failures_are_merged_only_into_the_event_they_belong_to() -> None:
    from console.app import merge_failures
    from trackpipe.queries import DeliveryFailure

    def record(status: str = "VALID", received_at: int = 100) -> dict[str, Any]:
        return {"status": status, "received_at": received_at, "destinations": {"crm": "queued", "lake": "queued"}}

    newest = DeliveryFailure("e", "crm", "HTTP 422: new", 3, 100)
    older = DeliveryFailure("e", "crm", "HTTP 500: old", 2, 100)
    other_copy = DeliveryFailure("e", "lake", "disk full", 2, 999)  # the same id, received another time
    merged = record()
    assert merge_failures(merged, [newest, older, other_copy])
    assert merged["destinations"] == {"crm": "FAILED", "lake": "queued"}
    assert merged["failures"] == {"crm": {"reason": "HTTP 422: new", "at": 3}}
    for untouched in (record("DUPLICATE"), record("INVALID_REJECTED"), record(received_at=5)):
        before = json.dumps(untouched)
        assert not merge_failures(untouched, [newest])
        assert json.dumps(untouched) == before
    # An entry that does not know the receive time matches by event id alone.
    anyhow = record(received_at=5)
    assert merge_failures(anyhow, [DeliveryFailure("e", "lake", "x", 1)])
    assert anyhow["destinations"]["lake"] == "FAILED"


def test_refused_requests_are_listed_per_site_without_keys(filled: str, valkey_client: redis.Redis) -> None:
    from tests.test_status import LEAKED, store_refused

    store_refused(valkey_client)

    async def test(client: httpx.AsyncClient) -> None:
        response = await client.get("/admin/refused", headers=AUTH)
        assert response.status_code == 200, response.text
        sites = response.json()["sites"]
        assert [(s["site_id"], s["total"], s["by_reason"]) for s in sites] == [
            ("29", 2, {"unknown key": 2}),
            ("_unknown_site", 1, {"missing key": 1}),
        ]
        newest = sites[0]["latest"][0]
        assert set(newest) == {"received_at", "reason", "route", "body", "body_bytes"}
        assert (newest["route"], newest["received_at"]) == ("/events/batch", 1_700_000_001_000)
        assert '"token":"***"' in newest["body"] and "token=***" in newest["body"]
        assert LEAKED not in response.text and TEST_KEY not in response.text
        one = (await client.get("/admin/refused", params={"site": "29", "limit": "1"}, headers=AUTH)).json()
        assert [(s["site_id"], len(s["latest"])) for s in one["sites"]] == [("29", 1)]
        assert one["sites"][0]["total"] == 2
        unknown = await client.get("/admin/refused", params={"site": "_unknown_site"}, headers=AUTH)
        assert unknown.json()["sites"][0]["latest"][0]["reason"] == "missing key"
        missing = await client.get("/admin/refused", params={"site": "31"}, headers=AUTH)
        assert missing.status_code == 404 and "31" in missing.json()["error"]
        bad = await client.get("/admin/refused", params={"limit": "x"}, headers=AUTH)
        assert bad.status_code == 400 and "limit" in bad.json()["error"]

    run(filled, test)
