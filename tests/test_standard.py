"""workers.standard.check_standard_event (docs/CONTRACT.md §4) and workers.status.quality_status."""

from __future__ import annotations

from typing import Any

import pytest

from workers.standard import check_standard_event
from workers.status import EventStatus, quality_status

# The table of docs/CONTRACT.md §4, transcribed: (always required, starred).
DOC_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "add_payment_info": (("payment_method", "user"), ("currency",)),
    "add_shipping_info": (("currency", "value", "user", "items"), ()),
    "add_to_cart": (("user", "items"), ("value", "currency")),
    "add_to_wishlist": (("user", "items"), ()),
    "begin_checkout": (("revenue", "value", "currency", "user", "items"), ()),
    "generate_lead": (("user",), ("currency",)),
    "login": (("user",), ()),
    "sign_up": (("user",), ()),
    "page_view": (("page_type", "user"), ()),
    "purchase": (("id", "type", "value", "revenue", "payment_method", "currency", "status", "user", "items"), ()),
    "refund": (("id", "user", "revenue", "value", "currency", "type"), ()),
    "remove_from_cart": (("user", "items"), ()),
    "view_cart": (("user", "items"), ()),
    "search": (("search_term", "user"), ()),
    "select_content": (("user",), ()),
    "select_item": (("items",), ()),
    "view_item": (("user", "items"), ("value", "currency")),
    "view_item_list": (("user", "items"), ()),
}

GOOD_VALUES: dict[str, Any] = {
    "payment_method": "card",
    "user": {"id": "7", "consent_categories": ["1", "3"]},
    "currency": "EUR",
    "value": 20,
    "revenue": 16.5,
    "items": [{"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "price": 20}}],
    "page_type": "product",
    "id": "O-1",
    "type": "online",
    "status": "pending",
    "search_term": "mug",
}

PURCHASE_STATUSES = [
    "canceled",
    "delivered",
    "in_progress",
    "partially_delivered",
    "partially_returned",
    "partially_shipped",
    "pending_shipment",
    "returned",
    "shipped",
    "pending",
]
PAYMENT_METHODS = [
    "by_invoice",
    "by_bank_transfer_in_advance",
    "card",
    "check_in_advance",
    "cod",
    "coupon",
    "direct_debit",
    "online_payment_system",
    "other",
]


def complete(name: str, *, starred: bool = True) -> dict[str, Any]:
    required, conditional = DOC_TABLE[name]
    keys = required + (conditional if starred else ())
    return {"event_name": name, **{key: GOOD_VALUES[key] for key in keys}}


def without(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in keys}


@pytest.mark.parametrize("name", DOC_TABLE)
@pytest.mark.parametrize("starred", [True, False], ids=["with-starred", "without-starred"])
def test_complete_standard_event_has_no_warnings(name: str, starred: bool) -> None:
    assert check_standard_event(complete(name, starred=starred)) == []


MISSING_REQUIRED = [(name, key) for name, (required, _) in DOC_TABLE.items() for key in required]


@pytest.mark.parametrize(("name", "key"), MISSING_REQUIRED, ids=[f"{n}-{k}" for n, k in MISSING_REQUIRED])
def test_each_missing_required_property_gives_one_warning_naming_it(name: str, key: str) -> None:
    warnings = check_standard_event(without(complete(name), key))
    assert len(warnings) == 1, warnings
    assert f"'{key}'" in warnings[0]
    assert name in warnings[0]


@pytest.mark.parametrize("name", DOC_TABLE)
def test_every_missing_property_is_reported(name: str) -> None:
    required, _ = DOC_TABLE[name]
    warnings = check_standard_event({"event_name": name})
    assert len(warnings) == len(required)
    for key in required:
        assert any(f"'{key}'" in w for w in warnings), key


# `[] {} ""` count as missing; a property that is present but null or empty gives the same single warning.
EMPTY_VALUES = [
    ("purchase", "status", None),
    ("purchase", "status", ""),
    ("purchase", "currency", None),
    ("purchase", "currency", ""),
    ("purchase", "payment_method", None),
    ("add_payment_info", "payment_method", ""),
    ("purchase", "user", None),
    ("login", "user", {}),
    ("purchase", "items", []),
    ("view_cart", "items", None),
    ("search", "search_term", ""),
    ("page_view", "page_type", None),
]


@pytest.mark.parametrize(("name", "key", "empty"), EMPTY_VALUES, ids=[f"{n}-{k}-{e!r}" for n, k, e in EMPTY_VALUES])
def test_null_or_empty_required_property_gives_one_warning(name: str, key: str, empty: Any) -> None:
    warnings = check_standard_event({**complete(name), key: empty})
    assert len(warnings) == 1, warnings
    assert f"'{key}'" in warnings[0]


@pytest.mark.parametrize("present", [0, 0.0, False, "0"], ids=["zero", "zero-float", "false", "zero-string"])
def test_falsy_but_present_value_is_not_missing(present: Any) -> None:
    assert check_standard_event({**complete("begin_checkout"), "value": present}) == []


# --- starred (conditional) rules ---------------------------------------------------------------------

STARRED = [
    # currency* on add_payment_info / generate_lead: required with value or revenue.
    ("add_payment_info", {"value": 20}, ["currency"]),
    ("add_payment_info", {"revenue": 20}, ["currency"]),
    ("add_payment_info", {"value": 20, "currency": "EUR"}, []),
    ("add_payment_info", {}, []),
    ("add_payment_info", {"currency": "EUR"}, []),
    ("generate_lead", {"value": 5}, ["currency"]),
    ("generate_lead", {"revenue": 5}, ["currency"]),
    ("generate_lead", {"value": 5, "currency": "USD"}, []),
    ("generate_lead", {}, []),
    ("generate_lead", {"value": 0}, ["currency"]),
    # add_to_cart / view_item: currency* with value or revenue, value* with currency.
    ("add_to_cart", {"value": 20}, ["currency"]),
    ("add_to_cart", {"revenue": 20}, ["currency"]),
    ("add_to_cart", {"currency": "EUR"}, ["value"]),
    ("add_to_cart", {"value": 20, "currency": "EUR"}, []),
    ("add_to_cart", {}, []),
    ("view_item", {"value": 20}, ["currency"]),
    ("view_item", {"currency": "EUR"}, ["value"]),
    ("view_item", {"value": 20, "currency": "EUR"}, []),
    ("view_item", {}, []),
]


@pytest.mark.parametrize(("name", "extra", "expected_keys"), STARRED)
def test_starred_properties_are_required_only_alongside_their_partner(
    name: str, extra: dict[str, Any], expected_keys: list[str]
) -> None:
    warnings = check_standard_event({**complete(name, starred=False), **extra})
    assert len(warnings) == len(expected_keys), warnings
    for key, warning in zip(expected_keys, warnings, strict=True):
        assert f"'{key}'" in warning


# --- nested rules: items, product, user --------------------------------------------------------------

ITEM = {"id": "SKU-9", "quantity": 2, "product": {"name": "Mug", "price": 35}}

ITEMS = [
    pytest.param([{k: v for k, v in ITEM.items() if k != "id"}], "items[0].id", id="item-id"),
    pytest.param([{k: v for k, v in ITEM.items() if k != "quantity"}], "items[0].quantity", id="item-quantity"),
    pytest.param([{k: v for k, v in ITEM.items() if k != "product"}], "items[0].product", id="item-product"),
    pytest.param([{**ITEM, "product": {"price": 35}}], "items[0].product.name", id="product-name"),
    pytest.param([{**ITEM, "product": {"name": "Mug"}}], "items[0].product.price", id="product-price"),
    pytest.param([{**ITEM, "product": {"name": "", "price": 35}}], "items[0].product.name", id="product-name-empty"),
    pytest.param([ITEM, {**ITEM, "id": None}], "items[1].id", id="second-item-id"),
    pytest.param([ITEM, "SKU-9"], "items[1]", id="item-not-an-object"),
    pytest.param({"id": "SKU-9"}, "items", id="items-not-a-list"),
    pytest.param([{**ITEM, "product": "Mug"}], "items[0].product", id="product-not-an-object"),
]


@pytest.mark.parametrize(("items", "named"), ITEMS)
def test_each_bad_item_entry_gives_one_warning(items: Any, named: str) -> None:
    warnings = check_standard_event({**complete("add_to_cart"), "items": items})
    assert len(warnings) == 1, warnings
    assert named in warnings[0]


def test_empty_item_names_each_missing_part() -> None:
    warnings = check_standard_event({**complete("view_cart"), "items": [{}]})
    assert warnings == ["items[0].id is missing", "items[0].quantity is missing", "items[0].product is missing"]


def test_good_items_with_zero_quantity_and_price_are_accepted() -> None:
    items = [{"id": "A", "quantity": 0, "product": {"name": "Free", "price": 0}}, ITEM]
    assert check_standard_event({**complete("view_cart"), "items": items}) == []


@pytest.mark.parametrize("name", [n for n, (req, _) in DOC_TABLE.items() if "user" in req])
def test_user_without_consent_categories_is_a_warning(name: str) -> None:
    warnings = check_standard_event({**complete(name), "user": {"id": "7"}})
    assert len(warnings) == 1
    assert "consent_categories" in warnings[0]


def test_user_with_empty_consent_categories_is_fine() -> None:
    assert check_standard_event({**complete("login"), "user": {"id": "7", "consent_categories": []}}) == []


# --- enumerations -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", PURCHASE_STATUSES)
def test_known_purchase_status_is_fine(status: str) -> None:
    assert check_standard_event({**complete("purchase"), "status": status}) == []


@pytest.mark.parametrize("status", ["lost", "PENDING", "paid", 3, True, ["pending"], {"s": "pending"}], ids=repr)
def test_unknown_purchase_status_is_one_warning(status: Any) -> None:
    warnings = check_standard_event({**complete("purchase"), "status": status})
    assert len(warnings) == 1, warnings
    assert "status" in warnings[0]


@pytest.mark.parametrize("method", PAYMENT_METHODS)
def test_known_payment_method_is_fine(method: str) -> None:
    assert check_standard_event({**complete("purchase"), "payment_method": method}) == []
    assert check_standard_event({**complete("add_payment_info"), "payment_method": method}) == []


@pytest.mark.parametrize("method", ["bitcoin", "Card", "credit_card", 1, ["card"], {"type": "card"}], ids=repr)
@pytest.mark.parametrize("name", ["purchase", "add_payment_info", "login"])
def test_unknown_payment_method_is_one_warning(name: str, method: Any) -> None:
    warnings = check_standard_event({**complete(name), "payment_method": method})
    assert len(warnings) == 1, warnings
    assert "payment_method" in warnings[0]


@pytest.mark.parametrize("currency", ["EUR", "USD", "JPY", "CHF"])
def test_iso_currency_is_fine(currency: str) -> None:
    assert check_standard_event({**complete("purchase"), "currency": currency}) == []


@pytest.mark.parametrize("currency", ["eur", "Eur", "EURO", "EU", "E1R", "ÉUR", " EUR", 978, ["EUR"], True], ids=repr)
@pytest.mark.parametrize("name", ["purchase", "refund", "add_to_cart"])
def test_bad_currency_is_one_warning(name: str, currency: Any) -> None:
    warnings = check_standard_event({**complete(name), "currency": currency})
    assert len(warnings) == 1, warnings
    assert "currency" in warnings[0]


# --- custom events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"event_name": "my_custom_event"},
        {"event_name": "Purchase"},
        {"event_name": "purchase_v2", "currency": "euro", "status": "??", "payment_method": "gold"},
        {"event_name": "wishlist_shared", "items": [{}], "user": {}},
        {"event_name": None},
        {"event_name": 5},
        {},
    ],
    ids=repr,
)
def test_custom_or_nameless_events_get_no_warnings(event: dict[str, Any]) -> None:
    assert check_standard_event(event) == []


def test_input_is_not_mutated() -> None:
    event = {**complete("purchase"), "items": [{"product": {}}], "user": {"id": "7"}, "status": "lost"}
    before = repr(event)
    check_standard_event(event)
    assert repr(event) == before


# --- quality_status -----------------------------------------------------------------------------------

QUALITY = [
    ([], [], "accept", EventStatus.VALID),
    ([], [], "reject", EventStatus.VALID),
    ([], ["w"], "accept", EventStatus.INVALID_ACCEPTED),
    ([], ["w", "w2"], "accept", EventStatus.INVALID_ACCEPTED),
    ([], ["w"], "reject", EventStatus.INVALID_REJECTED),
    (["e"], [], "accept", EventStatus.INVALID_REJECTED),
    (["e"], ["w"], "accept", EventStatus.INVALID_REJECTED),
    (["e"], [], "reject", EventStatus.INVALID_REJECTED),
    (["e"], ["w"], "reject", EventStatus.INVALID_REJECTED),
]


@pytest.mark.parametrize(("errors", "warnings", "on_invalid", "expected"), QUALITY)
def test_quality_status(errors: list[str], warnings: list[str], on_invalid: str, expected: EventStatus) -> None:
    assert quality_status(errors, warnings, on_invalid) is expected


def test_status_values_are_the_seed_platform_names() -> None:
    assert [s.value for s in EventStatus] == [
        "VALID",
        "INVALID_ACCEPTED",
        "INVALID_REJECTED",
        "DUPLICATE",
        "FILTERED",
    ]
