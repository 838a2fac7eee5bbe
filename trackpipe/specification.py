"""A source's event specification (tracking plan): the config shape.

Checked by workers.specification; docs/CONTRACT.md describes the rules.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from trackpipe.types import Strict

PropertyType = Literal["string", "number", "boolean", "object", "array"]
AllowedValue = str | int | float | bool


class PropertySpec(Strict):
    # A dotted path from the event's root: "plan", "user.email", "items[].product.name".
    path: str
    type: PropertyType | None = None
    required: bool = False
    # When set, the value must be one of these.
    values: list[AllowedValue] | None = None


class EventSpec(Strict):
    # A custom event name, or a standard one (its catalogue properties still apply, these add to them).
    name: str
    properties: list[PropertySpec] = msgspec.field(default_factory=list)


class SourceSpec(Strict):
    """The tracking plan of one source and the vendor's four rule actions."""

    missing_required: Literal["accept", "reject"] = "accept"
    unexpected_format: Literal["omit", "accept", "reject"] = "omit"
    unspecified_events: Literal["accept", "warn", "reject"] = "accept"
    unspecified_properties: Literal["omit", "accept", "warn"] = "accept"
    events: list[EventSpec] = msgspec.field(default_factory=list)

    def problems(self, where: str) -> list[str]:
        """Checks the types cannot express, each naming its key under `where`."""
        return []
