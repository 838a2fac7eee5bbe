"""TikTok and Snapchat end to end, with real processes: Commanders-Act-format events at the edge, a real
worker, and the local TikTok and Snapchat servers (tooling/vendors), which check each request as the
vendors do. Every standard event each vendor page maps arrives at its server, in the vendor's format,
exactly as expected here (hashes computed with hashlib on literal normalized strings)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TEST_KEY, poll_until, running_edge, start_worker, stop_worker
from tests.test_snapchat import TABLE as SNAPCHAT_TABLE
from tests.test_tiktok import WEB_TABLE as TIKTOK_TABLE
from tooling.vendors.snapchat import SnapchatServer
from tooling.vendors.tiktok import TiktokServer

pytestmark = pytest.mark.slow

TT_TOKEN = "tt-token-e2e-0001"
SNAP_TOKEN = "snap-token-e2e-0002"
PIXEL = "CE2EPIXEL"
SNAP_PIXEL = "e2e-snap-pixel"
DEADLINE = 90.0
STAMP_MS = 1_700_000_000_500
EMAIL_HASH = hashlib.sha256(b"jane.doe@example.com").hexdigest()
USER_ID_HASH = hashlib.sha256(b"crm-42").hexdigest()
PAGE_URL = "https://shop.example/page?ttclid=TTCLICK-1"


def write_config(tmp_path: Path, redis_url: str, tiktok_url: str, snapchat_endpoint: str) -> Path:
    path = tmp_path / "trackpipe.toml"
    path.write_text(
        f"""\
redis_url = "{redis_url}"
admin_token = "admin-token-0123456789"

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]

[[destinations]]
id = "tiktok"
type = "tiktok"
pixel_code = "{PIXEL}"
access_token = "{TT_TOKEN}"
endpoint = "{tiktok_url}"
view_content_from = ["page_view", "view_item"]
retry = {{ max_attempts = 3, backoff_seconds = [1] }}

[[destinations]]
id = "snap"
type = "snapchat_capi"
pixel_id = "{SNAP_PIXEL}"
access_token = "{SNAP_TOKEN}"
endpoint = "{snapchat_endpoint}"
custom_events = {{ newsletter = "CUSTOM_EVENT_1" }}
retry = {{ max_attempts = 3, backoff_seconds = [1] }}
"""
    )
    return path


def ca_event(name: str) -> dict[str, Any]:
    """A Commanders Act v2 event as a producer sends it."""
    event: dict[str, Any] = {
        "event_name": name,
        "user": {"id": "CRM-42", "email": "Jane.Doe@Example.com", "consent_categories": ["1"]},
        "context": {
            "event_id": f"e2e-{name}",
            "event_timestamp": STAMP_MS,
            "page": {"url": PAGE_URL},
            "device": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (e2e)", "cookie": "_ttp=TTP-9; _scid=SCID-9"},
        },
    }
    if name == "purchase":
        event.update(
            id="O-77",
            value=20.0,
            currency="EUR",
            revenue=16.0,
            payment_method="card",
            items=[{"id": "SKU-1", "quantity": 2, "product": {"name": "Cup", "price": 10.0}}],
        )
    return event


def tiktok_expected(name: str) -> dict[str, Any]:
    event_id = "O-77" if name == "purchase" else f"e2e-{name}"
    properties: dict[str, Any] = {"description": name}
    if name == "purchase":
        properties = {
            "contents": [
                {"content_id": "SKU-1", "content_type": "product", "content_name": "Cup", "price": 10.0, "quantity": 2}
            ],
            "content_ids": ["SKU-1"],
            "num_items": 1,
            "currency": "EUR",
            "value": 20.0,
            "description": "purchase",
            "order_id": "O-77",
        }
    return {
        "event": TIKTOK_TABLE.get(name, "ViewContent"),
        "event_time": STAMP_MS // 1000,
        "event_id": event_id,
        "user": {
            "email": EMAIL_HASH,
            "external_id": USER_ID_HASH,
            "ttclid": "TTCLICK-1",
            "ttp": "TTP-9",
            "ip": "203.0.113.9",
            "user_agent": "Mozilla/5.0 (e2e)",
        },
        "properties": properties,
        "page": {"url": PAGE_URL},
    }


def snapchat_expected(name: str, snap_name: str) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if name == "purchase":
        custom = {
            "content_ids": ["SKU-1"],
            "contents": [{"id": "SKU-1", "quantity": 2, "item_price": 10.0}],
            "num_items": 1,
            "content_type": "product",
            "value": 20.0,
            "currency": "EUR",
            "order_id": "O-77",
        }
    return {
        "event_name": snap_name,
        "event_time": STAMP_MS // 1000,
        "action_source": "WEB",
        "event_source_url": PAGE_URL,
        "event_id": "O-77" if name == "purchase" else f"e2e-{name}",
        "user_data": {
            "em": [EMAIL_HASH],
            "external_id": [USER_ID_HASH],
            "client_user_agent": "Mozilla/5.0 (e2e)",
            "sc_cookie1": "SCID-9",
        },
        "custom_data": custom,
    }


def test_every_mapped_event_reaches_tiktok_and_snapchat_in_their_formats(tmp_path: Path, valkey_url: str) -> None:
    tiktok_names = sorted({*TIKTOK_TABLE, "page_view"})
    snapchat_names = {**SNAPCHAT_TABLE, "newsletter": "CUSTOM_EVENT_1"}
    names = sorted({*tiktok_names, *snapchat_names, "not_mapped_anywhere"})
    # The purchase is in both tables with its value, currency and items; the rest are bare events.
    snapchat_names["purchase"] = "PURCHASE"
    with (
        TiktokServer(access_token=TT_TOKEN, pixel_code=PIXEL) as tiktok,
        SnapchatServer(access_token=SNAP_TOKEN, pixel_id=SNAP_PIXEL) as snapchat,
    ):
        config = write_config(tmp_path, valkey_url, tiktok.url, snapchat.endpoint)
        worker = start_worker(config, log=tmp_path / "worker.log")
        try:
            with running_edge(config) as edge:
                batch = [ca_event(name) for name in names]
                response = httpx.post(
                    f"{edge}/events/batch",
                    params={"tc_s": "29", "token": TEST_KEY},
                    json={"batch": batch},
                    timeout=10,
                )
                assert response.status_code == 200, response.text
                assert response.json()["accepted"] == len(names)

                poll_until(
                    lambda: len(tiktok.events()) >= len(tiktok_names) and len(snapchat.events()) >= len(snapchat_names),
                    DEADLINE,
                    lambda: (
                        f"tiktok got {len(tiktok.events())}/{len(tiktok_names)}, "
                        f"snapchat got {len(snapchat.events())}/{len(snapchat_names)}; "
                        f"refused: {[r.body[:300] for r in tiktok.requests() if r.code != 0]} "
                        f"{[r.body[:300] for r in snapchat.requests() if r.status != 200]}"
                    ),
                )
        finally:
            stop_worker(worker)

    # Every request was taken: the servers refuse what the vendors refuse.
    assert all(r.code == 0 for r in tiktok.requests())
    assert all(r.status == 200 for r in snapchat.requests())
    for request in tiktok.requests():
        assert request.headers["access-token"] == TT_TOKEN
        body = request.json()
        assert (body["event_source"], body["event_source_id"]) == ("web", PIXEL)
    for request in snapchat.requests():
        assert request.path == f"/v3/{SNAP_PIXEL}/events?access_token={SNAP_TOKEN}"

    tiktok_got = {e["properties"]["description"]: e for e in tiktok.events()}
    assert sorted(tiktok_got) == tiktok_names  # each once; nothing else
    for name in tiktok_names:
        assert tiktok_got[name] == tiktok_expected(name), name

    snapchat_got = {e["event_id"]: e for e in snapchat.events()}
    assert len(snapchat_got) == len(snapchat.events()) == len(snapchat_names)
    for name, snap_name in snapchat_names.items():
        event_id = "O-77" if name == "purchase" else f"e2e-{name}"
        assert snapchat_got[event_id] == snapchat_expected(name, snap_name), name
