"""The `ga4` destination end to end, with real processes: Commanders-Act-format events posted to the edge,
a worker delivering them, and the local GA4 server (tooling.vendors.ga4) checking every request as
Google's validation server would. Every standard event the vendor's GA4 page maps (and a custom one)
arrives with exactly the parameters the vendor's tables give; an event GA4 reserves ends in the
dead-letter queue with the rule it broke, the API secret nowhere in it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TEST_KEY, poll_until, running_console, running_edge, start_worker, stop_worker
from tests.test_ga4 import ALL_PROPS, COOKIE, MEASUREMENT_ID, SECRET, SESSION, STANDARD_EVENTS
from tooling.vendors.ga4 import Ga4Server

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-token-0123456789"
DEADLINE = 60.0
CUSTOM = {"event_name": "newsletter_signup", "method": "footer", "color": "blue"}
CUSTOM_PARAMS = {"method": "footer", **SESSION}


def write_config(tmp_path: Path, redis_url: str, endpoint: str) -> Path:
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
id = "analytics"
type = "ga4"
measurement_id = "{MEASUREMENT_ID}"
api_secret = "{SECRET}"
endpoint = "{endpoint}"
retry = {{ max_attempts = 3, backoff_seconds = [1] }}
"""
    )
    return path


def ca_event(name: str, props: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """An event as a Commanders Act web source sends it (v2: data at the root, metadata in context)."""
    return {
        "event_name": name,
        **props,
        "user": {"id": "U-7", "consistent_anonymous_id": "anon-1", "consent_categories": ["1"]},
        "context": {"event_id": f"ga4-{name}", "event_timestamp": at_ms, "device": {"cookie": COOKIE}},
    }


def received_events(server: Ga4Server) -> dict[str, tuple[dict[str, Any], dict[str, Any], int]]:
    """Event name -> (the request's top-level fields, the event without its timestamp, its timestamp)."""
    found = {}
    for top, event in server.accepted_events():
        event = dict(event)
        at = event.pop("timestamp_micros", top["timestamp_micros"])
        found[event["name"]] = (top, event, at)
    return found


def test_every_mapped_event_reaches_ga4_exactly_as_the_vendor_maps_it(tmp_path: Path, valkey_url: str) -> None:
    now_ms = int(time.time() * 1000)
    events = [ca_event(name, ALL_PROPS, now_ms - i * 1000) for i, name in enumerate(sorted(STANDARD_EVENTS))]
    custom_props = {k: v for k, v in CUSTOM.items() if k != "event_name"}
    events.append(ca_event(CUSTOM["event_name"], custom_props, now_ms - 30_000))
    reserved = ca_event("session_start", {}, now_ms)
    expected_names = set(STANDARD_EVENTS) | {CUSTOM["event_name"]}

    with Ga4Server(measurement_id=MEASUREMENT_ID, api_secret=SECRET) as server:
        config = write_config(tmp_path, valkey_url, server.url)
        worker = start_worker(config, log=tmp_path / "worker.log")
        try:
            with running_edge(config) as edge, running_console(config, log=tmp_path / "console.log") as console:
                response = httpx.post(
                    f"{edge}/events/batch",
                    params={"tc_s": "29", "token": TEST_KEY},
                    json={"batch": [*events, reserved]},
                    timeout=10,
                )
                assert response.status_code == 200, response.text
                assert response.json()["accepted"] == len(events) + 1

                got = poll_until(
                    lambda: (found := received_events(server)) and expected_names <= set(found) and found,
                    DEADLINE,
                    lambda: f"GA4 received {sorted(received_events(server))}",
                )

                def dead_letters() -> list[dict[str, Any]]:
                    answer = httpx.get(
                        f"{console}/admin/dlq/analytics",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                        timeout=10,
                    )
                    assert answer.status_code == 200, answer.text
                    return answer.json()["dead_letters"]

                letters = poll_until(dead_letters, DEADLINE, "a dead letter for session_start")
                requests = server.requests()
        finally:
            stop_worker(worker)

    # Every request was one Google would take, on the collect endpoint of this stream.
    for received in requests:
        assert (received.path, received.status, received.messages) == ("/mp/collect", 204, [])
        assert received.query == {"measurement_id": MEASUREMENT_ID, "api_secret": SECRET}
        assert len(received.payload["events"]) <= 25
    assert set(got) == expected_names  # session_start never reached GA4

    by_name = {e["event_name"]: e for e in events}
    for name, params in {**STANDARD_EVENTS, CUSTOM["event_name"]: CUSTOM_PARAMS}.items():
        top, event, at = got[name]
        expected_params = params if name == CUSTOM["event_name"] else {**params, **SESSION}
        assert event == {"name": name, "params": expected_params}, name
        assert at == by_name[name]["context"]["event_timestamp"] * 1000, name
        assert {k: top[k] for k in ("client_id", "user_id")} == {"client_id": "1234567890.1700000000", "user_id": "U-7"}

    [letter] = letters
    assert letter["event_name"] == "session_start"
    assert letter["reason"] == "GA4 limit: event name 'session_start' is reserved by GA4"
    assert SECRET not in str(letter)
