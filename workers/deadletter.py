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
