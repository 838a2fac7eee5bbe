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
from trackpipe.config import Config, parse
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


def queue_gauges(config: Config, redis_url: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """The workers' queue gauges as a scrape reads them: (name, label values) -> value."""
    from workers.queue_metrics import QueueCollector

    return {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in QueueCollector(config, redis_url).collect()
        for sample in family.samples
    }


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

    text = (
        config_text(valkey_url, tmp_path / "lake")
        + f'\n[[destinations]]\nid = "dropped"\ntype = "file"\npath = "{tmp_path / "d"}"\n'
    )
    config = parse(text)
    valkey_client.lpush(LAYOUT.dlq("dropped"), b"{}", b"{}", b"{}")
    valkey_client.hset(LAYOUT.dlq_dropped, mapping={"dropped": 5, "lake": 1})

    by_id = {d.id: (d.dlq, d.dlq_dropped) for d in collect(config, valkey_client).destinations}
    assert by_id == {"lake": (0, 1), "dropped": (3, 5)}
    gauges = queue_gauges(config, valkey_url)
    assert gauges[("trackpipe_dlq_events", ("dropped",))] == 3
    assert gauges[("trackpipe_queue_jobs", ("deliver:dropped",))] == 0


LEAKED = "leaked-key-0123456789"


def store_refused(client: redis.Redis, ring_size: int = 500) -> None:
    """Refused requests as the edge stores them (ingest.store): two for site 29, one for an unknown site."""
    from ingest.unauthorized import AuthFailure, UnauthorizedSample
    from trackpipe.config import WorkerConfig

    store = IngestStore(client, LAYOUT, ring_size, WorkerConfig())
    samples = [
        UnauthorizedSample.of("29", AuthFailure.UNKNOWN_KEY, 1_700_000_000_000, "/events", b'{"event_name":"a"}'),
        UnauthorizedSample.of(
            "29",
            AuthFailure.UNKNOWN_KEY,
            1_700_000_001_000,
            "/events/batch",
            # Keys a producer put in its body: a JSON member, a pasted query string, a plain key.
            f'{{"token":"{LEAKED}","batch":[{{"url":"https://x/?tc_s=29&token={LEAKED}","k":"{TEST_KEY}"}}]}}'.encode(),
        ),
        UnauthorizedSample.of(
            "_unknown_site", AuthFailure.MISSING_KEY, 1_700_000_002_000, "/events", b"\x1b[2J\n{not json"
        ),
    ]
    store.write(None, samples)


def test_status_shows_duplicates_per_source_and_refused_requests_without_keys(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    text = config_text(valkey_url, tmp_path / "lake")
    config = parse(text)
    valkey_client.hset(LAYOUT.source_stats("shop-web"), mapping={"VALID": 5, "INVALID_ACCEPTED": 2, "DUPLICATE": 3})
    store_refused(valkey_client)

    status = collect(config, valkey_client, per_source=True)
    (source,) = status.sources
    assert (source.id, source.processed, source.duplicates) == ("shop-web", 10, 3)
    assert source.by_status == {"DUPLICATE": 3, "INVALID_ACCEPTED": 2, "VALID": 5}
    by_site = {site.site_id: site for site in status.refused}
    assert list(by_site) == ["29", "_unknown_site"]
    assert (by_site["29"].total, by_site["29"].by_reason) == (2, {"unknown key": 2})
    newest, oldest = by_site["29"].latest
    assert (newest.route, newest.reason, newest.received_at) == ("/events/batch", "unknown key", 1_700_000_001_000)
    assert oldest.body == '{"event_name":"a"}'
    assert LEAKED not in newest.body and TEST_KEY not in newest.body
    assert newest.body.startswith('{"token":"***"') and "token=***" in newest.body
    assert by_site["_unknown_site"].by_reason == {"missing key": 1}
    # The metrics scrape does not read them.
    assert collect(config, valkey_client).sources == []

    table = render(status)
    assert "duplicates" in table
    (line,) = [ln for ln in table.splitlines() if ln.startswith("shop-web")]
    assert line.split()[:4] == ["shop-web", "10", "3", "30.0"]
    assert "site '29': 2 (unknown key 2)" in table
    assert "/events/batch" in table and "\x1b" not in table
    assert LEAKED not in table and TEST_KEY not in table

    config_file = tmp_path / "trackpipe.toml"
    config_file.write_text(text)
    as_json = run_status(config_file, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [(s["id"], s["duplicates"]) for s in data["sources"]] == [("shop-web", 3)]
    assert [(s["site_id"], s["total"], len(s["latest"])) for s in data["refused"]] == [
        ("29", 2, 2),
        ("_unknown_site", 1, 1),
    ]
    as_table = run_status(config_file)
    assert as_table.returncode == 0, as_table.stderr
    assert "refused for their key" in as_table.stdout and "30.0" in as_table.stdout
    for output in (as_json.stdout, as_table.stdout):
        assert LEAKED not in output and TEST_KEY not in output


def test_status_counts_jobs_taken_by_a_worker_and_not_started(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis
) -> None:
    """A job on a worker's claims list that has not started (its worker died right after the take)
    is neither waiting nor running: `taken` shows it until it is put back."""
    from workers.claims import Claims

    config = parse(config_text(valkey_url, tmp_path / "lake"))
    store = IngestStore(valkey_client, LAYOUT, 0, config.worker, max_events=1)
    for n in range(2):
        store.write(IngestBatch([IngestRecord("shop-web", "29", 1, [b'{"event_name":"x%d"}' % n])]), [])
    claims = Claims(valkey_client, LAYOUT, "w-1", ["ingest"])
    assert claims.take() is not None  # taken, never started

    status = collect(config, valkey_client)
    ingest = next(q for q in status.queues if q.name == "ingest")
    assert (ingest.depth, ingest.taken, ingest.running) == (1, 1, 0)
    assert [q.taken for q in status.queues if q.name != "ingest"] == [0, 0]
    header, row = render(status).splitlines()[:2]
    assert header.split()[:5] == ["queue", "waiting", "lag", "taken", "running"]
    assert row.split()[0] == "ingest" and row.split()[3] == "1"
    gauges = queue_gauges(config, valkey_url)
    assert gauges[("trackpipe_queue_taken_jobs", ("ingest",))] == 1
    assert gauges[("trackpipe_queue_jobs", ("ingest",))] == 1
