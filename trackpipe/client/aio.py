"""`AsyncClient`: the asyncio twin of `Client`, for async services. `await track()` queues the
event (waiting for room with overflow="block"), one task sends the batches with httpx.AsyncClient.

On the event loop: building and encoding the event, and with a spool its append to the segment file
(one small write(2) to the page cache). With `spool_fsync=True` the append and fsync run in a thread,
as do the cursor update after each acknowledged batch and gzip of a batch."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from trackpipe.client.config import ClientConfig, ClientStats, check_key, make_config
from trackpipe.client.core import Attempt, Call, Core, OnDrop, OnError, OnRejected, answered, log, run_callbacks
from trackpipe.client.events import build_event, encode_event


class AsyncClient:
    """Like `Client`, for asyncio: `await track(...)`, `await flush()`, `await aclose()` or `async with`.
    There is no exit flush for it (a loop cannot run at interpreter exit): close it, or use a spool."""

    def __init__(
        self,
        url: str,
        site_id: str,
        key: str,
        *,
        on_rejected: OnRejected | None = None,
        on_error: OnError | None = None,
        on_drop: OnDrop | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        self.config: ClientConfig = make_config(url, site_id, **options)
        self._core = Core(self.config, check_key(key), on_rejected, on_error, on_drop)
        self._cond: asyncio.Condition | None = None  # made on the running loop
        self._closed = False
        self._http = httpx.AsyncClient(timeout=self.config.timeout, transport=transport)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.config.url!r}, site_id={self.config.site_id!r}, key=***)"

    async def __aenter__(self) -> AsyncClient:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def stats(self) -> ClientStats:
        return msgspec.structs.replace(self._core.stats)

    def _start(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trackpipe-client")
        return self._cond

    # -- producing -----------------------------------------------------------------------------

    async def track(
        self,
        event_name: str,
        properties: Mapping[str, Any] | None = None,
        user: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        timestamp: object = None,
    ) -> str:
        """As `Client.track`: returns the event_id; EventTooLarge / ValueError at once."""
        event = build_event(event_name, properties, user, context, event_id, timestamp)
        data = encode_event(event)
        cond = self._start()
        if self._core.closing:
            raise RuntimeError("the client is closed")
        async with cond:
            calls = await self._admit(data)
        run_callbacks(calls)
        # A coroutine that only calls track() never waits while there is room: without a turn for
        # the loop on every call (~2 µs) the sender would barely run until the queue were full
        # (measured: a turn every 10 or 100 calls let no request finish in 200,000 calls).
        await asyncio.sleep(0)
        return event["context"]["event_id"]

    async def _admit(self, data: bytes) -> list[Call]:
        """Queue the event (condition held). With spool_fsync the write and its fsync run in a thread
        (the condition stays held, so the sender cannot read the spool meanwhile)."""
        assert self._cond is not None
        was_empty = self._core.queue.pending_events == 0
        if self.config.spool_fsync:
            if not self._core.queue.has_room(len(data)) and self.config.overflow == "block":
                room, calls = await self._block_wait(data)
                if not room:
                    return calls
            admitted, calls = await asyncio.to_thread(self._core.admit, data)
            queued = admitted == "queued"
        else:
            admitted, calls = self._core.admit(data)
            queued = admitted == "queued"
            if admitted == "full":  # overflow="block"
                queued, calls = await self._block(data)
        if queued and (was_empty or self._core.queue.pending_events >= self.config.flush_at):
            self._cond.notify_all()
        return calls

    async def _block(self, data: bytes) -> tuple[bool, list[Call]]:
        queued, calls = await self._block_wait(data)
        if queued:
            self._core.put(data)
        return queued, calls

    async def _block_wait(self, data: bytes) -> tuple[bool, list[Call]]:
        """Waits (condition held) for room: (True, []) when there is, else the event is dropped."""
        assert self._cond is not None
        timeout = self.config.block_timeout
        self._core.blocked += 1
        try:
            await asyncio.wait_for(
                self._cond.wait_for(lambda: self._core.queue.has_room(len(data)) or self._core.closing), timeout
            )
        except TimeoutError:
            return False, self._core.dropped([data], f"queue full for {timeout} s (overflow=block)")
        finally:
            self._core.blocked -= 1
        if self._core.closing:
            return False, self._core.dropped([data], "client closed while track() waited for room")
        return True, []

    async def flush(self, timeout: float | None = None) -> bool:
        """As `Client.flush`."""
        cond = self._start()
        async with cond:
            target = self._core.put_count
            self._core.flushers += 1
            cond.notify_all()
            try:
                done = cond.wait_for(lambda: self._core.done_count >= target or self._stopped())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done, timeout)
            finally:
                self._core.flushers -= 1
            return self._core.done_count >= target

    def _stopped(self) -> bool:
        return self._task is not None and self._task.done()

    async def aclose(self, timeout: float | None = None) -> None:
        """As `Client.close`."""
        if self._closed:
            return
        self._closed = True
        cond = self._start()
        wait = self.config.shutdown_timeout if timeout is None else timeout
        async with cond:
            self._core.closing = True
            self._core.deadline = time.monotonic() + wait
            cond.notify_all()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), wait + 1.0)
        except TimeoutError:
            self._task.cancel()
        run_callbacks(self._core.dropped_at_shutdown())
        await self._http.aclose()
        self._core.close()

    # -- sending -------------------------------------------------------------------------------

    async def _next_batch(self) -> list[bytes] | None:
        assert self._cond is not None
        async with self._cond:
            while True:
                step = self._core.next_step(time.monotonic())
                if step is None or isinstance(step, list):
                    if step and self._core.blocked:
                        self._cond.notify_all()  # room for a track() waiting
                    return step
                await _wait(self._cond, None if step == math.inf else step)

    async def _run(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                if batch:
                    await self._deliver(batch)
        except Exception:
            log.exception("trackpipe.client: the sender stopped")
            raise

    async def _deliver(self, batch: list[bytes]) -> None:
        assert self._cond is not None
        content = await asyncio.to_thread(self._core.body, batch)
        attempt = 0
        while True:
            verdict, status, body, retry_after, error = await self._post(content)
            self._core.stats.requests += 1
            if verdict != "retry":
                # The cursor update (a small file and a rename) runs in a thread; settle counts first.
                async with self._cond:
                    calls = await asyncio.to_thread(self._core.settle, batch, verdict, status, body)
                    self._cond.notify_all()
                run_callbacks(calls)
                return
            delay = self._core.retry_wait(attempt, retry_after)
            self._core.log_retry(error, delay, attempt)
            attempt += 1
            async with self._cond:
                gave_up = await self._wait_retry(delay)
                if not gave_up:
                    continue
                calls = self._core.gave_up(batch)
            run_callbacks(calls)
            return

    async def _wait_retry(self, delay: float) -> bool:
        """Waits `delay` seconds (condition held); True if close() ran out of time meanwhile."""
        assert self._cond is not None
        end = time.monotonic() + delay
        while (left := self._core.retry_left(end, time.monotonic())) is not None:
            if left <= 0:
                return False
            await _wait(self._cond, left)
        return True

    async def _post(self, content: bytes) -> Attempt:
        timeout = self._core.request_timeout(time.monotonic())
        try:
            response = await self._http.post(
                self._core.url, params=self._core.params, headers=self._core.headers, content=content, timeout=timeout
            )
        except (httpx.HTTPError, OSError) as exc:
            return self._core.unanswered(exc)
        return answered(response.status_code, response.content, response.headers.get("retry-after"))


async def _wait(cond: asyncio.Condition, timeout: float | None) -> None:
    """cond.wait() for at most `timeout` seconds (the condition is held again either way)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cond.wait(), timeout)
