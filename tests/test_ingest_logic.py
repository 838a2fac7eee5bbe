"""The pure parts of workers.ingest: process_event, decode_and_normalize, plan_fan_out, delivery_job_id."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import msgspec
import pytest

from trackpipe import config as config_module
from trackpipe.config import Config, SourceConfig
from trackpipe.messages import IngestBatch, IngestRecord, encode_batch
from workers.ingest import ProcessedEvent, decode_and_normalize, delivery_job_id, plan_fan_out, process_event
from workers.status import EventStatus

RECEIVED = 1_700_000_500_000
TS = 1_700_000_000_000
ACCEPT = SourceConfig(id="shop-web", site_id="29", keys=["shop-web-key-0123"])
REJECT = SourceConfig(id="app", site_id="29", keys=["app-key-01234567"], on_invalid="reject")

CONFIG_TOML = """
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["shop-web-key-0123"]

[[sources]]
id = "app"
site_id = "29"
keys = ["app-key-01234567"]
on_invalid = "reject"

[[destinations]]
id = "crm-hook"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
events = ["purchase", "sign_up"]
consent_category = "3"

[[destinations]]
id = "lake.eu"
type = "file"
path = "/tmp/trackpipe-lake"
sources = ["shop-web"]
"""

USER = {"id": "7", "consistent_anonymous_id": "ca-7", "consent_categories": ["1", "3"]}
PURCHASE = {
    "event_name": "purchase",
    "id": "O-1",
    "value": 42.5,
    "revenue": 35,
    "currency": "EUR",
    "type": "online",
    "payment_method": "card",
    "status": "pending",
    "user": USER,
    "items": [{"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "price": 35}}],
    "context": {"event_id": "c0ffee-1", "event_timestamp": TS, "device": {"ip": "198.51.100.4"}},
}


def raw(event: Any) -> bytes:
    return json.dumps(event).encode()


def login(event_id: str | None = "l-1", **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"event_timestamp": TS}
    if event_id is not None:
        context["event_id"] = event_id
    return {"event_name": "login", "user": USER, "context": context, **extra}


def process(event: Any, source: SourceConfig = ACCEPT, seed: str = "job-1:0:0") -> ProcessedEvent:
    body = event if isinstance(event, bytes) else raw(event)
    return process_event(body, source, RECEIVED, seed)


@pytest.fixture(scope="module")
def config() -> Config:
    return config_module.parse(CONFIG_TOML, env={})


# --- process_event ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"event_name": "login"',
        b"{'event_name': 'login'}",
        b'{"event_name": "login"} trailing',
        b"\xff\xfe{}",
        b'{"event_name": "\xff"}',
        b'{"event_name": "\\ud800"}',
        b"NaN",
        b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=[
        "empty",
        "open-brace",
        "truncated",
        "single-quotes",
        "trailing-garbage",
        "bad-utf8",
        "bad-utf8-in-string",
        "lone-surrogate",
        "nan",
        "deeply-nested",
    ],
)
def test_invalid_json_is_rejected_not_raised(body: bytes) -> None:
    item = process(body)
    assert item.status is EventStatus.INVALID_REJECTED
    assert item.event is None
    assert item.event_id is None
    assert item.dedupable is False
    assert len(item.errors) == 1
    assert item.errors[0].startswith("not valid JSON")
    assert item.raw == body
    assert item.source_id == "shop-web"
    assert item.received_at == RECEIVED


@pytest.mark.parametrize("body", [b"[]", b'[{"event_name": "x"}]', b'"login"', b"5", b"null", b"true", b"1e999"])
def test_non_object_json_is_rejected(body: bytes) -> None:
    item = process(body)
    assert item.status is EventStatus.INVALID_REJECTED
    assert item.event is None
    assert item.dedupable is False
    assert len(item.errors) == 1
    assert "object" in item.errors[0]


def test_number_too_large_for_a_float_does_not_crash_and_can_be_delivered(config: Config) -> None:
    body = (
        b'{"event_name": "login", "user": {"id": "7", "consent_categories": ["3"]}, "big": 1e999,'
        b' "small": -1e999, "context": {"event_id": "big-1", "event_timestamp": 1e999}}'
    )
    item = process(body)
    assert item.status is EventStatus.INVALID_ACCEPTED
    assert item.event is not None
    assert item.event["context"]["event_timestamp"] == RECEIVED
    assert any("event_timestamp" in w for w in item.warnings)
    fan_out = plan_fan_out([item], config)
    (delivered,) = fan_out.deliveries["lake.eu"]
    decoded = json.loads(delivered.body)  # must be valid JSON: no bare Infinity
    assert decoded["context"]["event_id"] == "big-1"


def test_valid_event() -> None:
    item = process(PURCHASE)
    assert item.status is EventStatus.VALID
    assert item.warnings == []
    assert item.errors == []
    assert item.event_id == "c0ffee-1"
    assert item.dedupable is True
    assert item.event is not None
    assert item.event["context"]["source_id"] == "shop-web"
    assert item.event["context"]["received_at"] == RECEIVED


# (event, source, status, dedupable, warned about, error contains)
STATUSES = [
    pytest.param(PURCHASE, ACCEPT, EventStatus.VALID, True, None, None, id="valid-accept"),
    pytest.param(PURCHASE, REJECT, EventStatus.VALID, True, None, None, id="valid-reject"),
    pytest.param(
        {**PURCHASE, "status": "lost"}, ACCEPT, EventStatus.INVALID_ACCEPTED, True, "status", None, id="warned-accept"
    ),
    pytest.param(
        {**PURCHASE, "status": "lost"},
        REJECT,
        EventStatus.INVALID_REJECTED,
        False,
        "status",
        "on_invalid",
        id="warned-reject",
    ),
    pytest.param(
        login(event_id=None), ACCEPT, EventStatus.INVALID_ACCEPTED, False, "event_id", None, id="generated-id-accept"
    ),
    pytest.param(
        login(event_id=None),
        REJECT,
        EventStatus.INVALID_REJECTED,
        False,
        "event_id",
        "on_invalid",
        id="generated-reject",
    ),
    pytest.param(
        {"user": USER, "context": {"event_id": "n-1", "event_timestamp": TS}},
        ACCEPT,
        EventStatus.INVALID_REJECTED,
        False,
        None,
        "event_name",
        id="no-event-name",
    ),
    pytest.param(
        {"event_name": "my_event", "context": {"event_id": "m-1"}},
        REJECT,
        EventStatus.INVALID_REJECTED,
        False,
        "event_timestamp",
        "on_invalid",
        id="normalize-warning-reject",
    ),
]


@pytest.mark.parametrize(("event", "source", "status", "dedupable", "warned", "error"), STATUSES)
def test_status_and_dedupable(
    event: dict[str, Any],
    source: SourceConfig,
    status: EventStatus,
    dedupable: bool,
    warned: str | None,
    error: str | None,
) -> None:
    item = process(event, source)
    assert item.status is status
    assert item.dedupable is dedupable
    if warned is None:
        assert item.warnings == []
    else:
        assert any(warned in w for w in item.warnings), item.warnings
    if error is None:
        assert item.errors == []
    else:
        assert len(item.errors) == 1
        assert error in item.errors[0]


def test_rejected_for_on_invalid_keeps_the_warnings_that_caused_it() -> None:
    item = process({**PURCHASE, "status": "lost", "currency": "euro"}, REJECT)
    assert item.status is EventStatus.INVALID_REJECTED
    assert len(item.warnings) == 2
    assert item.errors == ["rejected: the source rejects invalid events (on_invalid = reject)"]


def test_missing_event_name_skips_the_standard_checks() -> None:
    item = process({"status": "lost", "context": {"event_id": "x", "event_timestamp": TS}})
    assert item.warnings == []
    assert len(item.errors) == 1


def test_v1_event_is_normalized_and_checked() -> None:
    v1 = {
        "event_name": "add_to_cart",
        "event_id": "e-1",
        "event_timestamp": TS,
        "properties": {"value": 20, "currency": "EUR", "user": {"id": "7"}},
        "page": {"location": "https://x/p"},
    }
    item = process(v1)
    # add_to_cart without items, user without consent categories nor consistent_anonymous_id
    assert item.status is EventStatus.INVALID_ACCEPTED
    assert item.event_id == "e-1"
    assert item.dedupable is True
    assert item.event is not None
    assert item.event["context"]["page"] == {"url": "https://x/p"}
    assert len(item.warnings) == 3
    assert any("'items'" in w for w in item.warnings)
    assert any("consent_categories" in w for w in item.warnings)
    assert any("user.consistent_anonymous_id" in w for w in item.warnings)


@pytest.mark.parametrize(
    "field", [{"status": ["pending"]}, {"payment_method": {"kind": "card"}}, {"payment_method": ["card"]}], ids=repr
)
def test_unhashable_enumerated_value_is_a_warning_not_a_crash(field: dict[str, Any]) -> None:
    item = process({**PURCHASE, **field})
    assert item.status is EventStatus.INVALID_ACCEPTED
    assert len(item.warnings) == 1


# --- decode_and_normalize -------------------------------------------------------------------------------


def ingest_payload() -> bytes:
    return encode_batch(
        IngestBatch(
            [
                IngestRecord("shop-web", "29", RECEIVED, [raw(PURCHASE), raw(login(None)), raw(login(None))]),
                IngestRecord("app", "29", RECEIVED + 5, [raw(login("a-1")), b"{oops"]),
                IngestRecord("ghost", "31", RECEIVED + 9, [raw(login(None))]),
            ]
        )
    )


SOURCES = {"shop-web": ACCEPT, "app": REJECT}


def test_decode_and_normalize_gives_one_processed_event_per_event() -> None:
    events = decode_and_normalize(ingest_payload(), "job-1", SOURCES)
    assert [(e.source_id, e.received_at) for e in events] == [
        ("shop-web", RECEIVED),
        ("shop-web", RECEIVED),
        ("shop-web", RECEIVED),
        ("app", RECEIVED + 5),
        ("app", RECEIVED + 5),
        ("ghost", RECEIVED + 9),
    ]
    assert [e.status for e in events] == [
        EventStatus.VALID,
        EventStatus.INVALID_ACCEPTED,  # generated id: a warning
        EventStatus.INVALID_ACCEPTED,
        EventStatus.VALID,
        EventStatus.INVALID_REJECTED,  # not JSON
        EventStatus.INVALID_ACCEPTED,  # unknown source: accepts with warnings
    ]
    assert events[0].event_id == "c0ffee-1"
    assert events[3].event_id == "a-1"
    assert [e.dedupable for e in events] == [True, False, False, True, False, False]
    for e in events:
        if e.event is not None:
            assert e.event["context"]["source_id"] == e.source_id
            assert e.event["context"]["received_at"] == e.received_at


def test_generated_ids_are_deterministic_per_job() -> None:
    first = decode_and_normalize(ingest_payload(), "job-1", SOURCES)
    again = decode_and_normalize(ingest_payload(), "job-1", SOURCES)
    other_job = decode_and_normalize(ingest_payload(), "job-2", SOURCES)
    generated = [1, 2, 5]
    ids = [first[i].event_id for i in generated]
    for event_id in ids:
        assert event_id is not None
        uuid.UUID(event_id)
    assert len(set(ids)) == 3, "each event of a job gets its own id"
    assert [again[i].event_id for i in generated] == ids
    assert all(other_job[i].event_id not in ids for i in generated)
    # ids the producer sent do not depend on the job
    assert [first[i].event_id for i in (0, 3)] == [other_job[i].event_id for i in (0, 3)]


def test_decode_and_normalize_rejects_a_corrupt_payload() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_and_normalize(b"\x00not msgpack", "job-1", SOURCES)


def test_decode_and_normalize_empty_batch() -> None:
    assert decode_and_normalize(encode_batch(IngestBatch([])), "job-1", SOURCES) == []


# --- plan_fan_out -------------------------------------------------------------------------------------------


def fan_out_events() -> list[ProcessedEvent]:
    duplicate = process(PURCHASE)
    duplicate.status = EventStatus.DUPLICATE
    return [
        process(PURCHASE),  # 0 VALID purchase, shop-web: crm-hook and lake.eu
        process({"event_name": "sign_up", "user": {"id": "8", "consent_categories": ["1"]}}),  # 1 INVALID_ACCEPTED
        process(login("l-2"), REJECT),  # 2 VALID login from app: event and source filtered
        duplicate,  # 3 DUPLICATE: delivered nowhere
        process({"user": USER}),  # 4 INVALID_REJECTED: no event_name
        process({**PURCHASE, "status": "lost"}, REJECT),  # 5 INVALID_REJECTED by on_invalid
        process(b"{oops"),  # 6 INVALID_REJECTED, not JSON
        process({"event_name": "sign_up", "user": {"id": "9", "consent_categories": [3]}, "context": {"event_id": 9}}),
    ]


def test_fan_out_routes_valid_and_accepted_events_only(config: Config) -> None:
    events = fan_out_events()
    assert [e.status for e in events] == [
        EventStatus.VALID,
        EventStatus.INVALID_ACCEPTED,
        EventStatus.VALID,
        EventStatus.DUPLICATE,
        EventStatus.INVALID_REJECTED,
        EventStatus.INVALID_REJECTED,
        EventStatus.INVALID_REJECTED,
        EventStatus.INVALID_ACCEPTED,
    ]
    plan = plan_fan_out(events, config)
    queued = {d: [(e.event_id, e.event_name) for e in evs] for d, evs in plan.deliveries.items()}
    assert queued == {
        "crm-hook": [("c0ffee-1", "purchase"), ("9", "sign_up")],
        "lake.eu": [("c0ffee-1", "purchase"), (events[1].event_id, "sign_up"), ("9", "sign_up")],
    }
    assert plan.destinations_of == [
        {"crm-hook": "queued", "lake.eu": "queued"},
        {"crm-hook": "FILTERED", "lake.eu": "queued"},  # consent 3 missing
        {"crm-hook": "FILTERED", "lake.eu": "FILTERED"},  # login; source app
        {},
        {},
        {},
        {},
        {"crm-hook": "queued", "lake.eu": "queued"},
    ]
    assert plan.filtered == {"crm-hook": 2, "lake.eu": 1}


def test_fan_out_encodes_each_body_once_as_the_normalized_event(config: Config) -> None:
    events = fan_out_events()
    plan = plan_fan_out(events, config)
    crm, lake = plan.deliveries["crm-hook"], plan.deliveries["lake.eu"]
    assert crm[0].body is lake[0].body
    assert crm[1].body is lake[2].body
    by_id = {e.event_id: e.event for e in events if e.status in (EventStatus.VALID, EventStatus.INVALID_ACCEPTED)}
    for delivery in (*crm, *lake):
        assert msgspec.json.decode(delivery.body) == by_id[delivery.event_id]
        assert delivery.attempts == 0
        assert delivery.last_error is None
    body = msgspec.json.decode(crm[0].body)
    assert body["context"]["source_id"] == "shop-web"
    assert body["context"]["received_at"] == RECEIVED
    assert body["context"]["device"] == {"ip": "198.51.100.4"}  # destinations get the real IP


def test_fan_out_without_destinations(config: Config) -> None:
    bare = msgspec.structs.replace(config, destinations=[])
    plan = plan_fan_out(fan_out_events(), bare)
    assert plan.deliveries == {}
    assert plan.filtered == {}
    assert plan.destinations_of == [{}] * 8


def test_fan_out_of_nothing(config: Config) -> None:
    plan = plan_fan_out([], config)
    assert (plan.deliveries, plan.destinations_of, plan.filtered) == ({}, [], {})


# --- delivery_job_id ----------------------------------------------------------------------------------------

RQ_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")


# Fixed ids (collection must give the same test ids in every process).
@pytest.mark.parametrize("job_id", [str(uuid.UUID(int=7)), uuid.UUID(int=11).hex, "ingest-1", "a_b"])
@pytest.mark.parametrize("destination_id", ["crm-hook", "lake.eu", "lake_eu", "a", "x" * 64, "A.B-c_d.9"])
def test_delivery_job_id_is_a_valid_rq_job_id(job_id: str, destination_id: str) -> None:
    job = delivery_job_id(job_id, destination_id)
    assert RQ_JOB_ID.fullmatch(job)
    assert job.startswith(job_id)


def test_delivery_job_id_is_deterministic_and_differs_per_destination() -> None:
    destinations = ["crm-hook", "lake.eu", "lake_eu", "lake-eu", "lakeeu", "Lake.eu"]
    first = [delivery_job_id("job-1", d) for d in destinations]
    assert first == [delivery_job_id("job-1", d) for d in destinations]
    assert len(set(first)) == len(destinations)
    assert delivery_job_id("job-1", "crm-hook") != delivery_job_id("job-2", "crm-hook")
