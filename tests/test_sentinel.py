"""Connecting through Redis Sentinel: the URL form, its errors, and the clients (redis-py's, sync
and async, and the edge's own wire connection) following a promotion without a restart; the real
edge through a failover, with a primary, a replica and three sentinels from the embedded wheel."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
import redis

from ingest.wire import WireConnection, WireError
from tests.support import (
    TEST_KEY,
    config_text,
    kill_group,
    poll_until,
    running_edge,
    start_worker,
    stop_worker,
    stored_events,
)
from tooling.harness import file_ids
from tooling.replicated import Replicated, replicated
from trackpipe.config import ConfigError, parse
from trackpipe.connection import (
    ConnectionConfigError,
    SentinelTarget,
    async_client,
    check_redis_url,
    parse_sentinel_url,
    sync_client,
)

JSON = {"content-type": "application/json"}
AUTH = {"tc_s": "29", "token": TEST_KEY}


# -- the URL --------------------------------------------------------------------------------------


def test_a_sentinel_url_names_its_sentinels_service_and_db() -> None:
    target = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/2")
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)),
        service="mymaster",
        db=2,
        password="s3cret",
    )
    valkey = parse_sentinel_url("valkey+sentinel://user:pw@[::1]:5000/svc")
    assert valkey == SentinelTarget(sentinels=(("::1", 5000),), service="svc", db=0, username="user", password="pw")
    assert parse_sentinel_url("redis+sentinel://h:1/svc/").db == 0


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel:///mymaster", "no sentinel hosts"),
        ("redis+sentinel://:pw@/mymaster", "no sentinel hosts"),
        ("redis+sentinel://h:26379", "no service name"),
        ("redis+sentinel://h:26379/", "no service name"),
        ("redis+sentinel://h:26379//0", "no service name"),
        ("redis+sentinel://h:port/mymaster", "bad port"),
        ("redis+sentinel://h:0/mymaster", "bad port"),
        ("redis+sentinel://h:70000/mymaster", "bad port"),
        ("redis+sentinel://h:1,,h:2/mymaster", "empty sentinel address"),
        ("redis+sentinel://:1/mymaster", "has no host"),
        ("redis+sentinel://h:1/mymaster/x", "bad db 'x'"),
        ("redis+sentinel://h:1/mymaster/-1", "bad db '-1'"),
        ("redis+sentinel://h:1/mymaster/0/extra", "too many path parts"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        parse_sentinel_url(url)
    assert str(info.value).startswith("redis_url: ")
    assert problem in str(info.value)
    assert check_redis_url(url) == [str(info.value)]


def test_the_password_is_never_in_an_error() -> None:
    problems = check_redis_url("redis+sentinel://:hunter2-secret@h:bad/mymaster")
    assert problems and "bad port" in problems[0]
    assert "hunter2-secret" not in problems[0]


def test_the_config_accepts_a_sentinel_url_and_refuses_a_bad_one() -> None:
    good = config_text("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0")
    assert parse(good, env={}).redis_url.startswith("redis+sentinel://")
    assert parse(good.replace("redis+sentinel", "valkey+sentinel"), env={})
    with pytest.raises(ConfigError) as info:
        parse(config_text("redis+sentinel://127.0.0.1:26379"), env={})
    assert "redis_url: no service name" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse(config_text("http://127.0.0.1:6379"), env={})
    assert "redis_url:" in str(info.value)


def test_plain_urls_still_make_plain_clients() -> None:
    client = sync_client("redis://127.0.0.1:1/3", socket_timeout=1)
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert type(client.connection_pool) is redis.ConnectionPool


# -- real servers through a failover -----------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path):
    with replicated(tmp_path / "replicated") as running:
        yield running


def _write_until_it_works(write, what: str, timeout: float = 60.0) -> None:
    """Write until a write succeeds (the first ones after a failover may fail: that is allowed)."""

    def attempt() -> bool:
        try:
            write()
        except (redis.RedisError, WireError, OSError):
            return False
        return True

    poll_until(attempt, timeout, what, interval=0.2)


@pytest.mark.slow
def test_clients_follow_a_promotion_without_a_restart(layout: Replicated) -> None:
    url = layout.url()
    client = sync_client(url, socket_connect_timeout=2, socket_timeout=5)
    wire = WireConnection(url, connect_timeout=2.0, timeout=5.0)

    async def scenario() -> None:
        try:
            await steps()
        finally:
            wire.close()  # on the loop its streams belong to

    async def steps() -> None:
        aclient = async_client(url, socket_connect_timeout=2, socket_timeout=5)
        client.set("sync-before", "1")
        await wire.execute([("SET", "wire-before", "1")])
        await aclient.set("async-before", "1")
        with layout.client(layout.primary_port) as primary:
            assert primary.mget("sync-before", "wire-before", "async-before") == [b"1", b"1", b"1"]
            primary.wait(1, 10_000)  # on the replica too, so the promoted one holds them

        old = layout.kill_primary()
        new = layout.wait_promoted(old)

        # The very same client objects: each reconnects to whatever the sentinels now name.
        _write_until_it_works(lambda: client.set("sync-after", "2"), "the sync client never wrote to the new primary")
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                await wire.execute([("SET", "wire-after", "2")])
                await aclient.set("async-after", "2")
                break
            except (redis.RedisError, WireError, OSError):
                assert asyncio.get_running_loop().time() < deadline, (
                    "the wire or async client never wrote after the promotion"
                )
                await asyncio.sleep(0.2)
        await aclient.aclose()

        with layout.client(new) as primary:
            assert primary.mget("sync-after", "wire-after", "async-after") == [b"2", b"2", b"2"]
            assert primary.mget("sync-before", "wire-before", "async-before") == [b"1", b"1", b"1"]

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def _marker(raw: bytes) -> str:
    return json.loads(raw)["context"]["event_id"]


@pytest.mark.slow
def test_the_edge_through_a_failover_loses_nothing_it_answered_200_for(layout: Replicated, tmp_path: Path) -> None:
    config_path = tmp_path / "trackpipe.toml"
    config_path.write_text(config_text(layout.url()))
    accepted: list[str] = []
    statuses: list[int] = []

    def post(marker: str) -> int:
        body = json.dumps({"event_name": "page_view", "context": {"event_id": marker}}).encode()
        try:
            status = httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=body, timeout=15).status_code
        except httpx.HTTPError:
            status = 0  # no answer: not acknowledged, so not counted as accepted
        statuses.append(status)
        if status == 200:
            accepted.append(marker)
        return status

    with running_edge(config_path) as base:
        for i in range(20):
            assert post(f"before-{i}") == 200
        with layout.client(layout.primary_port) as primary:
            # min_replicas = 0 acknowledges before replication: wait for it here, so that what this
            # test checks is the failover itself, not the window that setting leaves open.
            assert primary.wait(1, 10_000) == 1

        old = layout.kill_primary()
        stop = threading.Event()
        counter = iter(range(1_000_000))

        def load() -> None:
            while not stop.is_set():
                post(f"during-{next(counter)}")

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            new = layout.wait_promoted(old)
            before = len(accepted)
            poll_until(lambda: len(accepted) >= before + 20, 60, "the edge did not answer 200 after the promotion")
        finally:
            stop.set()
            thread.join(timeout=30)
        for i in range(20):
            assert post(f"after-{i}") == 200

    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    # The first writes after the kill go to a dead primary (the sentinels wait 1 s before acting).
    assert 503 in statuses
    with layout.client(new) as primary:
        stored = [_marker(raw) for _, _, raw in stored_events(primary)]
    missing = set(accepted) - set(stored)
    assert not missing, f"{len(missing)} events answered 200 are not on the new primary: {sorted(missing)[:10]}"
    assert len(stored) == len(set(stored))  # nothing written twice by the edge itself
    assert {f"before-{i}" for i in range(20)} <= set(stored)
    assert {f"after-{i}" for i in range(20)} <= set(stored)


@pytest.mark.slow
def test_a_worker_follows_the_promotion_without_a_restart(layout: Replicated, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    config_path = tmp_path / "trackpipe.toml"
    config_path.write_text(
        config_text(layout.url())
        + "\n[worker]\nmaintenance_interval_seconds = 1\n"
        + f'\n[[destinations]]\nid = "lake"\ntype = "file"\npath = "{lake}"\n'
    )

    def post_until_200(marker: str) -> None:
        body = json.dumps({"event_name": "page_view", "context": {"event_id": marker}}).encode()

        def accepted() -> bool:
            try:
                response = httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=body, timeout=15)
            except httpx.HTTPError:
                return False
            assert response.status_code in (200, 503), response.text
            return response.status_code == 200

        poll_until(accepted, 60, f"the edge never answered 200 for {marker}", interval=0.2)

    worker = start_worker(config_path, log=tmp_path / "worker.log")
    try:
        with running_edge(config_path) as base:
            post_until_200("w-before")
            poll_until(lambda: file_ids(lake)["w-before"], 60, "the worker did not deliver before the failover")
            with layout.client(layout.primary_port) as primary:
                primary.wait(1, 10_000)
            layout.wait_promoted(layout.kill_primary())
            post_until_200("w-after")
            poll_until(
                lambda: file_ids(lake)["w-after"],
                90,
                lambda: (
                    f"the worker did not deliver after the promotion: {(tmp_path / 'worker.log').read_text()[-2000:]}"
                ),
            )
        assert worker.poll() is None, "the worker exited instead of following the new primary"
    finally:
        stop_worker(worker)
        kill_group(worker)


def test_a_layout_whose_server_cannot_bind_its_port_fails_at_once_naming_it(tmp_path: Path) -> None:
    import socket
    import time

    from tooling.harness import free_port
    from tooling.replicated import StartFailed, start_replicated

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StartFailed, match=f"the server on port {port}"):
            start_replicated(tmp_path / "layout", ports=[port, free_port()])
        assert time.monotonic() - started < 30  # not the 60 s wait for sentinels that never come
