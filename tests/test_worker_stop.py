"""SIGTERM to an idle worker never drops a job.

RQ raises out of an idle worker's BLPOP on SIGTERM; when the server had already popped a job, that
job was left `queued` on no queue (found by `trackpipe soak`). A TrackpipeWorker waits on doorbells,
never on the queues themselves, and takes a job in one script call onto its claims list: a stop
ends the wait, and the job stays on its queue for the next worker.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import redis

from tests.support import poll_until, start_worker, stop_worker
from trackpipe.config import parse
from trackpipe.jobs import DELIVER_FUNCTION, delivery_job_options, delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeliveryBatch, DeliveryEvent, encode_delivery

LAYOUT = KeyLayout()
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


def enqueue_delivery(conn: redis.Redis, config, event_id: str) -> str:
    body = json.dumps({"event_name": "page_view", "context": {"event_id": event_id}}).encode()
    batch = DeliveryBatch("lake", [DeliveryEvent(event_id, "page_view", body)], int(time.time() * 1000), "test")
    job = delivery_queue("lake", conn).enqueue_call(
        DELIVER_FUNCTION, args=(encode_delivery(batch),), **delivery_job_options(config.worker)
    )
    return job.id


def lake_ids(lake: Path) -> list[str]:
    lines = [line for path in lake.glob("*.jsonl") for line in path.read_text().splitlines() if line]
    return [json.loads(line)["context"]["event_id"] for line in lines]


def test_sigterm_while_idle_runs_the_job_the_wait_received_then_exits(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    lake = tmp_path / "lake"
    text = CONFIG.format(url=valkey_url, lake=lake)
    config_file = tmp_path / "worker.toml"
    config_file.write_text(text)
    config = parse(text, env={})
    # Two queues: RQ pops with BLPOP, where an aborted wait used to lose the job.
    worker = start_worker(config_file, "--queues", "deliver:lake,retry:lake", "--no-scheduler", "--name", "idle")
    try:
        enqueue_delivery(valkey_client, config, "warm-up")
        poll_until(lambda: lake_ids(lake) == ["warm-up"], 20, "the worker never ran the first job")
        time.sleep(0.3)  # the scenario: idle again for a while, in its wait
        worker.send_signal(signal.SIGTERM)
        # The job must come after the stop (asserted below): wait until the worker has taken the signal.
        poll_until(
            lambda: valkey_client.hget(f"{LAYOUT.rq_prefix}:worker:idle", "shutdown_requested_date"),
            15,
            "the worker never recorded the stop",
        )
        job_id = enqueue_delivery(valkey_client, config, "after-sigterm")
        code = worker.wait(timeout=15)
    finally:
        stop_worker(worker)
    assert code == 0
    on_queue = [j.decode() for j in valkey_client.lrange(LAYOUT.queue("deliver:lake"), 0, -1)]
    delivered = lake_ids(lake)
    # Either the wait took the job and ran it, or it is still waiting on the queue: never neither.
    assert "after-sigterm" in delivered or job_id in on_queue, (delivered, on_queue)
    assert "after-sigterm" not in delivered  # the stop came first: the worker took nothing more
    assert job_id in on_queue
    assert not list(valkey_client.scan_iter(LAYOUT.claims_prefix + "*"))
