"""The overview and destination pages (console/pages/overview.py, destinations.py): in-process against a
real valkey with counters written by real delivery settlements (counts, spans, error kinds, the last
requests without secrets, bad input), and in Chromium against a real edge, worker and console (a
destination breaks: the overview refreshes by itself to show it, the destination page tells why)."""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from console.app import create_app
from tests.browser import ADMIN_TOKEN, screenshot, sign_in, wait_for
from tests.support import TEST_KEY, HookServer, Reply, poll_until
from trackpipe.config import Config, parse
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeliveryBatch, DeliveryEvent, encode_delivery
from workers.context import WorkerContext
from workers.deliver import process_delivery

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)

LAYOUT = KeyLayout()
HOOK_SECRET = "hook-secret-0123456789abcdef"
URL_SECRET = "url-token-9876543210"

CONFIG = """
redis_url = "{redis_url}"
admin_token = "{admin_token}"
[edge]
max_backlog = 3
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{key}"]
[[destinations]]
id = "hook"
type = "webhook"
url = "{url}?token={url_secret}"
secret = "{secret}"
[destinations.retry]
max_attempts = 5
backoff_seconds = [1]
[[destinations]]
id = "lake"
type = "file"
path = "{out}"
"""


class Env:
    def __init__(self, config: Config, conn: redis.Redis, hook: HookServer) -> None:
        self.config = config
        self.conn = conn
        self.hook = hook
        self.ctx = WorkerContext(config, conn)
        self.client = TestClient(create_app(config), base_url="http://console.test")

    def deliver(self, destination: str, n: int, at: float) -> None:
        events = [
            DeliveryEvent(f"e-{uuid.uuid4().hex}", "purchase", json.dumps({"event_name": "purchase", "n": i}).encode())
            for i in range(n)
        ]
        payload = encode_delivery(DeliveryBatch(destination, events, int(at * 1000), "ingest-job"))
        job_key = f"{LAYOUT.rq_prefix}:job:t-{uuid.uuid4().hex}"
        assert process_delivery(self.ctx, self.conn, job_key, payload, now=at) is not None


@pytest.fixture
def env(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path) -> Iterator[Env]:
    with HookServer() as hook:
        text = CONFIG.format(
            redis_url=valkey_url,
            admin_token=ADMIN_TOKEN,
            key=TEST_KEY,
            url=hook.url,
            url_secret=URL_SECRET,
            secret=HOOK_SECRET,
            out=tmp_path / "out",
        )
        environment = Env(parse(text, env={}), valkey_client, hook)
        try:
            yield environment
        finally:
            environment.ctx.close()


def sign_in_client(env: Env) -> None:
    answer = env.client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303


def cell(html: str, element_id: str) -> str:
    """The text of the element with this id (a leaf: no markup inside)."""
    return html.split(f'id="{element_id}">', 1)[1].split("<", 1)[0]


def assert_no_secret(html: str) -> None:
    for secret in (HOOK_SECRET, URL_SECRET, ADMIN_TOKEN, TEST_KEY):
        assert secret not in html


def test_pages_need_sign_in(env: Env) -> None:
    for path in ("/", "/overview/live", "/destinations", "/destinations/hook", "/destinations/hook/live"):
        answer = env.client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=/")


def test_the_destination_page_shows_a_broken_destination_span_by_span(env: Env) -> None:
    now = time.time()
    env.hook.script(
        Reply(200, json.dumps({"rejected": [{"index": 0, "error": "bad event"}]}).encode()),
        Reply(500, b"down"),
        Reply(400, b"bad schema"),
    )
    env.deliver("hook", 3, now)  # 2 delivered, 1 refused (dead letter)
    env.deliver("hook", 2, now)  # 500: 2 retried
    env.deliver("hook", 1, now - 3 * 86_400)  # 400: dead letter, three days ago
    sign_in_client(env)

    hour = env.client.get("/destinations/hook")
    assert hour.status_code == 200
    html = hour.text
    assert cell(html, "metric-delivered") == "2"
    assert cell(html, "metric-dead-lettered") == "1"
    assert cell(html, "metric-retried") == "2"
    assert cell(html, "dlq-size") == "2" and 'href="/dlq/hook"' in html
    kinds = [part.split("<", 1)[0] for part in html.split('class="error-kind">')[1:]]
    assert kinds == ["HTTP 500", "refused by the destination", "HTTP 400"]  # newest first
    assert html.count('class="request"') == 3
    assert "<svg" in html and "events per minute" in html
    assert_no_secret(html)
    assert "token=***" in html  # the URL's token, masked

    week = env.client.get("/destinations/hook", params={"span": "week"}).text
    assert cell(week, "metric-dead-lettered") == "2" and "events per hour" in week
    month = env.client.get("/destinations/hook", params={"span": "month"}).text
    assert cell(month, "metric-delivered") == "2" and "events per day" in month
    live = env.client.get("/destinations/hook/live", params={"span": "day"})
    assert live.status_code == 200 and "<html" not in live.text and cell(live.text, "metric-retried") == "2"

    listing = env.client.get("/destinations").text
    assert 'href="/destinations/hook"' in listing and 'href="/destinations/lake"' in listing
    assert_no_secret(listing)


def test_filtered_events_are_shown_split(env: Env) -> None:
    now = time.time()
    minute = LAYOUT.destination_stats("lake", int(now // 60))
    env.conn.hset(
        minute,
        mapping={"filtered": 10, "filtered_consent": 4, "filtered_conditions": 3, "skipped": 2},
    )  # one more in `filtered`: counted before the split existed
    sign_in_client(env)
    html = env.client.get("/destinations/lake").text
    assert (cell(html, "filtered-consent"), cell(html, "filtered-conditions")) == ("4", "3")
    assert (cell(html, "filtered-skipped"), cell(html, "filtered-total")) == ("2", "10")
    assert "counted before the split existed" in html
    assert "No request recorded" in html  # a file destination records none


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/destinations/nosuch", 404, "no destination &#39;nosuch&#39;"),
        ("/destinations/nosuch/live", 404, "no destination &#39;nosuch&#39;"),
        ("/destinations/hook?span=year", 400, "span: &#39;year&#39; is not one of hour, day, week, month"),
        ("/destinations/hook/live?span=", 400, "span: &#39;&#39; is not one of hour, day, week, month"),
    ],
)
def test_bad_input_gets_a_page_naming_it(env: Env, path: str, status: int, message: str) -> None:
    sign_in_client(env)
    answer = env.client.get(path)
    assert answer.status_code == status and message in answer.text


def test_the_overview_shows_queues_destinations_workers_and_the_backlog(env: Env) -> None:
    env.hook.script(Reply(500, b"down"))
    env.deliver("hook", 2, time.time())  # 2 retried: a scheduled retry job
    sign_in_client(env)
    html = env.client.get("/").text
    for queue in ("ingest", "deliver-hook", "retry-hook", "deliver-lake", "retry-lake"):
        assert f'id="queue-{queue}"' in html
    retry_row = html.split('id="queue-retry-hook">', 1)[1].split("</tr>", 1)[0]
    # waiting, lag, taken, running, scheduled retries, failed, workers
    assert [c.split("<", 1)[0] for c in retry_row.split('class="num">')[1:]][4] == "1"  # scheduled retries
    hook_row = html.split('id="destination-hook">', 1)[1].split("</tr>", 1)[0]
    assert [c.split("<", 1)[0] for c in hook_row.split('class="num">')[1:]][:2] == ["0", "2"]
    assert 'id="no-workers"' in html  # none runs in this test
    assert cell(html, "edge-state") == "accepting events"
    assert 'data-refresh="/overview/live"' in html
    assert_no_secret(html)

    # The ingest backlog at edge.max_backlog (3): the edges answer 503.
    env.conn.rpush(LAYOUT.queue("ingest"), "job-a", "job-b", "job-c")
    live = env.client.get("/overview/live").text
    assert "<html" not in live and cell(live, "ingest-backlog") == "3"
    assert cell(live, "edge-state") == "refusing events (503)"


# -- in Chromium, against a real edge, worker and console --------------------------------------------


STACK_CONFIG = """
redis_url = "{redis_url}"
admin_token = "{admin_token}"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["%s"]
[[destinations]]
id = "hook"
type = "webhook"
url = "%s"
secret = "%s"
[destinations.retry]
max_attempts = 2
backoff_seconds = [1]
[[destinations]]
id = "lake"
type = "file"
path = "%s"
consent_category = "3"
"""


@pytest.mark.slow
def test_a_broken_destination_on_the_overview_and_its_page(chrome, console_stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with HookServer(Reply(500, b"down"), Reply(400, b"bad schema")) as hook:
        stack = console_stack(STACK_CONFIG % (TEST_KEY, hook.url, HOOK_SECRET, tmp_path / "lake"))
        conn = redis.Redis.from_url(stack.redis_url)
        sign_in(chrome, stack.console, then="/")
        wait_for(lambda: chrome.find_element(By.ID, "queues"), what="the overview")
        queues = chrome.find_element(By.ID, "queues").text
        assert "ingest" in queues and "deliver:hook" in queues and "retry:hook" in queues
        wait_for(lambda: chrome.find_element(By.ID, "workers-alive").text == "1", 60, "the worker to show alive")

        # An event without consent 3: FILTERED for the lake; the hook answers 500, then 400.
        event = {"event_name": "purchase", "context": {"event_id": "page-1"}, "user": {"consent_categories": ["1"]}}
        sent = httpx.post(f"{stack.edge}/events?tc_s=29&token={TEST_KEY}", json=event, timeout=10)
        assert sent.status_code == 200
        poll_until(lambda: conn.llen(LAYOUT.dlq("hook")) == 1, 60, "the 400 to dead-letter the event")

        # The overview refreshes by itself: no reload.
        def hook_row() -> list[str]:
            return [c.text for c in chrome.find_elements(By.CSS_SELECTOR, "#destination-hook td")]

        wait_for(lambda: hook_row()[1:6] == ["0", "1", "1", "0", "1"], 60, "the overview to show the dead letter")
        lake = [c.text for c in chrome.find_elements(By.CSS_SELECTOR, "#destination-lake td")]
        assert lake[4] == "1"  # filtered
        screenshot(chrome, "overview")

        chrome.find_element(By.LINK_TEXT, "hook").click()
        wait_for(lambda: chrome.find_element(By.ID, "metrics"), what="the destination page")
        assert chrome.find_element(By.ID, "metric-dead-lettered").text == "1"
        assert chrome.find_element(By.ID, "metric-retried").text == "1"
        assert chrome.find_element(By.ID, "dlq-size").text == "1"
        kinds = [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "#errors .error-kind")]
        assert kinds == ["HTTP 400", "HTTP 500"]
        requests = chrome.find_elements(By.CSS_SELECTOR, "#requests tr.request")
        assert len(requests) == 2 and "HTTP 400" in requests[0].text and "HTTP 500" in requests[1].text
        source = chrome.page_source
        for secret in (HOOK_SECRET, ADMIN_TOKEN, TEST_KEY):
            assert secret not in source
        screenshot(chrome, "destination")

        chrome.find_element(By.ID, "span-month").click()
        wait_for(lambda: "span=month" in chrome.current_url, what="the month's view")
        assert chrome.find_element(By.ID, "metric-dead-lettered").text == "1"
        assert chrome.find_element(By.ID, "dlq-link").get_attribute("href").endswith("/dlq/hook")

        chrome.get(f"{stack.console}/destinations/lake")
        wait_for(lambda: chrome.find_element(By.ID, "filtered-consent").text == "1", what="the lake's page")
        assert chrome.find_element(By.ID, "filtered-conditions").text == "0"
