"""Dead letters on the worker side: grouping their reasons, the count of dead letters dropped
because a destination's DLQ was full, and what the inspector learns of them (FAILED for that
destination). The record itself is `trackpipe.messages.DeadLetter`."""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

import msgspec

from trackpipe.logs import redact
from trackpipe.queries import DeliveryFailure, legacy_dropped_key

if TYPE_CHECKING:
    from redis import Redis

    from trackpipe.keys import KeyLayout
    from trackpipe.messages import DeliveryEvent

# The reason as the inspector shows it: the DLQ keeps the whole one.
FAILURE_REASON_CHARS = 500


class _Context(msgspec.Struct):
    source_id: str | None = None
    received_at: int | None = None


class _Origin(msgspec.Struct):
    """The part of a normalized event that says where it came from (the rest is skipped unread)."""

    context: _Context | None = None


_origin_decoder = msgspec.json.Decoder(_Origin)
_json = msgspec.json.Encoder()


def failures_by_source(
    dead: list[tuple[DeliveryEvent, str]],
    destination_id: str,
    now_ms: int,
    sources: Container[str],
    status: str = "FAILED",
) -> dict[str, list[bytes]]:
    """Source id -> `DeliveryFailure` entries (JSON) of the dead-lettered events (or, with status
    FILTERED, the events the destination skipped), for the inspector.
    The source is the event's `context.source_id`; events of sources no longer configured (or whose
    body does not say) are left out."""
    found: dict[str, list[bytes]] = {}
    for event, reason in dead:
        try:
            context = _origin_decoder.decode(event.body).context
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if context is None or context.source_id is None or context.source_id not in sources:
            continue
        received_at = context.received_at or event.received_at or None
        entry = DeliveryFailure(
            event.event_id, destination_id, redact(reason)[:FAILURE_REASON_CHARS], now_ms, received_at, status
        )
        found.setdefault(context.source_id, []).append(_json.encode(entry))
    return found


def error_kind(reason: str) -> str:
    """The part of a reason that groups errors (`HTTP 500`, `timeout`), without response bodies."""
    return reason.split(": ", 1)[0][:80]


# Dropped-letter counts once lived at `legacy_dropped_key` (see trackpipe.queries), which is also the
# DLQ of a destination named `dropped`. KEYS[1] the dropped-count hash, KEYS[2] its old name. Only a
# hash is moved: at the old name a list is that destination's DLQ and stays untouched.
_FOLD_LEGACY_DROPPED = """
if redis.call('TYPE', KEYS[2])['ok'] == 'hash' then
  local old = redis.call('HGETALL', KEYS[2])
  for i = 1, #old, 2 do redis.call('HINCRBY', KEYS[1], old[i], old[i + 1]) end
  redis.call('DEL', KEYS[2])
end
return 1
"""


def fold_legacy_dropped(connection: Redis, layout: KeyLayout) -> None:
    """Move old-name counts (if any) into the current hash, atomically (a worker does it at start)."""
    connection.eval(_FOLD_LEGACY_DROPPED, 2, layout.dlq_dropped, legacy_dropped_key(layout))
