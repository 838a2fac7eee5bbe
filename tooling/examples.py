"""The contract's v2 example event (docs/CONTRACT.md §3), used by the demo's curl line and the benchmarks."""

from __future__ import annotations

from typing import Any

V2_EXAMPLE: dict[str, Any] = {
    "event_name": "purchase",
    "id": "O-1",
    "value": 42.5,
    "revenue": 35,
    "currency": "EUR",
    "type": "online",
    "payment_method": "card",
    "status": "pending",
    "user": {"id": "7", "consistent_anonymous_id": "67892", "consent_categories": ["1", "3"]},
    "items": [{"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "price": 35}}],
    "context": {
        "event_id": "c0ffee-1",
        "event_timestamp": 1700000000000,
        "page": {"url": "https://x/ok"},
        "device": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0"},
    },
}
