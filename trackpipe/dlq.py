"""Dead-letter queue operations for analysts: select, export, replay, purge.

A replayed record leaves the DLQ in the same transaction that enqueues its delivery job, so a replay
that stops midway loses nothing and sends nothing twice. Replayed events keep their event id and
bypass deduplication (they go straight to a delivery queue).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import msgspec
from redis import Redis

from trackpipe.config import Config
from trackpipe.jobs import DELIVER_FUNCTION, delivery_job_options, delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeadLetter, DeliveryBatch, DeliveryEvent, decode_dead_letter, encode_delivery

REPLAY_BATCH = 100
# Records per LRANGE when reading a DLQ: small first (a listing with a limit often needs only the
# newest few), then larger, bounded so one reply stays well under a megabyte of typical records.
FIRST_PAGE = 100
MAX_PAGE = 1_000


class DlqError(ValueError):
    """A bad selection or target; the message names the option."""


class Selection(msgspec.Struct, frozen=True):
    event_name: str | None = None
    reason_contains: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    event_id: str | None = None

    def matches(self, record: DeadLetter) -> bool:
        """Pure: does the record pass every filter given?"""
        if self.event_name is not None and record.event_name != self.event_name:
            return False
        if self.reason_contains is not None and self.reason_contains.lower() not in record.reason.lower():
            return False
        if self.since_ms is not None and record.last_failure_at < self.since_ms:
            return False
        if self.until_ms is not None and record.last_failure_at > self.until_ms:
            return False
        return self.event_id is None or record.event_id == self.event_id


def parse_time(text: str, option: str) -> int:
    """Milliseconds from epoch milliseconds, epoch seconds or ISO-8601 (naive = UTC)."""
    value = text.strip()
    if value.isascii() and value.isdigit():
        if len(value) > 16:
            raise DlqError(f"{option}: {text!r} is not a time (too many digits)")
        number = int(value)
        return number if number >= 100_000_000_000 else number * 1000
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DlqError(f"{option}: {text!r} is not a time (ISO-8601 like 2026-11-26T10:00, or epoch)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def check_destination(config: Config, destination_id: str, option: str = "--destination") -> None:
    known = [d.id for d in config.destinations]
    if destination_id not in known:
        raise DlqError(f"{option}: no destination {destination_id!r} (known: {', '.join(known) or 'none'})")


def records(
    connection: Redis,
    layout: KeyLayout,
    destination_id: str,
    *,
    first_page: int = FIRST_PAGE,
    max_page: int = MAX_PAGE,
) -> Iterator[tuple[bytes, DeadLetter]]:
    """Every record, newest first, with its raw bytes (the handle for removing it).

    Read a page at a time (pages grow from `first_page` to `max_page` records), so a caller that
    stops early reads only what it needed, and Redis never sends the whole DLQ in one reply.
    Dead letters pushed meanwhile land before the first page and are not listed, but they push
    the records already read into the next page. So each page is read in one transaction with the
    record just before it: when that is not the last record read, the list has moved, and the
    page's leading records that were already read (by hash) are passed over. Two byte-identical
    records met just then may be listed once; records removed meanwhile (a replay or purge) move
    the others the other way, and as many may be missed by this reading. None is read twice.
    """
    key = layout.dlq(destination_id)
    seen: set[int] = set()
    start = 0
    size = max(1, min(first_page, max_page))
    last: bytes | None = None
    catching_up = False
    while True:
        if last is None:
            page, moved = connection.lrange(key, 0, size - 1), False
        else:
            pipe = connection.pipeline(transaction=True)
            pipe.lindex(key, start - 1)
            pipe.lrange(key, start, start + size - 1)
            before, page = pipe.execute()
            moved = before != last
        catching_up = catching_up or moved
        skip = 0
        if catching_up:  # records already read come first (maybe for more than a page): pass over them
            while skip < len(page) and hash(page[skip]) in seen:
                skip += 1
            catching_up = skip == len(page)
        for raw in page[skip:]:
            seen.add(hash(raw))
            try:
                record = decode_dead_letter(raw)
            except msgspec.DecodeError:
                continue  # not ours; never touched
            yield raw, record
        if len(page) < size:
            return
        start += len(page)
        last = page[-1]
        size = min(size * 2, max_page)


def select_iter(
    connection: Redis, layout: KeyLayout, destination_id: str, selection: Selection, limit: int | None = None
) -> Iterator[tuple[bytes, DeadLetter]]:
    """The records that match, newest first; stops reading once `limit` were found."""
    if limit is not None and limit <= 0:
        return
    found = 0
    for raw, record in records(connection, layout, destination_id):
        if selection.matches(record):
            yield raw, record
            found += 1
            if limit is not None and found >= limit:
                return


def select(
    connection: Redis, layout: KeyLayout, destination_id: str, selection: Selection, limit: int | None = None
) -> list[tuple[bytes, DeadLetter]]:
    return list(select_iter(connection, layout, destination_id, selection, limit))


def purge(connection: Redis, layout: KeyLayout, destination_id: str, chosen: list[tuple[bytes, DeadLetter]]) -> int:
    pipe = connection.pipeline(transaction=True)
    for raw, _ in chosen:
        pipe.lrem(layout.dlq(destination_id), 1, raw)
    return sum(int(n) for n in pipe.execute()) if chosen else 0


def replay(
    connection: Redis,
    config: Config,
    destination_id: str,
    chosen: list[tuple[bytes, DeadLetter]],
    target_id: str,
    *,
    rate: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send the chosen records to `target_id`'s delivery queue; returns how many were replayed."""
    layout = KeyLayout(config.key_prefix)
    queue = delivery_queue(target_id, connection)
    options = delivery_job_options(config.worker)
    done = 0
    started = time.monotonic()
    size = min(REPLAY_BATCH, max(1, int(rate))) if rate else REPLAY_BATCH
    for start in range(0, len(chosen), size):
        part = chosen[start : start + size]
        if rate:
            pause = started + done / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        events = [DeliveryEvent(r.event_id, r.event_name, bytes(r.event)) for _, r in part]
        pipe = connection.pipeline(transaction=True)
        queue.enqueue_call(
            DELIVER_FUNCTION,
            args=(encode_delivery(DeliveryBatch(target_id, events, int(time.time() * 1000), "replay")),),
            description=f"replay from the DLQ of {destination_id}",
            pipeline=pipe,
            **options,
        )
        for raw, _ in part:
            pipe.lrem(layout.dlq(destination_id), 1, raw)
        pipe.execute()
        done += len(part)
        if progress is not None:
            progress(done, len(chosen))
    return done
