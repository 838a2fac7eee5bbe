"""Read-only queries over Redis that both `trackpipe status` and the workers' queue metrics report:
queue depth and lag, running, scheduled and failed jobs, dead letters and delivery rates; and, for
`trackpipe status` and the console, events per source and status (duplicates among them) and the
requests the edge refused for their key. Also the shape of the delivery failures the inspector shows."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec
from redis import Redis
from rq import Worker

from trackpipe.config import Config
from trackpipe.jobs import make_queue
from trackpipe.keys import INGEST_QUEUE, UNKNOWN_SITE_BUCKET, KeyLayout, deliver_queue, retry_queue
from trackpipe.logs import redact

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


class SourceStatus(msgspec.Struct):
    id: str
    processed: int  # events the ingest jobs gave a status, since the counters began
    duplicates: int  # of which DUPLICATE: a high share means a producer reuses event ids
    by_status: dict[str, int]


class RefusedSample(msgspec.Struct):
    """One request the edge refused for its key, as the edge sampled it (ingest.unauthorized), with
    anything shaped like a key masked in the body (see `mask_keys`)."""

    received_at: int  # ms
    reason: str  # missing key, unknown key, missing tc_s
    route: str  # the path only, never the query string
    body: str  # the start of the body (up to 2 KB), as sent, keys masked
    body_bytes: int  # the whole body's size


class RefusedSite(msgspec.Struct):
    site_id: str  # a configured site id, or UNKNOWN_SITE_BUCKET for every other `tc_s`
    total: int
    by_reason: dict[str, int]
    latest: list[RefusedSample]  # newest first


class Status(msgspec.Struct):
    at: float
    queues: list[QueueStatus]
    destinations: list[DestinationStatus]
    sources: list[SourceStatus] = msgspec.field(default_factory=list)
    refused: list[RefusedSite] = msgspec.field(default_factory=list)


class DeliveryFailure(msgspec.Struct):
    """A delivery that ended in a dead-letter queue (or was skipped by its destination), kept per
    source (`P:inspectfail:<source>`, JSON) so that the inspector shows the event FAILED (or
    FILTERED) for that destination, with the reason."""

    event_id: str
    destination_id: str
    reason: str
    at: int  # ms, when it was dead-lettered
    received_at: int | None = None  # ms, the event's receive time (tells apart events sharing an id)
    # What the inspector shows for the destination: FAILED (dead letter) or FILTERED (the destination
    # skipped the event: it cannot map it, or a dry run). Entries written before this field are FAILED.
    status: str = "FAILED"


_failure_decoder = msgspec.json.Decoder(DeliveryFailure)


def decode_failures(raw: Iterable[bytes]) -> list[DeliveryFailure]:
    """The entries that decode (a damaged one is skipped, not a 500)."""
    found = []
    for item in raw:
        try:
            found.append(_failure_decoder.decode(item))
        except msgspec.DecodeError:
            continue
    return found


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


def source_statuses(config: Config, connection: Redis) -> list[SourceStatus]:
    """Events per status of every configured source (one round trip)."""
    layout = KeyLayout(config.key_prefix)
    pipe = connection.pipeline(transaction=False)
    for source in config.sources:
        pipe.hgetall(layout.source_stats(source.id))
    found = []
    for source, raw in zip(config.sources, pipe.execute(), strict=True):
        counts = _counts(raw)
        found.append(SourceStatus(source.id, sum(counts.values()), counts.get("DUPLICATE", 0), counts))
    return found


# Masked in a refused request's body start before anyone sees it: `token=...` (also percent-encoded,
# as a query string pasted into a body or a pixel URL would hold it), `Bearer ...`, and a JSON
# `"token"`, `"key"` or `"api_key"` member.
_KEY_SHAPES = re.compile(
    r"""((?:token|tc_key|api_key)(?:=|%3D)|Bearer\s+|"(?:token|key|api_key|authorization)"\s*:\s*")[^\s&'"]+""",
    re.IGNORECASE,
)


def mask_keys(text: str, plain_keys: Iterable[str] = ()) -> str:
    """`text` with anything shaped like a key masked, and every given plain key wherever it appears."""
    for key in plain_keys:
        if key:
            text = text.replace(key, "***")
    return redact(_KEY_SHAPES.sub(lambda m: m.group(1) + "***", text))


def plain_keys(config: Config) -> list[str]:
    """The sources' keys kept in plain text (hashed ones cannot be searched for, and are not secret)."""
    return [k for s in config.sources for k in s.keys if not k.startswith("sha256:")]


_sample_decoder = msgspec.json.Decoder(RefusedSample)


def refused_sites(config: Config, connection: Redis, latest: int = 5, site: str | None = None) -> list[RefusedSite]:
    """Per site that had refused requests: counts by reason and the `latest` samples (two round trips)."""
    layout = KeyLayout(config.key_prefix)
    by_site: dict[str, dict[str, int]] = {}
    for field, value in connection.hgetall(layout.unauthorized_count).items():
        # "<site>|<reason>": a reason never holds "|", a site id may.
        site_id, _, reason = field.decode("utf-8", "replace").rpartition("|")
        by_site.setdefault(site_id, {})[reason] = int(value)
    if site is not None:
        by_site = {site: by_site.get(site, {})}
    names = sorted(by_site, key=lambda s: (s == UNKNOWN_SITE_BUCKET, s))
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.lrange(layout.unauthorized_ring(name), 0, latest - 1)
    keys = plain_keys(config)
    found = []
    for name, ring in zip(names, pipe.execute() if names else [], strict=True):
        samples = []
        for raw in ring:
            try:
                sample = _sample_decoder.decode(raw)
            except msgspec.DecodeError:
                continue
            sample.body = mask_keys(sample.body, keys)
            samples.append(sample)
        counts = dict(sorted(by_site[name].items()))
        found.append(RefusedSite(name, sum(counts.values()), counts, samples))
    return found


def collect(
    config: Config, connection: Redis, now: float | None = None, *, per_source: bool = False, refused_latest: int = 5
) -> Status:
    """Queues and destinations; with `per_source`, also every source's statuses and refused requests
    (left out of the metrics scrape, which reports those as counters of its own)."""
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
    if not per_source:
        return Status(now, queues, destinations)
    sources = source_statuses(config, connection)
    return Status(now, queues, destinations, sources, refused_sites(config, connection, refused_latest))
