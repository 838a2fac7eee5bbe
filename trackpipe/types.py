"""The building blocks of config shapes, shared by the config and the destination plug-ins.

They live in the core so that a destination type depends on the core, never the other way round.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# Ids end up in Redis key names and queue names: keep them to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Ident = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config tables: a misspelt key is an error, not silently ignored."""


Operator = Literal[
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "starts_with",
    "not_starts_with",
    "ends_with",
    "not_ends_with",
    "matches",
    "not_matches",
    "exists",
    "not_exists",
    "is_empty",
    "greater_than",
    "less_than",
    "in",
    "not_in",
]
Scalar = str | int | float | bool
Scalar = str | int | float | bool


class Condition(Strict):
    # A dotted path from the event's root: "value", "user.email", "items[].product.brand" (any element).
    path: str
    op: Operator
    # The operand: a scalar, or a list for in / not_in; none for exists / not_exists / is_empty.
    value: Scalar | list[Scalar] | None = None


class Filters(Strict):
    """A destination's filters on any property, the vendor's operators combined with all or any
    (applied by workers.filters)."""

    match: Literal["all", "any"] = "all"
    conditions: list[Condition] = msgspec.field(default_factory=list)

    def problems(self, where: str) -> list[str]:
        """Checks the types cannot express, each naming its key under `where`."""
        return []


class RetryConfig(Strict):
    max_attempts: PositiveInt = 6
    backoff_seconds: Annotated[list[PositiveFloat], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0, 600.0, 3600.0]
    )


class DestinationBase(Strict, kw_only=True):
    """What every destination table has; routing (workers.routing) reads only these fields."""

    id: Ident
    sources: list[str] | None = None  # None: every source
    events: list[str] | None = None  # None: every event name
    consent_category: str | None = None
    # Conditions on any property (trackpipe.filters): an event that fails them is FILTERED here.
    filters: Filters | None = None
    # Build and record each request (the destination inspector shows it), send nothing.
    dry_run: bool = False
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)

    def problems(self, where: str) -> list[str]:
        """Checks the types cannot express, each naming its key under `where`."""
        return []

    def secrets(self) -> list[str]:
        """Values never shown in logs, error reasons, dead letters, pages or the destination inspector."""
        return []
