"""The Pixel Tracking API end to end, with real processes: an image URL built the way the vendor's
page builds it, sent through a trusted proxy, arrives at a webhook as the event the page describes,
with the client's address (anonymized for this source) and User-Agent filled in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.pixel import GIF
from tests.support import TEST_KEY, HookServer, poll_until, running_edge, start_worker, stop_worker

# Real processes end to end: part of the full suite, not the fast set.
pytestmark = pytest.mark.slow

DEADLINE = 60.0
# The vendor page's "objects and arrays" example, with its `items` example folded in.
QUERY = (
    "event_name=purchase&id=O_12345&revenue=16.00&value=22.53&currency=EUR&type=online&status=pending"
    "&payment_method=card&user[id]=12356&user[email]=toto%40domain.fr&user[consistent_anonymous_id]=a-1"
    "&user[consent_categories][]=1&user[consent_categories][]=3&items[0][id]=SKU_12345&items[0][quantity]=1"
    "&items[0][product][name]=Trex%20tshirt&items[0][product][price]=9.99"
)


def write_config(tmp_path: Path, redis_url: str, hook_url: str) -> Path:
    path = tmp_path / "trackpipe.toml"
    path.write_text(
        f"""\
redis_url = "{redis_url}"
[edge]
trusted_proxies = ["127.0.0.0/8"]
[[sources]]
id = "shop-pixel"
site_id = "29"
keys = ["{TEST_KEY}"]
ip_mode = "anonymize"
[[destinations]]
id = "hook"
type = "webhook"
url = "{hook_url}"
"""
    )
    return path


def delivered(server: HookServer) -> dict[str, dict[str, Any]]:
    return {e["context"]["event_id"]: e for r in server.requests() for e in json.loads(r.body)["batch"]}


def test_a_pixel_hit_through_a_trusted_proxy_arrives_as_the_event_the_page_describes(
    tmp_path: Path, valkey_url: str
) -> None:
    with HookServer() as server:
        config = write_config(tmp_path, valkey_url, server.url)
        worker = start_worker(config, log=tmp_path / "worker.log")
        try:
            with running_edge(config) as edge:
                for event_id, forwarded in (("px-1", "203.0.113.77"), ("px-2", "2001:db8:1:2:3:4:5:6")):
                    answer = httpx.get(
                        f"{edge}/events?tc_s=29&token={TEST_KEY}&{QUERY}&context[event_id]={event_id}",
                        headers={"x-forwarded-for": f"{forwarded}, 127.0.0.1", "user-agent": "PixelBrowser/2"},
                        timeout=10,
                    )
                    assert answer.status_code == 200 and answer.content == GIF, answer.text
                got = poll_until(
                    lambda: (found := delivered(server)) and len(found) >= 2 and found,
                    DEADLINE,
                    lambda: f"delivered: {delivered(server)}",
                )
        finally:
            stop_worker(worker)
    event = got["px-1"]
    assert event["event_name"] == "purchase"
    assert (event["revenue"], event["value"], event["currency"]) == (16.0, 22.53, "EUR")
    assert event["user"] == {
        "id": "12356",
        "email": "toto@domain.fr",
        "consistent_anonymous_id": "a-1",
        "consent_categories": ["1", "3"],
    }
    assert event["items"] == [{"id": "SKU_12345", "quantity": 1, "product": {"name": "Trex tshirt", "price": 9.99}}]
    assert "tc_s" not in event and "token" not in event
    assert event["context"]["device"] == {"ip": "203.0.113.0", "user_agent": "PixelBrowser/2"}
    assert got["px-2"]["context"]["device"]["ip"] == "2001:db8:1::"
