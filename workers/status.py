"""The status every processed event gets, as the seed platform's data-quality view shows it."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import msgspec


class EventStatus(StrEnum):
    VALID = "VALID"
    INVALID_ACCEPTED = "INVALID_ACCEPTED"  # delivered, with warnings
    INVALID_REJECTED = "INVALID_REJECTED"  # not delivered, with errors
    DUPLICATE = "DUPLICATE"
    FILTERED = "FILTERED"  # per destination: its filters or consent kept the event out


def quality_status(errors: list[str], warnings: list[str], on_invalid: str) -> EventStatus:
    """Status before deduplication: errors reject; warnings accept, unless the source rejects invalid events."""
    if errors:
        return EventStatus.INVALID_REJECTED
    if warnings:
        return EventStatus.INVALID_REJECTED if on_invalid == "reject" else EventStatus.INVALID_ACCEPTED
    return EventStatus.VALID


class Finding(msgspec.Struct, frozen=True):
    """One thing an event check found, before the rules decide what becomes of it."""

    path: str  # the property, from the event's root: "value", "items[0].product.price", "context.event_id"
    message: str  # the warning or error text; names the path
    # missing: a required property is absent; bad_value: present with a wrong type or value (the
    # property can be removed); unspecified_event / unspecified_property: not in the source's plan.
    kind: Literal["missing", "bad_value", "unspecified_event", "unspecified_property"]
