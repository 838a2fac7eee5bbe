"""`trackpipe status`: queues, lag, workers, retries, dead letters and delivery rates at a glance."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
from redis import Redis
from rq import Worker

from trackpipe.config import Config
from trackpipe.jobs import make_queue
from trackpipe.keys import INGEST_QUEUE, KeyLayout, deliver_queue, retry_queue
from workers.deadletter import dropped_counts


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


def render(status: Status) -> str:
    """The status as a table for a terminal (pure)."""
    lines = [f"{'queue':<32} {'waiting':>8} {'lag':>9} {'running':>8} {'retries':>8} {'failed':>7} {'workers':>8}"]
    for q in status.queues:
        lag = "-" if q.lag_seconds is None else f"{q.lag_seconds:.1f}s"
        lines.append(f"{q.name:<32} {q.depth:>8} {lag:>9} {q.running:>8} {q.scheduled:>8} {q.failed:>7} {q.workers:>8}")
    if status.destinations:
        lines.append("")
        lines.append(f"{'destination':<24} {'dlq':>7} {'dropped':>8}  this minute | last minute")
        for d in status.destinations:
            now = ", ".join(f"{k} {v}" for k, v in d.this_minute.items()) or "idle"
            last = ", ".join(f"{k} {v}" for k, v in d.last_minute.items()) or "idle"
            lines.append(f"{d.id:<24} {d.dlq:>7} {d.dlq_dropped:>8}  {now} | {last}")
    return "\n".join(lines)
