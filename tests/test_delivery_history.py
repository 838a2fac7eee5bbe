"""Delivery counters per hour, kept a month, and `trackpipe.queries.delivery_history` over them: written
by real delivery settlements (`workers.deliver.process_delivery` against a real HTTP receiver) and real
ingest fan-outs (`workers.ingest.process_ingest`) on a real valkey-server, read back per minute, hour
and day. Times are chosen by the test (settlements take `now`), so spans and day boundaries are exact.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support import HookServer, Reply
from trackpipe.config import parse
from trackpipe.keys import DESTINATION_HOUR_STATS_TTL_SECONDS, DESTINATION_MINUTE_STATS_TTL_SECONDS, KeyLayout
from trackpipe.messages import DeliveryBatch, DeliveryEvent, IngestBatch, IngestRecord, encode_batch, encode_delivery
from trackpipe.queries import HISTORY_FIELDS, delivery_history, last_hour_by_destination
from workers.context import WorkerContext
from workers.deliver import process_delivery
from workers.ingest import process_ingest

LAYOUT = KeyLayout()
DAY = 86_400
# A UTC midnight, and a moment 10 h 30 min into that day: the test's "now".
MIDNIGHT = 1_700_006_400
assert MIDNIGHT % DAY == 0
NOW = MIDNIGHT + 10 * 3600 + 30 * 60

CONFIG = """\
redis_url = "{redis_url}"

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]

[[destinations]]
id = "hook"
type = "webhook"
url = "{url}"
read_timeout_seconds = 5
[destinations.retry]
max_attempts = 5
backoff_seconds = [1]

[[destinations]]
id = "dry"
type = "webhook"
url = "http://127.0.0.1:9/never-called"
dry_run = true

[[destinations]]
id = "picky"
type = "webhook"
url = "http://127.0.0.1:9/never-called"
events = ["purchase"]
consent_category = "3"
[destinations.filters]
[[destinations.filters.conditions]]
path = "value"
op = "greater_than"
value = 10
"""


@pytest.fixture
def server() -> Iterator[HookServer]:
    with HookServer() as hook:
        yield hook


@pytest.fixture
def ctx(valkey_client: redis.Redis, valkey_url: str, server: HookServer) -> Iterator[WorkerContext]:
    context = WorkerContext(parse(CONFIG.format(redis_url=valkey_url, url=server.url), env={}), valkey_client)
    try:
        yield context
    finally:
        context.close()


def deliver(ctx: WorkerContext, conn: redis.Redis, destination: str, n: int, at: float) -> None:
    """A delivery job of `n` events to `destination`, settled at time `at`."""
    events = [
        DeliveryEvent(f"e-{uuid.uuid4().hex}", "purchase", json.dumps({"event_name": "purchase", "n": i}).encode())
        for i in range(n)
    ]
    payload = encode_delivery(DeliveryBatch(destination, events, int(at * 1000), "ingest-job"))
    settled = process_delivery(ctx, conn, f"{LAYOUT.rq_prefix}:job:t-{uuid.uuid4().hex}", payload, now=at)
    assert settled is not None


def rejecting(*indexes: int) -> Reply:
    """A 2xx whose body refuses single events (the webhook's per-event rejection)."""
    return Reply(200, json.dumps({"rejected": [{"index": i, "error": "bad event"} for i in indexes]}).encode())


def hour_stats(conn: redis.Redis, destination: str, at: float) -> dict[str, int]:
    raw = conn.hgetall(LAYOUT.destination_hour_stats(destination, int(at) // 3600))
    return {k.decode(): int(v) for k, v in raw.items()}


def test_a_settlement_counts_each_outcome_in_its_minute_and_its_hour(
    ctx: WorkerContext, valkey_client: redis.Redis, server: HookServer
) -> None:
    server.script(rejecting(1), Reply(500, b"down"))
    deliver(ctx, valkey_client, "hook", 3, NOW)  # 2 delivered, 1 refused: dead letter
    deliver(ctx, valkey_client, "hook", 4, NOW + 1)  # 500: 4 retried
    deliver(ctx, valkey_client, "dry", 2, NOW + 2)  # dry run: the destination skips them
    assert len(server.requests()) == 2
    expected = {"delivered": 2, "dead_lettered": 1, "retried": 4}
    assert hour_stats(valkey_client, "hook", NOW) == expected
    minute_key = LAYOUT.destination_stats("hook", NOW // 60)
    assert {k.decode(): int(v) for k, v in valkey_client.hgetall(minute_key).items()} == expected
    # Skipped by the destination itself: among `filtered`, and apart from the consent/conditions split.
    assert hour_stats(valkey_client, "dry", NOW) == {"filtered": 2, "skipped": 2}
    # The hourly counters outlive the console's month view; the per-minute ones stay short-lived.
    hour_ttl = valkey_client.ttl(LAYOUT.destination_hour_stats("hook", NOW // 3600))
    assert DESTINATION_HOUR_STATS_TTL_SECONDS - 60 <= hour_ttl <= DESTINATION_HOUR_STATS_TTL_SECONDS
    assert DESTINATION_HOUR_STATS_TTL_SECONDS >= 31 * DAY
    minute_ttl = valkey_client.ttl(minute_key)
    assert DESTINATION_MINUTE_STATS_TTL_SECONDS - 60 <= minute_ttl <= DESTINATION_MINUTE_STATS_TTL_SECONDS


def test_spans_are_summed_per_minute_hour_and_day(
    ctx: WorkerContext, valkey_client: redis.Redis, server: HookServer
) -> None:
    server.script(Reply(200))
    # Delivered: 1 now, 2 ten minutes ago, 4 two hours ago, 8 two days ago (another day), 16 ten days
    # ago, 32 forty days ago (past the month).
    for n, ago in ((1, 0), (2, 600), (4, 2 * 3600), (8, 2 * DAY), (16, 10 * DAY), (32, 40 * DAY)):
        deliver(ctx, valkey_client, "hook", n, NOW - ago)

    hour = delivery_history(valkey_client, LAYOUT, "hook", "hour", now=NOW)
    assert (hour.step_seconds, len(hour.points)) == (60, 60)
    assert hour.points[-1].at == NOW // 60 * 60 and hour.points[-1].counts["delivered"] == 1
    assert hour.points[-11].counts["delivered"] == 2
    assert hour.totals["delivered"] == 3
    assert set(hour.points[0].counts) == set(HISTORY_FIELDS)  # every field, zeros included

    day = delivery_history(valkey_client, LAYOUT, "hook", "day", now=NOW)
    assert (day.step_seconds, len(day.points)) == (3600, 24)
    assert [p.at for p in day.points] == [NOW // 3600 * 3600 - 3600 * (23 - i) for i in range(24)]
    assert day.points[-1].counts["delivered"] == 3  # this hour: now and ten minutes ago
    assert day.points[-3].counts["delivered"] == 4
    assert day.totals["delivered"] == 7

    week = delivery_history(valkey_client, LAYOUT, "hook", "week", now=NOW)
    assert len(week.points) == 168 and week.totals["delivered"] == 15

    month = delivery_history(valkey_client, LAYOUT, "hook", "month", now=NOW)
    assert (month.step_seconds, len(month.points)) == (DAY, 30)
    assert month.points[-1].at == MIDNIGHT  # days are whole UTC days, today last
    assert month.points[-1].counts["delivered"] == 7  # today's hours summed
    assert month.points[-3].counts["delivered"] == 8
    assert month.points[-11].counts["delivered"] == 16
    assert month.totals["delivered"] == 31  # forty days ago is out of the month
    assert month.totals["retried"] == month.totals["dead_lettered"] == 0

    with pytest.raises(ValueError, match="span: 'year' is not one of hour, day, week, month"):
        delivery_history(valkey_client, LAYOUT, "hook", "year", now=NOW)


def _ingest(ctx: WorkerContext, conn: redis.Redis, events: list[dict]) -> None:
    job_id = f"ingest-{uuid.uuid4().hex}"
    records = [IngestRecord("shop-web", "29", 1_700_000_000_000, [json.dumps(e).encode() for e in events])]
    process_ingest(ctx, conn, job_id, f"{LAYOUT.rq_prefix}:job:{job_id}", encode_batch(IngestBatch(records)))


def _event(i: int, name: str, value: float, consent: list[int]) -> dict:
    return {
        "event_name": name,
        "value": value,
        "user": {"consistent_anonymous_id": f"ca-{i}", "consent_categories": consent},
        "context": {"event_id": f"ev-{i}"},
    }


def test_filtered_events_are_split_between_consent_and_conditions(
    ctx: WorkerContext, valkey_client: redis.Redis
) -> None:
    _ingest(
        ctx,
        valkey_client,
        [
            _event(1, "purchase", 50, [3]),  # passes every check: queued
            _event(2, "purchase", 50, [1]),  # no consent 3: consent
            _event(3, "purchase", 50, []),  # no consent at all: consent
            _event(4, "purchase", 5, [3]),  # value too small: conditions (filters)
            _event(5, "page_view", 50, [1]),  # not in `events`, checked before consent: conditions
        ],
    )
    history = delivery_history(valkey_client, LAYOUT, "picky", "day")
    assert {k: v for k, v in history.totals.items() if v} == {
        "queued": 1,
        "filtered": 4,
        "filtered_consent": 2,
        "filtered_conditions": 2,
    }
    # The per-minute counters hold the same split (the last hour's view reads those).
    assert {k: v for k, v in delivery_history(valkey_client, LAYOUT, "picky", "hour").totals.items() if v} == {
        "queued": 1,
        "filtered": 4,
        "filtered_consent": 2,
        "filtered_conditions": 2,
    }
    # Destinations without filters got every event queued.
    assert delivery_history(valkey_client, LAYOUT, "hook", "hour").totals["queued"] == 5
    ttl = valkey_client.ttl(LAYOUT.destination_hour_stats("picky", int(history.points[-1].at) // 3600))
    if ttl == -2:  # the hour turned between the write and the read: the write is in the hour before
        ttl = valkey_client.ttl(LAYOUT.destination_hour_stats("picky", int(history.points[-2].at) // 3600))
    assert DESTINATION_HOUR_STATS_TTL_SECONDS - 60 <= ttl <= DESTINATION_HOUR_STATS_TTL_SECONDS


def test_last_hour_by_destination_sums_sixty_minutes_and_reads_the_dlq(
    ctx: WorkerContext, valkey_client: redis.Redis, server: HookServer
) -> None:
    server.script(rejecting(0))
    deliver(ctx, valkey_client, "hook", 2, NOW - 59 * 60)  # the oldest minute of the hour: counted
    server.script(Reply(200))
    deliver(ctx, valkey_client, "hook", 4, NOW - 60 * 60)  # one minute older: not counted
    found = last_hour_by_destination(valkey_client, LAYOUT, ["hook", "dry"], now=NOW)
    assert found["hook"]["delivered"] == 1 and found["hook"]["dead_lettered"] == 1
    assert found["hook"]["dlq"] == 1
    assert found["dry"] == {**dict.fromkeys(HISTORY_FIELDS, 0), "dlq": 0}
