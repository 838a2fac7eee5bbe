"""Read-only queries over Redis that both `trackpipe status` and the workers' queue metrics report:
queue depth and lag, running, scheduled and failed jobs, dead letters and delivery rates; and, for
`trackpipe status` and the console, events per source and status (duplicates among them) and the
requests the edge refused for their key. Also the shape of the delivery failures the inspector shows."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from redis import Redis
from rq import Worker

from trackpipe.config import Config
from trackpipe.jobs import make_queue
from trackpipe.keys import (
    HISTORY_FIELDS,
    INGEST_QUEUE,
    UNKNOWN_SITE_BUCKET,
    KeyLayout,
    deliver_queue,
    retry_queue,
)
from trackpipe.logs import redact

if TYPE_CHECKING:
    from trackpipe.sharded import Sharded

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
    # Taken by a worker (on its claims list) and not started: about to start, or its worker died
    # and the job waits to be put back on its queue (workers.claims: after two leases).
    taken: int = 0


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
    # Several shards: what each holds and whether it answered (the figures above are their union).
    shards: list[ShardStatus] = msgspec.field(default_factory=list)


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


def taken_by_queue(connection: Redis, layout: KeyLayout) -> dict[str, int]:
    """Per queue, the jobs on workers' claims lists that have not started (see QueueStatus.taken).
    A claims list holds the one job its worker runs, so this is a handful of reads."""
    job_ids: list[str] = []
    for claims in connection.scan_iter(match=f"{layout.claims_prefix}*", count=500):
        job_ids += [j.decode() for j in connection.lrange(claims, 0, -1)]
    if not job_ids:
        return {}
    pipe = connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(f"{layout.rq_prefix}:job:{job_id}", "origin", "status")
    taken: dict[str, int] = {}
    for origin, status in pipe.execute():
        if origin is not None and status != b"started":
            queue = origin.decode()
            taken[queue] = taken.get(queue, 0) + 1
    return taken


def _queue_status(connection: Redis, name: str, now: float, taken: int = 0) -> QueueStatus:
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
        taken=taken,
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
    taken = taken_by_queue(connection, layout)
    queues = [_queue_status(connection, name, now, taken.get(name, 0)) for name in names]
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


# -- delivery history (the console's destination page) ------------------------------------------------


class HistorySpan(msgspec.Struct, frozen=True):
    step_seconds: int  # one point covers this much time
    points: int


# Last hour per minute (the per-minute counters), day and week per hour, month per day (each day the
# sum of its hours: the hourly counters are kept 35 days).
HISTORY_SPANS: dict[str, HistorySpan] = {
    "hour": HistorySpan(60, 60),
    "day": HistorySpan(3_600, 24),
    "week": HistorySpan(3_600, 168),
    "month": HistorySpan(86_400, 30),
}


class HistoryPoint(msgspec.Struct):
    at: int  # unix seconds: where the point's step starts (UTC minute, hour or day)
    counts: dict[str, int]  # every field of HISTORY_FIELDS


class DeliveryHistory(msgspec.Struct):
    destination_id: str
    span: str
    step_seconds: int
    points: list[HistoryPoint]  # oldest first, one per step (empty ones too), the current step last
    totals: dict[str, int]  # the points summed


def _summed(raws: Iterable[dict[bytes, bytes]]) -> dict[str, int]:
    counts = dict.fromkeys(HISTORY_FIELDS, 0)
    for raw in raws:
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            if name in counts:
                counts[name] += int(value)
    return counts


def delivery_history(
    connection: Redis, layout: KeyLayout, destination_id: str, span: str, now: float | None = None
) -> DeliveryHistory:
    """A destination's outcome counts over the last `span` ("hour", "day", "week" or "month"), point
    by point and in total, in one round trip. ValueError for another span."""
    shape = HISTORY_SPANS.get(span)
    if shape is None:
        raise ValueError(f"span: {span!r} is not one of {', '.join(HISTORY_SPANS)}")
    now = time.time() if now is None else now
    current = int(now // shape.step_seconds)
    steps = list(range(current - shape.points + 1, current + 1))
    pipe = connection.pipeline(transaction=False)
    # Keys read per point: one minute, one hour, or a day's 24 hours.
    per_point: list[list[str]] = []
    for step in steps:
        if span == "hour":
            keys = [layout.destination_stats(destination_id, step)]
        elif span == "month":
            keys = [layout.destination_hour_stats(destination_id, step * 24 + h) for h in range(24)]
        else:
            keys = [layout.destination_hour_stats(destination_id, step)]
        per_point.append(keys)
        for key in keys:
            pipe.hgetall(key)
    replies = iter(pipe.execute())
    points = [
        HistoryPoint(step * shape.step_seconds, _summed(next(replies) for _ in keys))
        for step, keys in zip(steps, per_point, strict=True)
    ]
    totals = {field: sum(p.counts[field] for p in points) for field in HISTORY_FIELDS}
    return DeliveryHistory(destination_id, span, shape.step_seconds, points, totals)


def last_hour_by_destination(
    connection: Redis, layout: KeyLayout, destination_ids: list[str], now: float | None = None
) -> dict[str, dict[str, int]]:
    """Each destination's counts over the last 60 minutes (the current one included) and its DLQ size
    (`dlq`), in one round trip: the overview's table."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    pipe = connection.pipeline(transaction=False)
    for destination_id in destination_ids:
        for m in range(minute - 59, minute + 1):
            pipe.hgetall(layout.destination_stats(destination_id, m))
        pipe.llen(layout.dlq(destination_id))
    replies = iter(pipe.execute())
    found = {}
    for destination_id in destination_ids:
        counts = _summed(next(replies) for _ in range(60))
        counts["dlq"] = int(next(replies))
        found[destination_id] = counts
    return found


# --- the source inspector and its data-quality view (the console) ----------------------------------

_record_decoder = msgspec.json.Decoder(dict)


class InspectorLists(msgspec.Struct):
    """What the inspector keeps of a source, read in one round trip (records as stored, JSON)."""

    counts: dict[str, int]  # events per status since the counters began
    ordinary: list[bytes]  # the sampled events and every rejected one, newest first
    tests: list[bytes]  # events with a test_code, newest first
    failures: list[DeliveryFailure]  # newest first


def inspector_lists(connection: Redis, layout: KeyLayout, source_id: str) -> InspectorLists:
    pipe = connection.pipeline(transaction=False)
    pipe.hgetall(layout.source_stats(source_id))
    pipe.lrange(layout.inspector(source_id), 0, -1)
    pipe.lrange(layout.inspector_tests(source_id), 0, -1)
    pipe.lrange(layout.inspector_failures(source_id), 0, -1)
    stats, ordinary, tests, failed = pipe.execute()
    return InspectorLists(_counts(stats), ordinary, tests, decode_failures(failed))


def decode_records(raw: Iterable[bytes]) -> list[dict]:
    """Inspector records as dicts, in order; a damaged one is skipped."""
    found = []
    for item in raw:
        try:
            record = _record_decoder.decode(item)
        except msgspec.DecodeError:
            continue
        found.append(record)
    return found


def newest_first(*lists: list[dict]) -> list[dict]:
    """Lists that are each newest first, merged into one (by receive time; ties keep list order)."""
    merged = [r for records in lists for r in records]
    # sorted() is stable: within one list, records of the same millisecond keep their order.
    return sorted(merged, key=lambda r: -int(r.get("received_at") or 0))


QUALITY_STATUSES = ("VALID", "INVALID_ACCEPTED", "INVALID_REJECTED", "DUPLICATE")


class MessageCount(msgspec.Struct):
    level: str  # "warning" or "error"
    kind: str  # the message with its varying parts left out (workers.inspector.message_kind)
    count: int  # events that had it


class SourceQuality(msgspec.Struct):
    source_id: str
    hours: list[int]  # hours since the epoch, oldest first
    by_hour: list[dict[str, int]]  # per hour: status -> events
    totals: dict[str, int]  # over the hours shown
    messages: list[MessageCount]  # the last 24 hours, most frequent first


def source_quality(
    connection: Redis, layout: KeyLayout, source_id: str, *, hours: int = 24, now_ms: int | None = None, top: int = 20
) -> SourceQuality:
    """A source's statuses per hour over the last `hours` (at most 35 days are kept) and its most
    frequent warnings and errors over the last 24 hours (one round trip)."""
    now_hour = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) // 3_600_000
    shown = list(range(now_hour - hours + 1, now_hour + 1))
    pipe = connection.pipeline(transaction=False)
    for hour in shown:
        pipe.hgetall(layout.source_hourly(source_id, hour))
    for hour in range(now_hour - 23, now_hour + 1):
        pipe.hgetall(layout.source_messages(source_id, hour))
    answers = pipe.execute()
    by_hour = [_counts(raw) for raw in answers[: len(shown)]]
    totals = {s: sum(h.get(s, 0) for h in by_hour) for s in QUALITY_STATUSES}
    messages: dict[str, int] = {}
    for raw in answers[len(shown) :]:
        for field, value in raw.items():
            name = field.decode("utf-8", "replace")
            messages[name] = messages.get(name, 0) + int(value)
    ranked = sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    found = [MessageCount(*name.split("|", 1), count) for name, count in ranked if "|" in name]
    return SourceQuality(source_id, shown, by_hour, totals, found)


# --- several shards: each shard is read as above, and the answers combined (pure) ----------------


def sum_counts(many: Iterable[dict[str, int]]) -> dict[str, int]:
    """Count dicts added up, keys sorted."""
    total: dict[str, int] = {}
    for counts in many:
        for name, value in counts.items():
            total[name] = total.get(name, 0) + value
    return dict(sorted(total.items()))


def combine_queues(per_shard: list[list[QueueStatus]]) -> list[QueueStatus]:
    """Each queue over every shard: counts summed, the lag the largest (the oldest waiting job)."""
    combined: dict[str, QueueStatus] = {}
    for queues in per_shard:
        for q in queues:
            held = combined.get(q.name)
            if held is None:
                combined[q.name] = msgspec.structs.replace(q)
                continue
            lags = [lag for lag in (held.lag_seconds, q.lag_seconds) if lag is not None]
            held.depth += q.depth
            held.lag_seconds = max(lags) if lags else None
            held.running += q.running
            held.scheduled += q.scheduled
            held.failed += q.failed
            held.workers += q.workers
            held.taken += q.taken
    return list(combined.values())


def combine_destinations(per_shard: list[list[DestinationStatus]]) -> list[DestinationStatus]:
    combined: dict[str, DestinationStatus] = {}
    for destinations in per_shard:
        for d in destinations:
            held = combined.get(d.id)
            if held is None:
                combined[d.id] = msgspec.structs.replace(d)
                continue
            held.dlq += d.dlq
            held.dlq_dropped += d.dlq_dropped
            held.last_minute = sum_counts([held.last_minute, d.last_minute])
            held.this_minute = sum_counts([held.this_minute, d.this_minute])
    return list(combined.values())


def combine_sources(per_shard: list[list[SourceStatus]]) -> list[SourceStatus]:
    """A source's counters summed over the shards (after a move, its counts on the old shard stay)."""
    combined: dict[str, SourceStatus] = {}
    for sources in per_shard:
        for s in sources:
            held = combined.get(s.id)
            combined[s.id] = (
                msgspec.structs.replace(s)
                if held is None
                else SourceStatus(
                    s.id,
                    held.processed + s.processed,
                    held.duplicates + s.duplicates,
                    sum_counts([held.by_status, s.by_status]),
                )
            )
    return list(combined.values())


class ShardStatus(msgspec.Struct):
    """One shard in `trackpipe status` (only when there are several)."""

    name: str
    url: str  # password masked
    reachable: bool
    error: str | None  # why it could not be read
    sources: list[str]  # the configured sources whose events go to it now
    queues: list[QueueStatus]
    waiting: int  # jobs waiting over its queues
    scheduled: int  # retries waiting for their time
    running: int
    workers: int  # workers registered on its ingest queue


def shard_summary(name: str, url: str, sources: list[str], queues: list[QueueStatus]) -> ShardStatus:
    ingest = next((q for q in queues if q.name == INGEST_QUEUE), None)
    return ShardStatus(
        name,
        url,
        True,
        None,
        sources,
        queues,
        sum(q.depth for q in queues),
        sum(q.scheduled for q in queues),
        sum(q.running for q in queues),
        ingest.workers if ingest else 0,
    )


def collect_union(
    config: Config,
    sharded: Sharded,
    now: float | None = None,
    *,
    per_source: bool = False,
    refused_latest: int = 5,
    errors: tuple[type[BaseException], ...] = (),
) -> Status:
    """`collect` over every shard of `sharded`, combined; with more than one shard, `shards` says
    what each holds. A shard whose read raises one of `errors` is reported unreachable and left out
    of the union (the others are still read); other exceptions propagate. The refused requests are
    the home shard's."""
    from trackpipe.logs import masked_url
    from trackpipe.shards import assignment

    now = time.time() if now is None else now
    if not config.shards:  # one shard: exactly what `collect` reads
        return collect(config, sharded.home, now, per_source=per_source, refused_latest=refused_latest)
    assigned = assignment(config)
    home_name = config.shards[0].name
    parts: list[Status] = []
    shard_rows: list[ShardStatus] = []
    refused: list[RefusedSite] = []
    for client in sharded:
        held = sorted(s for s, name in assigned.items() if name == client.name)
        url = masked_url(client.shard.redis_url)
        try:
            part = collect(config, client.redis, now)
            if per_source:
                part.sources = source_statuses(config, client.redis)
                if client.name == home_name:
                    refused = refused_sites(config, client.redis, refused_latest)
        except errors as exc:
            shard_rows.append(
                ShardStatus(client.name, url, False, f"{type(exc).__name__}: {exc}", held, [], 0, 0, 0, 0)
            )
            continue
        parts.append(part)
        shard_rows.append(shard_summary(client.name, url, held, part.queues))
    return Status(
        now,
        combine_queues([p.queues for p in parts]),
        combine_destinations([p.destinations for p in parts]),
        combine_sources([p.sources for p in parts]) if per_source else [],
        refused,
        shard_rows,
    )


def combine_histories(histories: list[DeliveryHistory]) -> DeliveryHistory:
    """One destination's history over the shards (the same span and `now` on each): point by point."""
    first = histories[0]
    points = [
        HistoryPoint(point.at, sum_counts(h.points[i].counts for h in histories))
        for i, point in enumerate(first.points)
    ]
    totals = sum_counts(h.totals for h in histories)
    return DeliveryHistory(first.destination_id, first.span, first.step_seconds, points, totals)


def combine_by_destination(per_shard: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """`last_hour_by_destination` answers of several shards, added up."""
    found: dict[str, list[dict[str, int]]] = {}
    for answer in per_shard:
        for destination_id, counts in answer.items():
            found.setdefault(destination_id, []).append(counts)
    return {d: sum_counts(many) for d, many in found.items()}


def combine_quality(qualities: list[SourceQuality], top: int = 20) -> SourceQuality:
    """One source's quality over the shards it has been on (the same hours on each)."""
    first = qualities[0]
    by_hour = [sum_counts(q.by_hour[i] for q in qualities) for i in range(len(first.hours))]
    totals = {s: sum(q.totals.get(s, 0) for q in qualities) for s in QUALITY_STATUSES}
    messages: dict[tuple[str, str], int] = {}
    for q in qualities:
        for m in q.messages:
            messages[(m.level, m.kind)] = messages.get((m.level, m.kind), 0) + m.count
    ranked = sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return SourceQuality(first.source_id, first.hours, by_hour, totals, [MessageCount(*k, n) for k, n in ranked])


def newest_requests(per_shard: list[list[bytes]], limit: int) -> list[bytes]:
    """Destination-inspector entries (JSON, each newest first per shard) merged newest first by
    their `at`; an entry without one sorts last."""

    def at(raw: bytes) -> int:
        try:
            value = _at_decoder.decode(raw).at
        except msgspec.DecodeError:
            return 0
        return value if isinstance(value, int) else 0

    merged = [raw for found in per_shard for raw in found]
    return sorted(merged, key=lambda raw: -at(raw))[:limit]


class _At(msgspec.Struct):
    at: int | float | None = None


_at_decoder = msgspec.json.Decoder(_At)


def source_waiting(connection: Redis, layout: KeyLayout, source_id: str) -> int:
    """Events of `source_id` in this shard's ingest jobs that are waiting or taken by a worker and not
    yet done (read from the jobs' parts: as many round trips as there are such jobs, for an operator
    checking a move, never on a hot path). A part that does not decode is not counted."""
    from trackpipe.messages import decode_batch

    job_ids = [j.decode() for j in connection.lrange(layout.queue(INGEST_QUEUE), 0, -1)]
    for claims in connection.scan_iter(match=f"{layout.claims_prefix}*", count=500):
        job_ids += [j.decode() for j in connection.lrange(claims, 0, -1)]
    waiting = 0
    for job_id in dict.fromkeys(job_ids):
        for part in connection.lrange(layout.job_parts(job_id), 0, -1):
            try:
                batch = decode_batch(part)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # a delivery job's part, or damaged
            waiting += sum(len(r.events) for r in batch.records if r.source_id == source_id)
    return waiting
