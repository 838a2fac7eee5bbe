"""Crash safety with real processes: a worker killed (SIGKILL) at each step of an ingest job, then a
fresh worker; the end state must be that of one clean run of the job.

For every fault point: an ingest job is stored exactly as the edge stores it (IngestStore.write),
`trackpipe worker` runs with TRACKPIPE_FAULT=<point> and dies by SIGKILL inside the job, a fresh
worker re-runs the abandoned job, and the queues, inspector, counters and dedup state are compared
with a clean in-process run of the same job (on fakeredis) and with statuses written out by hand.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from ingest.store import IngestStore, held_batches
from tests.support import delivery_batches_of, poll_until, start_worker, stop_worker
from trackpipe.config import Config, parse
from trackpipe.jobs import delivery_queue, ingest_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord, encode_batch
from workers.context import WorkerContext
from workers.ingest import delivery_job_id, process_ingest

LAYOUT = KeyLayout()
FAULT_POINTS = ["ingest:after_decode", "ingest:after_dedup", "ingest:mid_fanout", "ingest:after_fanout"]
RERUN_DEADLINE = 30.0

CONFIG = """\
redis_url = "{redis_url}"

[worker]
ingest_timeout_seconds = 2
abandoned_grace_seconds = 1
lease_seconds = 2
maintenance_interval_seconds = 1

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]

[[sources]]
id = "other-site"
site_id = "30"
keys = ["other-key-0123456789"]

[[destinations]]
id = "lake"
type = "file"
path = "{lake}"

[[destinations]]
id = "crm-hook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
events = ["purchase"]
consent_category = "3"
"""

T0 = 1_700_000_000_000


def purchase(event_id: str) -> dict[str, Any]:
    return {
        "event_name": "purchase",
        "id": f"O-{event_id}",
        "value": 42.5,
        "revenue": 35,
        "currency": "EUR",
        "type": "online",
        "payment_method": "card",
        "status": "pending",
        "user": {"id": "7", "consistent_anonymous_id": "ca-7", "consent_categories": ["1", "3"]},
        "items": [{"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "price": 35}}],
        "context": {"event_id": event_id, "event_timestamp": T0, "device": {"ip": "198.51.100.4"}},
    }


def custom(event_id: str | None) -> dict[str, Any]:
    context: dict[str, Any] = {"event_timestamp": T0}
    if event_id is not None:
        context["event_id"] = event_id
    return {"event_name": "custom", "user": {"consistent_anonymous_id": "ca-1"}, "context": context}


PAGE_VIEW = {"event_name": "page_view", "context": {"event_id": "pv-1", "event_timestamp": T0}}  # no page_type
SEEN_BEFORE = "seen-before"  # claimed by an earlier job: a true duplicate
# (record, event, expected status, event id or None when trackpipe generates it)
EVENTS: list[tuple[int, dict[str, Any], str, str | None]] = [
    (0, purchase("buy-1"), "VALID", "buy-1"),  # a single-event request
    (1, custom("c-1"), "VALID", "c-1"),  # a batch request from here ...
    (1, custom("c-1"), "DUPLICATE", "c-1"),
    (1, PAGE_VIEW, "INVALID_ACCEPTED", "pv-1"),
    (1, custom(None), "INVALID_ACCEPTED", None),
    (1, custom(None), "INVALID_ACCEPTED", None),
    (1, custom(SEEN_BEFORE), "DUPLICATE", SEEN_BEFORE),
    (1, {"context": {"event_id": "nn-1"}}, "INVALID_REJECTED", "nn-1"),
    (1, purchase("buy-1"), "DUPLICATE", "buy-1"),
    (1, purchase("buy-2"), "VALID", "buy-2"),
    (2, custom("c-1"), "VALID", "c-1"),  # ... and a request from another source, same event id
]
RECORD_SOURCES = [("shop-web", "29"), ("shop-web", "29"), ("other-site", "30")]


def make_batch(received_at: int) -> IngestBatch:
    records = []
    for r, (source, site) in enumerate(RECORD_SOURCES):
        events = [json.dumps(event).encode() for rec, event, *_ in EVENTS if rec == r]
        records.append(IngestRecord(source, site, received_at + r, events))
    return IngestBatch(records)


def expected_statuses(source: str) -> list[str]:
    return [status for rec, _, status, _ in EVENTS if RECORD_SOURCES[rec][0] == source]


def expected_delivered_ids(destination: str) -> list[str | None]:
    accepted = [(event, eid) for _, event, status, eid in EVENTS if status in ("VALID", "INVALID_ACCEPTED")]
    if destination == "crm-hook":
        return [eid for event, eid in accepted if event.get("event_name") == "purchase"]
    return [eid for _, eid in accepted]


# --- reading the state -----------------------------------------------------------------------


def inspector(conn, source: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in conn.lrange(LAYOUT.inspector(source), 0, -1)]


def source_stats(conn, source: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in conn.hgetall(LAYOUT.source_stats(source)).items()}


def destination_totals(conn, destination: str) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for key in conn.scan_iter(f"{LAYOUT.prefix}:stats:dest:{destination}:*"):
        for field, value in conn.hgetall(key).items():
            totals[field.decode()] += int(value)
    return dict(totals)


def delivery_batches(conn, destination: str) -> list[tuple[str, Any]]:
    """(delivery job id, DeliveryBatch) for every entry of the destination's queue, in queue order
    (a job id pushed twice shows up twice)."""
    queue = delivery_queue(destination, conn)
    job_ids = [raw.decode() for raw in conn.lrange(LAYOUT.queue(f"deliver:{destination}"), 0, -1)]
    return [(job_id, b) for job_id in job_ids for b in delivery_batches_of(conn, queue.fetch_job(job_id))]


def dedup_fields(conn) -> list[bytes]:
    fields: list[bytes] = []
    for key in conn.scan_iter(LAYOUT.dedup_pattern):
        fields.extend(conn.hkeys(key))
    return fields


def rq_state(conn) -> dict[str, int]:
    prefix = LAYOUT.rq_prefix
    return {
        "queued": conn.llen(LAYOUT.queue("ingest")),
        "started": conn.zcard(f"{prefix}:wip:ingest"),
        "scheduled": conn.zcard(f"{prefix}:scheduled:ingest"),
        "failed": conn.zcard(f"{prefix}:failed:ingest"),
    }


def snapshot(conn) -> dict[str, Any]:
    """Everything an ingest job leaves behind, in a form two servers can be compared by."""
    return {
        "inspector": {s: inspector(conn, s) for s in ("shop-web", "other-site")},
        "stats": {s: source_stats(conn, s) for s in ("shop-web", "other-site")},
        "destinations": {d: destination_totals(conn, d) for d in ("lake", "crm-hook")},
        "deliveries": {
            d: [(job_id, b.destination_id, b.origin, b.events) for job_id, b in delivery_batches(conn, d)]
            for d in ("lake", "crm-hook")
        },
        "dedup": sorted(dedup_fields(conn)),
    }


def clean_run(config: Config, job_id: str, payload: bytes) -> dict[str, Any]:
    """The same job, run once, undisturbed, in this process, on fakeredis."""
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        ctx = WorkerContext(config, fake)
        seed_earlier_job(ctx, fake)
        outcome = process_ingest(ctx, fake, job_id, f"{LAYOUT.rq_prefix}:job:{job_id}", payload)
        assert not outcome.already_done
        return snapshot(fake)
    finally:
        fake.close()


def seed_earlier_job(ctx: WorkerContext, conn) -> None:
    """An earlier job saw SEEN_BEFORE (its verdicts live in its own, separate job hash)."""
    key = ctx.dedup.key_for("shop-web", SEEN_BEFORE)
    assert ctx.dedup.claim(conn, f"{LAYOUT.rq_prefix}:job:earlier", [(key, int(time.time() * 1000))]) == [True]


def wait_until_lease_lapsed(conn) -> None:
    """The dead worker counts as dead once its lease has lapsed (workers.claims)."""
    poll_until(
        lambda: not list(conn.scan_iter(LAYOUT.lease_prefix + "*")),
        20,
        "the killed worker's lease never lapsed",
    )


def job_fields(conn, job_id: str) -> tuple[bytes | None, bytes | None]:
    status, started_at = conn.hmget(f"{LAYOUT.rq_prefix}:job:{job_id}", "status", "started_at")
    return status, started_at


def rerun_ended(conn, job_id: str, killed_started_at: bytes | None) -> bool:
    """The job was taken up again after the kill and that run has ended, however it ended: the job
    is gone (finished, result_ttl=0), or it was started anew and is no longer running."""
    state = rq_state(conn)
    if state["queued"] or state["started"]:
        return False
    if not conn.exists(f"{LAYOUT.rq_prefix}:job:{job_id}"):
        return True
    status, started_at = job_fields(conn, job_id)
    return started_at != killed_started_at and status != b"started"


# --- the test --------------------------------------------------------------------------------


@pytest.fixture
def setup(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path):
    text = CONFIG.format(redis_url=valkey_url, lake=tmp_path / "lake")
    config_file = tmp_path / "worker.toml"
    config_file.write_text(text)
    config = parse(text, env={})
    ctx = WorkerContext(config, valkey_client)
    seed_earlier_job(ctx, valkey_client)
    payload_batch = make_batch(int(time.time() * 1000))
    IngestStore(valkey_client, LAYOUT, 10, config.worker).write(payload_batch, [])
    [job_id] = [raw.decode() for raw in valkey_client.lrange(LAYOUT.queue("ingest"), 0, -1)]
    job = ingest_queue(valkey_client).fetch_job(job_id)
    assert job is not None
    # The clean run gets the same events as the job's argument instead of its stored parts.
    [held] = held_batches(valkey_client, LAYOUT, job)
    assert held == payload_batch
    return config, config_file, job_id, encode_batch(payload_batch)


@pytest.mark.slow  # a crash run of several seconds per fault point
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_job_killed_at_any_step_ends_as_one_clean_run(
    point: str, setup, valkey_client: redis.Redis, tmp_path: Path
) -> None:
    config, config_file, job_id, payload = setup
    conn = valkey_client
    log = tmp_path / "worker.log"

    worker = start_worker(config_file, "--queues", "ingest", env={"TRACKPIPE_FAULT": point}, log=log)
    fresh = None
    try:
        returncode = worker.wait(timeout=30)
        assert returncode == -9, f"worker with TRACKPIPE_FAULT={point} exited {returncode}\n{log.read_text()}"
        # Killed inside the job: still "started", nothing committed before the fan-out's EXEC.
        assert rq_state(conn)["started"] == 1
        committed = point == "ingest:after_fanout"
        assert bool(conn.llen(LAYOUT.queue("deliver:lake"))) == committed
        assert bool(conn.exists(LAYOUT.inspector("shop-web"))) == committed
        assert bool(conn.exists(LAYOUT.source_stats("shop-web"))) == committed

        _, killed_started_at = job_fields(conn, job_id)
        assert killed_started_at is not None

        wait_until_lease_lapsed(conn)
        fresh = start_worker(config_file, "--queues", "ingest", log=log)
        poll_until(
            lambda: rerun_ended(conn, job_id, killed_started_at) or fresh.poll() is not None,
            RERUN_DEADLINE,
            lambda: f"the abandoned job was not re-run: {rq_state(conn)}\n{log.read_text()}",
        )
        assert fresh.poll() is None, f"the fresh worker exited {fresh.returncode}\n{log.read_text()}"
        rerun_status = job_fields(conn, job_id)[0]
    finally:
        if fresh is not None:
            stop_worker(fresh)
        stop_worker(worker)  # the dead worker's forked scheduler outlives it

    state = snapshot(conn)

    # Exactly one delivery job per destination, holding every accepted event exactly once.
    for destination in ("lake", "crm-hook"):
        batches = state["deliveries"][destination]
        assert [b[0] for b in batches] == [delivery_job_id(job_id, destination)]
        [(_, dest, origin, events)] = batches
        assert (dest, origin) == (destination, job_id)
        ids = [e.event_id for e in events]
        expected = expected_delivered_ids(destination)
        assert len(ids) == len(expected)
        assert [i for i, e in zip(ids, expected, strict=True) if e is not None] == [e for e in expected if e]
        sources_and_ids = [(json.loads(e.body)["context"]["source_id"], e.event_id) for e in events]
        assert len(set(sources_and_ids)) == len(sources_and_ids), "an event delivered twice"

    # Statuses as written out by hand: no event counted as a duplicate of itself.
    for source in ("shop-web", "other-site"):
        statuses = [r["status"] for r in reversed(state["inspector"][source])]
        assert statuses == expected_statuses(source)
        assert state["stats"][source] == dict(Counter(expected_statuses(source)))

    # The dedup state holds each id once: the accepted ones with an id of their own, and the earlier one.
    dedupable = {
        (RECORD_SOURCES[rec][0], eid)
        for rec, _, status, eid in EVENTS
        if eid is not None and status != "INVALID_REJECTED"
    }
    assert len(state["dedup"]) == len(set(state["dedup"])) == len(dedupable)

    # And everything equals one clean run of the same job.
    assert state == clean_run(config, job_id, payload)

    # The re-run itself ended as a clean run does: the job finished (its hash deleted, result_ttl=0),
    # not failed and scheduled for yet another retry, nor moved to the failed registry.
    assert rerun_status is None, (
        f"the re-run of the abandoned job did not finish cleanly: status {rerun_status!r}, {rq_state(conn)}\n"
        + log.read_text()[-3000:]
    )
    assert rq_state(conn) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}


@pytest.mark.slow
def test_an_idle_worker_reruns_a_job_abandoned_while_it_waits(setup, valkey_client: redis.Redis, tmp_path: Path):
    """A worker already running and idle (blocked waiting for jobs) must still notice, within a few
    maintenance intervals, that another worker died in a job, and re-run it: the queue is empty,
    nothing else will wake the survivor up."""
    config, config_file, job_id, payload = setup
    conn = valkey_client
    log = tmp_path / "worker.log"
    fresh = None
    worker = start_worker(config_file, "--queues", "ingest", env={"TRACKPIPE_FAULT": "ingest:after_dedup"}, log=log)
    try:
        assert worker.wait(timeout=30) == -9, log.read_text()
        _, killed_started_at = job_fields(conn, job_id)
        # Started before the dead worker's job counts as abandoned, and then left idle.
        fresh = start_worker(config_file, "--queues", "ingest", log=log)
        poll_until(
            lambda: rerun_ended(conn, job_id, killed_started_at) or fresh.poll() is not None,
            RERUN_DEADLINE,
            lambda: f"an idle worker did not re-run the abandoned job: {rq_state(conn)}\n{log.read_text()}",
        )
        assert fresh.poll() is None, log.read_text()
    finally:
        if fresh is not None:
            stop_worker(fresh)
        stop_worker(worker)
    assert snapshot(conn) == clean_run(config, job_id, payload)
