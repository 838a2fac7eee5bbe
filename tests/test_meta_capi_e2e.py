"""`meta_capi` end to end, with real processes: Commanders-Act-format events posted to the edge, a
worker delivers them, and the local Meta server (tooling.vendors.meta, which checks requests as Meta
does) receives exactly the Conversions API request expected for every standard event the vendor page
maps. Expected hashes are hashlib digests of literal normalized text. Events that cannot be sent show
in the inspector as FILTERED (no customer information) or FAILED (Meta's 7-day limit), a 5xx from
Meta is retried, and the access token is never in the destination inspector."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TEST_KEY, poll_until, running_console, running_edge, start_worker, stop_worker
from tooling.vendors.meta import MetaServer, server_error

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-token-0123456789"
PIXEL = "1234567890"
TOKEN = "EAAB-e2e-secret-token-0123456789"
DEADLINE = 60.0
UA = "Mozilla/5.0 (X11; Linux x86_64) trackpipe-e2e"
IP = "203.0.113.9"

# The vendor page's event-name table, row by row.
STANDARD = {
    "begin_checkout": "InitiateCheckout",
    "purchase": "Purchase",
    "add_to_cart": "AddToCart",
    "view_item": "ViewContent",
    "view_item_list": "ViewContent",
    "search": "Search",
    "add_payment_info": "AddPaymentInfo",
    "add_to_wishlist": "AddToWishlist",
    "generate_lead": "Lead",
    "page_view": "PageView",
    "sign_up": "CompleteRegistration",
    "contact": "Contact",
    "customize_product": "CustomizeProduct",
    "donate": "Donate",
    "find_location": "FindLocation",
    "schedule": "Schedule",
    "start_trial": "StartTrial",
    "submit_application": "SubmitApplication",
    "subscribe": "Subscribe",
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_config(tmp_path: Path, redis_url: str, endpoint: str) -> Path:
    path = tmp_path / "trackpipe.toml"
    path.write_text(
        f"""\
redis_url = "{redis_url}"
admin_token = "{ADMIN_TOKEN}"

[inspector]
per_name_per_minute = 1000  # every event of the batch in the inspector, not a sample
test_events_per_minute = 1000

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]

[[destinations]]
id = "meta"
type = "meta_capi"
pixel_id = "{PIXEL}"
access_token = "{TOKEN}"
endpoint = "{endpoint}"
retry = {{ max_attempts = 5, backoff_seconds = [1] }}
"""
    )
    return path


def ca_event(name: str, event_id: str, ts: int, **extra: Any) -> dict[str, Any]:
    """A v2 event as a Commanders Act producer sends it."""
    return {
        "event_name": name,
        "id": f"O-{event_id}",
        "value": 19.9,
        "currency": "EUR",
        "type": "online",
        "user": {
            "id": "Cust-42",
            "email": " Jane.Doe@Example.COM ",
            "phone": "+33 6 12 34 56 78",
            "firstname": "Zoë",
            "lastname": "Dupont",
            "city": "Saint-Étienne",
            "zipcode": "42000",
            "country": "FR",
            "consent_categories": ["1"],
        },
        "items": [{"quantity": 2, "product": {"id": "SKU-1", "price": 9.95, "name": "Mug", "category_1": "Kitchen"}}],
        "context": {
            "event_id": event_id,
            "event_timestamp": ts,
            "page": {"url": "https://shop.example/p/mug?fbclid=IwAR-e2e", "referrer": "https://ref.example/"},
            "device": {"ip": IP, "user_agent": UA, "cookie": "_fbp=fb.1.1700000000000.1234567890; other=1"},
        },
        **extra,
    }


def expected(name: str, event_id: str, ts: int) -> dict[str, Any]:
    """What Meta must receive for `ca_event(name, ...)`, written out by hand."""
    custom: dict[str, Any] = {
        "id": f"O-{event_id}",
        "value": 19.9,
        "currency": "EUR",
        "order_id": f"O-{event_id}",
        "content_name": "Mug",
        "content_category": "Kitchen",
        "num_items": 1,
        "contents": [{"id": "SKU-1", "quantity": 2, "item_price": 9.95}],
    }
    if name == "search":
        custom |= {"search_term": "blue mugs", "search_string": "blue mugs"}
    return {
        "event_name": STANDARD[name],
        "event_time": ts // 1000,
        "event_id": event_id,
        "event_source_url": "https://shop.example/p/mug?fbclid=IwAR-e2e",
        "referrer_url": "https://ref.example/",
        "action_source": "website",
        "user_data": {
            "em": [sha("jane.doe@example.com")],
            "ph": [sha("33612345678")],
            "ln": sha("dupont"),
            "fn": sha("zoë"),
            "ct": sha("saintétienne"),
            "zp": sha("42000"),
            "country": sha("fr"),
            "external_id": [sha("cust-42")],
            "client_ip_address": IP,
            "client_user_agent": UA,
            "fbc": f"fb.1.{ts}.IwAR-e2e",
            "fbp": "fb.1.1700000000000.1234567890",
        },
        "custom_data": custom,
    }


def test_every_standard_event_reaches_meta_in_its_format(tmp_path: Path, valkey_url: str) -> None:
    ts = int(time.time() * 1000) - 2000
    events = [
        ca_event(name, f"m-{name}", ts, **({"search_term": "blue mugs"} if name == "search" else {}))
        for name in STANDARD
    ]
    test_event = ca_event("purchase", "m-test", ts, test_code="TEST4242")
    anonymous = ca_event("page_view", "m-anon", ts, user={})
    anonymous["context"]["device"] = {"ip": IP, "user_agent": UA}
    anonymous["context"]["page"] = {"url": "https://shop.example/"}
    stale = ca_event("purchase", "m-stale", ts - 8 * 86_400_000)

    with MetaServer(pixel_id=PIXEL, access_token=TOKEN) as meta:
        meta.fail_next(server_error(500))  # the first request fails: delivered on the retry
        config = write_config(tmp_path, valkey_url, meta.url)
        worker = start_worker(config, log=tmp_path / "worker.log")
        try:
            with running_edge(config) as edge, running_console(config, log=tmp_path / "console.log") as console:
                answer = httpx.post(
                    f"{edge}/events/batch",
                    params={"tc_s": "29", "token": TEST_KEY},
                    json={"batch": [*events, test_event, anonymous, stale]},
                    timeout=10,
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["accepted"] == len(events) + 3

                received = poll_until(
                    lambda: (got := meta.accepted_events()) and len(got) >= len(events) + 1 and got,
                    DEADLINE,
                    lambda: f"Meta accepted: {[e['event_id'] for e in meta.accepted_events()]}",
                )

                admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

                def records() -> dict[str, dict[str, Any]]:
                    found = httpx.get(
                        f"{console}/admin/sources/shop-web/events", params={"limit": 100}, headers=admin, timeout=10
                    )
                    assert found.status_code == 200, found.text
                    return {r["event_id"]: r for r in found.json()["events"]}

                inspected = poll_until(
                    lambda: (
                        (found := records())
                        and found.get("m-anon", {}).get("destinations", {}).get("meta") == "FILTERED"
                        and found.get("m-stale", {}).get("destinations", {}).get("meta") == "FAILED"
                        and found
                    ),
                    DEADLINE,
                    lambda: f"inspector records: {[records().get(i) for i in ('m-anon', 'm-stale')]}",
                )
                exchanges = httpx.get(f"{console}/admin/destinations/meta/requests", headers=admin, timeout=10)
                assert exchanges.status_code == 200, exchanges.text
        finally:
            stop_worker(worker)

        requests = meta.requests()

    by_id = {e["event_id"]: e for e in received}
    assert len(received) == len(events) + 1  # each once: the failed request was retried, not duplicated
    for name in STANDARD:
        assert by_id[f"m-{name}"] == expected(name, f"m-{name}", ts), name
    assert by_id["m-test"] == expected("purchase", "m-test", ts)
    assert "m-anon" not in by_id and "m-stale" not in by_id

    # Meta's request: path with version and pixel, token in the body; the test event alone in its own.
    assert requests[0].status == 500
    accepted = [r for r in requests if r.status == 200]
    assert {r.path for r in requests} == {f"/v23.0/{PIXEL}/events"}
    assert all(r.json()["access_token"] == TOKEN for r in accepted)
    tests = [r.json() for r in accepted if "test_event_code" in r.json()]
    assert [(t["test_event_code"], [e["event_id"] for e in t["data"]]) for t in tests] == [("TEST4242", ["m-test"])]

    assert "not enough customer information" in inspected["m-anon"]["failures"]["meta"]["reason"]
    assert "more than 7 days old" in inspected["m-stale"]["failures"]["meta"]["reason"]

    # The destination inspector shows what Meta got, the token masked.
    shown = exchanges.json()["requests"]
    assert shown and TOKEN not in exchanges.text
    assert any(r["status"] == 500 for r in shown) and any(r["status"] == 200 for r in shown)
    # Long bodies are cut for the inspector; the short one (the test event) shows the masked token.
    test_request = next(r for r in shown if r["request_body"].startswith('{"test_event_code":"TEST4242"'))
    assert test_request["request_body"].endswith('"access_token":"***"}')
