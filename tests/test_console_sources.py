"""The console's sources pages: the list, the live inspector (filters, search, paging, an event's detail
with its per-destination outcome) and the data-quality view. In-process against a real valkey, and in
headless Chromium against the real edge, worker and console."""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from starlette.testclient import TestClient

from console.app import create_app
from tests.browser import ADMIN_TOKEN, screenshot, sign_in, wait_for
from tests.support import TEST_KEY
from trackpipe.config import parse
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord, encode_batch
from trackpipe.queries import DeliveryFailure
from workers.context import WorkerContext
from workers.ingest import process_ingest

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
LAYOUT = KeyLayout()

CONFIG = """
redis_url = "{redis_url}"
admin_token = "{admin_token}"
[inspector]
per_name_per_minute = 100
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{key}"]
[[destinations]]
id = "crm"
type = "webhook"
url = "http://127.0.0.1:9/hook"
events = ["purchase_x"]
[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""


def config_text(redis_url: str, tmp_path: Path) -> str:
    return CONFIG.format(redis_url=redis_url, admin_token=ADMIN_TOKEN, key=TEST_KEY, lake=tmp_path / "lake")


def event(name: str | None, event_id: str, **extra: Any) -> bytes:
    fields: dict[str, Any] = {
        "user": {"consistent_anonymous_id": "ca-1", "consent_categories": [1]},
        "context": {"event_id": event_id, "device": {"ip": "203.0.113.77"}},
        **extra,
    }
    if name is not None:
        fields["event_name"] = name
    return json.dumps(fields).encode()


@pytest.fixture
def client(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    config = parse(config_text(valkey_url, tmp_path), env={})
    now = int(time.time() * 1000)
    events = [
        event("purchase_x", "buy-1", email="ana@example.org"),
        event("page_seen", "pv-1"),
        event(None, "nn-1"),
        event("page_seen", "t-1", test_code="qa-7"),
        event("purchase_x", "buy-2", note=f"the key {TEST_KEY} pasted by mistake"),
    ]
    payload = encode_batch(IngestBatch([IngestRecord("shop-web", "29", now, events)]))
    process_ingest(WorkerContext(config, valkey_client), valkey_client, "job-a", "trackpipe:rq:job:job-a", payload)
    failure = DeliveryFailure("buy-1", "crm", "HTTP 500: down", now + 5, now, "FAILED")
    valkey_client.lpush(LAYOUT.inspector_failures("shop-web"), msgspec.json.encode(failure))
    app = create_app(config, valkey_client)
    with TestClient(app, base_url="http://console.test") as test_client:
        answer = test_client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"}, follow_redirects=False)
        assert answer.status_code == 303
        yield test_client


def rows(html: str) -> list[str]:
    return re.findall(r'class="event-name">([^<]*)<', html)


def test_pages_need_a_session(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path) -> None:
    app = create_app(parse(config_text(valkey_url, tmp_path), env={}), valkey_client)
    with TestClient(app, base_url="http://console.test") as anonymous:
        for path in ("/sources", "/sources/shop-web", "/sources/shop-web/events", "/sources/shop-web/quality"):
            answer = anonymous.get(path, follow_redirects=False)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_the_list_shows_every_source_with_counts(client: TestClient) -> None:
    page = client.get("/sources")
    assert page.status_code == 200
    assert 'href="/sources/shop-web"' in page.text
    assert ">5<" in page.text  # processed
    assert TEST_KEY not in page.text and ADMIN_TOKEN not in page.text


def test_the_inspector_lists_newest_first_with_test_events_and_filters(client: TestClient) -> None:
    page = client.get("/sources/shop-web")
    assert page.status_code == 200
    # Newest first; test events are kept apart and shown among the others by time.
    assert rows(page.text) == ["purchase_x", "(no name)", "page_seen", "purchase_x", "page_seen"]
    assert 'data-refresh="/sources/shop-web/events' in page.text
    assert rows(client.get("/sources/shop-web", params={"status": "INVALID_REJECTED"}).text) == ["(no name)"]
    assert rows(client.get("/sources/shop-web", params={"event": "purchase_x"}).text) == ["purchase_x"] * 2
    assert rows(client.get("/sources/shop-web", params={"test_code": "qa-7"}).text) == ["page_seen"]
    assert rows(client.get("/sources/shop-web", params={"tests_only": "1"}).text) == ["page_seen"]
    assert rows(client.get("/sources/shop-web", params={"q": "ANA@example"}).text) == ["purchase_x"]
    assert rows(client.get("/sources/shop-web", params={"q": "nothing-like-this"}).text) == []
    fragment = client.get("/sources/shop-web/events", params={"event": "purchase_x"})
    assert "<html" not in fragment.text and rows(fragment.text) == ["purchase_x"] * 2
    # The IP is masked; a source key pasted into an event is masked on the page.
    assert "203.0.113.77" not in page.text
    for answer in (page, client.get("/sources/shop-web", params={"q": "pasted"})):
        assert TEST_KEY not in answer.text


def test_bad_filters_are_named_not_500(client: TestClient) -> None:
    for params, words in (
        ({"status": "NOPE"}, "is not one of VALID"),
        ({"page": "abc"}, "page:"),
        ({"q": "x" * 300}, "q: at most 200"),
    ):
        answer = client.get("/sources/shop-web", params=params)
        assert answer.status_code == 400 and words in answer.text
    assert client.get("/sources/nosuch").status_code == 404
    assert client.get("/sources/shop-web/events/0123456789abcdef").status_code == 404
    assert client.get("/sources/shop-web/quality", params={"range": "1y"}).status_code == 400


def test_an_event_opens_to_payload_messages_and_outcomes(client: TestClient) -> None:
    page = client.get("/sources/shop-web", params={"q": "ana@example"})
    [link] = re.findall(r'href="(/sources/shop-web/events/[0-9a-f]+)"', page.text)
    detail = client.get(link)
    assert detail.status_code == 200
    assert "buy-1" in detail.text and "ana@example.org" in detail.text
    assert "203.0.113.0" in detail.text and "203.0.113.77" not in detail.text
    outcomes = detail.text.split('id="outcomes"', 1)[1].split("</table>", 1)[0]
    assert "crm" in outcomes and "FAILED" in outcomes and "HTTP 500: down" in outcomes
    assert "lake" in outcomes and "queued" in outcomes
    [rejected] = re.findall(
        r'href="(/sources/shop-web/events/[0-9a-f]+)"',
        client.get("/sources/shop-web", params={"status": "INVALID_REJECTED"}).text,
    )
    assert "event_name is missing" in client.get(rejected).text


def test_paging_over_the_kept_events(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path) -> None:
    config = parse(config_text(valkey_url, tmp_path), env={})
    now = int(time.time() * 1000)
    events = [event("page_seen", f"p-{i}") for i in range(60)]
    payload = encode_batch(IngestBatch([IngestRecord("shop-web", "29", now, events)]))
    process_ingest(WorkerContext(config, valkey_client), valkey_client, "job-p", "trackpipe:rq:job:job-p", payload)
    with TestClient(create_app(config, valkey_client), base_url="http://console.test") as test_client:
        test_client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"})
        first = test_client.get("/sources/shop-web")
        assert len(rows(first.text)) == 50 and "Page 1 of 2" in first.text and 'id="older"' in first.text
        second = test_client.get("/sources/shop-web", params={"page": "2"})
        assert len(rows(second.text)) == 10 and 'id="newer"' in second.text


def test_the_quality_view_shows_shares_and_frequent_messages(client: TestClient) -> None:
    page = client.get("/sources/shop-web/quality")
    assert page.status_code == 200
    totals = page.text.split('id="quality-totals"', 1)[1].split("</table>", 1)[0]
    assert "INVALID_REJECTED" in totals and "20.0 %" in totals  # 1 of 5
    messages = page.text.split('id="messages"', 1)[1].split("</table>", 1)[0]
    assert "event_name is missing" in messages
    assert page.text.count("<svg") >= 2 and "share of events (%)" in page.text
    for span in ("7d", "35d"):
        assert client.get("/sources/shop-web/quality", params={"range": span}).status_code == 200


# --- in Chromium --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_event_just_sent_appears_live_and_opens(chrome, console_stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    stack = console_stack(CONFIG.replace("{key}", TEST_KEY).replace("{lake}", str(tmp_path / "lake")))
    sign_in(chrome, stack.console, then="/sources/shop-web")
    wait_for(lambda: chrome.find_element(By.ID, "live"), what="the inspector")
    assert "/sources/shop-web" in chrome.current_url

    def send(body: dict[str, Any]) -> None:
        answer = httpx.post(
            f"{stack.edge}/events", params={"tc_s": "29"}, json=body, headers={"Authorization": f"Bearer {TEST_KEY}"}
        )
        assert answer.status_code == 200, answer.text

    user = {"consistent_anonymous_id": "ca-9", "consent_categories": [1]}
    send({"event_name": "purchase_x", "user": user, "coupon": "SPRING-42", "context": {"event_id": "live-1"}})
    send({"event_name": "page_seen", "user": user, "context": {"event_id": "live-2", "test_code": "qa-1"}})
    send({"user": user, "context": {"event_id": "live-3"}})
    # No reload: the live fragment brings them in.
    wait_for(
        lambda: len(chrome.find_elements(By.CSS_SELECTOR, "#events .event-row")) == 3 or None,
        timeout=60,
        what=lambda: f"the three events in the live inspector; it shows: {chrome.find_element(By.ID, 'live').text}",
    )
    names = [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "#events .event-name")]
    assert sorted(names) == ["(no name)", "page_seen", "purchase_x"]
    screenshot(chrome, "source-inspector")

    # Search on a property value, then open the event.
    search = chrome.find_element(By.ID, "f-q")
    search.send_keys("spring-42")
    chrome.find_element(By.ID, "apply").click()
    wait_for(lambda: [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "#events .event-name")] == ["purchase_x"])
    chrome.find_element(By.CSS_SELECTOR, "#events a.open-event").click()
    payload = wait_for(lambda: chrome.find_element(By.ID, "payload").text, what="the event's payload")
    assert "SPRING-42" in payload and "live-1" in payload
    outcomes = chrome.find_element(By.ID, "outcomes").text
    assert "crm" in outcomes and "lake" in outcomes
    screenshot(chrome, "source-event")

    # Filters: status, and test events.
    chrome.get(f"{stack.console}/sources/shop-web?status=INVALID_REJECTED")
    wait_for(lambda: [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "#events .event-name")] == ["(no name)"])
    chrome.get(f"{stack.console}/sources/shop-web?test_code=qa-1")
    wait_for(lambda: [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "#events .event-name")] == ["page_seen"])

    chrome.get(f"{stack.console}/sources/shop-web/quality")
    totals = wait_for(lambda: chrome.find_element(By.ID, "quality-totals").text)
    assert "INVALID_REJECTED" in totals
    assert "event_name is missing" in chrome.find_element(By.ID, "messages").text
    screenshot(chrome, "source-quality")
    assert TEST_KEY not in chrome.page_source and ADMIN_TOKEN not in chrome.page_source
