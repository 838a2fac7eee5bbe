"""The alerts page (console/pages/alerts.py): in-process against a real valkey (forms, CSRF, masking),
and in Chromium against a running console whose evaluator posts to a real receiver."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from console.alerting import INTERVAL_ENV, Evaluator, load_rules
from console.app import create_app
from tests.browser import ADMIN_TOKEN, screenshot, sign_in, wait_for
from tests.support import HookServer, Reply
from trackpipe.config import parse
from trackpipe.keys import KeyLayout

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)

LAYOUT = KeyLayout()
HOOK_SECRET = "T0AAA/B0BBB/hook-secret-0123456789"

CONFIG = """
redis_url = "{redis_url}"
admin_token = "{admin_token}"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]
[[destinations]]
id = "lake"
type = "file"
path = "{out}"
"""


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


@pytest.fixture
def client(valkey_url: str, tmp_path: Path) -> TestClient:
    text = CONFIG.format(redis_url=valkey_url, admin_token=ADMIN_TOKEN, out=tmp_path / "out")
    # No `with`: the app's lifespan (and its evaluator thread) does not run; the test drives it.
    test_client = TestClient(create_app(parse(text, env={})), base_url="http://console.test")
    answer = test_client.post("/login", data={"token": ADMIN_TOKEN, "next": "/alerts"}, follow_redirects=False)
    assert answer.status_code == 303
    return test_client


def rule_form(csrf: str, **overrides: str) -> dict[str, str]:
    form = {
        "csrf": csrf,
        "id": "",
        "name": "DLQ not empty",
        "kind": "dlq_size",
        "target": "lake",
        "threshold": "0",
        "window_minutes": "5",
        "webhook_url": f"https://hooks.example.com/services/{HOOK_SECRET}",
    }
    return form | overrides


def test_rules_are_added_edited_and_deleted_with_the_csrf_token(client: TestClient, valkey_client: redis.Redis) -> None:
    page = client.get("/alerts")
    assert page.status_code == 200 and "No rules yet" in page.text
    csrf = csrf_of(page.text)

    refused = client.post("/alerts", data=rule_form(""), follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    refused = client.post("/alerts", data=rule_form("f" * 64), follow_redirects=False)
    assert refused.status_code == 403
    assert load_rules(valkey_client, LAYOUT) == []

    added = client.post("/alerts", data=rule_form(csrf), follow_redirects=False)
    assert added.status_code == 303
    [rule] = load_rules(valkey_client, LAYOUT)
    assert (rule.kind, rule.target, rule.threshold) == ("dlq_size", "lake", 0.0)
    page = client.get("/alerts")
    assert "DLQ size over 0 dead letters, destination lake" in page.text
    assert "https://hooks.example.com/…" in page.text
    assert HOOK_SECRET not in page.text and "services/T0AAA" not in page.text  # only scheme and host shown

    # An edit form never holds the URL; left empty, the stored one stays.
    edit = client.get(f"/alerts?edit={rule.id}")
    assert HOOK_SECRET not in edit.text and 'value="DLQ not empty"' in edit.text
    client.post("/alerts", data=rule_form(csrf, id=rule.id, threshold="3", webhook_url=""), follow_redirects=False)
    [edited] = load_rules(valkey_client, LAYOUT)
    assert (edited.id, edited.threshold, edited.webhook_url) == (rule.id, 3.0, rule.webhook_url)

    assert client.post(f"/alerts/{rule.id}/delete", data={}, follow_redirects=False).status_code == 403
    assert load_rules(valkey_client, LAYOUT) != []
    deleted = client.post(f"/alerts/{rule.id}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert deleted.status_code == 303 and load_rules(valkey_client, LAYOUT) == []
    assert client.post(f"/alerts/{rule.id}/delete", data={"csrf": csrf}).status_code == 404


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"kind": "nope"}, "kind: &#39;nope&#39; is not one of"),
        ({"target": "shop-web"}, "target: &#39;shop-web&#39; is not a destination of the config"),
        ({"kind": "invalid_share", "target": "lake"}, "target: &#39;lake&#39; is not a source"),
        ({"threshold": "lots"}, "threshold: &#39;lots&#39; is not a number"),
        ({"threshold": "inf"}, "threshold: must be a finite number"),
        ({"kind": "failure_rate", "threshold": "150"}, "threshold: a percentage"),
        ({"window_minutes": "-1"}, "window_minutes: &#39;-1&#39; is not a whole number"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url: must be an http"),
        ({"webhook_url": ""}, "webhook_url: required"),
        ({"name": ""}, "name: required"),
        ({"id": "abc123"}, "id: no rule &#39;abc123&#39;"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(
    client: TestClient, valkey_client: redis.Redis, overrides: dict[str, str], error: str
) -> None:
    csrf = csrf_of(client.get("/alerts").text)
    answer = client.post("/alerts", data=rule_form(csrf, **overrides), follow_redirects=False)
    assert answer.status_code in (400, 404)
    assert error in answer.text
    assert HOOK_SECRET not in answer.text
    assert load_rules(valkey_client, LAYOUT) == []


def test_the_page_shows_state_and_firings(
    client: TestClient, valkey_client: redis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    csrf = csrf_of(client.get("/alerts").text)
    with HookServer(Reply(503)) as hook:
        client.post("/alerts", data=rule_form(csrf, webhook_url=f"{hook.url}/{HOOK_SECRET}"), follow_redirects=False)
        valkey_client.lpush(LAYOUT.dlq("lake"), b'{"event_id":"e1"}')
        config = parse(CONFIG.format(redis_url=valkey_url, admin_token=ADMIN_TOKEN, out=tmp_path / "out"), env={})
        evaluator = Evaluator(config, valkey_client, interval=15)
        try:
            evaluator.run_once()
        finally:
            evaluator.stop()
    fragment = client.get("/alerts/fragment")
    assert 'data-state="firing"' in fragment.text
    assert "DLQ of destination lake holds 1 dead letters, above the threshold" in fragment.text
    assert "post failed: HTTP 503 from http://127.0.0.1:" in fragment.text
    assert HOOK_SECRET not in fragment.text and "<html" not in fragment.text


def test_signed_out_visitors_are_sent_to_sign_in(valkey_url: str, tmp_path: Path) -> None:
    text = CONFIG.format(redis_url=valkey_url, admin_token=ADMIN_TOKEN, out=tmp_path / "out")
    anonymous = TestClient(create_app(parse(text, env={})), base_url="http://console.test")
    for method, path in (("GET", "/alerts"), ("GET", "/alerts/fragment"), ("POST", "/alerts")):
        answer = anonymous.request(method, path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


@pytest.mark.slow
def test_a_rule_added_in_the_browser_fires_and_resolves(
    chrome, console_stack, valkey_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    monkeypatch.setenv(INTERVAL_ENV, "1")  # the console's evaluator passes every second
    stack = console_stack(CONFIG.replace("{out}", str(tmp_path / "out")))
    with HookServer(Reply(200)) as hook:
        sign_in(chrome, stack.console, then="/alerts")
        wait_for(lambda: chrome.find_element(By.ID, "rule-form"), what="the alerts page")
        chrome.find_element(By.ID, "name").send_keys("Lake DLQ not empty")
        Select(chrome.find_element(By.ID, "kind")).select_by_value("dlq_size")
        Select(chrome.find_element(By.ID, "target")).select_by_value("lake")
        threshold = chrome.find_element(By.ID, "threshold")
        threshold.clear()
        threshold.send_keys("0")
        chrome.find_element(By.ID, "webhook_url").send_keys(f"{hook.url}/{HOOK_SECRET}")
        chrome.find_element(By.ID, "save-rule").click()
        wait_for(lambda: chrome.find_element(By.ID, "saved"), what="the saved notice")
        [rule] = load_rules(valkey_client, LAYOUT)
        assert HOOK_SECRET not in chrome.page_source

        valkey_client.lpush(LAYOUT.dlq("lake"), b'{"event_id":"planted"}')
        row = f"#state-{rule.id}"
        # The state table refreshes by itself (every 5 s): no reload.
        wait_for(
            lambda: chrome.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "firing",
            60,
            "the rule shown firing",
        )
        wait_for(lambda: chrome.find_elements(By.CSS_SELECTOR, "#firings .firing-row"), 30, "the firing listed")
        assert "posted" in chrome.find_element(By.ID, "firings").text
        wait_for(lambda: hook.requests(), 30, "the webhook post")
        first = json.loads(hook.requests()[0].body)
        assert first["text"].startswith(":rotating_light: FIRING [trackpipe] Lake DLQ not empty: DLQ of destination")
        screenshot(chrome, "alerts")

        # A POST without the page's CSRF token is refused, even with the session cookie.
        session = chrome.get_cookie("trackpipe_session")["value"]
        forged = httpx.post(
            f"{stack.console}/alerts",
            data=rule_form("", name="forged"),
            cookies={"trackpipe_session": session},
        )
        assert forged.status_code == 403
        assert [r.name for r in load_rules(valkey_client, LAYOUT)] == ["Lake DLQ not empty"]

        valkey_client.delete(LAYOUT.dlq("lake"))
        wait_for(lambda: len(hook.requests()) == 2, 60, "the resolve post")
        assert json.loads(hook.requests()[1].body)["text"].startswith(":white_check_mark: RESOLVED")
        wait_for(lambda: chrome.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "ok", 30, "ok again")
        assert len(hook.requests()) == 2  # once on fire, once on resolve

        chrome.find_element(By.CSS_SELECTOR, f"#rule-{rule.id} button.danger").click()
        chrome.switch_to.alert.accept()
        wait_for(lambda: chrome.find_element(By.ID, "deleted"), what="the deleted notice")
        assert load_rules(valkey_client, LAYOUT) == []
