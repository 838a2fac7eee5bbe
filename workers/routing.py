"""Which destinations an event goes to (docs/CONTRACT.md §6 filters), as pure functions."""

from __future__ import annotations

from typing import Any

import msgspec

from trackpipe.config import Destination
from trackpipe.messages import DeliveryEvent
from workers import filters


class FanOut(msgspec.Struct):
    """Where an ingest job's events go: a delivery batch per destination and each event's routes."""

    deliveries: dict[str, list[DeliveryEvent]]
    destinations_of: list[dict[str, str]]  # per event: destination id -> queued / filtered
    filtered: dict[str, int]
    # Of `filtered`, those turned away for want of consent (the rest failed the destination's
    # conditions: sources, events, filters); the destination page shows the split, as the vendor's does.
    filtered_consent: dict[str, int] = msgspec.field(default_factory=dict)


def consent_categories(event: dict[str, Any]) -> list[str]:
    user = event.get("user")
    if isinstance(user, dict):
        categories = user.get("consent_categories")
        if isinstance(categories, list):
            return categories
    return []


def accepts(destination: Destination, source_id: str, event: dict[str, Any]) -> bool:
    """True if the destination's `sources`, `events`, `consent_category` and `filters` let the event in."""
    if destination.sources is not None and source_id not in destination.sources:
        return False
    if destination.events is not None and event.get("event_name") not in destination.events:
        return False
    if destination.consent_category is not None and destination.consent_category not in consent_categories(event):
        return False
    # Last, as the dearest: the cheap checks above turn most unwanted events away first.
    return destination.filters is None or filters.passes(destination.filters, event)


def takes_all(destination: Destination, source_id: str) -> bool:
    """True if the destination takes every event of the source whatever it holds (no events,
    consent or filter conditions; the source among its sources): `accepts` need not look."""
    return (
        (destination.sources is None or source_id in destination.sources)
        and destination.events is None
        and destination.consent_category is None
        and destination.filters is None
    )


def refused_for_consent(destination: Destination, source_id: str, event: dict[str, Any]) -> bool:
    """For an event `accepts` turned away: True if the consent check is what did it. The checks run in
    `accepts`'s order and the first that fails decides (as in `why_filtered`), so the counts agree with
    the reasons the inspector shows; the filters, the dearest check, are never run again here."""
    if destination.sources is not None and source_id not in destination.sources:
        return False
    if destination.events is not None and event.get("event_name") not in destination.events:
        return False
    return destination.consent_category is not None and destination.consent_category not in consent_categories(event)


def why_filtered(destination: Destination, source_id: str, event: dict[str, Any]) -> str | None:
    """Which of the destination's filters turns the event away, in words for the inspector (None if it
    is accepted). Names the setting or the condition, never the event's values."""
    if destination.sources is not None and source_id not in destination.sources:
        return f"source {source_id!r} is not in the destination's sources"
    if destination.events is not None and event.get("event_name") not in destination.events:
        return "the event name is not in the destination's events"
    if destination.consent_category is not None and destination.consent_category not in consent_categories(event):
        return f"consent category {destination.consent_category!r} not given (user.consent_categories)"
    if destination.filters is not None:
        failed = filters.first_failed(destination.filters, event)
        if failed is not None:
            return f"filters: {failed}"
    return None
