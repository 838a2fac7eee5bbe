"""workers.normalize.normalize: docs/CONTRACT.md §3 rules 1-8, one table per rule, plus the contract's examples."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from workers.normalize import Normalized, fill_client, normalize

RECEIVED = 1_700_000_500_000  # the edge's receive time, ms
SOURCE = "shop-web"
SEED = "job-1:0:0"
TS = 1_700_000_000_000


def norm(raw: Any, *, received_at: int = RECEIVED, source_id: str = SOURCE, id_seed: str = SEED) -> Normalized:
    return normalize(raw, received_at=received_at, source_id=source_id, id_seed=id_seed)


def out(root: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The expected normalized event: root keys plus context, with what trackpipe adds (rule 7)."""
    return {**root, "context": {**context, "received_at": RECEIVED, "source_id": SOURCE}}


# --- the contract's own examples ------------------------------------------------------------------

CONTRACT_V1 = {
    "event_name": "add_to_cart",
    "event_id": "e-1",
    "event_timestamp": 1700000000000,
    "properties": {"value": 20, "currency": "EUR", "user": {"id": "7"}},
    "page": {"location": "https://x/p"},
    "device": {"ip": "198.51.100.4"},
}
CONTRACT_V1_NORMALIZED = {
    "event_name": "add_to_cart",
    "value": 20,
    "currency": "EUR",
    "user": {"id": "7"},
    "context": {
        "event_id": "e-1",
        "event_timestamp": 1700000000000,
        "page": {"url": "https://x/p"},
        "device": {"ip": "198.51.100.4"},
        "received_at": RECEIVED,
        "source_id": SOURCE,
    },
}

CONTRACT_V2 = {
    "event_name": "purchase",
    "id": "O-1",
    "value": 42.5,
    "revenue": 35,
    "currency": "EUR",
    "type": "online",
    "payment_method": "card",
    "status": "pending",
    "user": {"id": "7", "consent_categories": ["1", "3"]},
    "items": [{"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "price": 35}}],
    "context": {
        "event_id": "c0ffee-1",
        "event_timestamp": 1700000000000,
        "page": {"url": "https://x/ok"},
        "device": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0"},
    },
}
CONTRACT_V2_NORMALIZED = {
    **CONTRACT_V2,
    "context": {**CONTRACT_V2["context"], "received_at": RECEIVED, "source_id": SOURCE},
}


def test_contract_v1_example() -> None:
    result = norm(CONTRACT_V1)
    assert result.event == CONTRACT_V1_NORMALIZED
    assert result.version == 1
    assert result.warnings == []
    assert result.errors == []
    assert result.generated_id is False


def test_contract_v2_example_is_delivered_as_received_plus_received_at_and_source_id() -> None:
    result = norm(CONTRACT_V2)
    assert result.event == CONTRACT_V2_NORMALIZED
    assert result.version == 2
    assert result.warnings == []
    assert result.errors == []
    assert result.generated_id is False


# The quirks real clients send: a timestamp as a string, consent categories as integers, and
# event_id/event_timestamp beside `context` instead of inside it. All are fixed silently.
QUIRKS = [
    pytest.param(
        {
            "event_name": "login",
            "user": {"id": "7"},
            "context": {"event_id": "q-1", "event_timestamp": "1700000000000"},
        },
        out({"event_name": "login", "user": {"id": "7"}}, {"event_id": "q-1", "event_timestamp": TS}),
        id="timestamp-as-string",
    ),
    pytest.param(
        {
            "event_name": "login",
            "user": {"id": "7", "consent_categories": [1, 3]},
            "context": {"event_id": "q-2", "event_timestamp": TS},
        },
        out(
            {"event_name": "login", "user": {"id": "7", "consent_categories": ["1", "3"]}},
            {"event_id": "q-2", "event_timestamp": TS},
        ),
        id="consent-as-integers",
    ),
    pytest.param(
        {"event_name": "login", "event_id": "q-3", "event_timestamp": TS, "context": {"page": {"url": "https://x/"}}},
        out({"event_name": "login"}, {"page": {"url": "https://x/"}, "event_id": "q-3", "event_timestamp": TS}),
        id="metadata-beside-context",
    ),
    pytest.param(
        {
            "event_name": "login",
            "event_timestamp": "2023-11-14T22:13:20Z",
            "user": {"consent_categories": [3]},
            "context": {"event_id": "q-4"},
        },
        out({"event_name": "login", "user": {"consent_categories": ["3"]}}, {"event_id": "q-4", "event_timestamp": TS}),
        id="all-three-at-once",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), QUIRKS)
def test_documented_quirks_are_normalized_without_warnings(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    result = norm(raw)
    assert result.event == expected
    assert result.warnings == []
    assert result.errors == []
    assert result.version == 2


# --- rule 1: v1 detection -------------------------------------------------------------------------

RULE1 = [
    pytest.param(
        {"event_name": "login", "event_id": "e-1", "event_timestamp": TS, "properties": {"user": {"id": "7"}, "m": 1}},
        out({"event_name": "login", "user": {"id": "7"}, "m": 1}, {"event_id": "e-1", "event_timestamp": TS}),
        id="properties-to-root",
    ),
    pytest.param(
        {
            "event_name": "x",
            "event_id": "e-2",
            "event_timestamp": TS,
            "page": {"url": "https://x/a", "title": "A"},
            "device": {"ip": "198.51.100.4"},
            "app": {"name": "shop", "version": "1.2"},
            "properties": {},
        },
        out(
            {"event_name": "x"},
            {
                "event_id": "e-2",
                "event_timestamp": TS,
                "page": {"url": "https://x/a", "title": "A"},
                "device": {"ip": "198.51.100.4"},
                "app": {"name": "shop", "version": "1.2"},
            },
        ),
        id="metadata-into-context",
    ),
    pytest.param(
        {"properties": {"event_name": "login", "user": {"id": "7"}}, "event_id": "e-3", "event_timestamp": TS},
        out({"event_name": "login", "user": {"id": "7"}}, {"event_id": "e-3", "event_timestamp": TS}),
        id="event-name-inside-properties",
    ),
    pytest.param(
        {"event_name": "x", "event_id": "e-4", "event_timestamp": TS, "context": {"test_code": "t"}, "properties": {}},
        out({"event_name": "x"}, {"test_code": "t", "event_id": "e-4", "event_timestamp": TS}),
        id="existing-context-kept",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), RULE1)
def test_rule1_v1_event_is_reshaped(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    result = norm(raw)
    assert result.version == 1
    assert result.event == expected
    assert "properties" not in result.event
    assert result.warnings == []
    assert result.errors == []


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"event_name": "x", "properties": "a string"}, id="properties-string"),
        pytest.param({"event_name": "x", "properties": [1, 2]}, id="properties-list"),
        pytest.param({"event_name": "x", "properties": None}, id="properties-null"),
        pytest.param({"event_name": "x", "page": {"url": "https://x/"}}, id="no-properties"),
    ],
)
def test_rule1_only_a_properties_object_makes_v1(raw: dict[str, Any]) -> None:
    result = norm({**raw, "context": {"event_id": "e", "event_timestamp": TS}})
    assert result.version == 2
    # A v2 event keeps its root data where it is: nothing but event_id/event_timestamp moves.
    for key, value in raw.items():
        assert result.event[key] == value
    assert "page" not in result.event["context"]


@pytest.mark.parametrize(
    ("root_value", "property_value"),
    [
        pytest.param(10, 20, id="number"),
        pytest.param("USD", "EUR", id="string"),
        pytest.param({"id": "1"}, {"id": "2"}, id="object"),
        pytest.param(None, 0, id="null-root"),
    ],
)
def test_rule1_clash_properties_value_wins_with_a_warning(root_value: Any, property_value: Any) -> None:
    raw = {
        "event_name": "x",
        "event_id": "e",
        "event_timestamp": TS,
        "clashing": root_value,
        "properties": {"clashing": property_value},
    }
    result = norm(raw)
    assert result.event["clashing"] == property_value
    assert len(result.warnings) == 1
    assert "clashing" in result.warnings[0]
    assert result.errors == []


# --- rule 2: v2 root metadata into context ----------------------------------------------------------

RULE2 = [
    pytest.param(
        {"event_name": "x", "event_id": "r-1", "event_timestamp": TS},
        {"event_id": "r-1", "event_timestamp": TS},
        id="no-context-both-moved",
    ),
    pytest.param(
        {"event_name": "x", "event_id": "r-2", "context": {"event_timestamp": TS + 1}},
        {"event_id": "r-2", "event_timestamp": TS + 1},
        id="event-id-moved",
    ),
    pytest.param(
        {"event_name": "x", "event_timestamp": TS + 2, "context": {"event_id": "c-3"}},
        {"event_id": "c-3", "event_timestamp": TS + 2},
        id="timestamp-moved",
    ),
    pytest.param(
        {
            "event_name": "x",
            "event_id": "root",
            "event_timestamp": 1,
            "context": {"event_id": "ctx", "event_timestamp": TS},
        },
        {"event_id": "ctx", "event_timestamp": TS},
        id="context-wins",
    ),
    pytest.param(
        {"event_name": "x", "event_id": "root", "context": {"event_id": "ctx", "event_timestamp": TS}},
        {"event_id": "ctx", "event_timestamp": TS},
        id="context-id-wins",
    ),
]


@pytest.mark.parametrize(("raw", "expected_context"), RULE2)
def test_rule2_v2_root_metadata_moves_into_context_when_context_lacks_it(
    raw: dict[str, Any], expected_context: dict[str, Any]
) -> None:
    result = norm(raw)
    assert result.version == 2
    context = result.event["context"]
    assert {k: context[k] for k in ("event_id", "event_timestamp")} == expected_context
    for key in ("event_id", "event_timestamp"):
        if key in raw and key not in raw.get("context", {}):
            assert key not in result.event, f"{key} should have left the root"
    assert result.warnings == []


def test_rule2_v2_root_page_device_app_stay_at_the_root() -> None:
    raw = {"event_name": "x", "page": {"location": "u"}, "device": {"ip": "1"}, "app": {"n": 1}, "event_id": "e"}
    result = norm({**raw, "context": {"event_timestamp": TS}})
    assert result.event["page"] == {"location": "u"}
    assert result.event["device"] == {"ip": "1"}
    assert result.event["app"] == {"n": 1}
    assert set(result.event["context"]) == {"event_id", "event_timestamp", "received_at", "source_id"}


def test_rule2_context_not_an_object_is_replaced_with_a_warning() -> None:
    result = norm({"event_name": "x", "event_id": "e", "event_timestamp": TS, "context": "nope"})
    assert result.event["context"] == {
        "event_id": "e",
        "event_timestamp": TS,
        "received_at": RECEIVED,
        "source_id": SOURCE,
    }
    assert len(result.warnings) == 1
    assert "context" in result.warnings[0]


# --- rule 3: page.location -> context.page.url --------------------------------------------------------

RULE3 = [
    pytest.param({"location": "https://x/a"}, {"url": "https://x/a"}, id="location-becomes-url"),
    pytest.param({"location": "https://x/a", "title": "T"}, {"url": "https://x/a", "title": "T"}, id="other-keys-kept"),
    pytest.param({"location": "https://x/old", "url": "https://x/new"}, None, id="url-present-untouched"),
    pytest.param({"url": "https://x/new"}, None, id="url-only"),
    pytest.param({"url": None, "location": "https://x/a"}, None, id="url-present-even-null"),
    pytest.param("https://x/a", None, id="page-not-an-object"),
]


@pytest.mark.parametrize(("page", "expected"), RULE3)
def test_rule3_page_location_becomes_url_only_when_url_absent(page: Any, expected: Any) -> None:
    raw = {"event_name": "x", "context": {"event_id": "e", "event_timestamp": TS, "page": page}}
    result = norm(raw)
    assert result.event["context"]["page"] == (page if expected is None else expected)


def test_rule3_applies_to_a_v1_root_page() -> None:
    raw = {"event_name": "x", "event_id": "e", "event_timestamp": TS, "page": {"location": "u"}, "properties": {}}
    assert norm(raw).event["context"]["page"] == {"url": "u"}


# --- rule 4: event_timestamp as integer milliseconds ---------------------------------------------------

MISSING = object()

RULE4_PARSED = [
    pytest.param(1_700_000_000_000, TS, id="int-ms"),
    pytest.param(1_700_000_000_000.0, TS, id="float-ms"),
    pytest.param(1_700_000_000_123.9, TS + 123, id="float-ms-fraction-dropped"),
    pytest.param(1_700_000_000, TS, id="int-seconds"),
    pytest.param(1_700_000_000.5, TS + 500, id="float-seconds"),
    pytest.param(99_999_999_999, 99_999_999_999_000, id="just-below-threshold-is-seconds"),
    pytest.param(100_000_000_000, 100_000_000_000, id="threshold-is-ms"),
    pytest.param(0, 0, id="epoch"),
    pytest.param("1700000000000", TS, id="numeric-string-ms"),
    pytest.param(" 1700000000000 ", TS, id="numeric-string-padded"),
    pytest.param("1700000000", TS, id="numeric-string-seconds"),
    pytest.param("1700000000.25", TS + 250, id="numeric-string-fraction"),
    pytest.param("2023-11-14T22:13:20Z", TS, id="iso-z"),
    pytest.param("2023-11-14T22:13:20.123Z", TS + 123, id="iso-z-millis"),
    pytest.param("2023-11-14T23:13:20+01:00", TS, id="iso-offset"),
    pytest.param("2023-11-14T17:13:20-05:00", TS, id="iso-negative-offset"),
    pytest.param("2023-11-14T22:13:20", TS, id="iso-naive-is-utc"),
    pytest.param("2023-11-14 22:13:20Z", TS, id="iso-space-separator"),
]


@pytest.mark.parametrize(("value", "expected"), RULE4_PARSED)
def test_rule4_timestamp_parsed_to_integer_ms(value: Any, expected: int) -> None:
    result = norm({"event_name": "x", "context": {"event_id": "e", "event_timestamp": value}})
    stamp = result.event["context"]["event_timestamp"]
    assert stamp == expected
    assert type(stamp) is int
    assert result.warnings == []


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker's local time zone set far from UTC (restored afterwards)."""
    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("value", ["2023-11-14T22:13:20", "2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00"])
def test_rule4_iso_timestamp_does_not_depend_on_the_worker_time_zone(far_timezone: None, value: str) -> None:
    result = norm({"event_name": "x", "context": {"event_id": "e", "event_timestamp": value}})
    assert result.event["context"]["event_timestamp"] == TS


RULE4_RECEIVE_TIME = [
    pytest.param(MISSING, id="missing"),
    pytest.param(None, id="null"),
    pytest.param("", id="empty-string"),
    pytest.param("yesterday", id="words"),
    pytest.param("2023-13-45T00:00:00Z", id="impossible-date"),
    pytest.param("12:30", id="time-only"),
    pytest.param(True, id="bool-true"),
    pytest.param(False, id="bool-false"),
    pytest.param(-5, id="negative"),
    pytest.param("-1700000000000", id="negative-string"),
    pytest.param(float("inf"), id="infinity"),
    pytest.param(float("nan"), id="nan"),
    pytest.param([TS], id="list"),
    pytest.param({"ms": TS}, id="object"),
]


@pytest.mark.parametrize("value", RULE4_RECEIVE_TIME)
def test_rule4_missing_or_unparseable_timestamp_becomes_receive_time_with_a_warning(value: Any) -> None:
    context: dict[str, Any] = {"event_id": "e"}
    if value is not MISSING:
        context["event_timestamp"] = value
    result = norm({"event_name": "x", "context": context})
    assert result.event["context"]["event_timestamp"] == RECEIVED
    assert len(result.warnings) == 1
    assert "event_timestamp" in result.warnings[0]
    assert result.errors == []


# --- rule 5: consent categories as strings ---------------------------------------------------------------

RULE5 = [
    pytest.param([1, 3], ["1", "3"], id="int-list"),
    pytest.param(["1", "3"], ["1", "3"], id="string-list"),
    pytest.param(3, ["3"], id="single-int"),
    pytest.param("3", ["3"], id="single-string"),
    pytest.param("1,3", ["1", "3"], id="comma-string"),
    pytest.param(" 1 , 3 ,", ["1", "3"], id="comma-string-padded"),
    pytest.param(3.0, ["3"], id="single-float"),
    pytest.param([1.0, 3.0], ["1", "3"], id="float-list"),
    pytest.param([1, "3"], ["1", "3"], id="mixed-list"),
    pytest.param([], [], id="empty-list"),
]


@pytest.mark.parametrize(("value", "expected"), RULE5)
def test_rule5_consent_categories_become_strings(value: Any, expected: list[str]) -> None:
    raw = {"event_name": "x", "user": {"id": "7", "consent_categories": value}}
    result = norm({**raw, "context": {"event_id": "e", "event_timestamp": TS}})
    assert result.event["user"] == {"id": "7", "consent_categories": expected}
    assert result.warnings == []


RULE5_INVALID = [
    pytest.param(None, id="null"),
    pytest.param(True, id="bool"),
    pytest.param({"1": True}, id="object"),
    pytest.param([True, False], id="bool-list"),
    pytest.param([[1], [3]], id="nested-list"),
    pytest.param([None], id="null-in-list"),
    pytest.param([{"id": 1}], id="object-in-list"),
]


@pytest.mark.parametrize("value", RULE5_INVALID)
def test_rule5_unusable_consent_categories_are_removed_with_a_warning(value: Any) -> None:
    raw = {"event_name": "x", "user": {"id": "7", "consent_categories": value}}
    result = norm({**raw, "context": {"event_id": "e", "event_timestamp": TS}})
    assert result.event["user"] == {"id": "7"}
    assert len(result.warnings) == 1
    assert "consent_categories" in result.warnings[0]


@pytest.mark.parametrize("user", [{"id": "7"}, "7", None], ids=["no-categories", "user-string", "user-null"])
def test_rule5_user_without_categories_is_left_alone(user: Any) -> None:
    result = norm({"event_name": "x", "user": user, "context": {"event_id": "e", "event_timestamp": TS}})
    assert result.event["user"] == user
    assert result.warnings == []


# --- rule 6: event_id ----------------------------------------------------------------------------------

RULE6_KEPT = [
    pytest.param("abc-1", "abc-1", id="string"),
    pytest.param(42, "42", id="int"),
    pytest.param(42.0, "42", id="integral-float"),
    pytest.param(1.5, "1.5", id="float"),
    pytest.param(0, "0", id="zero"),
]


@pytest.mark.parametrize(("value", "expected"), RULE6_KEPT)
def test_rule6_event_id_kept_as_a_string(value: Any, expected: str) -> None:
    result = norm({"event_name": "x", "context": {"event_id": value, "event_timestamp": TS}})
    assert result.event["context"]["event_id"] == expected
    assert result.generated_id is False
    assert result.warnings == []


RULE6_GENERATED = [
    pytest.param(MISSING, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param(None, id="null"),
    pytest.param(True, id="bool"),
    pytest.param({"id": 1}, id="object"),
    pytest.param(["e-1"], id="list"),
]


@pytest.mark.parametrize("value", RULE6_GENERATED)
def test_rule6_missing_event_id_is_generated_with_a_warning(value: Any) -> None:
    context: dict[str, Any] = {"event_timestamp": TS}
    if value is not MISSING:
        context["event_id"] = value
    result = norm({"event_name": "x", "context": context})
    generated = result.event["context"]["event_id"]
    assert str(uuid.UUID(generated)) == generated
    assert result.generated_id is True
    assert len(result.warnings) == 1
    assert "event_id" in result.warnings[0]


def test_rule6_generated_id_depends_only_on_the_seed() -> None:
    raw = {"event_name": "x", "context": {"event_timestamp": TS}}
    first = norm(raw, id_seed="job-7:0:1").event["context"]["event_id"]
    again = norm(raw, id_seed="job-7:0:1", received_at=RECEIVED + 9).event["context"]["event_id"]
    other_event = norm({"event_name": "y"}, id_seed="job-7:0:1").event["context"]["event_id"]
    other_seed = norm(raw, id_seed="job-7:0:2").event["context"]["event_id"]
    assert first == again == other_event
    assert other_seed != first


# --- rule 7: received_at and source_id -------------------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [
        pytest.param({}, id="absent"),
        pytest.param({"received_at": 1, "source_id": "spoofed"}, id="client-values-overwritten"),
    ],
)
def test_rule7_received_at_and_source_id_added(context: dict[str, Any]) -> None:
    raw = {"event_name": "x", "context": {**context, "event_id": "e", "event_timestamp": TS}}
    result = normalize(raw, received_at=1_234_567_890_123, source_id="app-ios", id_seed=SEED)
    assert result.event["context"]["received_at"] == 1_234_567_890_123
    assert result.event["context"]["source_id"] == "app-ios"


# --- rule 8: event_name required ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(MISSING, id="missing"),
        pytest.param(None, id="null"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(5, id="number"),
        pytest.param(["purchase"], id="list"),
        pytest.param({"n": "purchase"}, id="object"),
        pytest.param(True, id="bool"),
    ],
)
def test_rule8_event_name_missing_or_not_a_string_is_an_error(name: Any) -> None:
    raw: dict[str, Any] = {"context": {"event_id": "e", "event_timestamp": TS}}
    if name is not MISSING:
        raw["event_name"] = name
    result = norm(raw)
    assert len(result.errors) == 1
    assert "event_name" in result.errors[0]


@pytest.mark.parametrize("name", ["purchase", "my custom event", "x"])
def test_rule8_event_name_present_no_error(name: str) -> None:
    result = norm({"event_name": name, "context": {"event_id": "e", "event_timestamp": TS}})
    assert result.errors == []
    assert result.event["event_name"] == name


@pytest.mark.parametrize("raw", [[], [{"event_name": "x"}], "event", 5, 1.5, None, True])
def test_non_object_input_is_an_error(raw: Any) -> None:
    result = norm(raw)
    assert len(result.errors) == 1
    assert "object" in result.errors[0]
    assert result.event == {}


# --- the input is never mutated ---------------------------------------------------------------------------

MUTATION_INPUTS = [
    CONTRACT_V1,
    CONTRACT_V2,
    *(p.values[0] for p in QUIRKS),
    *(p.values[0] for p in RULE1),
    *(p.values[0] for p in RULE2),
    {"event_name": "x", "context": {"page": {"location": "u"}}, "user": {"consent_categories": "1,3"}},
    {"event_name": "x", "user": {"consent_categories": [None]}, "context": {"event_id": 42}},
    {"event_name": "x", "a": 1, "properties": {"a": 2, "user": {"consent_categories": [3]}}, "page": {"location": "u"}},
    {"event_name": "x", "context": "not an object", "event_timestamp": "nonsense"},
    {"event_name": "x", "event_id": "e", "page": {"location": "u"}, "device": {"ip": "1"}, "app": {"n": 1}},
]


@pytest.mark.parametrize("raw", MUTATION_INPUTS)
def test_input_is_not_mutated(raw: dict[str, Any]) -> None:
    before = copy.deepcopy(raw)
    result = norm(raw)
    assert raw == before
    # The output shares no mutable container the normalizer changed with the input.
    result.event["context"]["mutated"] = True
    assert raw == before


# --- rule 1 without `properties`: v1 by its root metadata --------------------------------------------

V1_WITHOUT_PROPERTIES = {
    "event_name": "search",
    "event_id": "v1-np",
    "event_timestamp": TS,
    "search_term": "t-shirts",
    "user": {"id": "12345"},
    "page": {"title": "Search page", "location": "https://shop.com/search?q=..."},
    "device": {"ip": "102.3.4.56", "user_agent": "Mozilla/5.0"},
    "app": {"name": "shop", "version": "1.2"},
}


def test_rule1_v1_without_properties_is_detected_by_its_root_metadata() -> None:
    result = norm(V1_WITHOUT_PROPERTIES)
    assert result.version == 1
    assert result.event == out(
        {"event_name": "search", "search_term": "t-shirts", "user": {"id": "12345"}},
        {
            "event_id": "v1-np",
            "event_timestamp": TS,
            "page": {"title": "Search page", "url": "https://shop.com/search?q=..."},
            "device": {"ip": "102.3.4.56", "user_agent": "Mozilla/5.0"},
            "app": {"name": "shop", "version": "1.2"},
        },
    )
    assert result.warnings == []
    assert result.errors == []


@pytest.mark.parametrize("key", ["page", "device", "app"])
def test_rule1_any_one_root_metadata_object_makes_v1(key: str) -> None:
    result = norm({"event_name": "x", "event_id": "e", "event_timestamp": TS, key: {"k": "v"}})
    assert result.version == 1
    assert key not in result.event
    assert result.event["context"][key] == {"k": "v"}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"event_name": "x", "page": "home"}, id="page-a-string"),
        pytest.param({"event_name": "x", "device": ["ios"]}, id="device-a-list"),
        pytest.param({"event_name": "x", "app": None}, id="app-null"),
        pytest.param({"event_name": "x", "screen": {"w": 1}}, id="other-object"),
    ],
)
def test_rule1_root_metadata_must_be_an_object_to_make_v1(raw: dict[str, Any]) -> None:
    result = norm({**raw, "event_id": "e", "event_timestamp": TS})
    assert result.version == 2
    for key, value in raw.items():
        assert result.event[key] == value


def test_rule1_a_context_that_is_not_an_object_does_not_hide_v1_metadata() -> None:
    result = norm({"event_name": "x", "event_id": "e", "event_timestamp": TS, "context": 5, "page": {"location": "u"}})
    assert result.version == 1
    assert result.event["context"]["page"] == {"url": "u"}
    assert len(result.warnings) == 1 and "context" in result.warnings[0]


# --- missing metadata warnings name their path ---------------------------------------------------------


def test_missing_metadata_warnings_name_the_context_path() -> None:
    result = norm({"event_name": "x"})
    assert len(result.warnings) == 2
    assert result.warnings[0].startswith("context.event_timestamp is missing")
    assert result.warnings[1].startswith("context.event_id is missing")


def test_unreadable_timestamp_warning_names_the_path_and_is_short() -> None:
    result = norm({"event_name": "x", "context": {"event_id": "e", "event_timestamp": "y" * 5000}})
    [warning] = result.warnings
    assert warning.startswith("context.event_timestamp ")
    assert len(warning) < 200


# --- fill_client: the request's IP and user agent where the event has none --------------------------------

IP = "203.0.113.9"
UA = "Mozilla/5.0 (X11; Linux x86_64)"


def event_with(device: Any = MISSING) -> dict[str, Any]:
    context: dict[str, Any] = {"event_id": "e"}
    if device is not MISSING:
        context["device"] = device
    return {"event_name": "x", "context": context}


FILLS = [
    pytest.param(MISSING, {"ip": IP, "user_agent": UA}, id="no-device"),
    pytest.param(None, {"ip": IP, "user_agent": UA}, id="device-null"),
    pytest.param({}, {"ip": IP, "user_agent": UA}, id="device-empty"),
    pytest.param({"lang": "fr"}, {"lang": "fr", "ip": IP, "user_agent": UA}, id="other-keys-kept"),
    pytest.param({"ip": "198.51.100.4"}, {"ip": "198.51.100.4", "user_agent": UA}, id="event-ip-kept"),
    pytest.param({"user_agent": "App/1"}, {"user_agent": "App/1", "ip": IP}, id="event-ua-kept"),
    pytest.param(
        {"ip": "198.51.100.4", "user_agent": "App/1"}, {"ip": "198.51.100.4", "user_agent": "App/1"}, id="both-kept"
    ),
    pytest.param({"ip": None, "user_agent": ""}, {"ip": IP, "user_agent": UA}, id="null-and-empty-filled"),
    pytest.param("a string", "a string", id="device-not-an-object-untouched"),
]


@pytest.mark.parametrize(("device", "expected"), FILLS)
def test_fill_client(device: Any, expected: Any) -> None:
    event = event_with(device)
    before = copy.deepcopy(event)
    filled = fill_client(event, IP, UA)
    assert filled["context"]["device"] == expected
    assert filled["context"]["event_id"] == "e" and filled["event_name"] == "x"
    assert event == before, "the input is not changed"


@pytest.mark.parametrize(("ip", "ua"), [(None, None), ("", ""), (None, UA), (IP, None)])
def test_fill_client_without_request_values_fills_only_what_it_has(ip: str | None, ua: str | None) -> None:
    filled = fill_client(event_with(), ip, ua)
    expected = {k: v for k, v in (("ip", ip), ("user_agent", ua)) if v}
    assert filled["context"].get("device", {}) == expected


def test_fill_client_returns_the_event_itself_when_nothing_changes() -> None:
    event = event_with({"ip": "1.2.3.4", "user_agent": "x"})
    assert fill_client(event, IP, UA) is event
    assert fill_client(event_with(), None, None)["context"] == {"event_id": "e"}


@pytest.mark.parametrize("categories", [["1", "3"], [" 1", "3 "], [1, 3.0]])
def test_consent_categories_of_a_caller_kept_event_are_never_shared(categories: list[Any]) -> None:
    raw = {"event_name": "x", "user": {"consent_categories": categories}, "context": {"event_id": "e"}}
    before = copy.deepcopy(raw)
    result = norm(raw).event["user"]["consent_categories"]
    assert result == ["1", "3"]
    result.append("9")  # the output may be changed (the judge removes properties) ...
    assert raw == before  # ... without touching the caller's event
