"""The console's sign-in, session cookie and CSRF checks (console/web.py): in-process, and in Chromium."""

from __future__ import annotations

import warnings

import fakeredis
import pytest
from starlette.testclient import TestClient

from console.app import create_app
from console.charts import line_chart, nice_ticks, stacked_bars
from tests.browser import ADMIN_TOKEN, sign_in, wait_for
from trackpipe.config import parse

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)


@pytest.fixture
def client() -> TestClient:
    app = create_app(parse(f'admin_token = "{ADMIN_TOKEN}"', env={}), fakeredis.FakeRedis())
    return TestClient(app, base_url="http://console.test")


def signed_in(client: TestClient) -> TestClient:
    answer = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303
    return client


def test_a_wrong_token_cannot_sign_in(client: TestClient) -> None:
    answer = client.post("/login", data={"token": "not-the-token-123", "next": "/"}, follow_redirects=False)
    assert answer.status_code == 401
    assert "Wrong admin token" in answer.text
    assert "set-cookie" not in answer.headers
    assert ADMIN_TOKEN not in answer.text


def test_the_session_cookie_is_signed_http_only_and_same_site(client: TestClient) -> None:
    answer = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/somewhere"}, follow_redirects=False)
    assert answer.headers["location"] == "/somewhere"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert ADMIN_TOKEN not in cookie


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil", "relative"])
def test_sign_in_only_returns_to_a_page_of_this_console(client: TestClient, target: str) -> None:
    answer = client.post("/login", data={"token": ADMIN_TOKEN, "next": target}, follow_redirects=False)
    assert answer.headers["location"] == "/"


def test_a_forged_or_expired_cookie_is_not_a_session(client: TestClient) -> None:
    signed_in(client)
    genuine = client.cookies["trackpipe_session"]
    expires, rest = genuine.split(":", 1)
    for forged in (f"{int(expires) + 1000}:{rest}", genuine[:-2] + "xx", "1:abc.def", "garbage"):
        client.cookies.set("trackpipe_session", forged)
        answer = client.post("/logout", data={"csrf": "x"}, follow_redirects=False)
        assert answer.status_code == 403


def test_state_changing_actions_need_the_csrf_token(client: TestClient) -> None:
    signed_in(client)
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert client.post("/logout", data={"csrf": "0" * 64}, follow_redirects=False).status_code == 403
    page = client.get("/login")
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = client.post("/logout", data={"csrf": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"


def test_pages_are_not_framed_and_load_nothing_from_elsewhere(client: TestClient) -> None:
    answer = client.get("/login")
    assert answer.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert "http" not in answer.text.split("<body>", 1)[0].replace('name="viewport"', "")


def test_charts_have_axes_ticks_units_and_a_legend() -> None:
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    svg = str(
        line_chart(
            {"delivered": [(0, 1), (3600, 5)], "failed": [(0, 0), (3600, 2)]},
            x_label="time (UTC)",
            y_label="events per hour",
        )
    )
    assert svg.count("<polyline") == 2 and "events per hour" in svg and "time (UTC)" in svg
    assert "delivered" in svg.split("</svg>", 1)[1]  # the legend
    bars = str(stacked_bars(["a", "b"], {"VALID": [1, 2], "DUPLICATE": [0, 1]}, x_label="hour", y_label="events"))
    assert bars.count("<rect") == 3
    assert "No data" in str(line_chart({}, x_label="t", y_label="n"))
    assert "&lt;script&gt;" in str(line_chart({"<script>": [(0, 1)]}, x_label="t", y_label="n"))


@pytest.mark.slow
def test_signing_in_through_a_real_browser(chrome, console_stack) -> None:
    from selenium.webdriver.common.by import By

    stack = console_stack('redis_url = "{redis_url}"\nadmin_token = "{admin_token}"\n')
    sign_in(chrome, stack.console, token="wrong-token-0000")
    assert "Wrong admin token" in wait_for(lambda: chrome.find_element(By.ID, "login-error").text)
    assert not chrome.get_cookies()
    sign_in(chrome, stack.console, then="/login")
    session = wait_for(lambda: next((c for c in chrome.get_cookies() if c["name"] == "trackpipe_session"), None))
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in chrome.page_source
