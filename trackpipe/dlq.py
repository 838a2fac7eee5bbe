"""Dead-letter queue operations for analysts: select, export, replay, purge.

A replayed record leaves the DLQ in the same transaction that enqueues its delivery job, so a replay
that stops midway loses nothing and sends nothing twice. Replayed events keep their event id and
bypass deduplication (they go straight to a delivery queue).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from redis import Redis

from trackpipe.config import Config
from trackpipe.jobs import DELIVER_FUNCTION, delivery_job_options, delivery_queue
from trackpipe.keys import KeyLayout
from trackpipe.messages import DeadLetter, DeliveryBatch, DeliveryEvent, decode_dead_letter, encode_delivery

if TYPE_CHECKING:
    from trackpipe.sharded import Sharded

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


# -- the console: letters by identity, pages, background replays --------------------------------

# A letter's identity is a hash of its stored bytes: list positions move as new letters arrive and
# old ones leave, the bytes do not. Byte-identical twins share it (and are selected together).
LETTER_ID_CHARS = 24
PAGE_SIZE = 50
# A replay's progress record outlives the replay by this much, so the page can still show the result.
PROGRESS_SECONDS = 7 * 24 * 3600
# The lock a running replay holds on its DLQ; refreshed at every batch, so it only outlives a
# replay whose process died by this much.
REPLAY_LOCK_SECONDS = 120
# Letters a background replay selects at a time (then enqueues in batches of REPLAY_BATCH): bounds
# the memory a replay of a whole DLQ takes.
REPLAY_CHUNK = 1_000
MAX_RATE = 100_000.0
MAX_IDS = 1_000  # letters picked one by one in one action (a page shows PAGE_SIZE)
_progress_encoder = msgspec.json.Encoder()


def letter_id(raw: bytes) -> str:
    """The identity of a stored dead letter (see LETTER_ID_CHARS)."""
    return hashlib.sha256(raw).hexdigest()[:LETTER_ID_CHARS]


def check_ids(ids: Iterable[str]) -> frozenset[str]:
    """The given letter identities, checked (they come from a form)."""
    chosen = frozenset(i.strip().lower() for i in ids if i.strip())
    if len(chosen) > MAX_IDS:
        raise DlqError(f"id: at most {MAX_IDS} letters at a time (select all matching instead)")
    for ident in chosen:
        if len(ident) != LETTER_ID_CHARS or any(c not in "0123456789abcdef" for c in ident):
            raise DlqError(f"id: {ident[:40]!r} is not a dead letter's id ({LETTER_ID_CHARS} hex digits)")
    return chosen


def check_rate(text: str | None, option: str = "rate") -> float | None:
    """Events per second from a form: empty means as fast as the queue takes them."""
    if text is None or not text.strip():
        return None
    try:
        rate = float(text)
    except ValueError:
        raise DlqError(f"{option}: {text!r} is not a number of events per second") from None
    if not 0.1 <= rate <= MAX_RATE:  # also refuses nan and inf
        raise DlqError(f"{option}: must be from 0.1 to {MAX_RATE:.0f} events per second")
    return rate


def matching(
    connection: Redis, layout: KeyLayout, destination_id: str, selection: Selection, ids: frozenset[str] | None = None
) -> Iterator[tuple[str, bytes, DeadLetter]]:
    """The records that match, newest first, with their identity; with `ids`, only those letters."""
    for raw, record in select_iter(connection, layout, destination_id, selection):
        ident = letter_id(raw)
        if ids is None or ident in ids:
            yield ident, raw, record


def count(
    connection: Redis, layout: KeyLayout, destination_id: str, selection: Selection, ids: frozenset[str] | None = None
) -> int:
    """How many records match (reads the DLQ page by page, holds none of it)."""
    return sum(1 for _ in matching(connection, layout, destination_id, selection, ids))


class Page(msgspec.Struct):
    letters: list[tuple[str, DeadLetter]]  # (identity, record), newest first
    next_after: str | None  # the identity to pass as `after` for the next page; None on the last
    lost: bool = False  # the letter `after` named has left the DLQ (replayed or purged)


def page_of(
    found_letters: Iterable[tuple[str, bytes, DeadLetter]], *, after: str | None = None, size: int = PAGE_SIZE
) -> Page:
    """A page of the records of a stream of (identity, raw, record), newest first (one DLQ's
    `matching`, or several shards'): the first `size` after the letter `after` (from the newest
    without it). The cursor is an identity, not a position, so letters arriving meanwhile neither
    repeat nor hide records on the next page. Reads stop one record past the page."""
    found: list[tuple[str, DeadLetter]] = []
    passed = after is None
    for ident, _, record in found_letters:
        if not passed:
            passed = ident == after
            continue
        if len(found) == size:
            return Page(found, found[-1][0])
        found.append((ident, record))
    return Page(found, None, lost=not passed)


def sizes(connection: Redis, layout: KeyLayout, destination_ids: list[str]) -> dict[str, int]:
    """Every given destination's DLQ size (one round trip)."""
    pipe = connection.pipeline(transaction=False)
    for destination_id in destination_ids:
        pipe.llen(layout.dlq(destination_id))
    return {d: int(n) for d, n in zip(destination_ids, pipe.execute() if destination_ids else [], strict=True)}


class ReplayProgress(msgspec.Struct):
    """A background replay, as stored under P:dlqreplay:<job_id> (JSON) while and after it runs."""

    job_id: str
    source: str  # the DLQ replayed from
    target: str  # the destination whose delivery queue gets the letters
    total: int  # letters selected when it started
    state: str = "running"  # running, done, failed; `interrupted` when read after its process died
    done: int = 0
    rate: float | None = None  # events per second; None: as fast as the queue takes them
    started_at: int = 0  # ms
    updated_at: int = 0  # ms
    error: str | None = None


# Saves a replay's progress and, while it runs, refreshes its lock, but only while the lock is still
# its own (a replay stalled past the lock's life must not carry on beside a newer one): 0 then.
_SAVE = """
if ARGV[3] == "running" then
    if redis.call("GET", KEYS[2]) ~= ARGV[4] then return 0 end
    redis.call("SET", KEYS[2], ARGV[4], "EX", ARGV[5])
end
redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2])
return 1
"""
# Releases a replay's lock if it still holds it.
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""


@contextlib.contextmanager
def exclusive_replay(connection: Redis, layout: KeyLayout, destination_id: str) -> Iterator[Callable[[], None]]:
    """Hold the DLQ's replay lock (the one background replays take) while a replay selects and sends
    letters, so that no two replays pick the same ones; yields a function that renews the lock (call
    it between batches). DlqError when another replay holds it."""
    key, token = layout.dlq_replay_lock(destination_id), uuid.uuid4().hex[:16]
    if not connection.set(key, token, nx=True, ex=REPLAY_LOCK_SECONDS):
        raise DlqError(f"a replay of {destination_id}'s dead letters is already running; wait for it to end")
    try:
        yield lambda: connection.set(key, token, xx=True, ex=REPLAY_LOCK_SECONDS) and None
    finally:
        connection.eval(_RELEASE, 1, key, token)


def _save(connection: Redis, layout: KeyLayout, job: ReplayProgress) -> None:
    job.updated_at = int(time.time() * 1000)
    keys = (layout.dlq_replay(job.job_id), layout.dlq_replay_lock(job.source))
    args = (_progress_encoder.encode(job), PROGRESS_SECONDS, job.state, job.job_id, REPLAY_LOCK_SECONDS)
    if not connection.eval(_SAVE, 2, *keys, *args):
        stalled = f"stalled over {REPLAY_LOCK_SECONDS} s"
        raise DlqError(f"replay {job.job_id} lost its lock on {job.source}'s DLQ ({stalled})")


def running_replay(connection: Redis, layout: KeyLayout, destination_id: str) -> str | None:
    """The id of the replay running on this DLQ, if one is."""
    value = connection.get(layout.dlq_replay_lock(destination_id))
    return value.decode() if value else None


def read_progress(connection: Redis, layout: KeyLayout, job_id: str) -> ReplayProgress | None:
    """A replay's progress; a `running` one whose lock is gone (its process died) reads `interrupted`."""
    raw = connection.get(layout.dlq_replay(job_id))
    if raw is None:
        return None
    try:
        job = msgspec.json.decode(raw, type=ReplayProgress)
    except msgspec.DecodeError:
        return None
    if job.state == "running" and running_replay(connection, layout, job.source) != job.job_id:
        job.state = "interrupted"
    return job


def start_replay(
    connection: Redis,
    config: Config,
    destination_id: str,
    selection: Selection,
    target_id: str,
    *,
    ids: frozenset[str] | None = None,
    rate: float | None = None,
    job_id: str | None = None,
) -> ReplayProgress:
    """Take the DLQ's replay lock and record a new replay of the matching letters; `run_replay`
    then does it. One replay per DLQ at a time: two of the same letters would send them twice
    (a record is removed with LREM after its job is made, and LREM of a gone record removes nothing)."""
    layout = KeyLayout(config.key_prefix)
    job_id = job_id or uuid.uuid4().hex[:16]
    if not connection.set(layout.dlq_replay_lock(destination_id), job_id, nx=True, ex=REPLAY_LOCK_SECONDS):
        raise DlqError(f"a replay of {destination_id}'s dead letters is already running; wait for it to end")
    try:
        total = count(connection, layout, destination_id, selection, ids)
        job = ReplayProgress(job_id, destination_id, target_id, total, rate=rate, started_at=int(time.time() * 1000))
        _save(connection, layout, job)
    except BaseException:
        connection.eval(_RELEASE, 1, layout.dlq_replay_lock(destination_id), job_id)
        raise
    return job


def run_replay(
    connection: Redis,
    config: Config,
    job: ReplayProgress,
    selection: Selection,
    *,
    ids: frozenset[str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayProgress:
    """Replay what `start_replay` counted, at `job.rate`, recording progress after every batch.

    Letters are selected a chunk at a time from the head of the DLQ (each chunk leaves it as its
    jobs are enqueued, as in `replay`), at most `job.total` of them, and only those that last
    failed before the replay started: a replayed letter that fails again comes back newer, and is
    not replayed a second time by the same replay."""
    layout = KeyLayout(config.key_prefix)
    cutoff = job.started_at if selection.until_ms is None else min(selection.until_ms, job.started_at)
    chunk_selection = msgspec.structs.replace(selection, until_ms=cutoff)
    per_step = min(REPLAY_BATCH, max(1, int(job.rate))) if job.rate else REPLAY_CHUNK
    began = clock()
    try:
        while job.done < job.total:
            want = min(per_step, job.total - job.done)
            chosen = [
                (raw, record)
                for _, raw, record in itertools.islice(
                    matching(connection, layout, job.source, chunk_selection, ids), want
                )
            ]
            if not chosen:
                break  # the rest left the DLQ meanwhile (purged, or replayed from the CLI)
            if job.rate:
                pause = began + job.done / job.rate - clock()
                if pause > 0:
                    sleep(pause)
            base = job.done

            def batch_done(done: int, _total: int, base: int = base) -> None:
                # Saved after each enqueued batch, so a failure later in the chunk still counts these.
                job.done = base + done
                _save(connection, layout, job)

            replay(connection, config, job.source, chosen, job.target, progress=batch_done)
        job.state = "done"
    except Exception as exc:  # recorded for the page; the letters not yet replayed stay in the DLQ
        job.state = "failed"
        job.error = f"{type(exc).__name__}: {exc}"[:300]
    _save(connection, layout, job)
    connection.eval(_RELEASE, 1, layout.dlq_replay_lock(job.source), job.job_id)
    return job


# -- several shards: each shard keeps its own DLQs; listings merge them, actions stay per shard ----
#
# A letter keeps its identity (the hash of its stored bytes) and is carried with the name of its
# shard: single-shard ids are unchanged, and a replay or purge acts on each letter where it is
# stored. Byte-identical letters on two shards share an identity, as twins on one shard do, and are
# selected together. A replayed letter goes to the delivery queue of its own shard, under that
# shard's replay lock.


def merged_matching(
    sharded: Sharded,
    layout: KeyLayout,
    destination_id: str,
    selection: Selection,
    ids: frozenset[str] | None = None,
) -> Iterator[tuple[str, str, bytes, DeadLetter]]:
    """(shard, identity, raw, record) of the letters that match on every shard, newest first (by
    their last failure; a tie keeps shard order). Each shard's DLQ is read page by page as needed."""

    def tagged(name: str, redis: Redis) -> Iterator[tuple[str, str, bytes, DeadLetter]]:
        for ident, raw, record in matching(redis, layout, destination_id, selection, ids):
            yield name, ident, raw, record

    streams = [tagged(c.name, c.redis) for c in sharded]
    if len(streams) == 1:
        yield from streams[0]
        return
    yield from heapq.merge(*streams, key=lambda item: -item[3].last_failure_at)


def select_union(
    sharded: Sharded, layout: KeyLayout, destination_id: str, selection: Selection, limit: int | None = None
) -> Iterator[tuple[str, bytes, DeadLetter]]:
    """(shard, raw, record) of the matching letters over every shard, newest first, at most `limit`."""
    if limit is not None and limit <= 0:
        return
    for n, (shard, _, raw, record) in enumerate(merged_matching(sharded, layout, destination_id, selection), 1):
        yield shard, raw, record
        if limit is not None and n >= limit:
            return


def by_shard(chosen: Iterable[tuple[str, bytes, DeadLetter]]) -> dict[str, list[tuple[bytes, DeadLetter]]]:
    """Chosen letters grouped by their shard (pure), each group in its order."""
    groups: dict[str, list[tuple[bytes, DeadLetter]]] = {}
    for shard, raw, record in chosen:
        groups.setdefault(shard, []).append((raw, record))
    return groups


def purge_union(
    sharded: Sharded, layout: KeyLayout, destination_id: str, chosen: list[tuple[str, bytes, DeadLetter]]
) -> int:
    """Delete each chosen letter from its own shard's DLQ."""
    return sum(
        purge(sharded.named(shard).redis, layout, destination_id, letters)
        for shard, letters in by_shard(chosen).items()
    )


def page_union(
    sharded: Sharded,
    layout: KeyLayout,
    destination_id: str,
    selection: Selection,
    *,
    after: str | None = None,
    size: int = PAGE_SIZE,
) -> Page:
    found = (
        (ident, raw, record) for _, ident, raw, record in merged_matching(sharded, layout, destination_id, selection)
    )
    return page_of(found, after=after, size=size)


def count_union(
    sharded: Sharded, layout: KeyLayout, destination_id: str, selection: Selection, ids: frozenset[str] | None = None
) -> int:
    return sum(count(c.redis, layout, destination_id, selection, ids) for c in sharded)


def export_lines_union(
    sharded: Sharded, layout: KeyLayout, destination_id: str, selection: Selection, ids: frozenset[str] | None = None
) -> Iterator[bytes]:
    """The matching records as JSON lines (each the stored record, event included), read page by
    page as the caller consumes them."""
    for _, _, raw, _ in merged_matching(sharded, layout, destination_id, selection, ids):
        yield raw + b"\n"


def sizes_union(sharded: Sharded, layout: KeyLayout, destination_ids: list[str]) -> dict[str, int]:
    """Every given destination's DLQ size, summed over the shards."""
    total = dict.fromkeys(destination_ids, 0)
    for client in sharded:
        for destination_id, n in sizes(client.redis, layout, destination_ids).items():
            total[destination_id] += n
    return total


def running_replay_union(sharded: Sharded, layout: KeyLayout, destination_id: str) -> str | None:
    """The id of a replay running on this destination's DLQ on any shard."""
    for client in sharded:
        found = running_replay(client.redis, layout, destination_id)
        if found:
            return found
    return None


@contextlib.contextmanager
def exclusive_replay_union(sharded: Sharded, layout: KeyLayout, destination_id: str) -> Iterator[Callable[[], None]]:
    """`exclusive_replay` on every shard at once (each shard's lock on its own DLQ); yields one
    function renewing them all."""
    with contextlib.ExitStack() as stack:
        renewals = [stack.enter_context(exclusive_replay(c.redis, layout, destination_id)) for c in sharded]

        def renew() -> None:
            for each in renewals:
                each()

        yield renew


def replay_union(
    sharded: Sharded,
    config: Config,
    destination_id: str,
    chosen: list[tuple[str, bytes, DeadLetter]],
    target_id: str,
    *,
    rate: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """`replay` of the chosen letters, each group on its own shard (its delivery queue there), one
    shard after another; `progress` counts over them all."""
    total = len(chosen)
    done = 0
    for shard, letters in by_shard(chosen).items():
        base = done

        def step(n: int, _total: int, base: int = base) -> None:
            if progress is not None:
                progress(base + n, total)

        done += replay(sharded.named(shard).redis, config, destination_id, letters, target_id, rate=rate, progress=step)
    return done


def start_replay_union(
    sharded: Sharded,
    config: Config,
    destination_id: str,
    selection: Selection,
    target_id: str,
    *,
    ids: frozenset[str] | None = None,
    rate: float | None = None,
) -> list[tuple[str, ReplayProgress]]:
    """`start_replay` on every shard under one job id (each shard its own lock and progress record,
    the rate shared out among them); `run_replay` then runs each on its shard. DlqError, and nothing
    left started, when a replay of this DLQ runs on any shard."""
    layout = KeyLayout(config.key_prefix)
    job_id = uuid.uuid4().hex[:16]
    share = None if rate is None else max(0.1, rate / len(sharded))
    started: list[tuple[str, ReplayProgress]] = []
    try:
        for client in sharded:
            job = start_replay(
                client.redis, config, destination_id, selection, target_id, ids=ids, rate=share, job_id=job_id
            )
            started.append((client.name, job))
    except BaseException:
        for name, _ in started:
            redis = sharded.named(name).redis
            with contextlib.suppress(Exception):
                redis.delete(layout.dlq_replay(job_id))
                redis.eval(_RELEASE, 1, layout.dlq_replay_lock(destination_id), job_id)
        raise
    return started


def combine_progress(parts: list[ReplayProgress]) -> ReplayProgress:
    """One replay over several shards, as its page shows it (pure): counts summed; failed if a shard
    failed, else running or interrupted while any is, else done."""
    first = parts[0]
    states = [p.state for p in parts]
    state = next((s for s in ("failed", "interrupted", "running") if s in states), "done")
    if state == "interrupted" and "running" in states:
        state = "running"
    errors = [p.error for p in parts if p.error]
    return ReplayProgress(
        first.job_id,
        first.source,
        first.target,
        sum(p.total for p in parts),
        state,
        sum(p.done for p in parts),
        None if any(p.rate is None for p in parts) else sum(p.rate or 0.0 for p in parts),
        min(p.started_at for p in parts),
        max(p.updated_at for p in parts),
        "; ".join(errors) if errors else None,
    )


def read_progress_union(sharded: Sharded, layout: KeyLayout, job_id: str) -> ReplayProgress | None:
    """A replay's progress over the shards it runs on (None when no shard has it)."""
    found = [p for c in sharded if (p := read_progress(c.redis, layout, job_id)) is not None]
    return combine_progress(found) if found else None
