"""The destination inspector through a real edge, worker and console: the last requests each
destination was sent (or, in a dry run, would have been), in the admin API and `trackpipe requests`,
with the destination's secrets masked; a dry-run destination gets nothing and shows the events
FILTERED, with the reason, in the source's inspector and its delivery counts."""

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

pytestmark = pytest.mark.slow

ADMIN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAIT = 60.0
URL_SECRET = "mp-api-secret-777"
HEADER_TOKEN = "hdr-token-31415"
ANSWER = f'{{"received":true,"echo":"{URL_SECRET}"}}'.encode()  # a receiver that echoes the secret


@dataclass
class Pipeline:
    edge: str
    console: str
    config: Path
    hook: HookServer
    dry: HookServer

    def post(self, event: dict[str, Any]) -> None:
        answer = httpx.post(f"{self.edge}/events", params={"tc_s": "29", "token": TEST_KEY}, json=event)
        assert answer.status_code == 200, answer.text

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(f"{self.console}{path}", params=params, headers=AUTH, timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "commands", "requests", *args, "--config", str(self.config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )


def config_text(redis_url: str, hook: HookServer, dry: HookServer) -> str:
    return f"""
redis_url = "{redis_url}"
admin_token = "{ADMIN}"

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]

[[destinations]]
id = "hook"
type = "webhook"
url = "{hook.url}?api_secret={URL_SECRET}"
headers = {{ Authorization = "Bearer {HEADER_TOKEN}" }}

[[destinations]]
id = "dry"
type = "webhook"
url = "{dry.url}"
dry_run = true
"""


@pytest.fixture
def pipeline(tmp_path: Path, valkey_url: str) -> Iterator[Pipeline]:
    with contextlib.ExitStack() as stack:
        hook = stack.enter_context(HookServer(Reply(200, ANSWER)))
        dry = stack.enter_context(HookServer(Reply(200)))
        config = tmp_path / "trackpipe.toml"
        config.write_text(config_text(valkey_url, hook, dry))
        edge = stack.enter_context(running_edge(config))
        console = stack.enter_context(running_console(config, log=tmp_path / "console.log"))
        worker = start_worker(config, log=tmp_path / "worker.log")
        stack.callback(stop_worker, worker)
        yield Pipeline(edge, console, config, hook, dry)


def purchase(event_id: str) -> dict[str, Any]:
    return {
        "event_name": "purchase",
        "id": f"O-{event_id}",
        "value": 10,
        "currency": "EUR",
        "user": {"id": "u1", "consent_categories": ["1"]},
        "context": {"event_id": event_id, "event_timestamp": 1_700_000_000_000},
    }


def assert_no_secret(text: str) -> None:
    assert URL_SECRET not in text and HEADER_TOKEN not in text


def test_requests_are_shown_masked_in_the_admin_api_and_the_cli(pipeline: Pipeline) -> None:
    for event_id in ("insp-1", "insp-2"):
        pipeline.post(purchase(event_id))

    def recorded(destination: str) -> list[dict[str, Any]] | None:
        answer = pipeline.get(f"/admin/destinations/{destination}/requests")
        assert answer.status_code == 200, answer.text
        requests = answer.json()["requests"]
        ids = {e["context"]["event_id"] for r in requests for e in json.loads(r["request_body"])["batch"]}
        return requests if ids == {"insp-1", "insp-2"} else None

    sent = poll_until(lambda: recorded("hook"), WAIT, "the hook's requests were not recorded")
    assert all(r["status"] == 200 and not r["dry_run"] for r in sent)
    assert all(r["url"] == f"{pipeline.hook.url}?api_secret=***" for r in sent)
    assert all(r["response_body"] == '{"received":true,"echo":"***"}' for r in sent)
    raw = pipeline.get("/admin/destinations/hook/requests").text
    assert_no_secret(raw)
    # The receiver itself got the real credentials.
    assert URL_SECRET in pipeline.hook.requests()[0].path
    assert pipeline.hook.requests()[0].headers["authorization"] == f"Bearer {HEADER_TOKEN}"

    limited = pipeline.get("/admin/destinations/hook/requests", limit="1").json()["requests"]
    assert len(limited) == 1 and limited[0] == sent[0]  # newest first

    # The dry run: built and recorded, never sent, FILTERED with the reason.
    built = poll_until(lambda: recorded("dry"), WAIT, "the dry run's requests were not recorded")
    assert all(r["dry_run"] and r["status"] is None for r in built)
    assert pipeline.dry.requests() == []

    def filtered() -> list[dict[str, Any]] | None:
        events = pipeline.get("/admin/sources/shop-web/events").json()["events"]
        shown = [e for e in events if e["destinations"].get("dry") == "FILTERED"]
        return shown if len(shown) == 2 else None

    records = poll_until(filtered, WAIT, "the inspector never showed the dry run's events FILTERED")
    for record in records:
        assert record["failures"]["dry"]["reason"] == "dry run: request recorded, not sent"
        assert record["destinations"]["hook"] == "queued"
    delivery = pipeline.get("/admin/destinations/dry/delivery").json()
    assert delivery["last_hour"]["filtered"] == 2 and delivery["dlq"] == 0

    # The CLI: the same requests, masked.
    table = pipeline.cli("hook")
    assert table.returncode == 0, table.stderr
    assert f"POST {pipeline.hook.url}?api_secret=***" in table.stdout and "-> HTTP 200" in table.stdout
    assert "insp-1" in table.stdout or "insp-2" in table.stdout
    assert_no_secret(table.stdout + table.stderr)
    lines = pipeline.cli("hook", "--json", "--limit", "1")
    assert lines.returncode == 0, lines.stderr
    [one] = [json.loads(line) for line in lines.stdout.splitlines()]
    assert one == sent[0]
    dry_table = pipeline.cli("dry")
    assert dry_table.returncode == 0 and "dry run: not sent" in dry_table.stdout


def test_bad_requests_name_the_problem(pipeline: Pipeline) -> None:
    missing = pipeline.get("/admin/destinations/nope/requests")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    for bad in ("0", "x", "1001"):
        answer = pipeline.get("/admin/destinations/hook/requests", limit=bad)
        assert answer.status_code == 400 and "limit" in answer.json()["error"]
    unauthorized = httpx.get(f"{pipeline.console}/admin/destinations/hook/requests", timeout=10)
    assert unauthorized.status_code == 401
    assert pipeline.get("/admin/destinations/hook/requests").json() == {"destination_id": "hook", "requests": []}
    cli = pipeline.cli("nope")
    assert cli.returncode == 2 and "no destination 'nope'" in cli.stderr
    empty = pipeline.cli("hook")
    assert empty.returncode == 0 and "no requests recorded" in empty.stderr
