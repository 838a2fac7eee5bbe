"""The `snapchat_capi` destination: the vendor page's event table and field mappings, custom events, the
identity requirement, hashing, Snapchat's answers, the local Snapchat server's checks, and the access
token kept out of everything shown.

Expected payloads are written out from the vendor page's tables; expected hashes are computed here
with hashlib on literal normalized strings, not with the code under test."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from destinations.base import DELIVERED, OutgoingEvent, Rejected, Retry, Skipped
from destinations.snapchat_capi import IDENTITY_REASON, SnapchatCapiSender, map_event
from tooling.vendors.snapchat import Answer, Invalid, SnapchatServer, check
from trackpipe.config import ConfigError, parse
from trackpipe.destination_settings import SnapchatCapiDestination

TOKEN = "snap-secret/token+42"  # characters that URL-encoding changes: masked in both forms
PIXEL = "0b5e6f2a-pixel"
APP = "snap-app-77"
NOW = 1_700_000_100.0
EMAIL_HASH = hashlib.sha256(b"jane@example.com").hexdigest()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def settings(**extra: Any) -> SnapchatCapiDestination:
    return SnapchatCapiDestination(**{"id": "snap", "pixel_id": PIXEL, "access_token": TOKEN, **extra})


def outgoing(name: str, **fields: Any) -> OutgoingEvent:
    event: dict[str, Any] = {
        "event_name": name,
        "user": {"email": "Jane@Example.com"},
        "context": {
            "event_id": f"ev-{name}",
            "event_timestamp": 1_700_000_000_123,
            "page": {"url": "https://shop.example/p"},
        },
        **fields,
    }
    return OutgoingEvent(event_id=f"ev-{name}", event_name=name, event=event, body=json.dumps(event).encode())


# The vendor page's quick reference, row by row.
TABLE = {
    "achievement_unlocked": "ACHIEVEMENT_UNLOCKED",
    "ad_click": "AD_CLICK",
    "ad_view": "AD_VIEW",
    "add_payment_info": "ADD_BILLING",
    "add_billing": "ADD_BILLING",
    "add_to_cart": "ADD_CART",
    "add_to_wishlist": "ADD_TO_WISHLIST",
    "app_open": "APP_OPEN",
    "begin_checkout": "START_CHECKOUT",
    "complete_tutorial": "COMPLETE_TUTORIAL",
    "generate_lead": "SUBSCRIBE",
    "invite": "INVITE",
    "level_complete": "LEVEL_COMPLETE",
    "login": "LOGIN",
    "page_view": "PAGE_VIEW",
    "rate": "RATE",
    "reserve": "RESERVE",
    "save": "SAVE",
    "search": "SEARCH",
    "share": "SHARE",
    "sign_up": "SIGN_UP",
    "spent_credits": "SPENT_CREDITS",
    "start_trial": "START_TRIAL",
    "view_item": "VIEW_CONTENT",
    "view_item_list": "LIST_VIEW",
}


@pytest.mark.parametrize(("name", "expected"), sorted(TABLE.items()))
def test_every_event_of_the_table(name: str, expected: str) -> None:
    asset, entry = map_event(outgoing(name), settings(), NOW)
    assert asset == PIXEL
    assert entry == {
        "event_name": expected,
        "event_time": 1_700_000_000,
        "action_source": "WEB",
        "event_source_url": "https://shop.example/p",
        "event_id": f"ev-{name}",
        "user_data": {"em": [EMAIL_HASH]},
        "custom_data": {},
    }


def test_custom_events_and_unknown_events() -> None:
    skipped = map_event(outgoing("newsletter"), settings(), NOW)
    assert isinstance(skipped, Skipped) and "CUSTOM_EVENT_1..5" in skipped.reason
    mapped = map_event(outgoing("newsletter"), settings(custom_events={"newsletter": "CUSTOM_EVENT_3"}), NOW)
    assert mapped[1]["event_name"] == "CUSTOM_EVENT_3"
    with pytest.raises(ConfigError, match="custom_events"):
        parse(config('custom_events = { newsletter = "CUSTOM_EVENT_6" }\n'))


def test_a_purchase_maps_every_field_of_the_page() -> None:
    event = {
        "event_name": "purchase",
        "id": "O-1",
        "value": 42.5,
        "currency": "EUR",
        "user": {
            "id": "U-7",
            "email": " Jane@Example.com",
            "phone": "+1 (555) 123-4567",
            "firstname": "Jane",
            "lastname": "O'Neil",
            "gender": "female",
            "city": "New York",
            "state_short": "NY",
            "zipcode": "10001-1234",
            "country": "US",
        },
        "items": [
            {"id": "SKU-9", "quantity": 2, "product": {"price": 17.5, "category_1": "kitchen"}},
            {"id": "SKU-10", "quantity": 1, "product": {"price": 7.5, "delivery_category": "home_delivery"}},
        ],
        "partners": {"snapchat": {"click_id": "CLICK-1", "dpo": ["LDU"], "test_code": "T-1", "predicted_ltv": 90}},
        "context": {
            "event_id": "c0ffee-1",
            "event_timestamp": 1_700_000_000_999,
            "page": {"url": "https://shop.example/thanks", "title": "Thanks"},
            "device": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0", "cookie": "a=1; _scid=SCID-COOKIE"},
        },
    }
    mapped = map_event(OutgoingEvent("c0ffee-1", "purchase", event, b"{}"), settings(send_ip_address=True), NOW)
    assert mapped == (
        PIXEL,
        {
            "event_name": "PURCHASE",
            "event_time": 1_700_000_000,
            "action_source": "WEB",
            "event_source_url": "https://shop.example/thanks",
            "event_id": "O-1",
            "data_processing_options": ["LDU"],
            "test_event_code": "T-1",
            "user_data": {
                "em": [sha("jane@example.com")],
                "ph": [sha("15551234567")],
                "fn": [sha("jane")],
                "ln": [sha("oneil")],
                "ge": [sha("f")],
                "ct": [sha("newyork")],
                "st": [sha("ny")],
                "zp": [sha("10001")],
                "country": [sha("us")],
                "external_id": [sha("u-7")],
                "client_ip_address": "198.51.100.4",
                "client_user_agent": "Mozilla/5.0",
                "sc_cookie1": "SCID-COOKIE",
                "sc_click_id": "CLICK-1",
            },
            "custom_data": {
                "content_ids": ["SKU-9", "SKU-10"],
                "content_category": ["kitchen"],
                "contents": [
                    {"id": "SKU-9", "quantity": 2, "item_price": 17.5},
                    {"id": "SKU-10", "quantity": 1, "item_price": 7.5, "delivery_category": "home_delivery"},
                ],
                "num_items": 2,
                "content_type": "product",
                "content_name": "Thanks",
                "value": 42.5,
                "currency": "EUR",
                "order_id": "O-1",
                "predicted_ltv": 90,
            },
        },
    )


def test_the_identity_requirement() -> None:
    device = {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0"}
    context = {"event_id": "e", "page": {"url": "https://x/"}, "device": device}
    # IP and user agent count only when the IP is sent (the page's "Send IP Address", off by default).
    skipped = map_event(outgoing("page_view", user={}, context=context), settings(), NOW)
    assert isinstance(skipped, Skipped) and skipped.reason.startswith(IDENTITY_REASON)
    assert "send_ip_address" in skipped.reason
    sent = map_event(outgoing("page_view", user={}, context=context), settings(send_ip_address=True), NOW)
    assert sent[1]["user_data"] == {"client_ip_address": "198.51.100.4", "client_user_agent": "Mozilla/5.0"}
    only_ip = {**context, "device": {"ip": "198.51.100.4"}}
    assert isinstance(
        map_event(outgoing("page_view", user={}, context=only_ip), settings(send_ip_address=True), NOW), Skipped
    )
    phone = map_event(outgoing("page_view", user={"phone": "0033 6 12 34 56 78"}), settings(), NOW)
    assert phone[1]["user_data"] == {"ph": [sha("33612345678")]}
    madid = {**context, "device": {"advertising_id": "MAID-1"}}
    assert map_event(outgoing("page_view", user={}, context=madid), settings(), NOW)[1]["user_data"] == {
        "madid": "MAID-1"
    }
    # A producer's own hash counts and is kept.
    prehashed = map_event(outgoing("page_view", user={"email_sha256": EMAIL_HASH}), settings(), NOW)
    assert prehashed[1]["user_data"] == {"em": [EMAIL_HASH]}


def test_what_snapchat_would_refuse_is_refused_before_sending() -> None:
    no_value = map_event(outgoing("purchase", currency="EUR"), settings(), NOW)
    assert isinstance(no_value, Rejected) and "value and currency" in no_value.reason
    no_url = map_event(outgoing("page_view", context={"event_id": "e"}), settings(), NOW)
    assert isinstance(no_url, Rejected) and "event_source_url" in no_url.reason
    bad_source = outgoing("page_view", partners={"snapchat": {"event_conversion_type": "shop"}})
    assert isinstance(map_event(bad_source, settings(), NOW), Rejected)
    # An offline event needs no URL.
    offline = outgoing(
        "page_view", context={"event_id": "e"}, partners={"snapchat": {"event_conversion_type": "offline"}}
    )
    assert map_event(offline, settings(), NOW)[1]["action_source"] == "OFFLINE"


APP_CONTEXT = {
    "event_id": "ev-app",
    "event_timestamp": 1_700_000_000_123,
    "app": {"name": "Shop", "namespace": "com.shop.app", "version": "2.1", "version_long": "2.1.0 (77)"},
    "device": {
        "advertising_id": "MAID-1",
        "idfv": "IDFV-ABC",
        "ad_tracking_enabled": True,
        "os": {"name": "iOS", "version": "17.1"},
        "model": "iPhone15,2",
        "language": "fr_FR",
        "timezone_short": "CET",
        "network": {"carrier": "Orange"},
        "screen": {"width": 1179, "height": 2556, "density": 3},
        "cpu_core": 6,
        "storage": 128,
        "ex_storage": 64,
        "timezone": "Europe/Paris",
    },
}


def test_app_events_go_to_the_snap_app_id_with_extinfo() -> None:
    refused = map_event(outgoing("app_open", context=APP_CONTEXT), settings(), NOW)
    assert isinstance(refused, Rejected) and "snap_app_id" in refused.reason
    asset, entry = map_event(outgoing("app_open", context=APP_CONTEXT), settings(snap_app_id=APP), NOW)
    assert (asset, entry["action_source"]) == (APP, "MOBILE_APP")
    assert entry["app_data"] == {
        "app_id": "com.shop.app",
        "extinfo": ["i2", "com.shop.app", "2.1", "2.1.0 (77)", "17.1", "iPhone15,2", "fr_FR", "CET", "Orange",
                    "1179", "2556", "3", "6", "128", "64", "Europe/Paris"],
        "advertiser_tracking_enabled": 1,
    }  # fmt: skip
    assert entry["user_data"]["madid"] == "MAID-1" and entry["user_data"]["idfv"] == sha("idfv-abc")
    assert entry["custom_data"] == {"os_version": "17.1", "device_model": "iPhone15,2"}
    assert "event_source_url" not in entry


def test_the_local_server_refuses_what_snapchat_refuses() -> None:
    base = {
        "event_name": "PAGE_VIEW",
        "event_time": 1_700_000_000,
        "action_source": "WEB",
        "event_source_url": "https://x/",
        "user_data": {"em": [EMAIL_HASH]},
    }
    check({"data": [base]}, app_event_expected=False)
    bad = [
        {**base, "event_name": "ADD_TO_BASKET"},
        {**base, "event_time": 1_700_000_000_000},
        {**base, "action_source": "web"},
        {k: v for k, v in base.items() if k != "event_source_url"},
        {**base, "user_data": {"em": ["jane@example.com"]}},
        {**base, "user_data": {"em": EMAIL_HASH}},
        {**base, "user_data": {"client_user_agent": "Mozilla/5.0"}},
        {**base, "user_data": {"client_ip_address": sha("1.2.3.4"), "client_user_agent": "UA"}},
        {**base, "event_name": "PURCHASE", "custom_data": {"value": 1}},
    ]
    for event in bad:
        with pytest.raises(Invalid):
            check({"data": [event]}, app_event_expected=False)
    with pytest.raises(Invalid, match="data"):
        check({"data": [base] * 2001}, app_event_expected=False)
    with pytest.raises(Invalid, match="action_source"):
        check({"data": [base]}, app_event_expected=True)


def test_delivery_to_the_local_server_and_the_token_never_shown() -> None:
    with SnapchatServer(access_token=TOKEN, pixel_id=PIXEL, snap_app_id=APP) as server:
        sender = SnapchatCapiSender(settings(endpoint=server.endpoint, snap_app_id=APP))
        try:
            events = [outgoing("add_to_cart"), outgoing("newsletter"), outgoing("app_open", context=APP_CONTEXT)]
            outcomes = sender.send(events)
            assert outcomes[0] is DELIVERED and outcomes[2] is DELIVERED and isinstance(outcomes[1], Skipped)
            paths = sorted(r.path.split("?")[0] for r in server.requests())
            assert paths == sorted([f"/v3/{APP}/events", f"/v3/{PIXEL}/events"])
            assert [e["event_name"] for e in server.events()] == ["ADD_CART", "APP_OPEN"]

            server.answer_next(
                Answer(429, {"status": "RATE_LIMITED"}, (("Retry-After", "9"),)),
                Answer(503, {"status": "ERROR"}),
                Answer(400, {"status": "INVALID", "reason": "Timestamp invalid or out of range"}),
            )
            limited = sender.send([outgoing("add_to_cart")])[0]
            assert isinstance(limited, Retry) and limited.not_before is not None
            assert isinstance(sender.send([outgoing("add_to_cart")])[0], Retry)
            refused = sender.send([outgoing("add_to_cart")])[0]
            assert isinstance(refused, Rejected) and "Timestamp invalid" in refused.reason
            exchanges = sender.take_exchanges()
        finally:
            sender.close()

        wrong = SnapchatCapiSender(settings(endpoint=server.endpoint, access_token="wrong/token+1"))
        try:
            [outcome] = wrong.send([outgoing("add_to_cart")])
            exchanges += wrong.take_exchanges()
        finally:
            wrong.close()
    assert isinstance(outcome, Rejected) and "401" in outcome.reason
    assert [e.status for e in exchanges] == [200, 200, 429, 503, 400, 401]
    shown = json.dumps([[e.url, e.request_body, e.response_body, e.error] for e in exchanges] + [outcome.reason])
    for secret in (TOKEN, "snap-secret%2Ftoken%2B42", "wrong/token+1", "wrong%2Ftoken%2B1"):
        assert secret not in shown
    assert "access_token=***" in exchanges[0].url


def config(table: str) -> str:
    return (
        'redis_url = "redis://127.0.0.1:6379/0"\n\n[[destinations]]\nid = "snap"\ntype = "snapchat_capi"\n'
        f'pixel_id = "{PIXEL}"\naccess_token = "t"\n{table}'
    )


def test_config() -> None:
    [dest] = parse(config("")).destinations
    assert isinstance(dest, SnapchatCapiDestination) and dest.endpoint == "https://tr.snapchat.com/v3/{asset_id}/events"
    assert (dest.send_ip_address, dest.batch_size, dest.secrets()) == (False, 2000, ["t"])
    with pytest.raises(ConfigError, match="endpoint"):
        parse(config('endpoint = "tr.snapchat.com/v3"\n'))
    with pytest.raises(ConfigError, match="snap_app_id"):
        parse(config('snap_app_id = " "\n'))
