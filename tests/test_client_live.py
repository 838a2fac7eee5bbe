"""trackpipe.client against the real edge (`trackpipe edge` under uvicorn), a real valkey-server and,
where delivery counts, a real worker writing to a `file` destination: steady sending, the exit flush,
the edge stopped and started again (memory only; with a spool, the producing process SIGKILLed
mid-outage and started again), the edge's own 503 back-pressure, and the asyncio twin."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support import (
    ROOT,
    TEST_KEY,
    config_text,
    free_port,
    poll_until,
    start_worker,
    stop_worker,
    stored_events,
    wait_for_http,
)
from tooling.harness import file_ids
from trackpipe.client import AsyncClient, Client, EventTooLarge
from trackpipe.client.spool import SpoolQueue

pytestmark = pytest.mark.slow  # real processes

FAST = {"flush_interval": 0.05, "backoff_base": 0.05, "backoff_cap": 0.5, "shutdown_timeout": 20.0}


class Edge:
    """`trackpipe edge` on a fixed port, so that it can be stopped and started again at the same URL."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "commands", "edge", "--config", str(self.config), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_http(f"{self.url}/healthz", proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def write_config(tmp_path: Path, redis_url: str, lake: Path | None = None, max_backlog: int = 20_000) -> Path:
    # commit_max_events = 10: each 10-event request is an ingest job of its own, so a few requests
    # without a worker fill a small backlog.
    text = config_text(redis_url, max_backlog=max_backlog).replace("[edge]\n", "[edge]\ncommit_max_events = 10\n")
    if lake is not None:
        text += f'\n[[destinations]]\nid = "lake"\ntype = "file"\npath = "{lake}"\n'
    path = tmp_path / "trackpipe.toml"
    path.write_text(text)
    return path


def producer(url: str, prefix: str, first: int, count: int, spool: Path | None, hang: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.client_producer", url, prefix, str(first), str(count)]
    if spool is not None:
        cmd += ["--spool", str(spool)]
    if hang:
        cmd.append("--hang")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def stored_ids(url: str) -> collections.Counter[str]:
    import msgspec

    conn = redis.Redis.from_url(url)
    try:
        return collections.Counter(msgspec.json.decode(raw)["context"]["event_id"] for _, _, raw in stored_events(conn))
    finally:
        conn.close()


def delivered(lake: Path, expected: set[str]) -> collections.Counter[str]:
    """Waits until every expected id is in the file destination, then for stragglers (duplicates)."""
    poll_until(lambda: set(file_ids(lake)) >= expected, 60, lambda: f"{len(set(file_ids(lake)) & expected)} delivered")
    return file_ids(lake)


@contextmanager
def edge_and_worker(tmp_path: Path, valkey_url: str) -> Iterator[tuple[Edge, Path]]:
    """A running edge and a worker delivering to a `file` destination (the lake, yielded with it)."""
    lake = tmp_path / "lake"
    config = write_config(tmp_path, valkey_url, lake)
    edge = Edge(config)
    edge.start()
    worker = start_worker(config)
    try:
        yield edge, lake
    finally:
        stop_worker(worker)
        edge.stop()


def test_steady_sending_and_the_exit_flush(tmp_path: Path, valkey_url: str) -> None:
    edge = Edge(write_config(tmp_path, valkey_url))
    edge.start()
    try:
        with Client(edge.url, "29", TEST_KEY, **{**FAST, "flush_at": 200}) as client:
            ids = [client.track("page_view", {"n": i}, user={"consistent_anonymous_id": "s"}) for i in range(2_000)]
            with pytest.raises(EventTooLarge, match="32,768"):
                client.track("page_view", {"pad": "a" * 40_000})
            assert client.flush(timeout=30)
            stats = client.stats
        assert (stats.accepted, stats.rejected, stats.failed, stats.dropped) == (2_000, 0, 0, 0)
        assert stats.requests < 2_000 / 100  # batched
        # A process that tracks and exits without close(): the exit flush sends everything.
        proc = producer(edge.url, "exit", 0, 300, None, hang=False)
        assert proc.communicate(timeout=60)[0] == "tracked\n" and proc.returncode == 0
        found = stored_ids(valkey_url)
    finally:
        edge.stop()
    assert {i: found[i] for i in ids} == dict.fromkeys(ids, 1)
    assert [found[f"exit-{i}"] for i in range(300)] == [1] * 300


def test_edge_down_for_a_while_memory_queue(tmp_path: Path, valkey_url: str) -> None:
    with edge_and_worker(tmp_path, valkey_url) as (edge, lake):
        client = Client(edge.url, "29", TEST_KEY, **FAST)
        for i in range(200):
            client.track("page_view", event_id=f"m-{i}")
        assert client.flush(timeout=30)
        edge.stop()
        for i in range(200, 500):
            client.track("page_view", event_id=f"m-{i}")
        poll_until(lambda: client.stats.retries >= 3, 20, "retries while the edge is down")
        assert not client.flush(timeout=0.5)
        edge.start()
        assert client.flush(timeout=30)
        client.close()
        counts = delivered(lake, {f"m-{i}" for i in range(500)})
    assert counts == collections.Counter({f"m-{i}": 1 for i in range(500)})
    assert client.stats.dropped == 0 and client.stats.accepted == 500


def test_edge_down_spool_and_producer_killed_mid_outage(tmp_path: Path, valkey_url: str) -> None:
    spool = tmp_path / "spool"
    with edge_and_worker(tmp_path, valkey_url) as (edge, lake):
        first = producer(edge.url, "k", 0, 150, spool, hang=True)
        assert first.stdout is not None and first.stdout.readline() == "tracked\n"
        delivered(lake, {f"k-{i}" for i in range(150)})
        edge.stop()
        first.kill()  # its spool's cursor may lag what was delivered: those are sent again, deduplicated
        first.wait()
        again = producer(edge.url, "k", 150, 250, spool, hang=True)
        assert again.stdout is not None and again.stdout.readline() == "tracked\n"
        again.kill()  # killed mid-outage too, with 250 more spooled
        again.wait()
        edge.start()
        last = producer(edge.url, "k", 400, 100, spool, hang=False)  # replays the spool, then its own
        assert last.communicate(timeout=60)[0] == "tracked\n" and last.returncode == 0
        counts = delivered(lake, {f"k-{i}" for i in range(500)})
    assert counts == collections.Counter({f"k-{i}": 1 for i in range(500)})
    leftover = SpoolQueue(spool, 1 << 20, 1 << 20, False)
    assert leftover.pending_events == 0
    leftover.close()


def test_the_edges_503_back_pressure_is_honoured(tmp_path: Path, valkey_url: str) -> None:
    """No worker: the ingest backlog passes edge.max_backlog and the edge answers 503 + Retry-After;
    the client waits and sends again, and gets through once a worker drains the backlog."""
    lake = tmp_path / "lake"
    config = write_config(tmp_path, valkey_url, lake, max_backlog=3)
    edge = Edge(config)
    edge.start()
    worker = None
    try:
        client = Client(edge.url, "29", TEST_KEY, **{**FAST, "flush_at": 10, "max_batch_events": 10})
        for i in range(100):
            client.track("page_view", event_id=f"bp-{i}")
        poll_until(lambda: client.stats.retries >= 1, 30, "a 503 from the edge")
        assert client.stats.accepted < 100
        worker = start_worker(config)
        assert client.flush(timeout=60)
        client.close()
        counts = delivered(lake, {f"bp-{i}" for i in range(100)})
    finally:
        if worker is not None:
            stop_worker(worker)
        edge.stop()
    assert counts == collections.Counter({f"bp-{i}": 1 for i in range(100)})
    assert client.stats.accepted == 100 and client.stats.failed == 0


def test_async_client_steady_outage_with_spool_and_aclose(tmp_path: Path, valkey_url: str) -> None:
    spool = tmp_path / "spool"

    async def phase_one(edge: Edge) -> None:
        async with AsyncClient(edge.url, "29", TEST_KEY, spool_dir=spool, **FAST) as client:
            for i in range(300):
                await client.track("page_view", event_id=f"a-{i}")
            assert await client.flush(timeout=30)
            edge.stop()  # blocking, but nothing else runs on this loop meanwhile
            for i in range(300, 600):
                await client.track("page_view", event_id=f"a-{i}")
            assert not await client.flush(timeout=0.5)
            await client.aclose(timeout=0.5)  # gives up: the rest stays in the spool
            assert client.stats.dropped == 0

    async def phase_two(edge: Edge) -> None:
        async with AsyncClient(edge.url, "29", TEST_KEY, spool_dir=spool, **FAST) as client:
            assert client.stats.queued == 300  # found unsent in the spool
            for i in range(600, 700):
                await client.track("page_view", event_id=f"a-{i}")
        assert client.stats.accepted == 400

    with edge_and_worker(tmp_path, valkey_url) as (edge, lake):
        asyncio.run(phase_one(edge))
        edge.start()
        asyncio.run(phase_two(edge))
        counts = delivered(lake, {f"a-{i}" for i in range(700)})
    assert counts == collections.Counter({f"a-{i}": 1 for i in range(700)})
