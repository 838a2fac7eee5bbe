"""What every destination type shares: what `send` reports per event.

A destination type is one module with a settings Struct (a tagged `trackpipe.types.DestinationBase`) and a
`Sender` whose `send(events)` reports, for each event, delivered, retry (with an optional earliest
time) or rejected (with a reason). `destinations.TYPES` maps the config's `type` to the module.
"""

from __future__ import annotations

import re
from typing import Protocol

import msgspec

_SAFE_REASON = re.compile(r"[\x00-\x1f\x7f]+")


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
