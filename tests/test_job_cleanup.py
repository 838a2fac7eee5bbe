"""A finished job's deletion (trackpipe.jobs.SafeJob.cleanup, one script in the worker's closing
MULTI) leaves Redis exactly as RQ's own deletion does, including for a re-run whose earlier
execution (a killed worker's) is still recorded; the worker still sees `rq suspend`; and it loads
its job functions before its first job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.executions import Execution
from rq.job import Job
from rq.suspension import resume, suspend

from tests.support import ROOT
from tooling.bench import BENCH_CONFIG, _enqueue_jobs, event_bytes
from trackpipe.config import parse
from trackpipe.jobs import SafeJob, make_queue
from trackpipe.keys import INGEST_QUEUE
from workers.runner import build_worker


def run_jobs(conn: redis.Redis, url: str, tmp_path: Path, *, dead_execution: bool) -> dict[str, Any]:
    """Two ingest jobs run by a burst worker; what is left of them afterwards, ids masked."""
    conn.flushall()
    config = parse(BENCH_CONFIG.format(redis_url=url, out_dir=tmp_path / "out"))
    _enqueue_jobs(conn, config, event_bytes(20, "c"), 10)
    queue = make_queue(INGEST_QUEUE, conn)
    job_ids = queue.job_ids
    assert len(job_ids) == 2
    if dead_execution:  # a worker killed mid-job left its execution behind (its record still there)
        job = SafeJob.fetch(job_ids[0], connection=conn)
        pipe = conn.pipeline()
        Execution.create(job, 600, pipeline=pipe, worker_name="killed-worker")
        pipe.execute()
    worker = build_worker(config, conn, [INGEST_QUEUE])
    try:
        worker.work(burst=True, logging_level="WARNING")
    finally:
        worker.teardown()
    keys = sorted(k.decode() for k in conn.keys("*"))
    # (delivery jobs are named after their ingest job: "<id>_<hash>", still queued here)
    mentions = [k for k in keys if any(k.endswith(j) or f"{j}:" in k for j in job_ids)]
    members = {}
    for key in keys:
        if conn.type(key) == b"zset":
            members[key] = [m.decode() for m in conn.zrange(key, 0, -1)]
        elif conn.type(key) == b"set":
            members[key] = [m.decode() for m in conn.smembers(key)]
    held = {k: v for k, v in members.items() if any(m == j or m.startswith(f"{j}:") for j in job_ids for m in v)}

    def masked(key: str) -> str:
        for n, job_id in enumerate(job_ids):
            key = key.replace(job_id, f"<job{n}>")
        # The minute or hour a counter is for (the two runs may straddle a minute's end).
        return re.sub(r":\d{6,}$", ":<time>", key.replace(worker.name, "<worker>"))

    shape = sorted(masked(k) for k in keys if "stats" not in k and ":dd" not in k)  # (ids are random)
    return {"mentions": mentions, "held": held, "shape": shape}


@pytest.mark.parametrize("dead_execution", [False, True])
def test_a_finished_job_leaves_what_rqs_own_deletion_leaves(
    dead_execution: bool, valkey_client: redis.Redis, valkey_url: str, tmp_path: Path, monkeypatch
) -> None:
    ours = run_jobs(valkey_client, valkey_url, tmp_path, dead_execution=dead_execution)
    with monkeypatch.context() as patched:
        patched.setattr(SafeJob, "cleanup", Job.cleanup)  # RQ's deletion, with its reads
        theirs = run_jobs(valkey_client, valkey_url, tmp_path, dead_execution=dead_execution)
    assert ours["mentions"] == [] and ours["held"] == {}  # nothing names the jobs any more
    assert ours == theirs


def test_a_suspended_worker_runs_nothing(valkey_client: redis.Redis, valkey_url: str, tmp_path: Path) -> None:
    config = parse(BENCH_CONFIG.format(redis_url=valkey_url, out_dir=tmp_path / "out"))
    _enqueue_jobs(valkey_client, config, event_bytes(10, "s"), 10)
    suspend(valkey_client)
    worker = build_worker(config, valkey_client, [INGEST_QUEUE])
    try:
        worker.work(burst=True, logging_level="WARNING")  # a burst worker stops when suspended
        assert len(make_queue(INGEST_QUEUE, valkey_client)) == 1
        resume(valkey_client)
        worker.work(burst=True, logging_level="WARNING")
        assert len(make_queue(INGEST_QUEUE, valkey_client)) == 0
    finally:
        resume(valkey_client)
        worker.teardown()


def test_a_built_worker_has_its_job_functions_loaded_before_its_first_job() -> None:
    """A fresh process: building the worker imports the job modules (not the first job)."""
    code = (
        "import sys, fakeredis\n"
        "from trackpipe.config import parse\n"
        "from workers.runner import build_worker\n"
        "assert 'workers.ingest' not in sys.modules and 'workers.deliver' not in sys.modules\n"
        "config = parse('[[sources]]\\nid = \"s\"\\nsite_id = \"1\"\\nkeys = [\"k0123456789\"]\\n')\n"
        "build_worker(config, fakeredis.FakeRedis(), ['ingest'])\n"
        "print('workers.ingest' in sys.modules, 'workers.deliver' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
