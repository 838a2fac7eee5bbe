"""Dead-letter records: one per event a destination will not take, with why and when; and the
count of dead letters dropped because a destination's DLQ was full."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from redis import Redis

    from trackpipe.keys import KeyLayout


class DeadLetter(msgspec.Struct):
    event_id: str
    event_name: str
    destination_id: str
    reason: str
    attempts: int
    first_failure_at: int  # ms
    last_failure_at: int  # ms
    event: msgspec.Raw  # the normalized event, as it would have been delivered


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def encode_dead_letter(record: DeadLetter) -> bytes:
    return _encoder.encode(record)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _decoder.decode(data)


def error_kind(reason: str) -> str:
    """The part of a reason that groups errors (`HTTP 500`, `timeout`), without response bodies."""
    return reason.split(": ", 1)[0][:80]


# Dropped-letter counts used to live in `P:dlq:dropped`, the very name of the DLQ of a destination
# whose id is `dropped`. They now live in `layout.dlq_dropped`; a hash still at the old name (left by
# an earlier version) is folded into it the next time a count is written, and read besides it until
# then, so no count is lost and that destination gets its DLQ name back.
LEGACY_DROPPED_ID = "dropped"

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


def legacy_dropped_key(layout: KeyLayout) -> str:
    return layout.dlq(LEGACY_DROPPED_ID)


def record_dropped(connection: Redis, layout: KeyLayout, destination_id: str, count: int) -> None:
    """Add `count` dropped dead letters of a destination, folding any old-name counts in first (atomic)."""
    connection.eval(_RECORD_DROPPED, 2, layout.dlq_dropped, legacy_dropped_key(layout), destination_id, max(0, count))


def fold_legacy_dropped(connection: Redis, layout: KeyLayout) -> None:
    """Move old-name counts (if any) into the current hash."""
    record_dropped(connection, layout, "", 0)


def dropped_counts(connection: Redis, layout: KeyLayout) -> dict[str, int]:
    """Destination id -> dead letters dropped, old-name counts included (one round trip, read only)."""
    pipe = connection.pipeline(transaction=True)
    pipe.hgetall(layout.dlq_dropped)
    pipe.type(legacy_dropped_key(layout))
    pipe.hgetall(legacy_dropped_key(layout))  # WRONGTYPE when it is a DLQ: ignored below
    current, legacy_type, legacy = pipe.execute(raise_on_error=False)
    counts: dict[str, int] = {}
    sources = [current, legacy] if legacy_type in (b"hash", "hash") else [current]
    for source in sources:
        if isinstance(source, Exception):
            raise source
        for field, value in source.items():
            name = field.decode() if isinstance(field, bytes) else field
            counts[name] = counts.get(name, 0) + int(value)
    return counts
