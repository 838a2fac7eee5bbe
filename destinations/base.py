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


_event_decoder = msgspec.json.Decoder(dict[str, Any])


class OutgoingEvent:
    """One normalized event as a sender gets it. `body` is the event's stored JSON, for senders that
    forward it unchanged; `event` is the same event decoded, on first use only: decoding every event
    into dicts cost a webhook or file worker about a quarter of its CPU, for senders that never
    look inside (the delivery job has already checked that each body is a JSON object).
    A plain class rather than a Struct: a Struct cannot decode a field on first use."""

    __slots__ = ("_event", "body", "event_id", "event_name")

    def __init__(self, event_id: str, event_name: str, event: dict[str, Any] | None = None, body: bytes = b"") -> None:
        self.event_id = event_id
        self.event_name = event_name
        self.body = body
        self._event = event

    @property
    def event(self) -> dict[str, Any]:
        """The normalized v2 event (senders must not change it)."""
        if self._event is None:
            self._event = _event_decoder.decode(self.body)
        return self._event

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutgoingEvent):
            return NotImplemented
        return (self.event_id, self.event_name, self.body) == (other.event_id, other.event_name, other.body)

    __hash__ = None  # type: ignore[assignment]  # mutable cache, compared by value

    def __repr__(self) -> str:
        return f"OutgoingEvent(event_id={self.event_id!r}, event_name={self.event_name!r}, body={self.body!r})"


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
