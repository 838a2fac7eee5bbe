"""Data quality end to end, with real processes: the edge, a worker, the console and a webhook receiver.
A purchase whose `value` is not a number is delivered without `value` (INVALID_ACCEPTED removes the
offending property), and the inspector says so with the warning naming it. An event without a
device of its own gets the request's address and User-Agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TEST_KEY, HookServer, poll_until, running_console, running_edge, start_worker, stop_worker
from tooling.examples import V2_EXAMPLE

# Real processes end to end: part of the full suite, not the fast set.
pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-token-0123456789"
DEADLINE = 60.0


def write_config(tmp_path: Path, redis_url: str, hook_url: str) -> Path:
    path = tmp_path / "trackpipe.toml"
    path.write_text(
        f"""\
redis_url = "{redis_url}"
admin_token = "{ADMIN_TOKEN}"

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]

[[destinations]]
id = "hook"
type = "webhook"
url = "{hook_url}"
retry = {{ max_attempts = 5, backoff_seconds = [1] }}
"""
    )
    return path


def delivered(server: HookServer) -> list[dict[str, Any]]:
    return [event for r in server.requests() for event in json.loads(r.body)["batch"]]


def test_a_bad_value_is_removed_before_delivery_and_the_inspector_says_why(tmp_path: Path, valkey_url: str) -> None:
    bad = {**V2_EXAMPLE, "value": "abc", "context": {**V2_EXAMPLE["context"], "event_id": "q-bad"}}
    good = {**V2_EXAMPLE, "context": {**V2_EXAMPLE["context"], "event_id": "q-good"}}
    # No device of its own: the request's address and User-Agent fill it.
    bare = {**V2_EXAMPLE, "context": {"event_id": "q-bare", "event_timestamp": 1700000000000}}
    with HookServer() as server:
        config = write_config(tmp_path, valkey_url, server.url)
        worker = start_worker(config, log=tmp_path / "worker.log")
        try:
            with running_edge(config) as edge, running_console(config, log=tmp_path / "console.log") as console:
                for event in (bad, good, bare):
                    response = httpx.post(
                        f"{edge}/events", params={"tc_s": "29", "token": TEST_KEY}, json=event, timeout=10
                    )
                    assert response.status_code == 200, response.text

                events = poll_until(
                    lambda: (got := delivered(server)) and len(got) >= 3 and got,
                    DEADLINE,
                    lambda: f"delivered: {delivered(server)}",
                )
                by_id = {e["context"]["event_id"]: e for e in events}
                assert "value" not in by_id["q-bad"]
                assert by_id["q-bad"]["revenue"] == V2_EXAMPLE["revenue"]  # the rest as sent
                assert by_id["q-good"]["value"] == V2_EXAMPLE["value"]
                assert by_id["q-good"]["context"]["device"] == V2_EXAMPLE["context"]["device"]  # its own, kept
                ua = f"python-httpx/{httpx.__version__}"
                assert by_id["q-bare"]["context"]["device"] == {"ip": "127.0.0.1", "user_agent": ua}

                def inspector() -> dict[str, dict[str, Any]]:
                    answer = httpx.get(
                        f"{console}/admin/sources/shop-web/events",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                        timeout=10,
                    )
                    assert answer.status_code == 200, answer.text
                    return {r["event_id"]: r for r in answer.json()["events"]}

                records = poll_until(
                    lambda: (found := inspector()) and {"q-bad", "q-good"} <= set(found) and found,
                    DEADLINE,
                    "inspector records of both events",
                )
        finally:
            stop_worker(worker)
    record = records["q-bad"]
    assert record["status"] == "INVALID_ACCEPTED"
    assert record["warnings"] == ["value 'abc' is not a number; removed"]
    assert "value" not in record["payload"]
    assert records["q-good"]["status"] == "VALID"
    assert records["q-good"]["warnings"] == []
