"""workers.ingest.process_ingest on a real valkey-server: statuses, inspector, counters, fan-out
to the delivery queues, deduplication across jobs, re-runs and inspector sampling."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import delivery_batches_of
from tooling.examples import V2_EXAMPLE
from trackpipe.config import Config, parse
from trackpipe.jobs import DELIVER_FUNCTION, delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord, encode_batch
from workers.context import WorkerContext
from workers.ingest import IngestOutcome, delivery_job_id, process_ingest

LAYOUT = KeyLayout()
T0 = 1_700_000_000_000
RECEIVED = T0 + 1_000

CONFIG = """\
redis_url = "{redis_url}"

[inspector]
events_per_source = {events_per_source}
per_name_per_minute = {per_name_per_minute}

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]

[[sources]]
id = "strict-app"
site_id = "31"
keys = ["strict-key-0123456789"]
on_invalid = "reject"

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


def make_config(
    redis_url: str, tmp_path: Path, *, events_per_source: int = 1000, per_name_per_minute: int = 100
) -> Config:
    text = CONFIG.format(
        redis_url=redis_url,
        lake=tmp_path / "lake",
        events_per_source=events_per_source,
        per_name_per_minute=per_name_per_minute,
    )
    return parse(text, env={})


@pytest.fixture
def conn(valkey_client: redis.Redis) -> redis.Redis:
    return valkey_client


@pytest.fixture
def ctx(valkey_url: str, tmp_path: Path, conn: redis.Redis) -> WorkerContext:
    return WorkerContext(make_config(valkey_url, tmp_path), conn)


def ev(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# The contract's example, with this test's id and time.
PURCHASE = {**V2_EXAMPLE, "context": {**V2_EXAMPLE["context"], "event_id": "buy-1", "event_timestamp": T0}}
PURCHASE_NO_CONSENT = {
    **PURCHASE,
    "user": {"id": "8", "consistent_anonymous_id": "ca-8", "consent_categories": [1]},
    "context": {"event_id": "buy-2", "event_timestamp": T0},
}
V1_EVENT = {
    "event_name": "v1_custom",
    "event_id": "e-v1",
    "event_timestamp": T0,
    "properties": {"value": 20, "currency": "EUR", "user": {"consistent_anonymous_id": "ca-1"}},
    "page": {"location": "https://x/p"},
    "device": {"ip": "198.51.100.4"},
}
CUSTOM = {
    "event_name": "custom",
    "user": {"consistent_anonymous_id": "ca-1"},
    "context": {"event_id": "c-1", "event_timestamp": T0},
}
PAGE_VIEW_INCOMPLETE = {"event_name": "page_view", "context": {"event_id": "pv-1", "event_timestamp": T0}}
NO_NAME = {"context": {"event_id": "nn-1", "event_timestamp": T0}}
NO_ID = {"event_name": "custom", "context": {"event_timestamp": T0}}

# (source, raw event, expected status, expected event id or None when generated)
FIRST_JOB: list[tuple[str, bytes, str, str | None]] = [
    ("shop-web", ev(**PURCHASE), "VALID", "buy-1"),
    ("shop-web", ev(**PURCHASE_NO_CONSENT), "VALID", "buy-2"),
    ("shop-web", ev(**V1_EVENT), "VALID", "e-v1"),
    ("shop-web", ev(**CUSTOM), "VALID", "c-1"),
    ("shop-web", ev(**CUSTOM), "DUPLICATE", "c-1"),  # two copies in one job: the second is the duplicate
    ("shop-web", ev(**PAGE_VIEW_INCOMPLETE), "INVALID_ACCEPTED", "pv-1"),
    ("shop-web", ev(**NO_NAME), "INVALID_REJECTED", "nn-1"),
    ("shop-web", b'{"event_name": "broken"', "INVALID_REJECTED", None),
    ("shop-web", ev(**NO_ID), "INVALID_ACCEPTED", None),
    ("strict-app", ev(**CUSTOM), "VALID", "c-1"),  # same id, other source: not a duplicate
    ("strict-app", ev(**PAGE_VIEW_INCOMPLETE), "INVALID_REJECTED", "pv-1"),  # warnings rejected here
]


def payload_of(events: list[tuple[str, bytes]], received_at: int = RECEIVED) -> bytes:
    """One record per run of consecutive events of a source, as the edge's group commit makes them."""
    records: list[IngestRecord] = []
    for source, raw in events:
        site = {"shop-web": "29", "strict-app": "31"}.get(source, "?")
        if records and records[-1].source_id == source:
            records[-1].events.append(raw)
        else:
            records.append(IngestRecord(source, site, received_at, [raw]))
    return encode_batch(IngestBatch(records))


def run_job(ctx: WorkerContext, conn: redis.Redis, job_id: str, events: list[tuple[str, bytes]]) -> IngestOutcome:
    return process_ingest(ctx, conn, job_id, f"{LAYOUT.rq_prefix}:job:{job_id}", payload_of(events))


def inspector(conn: redis.Redis, source: str) -> list[dict[str, Any]]:
    """Inspector records of a source, oldest first."""
    return [json.loads(raw) for raw in reversed(conn.lrange(LAYOUT.inspector(source), 0, -1))]


def source_stats(conn: redis.Redis, source: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in conn.hgetall(LAYOUT.source_stats(source)).items()}


def destination_totals(conn: redis.Redis, destination: str) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for key in conn.scan_iter(f"{LAYOUT.prefix}:stats:dest:{destination}:*"):
        for field, value in conn.hgetall(key).items():
            totals[field.decode()] += int(value)
        assert 0 < conn.ttl(key) <= 2 * 86_400 + 60
    return dict(totals)


def delivery_jobs(conn: redis.Redis, destination: str) -> list:
    return delivery_queue(destination, conn).jobs


def delivered(conn: redis.Redis, destination: str) -> dict[str, list]:
    """ingest job id -> the events it queued for `destination` (fan-outs of several ingest jobs
    may share one waiting delivery job, named after the first)."""
    out = {}
    for job in delivery_jobs(conn, destination):
        assert job.func_name == DELIVER_FUNCTION
        batches = delivery_batches_of(conn, job)
        assert job.id == delivery_job_id(batches[0].origin, destination)
        for batch in batches:
            assert batch.destination_id == destination
            assert batch.origin not in out, "one fan-out per ingest job and destination"
            out[batch.origin] = batch.events
    return out


def status_count(rows) -> dict[str, int]:
    return dict(Counter(status for *_, status, _ in rows))


# --- one job ---------------------------------------------------------------------------------


def test_statuses_in_outcome_inspector_and_counters(ctx: WorkerContext, conn: redis.Redis) -> None:
    outcome = run_job(ctx, conn, "job-1", [(s, raw) for s, raw, *_ in FIRST_JOB])
    assert outcome.events == len(FIRST_JOB)
    assert not outcome.already_done
    assert outcome.by_status == status_count(FIRST_JOB)
    assert outcome.deliveries == {"lake": 7, "crm-hook": 1}

    for source in ("shop-web", "strict-app"):
        expected = [(status, eid) for s, _, status, eid in FIRST_JOB if s == source]
        records = inspector(conn, source)
        assert [r["status"] for r in records] == [st for st, _ in expected]
        for (_, eid), record in zip(expected, records, strict=True):
            if eid is not None:  # generated ids are not known in advance
                assert record["event_id"] == eid
            assert record["received_at"] == RECEIVED
        assert source_stats(conn, source) == dict(Counter(st for st, _ in expected))


def test_inspector_records_say_why_and_where(ctx: WorkerContext, conn: redis.Redis) -> None:
    run_job(ctx, conn, "job-1", [(s, raw) for s, raw, *_ in FIRST_JOB])
    shop = inspector(conn, "shop-web")
    by_id = {}
    for record in shop:
        by_id.setdefault(record["event_id"], record)

    purchase = by_id["buy-1"]
    assert purchase["event_name"] == "purchase"
    assert purchase["destinations"] == {"lake": "queued", "crm-hook": "queued"}
    assert purchase["warnings"] == [] and purchase["errors"] == []
    # The normalized payload, with the IP's last octet zeroed.
    assert purchase["payload"]["context"]["device"]["ip"] == "198.51.100.0"
    assert purchase["payload"]["context"]["source_id"] == "shop-web"
    assert purchase["payload"]["context"]["received_at"] == RECEIVED
    assert by_id["e-v1"]["payload"]["context"]["device"]["ip"] == "198.51.100.0"

    assert by_id["buy-2"]["destinations"] == {"lake": "queued", "crm-hook": "FILTERED"}  # no consent "3"
    assert by_id["c-1"]["destinations"] == {"lake": "queued", "crm-hook": "FILTERED"}  # not a purchase
    assert by_id["pv-1"]["warnings"] and by_id["pv-1"]["status"] == "INVALID_ACCEPTED"
    assert by_id["nn-1"]["errors"] and by_id["nn-1"]["destinations"] == {}
    broken = [r for r in shop if r["event_id"] is None]
    assert len(broken) == 1 and broken[0]["errors"]
    assert broken[0]["payload"] == '{"event_name": "broken"'
    duplicate = [r for r in shop if r["status"] == "DUPLICATE"]
    assert len(duplicate) == 1 and duplicate[0]["destinations"] == {}
    generated = [r for r in shop if r["event_name"] == "custom" and r["event_id"] != "c-1"]
    assert len(generated) == 1 and generated[0]["status"] == "INVALID_ACCEPTED"
    assert any("event_id" in w for w in generated[0]["warnings"])

    strict = {r["event_id"]: r for r in inspector(conn, "strict-app")}
    assert strict["pv-1"]["status"] == "INVALID_REJECTED"
    assert strict["pv-1"]["errors"], "a rejected event says why"
    assert strict["pv-1"]["destinations"] == {}


def test_one_delivery_job_per_destination_holding_the_normalized_events(ctx: WorkerContext, conn: redis.Redis) -> None:
    run_job(ctx, conn, "job-1", [(s, raw) for s, raw, *_ in FIRST_JOB])
    lake = delivered(conn, "lake")
    crm = delivered(conn, "crm-hook")
    assert list(lake) == ["job-1"] and list(crm) == ["job-1"]

    lake_ids = [e.event_id for e in lake["job-1"]]
    assert lake_ids[:6] == ["buy-1", "buy-2", "e-v1", "c-1", "pv-1", lake_ids[5]]
    assert lake_ids[6] == "c-1"  # strict-app's c-1
    assert len(lake_ids) == 7
    bodies = [json.loads(e.body) for e in lake["job-1"]]
    assert [b["context"]["source_id"] for b in bodies] == ["shop-web"] * 6 + ["strict-app"]
    assert bodies[5]["context"]["event_id"] == lake_ids[5]  # the generated id travels with the event
    assert all(e.attempts == 0 and e.last_error is None for e in lake["job-1"])

    # Delivered events are the normalized v2 events, full IP and all.
    expected_purchase = json.loads(json.dumps(PURCHASE))
    expected_purchase["context"].update(received_at=RECEIVED, source_id="shop-web")
    assert bodies[0] == expected_purchase
    assert bodies[2] == {
        "event_name": "v1_custom",
        "value": 20,
        "currency": "EUR",
        "user": {"consistent_anonymous_id": "ca-1"},
        "context": {
            "event_id": "e-v1",
            "event_timestamp": T0,
            "page": {"url": "https://x/p"},
            "device": {"ip": "198.51.100.4"},
            "received_at": RECEIVED,
            "source_id": "shop-web",
        },
    }
    assert [e.event_name for e in lake["job-1"]] == [b["event_name"] for b in bodies]
    assert bodies[1]["user"]["consent_categories"] == ["1"]

    [hooked] = crm["job-1"]
    assert (hooked.event_id, hooked.event_name) == ("buy-1", "purchase")
    assert json.loads(hooked.body) == expected_purchase

    assert destination_totals(conn, "lake") == {"queued": 7}
    # crm-hook: buy-2 (consent), v1_custom, 2 x custom, page_view, the generated-id custom.
    # buy-2 lacks consent 3; the other five are not purchases (the destination's conditions).
    assert destination_totals(conn, "crm-hook") == {
        "queued": 1,
        "filtered": 6,
        "filtered_consent": 1,
        "filtered_conditions": 5,
    }


def test_nothing_matching_means_no_delivery_job(ctx: WorkerContext, conn: redis.Redis) -> None:
    outcome = run_job(ctx, conn, "job-1", [("shop-web", ev(**CUSTOM))])
    assert outcome.deliveries == {"lake": 1}
    assert list(delivered(conn, "lake")) == ["job-1"]
    assert delivery_jobs(conn, "crm-hook") == []


# --- across jobs -----------------------------------------------------------------------------


def test_a_later_job_with_a_seen_event_id_is_a_duplicate_and_delivered_nowhere(
    ctx: WorkerContext, conn: redis.Redis
) -> None:
    run_job(ctx, conn, "job-1", [(s, raw) for s, raw, *_ in FIRST_JOB])
    retried_purchase = {**PURCHASE, "value": 99}  # same event id, different content: still the same event
    outcome = run_job(
        ctx,
        conn,
        "job-2",
        [
            ("shop-web", ev(**retried_purchase)),
            ("shop-web", ev(**CUSTOM)),
            ("shop-web", ev(**NO_ID)),  # no id: never a duplicate
            ("shop-web", ev(**NO_ID)),
            (
                "strict-app",
                ev(
                    **{
                        **PAGE_VIEW_INCOMPLETE,
                        "page_type": "home",
                        "user": {"consistent_anonymous_id": "ca-9", "consent_categories": []},
                    }
                ),
            ),
        ],
    )
    # pv-1 was rejected on strict-app the first time: a rejected event is not remembered.
    assert outcome.by_status == {"DUPLICATE": 2, "INVALID_ACCEPTED": 2, "VALID": 1}
    assert outcome.deliveries == {"lake": 3}
    assert list(delivered(conn, "lake")) == ["job-1", "job-2"]
    assert [e.event_id for e in delivered(conn, "lake")["job-2"]][-1] == "pv-1"
    assert list(delivered(conn, "crm-hook")) == ["job-1"]
    assert source_stats(conn, "shop-web")["DUPLICATE"] == 1 + 2
    assert source_stats(conn, "strict-app") == {"VALID": 2, "INVALID_REJECTED": 1}
    shop = inspector(conn, "shop-web")
    assert [r["status"] for r in shop[-4:]] == ["DUPLICATE", "DUPLICATE", "INVALID_ACCEPTED", "INVALID_ACCEPTED"]
    no_ids = [r["event_id"] for r in shop[-2:]]
    assert len(set(no_ids)) == 2, "each id-less event gets its own generated id"


def test_running_a_job_again_after_it_finished_changes_nothing(ctx: WorkerContext, conn: redis.Redis) -> None:
    events = [(s, raw) for s, raw, *_ in FIRST_JOB]
    first = run_job(ctx, conn, "job-1", events)
    snapshot = {
        "lake": [j.id for j in delivery_jobs(conn, "lake")],
        "crm": [j.id for j in delivery_jobs(conn, "crm-hook")],
        "shop": conn.lrange(LAYOUT.inspector("shop-web"), 0, -1),
        "strict": conn.lrange(LAYOUT.inspector("strict-app"), 0, -1),
        "stats": (source_stats(conn, "shop-web"), source_stats(conn, "strict-app")),
        "dest": (destination_totals(conn, "lake"), destination_totals(conn, "crm-hook")),
    }
    again = run_job(ctx, conn, "job-1", events)
    assert again.already_done
    assert again.deliveries == {}
    assert not first.already_done
    assert snapshot == {
        "lake": [j.id for j in delivery_jobs(conn, "lake")],
        "crm": [j.id for j in delivery_jobs(conn, "crm-hook")],
        "shop": conn.lrange(LAYOUT.inspector("shop-web"), 0, -1),
        "strict": conn.lrange(LAYOUT.inspector("strict-app"), 0, -1),
        "stats": (source_stats(conn, "shop-web"), source_stats(conn, "strict-app")),
        "dest": (destination_totals(conn, "lake"), destination_totals(conn, "crm-hook")),
    }


# --- inspector sampling and cap --------------------------------------------------------------


def sampled_job(n: int, tag: str) -> list[tuple[str, bytes]]:
    """50 events: 40 ordinary, 5 rejected (no event_name), 5 carrying a test_code."""
    events = []
    user = {"consistent_anonymous_id": "ca-1"}
    for i in range(n):
        context = {"event_id": f"{tag}-{i}", "event_timestamp": T0}
        if i % 10 == 3:
            events.append(("shop-web", ev(context=context)))
        elif i % 10 == 7:
            events.append(("shop-web", ev(event_name="custom", test_code=f"tc-{i}", user=user, context=context)))
        else:
            events.append(("shop-web", ev(event_name="custom", user=user, context=context)))
    return events


@pytest.fixture
def sampling_ctx(valkey_url: str, tmp_path: Path, conn: redis.Redis) -> Iterator[WorkerContext]:
    yield WorkerContext(make_config(valkey_url, tmp_path, per_name_per_minute=2, events_per_source=1000), conn)


def test_inspector_keeps_a_sample_plus_every_rejected_and_test_event(
    sampling_ctx: WorkerContext, conn: redis.Redis
) -> None:
    outcome = run_job(sampling_ctx, conn, "job-1", sampled_job(50, "s"))
    assert outcome.by_status == {"VALID": 45, "INVALID_REJECTED": 5}
    records = inspector(conn, "shop-web")
    ordinary = [r for r in records if r["status"] != "INVALID_REJECTED" and r["test_code"] is None]
    rejected = [r for r in records if r["status"] == "INVALID_REJECTED"]
    # Test events live in a list of their own (capped per minute, 20 by default).
    tested = [json.loads(raw) for raw in conn.lrange(LAYOUT.inspector_tests("shop-web"), 0, -1)]
    assert all(r["test_code"] is None for r in records)
    assert len(ordinary) == 2
    assert sorted(r["event_id"] for r in rejected) == sorted(f"s-{i}" for i in range(50) if i % 10 == 3)
    assert sorted(r["test_code"] for r in tested) == sorted(f"tc-{i}" for i in range(50) if i % 10 == 7)
    assert len(records) == 7
    # Sampling thins the inspector only: counters and deliveries see every event.
    assert source_stats(conn, "shop-web") == {"VALID": 45, "INVALID_REJECTED": 5}
    assert len(delivered(conn, "lake")["job-1"]) == 45
    # The sample is per event name and minute: the next job, same minute, keeps no more of "custom".
    run_job(sampling_ctx, conn, "job-2", sampled_job(50, "t"))
    records = inspector(conn, "shop-web")
    assert len([r for r in records if r["status"] == "VALID"]) == 2


def test_the_inspector_list_is_capped_keeping_the_newest(valkey_url: str, tmp_path: Path, conn: redis.Redis) -> None:
    ctx = WorkerContext(make_config(valkey_url, tmp_path, per_name_per_minute=100, events_per_source=5), conn)
    run_job(ctx, conn, "job-1", sampled_job(8, "a"))
    assert conn.llen(LAYOUT.inspector("shop-web")) == 5
    run_job(ctx, conn, "job-2", sampled_job(3, "b"))
    records = inspector(conn, "shop-web")
    assert len(records) == 5
    # a-7 carries a test_code: it is in the test list, not here.
    assert [r["event_id"] for r in records] == ["a-4", "a-5", "a-6", "b-0", "b-1", "b-2"][-5:]


def test_an_inspector_of_size_zero_keeps_nothing_but_counts(valkey_url: str, tmp_path: Path, conn) -> None:
    ctx = WorkerContext(make_config(valkey_url, tmp_path, events_per_source=0), conn)
    run_job(ctx, conn, "job-1", sampled_job(10, "z"))
    assert conn.exists(LAYOUT.inspector("shop-web")) == 0
    assert source_stats(conn, "shop-web") == {"VALID": 9, "INVALID_REJECTED": 1}


# --- two runs of one job at once (a worker frozen past its lease, then woken) -----------------


def job_state(conn: redis.Redis) -> dict[str, Any]:
    return {
        "lake": {
            j.id: [e.event_id for b in delivery_batches_of(conn, j) for e in b.events]
            for j in delivery_jobs(conn, "lake")
        },
        "crm": {
            j.id: [e.event_id for b in delivery_batches_of(conn, j) for e in b.events]
            for j in delivery_jobs(conn, "crm-hook")
        },
        "shop": [json.loads(r)["event_id"] for r in conn.lrange(LAYOUT.inspector("shop-web"), 0, -1)],
        "stats": (source_stats(conn, "shop-web"), source_stats(conn, "strict-app")),
        "dest": (destination_totals(conn, "lake"), destination_totals(conn, "crm-hook")),
    }


@pytest.mark.parametrize("window", ["before its commit", "between its WATCH and EXEC"])
def test_of_two_runs_of_one_job_only_one_commits(
    window: str, ctx: WorkerContext, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.ingest as ingest_module

    events = [(s, raw) for s, raw, *_ in FIRST_JOB]
    second: list[IngestOutcome] = []

    def second_run() -> None:
        if not second:
            second.append(IngestOutcome(0, {}, {}))  # (a placeholder: no third run from inside)
            second[0] = run_job(ctx, conn, "job-1", events)

    with monkeypatch.context() as patched:
        if window == "before its commit":
            patched.setattr(
                ingest_module.faults, "point", lambda name: second_run() if name == "ingest:mid_fanout" else None
            )
        else:
            real = ingest_module.settle_pipeline

            def watched_then_overtaken(connection: Any, wait: Any) -> Any:
                pipe = real(connection, wait)
                multi = pipe.multi

                def overtaken() -> None:
                    second_run()  # the other run commits after this one's WATCH
                    multi()

                pipe.multi = overtaken
                return pipe

            patched.setattr(ingest_module, "settle_pipeline", watched_then_overtaken)
        first = run_job(ctx, conn, "job-1", events)
    assert not second[0].already_done  # the second run, undisturbed, committed
    assert first.already_done  # the first found it done and left nothing of its own
    both = job_state(conn)
    conn.flushall()
    once = run_job(ctx, conn, "job-1", events)
    assert not once.already_done
    assert both == job_state(conn)
    assert sum(len(ids) for ids in both["lake"].values()) == once.deliveries["lake"]


# --- claims in parts, and the commit's reply awaited while the job's events are freed ---------


def test_a_job_of_several_claim_parts_finds_repeats_across_them_and_reruns_the_same(
    ctx: WorkerContext, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.ingest as ingest_module

    part = ingest_module.CLAIM_PART_EVENTS
    count = 2 * part + 300  # three parts
    # Event i repeats event i - part - 7 (a copy in the next part), for i in the last 200.
    ids = [f"id-{i}" for i in range(count - 200)] + [f"id-{i - part - 7}" for i in range(count - 200, count)]
    events = [("shop-web", ev(**{**CUSTOM, "context": {"event_id": e, "event_timestamp": T0}})) for e in ids]
    # A first run killed after its claim and before its commit ...
    with monkeypatch.context() as patched:

        def crash(name: str) -> None:
            if name == "ingest:mid_fanout":
                raise RuntimeError("killed")

        patched.setattr(ingest_module.faults, "point", crash)
        with pytest.raises(RuntimeError, match="killed"):
            run_job(ctx, conn, "job-1", events)
    assert delivery_jobs(conn, "lake") == []
    # ... and its re-run: every part's verdicts read back, no event its own duplicate.
    rerun = run_job(ctx, conn, "job-1", events)
    assert rerun.by_status == {"VALID": count - 200, "DUPLICATE": 200}
    lake = [e.event_id for batch in delivered(conn, "lake").values() for e in batch]
    assert sorted(lake) == sorted(set(ids)) and len(lake) == count - 200
    state = job_state(conn)
    conn.flushall()
    once = run_job(ctx, conn, "job-1", events)  # the same job, never interrupted
    assert once.by_status == rerun.by_status
    assert job_state(conn) == state


def test_the_commit_runs_its_waiting_work_while_the_server_holds_the_transaction(
    ctx: WorkerContext, conn: redis.Redis, valkey_url: str
) -> None:
    from workers.ingest import commit_prepared

    job_key = f"{LAYOUT.rq_prefix}:job:job-9"
    prepared = conn.pipeline(transaction=True)
    prepared.hset(job_key, "trackpipe_done", 1)
    prepared.set("fan-out-written", 1)
    seen: list[tuple[Any, Any]] = []
    other = redis.Redis.from_url(valkey_url)
    try:
        conn.client_pause(5_000, all=False)  # writes wait until the work below lets them go

        def meanwhile() -> None:
            seen.append((other.get("fan-out-written"), other.hget(job_key, "trackpipe_done")))
            other.client_unpause()

        assert commit_prepared(ctx, conn, job_key, prepared, while_waiting=meanwhile)
    finally:
        other.client_unpause()
        other.close()
    assert seen == [(None, None)]  # called once, before the transaction had run
    assert conn.get("fan-out-written") == b"1"
    # A job already done: nothing sent, nothing called.
    assert not commit_prepared(ctx, conn, job_key, prepared, while_waiting=lambda: seen.append("again"))
    assert seen == [(None, None)]
