"""The inspector's sampling, as the vendor does it (per event name and minute; test events apart and
capped; rejected events always kept), and the data-quality counters the ingest job writes beside it,
on a real valkey-server."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import redis

from trackpipe.config import ConfigError, parse
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord, encode_batch
from workers import ingest as ingest_module
from workers.context import WorkerContext
from workers.ingest import IngestOutcome, process_ingest
from workers.inspector import MESSAGE_KINDS_PER_HOUR, OTHER_KIND, message_kind

LAYOUT = KeyLayout()
MINUTE = 60_000
T0 = 1_700_000_040_000  # the start of a minute
USER = {"consistent_anonymous_id": "ca-1", "consent_categories": [1]}


def config(redis_url: str, *, per_name: int = 5, test_per_minute: int = 3, size: int = 1000) -> str:
    return f"""
redis_url = "{redis_url}"
[inspector]
events_per_source = {size}
per_name_per_minute = {per_name}
test_events_per_minute = {test_per_minute}
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]
[[sources]]
id = "app"
site_id = "30"
keys = ["app-key-0123456789"]
"""


@pytest.fixture
def conn(valkey_client: redis.Redis) -> redis.Redis:
    return valkey_client


def context(conn: redis.Redis, redis_url: str, **settings: Any) -> WorkerContext:
    return WorkerContext(parse(config(redis_url, **settings), env={}), conn)


def event(name: str | None, event_id: str, **extra: Any) -> bytes:
    fields: dict[str, Any] = {"user": USER, "context": {"event_id": event_id, "event_timestamp": T0}, **extra}
    if name == "page_view":
        fields["page_type"] = "home"  # what the standard page_view requires: the event is VALID
    if name is not None:
        fields["event_name"] = name
    return json.dumps(fields).encode()


def run(ctx: WorkerContext, conn: redis.Redis, job_id: str, events: list[bytes], *, at: int = T0, source="shop-web"):
    site = {"shop-web": "29", "app": "30"}[source]
    payload = encode_batch(IngestBatch([IngestRecord(source, site, at, events)]))
    return process_ingest(ctx, conn, job_id, f"{LAYOUT.rq_prefix}:job:{job_id}", payload)


def kept(conn: redis.Redis, source: str = "shop-web", *, tests: bool = False) -> list[dict[str, Any]]:
    """The records of one of a source's lists, oldest first."""
    key = LAYOUT.inspector_tests(source) if tests else LAYOUT.inspector(source)
    return [json.loads(raw) for raw in reversed(conn.lrange(key, 0, -1))]


def names(records: list[dict[str, Any]]) -> Counter[str | None]:
    return Counter(r["event_name"] for r in records)


# --- fair share per event name ---------------------------------------------------------------------


def test_a_burst_of_page_views_cannot_push_purchases_out(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url, per_name=5)
    # Job 1: 300 page views, then 2 purchases. Job 2, same minute: 300 more, then one purchase.
    burst = [event("page_view", f"pv-{i}") for i in range(300)]
    outcome = run(ctx, conn, "job-1", [*burst, event("purchase_x", "buy-1"), event("purchase_x", "buy-2")])
    assert outcome.by_status == {"VALID": 302}
    run(ctx, conn, "job-2", [event("page_view", f"pv2-{i}") for i in range(300)] + [event("purchase_x", "buy-3")])
    records = kept(conn)
    assert names(records) == {"page_view": 5, "purchase_x": 3}
    assert [r["event_id"] for r in records if r["event_name"] == "purchase_x"] == ["buy-1", "buy-2", "buy-3"]
    # The five page views are the minute's first; the order of the list is the order of arrival.
    assert [r["event_id"] for r in records] == [f"pv-{i}" for i in range(5)] + ["buy-1", "buy-2", "buy-3"]
    # The next minute has its own share.
    run(ctx, conn, "job-3", [event("page_view", f"pv3-{i}") for i in range(10)], at=T0 + MINUTE)
    assert names(kept(conn))["page_view"] == 10
    # Sampling thins the inspector only: every event was counted.
    stats = {k.decode(): int(v) for k, v in conn.hgetall(LAYOUT.source_stats("shop-web")).items()}
    assert stats == {"VALID": 613}


def test_events_of_one_job_spanning_minutes_are_sampled_per_minute(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url, per_name=2)
    records = [
        IngestRecord("shop-web", "29", T0 + 59_000, [event("page_view", f"a-{i}") for i in range(5)]),
        IngestRecord("shop-web", "29", T0 + MINUTE, [event("page_view", f"b-{i}") for i in range(5)]),
    ]
    payload = encode_batch(IngestBatch(records))
    process_ingest(ctx, conn, "job-1", f"{LAYOUT.rq_prefix}:job:job-1", payload)
    assert [r["event_id"] for r in kept(conn)] == ["a-0", "a-1", "b-0", "b-1"]


def test_sources_are_sampled_apart(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url, per_name=3)
    run(ctx, conn, "job-1", [event("page_view", f"s-{i}") for i in range(10)])
    run(ctx, conn, "job-2", [event("page_view", f"a-{i}") for i in range(10)], source="app")
    assert len(kept(conn, "shop-web")) == 3
    assert len(kept(conn, "app")) == 3


# --- rejected and test events ----------------------------------------------------------------------


def test_rejected_events_are_always_kept(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url, per_name=2)
    rejected = [event(None, f"nn-{i}") for i in range(40)] + [b'{"event_name": "broken"'] * 5
    outcome = run(ctx, conn, "job-1", [event("page_view", f"pv-{i}") for i in range(10)] + rejected)
    assert outcome.by_status == {"VALID": 10, "INVALID_REJECTED": 45}
    records = kept(conn)
    assert Counter(r["status"] for r in records) == {"VALID": 2, "INVALID_REJECTED": 45}
    run(ctx, conn, "job-2", [event(None, f"more-{i}") for i in range(7)])
    assert Counter(r["status"] for r in kept(conn)) == {"VALID": 2, "INVALID_REJECTED": 52}


def test_test_events_are_kept_apart_and_capped_per_minute(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url, per_name=2, test_per_minute=3)
    tests = [event("page_view", f"t-{i}", test_code=f"tc-{i}") for i in range(5)]
    ordinary = [event("page_view", f"pv-{i}") for i in range(5)]
    run(ctx, conn, "job-1", tests + ordinary)
    assert [r["event_id"] for r in kept(conn, tests=True)] == ["t-0", "t-1", "t-2"]
    # Test events neither use the ordinary share of their name nor appear in the ordinary list.
    assert [r["event_id"] for r in kept(conn)] == ["pv-0", "pv-1"]
    # `context.test_code` counts too; the cap is per source and minute, whatever the name.
    in_context = json.dumps(
        {"event_name": "purchase_x", "user": USER, "context": {"event_id": "t-ctx", "test_code": "c"}}
    ).encode()
    run(ctx, conn, "job-2", [in_context])
    assert len(kept(conn, tests=True)) == 3
    run(ctx, conn, "job-3", [in_context.replace(b"t-ctx", b"t-next")], at=T0 + MINUTE)
    assert [r["event_id"] for r in kept(conn, tests=True)][-1] == "t-next"
    assert [r["test_code"] for r in kept(conn, tests=True)][-1] == "c"


def test_both_lists_are_capped_keeping_the_newest(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url, per_name=100, test_per_minute=100, size=4)
    run(ctx, conn, "job-1", [event("page_view", f"pv-{i}") for i in range(10)])
    run(ctx, conn, "job-2", [event("page_view", f"t-{i}", test_code="x") for i in range(10)])
    assert [r["event_id"] for r in kept(conn)] == ["pv-6", "pv-7", "pv-8", "pv-9"]
    assert [r["event_id"] for r in kept(conn, tests=True)] == ["t-6", "t-7", "t-8", "t-9"]


def test_a_zero_share_keeps_only_rejected_events(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url, per_name=0, test_per_minute=0)
    run(ctx, conn, "job-1", [event("page_view", "pv"), event("page_view", "t", test_code="x"), event(None, "nn")])
    assert [r["event_id"] for r in kept(conn)] == ["nn"]
    assert kept(conn, tests=True) == []


# --- re-runs -----------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def test_a_job_killed_before_its_fan_out_counts_nothing_twice(
    conn: redis.Redis, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context(conn, valkey_url, per_name=4, test_per_minute=2)
    events = [event("page_view", f"pv-{i}") for i in range(3)] + [event("page_view", "t", test_code="x")]

    def die(name: str) -> None:
        if name == "ingest:mid_fanout":
            raise Killed(name)

    with monkeypatch.context() as patched:
        patched.setattr(ingest_module.faults, "point", die)
        with pytest.raises(Killed):
            run(ctx, conn, "job-1", events)
    # The kill came before EXEC: nothing was kept or counted.
    assert kept(conn) == [] and kept(conn, tests=True) == []
    assert conn.hgetall(LAYOUT.inspector_sample("shop-web", T0 // MINUTE)) == {}
    first: IngestOutcome = run(ctx, conn, "job-1", events)  # the re-run
    assert not first.already_done
    again = run(ctx, conn, "job-1", events)  # and a run after it finished
    assert again.already_done
    assert [r["event_id"] for r in kept(conn)] == ["pv-0", "pv-1", "pv-2"]
    assert len(kept(conn, tests=True)) == 1
    counters = conn.hgetall(LAYOUT.inspector_sample("shop-web", T0 // MINUTE))
    assert counters == {b"n:page_view": b"3", b"t": b"1"}
    assert 0 < conn.ttl(LAYOUT.inspector_sample("shop-web", T0 // MINUTE)) <= 3600
    # One share of the minute is left for page_view (4 - 3): the counts were not doubled.
    run(ctx, conn, "job-2", [event("page_view", f"late-{i}") for i in range(5)])
    assert [r["event_id"] for r in kept(conn)][-2:] == ["pv-2", "late-0"]
    hourly = conn.hgetall(LAYOUT.source_hourly("shop-web", T0 // 3_600_000))
    assert hourly == {b"VALID": b"9"}


# --- data-quality counters ---------------------------------------------------------------------------


def test_statuses_are_counted_per_hour_and_messages_per_kind(conn: redis.Redis, valkey_url: str) -> None:
    ctx = context(conn, valkey_url)
    hour = T0 // 3_600_000
    custom = [event("purchase_x", f"b-{i}", value=f"v{i}") for i in range(3)]  # a custom event: VALID
    no_user = [json.dumps({"event_name": "page_view", "context": {"event_id": f"nu-{i}"}}).encode() for i in range(4)]
    run(ctx, conn, "job-1", [event("page_view", "pv"), *custom, *no_user, event(None, "nn")])
    run(ctx, conn, "job-2", [event("page_view", "pv")], at=T0 + 3_600_000)  # next hour, a duplicate
    assert conn.hgetall(LAYOUT.source_hourly("shop-web", hour)) == {
        b"VALID": b"4",
        b"INVALID_ACCEPTED": b"4",
        b"INVALID_REJECTED": b"1",
    }
    assert conn.hgetall(LAYOUT.source_hourly("shop-web", hour + 1)) == {b"DUPLICATE": b"1"}
    assert 30 * 86_400 < conn.ttl(LAYOUT.source_hourly("shop-web", hour)) <= 35 * 86_400
    messages = {k.decode(): int(v) for k, v in conn.hgetall(LAYOUT.source_messages("shop-web", hour)).items()}
    assert messages["error|event_name is missing"] == 1
    no_id_kind = [k for k in messages if k.startswith("warning|") and "consistent_anonymous_id" in k]
    assert len(no_id_kind) == 1 and messages[no_id_kind[0]] == 4
    assert 0 < conn.ttl(LAYOUT.source_messages("shop-web", hour)) <= 2 * 86_400


def test_message_kinds_per_hour_are_bounded(conn: redis.Redis, valkey_url: str) -> None:
    """Ever new property names (each its own kind of warning) end up under one 'other' field."""
    spec = """
[sources.spec]
unspecified_properties = "warn"
[[sources.spec.events]]
name = "page_view"
"""
    text = config(valkey_url).replace('keys = ["test-key-0123456789"]', 'keys = ["test-key-0123456789"]' + spec, 1)
    ctx = WorkerContext(parse(text, env={}), conn)
    many = [event("page_view", f"p-{i}", **{f"prop_{i}": 1}) for i in range(MESSAGE_KINDS_PER_HOUR + 50)]
    run(ctx, conn, "job-1", many)
    messages = {
        k.decode(): int(v) for k, v in conn.hgetall(LAYOUT.source_messages("shop-web", T0 // 3_600_000)).items()
    }
    assert len(messages) <= MESSAGE_KINDS_PER_HOUR + 2  # the kinds, one "other" per level
    assert messages.get(f"warning|{OTHER_KIND}", 0) >= 50
    assert sum(messages.values()) >= MESSAGE_KINDS_PER_HOUR + 50


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("items[3].price 'abc' is not a number", "items[].price … is not a number"),
        ("items[0].price 7 is not a number", "items[].price … is not a number"),
        ("value {'a': 1} is not a number", "value … is not a number"),
        ("purchase: status 'x' is not a known purchase status", "purchase: status … is not a known purchase status"),
        ("event_name is not a non-empty string", "event_name is not a non-empty string"),
        ("context.event_id is missing; generated", "context.event_id is missing; generated"),
    ],
)
def test_message_kinds_leave_out_what_varies(message: str, kind: str) -> None:
    assert message_kind(message) == kind


def test_message_kinds_are_bounded_in_length() -> None:
    assert len(message_kind("x" * 1000)) <= 160


# --- configuration ------------------------------------------------------------------------------------


def test_the_old_per_job_key_is_refused_naming_its_successor() -> None:
    with pytest.raises(ConfigError, match=r"inspector\.sample_per_job: .*inspector\.per_name_per_minute"):
        parse("[inspector]\nsample_per_job = 20\n", env={})


def test_defaults_follow_the_vendor_test_cap() -> None:
    inspector = parse("", env={}).inspector
    assert (inspector.per_name_per_minute, inspector.test_events_per_minute) == (20, 20)


def test_sampling_keys_name_themselves_when_wrong() -> None:
    for key in ("per_name_per_minute", "test_events_per_minute"):
        with pytest.raises(ConfigError, match=rf"inspector\.{key}"):
            parse(f"[inspector]\n{key} = -1\n", env={})
