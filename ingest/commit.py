"""Group commit: requests that arrive while a write is in flight share the next write.

Each request hands its events to `GroupCommitter.submit` and waits for the write that holds
them. One flusher task runs the writes one at a time on the event loop; a write is one round trip
(`ingest.store.AsyncIngestStore.write` over the edge's own connection, `ingest.wire`): the
refused-key samples plus one script call that adds the batch to the ingest queue's open job, or
makes a new RQ job when there is none to join (`trackpipe.openjob`), and returns the queue length.

Writes are paced: a write that holds fewer than `min_events` starts no sooner than `interval` after
the previous one began. Fewer, larger writes mean fewer round trips and fuller jobs while workers
keep up (a job costs a worker several milliseconds whatever its size). A lone request after a
quiet spell is written at once; a busy edge writes as soon as `min_events` have gathered. With no
write in flight, a write that holds `min_events` takes no more (see `_batch`). A failed write
answers every request it holds with StorageUnavailable and counts in COMMIT_FAILURES.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from ingest.metrics import COMMIT_FAILURES
from ingest.unauthorized import UnauthorizedSample
from trackpipe.messages import IngestBatch, IngestRecord

log = logging.getLogger("trackpipe.edge")

# Write(batch or None, samples) -> ingest queue length after the write.
WriteFn = Callable[[IngestBatch | None, list[UnauthorizedSample]], Awaitable[int]]


class StorageUnavailable(Exception):
    """The write holding a request's events failed: nothing of it may be answered 200."""

    # What the 503 says. Redis errors stay in the log (they may name servers); a subclass whose
    # cause is safe to show (NotReplicated) adds it.
    def public_reason(self) -> str:
        return "storage unavailable, nothing was stored"


class CommitStats:
    def __init__(self) -> None:
        self.writes = 0
        self.events = 0
        self.failures = 0


class _Pending:
    __slots__ = ("events", "loop", "records", "samples", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.records: list[IngestRecord] = []
        self.samples: list[UnauthorizedSample] = []
        self.events = 0
        self.loop = loop
        # One future per request, not one shared: a request cancelled while it waits (client gone)
        # cancels only its own. Cheaper than asyncio.shield around a shared one.
        self.waiters: list[asyncio.Future[None]] = []

    def settle(self, error: Exception | None) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)


class GroupCommitter:
    def __init__(
        self,
        write: WriteFn,
        *,
        max_events: int = 2_000,
        interval_seconds: float = 0.02,
        min_events: int = 32,
        on_write: Callable[[int, float], None] | None = None,
        name: str = "",
    ) -> None:
        self._write = write
        self._name = f" (shard {name})" if name else ""  # said in the log of a failed write
        self._max_events = max_events
        self._interval = interval_seconds
        self._min_events = min_events
        self._last_write_started = float("-inf")
        self._on_write = on_write
        self._queue: deque[_Pending] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # the open write has min_events, or another is queued behind it
        # A write is in flight. Without one, requests arriving together (64 connections answered by
        # one write come back together) would all join one write and leave the loop idle while it is
        # in flight, every time; split, one half's write is in flight while the other half is served.
        self._writing = False
        self.backlog = 0  # ingest queue length seen by the latest write
        self.stats = CommitStats()
        # The loop it serves, looked up once: asyncio.get_running_loop() costs a getpid() system
        # call on Python 3.11, once per request here (a closed loop, as in tests, is replaced).
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _batch(self, adding: int = 0) -> _Pending:
        """The newest write with room for `adding` more events; otherwise a new one. With no write in
        flight, the next write takes no more once it holds `min_events`: it can go at once, and what
        arrives after it goes in the one behind it, which gathers while the first is in flight."""
        queue = self._queue
        last = queue[-1] if queue else None
        if last is None or (
            last.events
            and (
                last.events + adding > self._max_events
                or (len(queue) == 1 and not self._writing and last.events >= self._min_events)
            )
        ):
            last = _Pending(self._running_loop())
            queue.append(last)
        return last

    async def submit(self, record: IngestRecord) -> None:
        """Returns once the record is stored in Redis; raises StorageUnavailable otherwise."""
        pending = self._batch(len(record.events))
        pending.records.append(record)
        pending.events += len(record.events)
        if pending.events >= self._min_events or len(self._queue) > 1:
            self._ready.set()  # enough to be worth a job: no need to wait out the interval
        self._ensure_flusher()
        waiter = pending.loop.create_future()
        pending.waiters.append(waiter)
        await waiter

    def add_sample(self, sample: UnauthorizedSample) -> None:
        """Best effort: rides along with the next write; nobody waits for it."""
        pending = self._batch()
        pending.samples.append(sample)
        self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = self._running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            head = self._queue[0]
            wait = self._last_write_started + self._interval - loop.time()
            if wait > 0 and len(self._queue) == 1 and head.events < self._min_events:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), wait)
            pending = self._queue.popleft()
            self._last_write_started = loop.time()
            batch = IngestBatch(pending.records) if pending.records else None
            started = time.perf_counter()
            self._writing = True
            try:
                self.backlog = await self._write(batch, pending.samples)
            except Exception as exc:
                self.stats.failures += 1
                COMMIT_FAILURES.inc()
                log.warning("ingest write failed%s: %s: %s", self._name, type(exc).__name__, exc)
                # A StorageUnavailable of the store's own (NotReplicated) keeps its words for the 503.
                pending.settle(exc if isinstance(exc, StorageUnavailable) else StorageUnavailable(str(exc)))
                continue
            finally:
                self._writing = False
            self.stats.writes += 1
            self.stats.events += pending.events
            pending.settle(None)
            if self._on_write is not None:
                try:
                    self._on_write(pending.events, time.perf_counter() - started)
                except Exception:  # a metrics hiccup must not stop the flusher
                    log.exception("commit observer failed")

    async def drain(self) -> None:
        """Finish every write already handed over (graceful shutdown)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
