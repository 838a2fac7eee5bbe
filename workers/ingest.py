"""The ingest job: stored batches → normalized, checked, deduplicated events → delivery jobs.

Steps, and what makes a re-run of a killed job end exactly as one clean run would:
0. seal the job (the edge stops adding writes to it, see ingest.store) and read its parts: a
   re-run reads the same parts, in the same order;
1. decode and normalize every event (pure; generated event ids derive from the job, so a re-run
   generates the same ones);
2. one Lua call per part of 500 events (sent as soon as the part is decoded, all parts on one
   connection, in order) claims the part's ids and stores its verdicts in the job's own hash,
   atomically (a re-run decodes the same parts and reads their verdicts back instead of finding
   its own marks); each part is also gathered into the job's JobPlan meanwhile;
3. one MULTI/EXEC enqueues a delivery job per destination with matching events, writes the
   inspector's sample (see workers.inspector) and the counters, and marks the job done in its hash
   (a re-run after that stops at step 2). The job's hash is WATCHed and its done mark checked
   first, so of two runs at once (a frozen worker woken after its job was re-run) one commits.
   A kill before EXEC leaves nothing behind; after it, nothing is left to do.
   With `edge.min_replicas` N > 0 the EXEC is followed by WAITAOF in the same round trip
   (trackpipe.replication): fewer than N replicas, and the job is not finished but run again; that
   re-run, finding the done mark, waits for the replicas again before it counts as finished.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from redis import Redis
from redis.exceptions import WatchError
from rq import get_current_job

from trackpipe.config import Config, InspectorConfig, SourceConfig
from trackpipe.jobs import DONE_FIELD
from trackpipe.keys import (
    DESTINATION_HOUR_STATS_TTL_SECONDS,
    DESTINATION_MINUTE_STATS_TTL_SECONDS,
    INGEST_QUEUE,
    KeyLayout,
)
from trackpipe.messages import DeliveryBatch, DeliveryEvent, decode_batch, encode_delivery
from trackpipe.openjob import seal_and_read_parts
from trackpipe.replication import confirm_settled, settle_pipeline
from workers import faults
from workers.context import WorkerContext, current_context
from workers.dedup import Deduplicator
from workers.inspector import (
    QUALITY_TTL_SECONDS,
    Candidate,
    InspectorRecord,
    candidate_of,
    masked_payload,
    message_command,
    message_field,
    plan_samples,
    test_code_of,
)
from workers.normalize import fill_client, normalize
from workers.routing import FanOut, accepts, refused_for_consent, takes_all
from workers.specification import judge
from workers.standard import check_common, check_standard_event
from workers.status import EventStatus, quality_status

_event_decoder = msgspec.json.Decoder()
# A number too large for a float (1e999) becomes infinity rather than a failure; the hook makes
# decoding several times slower, so it is only the second try.
_lenient_decoder = msgspec.json.Decoder(float_hook=float)
_json = msgspec.json.Encoder()
DEFAULT_SOURCE = SourceConfig(id="_unknown", site_id="_", keys=["-" * 8])
_VALID = EventStatus.VALID
_REJECTED = EventStatus.INVALID_REJECTED


class ProcessedEvent(msgspec.Struct):
    source_id: str
    received_at: int
    status: EventStatus
    event: dict[str, Any] | None
    warnings: list[str]
    errors: list[str]
    raw: bytes
    event_id: str | None = None
    dedupable: bool = False


class IngestOutcome(msgspec.Struct):
    events: int
    by_status: dict[str, int]
    deliveries: dict[str, int]  # destination id -> events queued
    already_done: bool = False


def process_event(
    raw: bytes,
    source: SourceConfig,
    site_received_at: int,
    id_seed: str | Callable[[], str],
    ip: str | None = None,
    user_agent: str | None = None,
) -> ProcessedEvent:
    """Decode, normalize and check one event (pure). `ip` / `user_agent` are the request's (the
    edge's record), filled into `context.device` where the event has none. The checks' findings go
    through the source's rules (workers.specification.judge): the event kept is the judged one, with
    the properties they removed gone."""
    try:
        try:
            decoded = _event_decoder.decode(raw)
        except msgspec.ValidationError:  # "Number out of range"
            decoded = _lenient_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return ProcessedEvent(
            source.id, site_received_at, EventStatus.INVALID_REJECTED, None, [], [f"not valid JSON: {exc}"], raw
        )
    # Decoded for this call alone: normalize may change it in place.
    result = normalize(decoded, received_at=site_received_at, source_id=source.id, id_seed=id_seed, owned=True)
    event = result.event
    warnings = result.warnings  # normalize's own lists: extended here, never shared
    errors = result.errors
    if event and (ip or user_agent):
        event = fill_client(event, ip, user_agent)
    if not errors:
        findings = check_standard_event(event)
        common = check_common(event)
        if findings or common or source.spec is not None:
            judged = judge(event, findings + common if common else findings, source.spec)
            event = judged.event
            warnings += judged.warnings
            errors += judged.errors
    # (quality_status, with its usual answer first: this runs for every event)
    status = _VALID if not errors and not warnings else quality_status(errors, warnings, source.on_invalid)
    if status is _REJECTED and not errors:
        errors.append("rejected: the source rejects invalid events (on_invalid = reject)")
    context = event.get("context") if event else None
    event_id = context.get("event_id") if type(context) is dict else None
    return ProcessedEvent(
        source.id,
        site_received_at,
        status,
        event or None,
        warnings,
        errors,
        raw,
        event_id,
        # `dedup = false` (per source): repeats are delivered, no id is remembered.
        status is not _REJECTED and not result.generated_id and source.dedup,
    )


def decode_and_normalize(
    payloads: bytes | list[bytes],
    job_id: str,
    sources: dict[str, SourceConfig],
    on_part: Callable[[list[ProcessedEvent], int], None] | None = None,
    part_events: int = 0,
) -> list[ProcessedEvent]:
    """Events of the job's payloads in order; ids generated for events without one depend only on
    the job id and the event's position, so a re-run generates the same ones. With `on_part`, it
    is called with the list so far and where its new events start, every `part_events` events and
    once at the end (the same parts for the same payloads)."""
    records = []
    for payload in [payloads] if isinstance(payloads, bytes) else payloads:
        if payload:  # the edge's jobs carry an empty argument: their events are all in parts
            records.extend(decode_batch(payload).records)
    processed: list[ProcessedEvent] = []
    append = processed.append
    done = 0
    cut = part_events if on_part is not None and part_events > 0 else -1
    for r, record in enumerate(records):
        source = sources.get(record.source_id) or msgspec.structs.replace(DEFAULT_SOURCE, id=record.source_id)
        received_at, ip, user_agent = record.received_at, record.ip, record.user_agent
        for e, raw in enumerate(record.events):
            # The seed's text is made only for an event that needs an id generated.
            seed = functools.partial(_seed_text, job_id, r, e)
            append(process_event(raw, source, received_at, seed, ip, user_agent))
            if len(processed) == cut:
                on_part(processed, done)  # type: ignore[misc]
                done, cut = cut, cut + part_events
    if on_part is not None and done < len(processed):
        on_part(processed, done)
    return processed


def _seed_text(job_id: str, record: int, event: int) -> str:
    return f"{job_id}:{record}:{event}"


def plan_fan_out(events: list[ProcessedEvent], config: Config) -> FanOut:
    """Which delivery job gets which events (pure); see FanOutPlanner."""
    planner = FanOutPlanner(config)
    planner.add(events)
    return planner.result()


class FanOutPlanner:
    """plan_fan_out, part by part in the events' order: the ingest job plans each part of its events
    as soon as it is decoded, while they are still in the CPU's caches (planned at the end, the
    plan cost 2.45 µs per event in the worker, ~1.5 part by part). Each event is encoded once, for all its
    destinations; what depends only on the source is decided once per (source, destination). An
    event that every destination takes whatever it holds (the usual case) shares one routes dict
    and one DeliveryEvent among them all (both only read from here on)."""

    def __init__(self, config: Config) -> None:
        self._destinations = config.destinations
        self._deliveries: dict[str, list[DeliveryEvent]] = defaultdict(list)
        self._filtered: dict[str, int] = defaultdict(int)
        self._filtered_consent: dict[str, int] = defaultdict(int)
        self.destinations_of: list[dict[str, str]] = []  # per event planned: its routes
        # source id -> (its destinations, each with whether it takes every event of the source
        # unseen; when all do: their delivery lists' appends and the routes every event of the source
        # has).
        self._plans: dict[
            str, tuple[list[tuple[Any, bool]], list[Callable[[DeliveryEvent], None]] | None, dict[str, str]]
        ] = {}

    def add(self, events: list[ProcessedEvent], start: int = 0) -> None:
        """Plan events[start:] (the events before `start` were added already)."""
        deliveries, filtered, filtered_consent = self._deliveries, self._filtered, self._filtered_consent
        plans = self._plans
        encode = _json.encode
        filtered_value = EventStatus.FILTERED.value
        append_routes = self.destinations_of.append
        for i in range(start, len(events)):
            item = events[i]
            event = item.event
            if event is None or item.status not in _DELIVERED:
                append_routes(_NO_ROUTES)
                continue
            plan = plans.get(item.source_id)
            if plan is None:
                looks = [(d, takes_all(d, item.source_id)) for d in self._destinations]
                if all(all_taken for _, all_taken in looks):
                    appends = [deliveries[d.id].append for d, _ in looks]
                    plan = (looks, appends, {d.id: "queued" for d, _ in looks})
                else:
                    plan = (looks, None, {})
                plans[item.source_id] = plan
            looks, appends, shared_routes = plan
            if appends is not None:
                if appends:
                    delivery = DeliveryEvent(
                        str(item.event_id), str(event.get("event_name")), encode(event), 0, None, None, item.received_at
                    )
                    for append in appends:
                        append(delivery)
                append_routes(shared_routes)
                continue
            routes: dict[str, str] = {}
            delivery = None
            for destination, all_taken in looks:
                if all_taken or accepts(destination, item.source_id, event):
                    if delivery is None:
                        delivery = DeliveryEvent(
                            str(item.event_id),
                            str(event.get("event_name")),
                            encode(event),
                            0,
                            None,
                            None,
                            item.received_at,
                        )
                    deliveries[destination.id].append(delivery)
                    routes[destination.id] = "queued"
                else:
                    filtered[destination.id] += 1
                    if refused_for_consent(destination, item.source_id, event):
                        filtered_consent[destination.id] += 1
                    routes[destination.id] = filtered_value
            append_routes(routes)

    def result(self) -> FanOut:
        return FanOut(dict(self._deliveries), self.destinations_of, dict(self._filtered), dict(self._filtered_consent))


# The routes of an event that is not delivered (shared: only read from here on).
_NO_ROUTES: dict[str, str] = {}

_DELIVERED = frozenset({EventStatus.VALID, EventStatus.INVALID_ACCEPTED})


def delivery_job_id(ingest_job_id: str, destination_id: str) -> str:
    # RQ job ids allow [A-Za-z0-9_-]; destination ids may also hold dots.
    return f"{ingest_job_id}_{hashlib.sha1(destination_id.encode()).hexdigest()[:12]}"


def _inspector_record(
    item: ProcessedEvent, routes: dict[str, str], name: str | None, test_code: str | None
) -> InspectorRecord:
    payload: Any = masked_payload(item.event) if item.event else item.raw[:2048].decode("utf-8", "replace")
    return InspectorRecord(
        item.received_at,
        _STATUS_TEXT[item.status],
        item.event_id,
        name,
        item.warnings,
        item.errors,
        routes,
        test_code,
        payload,
    )


class InspectorCut:
    """Per source, every event as the inspector would keep it, oldest first (the sampling itself is
    SAMPLE_SCRIPT's, which sees how many of each name this minute already kept), gathered part by
    part as FanOutPlanner plans them. The records are made only for the candidates sent (see
    workers.inspector.Candidate). With `caps` (per name, for test events), candidates past their
    group's cap are left out here: plan_samples would send only the first `cap` of each group anyway
    (the first is kept even at a cap of 0, so the group still shows in the command, as plan_samples
    would have it)."""

    def __init__(self, caps: tuple[int, int] | None = None) -> None:
        self.kept: dict[str, list[Candidate]] = defaultdict(list)
        self._seen: dict[tuple[str, int, bool, str | None], int] = defaultdict(int)
        self._caps = caps

    def add(self, events: list[ProcessedEvent], destinations_of: list[dict[str, str]], start: int = 0) -> None:
        """Look at events[start:], whose routes are destinations_of[start:]."""
        kept, seen, caps = self.kept, self._seen, self._caps
        rejected = EventStatus.INVALID_REJECTED
        for i in range(start, len(events)):
            item = events[i]
            event = item.event
            if event:
                test_code = test_code_of(event)
                name = event.get("event_name")
                if not isinstance(name, str):
                    name = None
            else:
                test_code = name = None
            if caps is not None and item.status is not rejected:
                to_tests = test_code is not None
                group = (item.source_id, item.received_at // 60_000, to_tests, None if to_tests else name or "")
                count = seen[group]
                if count >= caps[to_tests] and count:
                    continue
                seen[group] = count + 1
            kept[item.source_id].append(
                candidate_of(
                    item.received_at,
                    _STATUS_TEXT[item.status],
                    name,
                    test_code,
                    functools.partial(_inspector_record, item, destinations_of[i], name, test_code),
                )
            )


def _inspector_caps(inspector: InspectorConfig) -> tuple[int, int] | None:
    """The caps an InspectorCut applies for this config; None when the inspector keeps nothing
    (then there is nothing to gather: an InspectorCut without caps keeps every event)."""
    if not inspector.events_per_source:
        return None
    return (inspector.per_name_per_minute, inspector.test_events_per_minute)


def _queue_inspector(
    pipe: Any, layout: KeyLayout, inspector: InspectorConfig, kept: dict[str, list[Candidate]] | None
) -> None:
    """The inspector's sample of the job (`kept`: JobPlan's candidates; None when the inspector
    keeps nothing): one EVAL per source, inside the fan-out's MULTI."""
    if kept is None:
        return
    for plan in plan_samples(
        kept,
        list_key=layout.inspector,
        test_list_key=layout.inspector_tests,
        counter_key=layout.inspector_sample,
        list_size=inspector.events_per_source,
        per_name_per_minute=inspector.per_name_per_minute,
        test_per_minute=inspector.test_events_per_minute,
    ):
        pipe.execute_command(*plan.command)


_STATUS_TEXT = {status: status.value for status in EventStatus}


class Tally:
    """What a job counts of its events, gathered part by part as FanOutPlanner plans them: events
    per (source, status) (the source's totals), and per source, hour (of receipt) and status, and
    warnings and errors per kind (the console's data-quality view)."""

    def __init__(self) -> None:
        self.statuses: dict[tuple[str, str], int] = defaultdict(int)
        self.hourly: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.messages: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, events: list[ProcessedEvent], start: int = 0) -> None:
        """Count events[start:]."""
        statuses, hourly, messages = self.statuses, self.hourly, self.messages
        for i in range(start, len(events)):
            item = events[i]
            status = _STATUS_TEXT[item.status]
            statuses[(item.source_id, status)] += 1
            at = (item.source_id, item.received_at // 3_600_000)
            hourly[at][status] += 1
            if item.warnings or item.errors:
                found = messages[at]
                # One count per event and kind: an event with three bad items counts once for that kind.
                for field in {message_field("warning", m) for m in item.warnings} | {
                    message_field("error", m) for m in item.errors
                }:
                    found[field] += 1


def _queue_quality(pipe: Any, layout: KeyLayout, tally: Tally) -> None:
    """The console's data-quality counters of the job (see Tally), written inside the fan-out's MULTI."""
    for (source_id, hour), counts in tally.hourly.items():
        key = layout.source_hourly(source_id, hour)
        for status, n in counts.items():
            pipe.hincrby(key, status, n)
        pipe.expire(key, QUALITY_TTL_SECONDS)
    for (source_id, hour), counts in tally.messages.items():
        pipe.execute_command(*message_command(layout.source_messages(source_id, hour), counts))


class JobPlan:
    """What the fan-out's commit writes that is gathered event by event, part by part as the job
    decodes (FanOutPlanner's plan, InspectorCut's candidates, Tally's counts), while each part's
    events are still in the CPU's caches. Gathered as if every event were first seen; the job
    gathers it again from all its events (`of`) when the dedup claim finds duplicates."""

    def __init__(self, config: Config) -> None:
        self._planner = FanOutPlanner(config)
        caps = _inspector_caps(config.inspector)
        self._cut = InspectorCut(caps) if caps is not None else None
        self.tally = Tally()

    @classmethod
    def of(cls, events: list[ProcessedEvent], config: Config) -> JobPlan:
        plan = cls(config)
        plan.add(events)
        return plan

    def add(self, events: list[ProcessedEvent], start: int = 0) -> None:
        """Gather events[start:] (the events before `start` were added already)."""
        self._planner.add(events, start)
        if self._cut is not None:
            self._cut.add(events, self._planner.destinations_of, start)
        self.tally.add(events, start)

    def fan_out(self) -> FanOut:
        return self._planner.result()

    @property
    def inspected(self) -> dict[str, list[Candidate]] | None:
        """The inspector's candidates; None when the inspector keeps nothing."""
        return None if self._cut is None else self._cut.kept


# Events per dedup claim part (see workers.dedup.PendingClaim): the server claims a part (~2 µs per
# id) faster than the worker decodes the next one (~8 µs per event), so only the last part's claim
# is left to overlap the fan-out's preparation.
CLAIM_PART_EVENTS = 500

# Tries at the commit when the job's hash changes between WATCH and EXEC (only a second run of the
# same job touches it meanwhile: RQ's bookkeeping, its claim, its done mark).
COMMIT_ATTEMPTS = 5


def commit_prepared(
    ctx: WorkerContext,
    connection: Redis,
    job_key: str,
    prepared: Any,
    while_waiting: Callable[[], None] | None = None,
) -> bool:
    """The prepared fan-out as one MULTI/EXEC ending with the job's done mark (and, with
    edge.min_replicas, WAITAOF in the same round trip: NotReplicated if it falls short, and the job
    runs again). True if this run committed it; False if the job was found done: a second run of
    the same job (a worker frozen past its lease, then woken) got there first. The job's hash is
    WATCHed, so of two runs with the same verdicts only one can commit: no event goes out twice.
    `while_waiting` is called once, after the transaction is written and before its reply is read
    (work that needs no reply: it runs while the server does)."""
    for _ in range(COMMIT_ATTEMPTS):
        pipe = settle_pipeline(connection, ctx.replica_wait)
        wire = None
        try:
            pipe.watch(job_key)
            if pipe.hexists(job_key, DONE_FIELD):
                return False
            pipe.multi()
            for args, options in prepared.command_stack:
                pipe.pipeline_execute_command(*args, **options)
            wire = pipe.connection
            if while_waiting is not None:
                _call_after_send(wire, while_waiting)
                while_waiting = None
            pipe.execute()
            return True
        except WatchError:
            continue
        finally:
            if wire is not None:
                wire.__dict__.pop("send_packed_command", None)  # not sent: the wrapper goes
            pipe.reset()
    raise WatchError(f"{job_key}: the job's hash kept changing while its fan-out was committed")


def _call_after_send(wire: Any, then: Callable[[], None]) -> None:
    """Make `then` run once, right after the connection's next write (the transaction's)."""
    send = wire.send_packed_command

    def send_then(*args: Any, **kwargs: Any) -> None:
        wire.send_packed_command = send
        send(*args, **kwargs)
        then()

    wire.send_packed_command = send_then


def prepare_fan_out(
    ctx: WorkerContext, connection: Redis, job_id: str, job_key: str, plan: JobPlan, now_ms: int
) -> tuple[Any, FanOut]:
    """The fan-out's commands (for commit_prepared), built from the job's plan and not sent (no I/O)."""
    layout: KeyLayout = ctx.layout
    fan_out = plan.fan_out()
    pipe = connection.pipeline(transaction=True)  # a container: commit_prepared sends its commands
    for destination_id, delivery_events in fan_out.deliveries.items():
        payload = encode_delivery(DeliveryBatch(destination_id, delivery_events, now_ms, job_id))
        new_job_id = delivery_job_id(job_id, destination_id)
        pipe.execute_command(*ctx.delivery_writer(destination_id).command(payload, len(delivery_events), new_job_id))
    _queue_inspector(pipe, layout, ctx.config.inspector, plan.inspected)
    _queue_quality(pipe, layout, plan.tally)
    for (source_id, status), n in plan.tally.statuses.items():
        pipe.hincrby(layout.source_stats(source_id), status, n)
    # Per destination, per minute (kept 2 days) and per hour (kept a month: the console's history).
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for destination_id, n in fan_out.filtered.items():
        consent = fan_out.filtered_consent.get(destination_id, 0)
        counts[destination_id].update(filtered=n, filtered_consent=consent, filtered_conditions=n - consent)
    for destination_id, delivery_events in fan_out.deliveries.items():
        counts[destination_id]["queued"] = len(delivery_events)
    for destination_id, fields in counts.items():
        for stats, ttl in (
            (layout.destination_stats(destination_id, now_ms // 60_000), DESTINATION_MINUTE_STATS_TTL_SECONDS),
            (layout.destination_hour_stats(destination_id, now_ms // 3_600_000), DESTINATION_HOUR_STATS_TTL_SECONDS),
        ):
            for field, n in fields.items():
                if n:
                    pipe.hincrby(stats, field, n)
            pipe.expire(stats, ttl)
    pipe.delete(layout.job_parts(job_id))
    pipe.hset(job_key, DONE_FIELD, 1)
    return pipe, fan_out


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """A job holds thousands of freshly decoded containers; the cyclic collector would scan them
    over and over (measured: decode and normalize 2.6 times slower). They form no cycles, so
    reference counting frees them; collection resumes after the job."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def process_ingest(ctx: WorkerContext, connection: Redis, job_id: str, job_key: str, payload: bytes) -> IngestOutcome:
    with cyclic_gc_paused():
        return _process_ingest(ctx, connection, job_id, job_key, payload)


def _process_ingest(ctx: WorkerContext, connection: Redis, job_id: str, job_key: str, payload: bytes) -> IngestOutcome:
    parts = seal_and_read_parts(connection, ctx.layout, INGEST_QUEUE, job_id)
    # A source with `dedup = false` never has its ids claimed (its events are not dedupable either;
    # checked here too, as this is where ids get remembered). Each source claims in its own window.
    sources = ctx.sources
    windows = {s.id: s.dedup_window_seconds for s in sources.values()}  # None: dedup.window_seconds
    undeduplicated = {s.id for s in sources.values() if not s.dedup}
    dedup: Deduplicator = ctx.dedup
    pending = dedup.open_claim(connection, job_key)
    candidates: list[int] = []

    def claim_part(events: list[ProcessedEvent], start: int) -> None:
        # Sent while the next events are decoded: the server claims these meanwhile.
        items = []
        for i in range(start, len(events)):
            item = events[i]
            if item.dedupable and item.source_id not in undeduplicated:
                candidates.append(i)
                items.append((item.source_id, str(item.event_id), windows.get(item.source_id), item.received_at))
        if items:
            pending.send(items)

    # While the server claims the ids, the fan-out is planned, part by part, as if every event were
    # first seen (the usual case); it is planned again only if some turn out to be duplicates.
    plan = JobPlan(ctx.config)
    try:
        on_part = functools.partial(_claim_and_plan, claim_part, plan)
        events = decode_and_normalize([payload, *parts], job_id, sources, on_part, CLAIM_PART_EVENTS)
        del on_part  # (the plan is freed with the events, while the server commits)
        faults.point("ingest:after_decode")
        now_ms = time.time_ns() // 1_000_000
        pipe, fan_out = prepare_fan_out(ctx, connection, job_id, job_key, plan, now_ms)
    except BaseException:
        pending.abandon()
        raise
    verdicts = pending.result()
    if verdicts is None:
        return _settled_before(ctx, connection, job_key, len(events))
    duplicates = False
    for i, first_seen in zip(candidates, verdicts, strict=True):
        if not first_seen:
            events[i].status = EventStatus.DUPLICATE
            duplicates = True
    faults.point("ingest:after_dedup")
    if duplicates:
        plan = JobPlan.of(events, ctx.config)
        pipe, fan_out = prepare_fan_out(ctx, connection, job_id, job_key, plan, now_ms)
    faults.point("ingest:mid_fanout")
    count = len(events)
    queued = {d: len(e) for d, e in fan_out.deliveries.items()}
    status_counts = dict(plan.tally.statuses)
    # The job's events, their encodings and plan (thousands of objects, ~1.5 µs per event to free)
    # are freed while the server runs the commit (writing and fsyncing the delivery jobs), not after.
    spent: list[Any] = [events, fan_out, plan]
    del events, fan_out, plan
    if not commit_prepared(ctx, connection, job_key, pipe, while_waiting=spent.clear):
        return _settled_before(ctx, connection, job_key, count)
    faults.point("ingest:after_fanout")
    ctx.observe_ingest(status_counts, queued)
    by_status: dict[str, int] = defaultdict(int)
    for (_, status), n in status_counts.items():
        by_status[status] += n
    return IngestOutcome(count, dict(by_status), queued)


def _claim_and_plan(
    claim: Callable[[list[ProcessedEvent], int], None], plan: JobPlan, events: list[ProcessedEvent], start: int
) -> None:
    """A decoded part: its ids' claim sent first (the server works on it meanwhile), then planned."""
    claim(events, start)
    plan.add(events, start)


def _settled_before(ctx: WorkerContext, connection: Redis, job_key: str, events: int) -> IngestOutcome:
    """A run that finds its job's fan-out already committed (a re-run, or the slower of two runs)."""
    confirm_settled(connection, job_key, DONE_FIELD, ctx.replica_wait)
    return IngestOutcome(events, {}, {}, already_done=True)


def run_ingest_job(payload: bytes) -> None:
    """RQ entry point (the name the edge enqueues)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_ingest_job runs inside an RQ worker")
    process_ingest(current_context(), job.connection, job.id, job.key, payload)
