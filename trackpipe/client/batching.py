"""Packing encoded events into batch request bodies and compressing them (pure)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from trackpipe.client.events import MAX_BATCH_BYTES

_HEAD = b'{"batch":['
_TAIL = b"]}"
OVERHEAD = len(_HEAD) + len(_TAIL)


def batch_size(events: Sequence[bytes]) -> int:
    """Bytes of the body `batch_body(events)` (uncompressed)."""
    return OVERHEAD + sum(len(e) for e in events) + max(len(events) - 1, 0)


def fits(events_bytes: int, count: int, max_bytes: int = MAX_BATCH_BYTES) -> bool:
    """Whether `count` events of `events_bytes` bytes in total make a body within `max_bytes`."""
    return OVERHEAD + events_bytes + max(count - 1, 0) <= max_bytes


def take_count(sizes: Sequence[int], max_events: int, max_bytes: int = MAX_BATCH_BYTES) -> int:
    """How many events from the head (of the given encoded sizes) go into the next body: as many as
    fit in `max_bytes` and `max_events`, and at least one (a single event is within its own limit,
    which is far below the batch's)."""
    total = 0
    for count, size in enumerate(sizes[:max_events]):
        if count and not fits(total + size, count + 1, max_bytes):
            return count
        total += size
    return min(len(sizes), max_events)


def batch_body(events: Sequence[bytes]) -> bytes:
    return _HEAD + b",".join(events) + _TAIL


def gzip_body(body: bytes, level: int) -> bytes:
    """A gzip member (what `Content-Encoding: gzip` means); no file name or time in the header, so the
    same body compresses to the same bytes."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()
