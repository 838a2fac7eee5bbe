"""What every destination type shares: the events a sender gets and what `send` reports per event.

A destination type is one module with a settings Struct (a tagged `trackpipe.types.DestinationBase`) and a
`Sender` whose `send(events)` reports, for each event, delivered, retry (with an optional earliest
time), rejected (with a reason: a dead letter) or skipped (the destination cannot map the event: it
counts as FILTERED for this destination, with the reason). `destinations.TYPES` maps the config's
`type` to the module. HTTP destinations build on `destinations.http`.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import msgspec

# Masking lives in the core (the console masks the same way); senders use it from here too.
from trackpipe.logs import MASK, mask, mask_values  # noqa: F401

_SAFE_REASON = re.compile(r"[\x00-\x1f\x7f]+")


class Delivered(msgspec.Struct, frozen=True):
    pass


class Retry(msgspec.Struct, frozen=True):
    reason: str
    not_before: float | None = None  # unix seconds; a Retry-After that asks for longer than the backoff


class Rejected(msgspec.Struct, frozen=True):
    reason: str


class Skipped(msgspec.Struct, frozen=True):
    """Not for this destination after all (it cannot map the event, or a dry run): FILTERED, not a dead letter."""

    reason: str


Outcome = Delivered | Retry | Rejected | Skipped
DELIVERED = Delivered()


class OutgoingEvent(msgspec.Struct):
    """One normalized event as a sender gets it: decoded once by the delivery job."""

    event_id: str
    event_name: str
    event: dict[str, Any]  # the normalized v2 event (senders must not change it)
    body: bytes  # the same event as JSON, for senders that forward it unchanged


class Exchange(msgspec.Struct):
    """One request a destination was sent (or, in a dry run, would have been) and its answer, secrets
    masked and bodies cut: what the destination inspector shows."""

    at: int  # ms
    method: str
    url: str
    request_body: str
    events: int  # how many events the request carried
    status: int | None = None  # None: no answer (dry run, timeout, connection error)
    response_body: str | None = None
    error: str | None = None
    dry_run: bool = False


class Sender(Protocol):
    def send(self, events: list[OutgoingEvent]) -> list[Outcome]:
        """Deliver the events; one outcome per event, in order."""
        ...

    def take_exchanges(self) -> list[Exchange]:
        """The exchanges since the last call (HTTP senders record them; others return [])."""
        ...

    def close(self) -> None: ...


def short_reason(text: str, limit: int = 300) -> str:
    """A reason fit for a log line and a DLQ record: one line, bounded."""
    text = _SAFE_REASON.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def masked_outcome(outcome: Outcome, values: list[str]) -> Outcome:
    """The outcome with secrets masked in its reason and the reason made one bounded line."""
    if isinstance(outcome, Delivered):
        return outcome
    # Mask before cutting: a cut could leave part of a secret that no longer matches.
    reason = short_reason(mask(outcome.reason, values)) if values else outcome.reason
    if isinstance(outcome, Retry):
        return Retry(reason, outcome.not_before)
    return type(outcome)(reason)
