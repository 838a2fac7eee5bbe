"""Which destinations an event goes to (docs/CONTRACT.md §6 filters), as pure functions."""

from __future__ import annotations

from typing import Any

import msgspec

from trackpipe.config import Destination
from trackpipe.messages import DeliveryEvent


class FanOut(msgspec.Struct):
    """Where an ingest job's events go: a delivery batch per destination and each event's routes."""

    deliveries: dict[str, list[DeliveryEvent]]
    destinations_of: list[dict[str, str]]  # per event: destination id -> queued / filtered
    filtered: dict[str, int]


def consent_categories(event: dict[str, Any]) -> list[str]:
    user = event.get("user")
    if isinstance(user, dict):
        categories = user.get("consent_categories")
        if isinstance(categories, list):
            return categories
    return []


def accepts(destination: Destination, source_id: str, event: dict[str, Any]) -> bool:
    """True if the destination's `sources`, `events` and `consent_category` filters let the event in."""
    if destination.sources is not None and source_id not in destination.sources:
        return False
    if destination.events is not None and event.get("event_name") not in destination.events:
        return False
    return destination.consent_category is None or destination.consent_category in consent_categories(event)
