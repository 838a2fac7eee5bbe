"""workers.runner.requeue_stuck_jobs: a job a worker took but never started goes back on its queue."""

from __future__ import annotations

import json
import time

import redis

from ingest.store import IngestStore
from trackpipe.config import parse
from trackpipe.jobs import ingest_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord
from workers.runner import build_worker, requeue_stuck_jobs

LAYOUT = KeyLayout()
CONFIG = """
redis_url = "{url}"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["shop-key-0123456789"]
"""


def store_job(conn: redis.Redis, event_id: str) -> str:
    event = json.dumps({"event_name": "page_view", "context": {"event_id": event_id}}).encode()
    IngestStore(conn, LAYOUT, 0, max_events=1).write(IngestBatch([IngestRecord("shop-web", "29", 1, [event])]), [])
    return conn.lrange(LAYOUT.queue("ingest"), -1, -1)[0].decode()


def take_without_starting(conn: redis.Redis) -> str:
    """What a worker's dequeue does before it dies: the job moves to the intermediate list."""
    queue = ingest_queue(conn)
    return conn.lmove(queue.key, queue.intermediate_queue.key, "LEFT", "RIGHT").decode()


def age_first_seen(conn: redis.Redis, job_id: str, seconds: float) -> None:
    intermediate = ingest_queue(conn).intermediate_queue
    conn.set(intermediate.get_first_seen_key(job_id), time.time() - seconds)


def test_a_job_taken_but_never_started_is_put_back_and_then_runs(valkey_url: str, valkey_client: redis.Redis) -> None:
    conn = valkey_client
    first, second = store_job(conn, "stuck-1"), store_job(conn, "waiting-2")
    assert take_without_starting(conn) == first
    queue = ingest_queue(conn)
    assert requeue_stuck_jobs(queue) == 0  # first sighting: it may still be on its way to starting
    assert queue.intermediate_queue.get_job_ids() == [first]
    age_first_seen(conn, first, 30)
    assert requeue_stuck_jobs(queue) == 0  # not stuck for a minute yet
    age_first_seen(conn, first, 61)
    assert requeue_stuck_jobs(queue) == 1
    assert queue.intermediate_queue.get_job_ids() == []
    assert [j.decode() for j in conn.lrange(queue.key, 0, -1)] == [first, second]  # back at the front
    assert conn.hget(f"trackpipe:rq:job:{first}", "status") == b"queued"

    config = parse(CONFIG.format(url=valkey_url), env={})
    build_worker(config, conn, ["ingest"]).work(burst=True, logging_level="WARNING")
    assert conn.llen(queue.key) == 0
    assert sum(int(n) for n in conn.hvals(LAYOUT.source_stats("shop-web"))) == 2  # both events processed


def test_a_started_job_and_a_vanished_job_are_not_requeued(valkey_client: redis.Redis) -> None:
    conn = valkey_client
    queue = ingest_queue(conn)
    started, gone = store_job(conn, "s-1"), store_job(conn, "g-1")
    take_without_starting(conn)
    take_without_starting(conn)
    conn.zadd(queue.started_job_registry.key, {started: time.time() + 60})
    conn.delete(f"trackpipe:rq:job:{gone}")
    for job_id in (started, gone):
        age_first_seen(conn, job_id, 120)
    assert requeue_stuck_jobs(queue) == 0
    assert queue.intermediate_queue.get_job_ids() == [started]  # still RQ's to handle as abandoned
    assert conn.llen(queue.key) == 0
