"""The dead-letters and refused-requests pages (console/pages/dlq.py, refused.py): in-process against a
real valkey (forms, CSRF, selection by identity, export, purge, bad input), and in Chromium against a
real edge, worker and console (a broken destination's dead letter replayed once it is fixed)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import httpx
import msgspec
import pytest
import redis
from starlette.testclient import TestClient

from console.app import create_app
from tests.browser import ADMIN_TOKEN, screenshot, sign_in, wait_for
from tests.support import TEST_KEY, HookServer, Reply, poll_until
from trackpipe.config import parse
from trackpipe.jobs import delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeadLetter, decode_delivery, encode_dead_letter

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)

LAYOUT = KeyLayout()
T0 = 1_780_000_000_000
HOOK_SECRET = "hook-secret-0123456789abcdef"

CONFIG = """
redis_url = "{redis_url}"
admin_token = "{admin_token}"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{key}"]
[[destinations]]
id = "crm"
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "{secret}"
[[destinations]]
id = "lake"
type = "file"
path = "{out}"
"""


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def letter(n: int, name: str = "purchase", reason: str = "HTTP 500: down", at: int = T0) -> bytes:
    event = {"event_name": name, "context": {"event_id": f"d-{n}", "received_at": at}}
    return encode_dead_letter(
        DeadLetter(f"d-{n}", name, "crm", reason, 6, at - 1000, at, msgspec.Raw(msgspec.json.encode(event)))
    )


def ids_in(conn: redis.Redis, destination: str = "crm") -> list[str]:
    return [json.loads(raw)["event_id"] for raw in conn.lrange(LAYOUT.dlq(destination), 0, -1)]


def row_ids(html: str) -> list[str]:
    """The letters' identities on a listing, in order."""
    return [part.split('"', 1)[0] for part in html.split('<tr data-id="')[1:]]


def row_event_ids(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('data-event-id="')[1:]]


@pytest.fixture
def client(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path) -> TestClient:
    text = CONFIG.format(
        redis_url=valkey_url, admin_token=ADMIN_TOKEN, key=TEST_KEY, secret=HOOK_SECRET, out=tmp_path / "out"
    )
    # 120 letters: three names, two reasons, rising times (d-119 is the newest, first in the list).
    valkey_client.lpush(
        LAYOUT.dlq("crm"),
        *(
            letter(n, ("purchase", "sign_up", "page_view")[n % 3], "HTTP 500: down" if n % 5 else "timeout", T0 + n)
            for n in range(120)
        ),
    )
    test_client = TestClient(create_app(parse(text, env={})), base_url="http://console.test")
    answer = test_client.post("/login", data={"token": ADMIN_TOKEN, "next": "/dlq"}, follow_redirects=False)
    assert answer.status_code == 303
    return test_client


def test_the_list_shows_every_dlq_and_a_dlq_pages_by_identity(client: TestClient) -> None:
    index = client.get("/dlq")
    assert index.status_code == 200
    assert '<tr data-destination="crm">' in index.text and ">120<" in index.text
    assert HOOK_SECRET not in index.text

    first = client.get("/dlq/crm")
    assert first.status_code == 200 and HOOK_SECRET not in first.text
    assert row_event_ids(first.text) == [f"d-{n}" for n in range(119, 69, -1)]
    older = first.text.split('id="older"', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert older == f"/dlq/crm?after={row_ids(first.text)[-1]}"
    second = client.get(older)
    assert row_event_ids(second.text) == [f"d-{n}" for n in range(69, 19, -1)]

    filtered = client.get("/dlq/crm", params={"event": "sign_up", "reason": "TIME", "since": str(T0 + 50)})
    assert row_event_ids(filtered.text) == ["d-115", "d-100", "d-85", "d-70", "d-55"]
    assert 'value="sign_up"' in filtered.text  # the filters stay in the form

    gone = client.get("/dlq/crm", params={"after": "0" * 24})
    assert 'id="lost"' in gone.text and row_event_ids(gone.text) == []


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/dlq/nosuch", {}, 404, "destination: no destination &#39;nosuch&#39;"),
        ("/dlq/crm", {"since": "yesterday"}, 400, "since: &#39;yesterday&#39; is not a time"),
        ("/dlq/crm", {"after": "zz"}, 400, "id: &#39;zz&#39; is not a dead letter&#39;s id"),
        ("/dlq/crm/replays/abc", {}, 404, "no replay &#39;abc&#39;"),
        ("/dlq/crm/replays/a-b", {}, 404, "no replay &#39;a-b&#39;"),
        ("/refused", {"site": "77"}, 404, "site: no source has site id &#39;77&#39;"),
        ("/refused", {"latest": "0"}, 400, "latest: must be a whole number from 1 to 200"),
    ],
)
def test_bad_input_is_named_on_the_page(
    client: TestClient, path: str, params: dict[str, str], status: int, message: str
) -> None:
    answer = client.get(path, params=params)
    assert answer.status_code == status
    assert message in answer.text


def test_actions_need_the_csrf_token_and_a_post(client: TestClient, valkey_client: redis.Redis) -> None:
    before = ids_in(valkey_client)
    for form in (
        {"action": "replay", "scope": "all"},
        {"action": "purge_confirmed", "scope": "all"},
        {"action": "replay", "scope": "all", "csrf": "forged"},
    ):
        refused = client.post("/dlq/crm/action", data=form, follow_redirects=False)
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert client.get("/dlq/crm/action").status_code == 405
    assert ids_in(valkey_client) == before
    assert not valkey_client.keys("trackpipe:dlqreplay*")
    assert not valkey_client.keys("trackpipe:rq:job:*")


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"action": "dry_run", "scope": "selected"}, "select at least one dead letter"),
        ({"action": "dry_run", "scope": "all", "to": "nosuch"}, "to: no destination &#39;nosuch&#39;"),
        ({"action": "dry_run", "scope": "all", "rate": "fast"}, "rate: &#39;fast&#39; is not a number"),
        ({"action": "dry_run", "scope": "all", "rate": "0"}, "rate: must be from 0.1"),
        ({"action": "dry_run", "scope": "some"}, "scope: &#39;some&#39; is neither"),
        ({"action": "explode", "scope": "all"}, "action: &#39;explode&#39; is not one of"),
        ({"action": "replay", "scope": "all", "frozen_at": "soon"}, "frozen_at: &#39;soon&#39; is not a time"),
    ],
)
def test_bad_actions_are_named_and_change_nothing(
    client: TestClient, valkey_client: redis.Redis, form: dict[str, str], message: str
) -> None:
    csrf = csrf_of(client.get("/dlq/crm").text)
    answer = client.post("/dlq/crm/action", data={"csrf": csrf, **form})
    assert answer.status_code == 400 and message in answer.text
    assert len(ids_in(valkey_client)) == 120


def test_dry_run_then_replay_of_the_letters_ticked_in_the_background(
    client: TestClient, valkey_client: redis.Redis
) -> None:
    listing = client.get("/dlq/crm")
    csrf = csrf_of(listing.text)
    ticked = row_ids(listing.text)[:3]  # d-119, d-118, d-117
    form = {"csrf": csrf, "scope": "selected", "to": "lake", "rate": "50"}
    dry = client.post("/dlq/crm/action", data={**form, "action": "dry_run", "id": ticked})
    assert dry.status_code == 200
    assert '<strong id="confirm-total">3</strong>' in dry.text and "to\n    <strong>lake</strong>" in dry.text
    assert len(ids_in(valkey_client)) == 120  # a dry run changes nothing
    # A new letter arrives between the dry run and the click: not part of the replay.
    valkey_client.lpush(LAYOUT.dlq("crm"), letter(500, at=int(time.time() * 1000) + 5_000))

    confirm = dry.text.split('id="confirm-form"', 1)[1].split("</form>", 1)[0]
    fields = [
        (part.split('"', 1)[0], part.split('value="', 1)[1].split('"', 1)[0]) for part in confirm.split('name="')[1:]
    ]
    data: dict[str, list[str]] = {}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    assert data["id"] == sorted(ticked) and data["action"] == ["replay"]
    started = client.post("/dlq/crm/action", data=data, follow_redirects=False)
    assert started.status_code == 303
    progress_url = started.headers["location"]
    assert progress_url.startswith("/dlq/crm/replays/")

    def finished() -> str | None:
        fragment = client.get(progress_url + "/fragment").text
        return fragment if '<span class="status status-ok" id="replay-state">done</span>' in fragment else None

    fragment = poll_until(finished, 30, "the replay to end")
    assert '<strong id="replay-done">3</strong> of <strong id="replay-total">3</strong>' in fragment
    assert "data-refresh" in client.get(progress_url).text
    remaining = ids_in(valkey_client)
    assert len(remaining) == 118 and remaining[0] == "d-500"
    assert not {"d-119", "d-118", "d-117"} & set(remaining)
    jobs = [decode_delivery(j.args[0]) for j in delivery_queue("lake", valkey_client).jobs]
    assert sorted(e.event_id for batch in jobs for e in batch.events) == ["d-117", "d-118", "d-119"]
    assert all(batch.origin == "replay" and batch.destination_id == "lake" for batch in jobs)


def test_export_gives_the_chosen_letters_as_json_lines(client: TestClient) -> None:
    everything = client.get("/dlq/crm/export", params={"event": "purchase"})
    assert everything.status_code == 200
    assert everything.headers["content-type"].startswith("application/x-ndjson")
    assert 'attachment; filename="crm-dead-letters-' in everything.headers["content-disposition"]
    records = [msgspec.json.decode(line, type=DeadLetter) for line in everything.content.splitlines()]
    assert [r.event_id for r in records] == [f"d-{n}" for n in range(117, -1, -3)]
    assert bytes(records[0].event) == msgspec.json.encode(
        {"event_name": "purchase", "context": {"event_id": "d-117", "received_at": T0 + 117}}
    )

    listing = client.get("/dlq/crm")
    ticked = row_ids(listing.text)[1:3]
    chosen = client.post(
        "/dlq/crm/action", data={"csrf": csrf_of(listing.text), "action": "export", "scope": "selected", "id": ticked}
    )
    assert [json.loads(line)["event_id"] for line in chosen.text.splitlines()] == ["d-118", "d-117"]
    assert client.get("/dlq/lake/export").content == b""


def test_purge_asks_first_then_deletes_what_it_counted(client: TestClient, valkey_client: redis.Redis) -> None:
    listing = client.get("/dlq/crm", params={"reason": "timeout"})
    csrf = csrf_of(listing.text)
    ask = client.post("/dlq/crm/action", data={"csrf": csrf, "action": "purge", "scope": "all", "reason": "timeout"})
    assert '<strong id="confirm-total">24</strong> dead letters would be deleted' in ask.text
    assert len(ids_in(valkey_client)) == 120
    frozen_at = ask.text.split('name="frozen_at" value="', 1)[1].split('"', 1)[0]
    valkey_client.lpush(LAYOUT.dlq("crm"), letter(900, reason="timeout", at=int(frozen_at) + 1))
    done = client.post(
        "/dlq/crm/action",
        data={"csrf": csrf, "action": "purge_confirmed", "scope": "all", "reason": "timeout", "frozen_at": frozen_at},
    )
    assert done.status_code == 200 and "Deleted 24 dead letters." in done.text
    remaining = ids_in(valkey_client)
    assert len(remaining) == 97 and "d-900" in remaining
    assert not [n for n in remaining if n != "d-900" and int(n[2:]) % 5 == 0]


def test_refused_requests_per_site_without_the_key(client: TestClient, valkey_client: redis.Redis) -> None:
    from trackpipe.keys import UNKNOWN_SITE_BUCKET

    wrong = "wrong-key-abcdef0123456789"
    sample = {
        "site_id": "29",
        "reason": "unknown key",
        "received_at": T0,
        "route": "/events",
        "body": json.dumps({"event_name": "purchase", "token": wrong}),
        "body_bytes": 70,
    }
    valkey_client.lpush(LAYOUT.unauthorized_ring("29"), json.dumps(sample))
    valkey_client.hset(
        LAYOUT.unauthorized_count, mapping={"29|unknown key": 3, f"{UNKNOWN_SITE_BUCKET}|missing key": 2}
    )
    page = client.get("/refused")
    assert page.status_code == 200
    assert wrong not in page.text and TEST_KEY not in page.text and ADMIN_TOKEN not in page.text
    assert "&#34;token&#34;: &#34;***&#34;" in page.text or "&quot;token&quot;: &quot;***&quot;" in page.text
    assert '<tr data-site="29"><td>29</td>' in page.text and "<svg" in page.text
    assert "Sources: shop-web" in page.text
    only = client.get("/refused", params={"site": UNKNOWN_SITE_BUCKET})
    assert 'id="site-29"' not in only.text and f'id="site-{UNKNOWN_SITE_BUCKET}"' in only.text


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
retry = {{ max_attempts = 1 }}
"""


@pytest.mark.slow
def test_a_dead_letter_is_seen_replayed_and_delivered_in_the_browser(chrome, console_stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with HookServer(Reply(400, b"bad schema")) as hook:
        stack = console_stack(STACK_CONFIG % (TEST_KEY, hook.url))
        conn = redis.Redis.from_url(stack.redis_url)
        event = {"event_name": "purchase", "context": {"event_id": "browser-1"}, "value": 12.5, "currency": "EUR"}
        sent = httpx.post(f"{stack.edge}/events?tc_s=29&token={TEST_KEY}", json=event, timeout=10)
        assert sent.status_code == 200
        poll_until(lambda: conn.llen(LAYOUT.dlq("hook")) == 1, 60, "the 400 to dead-letter the event")

        sign_in(chrome, stack.console, then="/dlq")
        wait_for(lambda: chrome.find_element(By.ID, "dlqs"), what="the DLQ list")
        size = chrome.find_element(By.CSS_SELECTOR, 'tr[data-destination="hook"] .dlq-size').text
        assert size == "1"
        chrome.find_element(By.LINK_TEXT, "hook").click()
        row = wait_for(lambda: chrome.find_element(By.CSS_SELECTOR, 'tr[data-event-id="browser-1"]'), what="the letter")
        assert "HTTP 400" in row.find_element(By.CSS_SELECTOR, ".reason").text
        screenshot(chrome, "dlq")

        # A replay without the CSRF token is refused and replays nothing.
        cookies = {c["name"]: c["value"] for c in chrome.get_cookies()}
        forged = httpx.post(
            f"{stack.console}/dlq/hook/action", data={"action": "replay", "scope": "all"}, cookies=cookies, timeout=10
        )
        assert forged.status_code == 403
        assert conn.llen(LAYOUT.dlq("hook")) == 1 and len(hook.requests()) == 1

        # Export: the letter as a JSON line (the signed-in session's cookie, as the browser sends it).
        exported = httpx.get(f"{stack.console}/dlq/hook/export", cookies=cookies, timeout=10)
        (line,) = exported.text.splitlines()
        assert json.loads(line)["event_id"] == "browser-1" and json.loads(line)["event"]["value"] == 12.5

        # Fix the destination, tick the letter, dry run, replay.
        hook.script(Reply(200))
        chrome.find_element(By.CSS_SELECTOR, 'tr[data-event-id="browser-1"] input[name="id"]').click()
        chrome.find_element(By.ID, "dry-run").click()
        total = wait_for(lambda: chrome.find_element(By.ID, "confirm-total"), what="the dry run")
        assert total.text == "1" and conn.llen(LAYOUT.dlq("hook")) == 1
        screenshot(chrome, "dlq-dry-run")
        chrome.find_element(By.ID, "confirm").click()
        wait_for(lambda: chrome.find_element(By.ID, "replay-state").text == "done", 60, "the replay to end")
        assert chrome.find_element(By.ID, "replay-done").text == "1"
        screenshot(chrome, "dlq-replay")
        poll_until(lambda: len(hook.requests()) == 2, 60, "the replayed event to be delivered")
        delivered = json.loads(hook.requests()[-1].body)
        assert [e["context"]["event_id"] for e in delivered["batch"]] == ["browser-1"]
        assert conn.llen(LAYOUT.dlq("hook")) == 0
        chrome.find_element(By.ID, "back").click()
        wait_for(lambda: chrome.find_element(By.ID, "no-letters"), what="the empty DLQ")

        # Break it again; a second dead letter; purge it after the confirmation.
        hook.script(Reply(400, b"bad schema"))
        event["context"] = {"event_id": "browser-2"}
        assert httpx.post(f"{stack.edge}/events?tc_s=29&token={TEST_KEY}", json=event, timeout=10).status_code == 200
        poll_until(lambda: conn.llen(LAYOUT.dlq("hook")) == 1, 60, "the second dead letter")
        chrome.get(f"{stack.console}/dlq/hook")
        wait_for(lambda: chrome.find_element(By.CSS_SELECTOR, 'tr[data-event-id="browser-2"]'), what="the letter")
        chrome.find_element(By.ID, "scope-all").click()
        chrome.find_element(By.ID, "purge").click()
        assert wait_for(lambda: chrome.find_element(By.ID, "confirm-total"), what="the purge confirmation").text == "1"
        assert conn.llen(LAYOUT.dlq("hook")) == 1
        chrome.find_element(By.ID, "confirm").click()
        assert "Deleted 1 dead letters." in wait_for(lambda: chrome.find_element(By.ID, "purged"), what="purged").text
        assert conn.llen(LAYOUT.dlq("hook")) == 0

        # Refused requests: a wrong key is counted and sampled, never shown.
        wrong = "wrong-key-0123456789abcdef"
        refused = httpx.post(
            f"{stack.edge}/events?tc_s=29&token={wrong}", json={"event_name": "page_view", "token": wrong}, timeout=10
        )
        assert refused.status_code == 200  # compat mode: answered 200, dropped, counted
        chrome.get(f"{stack.console}/refused")
        site = wait_for(lambda: chrome.find_element(By.ID, "site-29"), what="the refused requests of site 29")
        assert "unknown key" in site.text and "page_view" in site.text
        assert wrong not in chrome.page_source and TEST_KEY not in chrome.page_source
        screenshot(chrome, "refused")
        conn.close()
