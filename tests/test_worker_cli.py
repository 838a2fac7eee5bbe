"""`trackpipe worker` as a real process: queue names, burst mode, bad configs, and jobs planted in
Redis that must never run code."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import redis

from ingest.store import IngestStore
from tests.support import ROOT, delivery_batches_of, free_port, poll_until, start_worker, stop_worker
from trackpipe.config import parse
from trackpipe.jobs import MsgpackSerializer, delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord

# Real processes (the CLI, the edge under uvicorn): the full suite, not the fast set.
pytestmark = pytest.mark.slow

LAYOUT = KeyLayout()
SCRUBBED_ENV = ("TRACKPIPE_CONFIG", "TRACKPIPE_REDIS_URL", "TRACKPIPE_FAULT")

CONFIG = """\
redis_url = "{redis_url}"

[worker]
maintenance_interval_seconds = 1

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]

[[destinations]]
id = "lake"
type = "file"
path = "{lake}"

[[destinations]]
id = "crm-hook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commands", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG.format(redis_url=redis_url, lake=tmp_path / "lake"))
    return path


def store_job(conn: redis.Redis, config_file: Path, event_id: str) -> str:
    """One ingest job, stored as the edge stores it; returns its id."""
    config = parse(config_file.read_text(), env={})
    user = {"consistent_anonymous_id": "ca-1"}
    event = json.dumps({"event_name": "custom", "user": user, "context": {"event_id": event_id, "event_timestamp": 1}})
    event = event.encode()
    batch = IngestBatch([IngestRecord("shop-web", "29", int(time.time() * 1000), [event])])
    IngestStore(conn, LAYOUT, 10, config.worker, max_events=1).write(batch, [])  # its own job
    return conn.lrange(LAYOUT.queue("ingest"), -1, -1)[0].decode()


def job_key(job_id: str) -> str:
    return f"{LAYOUT.rq_prefix}:job:{job_id}"


# --- queues ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nosuch", "ingest,nosuch", "deliver:nosuch"])
def test_an_unknown_queue_exits_2_naming_it_and_the_known_ones(tmp_path: Path, spec: str) -> None:
    # No server on that port: the queue names are checked before anything connects.
    config_file = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    done = run_cli("worker", "--config", str(config_file), "--queues", spec)
    assert done.returncode == 2, (done.stdout, done.stderr)
    unknown = spec.split(",")[-1]
    assert repr(unknown) in done.stderr
    for known in ("ingest", "deliver:lake", "deliver:crm-hook"):
        assert known in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such config file"),
        (
            'redis_url = "redis://127.0.0.1:6379/0"\n[worker]\ningest_timeout = 5\n',
            "worker.ingest_timeout: unknown key",
        ),
        (
            'redis_url = "redis://127.0.0.1:6379/0"\n[worker]\nmaintenance_interval_seconds = 0\n',
            "worker.maintenance_interval_seconds",
        ),
        ('redis_url = "redis://127.0.0.1:6379/0\n', "not valid TOML"),
    ],
    ids=["missing", "misspelt-key", "bad-value", "invalid-toml"],
)
def test_a_bad_config_exits_2_naming_the_problem(tmp_path: Path, content: str | None, expected: str) -> None:
    bad = tmp_path / "bad.toml"
    if content is not None:
        bad.write_text(content)
    done = run_cli("worker", "--config", str(bad), "--queues", "ingest")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(bad) in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_no_config_at_all_exits_2() -> None:
    done = run_cli("worker", "--queues", "ingest")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "--config" in done.stderr and "TRACKPIPE_CONFIG" in done.stderr
    assert "Traceback" not in done.stderr


# --- burst -----------------------------------------------------------------------------------


def test_burst_processes_the_waiting_ingest_jobs_and_exits_0(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    config_file = write_config(tmp_path, valkey_url)
    job_ids = [store_job(valkey_client, config_file, f"burst-{i}") for i in range(3)]
    done = run_cli("worker", "--config", str(config_file), "--queues", "ingest", "--burst")
    assert done.returncode == 0, (done.stdout, done.stderr)

    assert valkey_client.llen(LAYOUT.queue("ingest")) == 0
    assert valkey_client.zcard(f"{LAYOUT.rq_prefix}:wip:ingest") == 0
    assert valkey_client.zcard(f"{LAYOUT.rq_prefix}:failed:ingest") == 0
    for job_id in job_ids:
        assert not valkey_client.exists(job_key(job_id)), "a finished ingest job keeps no hash"
    # Each job fanned out to the lake (crm-hook takes every event too); deliveries wait on their own
    # queues (this worker only took `ingest`), the three fan-outs gathered in one waiting job each.
    for destination in ("lake", "crm-hook"):
        [job] = delivery_queue(destination, valkey_client).jobs
        batches = delivery_batches_of(valkey_client, job)
        assert sorted(b.origin for b in batches) == sorted(job_ids)
        assert sorted(e.event_id for b in batches for e in b.events) == ["burst-0", "burst-1", "burst-2"]
    records = [json.loads(r) for r in valkey_client.lrange(LAYOUT.inspector("shop-web"), 0, -1)]
    assert sorted(r["event_id"] for r in records) == ["burst-0", "burst-1", "burst-2"]
    assert {r["status"] for r in records} == {"VALID"}


def test_burst_with_nothing_to_do_exits_0(tmp_path: Path, valkey_url: str) -> None:
    config_file = write_config(tmp_path, valkey_url)
    done = run_cli("worker", "--config", str(config_file), "--queues", "ingest", "--burst")
    assert done.returncode == 0, (done.stdout, done.stderr)


# --- planted jobs ----------------------------------------------------------------------------


class PickleBomb:
    """Unpickling this runs `touch <path>`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.path}",))


def planted_payloads(tmp_path: Path) -> dict[str, tuple[bytes, Path]]:
    """name -> (job `data` field, the file it creates if it is ever run)."""
    pickled = tmp_path / "pwned-pickle"
    system = tmp_path / "pwned-system"
    call = tmp_path / "pwned-call"
    return {
        "pickle": (zlib.compress(pickle.dumps((PickleBomb(pickled), None, (), {}))), pickled),
        "pickle-uncompressed": (pickle.dumps((PickleBomb(pickled), None, (), {})), pickled),
        "os.system": (zlib.compress(MsgpackSerializer.dumps(["os.system", None, [f"touch {system}"], {}])), system),
        "subprocess.call": (
            zlib.compress(MsgpackSerializer.dumps(["subprocess.call", None, [["touch", str(call)]], {}])),
            call,
        ),
    }


def test_planted_jobs_never_run_code_and_the_worker_survives_them(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    conn = valkey_client
    config_file = write_config(tmp_path, valkey_url)
    planted: dict[str, str] = {}
    payloads = planted_payloads(tmp_path)
    for name, (data, _) in payloads.items():
        job_id = store_job(conn, config_file, f"planted-{name}")
        conn.hset(job_key(job_id), "data", data)  # someone with access to Redis rewrites the job
        planted[name] = job_id
    legit = store_job(conn, config_file, "legit-after")
    log = tmp_path / "worker.log"

    worker = start_worker(config_file, "--queues", "ingest", log=log)
    try:
        # The job queued after the planted ones is processed: the worker went past them.
        # Done means fanned out *and* finished by RQ (which then deletes the job's hash).
        poll_until(
            lambda: (
                (conn.llen(LAYOUT.queue("deliver:lake")) and not conn.exists(job_key(legit)))
                or worker.poll() is not None
            ),
            30,
            lambda: f"the legit job was not processed\n{log.read_text()}",
        )
        assert worker.poll() is None, f"the worker died: {worker.returncode}\n{log.read_text()}"
        assert not conn.exists(job_key(legit))
        records = [json.loads(r) for r in conn.lrange(LAYOUT.inspector("shop-web"), 0, -1)]
        assert [r["event_id"] for r in records] == ["legit-after"], "a planted job ran its ingest"
        for name, (_, created) in payloads.items():
            assert not created.exists(), f"the planted {name} job ran code"

        # Every planted job ends in the failed registry: it can never succeed, retrying it is pointless.
        failed = f"{LAYOUT.rq_prefix}:failed:ingest"

        def all_failed() -> bool:
            return {raw.decode() for raw in conn.zrange(failed, 0, -1)} == set(planted.values())

        poll_until(
            lambda: all_failed() or worker.poll() is not None,
            20,
            lambda: (
                "planted jobs not in the failed registry (status, retries left): "
                + str({n: conn.hmget(job_key(j), "status", "retries_left") for n, j in planted.items()})
            ),
        )
        assert worker.poll() is None, log.read_text()
        for name, (_, created) in payloads.items():
            assert not created.exists(), f"the planted {name} job ran code"
    finally:
        returncode = stop_worker(worker)
    assert returncode == 0, f"SIGTERM: a warm shutdown exits 0, not {returncode}\n{log.read_text()}"


def test_worker_serves_its_metrics(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    import httpx

    config_file = write_config(tmp_path, valkey_url)
    store_job(valkey_client, config_file, "metrics-1")
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "commands",
            "worker",
            "--config",
            str(config_file),
            "--queues",
            "ingest",
            "--metrics-port",
            str(port),
        ],
        cwd=ROOT,
    )
    try:

        def processed() -> bool:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except httpx.HTTPError:
                return False
            return 'trackpipe_events_processed_total{source="shop-web"' in text

        poll_until(processed, 20, "the worker's /metrics never counted the processed event")
    finally:
        worker.terminate()
        worker.wait(timeout=20)


@pytest.mark.slow
def test_worker_metrics_show_queue_depth_lag_and_dlq(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    import httpx

    config_file = write_config(tmp_path, valkey_url)
    port = free_port()
    # A worker on the delivery queues only: the ingest jobs stay waiting, so depth and lag show.
    store_job(valkey_client, config_file, "waiting-1")
    store_job(valkey_client, config_file, "waiting-2")
    valkey_client.lpush(LAYOUT.dlq("lake"), b"{}")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "commands",
            "worker",
            "--config",
            str(config_file),
            "--queues",
            "deliveries",
            "--metrics-port",
            str(port),
        ],
        cwd=ROOT,
    )
    try:

        def page() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return ""

        text = poll_until(page, 20, "the worker's /metrics never answered")
        assert 'trackpipe_queue_jobs{queue="ingest"} 2.0' in text
        assert 'trackpipe_dlq_events{destination="lake"} 1.0' in text
        lag = [line for line in text.splitlines() if line.startswith('trackpipe_queue_lag_seconds{queue="ingest"}')]
        assert lag and float(lag[0].split()[-1]) >= 0.0
    finally:
        worker.terminate()
        worker.wait(timeout=20)
