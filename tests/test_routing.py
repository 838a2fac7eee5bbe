"""workers.routing.accepts and why_filtered (docs/CONTRACT.md §6 filters), the fan-out's filtered counts,
and the inspector's pure helpers (docs/CONTRACT.md §9)."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest

from destinations.file import FileDestination
from destinations.webhook import WebhookDestination
from trackpipe.config import Config
from trackpipe.types import Filters
from workers import filters as filters_module
from workers import inspector
from workers.ingest import ProcessedEvent, plan_fan_out
from workers.inspector import always_kept, mask_ip, masked_payload
from workers.routing import accepts, consent_categories, why_filtered
from workers.status import EventStatus


def event(name: str = "purchase", categories: Any = ("1", "3")) -> dict[str, Any]:
    user: dict[str, Any] = {"id": "7"}
    if categories is not None:
        user["consent_categories"] = list(categories) if isinstance(categories, tuple) else categories
    return {"event_name": name, "user": user, "context": {"event_id": "e-1"}}


def conditions(*items: dict[str, Any], match: str = "all") -> Filters:
    return msgspec.convert({"match": match, "conditions": list(items)}, Filters)


BIG = {"path": "value", "op": "greater_than", "value": 100}
SMALL = {"path": "value", "op": "less_than", "value": 100}
ACME = {"path": "items[].product.brand", "op": "equals", "value": "Acme"}


def priced(value: Any, brand: str = "Acme", name: str = "purchase", categories: Any = ("1", "3")) -> dict[str, Any]:
    return {**event(name, categories), "value": value, "items": [{"product": {"brand": brand}}]}


def webhook(**filters: Any) -> WebhookDestination:
    return WebhookDestination(id="crm-hook", url="http://127.0.0.1:9000/hook", **filters)


def lake(**filters: Any) -> FileDestination:
    return FileDestination(id="lake", path="/tmp/lake", **filters)


ACCEPTS = [
    # no filters: everything passes
    pytest.param({}, "shop-web", event(), True, id="no-filters"),
    pytest.param({}, "any-source", event("custom", categories=None), True, id="no-filters-no-consent"),
    # sources
    pytest.param({"sources": ["shop-web"]}, "shop-web", event(), True, id="source-listed"),
    pytest.param({"sources": ["shop-web", "app"]}, "app", event(), True, id="source-listed-second"),
    pytest.param({"sources": ["shop-web"]}, "app", event(), False, id="source-not-listed"),
    pytest.param({"sources": []}, "shop-web", event(), False, id="sources-empty-list"),
    pytest.param({"sources": ["shop-web"]}, "shop-web.eu", event(), False, id="source-prefix-is-not-a-match"),
    # events
    pytest.param({"events": ["purchase", "sign_up"]}, "shop-web", event("purchase"), True, id="event-listed"),
    pytest.param({"events": ["purchase", "sign_up"]}, "shop-web", event("login"), False, id="event-not-listed"),
    pytest.param({"events": ["purchase"]}, "shop-web", event("Purchase"), False, id="event-case-sensitive"),
    pytest.param({"events": ["purchase"]}, "shop-web", {"user": {}}, False, id="event-name-absent"),
    pytest.param({"events": []}, "shop-web", event(), False, id="events-empty-list"),
    # consent
    pytest.param({"consent_category": "3"}, "shop-web", event(categories=("1", "3")), True, id="consent-present"),
    pytest.param({"consent_category": "3"}, "shop-web", event(categories=("1",)), False, id="consent-absent"),
    pytest.param({"consent_category": "3"}, "shop-web", event(categories=()), False, id="consent-empty-list"),
    pytest.param({"consent_category": "3"}, "shop-web", event(categories=None), False, id="consent-key-missing"),
    pytest.param({"consent_category": "3"}, "shop-web", event(categories="3"), False, id="consent-not-a-list"),
    pytest.param({"consent_category": "3"}, "shop-web", event(categories={"3": True}), False, id="consent-object"),
    pytest.param({"consent_category": "3"}, "shop-web", event(categories=("13",)), False, id="consent-no-substring"),
    pytest.param({"consent_category": "3"}, "shop-web", {"event_name": "x", "user": "7"}, False, id="user-not-object"),
    pytest.param({"consent_category": "3"}, "shop-web", {"event_name": "x"}, False, id="no-user"),
    # all together: every filter must pass
    pytest.param(
        {"sources": ["shop-web"], "events": ["purchase"], "consent_category": "3"},
        "shop-web",
        event("purchase", ("3",)),
        True,
        id="all-pass",
    ),
    pytest.param(
        {"sources": ["shop-web"], "events": ["purchase"], "consent_category": "3"},
        "app",
        event("purchase", ("3",)),
        False,
        id="all-but-source",
    ),
    pytest.param(
        {"sources": ["shop-web"], "events": ["purchase"], "consent_category": "3"},
        "shop-web",
        event("sign_up", ("3",)),
        False,
        id="all-but-event",
    ),
    pytest.param(
        {"sources": ["shop-web"], "events": ["purchase"], "consent_category": "3"},
        "shop-web",
        event("purchase", ("1",)),
        False,
        id="all-but-consent",
    ),
    # filters on any property, after the others
    pytest.param({"filters": conditions(BIG)}, "shop-web", priced(150), True, id="filters-pass"),
    pytest.param({"filters": conditions(BIG)}, "shop-web", priced(50), False, id="filters-fail"),
    pytest.param({"filters": conditions(BIG)}, "shop-web", event(), False, id="filters-missing-property"),
    pytest.param({"filters": conditions(BIG, ACME)}, "shop-web", priced(150, "Zed"), False, id="filters-all"),
    pytest.param(
        {"filters": conditions(BIG, ACME, match="any")}, "shop-web", priced(50, "Acme"), True, id="filters-any"
    ),
    pytest.param(
        {"filters": conditions(BIG), "sources": ["shop-web"]}, "app", priced(150), False, id="filters-pass-source-not"
    ),
    pytest.param(
        {"filters": conditions(BIG), "events": ["purchase"]},
        "shop-web",
        priced(150, name="refund"),
        False,
        id="filters-pass-event-not",
    ),
    pytest.param(
        {"filters": conditions(BIG), "consent_category": "3"},
        "shop-web",
        priced(150, categories=("1",)),
        False,
        id="filters-pass-consent-not",
    ),
    pytest.param(
        {"filters": conditions(BIG), "sources": ["shop-web"], "events": ["purchase"], "consent_category": "3"},
        "shop-web",
        priced(150),
        True,
        id="filters-and-all-others-pass",
    ),
]


@pytest.mark.parametrize(("filters", "source_id", "evt", "expected"), ACCEPTS)
@pytest.mark.parametrize("make", [webhook, lake], ids=["webhook", "file"])
def test_accepts(make: Any, filters: dict[str, Any], source_id: str, evt: dict[str, Any], expected: bool) -> None:
    assert accepts(make(**filters), source_id, evt) is expected


WHY = [
    pytest.param({}, "shop-web", event(), None, id="accepted"),
    pytest.param(
        {"sources": ["shop-web"]}, "app", event(), "source 'app' is not in the destination's sources", id="source"
    ),
    pytest.param(
        {"events": ["purchase"]},
        "shop-web",
        event("login"),
        "the event name is not in the destination's events",
        id="event",
    ),
    pytest.param(
        {"consent_category": "3"},
        "shop-web",
        event(categories=("1",)),
        "consent category '3' not given (user.consent_categories)",
        id="consent",
    ),
    pytest.param(
        {"filters": conditions(BIG, ACME)},
        "shop-web",
        priced(150, "Zed"),
        'filters: conditions[1] (items[].product.brand equals "Acme") not met',
        id="filters-all",
    ),
    pytest.param(
        {"filters": conditions(BIG, ACME, match="any")},
        "shop-web",
        priced(50, "Zed"),
        "filters: none of its 2 conditions met (match = any)",
        id="filters-any",
    ),
    pytest.param({"filters": conditions(BIG)}, "shop-web", priced(150), None, id="filters-pass"),
]


@pytest.mark.parametrize(("filters", "source_id", "evt", "expected"), WHY)
def test_why_filtered_agrees_with_accepts(
    filters: dict[str, Any], source_id: str, evt: dict[str, Any], expected: str | None
) -> None:
    destination = webhook(**filters)
    assert why_filtered(destination, source_id, evt) == expected
    assert accepts(destination, source_id, evt) is (expected is None)


@pytest.mark.parametrize(("filters", "source_id", "evt", "expected"), ACCEPTS)
def test_why_filtered_has_a_reason_for_every_refusal(
    filters: dict[str, Any], source_id: str, evt: dict[str, Any], expected: bool
) -> None:
    assert (why_filtered(webhook(**filters), source_id, evt) is None) is expected


def test_destinations_without_filters_never_reach_the_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> bool:
        raise AssertionError("filters evaluated for a destination without filters")

    monkeypatch.setattr(filters_module, "passes", refuse)
    assert accepts(webhook(), "shop-web", priced(5)) is True
    assert accepts(webhook(events=["purchase"]), "shop-web", priced(5)) is True


def test_filters_are_not_evaluated_for_an_event_the_cheaper_checks_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = filters_module.passes
    monkeypatch.setattr(filters_module, "passes", lambda f, e: calls.append(e) or real(f, e))
    destination = webhook(events=["purchase"], filters=conditions(BIG))
    assert accepts(destination, "shop-web", priced(500, name="login")) is False
    assert calls == []
    assert accepts(destination, "shop-web", priced(500)) is True
    assert len(calls) == 1


def test_fan_out_counts_filtered_events_per_destination() -> None:
    config = Config(
        destinations=[
            webhook(filters=conditions(BIG)),
            lake(filters=conditions(SMALL, ACME)),
            FileDestination(id="all", path="/tmp/all"),
        ]
    )
    values = [150, 50, 20, "500", None]
    events = [
        ProcessedEvent(
            "shop-web", 1, EventStatus.VALID, {**priced(v), "context": {"event_id": f"e{i}"}}, [], [], b"", f"e{i}"
        )
        for i, v in enumerate(values)
    ]
    events[2].event["items"][0]["product"]["brand"] = "Zed"  # type: ignore[index]
    plan = plan_fan_out(events, config)
    assert [e.event_id for e in plan.deliveries["crm-hook"]] == ["e0", "e3"]  # "500" holds a number
    assert [e.event_id for e in plan.deliveries["lake"]] == ["e1"]
    assert [e.event_id for e in plan.deliveries["all"]] == ["e0", "e1", "e2", "e3", "e4"]
    assert plan.filtered == {"crm-hook": 3, "lake": 4}
    assert [routes["crm-hook"] for routes in plan.destinations_of] == [
        "queued",
        "FILTERED",
        "FILTERED",
        "queued",
        "FILTERED",
    ]
    assert [routes["lake"] for routes in plan.destinations_of] == [
        "FILTERED",
        "queued",
        "FILTERED",
        "FILTERED",
        "FILTERED",
    ]


@pytest.mark.parametrize(
    ("evt", "expected"),
    [
        (event(categories=("1", "3")), ["1", "3"]),
        (event(categories=()), []),
        (event(categories=None), []),
        (event(categories="1,3"), []),
        ({"user": None}, []),
        ({}, []),
    ],
)
def test_consent_categories(evt: dict[str, Any], expected: list[str]) -> None:
    assert consent_categories(evt) == expected


# --- inspector ------------------------------------------------------------------------------------------

MASK = [
    pytest.param("198.51.100.4", "198.51.100.0", id="ipv4"),
    pytest.param("198.51.100.255", "198.51.100.0", id="ipv4-255"),
    pytest.param("10.0.0.0", "10.0.0.0", id="ipv4-already-zero"),
    pytest.param(" 198.51.100.4 ", "198.51.100.0", id="ipv4-padded"),
    pytest.param("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::", id="ipv6"),
    pytest.param("2001:DB8:ABCD:0012::1", "2001:db8:abcd::", id="ipv6-upper"),
    pytest.param("::1", "::", id="ipv6-loopback"),
    pytest.param("fe80::1%eth0", "fe80::", id="ipv6-scoped"),
    pytest.param("::ffff:198.51.100.4", "::", id="ipv4-mapped"),
]


@pytest.mark.parametrize(("value", "expected"), MASK)
def test_mask_ip(value: str, expected: str) -> None:
    assert mask_ip(value) == expected


@pytest.mark.parametrize(
    "value", ["", "not an ip", "198.51.100", "198.51.100.4.5", "198.51.100.256", "198.51.100.4/24", "1.2.3.4:80"]
)
def test_mask_ip_junk_strings_are_masked_entirely(value: str) -> None:
    assert mask_ip(value) == "masked"


def test_mask_ip_null_stays_null() -> None:
    assert mask_ip(None) is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(3325256708, id="ipv4-as-integer"),  # 198.51.100.4
        pytest.param(["198.51.100.4"], id="list"),
        pytest.param({"v4": "198.51.100.4"}, id="object"),
    ],
)
def test_mask_ip_non_strings_do_not_leak_the_address(value: Any) -> None:
    masked = mask_ip(value)
    assert masked != value
    assert "198.51.100.4" not in json.dumps(masked)
    assert "3325256708" not in json.dumps(masked)


PAYLOADS = [
    pytest.param(
        {"event_name": "x", "context": {"event_id": "e", "device": {"ip": "198.51.100.4", "user_agent": "UA"}}},
        {"event_name": "x", "context": {"event_id": "e", "device": {"ip": "198.51.100.0", "user_agent": "UA"}}},
        id="ipv4",
    ),
    pytest.param(
        {"event_name": "x", "context": {"device": {"ip": "2001:db8:abcd:12::1"}}},
        {"event_name": "x", "context": {"device": {"ip": "2001:db8:abcd::"}}},
        id="ipv6",
    ),
    pytest.param(
        {"event_name": "x", "context": {"device": {"ip": "junk"}}},
        {"event_name": "x", "context": {"device": {"ip": "masked"}}},
        id="junk",
    ),
    pytest.param(
        {"event_name": "x", "context": {"device": {"user_agent": "UA"}}},
        {"event_name": "x", "context": {"device": {"user_agent": "UA"}}},
        id="no-ip",
    ),
    pytest.param({"event_name": "x", "context": "odd"}, {"event_name": "x", "context": "odd"}, id="context-not-object"),
    pytest.param({"event_name": "x"}, {"event_name": "x"}, id="no-context"),
]


@pytest.mark.parametrize(("payload", "expected"), PAYLOADS)
def test_masked_payload(payload: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    assert masked_payload(payload) == expected
    assert payload == before


TEST_CODES = [
    pytest.param({"test_code": "T-1", "context": {}}, "T-1", id="root"),
    pytest.param({"context": {"test_code": "T-2"}}, "T-2", id="context"),
    pytest.param({"test_code": "root", "context": {"test_code": "ctx"}}, "root", id="root-first"),
    pytest.param({"test_code": "", "context": {"test_code": "ctx"}}, "ctx", id="empty-root-falls-back"),
    pytest.param({"test_code": None, "context": {"test_code": None}}, None, id="nulls"),
    pytest.param({"test_code": 42}, "42", id="number"),
    pytest.param({"context": "T-3"}, None, id="context-not-object"),
    pytest.param({"event_name": "x"}, None, id="none"),
]


@pytest.mark.parametrize(("evt", "expected"), TEST_CODES)
def test_test_code_of(evt: dict[str, Any], expected: str | None) -> None:
    assert inspector.test_code_of(evt) == expected


# Test events are no longer "always kept": they go to a list of their own, capped per minute
# (tests/test_inspector_sampling.py).
ALWAYS_KEPT = [
    (EventStatus.INVALID_REJECTED, True),
    ("INVALID_REJECTED", True),
    (EventStatus.VALID, False),
    (EventStatus.INVALID_ACCEPTED, False),
    (EventStatus.DUPLICATE, False),
]


@pytest.mark.parametrize(("status", "expected"), ALWAYS_KEPT)
def test_always_kept(status: str, expected: bool) -> None:
    assert always_kept(status) is expected
