"""Shards: the edge writes each source's events to its shard, a worker serves one shard (or the
command supervises one per shard), and a sharded run keeps every source's data on its own shard."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
import redis

from commands.main import main as cli_main
from ingest.app import EdgeApp, create_app
from tests.conftest import started_server
from tests.support import (
    ROOT,
    HookServer,
    batch_body,
    delivery_batches_of,
    poll_until,
    running_edge,
    start_worker,
    stop_worker,
    stored_events,
)
from tests.test_edge_app import Lifespan, eventually
from tooling.harness import file_ids
from trackpipe.config import parse
from trackpipe.jobs import MsgpackSerializer, SafeJob
from trackpipe.keys import KeyLayout
from trackpipe.shards import Shard, assignment, pick
from workers.dedup import dedup_key
from workers.runner import ShardNameError, shard_config

LAYOUT = KeyLayout()
QUEUE_KEY = LAYOUT.queue("ingest")
JSON = {"content-type": "application/json"}


def hashed_ids(names: list[str], per_shard: int = 1) -> dict[str, list[str]]:
    """Source ids the rendezvous hash gives to each shard (per_shard of each), found by trying."""
    found: dict[str, list[str]] = {name: [] for name in names}
    i = 0
    while any(len(ids) < per_shard for ids in found.values()):
        source_id = f"hashed-{i}"
        chosen = found[pick(names, source_id)]
        if len(chosen) < per_shard:
            chosen.append(source_id)
        i += 1
    return found


@dataclass(frozen=True)
class Source:
    id: str
    site: str
    key: str
    shard: str | None  # explicit; None: hashed


def config_text(shards: dict[str, str], sources: list[Source], extra: str = "") -> str:
    parts = [extra]
    for name, url in shards.items():
        parts.append(f'[[shards]]\nname = "{name}"\nredis_url = "{url}"\n')
    for s in sources:
        shard = f'shard = "{s.shard}"\n' if s.shard else ""
        parts.append(f'[[sources]]\nid = "{s.id}"\nsite_id = "{s.site}"\nkeys = ["{s.key}"]\n{shard}')
    return "\n".join(parts)


def event(marker: str) -> dict:
    return {"event_name": "page_view", "context": {"event_id": marker}, "page": {"url": "https://x/p"}}


def event_bytes(marker: str) -> bytes:
    return json.dumps(event(marker), separators=(",", ":")).encode()


# -- the edge, in process, on two fakeredis servers ---------------------------------------------

FAKE_URLS = {"a": "redis://127.0.0.1:1/0", "b": "redis://127.0.0.1:2/0"}
HASHED = hashed_ids(["a", "b"])
EDGE_SOURCES = [
    Source("on-a", "1", "key-on-a-0123456789", "a"),
    Source("on-b", "2", "key-on-b-0123456789", "b"),
    Source(HASHED["a"][0], "3", "key-hashed-a-0123456789", None),
    Source(HASHED["b"][0], "4", "key-hashed-b-0123456789", None),
]
SHARD_OF = {"on-a": "a", "on-b": "b", HASHED["a"][0]: "a", HASHED["b"][0]: "b"}


@dataclass
class ShardedEdge:
    app: EdgeApp
    client: httpx.AsyncClient
    servers: dict[str, fakeredis.FakeServer]
    conns: dict[str, fakeredis.FakeRedis]

    async def post(self, source: Source, body: bytes, *, batch: bool = False) -> httpx.Response:
        path = "/events/batch" if batch else "/events"
        params = {"tc_s": source.site, "token": source.key}
        return await self.client.post(path, params=params, headers=JSON, content=body)

    def sources_on(self, shard: str) -> set[str]:
        return {source for source, _, _ in stored_events(self.conns[shard])}


@contextlib.asynccontextmanager
async def sharded_edge(text: str | None = None) -> AsyncIterator[ShardedEdge]:
    servers = {name: fakeredis.FakeServer() for name in FAKE_URLS}
    clients: list[fakeredis.aioredis.FakeRedis] = []

    def shard_redis(shard: Shard) -> fakeredis.aioredis.FakeRedis:
        clients.append(fakeredis.aioredis.FakeRedis(server=servers[shard.name]))
        return clients[-1]

    config = parse(text or config_text(FAKE_URLS, EDGE_SOURCES, "[edge]\nmax_backlog = 5\n"))
    app = create_app(config, shard_redis=shard_redis, redis_py_writes=True)
    conns = {name: fakeredis.FakeRedis(server=server) for name, server in servers.items()}
    async with Lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            yield ShardedEdge(app, client, servers, conns)
    for conn in conns.values():
        conn.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_each_source_is_written_to_its_shard_and_only_there() -> None:
    async with sharded_edge() as edge:
        for source in EDGE_SOURCES:
            assert (await edge.post(source, event_bytes(f"{source.id}-1"))).status_code == 200
            batch = batch_body([event_bytes(f"{source.id}-{i}") for i in range(2, 5)])
            response = await edge.post(source, batch, batch=True)
            assert response.status_code == 200 and response.json()["accepted"] == 3
        for name in FAKE_URLS:
            expected = {s for s, shard in SHARD_OF.items() if shard == name}
            assert edge.sources_on(name) == expected
            stored = stored_events(edge.conns[name])
            assert len(stored) == 4 * len(expected)  # each event once, on this shard only
        assert assignment(edge.app.edge.config) == SHARD_OF


@pytest.mark.anyio
async def test_refused_requests_are_sampled_on_the_home_shard() -> None:
    async with sharded_edge() as edge:
        stranger = Source("x", "2", "not-a-key-0123456789", None)
        assert (await edge.post(stranger, event_bytes("refused"))).status_code == 200  # compat
        ring = LAYOUT.unauthorized_ring("2")
        await eventually(lambda: edge.conns["a"].llen(ring) == 1)
        assert edge.conns["b"].llen(ring) == 0
        assert edge.conns["b"].exists(LAYOUT.unauthorized_count) == 0
        assert not stored_events(edge.conns["a"]) and not stored_events(edge.conns["b"])


@pytest.mark.anyio
async def test_a_full_shard_refuses_only_its_own_sources() -> None:
    async with sharded_edge() as edge:
        filler = [f"queued-{i}".encode() for i in range(10)]
        edge.conns["b"].rpush(QUEUE_KEY, *filler)
        await eventually(lambda: edge.app.edge.writers["b"].committer.backlog > 5)
        for source in EDGE_SOURCES:
            response = await edge.post(source, event_bytes(f"{source.id}-full"))
            if SHARD_OF[source.id] == "b":
                assert response.status_code == 503, response.text
                assert "backlog" in response.json()["error"]
            else:
                assert response.status_code == 200, response.text
        assert edge.conns["b"].lrange(QUEUE_KEY, 0, -1) == filler
        assert edge.sources_on("a") == {"on-a", HASHED["a"][0]}
        page = (await edge.client.get("/metrics")).text
        assert 'trackpipe_ingest_backlog_jobs{shard="b"} 10.0' in page
        assert 'trackpipe_ingest_backlog_jobs{shard="a"} 0.0' in page


@pytest.mark.anyio
async def test_an_unreachable_shard_fails_its_own_writes_and_is_named_by_readyz() -> None:
    async with sharded_edge() as edge:
        assert (await edge.client.get("/readyz")).json() == {"status": "ready"}
        edge.servers["b"].connected = False
        try:
            on_b = await edge.post(EDGE_SOURCES[1], event_bytes("down-b"))
            on_a = await edge.post(EDGE_SOURCES[0], event_bytes("up-a"))
            degraded = await edge.client.get("/readyz")
            edge.servers["a"].connected = False
            down = await edge.client.get("/readyz")
        finally:
            edge.servers["a"].connected = edge.servers["b"].connected = True
        assert on_b.status_code == 503 and "nothing was stored" in on_b.json()["error"]
        assert on_a.status_code == 200
        assert degraded.status_code == 200
        assert degraded.json()["status"] == "degraded" and degraded.json()["unreachable"] == ["b"]
        assert "shard b" in degraded.json()["error"]
        assert down.status_code == 503
        assert "shard a" in down.json()["error"] and "shard b" in down.json()["error"]
        assert down.headers["retry-after"] == "1"
        assert edge.sources_on("a") == {"on-a"} and edge.sources_on("b") == set()


@pytest.mark.anyio
async def test_reload_moves_a_source_between_running_shards_and_keeps_the_shard_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with sharded_edge() as edge:
        moved = [Source(s.id, s.site, s.key, "b" if s.id == "on-a" else s.shard) for s in EDGE_SOURCES]
        with caplog.at_level(logging.WARNING, logger="trackpipe.edge"):
            edge.app.edge.reload(parse(config_text(FAKE_URLS, moved)))
        assert "source on-a moved from shard a to shard b" in caplog.text
        assert (await edge.post(EDGE_SOURCES[0], event_bytes("after-move"))).status_code == 200
        assert edge.sources_on("b") == {"on-a"} and edge.sources_on("a") == set()

        # A new shard list needs a restart: a source on the new shard is written to a running one.
        caplog.clear()
        newcomer = Source("on-c", "5", "key-on-c-0123456789", "c")
        urls = {**FAKE_URLS, "c": "redis://127.0.0.1:3/0"}
        with caplog.at_level(logging.WARNING, logger="trackpipe.edge"):
            edge.app.edge.reload(parse(config_text(urls, [*moved, newcomer])))
        assert "shards changed; it takes effect only after a restart" in caplog.text
        assert "source on-c: shard c is not running at this edge" in caplog.text
        assert (await edge.post(newcomer, event_bytes("newcomer"))).status_code == 200
        landed = pick(["a", "b"], "on-c")
        assert "on-c" in edge.sources_on(landed)
        assert list(edge.app.edge.writers) == ["a", "b"]


@pytest.mark.anyio
async def test_one_shard_without_shards_table_is_main() -> None:
    text = config_text({}, [Source("solo", "1", "key-solo-0123456789", None)], 'redis_url = "redis://127.0.0.1:1/0"\n')
    server = fakeredis.FakeServer()
    app = create_app(
        parse(text), async_redis=lambda: fakeredis.aioredis.FakeRedis(server=server), redis_py_writes=True
    )
    async with Lifespan(app):
        assert list(app.edge.writers) == ["main"]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
            response = await client.post(
                "/events", params={"tc_s": "1", "token": "key-solo-0123456789"}, headers=JSON, content=event_bytes("m")
            )
            assert response.status_code == 200
            assert 'trackpipe_ingest_backlog_jobs{shard="main"}' in (await client.get("/metrics")).text
    assert [s for s, _, _ in stored_events(fakeredis.FakeRedis(server=server))] == ["solo"]


# -- the worker command: which shard --------------------------------------------------------------


def test_shard_config_points_the_worker_at_its_shard() -> None:
    config = parse(config_text(FAKE_URLS, EDGE_SOURCES))
    assert shard_config(config, "b").redis_url == FAKE_URLS["b"]
    assert shard_config(config, "a").redis_url == FAKE_URLS["a"]
    with pytest.raises(ShardNameError, match=r"no shard named 'c' \(shards: a, b\)"):
        shard_config(config, "c")
    with pytest.raises(ShardNameError, match="name one of a, b"):
        shard_config(config, None)
    single = parse('redis_url = "redis://127.0.0.1:1/0"\n')
    assert shard_config(single, None) is single
    assert shard_config(single, "main").redis_url == single.redis_url
    with pytest.raises(ShardNameError, match=r"no shard named 'a' \(shards: main\)"):
        shard_config(single, "a")


def test_an_unknown_shard_exits_2_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRACKPIPE_REDIS_URL", raising=False)
    path = tmp_path / "sharded.toml"
    path.write_text(config_text(FAKE_URLS, EDGE_SOURCES))
    assert cli_main(["worker", "--config", str(path), "--shard", "nope"]) == 2
    err = capsys.readouterr().err
    assert "trackpipe worker: --shard: no shard named 'nope' (shards: a, b)" in err


# -- real servers, real processes -----------------------------------------------------------------

SHARDS = ["a", "b", "c"]
RUN_HASHED = hashed_ids(SHARDS)
RUN_SOURCES = [
    Source("explicit-a", "10", "key-explicit-a-0123456789", "a"),
    Source("explicit-c", "11", "key-explicit-c-0123456789", "c"),
    *(Source(RUN_HASHED[name][0], str(20 + i), f"key-hashed-{name}-0123456789", None) for i, name in enumerate(SHARDS)),
]


@contextlib.contextmanager
def valkeys(tmp_path: Path, names: list[str]) -> Iterator[dict[str, redis.Redis]]:
    servers = {name: started_server(tmp_path / f"valkey-{name}") for name in names}
    conns = {name: redis.Redis(port=server.port) for name, server in servers.items()}
    try:
        yield conns
    finally:
        for conn in conns.values():
            conn.close()
        for server in servers.values():
            if server.is_running():
                server.stop()


def urls_of(conns: dict[str, redis.Redis]) -> dict[str, str]:
    return {name: f"redis://127.0.0.1:{c.connection_pool.connection_kwargs['port']}/0" for name, c in conns.items()}


def post_batches(base: str, source: Source, ids: list[str], size: int = 10) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            response = client.post(
                "/events/batch",
                params={"tc_s": source.site, "token": source.key},
                json={"batch": [event(i) for i in chunk]},
            )
            assert response.status_code == 200 and response.json()["accepted"] == len(chunk), response.text


def webhook_ids(hook: HookServer) -> Counter[str]:
    return Counter(e["context"]["event_id"] for r in hook.requests() for e in json.loads(r.body)["batch"])


def keys_of(conn: redis.Redis, pattern: str) -> set[str]:
    return {k.decode() for k in conn.scan_iter(pattern)}


def dedup_shards(conns: dict[str, redis.Redis], source_id: str, event_id: str) -> set[str]:
    """The shards whose dedup hashes remember (source_id, event_id)."""
    key = dedup_key(source_id, event_id, 64)
    return {
        name
        for name, conn in conns.items()
        if any(conn.hexists(k, key.field) for k in conn.scan_iter(f"trackpipe:dd:*:{key.bucket}"))
    }


def run_command(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKPIPE_CONFIG", "TRACKPIPE_REDIS_URL")}
    return subprocess.run(
        [sys.executable, "-m", "commands", *args], cwd=ROOT, env=env, capture_output=True, timeout=timeout
    )


@pytest.mark.slow
def test_a_sharded_run_delivers_everything_once_and_keeps_each_source_on_its_shard(tmp_path: Path) -> None:
    per_source = 40
    lake = tmp_path / "lake"
    with valkeys(tmp_path, SHARDS) as conns, HookServer() as hook:
        extra = (
            "[dedup]\nbuckets = 64\n\n"
            f'[[destinations]]\nid = "hook"\ntype = "webhook"\nurl = "{hook.url}"\n\n'
            f'[[destinations]]\nid = "lake"\ntype = "file"\npath = "{lake}"\n'
        )
        path = tmp_path / "sharded.toml"
        path.write_text(config_text(urls_of(conns), RUN_SOURCES, extra))
        shard_of = assignment(parse(path.read_text()))
        assert set(shard_of.values()) == set(SHARDS)
        ids = {s.id: [f"{s.id}-{i}" for i in range(per_source)] for s in RUN_SOURCES}
        env = {"TRACKPIPE_REDIS_URL": ""}

        with running_edge(path, env=env) as base:
            # 1. The edge: each source's events wait in its own shard's ingest queue.
            for source in RUN_SOURCES:
                post_batches(base, source, ids[source.id])
            for name, conn in conns.items():
                stored = Counter(source for source, _, _ in stored_events(conn))
                assert stored == {s: per_source for s, shard in shard_of.items() if shard == name}, name

            # 2. The supervisor (no --shard): one burst worker per shard runs the ingest jobs.
            ingest = run_command("worker", "--config", str(path), "--queues", "ingest", "--burst")
            assert ingest.returncode == 0, ingest.stderr.decode()[-2000:]
            for name, conn in conns.items():
                assert conn.llen(QUEUE_KEY) == 0
                mine = {s for s, shard in shard_of.items() if shard == name}
                held: Counter[str] = Counter()
                for queue in ("deliver:hook", "deliver:lake"):
                    for job_id in conn.lrange(LAYOUT.queue(queue), 0, -1):
                        job = SafeJob.fetch(job_id.decode(), connection=conn, serializer=MsgpackSerializer)
                        for batch in delivery_batches_of(conn, job):
                            held.update(json.loads(e.body)["context"]["source_id"] for e in batch.events)
                assert held == {s: 2 * per_source for s in mine}, name  # both destinations' jobs, here only
                assert keys_of(conn, "trackpipe:inspect:*") == {f"trackpipe:inspect:{s}" for s in mine}
                assert keys_of(conn, "trackpipe:stats:source:*") == {f"trackpipe:stats:source:{s}" for s in mine}
            for source in RUN_SOURCES:
                for event_id in (ids[source.id][0], ids[source.id][-1]):
                    assert dedup_shards(conns, source.id, event_id) == {shard_of[source.id]}

            # 3. Live workers, one per shard (`--shard`): the deliveries, then a second wave with
            # resends of the first (each shard's dedup sees them), both delivered once.
            workers = [
                start_worker(path, "--shard", name, env=env, log=tmp_path / f"worker-{name}.log") for name in SHARDS
            ]
            try:
                second = {s.id: [f"{s.id}-w2-{i}" for i in range(per_source // 2)] for s in RUN_SOURCES}
                for source in RUN_SOURCES:
                    post_batches(base, source, second[source.id] + ids[source.id][:5])
                expected = {i for group in (ids, second) for v in group.values() for i in v}

                def arrived() -> bool:
                    return set(webhook_ids(hook)) == expected and set(file_ids(lake)) == expected

                poll_until(arrived, 60, lambda: f"missing {len(expected - set(webhook_ids(hook)))} at the webhook")
                time.sleep(1.0)  # anything delivered twice would arrive now
                assert webhook_ids(hook) == Counter(dict.fromkeys(expected, 1))
                assert file_ids(lake) == Counter(dict.fromkeys(expected, 1))
            finally:
                codes = [stop_worker(w) for w in workers]
            assert codes == [0, 0, 0]

        for name, conn in conns.items():
            mine = {s for s, shard in shard_of.items() if shard == name}
            stats = {s: conn.hgetall(f"trackpipe:stats:source:{s}") for s in shard_of}
            for source_id, counts in stats.items():
                if source_id in mine:
                    # 40 + 20 new ones (valid or not, each counted once), 5 resends
                    counted = {status.decode(): int(n) for status, n in counts.items()}
                    assert counted.pop("DUPLICATE") == 5, (name, counts)
                    assert sum(counted.values()) == per_source + per_source // 2, (name, counts)
                else:
                    assert counts == {}, (name, source_id)
            for queue in ("ingest", "deliver:hook", "deliver:lake", "retry:hook", "retry:lake"):
                assert conn.llen(LAYOUT.queue(queue)) == 0
            assert conn.llen(LAYOUT.dlq("hook")) == 0 and conn.llen(LAYOUT.dlq("lake")) == 0


def started_pids(log: Path) -> dict[str, list[int]]:
    """shard -> pids of its worker processes, from the supervisor's log lines."""
    found: dict[str, list[int]] = {}
    if not log.exists():
        return found
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = json.loads(line)["msg"]
            if message.startswith("worker of shard ") and ", pid " in message:
                shard = message.removeprefix("worker of shard ").split(" ", 1)[0]
                found.setdefault(shard, []).append(int(message.rsplit(" ", 1)[1]))
    return found


@pytest.mark.slow
def test_the_supervisor_restarts_a_dead_shard_worker_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    with valkeys(tmp_path, ["a", "b"]) as conns:
        path = tmp_path / "sharded.toml"
        path.write_text(config_text(urls_of(conns), EDGE_SOURCES))
        log = tmp_path / "supervisor.log"
        supervisor = start_worker(path, env={"TRACKPIPE_REDIS_URL": ""}, log=log)
        try:
            pids = poll_until(lambda: (p := started_pids(log)) and len(p) == 2 and p, 30, "both shard workers start")
            # Each serves its own shard: it registers as a claimant there.
            for name, conn in conns.items():
                poll_until(lambda c=conn: c.scard(LAYOUT.claimants) == 1, 30, f"a worker on shard {name}")
            os.kill(pids["b"][0], signal.SIGKILL)
            restarted = poll_until(
                lambda: len(started_pids(log).get("b", [])) == 2 and started_pids(log), 30, "shard b's worker restarted"
            )
            assert restarted["a"] == pids["a"]  # the other shard's worker went on untouched
            assert "worker of shard b" in log.read_text() and "starting it again" in log.read_text()
            current = [restarted["a"][0], restarted["b"][1]]
            assert all(os.path.exists(f"/proc/{pid}") for pid in current)
        finally:
            code = stop_worker(supervisor, timeout=60)
        assert code == 0
        poll_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in current), 10, "every worker stopped")
