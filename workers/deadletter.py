"""Dead letters on the worker side: grouping their reasons, and the count of dead letters dropped
because a destination's DLQ was full. The record itself is `trackpipe.messages.DeadLetter`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trackpipe.queries import legacy_dropped_key

if TYPE_CHECKING:
    from redis import Redis

    from trackpipe.keys import KeyLayout


def error_kind(reason: str) -> str:
    """The part of a reason that groups errors (`HTTP 500`, `timeout`), without response bodies."""
    return reason.split(": ", 1)[0][:80]


# Dropped-letter counts once lived at `legacy_dropped_key` (see trackpipe.queries): writing a count
# folds any left there into the current hash first.
# KEYS[1] the dropped-count hash, KEYS[2] its old name; ARGV[1] destination, ARGV[2] count (0: fold only).
# Only a hash is moved: at the old name a list is a destination's DLQ and stays untouched.
_RECORD_DROPPED = """
if redis.call('TYPE', KEYS[2])['ok'] == 'hash' then
  local old = redis.call('HGETALL', KEYS[2])
  for i = 1, #old, 2 do redis.call('HINCRBY', KEYS[1], old[i], old[i + 1]) end
  redis.call('DEL', KEYS[2])
end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


def record_dropped(connection: Redis, layout: KeyLayout, destination_id: str, count: int) -> None:
    """Add `count` dropped dead letters of a destination, folding any old-name counts in first (atomic)."""
    connection.eval(_RECORD_DROPPED, 2, layout.dlq_dropped, legacy_dropped_key(layout), destination_id, max(0, count))


def fold_legacy_dropped(connection: Redis, layout: KeyLayout) -> None:
    """Move old-name counts (if any) into the current hash."""
    record_dropped(connection, layout, "", 0)
