"""A delivery job stopped by its timeout may have sent its batch: it is counted with the
destination's errors ("job timeout"), so an operator sees why a destination got repeats."""

from __future__ import annotations

import json

import redis

from ingest.store import IngestStore
from tests.support import HookServer, Reply
from trackpipe.config import parse
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord
from workers.runner import build_worker, destination_of_queue

LAYOUT = KeyLayout()
CONFIG = """
redis_url = "{url}"
[worker]
delivery_timeout_seconds = 1
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["shop-key-0123456789"]
[[destinations]]
id = "slow-hook"
type = "webhook"
url = "{hook}"
read_timeout_seconds = 20
[destinations.retry]
max_attempts = 3
backoff_seconds = [60]
"""


def test_destination_of_queue() -> None:
    assert destination_of_queue("deliver:crm.v2") == "crm.v2"
    assert destination_of_queue("retry:crm") == "crm"
    assert destination_of_queue("ingest") is None
    assert destination_of_queue(None) is None


def test_a_delivery_job_past_its_timeout_is_counted_as_a_destination_error(
    valkey_url: str, valkey_client: redis.Redis
) -> None:
    conn = valkey_client
    with HookServer(Reply(200, delay=3)) as hook:
        config = parse(CONFIG.format(url=valkey_url, hook=hook.url), env={})
        event = json.dumps({"event_name": "page_view", "context": {"event_id": "slow-1"}}).encode()
        IngestStore(conn, LAYOUT, 0, max_events=1).write(IngestBatch([IngestRecord("shop-web", "29", 1, [event])]), [])
        build_worker(config, conn, ["deliver:slow-hook", "ingest"]).work(burst=True, logging_level="CRITICAL")
        assert len(hook.received) == 1  # the batch went out before the job's timeout stopped it
    errors = {k.decode(): int(v) for k, v in conn.hgetall(LAYOUT.destination_errors("slow-hook")).items()}
    assert errors == {"job timeout": 1}
    assert conn.hexists(LAYOUT.destination_errors_last("slow-hook"), "job timeout")
