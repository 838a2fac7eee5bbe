"""The `ga4` destination: the vendor's mapping tables, Google's Measurement Protocol limits, the client
and session ids from cookies (and their fallbacks), consent, app streams, validate mode against the local
GA4 server (tooling.vendors.ga4), and the API secret kept out of every exchange and reason.

Expected GA4 payloads are written out literally from the vendor's GA4 page (its per-event tables and the
items table) and Google's Measurement Protocol reference, not computed by the code under test."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx
import msgspec
import pytest

from destinations import ga4
from destinations.base import DELIVERED, OutgoingEvent, Rejected, Retry, Skipped
from tests.support import TEST_KEY
from tooling.vendors.ga4 import Ga4Server, validation_messages
from trackpipe.config import ConfigError, parse
from trackpipe.destination_settings import Ga4Destination

SECRET = "mp/s3cr+t=key"  # characters that URL-encoding changes: both forms must be masked
MEASUREMENT_ID = "G-TEST123"
NOW_MS = 1_800_000_000_000
AT_MS = NOW_MS - 60_000
COOKIE = "_fbp=fb.1.2.3; _ga=GA1.1.1234567890.1700000000; _ga_TEST123=GS1.1.1700000500.4.1.1700000600.0.0.0"
SESSION = {"session_id": "1700000500", "engagement_time_msec": 1}

ITEM_IN = {
    "id": "SKU-1",
    "quantity": 2,
    "variant": "red",
    "coupon": "ITEM5",
    "discount": 1.5,
    "list_position": 3,
    "product": {
        "name": "Mug",
        "price": 12.5,
        "brand": "Acme",
        "currency": "EUR",
        "affiliation": "Store 1",
        "category_1": "Home",
        "category_2": "Kitchen",
        "category_3": "Tableware",
        "category_4": "Drinkware",
        "category_5": "Mugs",
        "list_id": "L-1",
        "list_name": "Best sellers",
        "location_id": "LOC-9",
        "size": "XL",  # not in the vendor's items table: not sent
    },
}
# The vendor's items table, item by item.
ITEM_OUT = {
    "item_id": "SKU-1",
    "item_name": "Mug",
    "affiliation": "Store 1",
    "coupon": "ITEM5",
    "currency": "EUR",
    "discount": 1.5,
    "index": 3,
    "item_brand": "Acme",
    "item_category": "Home",
    "item_category2": "Kitchen",
    "item_category3": "Tableware",
    "item_category4": "Drinkware",
    "item_category5": "Mugs",
    "item_list_id": "L-1",
    "item_list_name": "Best sellers",
    "item_variant": "red",
    "location_id": "LOC-9",
    "price": 12.5,
    "quantity": 2,
}

# Every property any of the vendor's tables reads, plus one none does (`color`): each event below gets
# them all, and its expected params show exactly what the vendor's table for that event maps.
ALL_PROPS: dict[str, Any] = {
    "currency": "EUR",
    "value": 30.5,
    "coupon": "SUMMER",
    "payment_method": "card",
    "revenue": 25.0,
    "shipping_tier": "next_day",
    "id": "O-77",
    "affiliation": "Online store",
    "shipping_amount": 4.9,
    "tax_amount": 5.1,
    "type": "online",
    "status": "pending",
    "url": "https://shop.example/p?x=1",
    "referrer": "https://search.example/",
    "title": "Checkout",
    "page_name": "checkout",
    "page_type": "funnel",
    "path": "/p",
    "search_term": "mugs",
    "content_type": "product",
    "item_id": "SKU-1",
    "item_list_name": "Best sellers",
    "method": "Google",
    "items": [ITEM_IN],
    "color": "blue",
}

CART = {"currency": "EUR", "value": 30.5, "items": [ITEM_OUT]}
TRANSACTION = {
    "currency": "EUR",
    "value": 30.5,
    "transaction_id": "O-77",
    "affiliation": "Online store",
    "coupon": "SUMMER",
    "shipping": 4.9,
    "tax": 5.1,
    "revenue": 25.0,
    "conversion_type": "online",
    "conversion_status": "pending",
    "conversion_url": "https://shop.example/p?x=1",
    "payment_type": "card",
    "items": [ITEM_OUT],
}
STANDARD_EVENTS: dict[str, dict[str, Any]] = {
    "add_payment_info": {
        "currency": "EUR",
        "value": 30.5,
        "coupon": "SUMMER",
        "payment_type": "card",
        "revenue": 25.0,
        "items": [ITEM_OUT],
    },
    "add_shipping_info": {
        "currency": "EUR",
        "value": 30.5,
        "coupon": "SUMMER",
        "shipping_tier": "next_day",
        "items": [ITEM_OUT],
    },
    "add_to_cart": CART,
    "add_to_wishlist": CART,
    "begin_checkout": {"currency": "EUR", "value": 30.5, "coupon": "SUMMER", "revenue": 25.0, "items": [ITEM_OUT]},
    "generate_lead": {"currency": "EUR", "value": 30.5, "transaction_id": "O-77"},
    "login": {"method": "Google"},
    "page_view": {
        "page_location": "https://shop.example/p?x=1",
        "page_referrer": "https://search.example/",
        "page_title": "Checkout",
        "page_name": "checkout",
        "page_type": "funnel",
        "page_path": "/p",
    },
    "purchase": TRANSACTION,
    "refund": TRANSACTION,
    "remove_from_cart": CART,
    "search": {"search_term": "mugs"},
    "select_content": {"content_type": "product", "item_id": "SKU-1"},
    "select_item": {"item_list_name": "Best sellers", "items": [ITEM_OUT]},
    "sign_up": {"method": "Google"},
    "view_cart": CART,
    "view_item": CART,
    "view_item_list": {"item_list_name": "Best sellers", "items": [ITEM_OUT]},
}


def settings(**changes: Any) -> Ga4Destination:
    values: dict[str, Any] = {"id": "ga4", "measurement_id": MEASUREMENT_ID, "api_secret": SECRET, **changes}
    return Ga4Destination(**values)


def event(name: str, props: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    ctx = {"event_id": f"e-{name}", "event_timestamp": AT_MS, "device": {"cookie": COOKIE}, **context}
    return {"event_name": name, **(ALL_PROPS if props is None else props), "user": {"id": "U-7"}, "context": ctx}


def mapped(data: dict[str, Any], **changes: Any) -> ga4.Mapped:
    result = ga4.map_event(settings(**changes), data, NOW_MS)
    assert isinstance(result, ga4.Mapped), result
    return result


def broken(data: dict[str, Any], **changes: Any) -> str:
    with pytest.raises(ga4.LimitBroken) as info:
        ga4.map_event(settings(**changes), data, NOW_MS)
    return str(info.value)


def outgoing(data: dict[str, Any], index: int = 0) -> OutgoingEvent:
    return OutgoingEvent(f"id-{index}", data["event_name"], data, msgspec.json.encode(data))


# --- the vendor's mapping tables ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STANDARD_EVENTS))
def test_each_standard_event_maps_as_the_vendor_table_says(name: str) -> None:
    result = mapped(event(name))
    assert result.event == {"name": name, "params": {**STANDARD_EVENTS[name], **SESSION}}
    assert result.top == {"client_id": "1234567890.1700000000", "user_id": "U-7"}
    assert result.timestamp_micros == AT_MS * 1000


def test_a_custom_event_keeps_its_name_and_gets_the_custom_table() -> None:
    props = {"url": "https://shop.example/news", "method": "footer", "value": 1, "currency": "USD", "color": "blue"}
    result = mapped(event("newsletter_signup", props))
    assert result.event == {
        "name": "newsletter_signup",
        "params": {
            "currency": "USD",
            "value": 1,
            "conversion_url": "https://shop.example/news",
            "method": "footer",
            "page_location": "https://shop.example/news",
            **SESSION,
        },
    }


def test_page_view_takes_url_referrer_and_title_from_context_page_when_the_root_has_none() -> None:
    props = {"page_type": "home"}
    page = {"url": "https://shop.example/", "referrer": "https://ref.example/", "title": "Home"}
    assert mapped(event("page_view", props, page=page)).event["params"] == {
        "page_location": "https://shop.example/",
        "page_referrer": "https://ref.example/",
        "page_title": "Home",
        "page_type": "home",
        **SESSION,
    }
    # The event's own properties win over context.page.
    own = {"page_type": "home", "url": "https://own.example/"}
    assert mapped(event("page_view", own, page=page)).event["params"]["page_location"] == "https://own.example/"


def test_numeric_ids_become_strings_and_absent_properties_are_not_sent() -> None:
    props = {"id": 991, "currency": "EUR", "value": 3, "items": [{"id": 42, "quantity": 1}]}
    assert mapped(event("purchase", props)).event["params"] == {
        "currency": "EUR",
        "value": 3,
        "transaction_id": "991",
        "items": [{"item_id": "42", "quantity": 1}],
        **SESSION,
    }


def test_engagement_time_debug_mode_event_params_and_user_properties_settings() -> None:
    data = event("login", {"method": "Google", "plan": "gold"})
    data["user"]["zipcode"] = "75001"
    result = mapped(
        data,
        engagement_time_msec=250,
        debug_mode=True,
        event_params={"plan_name": "plan"},
        user_properties={"customer_zipcode": "user.zipcode"},
    )
    assert result.event["params"] == {
        "method": "Google",
        "plan_name": "gold",
        "session_id": "1700000500",
        "engagement_time_msec": 250,
        "debug_mode": True,
    }
    assert result.top["user_properties"] == {"customer_zipcode": {"value": "75001"}}
    assert "engagement_time_msec" not in mapped(data, engagement_time_msec=0).event["params"]


def test_user_location_and_ip_override() -> None:
    data = event("login", {"method": "x"})
    data["user"].update({"current_location_city": "Paris", "current_location_country": "FR"})
    data["context"]["device"]["ip"] = "203.0.113.9"
    assert mapped(data).top["user_location"] == {"city": "Paris", "country_id": "FR"}
    assert "ip_override" not in mapped(data).top
    assert mapped(data, ip_override=True).top["ip_override"] == "203.0.113.9"


# --- identity: client id, session id, user id, consent, app streams ------------------------------------


def test_client_id_is_the_right_most_two_parts_of_the_ga_cookie() -> None:
    data = event("login", {}, device={"cookie": "_ga=GA1.2.555.666"})
    assert mapped(data).top["client_id"] == "555.666"


def test_client_id_cookie_name_can_be_changed() -> None:
    data = event("login", {}, device={"cookie": "_ga=GA1.1.1.2; my_ga=GA1.1.77.88"})
    assert mapped(data, client_id_cookie="my_ga").top["client_id"] == "77.88"


def test_without_the_cookie_the_consistent_anonymous_id_is_the_client_id() -> None:
    data = event("login", {}, device={"cookie": "_fbp=1"})
    data["user"]["consistent_anonymous_id"] = "anon-67892"
    assert mapped(data).top["client_id"] == "anon-67892"


def test_an_event_without_any_client_id_is_skipped_with_the_reason() -> None:
    data = event("login", {}, device={})
    result = ga4.map_event(settings(), data, NOW_MS)
    assert isinstance(result, Skipped)
    assert "no client_id" in result.reason and "user.consistent_anonymous_id" in result.reason


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("_ga=GA1.1.1.2; _ga_TEST123=GS1.1.1700000500.4.1.1700000600.0.0.0", "1700000500"),
        ("_ga=GA1.1.1.2; _ga_TEST123=GS2.1.s1711111111$o3$g1$t1711111200$j0$l0$h0", "1711111111"),
    ],
)
def test_session_id_from_the_measurement_ids_cookie(cookie: str, expected: str) -> None:
    assert mapped(event("login", {}, device={"cookie": cookie})).event["params"]["session_id"] == expected


def test_session_id_fallbacks_ga_session_id_then_device_lifecycle() -> None:
    own = event("login", {"ga_session_id": 4242}, device={"cookie": "_ga=GA1.1.1.2", "lifecycle": {"session_id": 9}})
    assert mapped(own).event["params"]["session_id"] == "4242"
    lifecycle = event("login", {}, device={"cookie": "_ga=GA1.1.1.2", "lifecycle": {"session_id": 9}})
    assert mapped(lifecycle).event["params"]["session_id"] == "9"
    none = event("login", {}, device={"cookie": "_ga=GA1.1.1.2"})
    assert "session_id" not in mapped(none).event["params"]


def test_consent_from_google_consent_mode() -> None:
    data = event("login", {})
    data["user"]["google_consent_mode"] = {"ad_user_data": "granted", "ad_personalization": "DENIED"}
    assert mapped(data).top["consent"] == {"ad_user_data": "GRANTED", "ad_personalization": "DENIED"}
    data["user"]["google_consent_mode"] = {"ad_user_data": True}
    assert mapped(data).top["consent"] == {"ad_user_data": "GRANTED"}
    data["user"]["google_consent_mode"] = {"ad_user_data": "maybe"}
    assert "ad_user_data: 'maybe' is not GRANTED or DENIED" in broken(data)


def test_app_stream_app_instance_id_is_a_hash_of_the_sdk_id_or_the_tc_id() -> None:
    app = {"firebase_app_id": "1:123:android:abc", "measurement_id": None}
    data = event("login", {}, device={"sdk_id": "sdk-1"})
    assert mapped(data, **app).top == {"app_instance_id": _sha("sdk-1"), "user_id": "U-7"}
    data = event("login", {}, device={})
    data["user"]["tcId"] = "tc-9"
    assert mapped(data, **app).top["app_instance_id"] == _sha("tc-9")
    assert ga4.request_url(settings(**app)) == (
        "https://www.google-analytics.com/mp/collect?firebase_app_id=1%3A123%3Aandroid%3Aabc&api_secret=mp%2Fs3cr%2Bt%3Dkey"
    )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def test_app_instance_id_field_must_hold_32_hex_digits() -> None:
    app = {"firebase_app_id": "1:123:ios:abc", "measurement_id": None, "app_instance_id_field": "app_iid"}
    good = event("login", {"app_iid": "0123456789abcdef0123456789ABCDEF"})
    assert mapped(good, **app).top["app_instance_id"] == "0123456789abcdef0123456789ABCDEF"
    assert "32 hexadecimal digits" in broken(event("login", {"app_iid": "short"}), **app)
    assert isinstance(ga4.map_event(settings(**app), event("login", {}), NOW_MS), Skipped)


def test_user_id_from_user_id_and_its_limit() -> None:
    data = event("login", {})
    data["user"]["id"] = 12356
    assert mapped(data).top["user_id"] == "12356"
    data["user"]["id"] = "u" * 257
    assert broken(data) == "user_id is 257 characters; GA4 allows 256"


def test_timestamp_and_the_72_hour_backdating_limit() -> None:
    assert mapped(event("login", {})).timestamp_micros == AT_MS * 1000
    old = event("login", {}, event_timestamp=NOW_MS - 73 * 3_600_000)
    assert broken(old) == "the event is 73 hours old; GA4 takes events backdated at most 72 hours"


# --- Google's limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a" * 41, "is 41 characters; GA4 allows 40"),
        ("add-to-cart", "must start with a letter and hold only letters, digits and underscores"),
        ("1st_visit", "must start with a letter"),
        ("_hidden", "must start with a letter"),
        ("session_start", "'session_start' is reserved by GA4"),
        ("ad_click", "'ad_click' is reserved by GA4"),
        ("google_thing", "uses a prefix GA4 reserves"),
        ("ga_custom", "uses a prefix GA4 reserves"),
        ("firebase_x", "uses a prefix GA4 reserves"),
    ],
)
def test_event_name_rules(name: str, reason: str) -> None:
    assert reason in broken(event(name, {}))


def test_a_40_character_custom_name_is_fine() -> None:
    assert mapped(event("a" * 40, {})).event["name"] == "a" * 40


def test_more_than_25_parameters_is_refused() -> None:
    # The custom table maps 24 of these; with session_id and engagement_time_msec that is 26.
    assert broken(event("everything")) == "26 parameters; GA4 allows 25 per event"
    assert len(mapped(event("everything"), engagement_time_msec=0).event["params"]) == 25


def test_parameter_values_longer_than_100_characters_are_refused() -> None:
    assert broken(event("login", {"method": "m" * 101})) == "parameter method is 101 characters; GA4 allows 100"
    assert mapped(event("login", {"method": "m" * 100})).event["params"]["method"] == "m" * 100


def test_page_parameters_have_longer_limits() -> None:
    url = "https://shop.example/" + "p" * (1000 - 21)
    assert mapped(event("page_view", {"url": url})).event["params"]["page_location"] == url
    assert "page_location is 1001 characters; GA4 allows 1000" in broken(event("page_view", {"url": url + "x"}))
    assert "page_title is 301 characters; GA4 allows 300" in broken(event("page_view", {"title": "t" * 301}))
    assert "page_referrer is 421 characters; GA4 allows 420" in broken(event("page_view", {"referrer": "r" * 421}))


def test_item_limits() -> None:
    many = {"currency": "EUR", "value": 1, "items": [{"id": str(i)} for i in range(201)]}
    assert broken(event("view_cart", many)) == "items: 201 items; GA4 allows 200 per event"
    assert len(mapped(event("view_cart", {**many, "items": many["items"][:200]})).event["params"]["items"]) == 200
    nameless = {"currency": "EUR", "value": 1, "items": [{"quantity": 1}]}
    assert "items[0]: GA4 needs item_id or item_name" in broken(event("add_to_cart", nameless))
    long_value = {"currency": "EUR", "value": 1, "items": [{"id": "x", "variant": "v" * 101}]}
    assert broken(event("add_to_cart", long_value)) == "items[0].item_variant is 101 characters; GA4 allows 100"


def test_custom_event_param_names_follow_the_rules_when_configured() -> None:
    problems = settings(event_params={"ga_thing": "x", "9lives": "y", "ok_name": "z"}).problems("destinations[0]")
    assert problems == [
        "destinations[0].event_params.ga_thing: 'ga_thing' is reserved by GA4 (reserved names and the google_, ga_, "
        "firebase_ prefixes)",
        "destinations[0].event_params.9lives: '9lives' must start with a letter and hold only letters, digits and "
        "underscores",
    ]


def test_user_property_limits() -> None:
    data = event("login", {})
    data["user"]["zipcode"] = "z" * 37
    assert "is 37 characters; GA4 allows 36" in broken(data, user_properties={"zip": "user.zipcode"})
    problems = settings(
        user_properties={"a" * 25: "user.x", "user_id": "user.y", "first_visit_time": "user.z"}
    ).problems("d")
    assert [p.split(":")[0] for p in problems] == [
        f"d.user_properties.{'a' * 25}",
        "d.user_properties.user_id",
        "d.user_properties.first_visit_time",
    ]
    too_many = settings(user_properties={f"p{i}": "user.x" for i in range(26)}).problems("d")
    assert too_many == ["d.user_properties: 26 properties; GA4 allows 25"]


def test_value_needs_a_number_and_a_currency() -> None:
    assert "value is set without currency" in broken(event("purchase", {"value": 5, "id": "o"}))
    assert "currency: 'eur' is not a 3-letter ISO 4217 code" in broken(
        event("purchase", {"value": 5, "currency": "eur"})
    )
    assert "value: '5' is not a number" in broken(event("purchase", {"value": "5", "currency": "EUR"}))


def test_a_parameter_that_is_an_object_is_refused() -> None:
    assert "coupon: GA4 parameter values must be strings or numbers, not dict" in broken(
        event("begin_checkout", {"coupon": {"code": "x"}})
    )


# --- settings ------------------------------------------------------------------------------------------


def config_with(table: str) -> str:
    return f'[[destinations]]\nid = "ga4"\ntype = "ga4"\n{table}\n'


def test_a_config_with_a_ga4_destination_decodes() -> None:
    config = parse(config_with(f'measurement_id = "{MEASUREMENT_ID}"\napi_secret = "{SECRET}"'), env={})
    [dest] = config.destinations
    assert isinstance(dest, Ga4Destination)
    assert dest.endpoint == "https://www.google-analytics.com/mp/collect"
    assert (dest.validate, dest.batch_size, dest.engagement_time_msec, dest.client_id_cookie) == (False, 25, 1, "_ga")
    assert dest.secrets() == [SECRET]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('api_secret = "s"', "set exactly one of measurement_id (a web stream) or firebase_app_id"),
        ('api_secret = "s"\nmeasurement_id = "G-A1"\nfirebase_app_id = "1:2:android:3"', "set exactly one of"),
        ('api_secret = "s"\nmeasurement_id = "UA-1234-1"', "measurement_id: 'UA-1234-1' is not a GA4 measurement id"),
        ('api_secret = " "\nmeasurement_id = "G-A1"', "destinations[0].api_secret: cannot be empty"),
        ('api_secret = "s"\nmeasurement_id = "G-A1"\nbatch_size = 26', "batch_size: 26 is over 25"),
        ('api_secret = "s"\nmeasurement_id = "G-A1"\nendpoint = "ftp://x"', "endpoint: 'ftp://x' is not an http"),
        (
            'api_secret = "s"\nmeasurement_id = "G-A1"\nvalidate = true\nendpoint = "https://proxy.example/ga"',
            "validate: needs an endpoint ending in /mp/collect",
        ),
        ('measurement_id = "G-A1"', "api_secret"),
    ],
)
def test_bad_settings_are_named(table: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(config_with(table), env={})
    assert problem in str(info.value)


def test_the_secret_is_not_in_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse(config_with(f'api_secret = "{SECRET}"\nmeasurement_id = "bad"'), env={})
    assert SECRET not in str(info.value)


def test_urls_for_collect_and_validation() -> None:
    assert ga4.request_url(settings()) == (
        "https://www.google-analytics.com/mp/collect?measurement_id=G-TEST123&api_secret=mp%2Fs3cr%2Bt%3Dkey"
    )
    assert ga4.request_url(settings(validate=True)).startswith(
        "https://www.google-analytics.com/debug/mp/collect?measurement_id=G-TEST123&"
    )
    assert (
        ga4.validation_endpoint("https://eu.proxy.example/g/mp/collect")
        == "https://eu.proxy.example/g/debug/mp/collect"
    )


# --- requests, against the local GA4 server --------------------------------------------------------------


@pytest.fixture
def server():
    with Ga4Server(measurement_id=MEASUREMENT_ID, api_secret=SECRET) as running:
        yield running


def live(data: dict[str, Any]) -> dict[str, Any]:
    """The event dated now (the 72-hour limit is measured from the sender's clock)."""
    copy = json.loads(json.dumps(data))
    copy["context"]["event_timestamp"] = int(time.time() * 1000) - 1000
    return copy


def test_events_of_one_client_share_a_request_and_the_server_takes_it(server: Ga4Server) -> None:
    a1 = live(event("login", {"method": "a"}))
    b1 = live(event("search", {"search_term": "b"}, device={"cookie": "_ga=GA1.1.9.9"}))
    a2 = live(event("sign_up", {"method": "c"}))
    sender = ga4.Ga4Sender(settings(endpoint=server.url))
    try:
        assert sender.send([outgoing(a1, 0), outgoing(b1, 1), outgoing(a2, 2)]) == [DELIVERED] * 3
        exchanges = sender.take_exchanges()
    finally:
        sender.close()
    received = server.requests()
    assert [(r.path, r.status, r.messages) for r in received] == [("/mp/collect", 204, []), ("/mp/collect", 204, [])]
    assert received[0].query == {"measurement_id": MEASUREMENT_ID, "api_secret": SECRET}
    first, second = (r.payload for r in received)
    at_a1, at_a2 = (e["context"]["event_timestamp"] * 1000 for e in (a1, a2))
    assert first == {
        "client_id": "1234567890.1700000000",
        "user_id": "U-7",
        "timestamp_micros": at_a1,
        "events": [
            {"name": "login", "params": {"method": "a", **SESSION}, "timestamp_micros": at_a1},
            {"name": "sign_up", "params": {"method": "c", **SESSION}, "timestamp_micros": at_a2},
        ],
    }
    assert second == {
        "client_id": "9.9",
        "user_id": "U-7",
        "timestamp_micros": b1["context"]["event_timestamp"] * 1000,
        "events": [{"name": "search", "params": {"search_term": "b", "engagement_time_msec": 1}}],
    }
    assert [e.events for e in exchanges] == [2, 1]
    assert all(SECRET not in e.url and "api_secret=***" in e.url for e in exchanges)


def test_at_most_25_events_a_request(server: Ga4Server) -> None:
    events = [outgoing(live(event("login", {"method": str(i)})), i) for i in range(30)]
    sender = ga4.Ga4Sender(settings(endpoint=server.url))
    try:
        assert sender.send(events) == [DELIVERED] * 30
    finally:
        sender.close()
    assert [len(r.payload["events"]) for r in server.requests()] == [25, 5]
    assert all(r.messages == [] for r in server.requests())
    small = ga4.Ga4Sender(settings(endpoint=server.url, batch_size=10))
    try:
        requests, decided = small.build(events)
    finally:
        small.close()
    assert [len(r.indexes) for r in requests] == [10, 10, 10] and decided == {}


def test_an_event_whose_body_passes_130_kb_is_refused_and_others_still_go(server: Ga4Server) -> None:
    product = {"name": "n" * 100, "brand": "b" * 100, "category_1": "c" * 100, "category_2": "d" * 100}
    items = [{"id": f"{i:03d}" + "i" * 97, "variant": "v" * 100, "product": product} for i in range(200)]
    huge = live(event("view_item_list", {"items": items}))
    small = live(event("login", {"method": "x"}))
    sender = ga4.Ga4Sender(settings(endpoint=server.url))
    try:
        outcomes = sender.send([outgoing(huge, 0), outgoing(small, 1)])
    finally:
        sender.close()
    assert isinstance(outcomes[0], Rejected) and "GA4 takes bodies under 130 kB" in outcomes[0].reason
    assert outcomes[1] == DELIVERED
    assert [len(r.payload["events"]) for r in server.requests()] == [1]


def test_limits_and_skips_are_decided_per_event_without_sending(server: Ga4Server) -> None:
    good = live(event("login", {"method": "x"}))
    bad = live(event("session_start", {}))
    anonymous = live(event("login", {}, device={}))
    sender = ga4.Ga4Sender(settings(endpoint=server.url))
    try:
        outcomes = sender.send([outgoing(good, 0), outgoing(bad, 1), outgoing(anonymous, 2)])
    finally:
        sender.close()
    assert outcomes[0] == DELIVERED
    assert outcomes[1] == Rejected("GA4 limit: event name 'session_start' is reserved by GA4")
    assert isinstance(outcomes[2], Skipped) and "no client_id" in outcomes[2].reason
    assert len(server.requests()) == 1


def test_429_and_5xx_are_retried_honouring_retry_after(server: Ga4Server) -> None:
    server.fail(429, retry_after="120")
    server.fail(503)
    sender = ga4.Ga4Sender(settings(endpoint=server.url))
    data = live(event("login", {"method": "x"}))
    try:
        before = time.time()
        [first] = sender.send([outgoing(data)])
        [second] = sender.send([outgoing(data)])
        [third] = sender.send([outgoing(data)])
    finally:
        sender.close()
    assert isinstance(first, Retry) and first.reason.startswith("HTTP 429")
    assert first.not_before is not None and first.not_before >= before + 119
    assert isinstance(second, Retry) and second.reason.startswith("HTTP 503") and second.not_before is None
    assert third == DELIVERED


def test_validate_mode_sends_to_the_validation_server(server: Ga4Server) -> None:
    sender = ga4.Ga4Sender(settings(endpoint=server.url, validate=True))
    try:
        outcomes = sender.send([outgoing(live(event("login", {"method": "x"})))])
    finally:
        sender.close()
    [received] = server.requests()
    assert (received.path, received.status, received.messages) == ("/debug/mp/collect", 200, [])
    assert isinstance(outcomes[0], Skipped) and "validation server found no problem" in outcomes[0].reason


def test_validate_mode_turns_a_request_wide_message_into_a_rejection_of_every_event() -> None:
    with Ga4Server(measurement_id=MEASUREMENT_ID, api_secret="another-secret") as server:
        sender = ga4.Ga4Sender(settings(endpoint=server.url, validate=True))
        try:
            outcomes = sender.send([outgoing(live(event("login", {"method": str(i)})), i) for i in range(2)])
            exchanges = sender.take_exchanges()
        finally:
            sender.close()
    expected = Rejected("GA4 validation: VALUE_INVALID at api_secret: api_secret does not match this stream's secret.")
    assert outcomes == [expected, expected]
    assert '"validationMessages"' in (exchanges[0].response_body or "")


def test_validate_mode_rejects_only_the_events_a_message_names() -> None:
    answer = {
        "validationMessages": [
            {
                "fieldPath": "events",
                "description": "Event at index: [1] has invalid name [x]. Names must start with an alphabetic "
                "character.",
                "validationCode": "NAME_INVALID",
            },
            {
                "fieldPath": "events[2].params.items[0]",
                "description": "Item requires item_id or item_name.",
                "validationCode": "VALUE_REQUIRED",
            },
        ]
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    sender = ga4.Ga4Sender(settings(validate=True), transport=transport)
    try:
        outcomes = sender.send([outgoing(live(event("login", {"method": str(i)})), i) for i in range(3)])
    finally:
        sender.close()
    assert isinstance(outcomes[0], Skipped)
    assert outcomes[1] == Rejected(
        "GA4 validation: NAME_INVALID at events: Event at index: [1] has invalid name [x]. "
        "Names must start with an alphabetic character."
    )
    assert outcomes[2] == Rejected(
        "GA4 validation: VALUE_REQUIRED at events[2].params.items[0]: Item requires item_id or item_name."
    )


def test_an_unreadable_validation_answer_is_retried() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"<html>oops"))
    sender = ga4.Ga4Sender(settings(validate=True), transport=transport)
    try:
        [outcome] = sender.send([outgoing(live(event("login", {"method": "x"})))])
    finally:
        sender.close()
    assert isinstance(outcome, Retry) and "cannot read the answer" in outcome.reason


def test_the_secret_is_never_in_reasons_or_exchanges() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        if b"boom" in request.content:
            raise httpx.ConnectError(f"cannot reach {request.url}")
        return httpx.Response(400, text=f"bad request to {request.url}")

    sender = ga4.Ga4Sender(settings(), transport=httpx.MockTransport(echo))
    try:
        refused = sender.send([outgoing(live(event("login", {"method": "x"})))])
        unreachable = sender.send([outgoing(live(event("login", {"method": "boom"})))])
        exchanges = sender.take_exchanges()
    finally:
        sender.close()
    encoded = "mp%2Fs3cr%2Bt%3Dkey"
    assert isinstance(refused[0], Rejected) and isinstance(unreachable[0], Retry)
    texts = [refused[0].reason, unreachable[0].reason] + [json.dumps(msgspec.to_builtins(e)) for e in exchanges]
    assert "***" in refused[0].reason and "***" in unreachable[0].reason
    for text in texts:
        assert SECRET not in text and encoded not in text, text


def test_dry_run_records_the_request_and_sends_nothing(server: Ga4Server) -> None:
    sender = ga4.Ga4Sender(settings(endpoint=server.url, dry_run=True))
    try:
        [outcome] = sender.send([outgoing(live(event("login", {"method": "x"})))])
        [exchange] = sender.take_exchanges()
    finally:
        sender.close()
    assert isinstance(outcome, Skipped)
    assert exchange.dry_run and json.loads(exchange.request_body)["events"][0]["name"] == "login"
    assert server.requests() == []


# --- the local server refuses what Google refuses ---------------------------------------------------------


def check(body: dict[str, Any], **query: str) -> list[tuple[str, str]]:
    q = {"measurement_id": MEASUREMENT_ID, "api_secret": SECRET, **query}
    found = validation_messages(q, json.dumps(body).encode(), api_secret=SECRET, measurement_id=MEASUREMENT_ID)
    return [(m["fieldPath"], m["validationCode"]) for m in found]


def test_the_local_server_checks_like_the_validation_server() -> None:
    ok = {"client_id": "1.2", "events": [{"name": "login", "params": {"method": "x"}}]}
    assert check(ok) == []
    assert check({"events": ok["events"]}) == [("client_id", "VALUE_REQUIRED")]
    assert check({**ok, "events": [{"name": "_bad"}]}) == [("events", "NAME_INVALID")]
    assert check({**ok, "events": [{"name": "first_visit"}]}) == [("events", "NAME_RESERVED")]
    assert check({**ok, "events": [{"name": "login"}] * 26}) == [("events", "EXCEEDED_MAX_ENTITIES")]
    assert check({**ok, "events": [{"name": "p", "params": {"value": 1}}]}) == [
        ("events[0].params.currency", "VALUE_REQUIRED")
    ]
    assert check({**ok, "events": [{"name": "p", "params": {"items": [{"price": 1}]}}]}) == [
        ("events[0].params.items[0]", "VALUE_REQUIRED")
    ]
    assert check({**ok, "events": [{"name": "p", "params": {"m": "x" * 101}}]}) == [
        ("events[0].params.m", "VALUE_OUT_OF_BOUNDS")
    ]
    assert check({**ok, "consent": {"ad_user_data": "yes"}}) == [("consent.ad_user_data", "VALUE_INVALID")]
    assert check({**ok, "extra": 1}) == [("extra", "VALUE_INVALID")]
    assert check(ok, api_secret=TEST_KEY) == [("api_secret", "VALUE_INVALID")]
    assert check(ok, measurement_id="G-OTHER") == [("measurement_id", "VALUE_INVALID")]
