"""What every destination type shares: its config base and what `send` reports per event.

A destination type is one module with a settings Struct (a tagged `DestinationBase`) and a
`Sender` whose `send(events)` reports, for each event, delivered, retry (with an optional earliest
time) or rejected (with a reason). `destinations.TYPES` maps the config's `type` to the module.
"""

from __future__ import annotations

import re
from typing import Annotated, Protocol

import msgspec

# Ids end up in Redis key names and queue names: keep them to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Ident = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_SAFE_REASON = re.compile(r"[\x00-\x1f\x7f]+")


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config tables: a misspelt key is an error, not silently ignored."""


class RetryConfig(Strict):
    max_attempts: PositiveInt = 6
    backoff_seconds: Annotated[list[PositiveFloat], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0, 600.0, 3600.0]
    )


class DestinationBase(Strict, kw_only=True):
    id: Ident
    sources: list[str] | None = None  # None: every source
    events: list[str] | None = None  # None: every event name
    consent_category: str | None = None
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)

    def problems(self, where: str) -> list[str]:
        """Checks the types cannot express, each naming its key under `where`."""
        return []


class Delivered(msgspec.Struct, frozen=True):
    pass


class Retry(msgspec.Struct, frozen=True):
    reason: str
    not_before: float | None = None  # unix seconds; a Retry-After that asks for longer than the backoff


class Rejected(msgspec.Struct, frozen=True):
    reason: str


Outcome = Delivered | Retry | Rejected
DELIVERED = Delivered()


class Sender(Protocol):
    def send(self, bodies: list[bytes]) -> list[Outcome]:
        """Deliver the normalized events (JSON bytes each); one outcome per event, in order."""
        ...

    def close(self) -> None: ...


def short_reason(text: str, limit: int = 300) -> str:
    """A reason fit for a log line and a DLQ record: one line, bounded."""
    text = _SAFE_REASON.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
