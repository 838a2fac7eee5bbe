"""The `meta_capi` destination: the vendor page's mapping tables written out literally, Meta's
normalization and hashing (expected digests from hashlib on literal text), the minimum-match rule,
Meta's limits, its error codes as outcomes, and the access token never shown. Senders talk to the
local Meta server (tooling.vendors.meta), which refuses what Meta would."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from typing import Any

import httpx
import msgspec
import pytest

from destinations.base import Delivered, OutgoingEvent, Rejected, Retry, Skipped
from destinations.meta_capi import MetaCapiSender, map_event
from tooling.vendors.meta import MetaServer, graph_error, rate_limit, server_error
from trackpipe.config import ConfigError, parse
from trackpipe.destination_settings import MetaCapiDestination

PIXEL = "123456789012345"
TOKEN = "EAAB-secret-token-0123456789"
NOW = 1_800_000_000.0
TS = int(NOW * 1000) - 60_000  # a minute ago, in ms


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def settings(**overrides: Any) -> MetaCapiDestination:
    return MetaCapiDestination(**{"id": "meta", "pixel_id": PIXEL, "access_token": TOKEN, **overrides})


def event(name: str = "purchase", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_name": name,
        "id": "O-1",
        "value": 42.5,
        "currency": "EUR",
        "user": {"email": "Jane.Doe@Example.com"},
        "context": {
            "event_id": "e-1",
            "event_timestamp": TS,
            "page": {"url": "https://shop.example/p?x=1"},
            "device": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0"},
        },
    }
    base.update(fields)
    return base


def outgoing(evt: dict[str, Any]) -> OutgoingEvent:
    return OutgoingEvent(evt["context"].get("event_id", "generated"), evt["event_name"], evt, msgspec.json.encode(evt))


def mapped(evt: dict[str, Any], now: float = NOW, **overrides: Any) -> Any:
    return map_event(outgoing(evt), settings(**overrides), now)


# --- event names: the vendor page's table, row by row -------------------------------------------

PAGE_EVENT_NAMES = [
    ("begin_checkout", "InitiateCheckout"),
    ("purchase", "Purchase"),
    ("add_to_cart", "AddToCart"),
    ("view_item", "ViewContent"),
    ("view_item_list", "ViewContent"),
    ("search", "Search"),
    ("add_payment_info", "AddPaymentInfo"),
    ("add_to_wishlist", "AddToWishlist"),
    ("generate_lead", "Lead"),
    ("page_view", "PageView"),
    ("sign_up", "CompleteRegistration"),
    ("contact", "Contact"),
    ("customize_product", "CustomizeProduct"),
    ("donate", "Donate"),
    ("find_location", "FindLocation"),
    ("schedule", "Schedule"),
    ("start_trial", "StartTrial"),
    ("submit_application", "SubmitApplication"),
    ("subscribe", "Subscribe"),
]


@pytest.mark.parametrize(("ours", "meta"), PAGE_EVENT_NAMES)
def test_standard_event_names(ours: str, meta: str) -> None:
    out = mapped(event(ours))
    assert out["event_name"] == meta


def test_other_names_are_sent_as_they_are_and_the_config_can_rename() -> None:
    assert mapped(event("custom_name"))["event_name"] == "custom_name"
    assert mapped(event("newsletter"), event_names={"newsletter": "Subscribe"})["event_name"] == "Subscribe"


# --- the vendor page's own example --------------------------------------------------------------

PAGE_EXAMPLE: dict[str, Any] = {
    "event_name": "purchase",
    "id": "purchase_id_1234",
    "type": "online",
    "user": {
        "email": "user@example.com",
        "id": "user_example_id",
        "tcId": "202205231352367212315156",
        "consistent_anonymous_id": "202205231352367212315156",
        "consent_categories": ["1", "2", "3", "4"],
    },
    "value": 246.9,
    "currency": "EUR",
    "items": [
        {"product": {"id": "product123"}, "price": "123.45", "id": "ET", "item_category": "Car", "item_quantity": 2}
    ],
    "context": {
        "event_id": "1a01c3e940f150eb9b8c542587f1abfd8f0e1cc1f",
        "event_timestamp": 1707830130234,
        "page": {"url": "https://site.com/path?s=2"},
        "device": {
            "ip": "123.123.123.123",
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/121.0.0.0 Safari/537.36",
        },
        "cookie": "_fbp=fb.1.1653472342558.832801021; some_other=cookie;",
    },
    "integrations": {
        "facebook": {"custom_data": {"category": "category1"}, "user_data": {"fbp": "fb.1.1558571054389.1098115397"}}
    },
}


def test_the_vendor_pages_example() -> None:
    out = map_event(outgoing(copy.deepcopy(PAGE_EXAMPLE)), settings(), 1707830130.234 + 3600)
    assert out == {
        "event_name": "Purchase",
        "event_time": 1707830130,
        "event_id": "1a01c3e940f150eb9b8c542587f1abfd8f0e1cc1f",
        "event_source_url": "https://site.com/path?s=2",
        "action_source": "website",
        "user_data": {
            # The page's digest of user@example.com.
            "em": ["b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514"],
            # user.id, then user.tcId (the page's order), hashed as Meta recommends.
            "external_id": [sha("user_example_id"), sha("202205231352367212315156")],
            "client_ip_address": "123.123.123.123",
            "client_user_agent": PAGE_EXAMPLE["context"]["device"]["user_agent"],
            # integrations.facebook.user_data.fbp wins over the _fbp cookie.
            "fbp": "fb.1.1558571054389.1098115397",
        },
        "custom_data": {
            "id": "purchase_id_1234",  # the event's own properties are copied (the page's default)
            "order_id": "purchase_id_1234",
            "currency": "EUR",
            "value": 246.9,
            "contents": [{"id": "product123", "quantity": 2, "item_price": 123.45}],
            "num_items": 1,
            "category": "category1",
        },
    }


# --- user_data ----------------------------------------------------------------------------------


def test_every_user_field_is_normalized_and_hashed_as_meta_specifies() -> None:
    user = {
        "email": "  Jane.Doe@Example.COM ",
        "phone": "+1 (650) 555-1212",
        "gender": "Female",
        "birthdate": "1990-01-31",
        "lastname": "O'Brien",
        "firstname": "Zoë",
        "city": "San Francisco",
        "state": "California",
        "zipcode": "94035-1234",
        "country": "US",
        "id": "  User-7 ",
    }
    out = mapped(event(user=user))["user_data"]
    assert out == {
        "em": [sha("jane.doe@example.com")],
        "ph": [sha("16505551212")],
        "ge": sha("f"),
        "db": sha("19900131"),
        "ln": sha("obrien"),
        "fn": sha("zoë"),
        "ct": sha("sanfrancisco"),
        "st": sha("ca"),
        "zp": sha("94035"),
        "country": sha("us"),
        "external_id": [sha("user-7")],
        "client_ip_address": "198.51.100.4",  # never hashed
        "client_user_agent": "Mozilla/5.0",
    }


def test_already_hashed_values_are_left_alone_and_overrides_win() -> None:
    digest = sha("someone@example.com")
    evt = event(
        user={"email": digest, "phone": "+33 6 12 34 56 78"},
        integrations={"facebook": {"user_data": {"ph": "+44 7700 900123", "fbc": "fb.1.1.override"}}},
    )
    out = mapped(evt)["user_data"]
    assert out["em"] == [digest]
    assert out["ph"] == [sha("447700900123")]
    assert out["fbc"] == "fb.1.1.override"


def test_fbp_and_fbc_from_cookies_and_fbc_from_the_click_id() -> None:
    device = {"ip": "198.51.100.4", "user_agent": "UA", "cookie": "_fbp=fb.1.111.222; _fbc=fb.1.333.abc; x=1"}
    evt = event(context={**event()["context"], "device": device})
    out = mapped(evt)["user_data"]
    assert out["fbp"] == "fb.1.111.222"
    assert out["fbc"] == "fb.1.333.abc"

    page = {"url": "https://shop.example/landing?utm=x&fbclid=IwAR0click"}
    evt = event(context={**event()["context"], "page": page})
    assert mapped(evt)["user_data"]["fbc"] == f"fb.1.{TS}.IwAR0click"


def test_phone_numbers_get_the_default_country_code() -> None:
    out = mapped(event(user={"phone": "06 12 34 56 78"}), default_phone_country_code="33")
    assert out["user_data"]["ph"] == [sha("33612345678")]


# --- the minimum-match rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "device", "sent"),
    [
        pytest.param({"email": "a@b.example"}, {"user_agent": "UA"}, True, id="email"),
        pytest.param({"phone": "+1 650 555 1212"}, {"user_agent": "UA"}, True, id="phone"),
        pytest.param({"id": "7"}, {"user_agent": "UA"}, True, id="external-id"),
        pytest.param({}, {"user_agent": "UA", "cookie": "_fbp=fb.1.1.2"}, True, id="fbp"),
        pytest.param({"city": "Paris"}, {"ip": "198.51.100.4", "user_agent": "UA"}, True, id="three-others"),
        pytest.param({}, {"ip": "198.51.100.4", "user_agent": "UA"}, False, id="ip-and-ua-only"),
        pytest.param({"email": "not an email"}, {"user_agent": "UA"}, False, id="unusable-email"),
    ],
)
def test_minimum_match(user: dict[str, Any], device: dict[str, Any], sent: bool) -> None:
    evt = event("page_view", user=user, context={**event()["context"], "device": device})
    out = mapped(evt)
    if sent:
        assert isinstance(out, dict), out
    else:
        assert isinstance(out, Skipped)
        assert "not enough customer information" in out.reason
        assert "client_user_agent)" in out.reason  # names what it has


# --- root fields, action_source and Meta's rules ------------------------------------------------


def test_root_fields() -> None:
    evt = event(
        "add_to_cart",
        integrations={"facebook": {"event_id": "pixel-77", "opt_out": False, "data_processing_options": ["LDU"]}},
    )
    evt["context"]["page"]["referrer"] = "https://ref.example/"
    out = mapped(evt)
    assert out["event_time"] == TS // 1000  # seconds
    assert out["event_id"] == "pixel-77"  # the pixel's id, for browser/server deduplication
    assert out["event_source_url"] == "https://shop.example/p?x=1"
    assert out["referrer_url"] == "https://ref.example/"
    assert out["opt_out"] is False
    assert out["data_processing_options"] == ["LDU"]
    assert mapped(event())["event_id"] == "e-1"  # otherwise the event's own id


def test_action_source() -> None:
    assert mapped(event())["action_source"] == "website"
    offline = event(type="offline")
    del offline["context"]["page"]
    assert mapped(offline)["action_source"] == "physical_store"  # no page needed then
    assert mapped(event(integrations={"facebook": {"action_source": "chat"}}))["action_source"] == "chat"
    assert mapped(event(), action_source="system_generated")["action_source"] == "system_generated"


def test_event_time_rules() -> None:
    old = event()
    old["context"]["event_timestamp"] = int((NOW - 8 * 86_400) * 1000)
    refused = mapped(old)
    assert isinstance(refused, Rejected) and "more than 7 days old" in refused.reason
    old["type"] = "offline"  # physical_store events may be up to 62 days old
    assert isinstance(mapped(old), dict)
    future = event()
    future["context"]["event_timestamp"] = int((NOW + 3600) * 1000)
    assert mapped(future)["event_time"] == int(NOW)  # a clock ahead of ours reads as now


def test_meta_required_fields_are_checked_before_sending() -> None:
    no_url = event()
    del no_url["context"]["page"]
    assert "event_source_url" in mapped(no_url).reason
    no_ua = event()
    no_ua["context"]["device"] = {"ip": "198.51.100.4"}
    assert "client_user_agent" in mapped(no_ua).reason
    no_value = event()
    del no_value["value"]
    refused = mapped(no_value)
    assert isinstance(refused, Rejected) and "value" in refused.reason
    assert isinstance(mapped(event(value="abc")), Rejected)


# --- custom_data --------------------------------------------------------------------------------


def test_contents_when_every_item_has_id_quantity_and_price() -> None:
    items = [
        {"quantity": 2, "product": {"id": "A", "price": 10.5, "name": "Mug", "category_1": "Kitchen"}},
        {"quantity": 1, "product": {"id": 7, "price": "3"}},
    ]
    out = mapped(event(items=items, search_term="mugs", status="pending"), content_type="product")["custom_data"]
    assert out["contents"] == [
        {"id": "A", "quantity": 2, "item_price": 10.5},
        {"id": "7", "quantity": 1, "item_price": 3.0},
    ]
    assert "content_ids" not in out
    assert out["content_name"] == "Mug"
    assert out["content_category"] == "Kitchen"
    assert out["content_type"] == "product"
    assert out["num_items"] == 2
    assert out["search_string"] == "mugs"
    assert out["status"] == "pending"
    assert out["order_id"] == "O-1"
    assert (out["value"], out["currency"]) == (42.5, "EUR")


def test_content_ids_when_an_item_lacks_a_price() -> None:
    items = [{"quantity": 2, "product": {"id": "A", "price": 10}}, {"quantity": 1, "product": {"id": "B"}}]
    out = mapped(event(items=items))["custom_data"]
    assert out["content_ids"] == ["A", "B"]
    assert "contents" not in out


def test_currency_from_the_first_item_and_overrides() -> None:
    evt = event(
        items=[{"currency": "USD", "product": {"id": "A"}}], integrations={"facebook": {"custom_data": {"x": 1}}}
    )
    del evt["currency"]
    out = mapped(evt)["custom_data"]
    assert out["currency"] == "USD"
    assert out["x"] == 1


def test_properties_are_copied_unless_turned_off() -> None:
    assert mapped(event(payment_method="card"))["custom_data"]["payment_method"] == "card"
    out = mapped(event(payment_method="card"), custom_data_all_properties=False)["custom_data"]
    assert "payment_method" not in out
    assert out["value"] == 42.5


# --- settings -----------------------------------------------------------------------------------


def config(body: str) -> str:
    return f'redis_url = "redis://127.0.0.1:6379/0"\n\n[[destinations]]\nid = "meta"\ntype = "meta_capi"\n{body}'


def test_settings_from_the_config() -> None:
    loaded = parse(config(f'pixel_id = "{PIXEL}"\naccess_token = "{TOKEN}"\ntest_event_code = "TEST123"\n'))
    dest = loaded.destinations[0]
    assert isinstance(dest, MetaCapiDestination)
    assert (dest.api_version, dest.endpoint, dest.batch_size) == ("v23.0", "https://graph.facebook.com", 1000)
    assert dest.secrets() == [TOKEN]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (f'pixel_id = "{PIXEL}"\n', "access_token"),
        (f'pixel_id = "pix-1"\naccess_token = "{TOKEN}"\n', "pixel_id"),
        (f'pixel_id = "{PIXEL}"\naccess_token = "{TOKEN}"\nbatch_size = 1001\n', "batch_size"),
        (f'pixel_id = "{PIXEL}"\naccess_token = "{TOKEN}"\napi_version = "21"\n', "api_version"),
        (f'pixel_id = "{PIXEL}"\naccess_token = "{TOKEN}"\nendpoint = "ftp://x"\n', "endpoint"),
        (f'pixel_id = "{PIXEL}"\naccess_token = "{TOKEN}"\naction_source = "app"\n', "action_source"),
    ],
)
def test_bad_settings_name_the_key(body: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(config(body))
    assert names in str(info.value)
    assert TOKEN not in str(info.value)


# --- sending to the local Meta server -----------------------------------------------------------


@pytest.fixture
def meta():
    with MetaServer(pixel_id=PIXEL, access_token=TOKEN, api_version="v23.0") as server:
        yield server


def sender(server: MetaServer, **overrides: Any) -> MetaCapiSender:
    return MetaCapiSender(settings(endpoint=server.url, **overrides))


def live(name: str = "purchase", event_id: str = "e-1", **fields: Any) -> OutgoingEvent:
    evt = event(name, **fields)
    evt["context"] = {**evt["context"], "event_id": event_id, "event_timestamp": int(time.time() * 1000) - 5000}
    return outgoing(evt)


def test_a_batch_reaches_meta_in_its_format_and_is_delivered(meta: MetaServer) -> None:
    s = sender(meta)
    try:
        outcomes = s.send([live(event_id="a"), live("page_view", event_id="b", user={}), live(event_id="c")])
        exchanges = s.take_exchanges()
    finally:
        s.close()
    assert isinstance(outcomes[0], Delivered) and isinstance(outcomes[2], Delivered)
    assert isinstance(outcomes[1], Skipped)  # no customer information: not sent
    [request] = meta.requests()
    assert request.path == f"/v23.0/{PIXEL}/events"
    assert request.status == 200 and request.answer["events_received"] == 2
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body["access_token"] == TOKEN
    assert "test_event_code" not in body
    assert [e["event_id"] for e in body["data"]] == ["a", "c"]
    assert body["data"][0]["user_data"]["em"] == [sha("jane.doe@example.com")]
    # The inspector's record: the exact request, the token masked.
    [exchange] = exchanges
    assert exchange.status == 200 and exchange.events == 2
    assert TOKEN not in exchange.request_body and TOKEN not in exchange.url
    assert json.loads(exchange.request_body)["access_token"] == "***"


def test_test_codes_group_events_into_their_own_requests(meta: MetaServer) -> None:
    s = sender(meta, test_event_code="TEST_CFG")
    try:
        outcomes = s.send(
            [
                live(event_id="a"),
                live(event_id="b", test_code="T-1"),
                live(event_id="c"),
                live(event_id="d", test_code="T-1"),
            ]
        )
    finally:
        s.close()
    assert all(isinstance(o, Delivered) for o in outcomes)
    bodies = [r.json() for r in meta.requests()]
    assert [(b["test_event_code"], [e["event_id"] for e in b["data"]]) for b in bodies] == [
        ("TEST_CFG", ["a", "c"]),
        ("T-1", ["b", "d"]),
    ]


def test_batches_are_cut_at_batch_size(meta: MetaServer) -> None:
    s = sender(meta, batch_size=2)
    try:
        outcomes = s.send([live(event_id=str(i)) for i in range(5)])
    finally:
        s.close()
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert [len(r.json()["data"]) for r in meta.requests()] == [2, 2, 1]


@pytest.mark.parametrize(
    ("fault", "kind", "in_reason"),
    [
        pytest.param(rate_limit(4), Retry, "Meta error 4", id="app-rate-limit"),
        pytest.param(rate_limit(17), Retry, "Meta error 17", id="user-rate-limit"),
        pytest.param(rate_limit(32), Retry, "Meta error 32", id="page-rate-limit"),
        pytest.param(rate_limit(613), Retry, "Meta error 613", id="calls-per-hour"),
        pytest.param(rate_limit(80004, status=429), Retry, "Meta error 80004", id="ads-rate-limit-429"),
        pytest.param(server_error(500), Retry, "Meta error 1/99", id="unknown-500"),
        pytest.param(server_error(503), Retry, "Meta error 2", id="unavailable-503"),
        pytest.param(graph_error(400, "Invalid parameter", 100, 2804019), Rejected, "Meta error 100/2804019", id="100"),
        pytest.param(graph_error(400, "Error validating access token", 190, 463), Rejected, "Meta error 190", id="190"),
        pytest.param(graph_error(403, "Permissions error", 200), Rejected, "Meta error 200", id="200"),
        pytest.param(graph_error(400, "Application does not have permission", 10), Rejected, "Meta error 10", id="10"),
    ],
)
def test_meta_error_codes_become_retry_or_dead_letter(meta: MetaServer, fault: Any, kind: type, in_reason: str) -> None:
    meta.fail_next(fault)
    s = sender(meta)
    before = time.time()
    try:
        outcomes = s.send([live(event_id="a"), live(event_id="b")])
    finally:
        s.close()
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, kind), outcome
        assert in_reason in outcome.reason
        assert "fbtrace_id" in outcome.reason
        assert TOKEN not in outcome.reason
    if kind is Retry and json.loads(fault.body)["error"]["code"] in (4, 17, 32, 613, 80004):
        assert outcomes[0].not_before is not None and outcomes[0].not_before >= before + 60


def test_a_retry_after_longer_than_the_pause_is_honoured(meta: MetaServer) -> None:
    meta.fail_next(rate_limit(17, status=429, retry_after="600"))
    s = sender(meta)
    before = time.time()
    try:
        [outcome] = s.send([live()])
    finally:
        s.close()
    assert isinstance(outcome, Retry) and outcome.not_before is not None
    assert outcome.not_before >= before + 600


def test_a_wrong_token_is_a_dead_letter_and_no_token_is_shown(meta: MetaServer) -> None:
    s = MetaCapiSender(settings(endpoint=meta.url, access_token="EAAB-wrong-token-9876543210"))
    try:
        [outcome] = s.send([live()])
        [exchange] = s.take_exchanges()
    finally:
        s.close()
    assert isinstance(outcome, Rejected)
    assert "Meta error 190" in outcome.reason
    assert meta.requests()[0].status == 400
    assert "EAAB-wrong-token-9876543210" not in exchange.request_body
    assert "EAAB-wrong-token-9876543210" not in (exchange.response_body or "")


def test_an_unknown_pixel_is_a_dead_letter(meta: MetaServer) -> None:
    s = MetaCapiSender(MetaCapiDestination(id="m", pixel_id="999", access_token=TOKEN, endpoint=meta.url))
    try:
        [outcome] = s.send([live()])
    finally:
        s.close()
    assert isinstance(outcome, Rejected) and "Meta error 100/33" in outcome.reason


def test_a_connection_error_is_retried_without_the_token() -> None:
    with MetaServer(pixel_id=PIXEL, access_token=TOKEN) as server:
        url = server.url
    s = MetaCapiSender(settings(endpoint=url))
    try:
        [outcome] = s.send([live()])
    finally:
        s.close()
    assert isinstance(outcome, Retry)
    assert TOKEN not in outcome.reason


def test_dry_run_records_the_request_and_sends_nothing(meta: MetaServer) -> None:
    s = sender(meta, dry_run=True)
    try:
        [outcome] = s.send([live()])
        [exchange] = s.take_exchanges()
    finally:
        s.close()
    assert isinstance(outcome, Skipped)
    assert exchange.dry_run and exchange.status is None
    assert json.loads(exchange.request_body)["data"][0]["event_name"] == "Purchase"
    assert TOKEN not in exchange.request_body
    assert meta.requests() == []


# --- the local server refuses what Meta refuses --------------------------------------------------


def good_event() -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 10,
        "action_source": "website",
        "event_source_url": "https://shop.example/",
        "user_data": {"em": [sha("a@b.example")], "client_user_agent": "UA", "client_ip_address": "198.51.100.4"},
        "custom_data": {"value": 1.5, "currency": "EUR"},
    }


def post(server: MetaServer, data: Any, token: str = TOKEN, path: str | None = None) -> httpx.Response:
    url = server.url + (path or f"/v23.0/{PIXEL}/events")
    return httpx.post(url, json={"data": data, "access_token": token}, timeout=10)


def test_the_local_server_accepts_a_good_event(meta: MetaServer) -> None:
    answer = post(meta, [good_event()])
    assert answer.status_code == 200
    assert answer.json()["events_received"] == 1 and answer.json()["messages"] == []


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        pytest.param(lambda e: e["user_data"].update(em=["jane@example.com"]), 100, "user_data.em", id="unhashed-em"),
        pytest.param(lambda e: e["user_data"].update(ph=sha("1").upper()), 100, "user_data.ph", id="upper-hex"),
        pytest.param(lambda e: e["user_data"].update(client_ip_address=sha("1")), 100, "client_ip", id="hashed-ip"),
        pytest.param(lambda e: e.update(user_data={}), 100, "customer information", id="no-user-data"),
        pytest.param(lambda e: e.update(event_time=int(time.time()) - 8 * 86_400), 100, "7 days", id="too-old"),
        pytest.param(lambda e: e.update(event_time=int(time.time()) + 600), 100, "future", id="future"),
        pytest.param(lambda e: e.update(event_time=time.time()), 100, "whole seconds", id="float-time"),
        pytest.param(lambda e: e.pop("event_source_url"), 100, "event_source_url", id="no-url"),
        pytest.param(lambda e: e["user_data"].pop("client_user_agent"), 100, "client_user_agent", id="no-ua"),
        pytest.param(lambda e: e.update(action_source="app2"), 100, "action_source", id="bad-source"),
        pytest.param(lambda e: e["custom_data"].pop("currency"), 100, "Purchase", id="purchase-no-currency"),
        pytest.param(lambda e: e.pop("event_name"), 100, "event_name", id="no-name"),
    ],
)
def test_the_local_server_refuses_what_meta_refuses(meta: MetaServer, change: Any, code: int, words: str) -> None:
    bad = good_event()
    change(bad)
    answer = post(meta, [good_event(), bad])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == code
    assert words in error["error_user_msg"]
    assert "data[1]" in error["error_user_msg"]
    assert error["fbtrace_id"]


def test_the_local_server_checks_token_pixel_path_and_size(meta: MetaServer) -> None:
    assert post(meta, [good_event()], token="nope").json()["error"]["code"] == 190
    assert post(meta, [good_event()], token="").json()["error"]["code"] == 104
    assert post(meta, [good_event()], path="/v23.0/42/events").json()["error"]["code"] == 100
    assert post(meta, [good_event()], path=f"/v99.0/{PIXEL}/events").json()["error"]["code"] == 2500
    assert post(meta, [good_event()] * 1000).status_code == 200
    too_many = post(meta, [good_event()] * 1001)
    assert too_many.status_code == 400 and "at most 1000" in too_many.json()["error"]["error_user_msg"]
    assert post(meta, []).json()["error"]["code"] == 100


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda e: e.update(items={"a": 1}), id="items-object"),
        pytest.param(lambda e: e.update(items=["x", None, 3]), id="items-scalars"),
        pytest.param(lambda e: e.update(user="jane"), id="user-string"),
        pytest.param(lambda e: e.update(integrations={"facebook": ["x"]}), id="facebook-list"),
        pytest.param(lambda e: e.update(integrations={"facebook": {"user_data": {"em": {"x": 1}}}}), id="em-object"),
        pytest.param(lambda e: e["context"].update(page={"url": 42}), id="url-number"),
        pytest.param(lambda e: e["context"].update(device="phone"), id="device-string"),
        pytest.param(lambda e: e["context"].update(event_timestamp="soon"), id="timestamp-string"),
    ],
)
def test_odd_shapes_map_or_are_refused_never_crash(change: Any) -> None:
    evt = event()
    change(evt)
    out = mapped(evt)
    assert isinstance(out, dict | Skipped | Rejected)
    if isinstance(out, dict):
        json.dumps(out)  # what is sent is plain JSON
