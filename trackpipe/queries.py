"""Read-only queries over Redis that both `trackpipe status` and the workers' queue metrics report:
queue depth and lag, running, scheduled and failed jobs, dead letters and delivery rates."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
from redis import Redis
from rq import Worker

from trackpipe.config import Config
from trackpipe.jobs import make_queue
from trackpipe.keys import INGEST_QUEUE, KeyLayout, deliver_queue, retry_queue

# Dropped-letter counts used to live in `P:dlq:dropped`, the very name of the DLQ of a destination
# whose id is `dropped`. They now live in `layout.dlq_dropped`; a hash still at the old name (left by
# an earlier version) is folded into it the next time a count is written, and read besides it until
# then, so no count is lost and that destination gets its DLQ name back.
LEGACY_DROPPED_ID = "dropped"


def legacy_dropped_key(layout: KeyLayout) -> str:
    return layout.dlq(LEGACY_DROPPED_ID)


def dropped_counts(connection: Redis, layout: KeyLayout) -> dict[str, int]:
    """Destination id -> dead letters dropped, old-name counts included (one round trip, read only)."""
    pipe = connection.pipeline(transaction=True)
    pipe.hgetall(layout.dlq_dropped)
    pipe.type(legacy_dropped_key(layout))
    pipe.hgetall(legacy_dropped_key(layout))  # WRONGTYPE when it is a DLQ: ignored below
    current, legacy_type, legacy = pipe.execute(raise_on_error=False)
    counts: dict[str, int] = {}
    sources = [current, legacy] if legacy_type in (b"hash", "hash") else [current]
    for source in sources:
        if isinstance(source, Exception):
            raise source
        for field, value in source.items():
            name = field.decode() if isinstance(field, bytes) else field
            counts[name] = counts.get(name, 0) + int(value)
    return counts


class QueueStatus(msgspec.Struct):
    name: str
    depth: int  # jobs waiting
    lag_seconds: float | None  # how long the oldest waiting job has waited
    running: int
    scheduled: int  # waiting for their time (retries)
    failed: int
    workers: int


class DestinationStatus(msgspec.Struct):
    id: str
    dlq: int
    dlq_dropped: int
    last_minute: dict[str, int]  # delivered, retried, dead_lettered, filtered, queued
    this_minute: dict[str, int]


class Status(msgspec.Struct):
    at: float
    queues: list[QueueStatus]
    destinations: list[DestinationStatus]


def _queue_status(connection: Redis, name: str, now: float) -> QueueStatus:
    queue = make_queue(name, connection)
    lag = None
    oldest = connection.lindex(queue.key, 0)
    if oldest is not None:
        enqueued = connection.hget(f"{queue.job_class.redis_job_namespace_prefix}{oldest.decode()}", "enqueued_at")
        if enqueued:
            stamp = datetime.fromisoformat(enqueued.decode().replace("Z", "+00:00"))
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            lag = round(max(0.0, now - stamp.timestamp()), 3)
    return QueueStatus(
        name=name,
        depth=queue.count,
        lag_seconds=lag,
        running=queue.started_job_registry.count,
        scheduled=queue.scheduled_job_registry.count,
        failed=queue.failed_job_registry.count,
        workers=Worker.count(connection=connection, queue=queue),
    )


def _counts(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in sorted(raw.items())}


def collect(config: Config, connection: Redis, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    layout = KeyLayout(config.key_prefix)
    names = [INGEST_QUEUE] + [q for d in config.destinations for q in (deliver_queue(d.id), retry_queue(d.id))]
    queues = [_queue_status(connection, name, now) for name in names]
    minute = int(now // 60)
    dropped = dropped_counts(connection, layout)  # counts an older version kept elsewhere included
    destinations = [
        DestinationStatus(
            id=d.id,
            dlq=connection.llen(layout.dlq(d.id)),
            dlq_dropped=dropped.get(d.id, 0),
            last_minute=_counts(connection.hgetall(layout.destination_stats(d.id, minute - 1))),
            this_minute=_counts(connection.hgetall(layout.destination_stats(d.id, minute))),
        )
        for d in config.destinations
    ]
    return Status(now, queues, destinations)
