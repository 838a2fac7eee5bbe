"""What an operator sees of a producer's mistakes, through a real edge, a real worker and the real
console: a reused event id (delivered twice with `dedup = false`, once otherwise, and counted as a
duplicate), a destination that refuses an event (FAILED for it in the inspector, with the reason),
and a refused key (sampled without the key, in the admin API and in `trackpipe status`)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    OTHER_KEY,
    ROOT,
    TEST_KEY,
    HookServer,
    Reply,
    poll_until,
    running_console,
    running_edge,
    start_worker,
    stop_worker,
)

# Real processes end to end: part of the full suite, not the fast set.
pytestmark = pytest.mark.slow

ADMIN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
JSON = {"Content-Type": "application/json"}
WAIT = 60.0  # generous: a slow machine only makes the conditions come true later
WRONG_KEY = "wrong-key-9876543210"


@dataclass
class Pipeline:
    edge: str
    console: str
    config: Path
    hook: HookServer  # answers 200
    refuser: HookServer  # answers 400 to everything

    def post(self, event: dict[str, Any], key: str = TEST_KEY, site: str = "29") -> httpx.Response:
        return httpx.post(
            f"{self.edge}/events", params={"tc_s": site, "token": key}, headers=JSON, content=json.dumps(event)
        )

    def admin(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.console}{path}", params=params, headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def hook_ids(self) -> list[str]:
        return [e["context"]["event_id"] for r in self.hook.requests() for e in json.loads(r.body)["batch"]]

    def status(self, *extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "commands", "status", "--config", str(self.config), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done


def config_text(redis_url: str, hook: HookServer, refuser: HookServer) -> str:
    return f"""
redis_url = "{redis_url}"
admin_token = "{ADMIN}"

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]

[[sources]]
id = "reuser"
site_id = "29"
keys = ["{OTHER_KEY}"]
dedup = false

[[destinations]]
id = "hook"
type = "webhook"
url = "{hook.url}"
events = ["login"]

[[destinations]]
id = "refuser"
type = "webhook"
url = "{refuser.url}"
events = ["purchase_attempt"]
"""


@pytest.fixture
def pipeline(tmp_path: Path, valkey_url: str) -> Iterator[Pipeline]:
    with contextlib.ExitStack() as stack:
        hook = stack.enter_context(HookServer(Reply(200)))
        refuser = stack.enter_context(HookServer(Reply(400, b'{"error":"unknown event schema"}')))
        config = tmp_path / "trackpipe.toml"
        config.write_text(config_text(valkey_url, hook, refuser))
        edge = stack.enter_context(running_edge(config))
        console = stack.enter_context(running_console(config, log=tmp_path / "console.log"))
        worker = start_worker(config, log=tmp_path / "worker.log")  # every queue
        stack.callback(stop_worker, worker)
        yield Pipeline(edge, console, config, hook, refuser)


def login(event_id: str) -> dict[str, Any]:
    return {
        "event_name": "login",
        "user": {"id": "u1", "consistent_anonymous_id": "anon-1", "consent_categories": ["1"]},
        "context": {"event_id": event_id, "event_timestamp": 1_700_000_000_000},
    }


def test_a_reused_id_is_delivered_twice_without_dedup_once_with_and_counted(pipeline: Pipeline) -> None:
    for key in (OTHER_KEY, TEST_KEY):  # `reuser` (dedup = false), then `shop-web`
        for _ in range(2):
            assert pipeline.post(login("reused-1"), key=key).status_code == 200

    def processed() -> dict[str, Any] | None:
        sources = {s["id"]: s for s in pipeline.admin("/admin/sources")["sources"]}
        return sources if all(s["processed"] == 2 for s in sources.values()) else None

    sources = poll_until(processed, WAIT, "the four events were not all processed")
    assert (sources["shop-web"]["duplicates"], sources["reuser"]["duplicates"]) == (1, 0)
    assert (sources["reuser"]["dedup"], sources["shop-web"]["dedup"]) == (False, True)
    # Three deliveries: both copies from `reuser`, one from `shop-web`.
    poll_until(lambda: len(pipeline.hook_ids()) >= 3, WAIT, lambda: f"hook got {pipeline.hook_ids()}")
    delivered = [json.loads(r.body)["batch"] for r in pipeline.hook.requests()]
    by_source = [e["context"]["source_id"] for batch in delivered for e in batch]
    assert sorted(by_source) == ["reuser", "reuser", "shop-web"]
    assert set(pipeline.hook_ids()) == {"reused-1"}

    inspected = pipeline.admin("/admin/sources/shop-web/events")
    assert inspected["duplicates"] == 1
    assert sorted(e["status"] for e in inspected["events"])[0] == "DUPLICATE"
    assert pipeline.admin("/admin/sources/reuser/events")["duplicates"] == 0

    as_json = json.loads(pipeline.status("--json").stdout)
    assert {s["id"]: s["duplicates"] for s in as_json["sources"]} == {"shop-web": 1, "reuser": 0}
    table = pipeline.status().stdout
    (line,) = [ln for ln in table.splitlines() if ln.startswith("shop-web ")]
    assert line.split()[1:4] == ["2", "1", "50.0"]  # processed, duplicates, share
    # Nothing more arrives: the delivery queue is empty and the hook still has three events.
    poll_until(
        lambda: all(
            q["depth"] == 0 and q["running"] == 0 for q in json.loads(pipeline.status("--json").stdout)["queues"]
        ),
        WAIT,
        "queues did not drain",
    )
    assert len(pipeline.hook_ids()) == 3


def test_a_refused_delivery_shows_failed_for_that_destination(pipeline: Pipeline) -> None:
    event = {**login("will-fail"), "event_name": "purchase_attempt"}
    assert pipeline.post(event).status_code == 200

    def failed() -> dict[str, Any] | None:
        for record in pipeline.admin("/admin/sources/shop-web/events")["events"]:
            if record["event_id"] == "will-fail" and record["destinations"].get("refuser") == "FAILED":
                return record
        return None

    record = poll_until(failed, WAIT, "the inspector never showed will-fail FAILED for refuser")
    assert record["destinations"]["hook"] == "FILTERED"
    reason = record["failures"]["refuser"]["reason"]
    assert reason.startswith("HTTP 400") and "unknown event schema" in reason
    (letter,) = pipeline.admin("/admin/dlq/refuser")["dead_letters"]
    assert letter["event_id"] == "will-fail" and letter["reason"] == reason
    assert len(pipeline.refuser.requests()) == 1  # a 400 is not retried


def test_a_refused_key_is_sampled_without_the_key(pipeline: Pipeline) -> None:
    body = {**login("refused-1"), "note": "sent with the wrong key"}
    assert pipeline.post(body, key=WRONG_KEY).status_code == 200  # compat: 200, nothing stored
    leaky = httpx.post(
        f"{pipeline.edge}/events",
        params={"tc_s": "29"},
        headers={**JSON, "Authorization": f"Bearer {WRONG_KEY}"},
        content=json.dumps({"event_name": "x", "token": WRONG_KEY, "url": f"https://s/?token={WRONG_KEY}"}),
    )
    assert leaky.status_code == 200

    def sampled() -> dict[str, Any] | None:
        sites = pipeline.admin("/admin/refused", site="29")["sites"]
        return sites[0] if sites and sites[0]["total"] == 2 else None

    site = poll_until(sampled, WAIT, "the refused requests were not sampled")
    assert site["by_reason"] == {"unknown key": 2}
    newest, oldest = site["latest"]
    assert newest["route"] == oldest["route"] == "/events"
    assert "sent with the wrong key" in oldest["body"]
    assert '"token": "***"' in newest["body"] and "token=***" in newest["body"]
    everything = httpx.get(f"{pipeline.console}/admin/refused", headers=AUTH).text
    as_json = pipeline.status("--json").stdout
    table = pipeline.status().stdout
    for shown in (everything, as_json, table):
        assert WRONG_KEY not in shown
    assert [s["total"] for s in json.loads(as_json)["refused"] if s["site_id"] == "29"] == [2]
    assert "site '29': 2 (unknown key 2)" in table
    # Nothing was stored for delivery.
    assert pipeline.admin("/admin/sources/shop-web/events")["events"] == []
