"""`trackpipe status`: what it reports matches what is in Redis, as a table and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from commands.status import render
from ingest.store import IngestStore
from tests.support import ROOT, TEST_KEY, free_port
from trackpipe.config import parse
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord
from trackpipe.queries import collect

LAYOUT = KeyLayout()


def config_text(redis_url: str, lake: Path) -> str:
    return f"""
redis_url = "{redis_url}"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]
[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""


def run_status(config_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commands", "status", "--config", str(config_file), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_status_reports_backlog_lag_dlq_and_rates(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    config = parse(config_text(valkey_url, tmp_path / "lake"))
    store = IngestStore(valkey_client, LAYOUT, 0, config.worker, max_events=1)  # one job per write
    for n in range(3):
        store.write(IngestBatch([IngestRecord("shop-web", "29", 1, [b'{"event_name":"x%d"}' % n])]), [])
    valkey_client.lpush(LAYOUT.dlq("lake"), b"{}", b"{}")
    valkey_client.hset(LAYOUT.dlq_dropped, "lake", 4)
    at = time.time() + 5  # "now" for collect: five seconds after the jobs were stored
    minute = int(at // 60)
    valkey_client.hset(LAYOUT.destination_stats("lake", minute - 1), mapping={"delivered": 7, "retried": 2})

    status = collect(config, valkey_client, now=at)

    by_name = {q.name: q for q in status.queues}
    assert list(by_name) == ["ingest", "deliver:lake", "retry:lake"]
    assert by_name["ingest"].depth == 3
    assert by_name["ingest"].lag_seconds is not None and by_name["ingest"].lag_seconds >= 5
    assert by_name["deliver:lake"].depth == 0 and by_name["deliver:lake"].lag_seconds is None
    (lake,) = status.destinations
    assert (lake.id, lake.dlq, lake.dlq_dropped) == ("lake", 2, 4)
    assert lake.last_minute == {"delivered": 7, "retried": 2}
    table = render(status)
    assert "ingest" in table and "delivered 7" in table

    config_file = tmp_path / "trackpipe.toml"
    config_file.write_text(config_text(valkey_url, tmp_path / "lake"))
    as_json = run_status(config_file, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert {q["name"]: q["depth"] for q in data["queues"]} == {"ingest": 3, "deliver:lake": 0, "retry:lake": 0}
    assert data["destinations"][0]["dlq"] == 2
    as_table = run_status(config_file)
    assert as_table.returncode == 0 and "retry:lake" in as_table.stdout


@pytest.mark.slow
def test_status_counts_the_workers_of_each_queue(tmp_path: Path, valkey_url: str, valkey_client: redis.Redis) -> None:
    config_file = tmp_path / "trackpipe.toml"
    config_file.write_text(config_text(valkey_url, tmp_path / "lake"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "commands", "worker", "--config", str(config_file), "--queues", "ingest"],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 20
        counts = {}
        while time.monotonic() < deadline:
            counts = {q.name: q.workers for q in collect(parse(config_file.read_text()), valkey_client).queues}
            if counts["ingest"] == 1:
                break
            time.sleep(0.1)
        assert counts == {"ingest": 1, "deliver:lake": 0, "retry:lake": 0}
    finally:
        worker.terminate()
        worker.wait(timeout=20)


def test_status_names_an_unreachable_server(tmp_path: Path) -> None:
    config_file = tmp_path / "trackpipe.toml"
    config_file.write_text(config_text(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "lake"))
    result = run_status(config_file)
    assert result.returncode == 1
    assert "cannot read redis://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_destination_named_dropped_has_its_own_dlq_in_status_and_metrics(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    """`dropped` is a valid destination id: its DLQ (a list) and the dropped counts (a hash) have
    different keys, and status and the scrape-time gauges read both without WRONGTYPE."""
    from workers.queue_metrics import QueueCollector

    text = (
        config_text(valkey_url, tmp_path / "lake")
        + f'\n[[destinations]]\nid = "dropped"\ntype = "file"\npath = "{tmp_path / "d"}"\n'
    )
    config = parse(text)
    valkey_client.lpush(LAYOUT.dlq("dropped"), b"{}", b"{}", b"{}")
    valkey_client.hset(LAYOUT.dlq_dropped, mapping={"dropped": 5, "lake": 1})

    by_id = {d.id: (d.dlq, d.dlq_dropped) for d in collect(config, valkey_client).destinations}
    assert by_id == {"lake": (0, 1), "dropped": (3, 5)}
    gauges = {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in QueueCollector(config, valkey_url).collect()
        for sample in family.samples
    }
    assert gauges[("trackpipe_dlq_events", ("dropped",))] == 3
    assert gauges[("trackpipe_queue_jobs", ("deliver:dropped",))] == 0
