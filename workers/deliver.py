"""The delivery job: send a batch to its destination, then settle every event in one MULTI/EXEC:
delivered ones are counted, retryable ones go to the destination's retry queue after their backoff,
refused ones and those out of attempts go to its dead-letter queue (and to their source's list of
failures, which the inspector shows as FAILED for this destination); skipped ones (the destination
cannot map them, or a dry run) are counted as filtered and shown FILTERED, with the reason. The same
transaction keeps the sender's last requests for the destination inspector.

Each event's stored JSON is checked here (a JSON object, else rejected) without being built into
dicts; the `OutgoingEvent` senders get decodes it on first use only (senders that forward the body
never do). Reasons are masked with the destination's secrets before they reach a DLQ record, a log
line or the error counts.

A job killed after its MULTI/EXEC is not sent again (its done mark is in its own hash); killed
between sending and EXEC, it is sent again when re-run: delivery is at least once, and only an
answer lost in that window can make a duplicate. With `edge.min_replicas` N > 0 the EXEC is
followed by WAITAOF in the same round trip; short of N replicas the job is not finished (a re-run
finds the done mark, sends nothing, and waits for the replicas again); after a failover that lost
the settlement, the re-run sends the batch again (a duplicate, never a loss).
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client import Counter, Histogram
from redis import Redis
from rq import get_current_job

from destinations.base import (
    DELIVERED,
    Delivered,
    Outcome,
    OutgoingEvent,
    Rejected,
    Retry,
    Sender,
    Skipped,
    mask_values,
    masked_outcome,
)
from trackpipe.jobs import DELIVER_FUNCTION, DONE_FIELD, delivery_job_options, delivery_retry_queue
from trackpipe.keys import (
    DESTINATION_HOUR_STATS_TTL_SECONDS,
    DESTINATION_MINUTE_STATS_TTL_SECONDS,
    DESTINATION_REQUESTS_KEPT,
)
from trackpipe.messages import (
    DeadLetter,
    DeliveryBatch,
    DeliveryEvent,
    decode_delivery,
    encode_dead_letter,
    encode_delivery,
)
from trackpipe.openjob import seal_and_read_parts
from trackpipe.replication import confirm_settled, settle_pipeline
from trackpipe.types import RetryConfig
from workers import faults
from workers.context import WorkerContext, current_context
from workers.deadletter import error_kind, failures_by_source
from workers.retry import next_attempt_at

log = logging.getLogger("trackpipe.deliver")
_json = msgspec.json.Encoder()

DELIVERIES = Counter(
    "trackpipe_deliveries_total",
    "Events settled by delivery jobs, by destination and outcome",
    ["destination", "outcome"],
)
DLQ_DROPPED = Counter("trackpipe_dlq_dropped_total", "Dead letters dropped because the DLQ was full", ["destination"])
DELIVERY_SECONDS = Histogram(
    "trackpipe_delivery_seconds",
    "Time of one send to a destination",
    ["destination"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INGEST_TO_DELIVERY_SECONDS = Histogram(
    "trackpipe_ingest_to_delivery_seconds",
    "From the edge receiving an event to its delivery",
    ["destination"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)


class Settled(msgspec.Struct):
    delivered: list[DeliveryEvent]
    retry: dict[float, list[DeliveryEvent]]  # unix time of the next try -> events
    dead: list[tuple[DeliveryEvent, str]]
    skipped: list[tuple[DeliveryEvent, str]] = msgspec.field(default_factory=list)  # FILTERED, with the reason


def settle(events: list[DeliveryEvent], outcomes: list[Outcome], retry_config: RetryConfig, now: float) -> Settled:
    """Sort each event by its outcome, counting attempts (pure)."""
    if len(events) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes for {len(events)} events")
    if all(outcome is DELIVERED for outcome in outcomes):  # the common case, without a loop in Python
        return Settled(list(events), {}, [])
    settled = Settled([], defaultdict(list), [])
    now_ms = int(now * 1000)
    for event, outcome in zip(events, outcomes, strict=True):
        if isinstance(outcome, Delivered):
            settled.delivered.append(event)
            continue
        if isinstance(outcome, Skipped):  # not a failure: no attempt counted, nothing retried
            settled.skipped.append((event, outcome.reason))
            continue
        failed = msgspec.structs.replace(
            event,
            attempts=event.attempts + 1,
            first_failure_at=event.first_failure_at or now_ms,
            last_error=outcome.reason,
        )
        if isinstance(outcome, Rejected):
            settled.dead.append((failed, outcome.reason))
            continue
        assert isinstance(outcome, Retry)
        at = next_attempt_at(failed.attempts, retry_config, now, outcome.not_before)
        if at is None:
            settled.dead.append((failed, f"{outcome.reason} (attempts exhausted: {failed.attempts})"))
        else:
            # Whole seconds (RQ schedules by the second), rounded up: never due before asked.
            settled.retry[float(math.ceil(at))].append(failed)
    settled.retry = dict(settled.retry)
    return settled


def _embeddable(body: bytes) -> bytes:
    """The event as the DLQ record embeds it: as it is, or (damaged in storage) as a JSON string, so
    that the record stays readable."""
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return _json.encode(body.decode("utf-8", "replace"))
    return body


def _dead_letter(event: DeliveryEvent, destination_id: str, reason: str, now_ms: int) -> bytes:
    return encode_dead_letter(
        DeadLetter(
            event.event_id,
            event.event_name,
            destination_id,
            reason,
            event.attempts,
            event.first_failure_at or now_ms,
            now_ms,
            msgspec.Raw(_embeddable(event.body)),
        )
    )


def commit_settlement(
    ctx: WorkerContext,
    connection: Redis,
    batch: DeliveryBatch,
    settled: Settled,
    job_key: str,
    now: float,
    exchanges: list[bytes] | None = None,
) -> int:
    """One MULTI/EXEC for everything the job leaves behind; returns dead letters dropped (DLQ full).
    `exchanges`: the sender's requests (JSON `Exchange`s, oldest first) for the destination inspector."""
    layout = ctx.layout
    dest = batch.destination_id
    now_ms = int(now * 1000)
    # With edge.min_replicas, WAITAOF follows the EXEC in the same round trip (trackpipe.replication).
    pipe = settle_pipeline(connection, ctx.replica_wait)
    retry_queue = delivery_retry_queue(dest, connection)
    for at, events in settled.retry.items():
        # create_job + schedule_job: enqueue_at would pass unknown options on to the function.
        job = retry_queue.create_job(
            DELIVER_FUNCTION,
            args=(encode_delivery(DeliveryBatch(dest, events, now_ms, batch.origin)),),
            description=f"retry delivery to {dest}",
            **delivery_job_options(ctx.config.worker),
        )
        retry_queue.schedule_job(job, datetime.fromtimestamp(at, UTC), pipeline=pipe)
    dlq_length_at = None
    if settled.dead:
        key = layout.dlq(dest)
        pipe.lpush(key, *(_dead_letter(e, dest, reason, now_ms) for e, reason in settled.dead))
        dlq_length_at = len(pipe.command_stack) - 1  # position of LPUSH's reply in EXEC's answer
        pipe.ltrim(key, 0, ctx.config.dlq.max_events - 1)
        # The inspector shows these events FAILED for this destination (console/app.py merges the
        # entries into its records); bounded like the inspector itself.
        _push_failures(ctx, pipe, failures_by_source(settled.dead, dest, now_ms, ctx.sources))
    if settled.skipped:
        # Same list as the failures, marked FILTERED: the inspector shows the destination's reason.
        _push_failures(ctx, pipe, failures_by_source(settled.skipped, dest, now_ms, ctx.sources, "FILTERED"))
    if exchanges:
        requests = layout.destination_requests(dest)
        pipe.lpush(requests, *exchanges)  # the newest ends up first
        pipe.ltrim(requests, 0, DESTINATION_REQUESTS_KEPT - 1)
    # Per minute (kept 2 days) and per hour (kept a month, for the console's history). An event the
    # destination skipped counts in `filtered` (all events not sent because of a filter) and in
    # `skipped`, apart from the consent and conditions filters the fan-out counts.
    counts = (
        ("delivered", len(settled.delivered)),
        ("retried", sum(len(e) for e in settled.retry.values())),
        ("dead_lettered", len(settled.dead)),
        ("filtered", len(settled.skipped)),
        ("skipped", len(settled.skipped)),
    )
    for stats, ttl in (
        (layout.destination_stats(dest, now_ms // 60_000), DESTINATION_MINUTE_STATS_TTL_SECONDS),
        (layout.destination_hour_stats(dest, now_ms // 3_600_000), DESTINATION_HOUR_STATS_TTL_SECONDS),
    ):
        for field, n in counts:
            if n:
                pipe.hincrby(stats, field, n)
        pipe.expire(stats, ttl)
    failures: dict[str, int] = defaultdict(int)
    for events in settled.retry.values():
        for event in events:
            failures[error_kind(event.last_error or "unknown")] += 1
    for _, reason in settled.dead:
        failures[error_kind(reason)] += 1
    for kind, n in failures.items():
        pipe.hincrby(layout.destination_errors(dest), kind, n)
        pipe.hset(layout.destination_errors_last(dest), kind, now_ms)
    pipe.delete(layout.job_parts(job_key.rsplit(":", 1)[-1]))
    pipe.hset(job_key, DONE_FIELD, 1)
    replies = pipe.execute()
    dropped = 0
    if dlq_length_at is not None:
        length = int(replies[dlq_length_at])  # LPUSH answers the list's new length
        dropped = max(0, length - ctx.config.dlq.max_events)
        if dropped:
            connection.hincrby(layout.dlq_dropped, dest, dropped)
            DLQ_DROPPED.labels(dest).inc(dropped)
            log.error(
                "DLQ of %s is full (dlq.max_events=%d): dropped the %d oldest dead letters",
                dest,
                ctx.config.dlq.max_events,
                dropped,
                extra={"destination": dest},
            )
    return dropped


def _push_failures(ctx: WorkerContext, pipe: Any, by_source: dict[str, list[bytes]]) -> None:
    inspector_size = ctx.config.inspector.events_per_source
    if not inspector_size:
        return
    for source_id, entries in by_source.items():
        key = ctx.layout.inspector_failures(source_id)
        pipe.lpush(key, *entries)
        pipe.ltrim(key, 0, inspector_size - 1)


class _AnyObject(msgspec.Struct):
    """Any JSON object: decoding into it checks the whole document (syntax, an object at the top)
    while skipping every member unbuilt, ~8x cheaper than building the dict."""


_object_check = msgspec.json.Decoder(_AnyObject)


def outgoing(events: list[DeliveryEvent]) -> tuple[list[OutgoingEvent], dict[int, Outcome]]:
    """The events as senders get them (decoded on first use); an event whose stored JSON is not an
    object (damaged in storage) is rejected by position instead."""
    ready: list[OutgoingEvent] = []
    broken: dict[int, Outcome] = {}
    check = _object_check.decode
    for i, event in enumerate(events):
        try:
            check(event.body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            broken[i] = Rejected(f"stored event is not a JSON object: {exc}")
            continue
        ready.append(OutgoingEvent(event.event_id, event.event_name, None, event.body))
    return ready, broken


def send_batch(sender: Sender, events: list[DeliveryEvent], secrets: list[str]) -> list[Outcome]:
    """The sender's outcome for each event, in order, reasons masked with the destination's secrets."""
    ready, broken = outgoing(events)
    sent = sender.send(ready) if ready else []
    if broken:
        rest = iter(sent)
        sent = [broken[i] if i in broken else next(rest) for i in range(len(events))]
    masks = mask_values(secrets)
    # Outcomes are mostly a few shared objects (DELIVERED, one Retry per request): mask each once.
    masked: dict[int, Outcome] = {}
    out: list[Outcome] = []
    for outcome in sent:
        if outcome is DELIVERED:
            out.append(outcome)
            continue
        done = masked.get(id(outcome))
        if done is None:
            done = masked[id(outcome)] = masked_outcome(outcome, masks)
        out.append(done)
    return out


def observe_many(histogram: Any, seconds: float, n: int) -> None:
    """`histogram.observe(seconds)` n times, at the cost of one (a prometheus_client Histogram child)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    if bounds is None or n == 1:
        for _ in range(n):
            histogram.observe(seconds)
        return
    histogram._sum.inc(seconds * n)
    histogram._buckets[bisect_left(bounds, seconds)].inc(n)  # the first bound >= seconds (+Inf is last)


def observe_latencies(histogram: Any, events: list[DeliveryEvent], now: float) -> None:
    """Each event's edge-to-delivery time, observed once per distinct receipt time (an edge request's
    events share theirs), not once per event."""
    for received_at, n in Tally(event.received_at for event in events).items():
        if received_at:
            observe_many(histogram, max(0.0, now - received_at / 1000), n)


def merged_batch(payload: bytes, parts: list[bytes]) -> DeliveryBatch:
    """One batch of the job's argument (retry and replay jobs) and its parts (fan-outs), in order."""
    batches = [decode_delivery(p) for p in (payload, *parts) if p]
    if not batches:
        raise ValueError("delivery job holds no batch")
    first = batches[0]
    if len(batches) == 1:
        return first
    events = [event for batch in batches for event in batch.events]
    return DeliveryBatch(first.destination_id, events, first.created_at, first.origin)


def process_delivery(
    ctx: WorkerContext,
    connection: Redis,
    job_key: str,
    payload: bytes,
    now: float | None = None,
    queue_name: str | None = None,
) -> Settled | None:
    """Deliver one job's batch; None if this job already settled (a re-run after a crash).
    `queue_name` is the job's queue (read from the job's hash when not given)."""
    if connection.hexists(job_key, DONE_FIELD):
        confirm_settled(connection, job_key, DONE_FIELD, ctx.replica_wait)
        return None
    if queue_name is None:
        queue_name = (connection.hget(job_key, "origin") or b"").decode()
    parts = seal_and_read_parts(connection, ctx.layout, queue_name, job_key.rsplit(":", 1)[-1])
    batch = merged_batch(payload, parts)
    destination = ctx.destinations.get(batch.destination_id)
    started = time.time()
    exchanges: list[bytes] = []
    if destination is None:
        outcomes: list[Outcome] = [Rejected(f"destination {batch.destination_id!r} is no longer configured")] * len(
            batch.events
        )
        retry_config = RetryConfig()
    else:
        faults.point("deliver:before_send")
        sender = ctx.sender(batch.destination_id)
        try:
            outcomes = send_batch(sender, batch.events, destination.secrets())
        finally:
            # Taken even when send raised: requests of this job must not show up under a later one.
            exchanges = [_json.encode(e) for e in sender.take_exchanges()]
        faults.point("deliver:after_send")
        retry_config = destination.retry
        DELIVERY_SECONDS.labels(batch.destination_id).observe(time.time() - started)
    now = time.time() if now is None else now
    settled = settle(batch.events, outcomes, retry_config, now)
    commit_settlement(ctx, connection, batch, settled, job_key, now, exchanges)
    for outcome, events in (
        ("delivered", settled.delivered),
        ("dead_lettered", settled.dead),
        ("filtered", settled.skipped),
    ):
        if events:
            DELIVERIES.labels(batch.destination_id, outcome).inc(len(events))
    retried = sum(len(e) for e in settled.retry.values())
    ids = {"destination": batch.destination_id, "job": job_key.rsplit(":", 1)[-1]}
    if retried:
        DELIVERIES.labels(batch.destination_id, "retried").inc(retried)
        log.warning(
            "delivery to %s: %d events to retry (%s)",
            batch.destination_id,
            retried,
            next(iter(settled.retry.values()))[0].last_error,
            extra=ids,
        )
    if settled.dead:
        log.warning(
            "delivery to %s: %d events dead-lettered (%s)",
            batch.destination_id,
            len(settled.dead),
            settled.dead[0][1],
            extra=ids,
        )
    if settled.delivered:
        observe_latencies(INGEST_TO_DELIVERY_SECONDS.labels(batch.destination_id), settled.delivered, now)
    return settled


def run_delivery_job(payload: bytes) -> None:
    """RQ entry point for `deliver:<id>` and `retry:<id>` jobs."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_delivery_job runs inside an RQ worker")
    process_delivery(current_context(), job.connection, job.key, payload, queue_name=job.origin)
