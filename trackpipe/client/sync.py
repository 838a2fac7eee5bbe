"""`Client`: track() from any thread; one daemon thread sends the batches with httpx.Client."""

from __future__ import annotations

import atexit
import math
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from trackpipe.client.config import ClientConfig, ClientStats, check_key, make_config
from trackpipe.client.core import Attempt, Call, Core, OnDrop, OnError, OnRejected, answered, log, run_callbacks
from trackpipe.client.events import build_event, encode_event


class Client:
    """Sends v2 events to a trackpipe edge (or the vendor's hosted HTTP Tracking API) in batches,
    in the background. See the README, "Sending from Python"."""

    def __init__(
        self,
        url: str,
        site_id: str,
        key: str,
        *,
        on_rejected: OnRejected | None = None,
        on_error: OnError | None = None,
        on_drop: OnDrop | None = None,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        self.config: ClientConfig = make_config(url, site_id, **options)
        self._core = Core(self.config, check_key(key), on_rejected, on_error, on_drop)
        self._cond = threading.Condition()
        self._closed = False
        self._http = httpx.Client(timeout=self.config.timeout, transport=transport)
        self._thread = threading.Thread(target=self._run, name="trackpipe-client", daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def __repr__(self) -> str:
        return f"Client(url={self.config.url!r}, site_id={self.config.site_id!r}, key=***)"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> ClientStats:
        """A copy of the counters."""
        with self._cond:
            return msgspec.structs.replace(self._core.stats)

    # -- producing -----------------------------------------------------------------------------

    def track(
        self,
        event_name: str,
        properties: Mapping[str, Any] | None = None,
        user: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        timestamp: object = None,
    ) -> str:
        """Queue one event; returns its event_id. Raises EventTooLarge (over 32,768 bytes as JSON) or
        ValueError (bad arguments) at once: such an event is never sent. With a spool the event is
        written to disk before this returns."""
        event = build_event(event_name, properties, user, context, event_id, timestamp)
        data = encode_event(event)
        calls: list[Call] = []
        with self._cond:
            if self._core.closing:
                raise RuntimeError("the client is closed")
            was_empty = self._core.queue.pending_events == 0
            admitted, calls = self._core.admit(data)
            queued = admitted == "queued"
            if admitted == "full":  # overflow="block"
                queued, calls = self._block(data)
            pending = self._core.queue.pending_events
            if queued and (was_empty or pending >= self.config.flush_at):
                self._cond.notify_all()  # arms the sender's timer, or a batch is ready
        run_callbacks(calls)
        if pending and pending % self.config.flush_at == 0:
            # A thread that only tracks keeps the GIL until the interpreter takes it away (every
            # 5 ms), and the sender needs it several times per request: once per batch's worth of
            # events it gets a turn (`trackpipe bench client`: 59,000 events/s without, 86,000 with).
            time.sleep(0)
        return event["context"]["event_id"]

    def _block(self, data: bytes) -> tuple[bool, list[Call]]:
        """Waits (lock held by the caller) for room; on timeout or close the event is dropped."""
        timeout = self.config.block_timeout
        end = None if timeout is None else time.monotonic() + timeout
        self._core.blocked += 1
        try:
            while not self._core.queue.has_room(len(data)) and not self._core.closing:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False, self._core.dropped([data], f"queue full for {timeout} s (overflow=block)")
                self._cond.wait(left)
        finally:
            self._core.blocked -= 1
        if self._core.closing:
            return False, self._core.dropped([data], "client closed while track() waited for room")
        self._core.put(data)
        return True, []

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued so far now; True once all of it has a final answer (accepted,
        rejected or refused) or was dropped, False if `timeout` seconds passed first."""
        with self._cond:
            target = self._core.put_count
            self._core.flushers += 1
            self._cond.notify_all()
            try:
                return (
                    self._cond.wait_for(lambda: self._core.done_count >= target or not self._thread.is_alive(), timeout)
                    and self._core.done_count >= target
                )
            finally:
                self._core.flushers -= 1

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (for at most `timeout`, default `shutdown_timeout` seconds), then stop.
        What is still unsent then stays in the spool, or without one is dropped (counted, on_drop)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._core.closing = True
            wait = self.config.shutdown_timeout if timeout is None else timeout
            self._core.deadline = time.monotonic() + wait
            self._cond.notify_all()
        self._thread.join(wait + 1.0)
        with self._cond:
            calls = self._core.dropped_at_shutdown()
        run_callbacks(calls)
        self._http.close()
        if not self._thread.is_alive():
            self._core.close()

    # -- sending -------------------------------------------------------------------------------

    def _next_batch(self) -> list[bytes] | None:
        """The next batch to send, waiting until one is due; None once closing and done (or out of time)."""
        with self._cond:
            while True:
                step = self._core.next_step(time.monotonic())
                if step is None or isinstance(step, list):
                    if step and self._core.blocked:
                        self._cond.notify_all()  # room for a track() waiting
                    return step
                self._cond.wait(None if step == math.inf else step)

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                if batch:
                    self._deliver(batch)
        except Exception:  # a bug, not an answer: say so rather than stop without a word
            log.exception("trackpipe.client: the sender stopped")
            raise

    def _deliver(self, batch: list[bytes]) -> None:
        """Sends one batch until it has a final answer, or close() runs out of time."""
        content = self._core.body(batch)
        attempt = 0
        while True:
            verdict, status, body, retry_after, error = self._post(content)
            with self._cond:
                self._core.stats.requests += 1
                if verdict != "retry":
                    calls = self._core.settle(batch, verdict, status, body)
                    self._cond.notify_all()
                else:
                    delay = self._core.retry_wait(attempt, retry_after)
                    calls = []
            if verdict != "retry":
                run_callbacks(calls)
                return
            self._core.log_retry(error, delay, attempt)
            attempt += 1
            with self._cond:
                if not self._wait_retry(delay):
                    continue
                calls = self._core.gave_up(batch)
            run_callbacks(calls)
            return

    def _wait_retry(self, delay: float) -> bool:
        """Waits `delay` seconds (lock held); True if close() ran out of time meanwhile."""
        end = time.monotonic() + delay
        while (left := self._core.retry_left(end, time.monotonic())) is not None:
            if left <= 0:
                return False
            self._cond.wait(left)
        return True

    def _post(self, content: bytes) -> Attempt:
        """(verdict, status, body, Retry-After, error text) of one attempt; never raises."""
        timeout = self._core.request_timeout(time.monotonic())
        try:
            response = self._http.post(
                self._core.url, params=self._core.params, headers=self._core.headers, content=content, timeout=timeout
            )
        except (httpx.HTTPError, OSError) as exc:  # timeouts, refused connections, resets
            return self._core.unanswered(exc)
        return answered(response.status_code, response.content, response.headers.get("retry-after"))


def _close_at_exit(ref: weakref.ref[Client]) -> None:
    client = ref()
    if client is not None:
        client.close()
