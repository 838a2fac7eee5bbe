"""What the thread client and the asyncio client share: the queue, the counters, when a batch is
due, the request for a batch and what each answer means. No locking and no network here: the
clients call this under their own lock and do the sending."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from trackpipe.client.backoff import Rejection, Verdict, classify, read_answer, retry_after_seconds, retry_delay
from trackpipe.client.batching import batch_body, gzip_body
from trackpipe.client.config import ClientConfig, ClientStats
from trackpipe.client.spool import MemoryQueue, SpoolQueue

log = logging.getLogger("trackpipe.client")

OnRejected = Callable[[dict[str, Any], str], object]
OnError = Callable[[str, list[dict[str, Any]]], object]
OnDrop = Callable[[list[dict[str, Any]], str], object]
Call = tuple[Callable[..., object], tuple[object, ...]]
Admitted = Literal["queued", "dropped", "full"]
# One attempt's (verdict, status, body, Retry-After, error text).
Attempt = tuple[Verdict, int, bytes, str | None, str]

USER_AGENT = "trackpipe-client/1"


def decode_all(events: list[bytes]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(e) for e in events]


def run_callbacks(calls: list[Call]) -> None:
    """Callbacks run outside the client's lock; one that raises is logged and does not stop the sender."""
    for callback, args in calls:
        try:
            callback(*args)
        except Exception:
            log.exception("trackpipe.client: a callback (%s) raised", getattr(callback, "__name__", callback))


def answered(status: int, body: bytes, retry_after: str | None) -> Attempt:
    """The attempt the edge answered."""
    return classify(status), status, body, retry_after, f"HTTP {status}"


class Core:
    def __init__(
        self,
        config: ClientConfig,
        key: str,
        on_rejected: OnRejected | None,
        on_error: OnError | None,
        on_drop: OnDrop | None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._key = key
        self.on_rejected = on_rejected
        self.on_error = on_error
        self.on_drop = on_drop
        self.rand = rand or random.random
        if config.spool_dir is not None:
            self.queue: MemoryQueue | SpoolQueue = SpoolQueue(
                config.spool_dir, config.max_spool_bytes, config.spool_segment_bytes, config.spool_fsync
            )
        else:
            self.queue = MemoryQueue(config.max_queue_events)
        pending = self.queue.pending_events
        self.stats = ClientStats(queued=pending, spool_torn=self.queue.torn)
        self.put_count = pending  # events ever queued (found in the spool included)
        self.done_count = 0  # of those: sent with a final answer, refused or dropped
        # Events found in the spool at start have waited long enough already.
        self.first_pending_at: float | None = -math.inf if pending else None
        self.url = f"{config.url}/events/batch"
        self.params = {"tc_s": config.site_id}
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if config.key_in == "query":
            self.params["token"] = key
        else:
            self.headers["Authorization"] = f"Bearer {key}"
        if config.gzip:
            self.headers["Content-Encoding"] = "gzip"
        # The client's lifecycle, read by the sender's decisions below.
        self.closing = False  # close() was called
        self.deadline: float | None = None  # set by close(): give up sending after it (monotonic)
        self.flushers = 0  # flush() calls waiting: send what is queued now
        self.blocked = 0  # track() calls waiting for room (overflow="block")

    def mask(self, text: str) -> str:
        """An error text without the key (a URL in an exception may carry it as `token`)."""
        return text.replace(self._key, "***")

    # -- the producer's side -------------------------------------------------------------------

    def admit(self, data: bytes) -> tuple[Admitted, list[Call]]:
        """Queue the event if there is room, else apply the overflow policy: "queued" or "dropped"
        (and the callbacks to run), or "full" with overflow="block" (nothing done: the caller waits)."""
        if self.queue.has_room(len(data)):
            self.put(data)
            return "queued", []
        policy = self.config.overflow
        if policy == "block":
            return "full", []
        if policy == "drop_oldest":
            dropped: list[bytes] = []
            while not self.queue.has_room(len(data)):
                old = self.queue.drop_oldest()
                if old is None:
                    break
                dropped.append(old)
            self.done_count += len(dropped)
            calls = self.dropped(dropped, "queue full: oldest dropped")
            if self.queue.has_room(len(data)):
                self.put(data)
                return "queued", calls
            return "dropped", calls + self.dropped([data], "queue full: event larger than the spool")
        return "dropped", self.dropped([data], "queue full: newest dropped")

    def put(self, data: bytes) -> None:
        self.queue.put(data)
        self.put_count += 1
        self.stats.queued += 1
        if self.first_pending_at is None:
            self.first_pending_at = time.monotonic()

    def dropped(self, events: list[bytes], reason: str) -> list[Call]:
        if not events:
            return []
        self.stats.dropped += len(events)
        log.warning("trackpipe.client: %d event(s) dropped (%s)", len(events), reason)
        if self.on_drop is None:
            return []
        return [(self.on_drop, (decode_all(events), reason))]

    def dropped_at_shutdown(self) -> list[Call]:
        """What stays unsent when close() gives up: lost from memory (counted and reported), kept by a spool."""
        if isinstance(self.queue, SpoolQueue):
            return []
        events = self.queue.take(self.queue.pending_events, 1 << 62) if self.queue.pending_events else []
        self.done_count += len(events)
        return self.dropped(events, "client closed before they could be sent")

    # -- the sender's side ---------------------------------------------------------------------

    def wait_for_batch(self, now: float, flushing: bool) -> float | None:
        """0 when a batch should go now, else the seconds until one is due (None: nothing waits)."""
        pending = self.queue.pending_events
        if not pending:
            return None
        if flushing or pending >= self.config.flush_at:
            return 0.0
        assert self.first_pending_at is not None
        return max(self.first_pending_at + self.config.flush_interval - now, 0.0)

    def out_of_time(self, now: float) -> bool:
        """close() ran out of time."""
        return self.deadline is not None and now >= self.deadline

    def next_step(self, now: float) -> list[bytes] | float | None:
        """What the sender does next: send this batch, wait this many seconds (math.inf: until
        notified) and ask again, or stop (None: closing with nothing left, or out of time)."""
        if self.out_of_time(now):
            return None
        due = self.wait_for_batch(now, self.flushers > 0 or self.closing)
        if due == 0:
            return self.take()
        if due is None:
            return None if self.closing else math.inf
        return due

    def retry_left(self, end: float, now: float) -> float | None:
        """Seconds still to wait before a retry due at `end` (at most until close()'s deadline), or
        None once close() has run out of time."""
        if self.out_of_time(now):
            return None
        return end - now if self.deadline is None else min(end - now, self.deadline - now)

    def request_timeout(self, now: float) -> float:
        """The per-request timeout, cut to what close() leaves (at least 50 ms)."""
        if self.deadline is None:
            return self.config.timeout
        return max(min(self.config.timeout, self.deadline - now), 0.05)

    def take(self) -> list[bytes]:
        batch = self.queue.take(self.config.max_batch_events, self.config.max_batch_bytes)
        if not self.queue.pending_events:
            self.first_pending_at = None
        return batch

    def body(self, batch: list[bytes]) -> bytes:
        body = batch_body(batch)
        return gzip_body(body, self.config.gzip_level) if self.config.gzip else body

    def settle(self, batch: list[bytes], verdict: Verdict, status: int, body: bytes) -> list[Call]:
        """A final answer ("ok" or "refused"): counters, the queue acknowledged, the callbacks to run."""
        calls: list[Call] = []
        self.stats.sent += len(batch)
        if verdict == "ok":
            answer = read_answer(body, len(batch))
            rejected = answer.rejected
            if answer.accepted == 0 and not rejected:
                # trackpipe's compat mode stores nothing for an unknown key yet answers 200; its body says so.
                rejected = [Rejection(i, "not accepted: the key is unknown?") for i in range(len(batch))]
            self.stats.accepted += len(batch) - len(rejected)
            self.stats.rejected += len(rejected)
            if rejected:
                log.warning("trackpipe.client: %d event(s) of a batch rejected: %s", len(rejected), rejected[0].error)
            if self.on_rejected is not None:
                calls += [(self.on_rejected, (msgspec.json.decode(batch[r.index]), r.error)) for r in rejected]
        else:
            self.stats.failed += len(batch)
            error = self.mask(f"batch of {len(batch)} events refused: HTTP {status}: {_excerpt(body)}")
            log.error("trackpipe.client: %s", error)
            if self.on_error is not None:
                calls.append((self.on_error, (error, decode_all(batch))))
        self.finish(batch)
        return calls

    def finish(self, batch: list[bytes]) -> None:
        self.queue.ack()
        self.done_count += len(batch)

    def gave_up(self, batch: list[bytes]) -> list[Call]:
        """close() ran out of time while `batch` waited for another attempt: it stays in the spool,
        or without one is dropped (counted, reported)."""
        if isinstance(self.queue, SpoolQueue):
            return []
        self.done_count += len(batch)
        return self.dropped(batch, "client closed before they could be sent")

    def unanswered(self, exc: BaseException) -> Attempt:
        """An attempt that got no answer (timeout, refused connection, reset): sent again."""
        return "retry", 0, b"", None, self.mask(f"{type(exc).__name__}: {exc}")

    @staticmethod
    def log_retry(error: str, delay: float, attempt: int) -> None:
        # One warning per batch; the attempts after it at debug level (an outage can last hours).
        log.log(
            logging.WARNING if attempt == 0 else logging.DEBUG,
            "trackpipe.client: %s; sending again in %.2f s (attempt %d)",
            error,
            delay,
            attempt + 2,
        )

    def retry_wait(self, attempt: int, retry_after: str | None) -> float:
        self.stats.retries += 1
        seconds = retry_after_seconds(retry_after, time.time())
        return retry_delay(attempt, seconds, self.config.backoff_base, self.config.backoff_cap, self.rand)

    def close(self) -> None:
        self.queue.close()


def _excerpt(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
