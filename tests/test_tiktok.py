"""The `tiktok` destination: the vendor page's event table and field mappings, hashing, TikTok's answer
codes, the local TikTok server's checks, and the access token kept out of everything shown.

Expected payloads are written out from the vendor page's tables; expected hashes are computed here
with hashlib on literal normalized strings, not with the code under test."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest

from destinations.base import DELIVERED, OutgoingEvent, Rejected, Retry, Skipped
from destinations.tiktok import TiktokSender, answer_outcome, map_event
from tooling.vendors.tiktok import Answer, Invalid, TiktokServer, check
from trackpipe.config import ConfigError, parse
from trackpipe.destination_settings import TiktokDestination

TOKEN = "tt-secret-token-4242"
PIXEL = "CPIXEL123"
APP = "7000001"
NOW = 1_700_000_100.0


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def settings(**extra: Any) -> TiktokDestination:
    return TiktokDestination(**{"id": "tt", "pixel_code": PIXEL, "access_token": TOKEN, **extra})


def outgoing(name: str, **fields: Any) -> OutgoingEvent:
    event: dict[str, Any] = {
        "event_name": name,
        "context": {"event_id": f"ev-{name}", "event_timestamp": 1_700_000_000_123},
        **fields,
    }
    return OutgoingEvent(event_id=f"ev-{name}", event_name=name, event=event, body=json.dumps(event).encode())


APP_CONTEXT = {
    "event_id": "ev-app",
    "event_timestamp": 1_700_000_000_123,
    "app": {"namespace": "com.shop.app", "name": "Shop", "version": "2.1"},
}

# The vendor page's quick reference, row by row ([1]: web, offline and CRM only; [2]: app only).
WEB_TABLE = {
    "add_payment_info": "AddPaymentInfo",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "application_approval": "ApplicationApproval",
    "begin_checkout": "InitiateCheckout",
    "click_button": "ViewContent",
    "view_content": "ViewContent",
    "view_item": "ViewContent",
    "customize_product": "CustomizeProduct",
    "purchase": "Purchase",
    "complete_payment": "Purchase",
    "contact": "Contact",
    "download": "Download",
    "find_location": "FindLocation",
    "submit_form": "Lead",
    "generate_lead": "Lead",
    "schedule": "Schedule",
    "search": "Search",
    "sign_up": "CompleteRegistration",
    "start_trial": "StartTrial",
    "submit_application": "SubmitApplication",
    "subscribe": "Subscribe",
}
APP_TABLE = {
    "achieve_level": "AchieveLevel",
    "add_payment_info": "AddPaymentInfo",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "click_button": "ViewContent",
    "view_content": "ViewContent",
    "view_item": "ViewContent",
    "complete_tutorial": "CompleteTutorial",
    "create_group": "CreateGroup",
    "create_role": "CreateRole",
    "purchase": "Purchase",
    "complete_payment": "Purchase",
    "generate_lead": "GenerateLead",
    "in_app_ad_click": "InAppADClick",
    "in_app_ad_impr": "InAppAdImpr",
    "install_app": "InstallApp",
    "join_group": "JoinGroup",
    "launch_app": "LaunchAPP",
    "loan_application": "LoanApplication",
    "loan_approval": "LoanApproval",
    "loan_disbursal": "LoanDisbursal",
    "login": "Login",
    "rate": "Rate",
    "search": "Search",
    "sign_up": "Registration",
    "spend_credits": "SpendCredits",
    "start_trial": "StartTrial",
    "subscribe": "Subscribe",
    "unlock_achievement": "UnlockAchievement",
}


@pytest.mark.parametrize(("name", "expected"), sorted(WEB_TABLE.items()))
def test_every_web_event_of_the_table(name: str, expected: str) -> None:
    source, entry = map_event(outgoing(name), settings(), NOW)
    assert (source, entry["event"]) == ("web", expected)


@pytest.mark.parametrize(("name", "expected"), sorted(APP_TABLE.items()))
def test_every_app_event_of_the_table(name: str, expected: str) -> None:
    event = outgoing(name, context=APP_CONTEXT)
    source, entry = map_event(event, settings(app_id=APP, autodiscover_event_source=True), NOW)
    assert (source, entry["event"]) == ("app", expected)
    assert entry["app"] == {"app_id": "com.shop.app", "app_name": "Shop", "app_version": "2.1"}


def test_events_of_the_other_kind_or_unknown_are_skipped_with_the_reason() -> None:
    assert map_event(outgoing("login"), settings(), NOW) == Skipped(
        "TikTok has no web event for 'login'; map it in the destination's event_names"
    )
    app_settings = settings(app_id=APP, autodiscover_event_source=True)
    skipped = map_event(outgoing("begin_checkout", context=APP_CONTEXT), app_settings, NOW)
    assert isinstance(skipped, Skipped) and "no app event for 'begin_checkout'" in skipped.reason
    assert isinstance(map_event(outgoing("newsletter"), settings(), NOW), Skipped)
    # page_view is ViewContent only when chosen; event_names adds custom events and overrides the table.
    assert isinstance(map_event(outgoing("page_view"), settings(), NOW), Skipped)
    chosen = settings(view_content_from=["page_view"], event_names={"newsletter": "NewsletterSignup"})
    assert map_event(outgoing("page_view"), chosen, NOW)[1]["event"] == "ViewContent"
    assert isinstance(map_event(outgoing("view_item"), chosen, NOW), Skipped)
    assert map_event(outgoing("newsletter"), chosen, NOW)[1]["event"] == "NewsletterSignup"


def test_app_events_need_the_app_id_setting_and_the_events_namespace() -> None:
    app_settings = settings(autodiscover_event_source=True)
    refused = map_event(outgoing("purchase", context=APP_CONTEXT), app_settings, NOW)
    assert isinstance(refused, Rejected) and "app_id" in refused.reason
    forced = outgoing("purchase", partners={"tiktok": {"event_source": "app"}})
    refused = map_event(forced, settings(app_id=APP), NOW)
    assert isinstance(refused, Rejected) and "context.app.namespace" in refused.reason
    bad = map_event(outgoing("purchase", partners={"tiktok": {"event_source": "shop"}}), settings(), NOW)
    assert isinstance(bad, Rejected) and "'shop'" in bad.reason
    # Without autodiscovery an event with an app context is still a web event.
    assert map_event(outgoing("purchase", context=APP_CONTEXT), settings(), NOW)[0] == "web"


PURCHASE = {
    "id": "O-1",
    "value": 42.5,
    "currency": "EUR",
    "status": "pending",
    "user": {"id": "User-7", "email": " John.Doe@Example.com ", "phone": "+33 6 12 34 56 78"},
    "items": [
        {
            "id": "SKU-9",
            "quantity": 2,
            "product": {"name": "Mug", "price": 17.5, "category_1": "kitchen", "brand": "Acme"},
        },
        {"id": "SKU-10", "quantity": 1, "content_type": "product_group", "product": {"price": 7.5}},
    ],
    "context": {
        "event_id": "c0ffee-1",
        "event_timestamp": 1_700_000_000_123,
        "page": {"url": "https://shop.example/thanks?ttclid=CLICK-FROM-URL", "referrer": "https://shop.example/cart"},
        "device": {
            "ip": "198.51.100.4",
            "user_agent": "Mozilla/5.0",
            "language": "fr-FR",
            "cookie": "_ga=GA1.1.1.2; _ttp=TTP-COOKIE; other=x",
        },
    },
}


def test_a_purchase_maps_every_field_of_the_page() -> None:
    event = OutgoingEvent(event_id="c0ffee-1", event_name="purchase", event=PURCHASE, body=b"{}")
    source, entry = map_event(event, settings(), NOW)
    assert source == "web"
    assert entry == {
        "event": "Purchase",
        "event_time": 1_700_000_000,
        "event_id": "O-1",
        "user": {
            "email": sha("john.doe@example.com"),
            "phone": sha("+33612345678"),
            "external_id": sha("user-7"),
            "ttclid": "CLICK-FROM-URL",
            "ttp": "TTP-COOKIE",
            "ip": "198.51.100.4",
            "user_agent": "Mozilla/5.0",
            "locale": "fr-FR",
        },
        "properties": {
            "contents": [
                {
                    "content_id": "SKU-9",
                    "content_type": "product",
                    "content_name": "Mug",
                    "content_category": "kitchen",
                    "brand": "Acme",
                    "price": 17.5,
                    "quantity": 2,
                },
                {"content_id": "SKU-10", "content_type": "product_group", "price": 7.5, "quantity": 1},
            ],
            "content_ids": ["SKU-9", "SKU-10"],
            "num_items": 2,
            "currency": "EUR",
            "value": 42.5,
            "description": "purchase",
            "order_id": "O-1",
            "status": "pending",
        },
        "page": {"url": "https://shop.example/thanks?ttclid=CLICK-FROM-URL", "referrer": "https://shop.example/cart"},
    }


def test_identifiers_in_the_pages_order_of_priority() -> None:
    partners = {"tiktok": {"ttclid": "CLICK-PARTNER", "ttp": "TTP-PARTNER", "ldu": True, "shop_id": "S1"}}
    user = map_event(outgoing("search", partners=partners, search_term="mugs"), settings(), NOW)[1]
    assert (user["user"]["ttclid"], user["user"]["ttp"], user["limited_data_use"]) == (
        "CLICK-PARTNER",
        "TTP-PARTNER",
        True,
    )
    assert user["properties"]["search_string"] == "mugs" and user["properties"]["shop_id"] == "S1"
    context = {"device": {"cookie": "ttclid=CLICK-COOKIE"}, "page": {"url": "https://x/?ttclid=CLICK-URL"}}
    assert map_event(outgoing("search", context=context), settings(), NOW)[1]["user"]["ttclid"] == "CLICK-COOKIE"
    # An already-hashed email is kept; the user id keeps its case when asked to.
    hashed = sha("a@b.co")
    mapped = map_event(outgoing("search", user={"email": hashed.upper(), "id": "AbC"}), settings(), NOW)[1]
    assert mapped["user"]["email"] == hashed and mapped["user"]["external_id"] == sha("abc")
    kept_case = map_event(outgoing("search", user={"id": "AbC"}), settings(lowercase_user_id=False), NOW)[1]
    assert kept_case["user"]["external_id"] == sha("AbC")
    ios = {"device": {"type": "iOS", "advertising_id": "IDFA-1", "idfv": "IDFV-1", "att_status": "AUTHORIZED"}}
    assert map_event(outgoing("search", context=ios), settings(), NOW)[1]["user"] == {
        "idfv": "IDFV-1",
        "att_status": "AUTHORIZED",
        "idfa": "IDFA-1",
    }
    android = {"device": {"type": "android", "advertising_id": "GAID-1"}}
    assert map_event(outgoing("search", context=android), settings(), NOW)[1]["user"] == {"gaid": "GAID-1"}


def test_tiktok_answer_codes_become_outcomes() -> None:
    def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    assert answer_outcome(answer(200, {"code": 0, "message": "OK"}), NOW) is DELIVERED
    assert answer_outcome(answer(200, {"code": 40100, "message": "Too many requests"}), NOW) == Retry(
        "TikTok code 40100: Too many requests"
    )
    assert isinstance(answer_outcome(answer(200, {"code": 50000, "message": "System error"}), NOW), Retry)
    for code in (40001, 40002, 40104, 40105):
        outcome = answer_outcome(answer(200, {"code": code, "message": "no"}), NOW)
        assert outcome == Rejected(f"TikTok code {code}: no")
    limited = answer_outcome(answer(429, {"code": 40100}, {"Retry-After": "30"}), NOW)
    assert isinstance(limited, Retry) and limited.not_before == NOW + 30
    assert isinstance(answer_outcome(answer(503, {}), NOW), Retry)
    assert isinstance(answer_outcome(answer(401, {}), NOW), Rejected)
    assert isinstance(answer_outcome(httpx.Response(200, content=b"<html>"), NOW), Retry)


def test_the_local_server_refuses_what_tiktok_refuses() -> None:
    good = {"event_source": "web", "event_source_id": PIXEL, "data": [{"event": "Purchase", "event_time": 1700000000}]}
    check(good, PIXEL, None)
    cases = [
        ({**good, "event_source_id": "OTHER"}, 40001),
        ({**good, "event_source": "shop"}, 40002),
        ({**good, "data": []}, 40002),
        ({**good, "data": [{"event": "purchase", "event_time": 1700000000}]}, 40002),
        ({**good, "data": [{"event": "Purchase", "event_time": 1700000000123}]}, 40002),
        ({**good, "data": [{"event": "Purchase", "event_time": 1700000000, "user": {"email": "a@b.co"}}]}, 40002),
        ({**good, "data": [{"event": "Purchase", "event_time": 1700000000, "properties": {"value": "1"}}]}, 40002),
        ({**good, "event_source": "app", "event_source_id": APP}, 40002),
    ]
    for body, code in cases:
        with pytest.raises(Invalid) as raised:
            check(body, PIXEL, APP)
        assert raised.value.code == code, body


def test_delivery_to_the_local_server_and_the_token_never_shown() -> None:
    with TiktokServer(access_token=TOKEN, pixel_code=PIXEL) as server:
        sender = TiktokSender(settings(endpoint=server.url, test_event_code="TEST42"))
        try:
            purchase = OutgoingEvent(event_id="c0ffee-1", event_name="purchase", event=PURCHASE, body=b"{}")
            outcomes = sender.send([purchase, outgoing("newsletter"), outgoing("add_to_cart")])
            assert outcomes[0] is DELIVERED and outcomes[2] is DELIVERED
            assert isinstance(outcomes[1], Skipped)
            [request] = server.requests()
            assert request.headers["access-token"] == TOKEN
            body = request.json()
            assert (body["event_source"], body["event_source_id"], body["test_event_code"]) == ("web", PIXEL, "TEST42")
            assert [e["event"] for e in body["data"]] == ["Purchase", "AddToCart"]

            server.answer_next(
                Answer(200, {"code": 40100, "message": "Too many requests"}),
                Answer(429, {"code": 40100, "message": "slow down"}, (("Retry-After", "7"),)),
                Answer(500, {"code": 50000, "message": "System error"}),
            )
            assert isinstance(sender.send([outgoing("add_to_cart")])[0], Retry)
            assert isinstance(sender.send([outgoing("add_to_cart")])[0], Retry)
            assert isinstance(sender.send([outgoing("add_to_cart")])[0], Retry)
            exchanges = sender.take_exchanges()
            assert [e.status for e in exchanges] == [200, 200, 429, 500]
        finally:
            sender.close()

        wrong = TiktokSender(settings(endpoint=server.url, access_token="wrong-token-9999"))
        try:
            [outcome] = wrong.send([outgoing("add_to_cart")])
            assert isinstance(outcome, Rejected) and "40105" in outcome.reason
            [exchange] = wrong.take_exchanges()
        finally:
            wrong.close()
        shown = json.dumps([outcome.reason, exchange.url, exchange.request_body, exchange.response_body])
        assert "wrong-token-9999" not in shown
        assert TOKEN not in json.dumps([e.request_body for e in exchanges])


def test_dry_run_records_the_request_and_sends_nothing() -> None:
    with TiktokServer(access_token=TOKEN, pixel_code=PIXEL) as server:
        sender = TiktokSender(settings(endpoint=server.url, dry_run=True))
        try:
            [outcome] = sender.send([outgoing("add_to_cart")])
            [exchange] = sender.take_exchanges()
        finally:
            sender.close()
        assert isinstance(outcome, Skipped) and server.requests() == []
        assert exchange.dry_run and json.loads(exchange.request_body)["data"][0]["event"] == "AddToCart"


def test_batches_follow_the_batch_size_and_the_event_source() -> None:
    sender = TiktokSender(settings(batch_size=2, app_id=APP, autodiscover_event_source=True))
    try:
        events = [outgoing("add_to_cart") for _ in range(3)] + [outgoing("login", context=APP_CONTEXT)]
        requests, decided = sender.build(events)
    finally:
        sender.close()
    assert decided == {}
    assert [r.indexes for r in requests] == [[0, 1], [2], [3]]
    assert [json.loads(r.body)["event_source_id"] for r in requests] == [PIXEL, PIXEL, APP]


def config(table: str) -> str:
    return f'redis_url = "redis://127.0.0.1:6379/0"\n\n[[destinations]]\nid = "tt"\ntype = "tiktok"\n{table}'


def test_config_names_each_bad_setting() -> None:
    loaded = parse(config(f'pixel_code = "{PIXEL}"\naccess_token = "{TOKEN}"\n'))
    [dest] = loaded.destinations
    assert isinstance(dest, TiktokDestination) and dest.endpoint.startswith("https://business-api.tiktok.com/")
    assert dest.secrets() == [TOKEN]
    with pytest.raises(ConfigError, match="pixel_code"):
        parse(config(f'access_token = "{TOKEN}"\n'))
    with pytest.raises(ConfigError, match=r"endpoint: 'ftp://x' is not an http"):
        parse(config(f'pixel_code = "{PIXEL}"\naccess_token = "{TOKEN}"\nendpoint = "ftp://x"\n'))
    with pytest.raises(ConfigError, match="batch_size"):
        parse(config(f'pixel_code = "{PIXEL}"\naccess_token = "{TOKEN}"\nbatch_size = 1001\n'))
    with pytest.raises(ConfigError, match="view_content_from"):
        parse(config(f'pixel_code = "{PIXEL}"\naccess_token = "{TOKEN}"\nview_content_from = ["home"]\n'))
