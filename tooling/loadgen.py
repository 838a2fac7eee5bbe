"""A small asyncio HTTP/1.1 load generator (keep-alive connections, fixed request rate or closed loop).

Used by `trackpipe bench` when `wrk` is not installed, and for steady-rate end-to-end runs where
each request's time matters. At a fixed rate every request has a due time on a schedule fixed in
advance (request n is due `n / rate` seconds after the start) and is sent however late it gets: a
latency is taken from the due time, not from the actual send, so that a generator (or a server)
falling behind shows up as latency instead of as requests quietly sent later (coordinated
omission). How far the sends fell behind the schedule is reported too (`Lateness`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import msgspec

# A request written more than this after its due time counts as late.
LATE_SECONDS = 0.001
# A request is sent up to this long before its due time: the event loop's timers wake in whole
# milliseconds, so aiming exactly at the due time would make most sends up to a millisecond late.
LEAD_SECONDS = 0.0005
# At a fixed rate, requests still unsent or unanswered this long after the schedule's end are given up.
GRACE_SECONDS = 30.0


class Lateness(msgspec.Struct):
    """How far the sends fell behind their schedule (send - due), over every request sent."""

    requests: int
    max_ms: float
    p99_ms: float
    late_share: float  # share of requests sent more than LATE_SECONDS after their due time


class LoadResult(msgspec.Struct):
    sent: int
    ok: int
    statuses: dict[int, int]  # -1: the connection failed before an answer
    seconds: float
    send_times: dict[int, float]  # request number -> time.time() when written
    ok_numbers: list[int]  # request numbers answered 200
    # request number -> time.time() it was due (its send time in a closed loop, which has no schedule)
    due_times: dict[int, float] = {}
    lateness: Lateness | None = None
    scheduled: int = 0  # requests on the schedule (fixed rate); sent < scheduled if some were given up

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def scheduled_count(rate: float, duration: float) -> int:
    """Requests on the schedule of `rate` requests/s for `duration` seconds (at least one)."""
    return max(1, round(rate * duration))


def due_offset(number: int, rate: float) -> float:
    """Seconds after the start at which request `number` is due."""
    return number / rate


def lateness(late_seconds: Sequence[float]) -> Lateness:
    """Send - due of every request sent, summarised (negative values are sends on time)."""
    if not late_seconds:
        return Lateness(0, 0.0, 0.0, 0.0)
    late = [max(0.0, s) for s in late_seconds]
    return Lateness(
        requests=len(late),
        max_ms=round(max(late) * 1000, 3),
        p99_ms=round(percentile(late, 0.99) * 1000, 3),
        late_share=round(sum(1 for s in late if s > LATE_SECONDS) / len(late), 4),
    )


def _head(host: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n").encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, on_answer: Callable[[_Connection, int], None]) -> None:
        self.on_answer = on_answer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.number: int | None = None  # the request in flight
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.on_answer(self, int(head.split(b" ", 2)[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        if self.number is not None:
            self.on_answer(self, -1)


async def run_load(
    url: str,
    body_for: Callable[[int], bytes],
    *,
    connections: int = 64,
    duration: float = 5.0,
    rate: float | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST `body_for(i)` to `url`: as fast as answers come for `duration` seconds (closed loop), or
    the `rate * duration` requests of a fixed schedule (request i due `i / rate` s after the start),
    each sent on the first free connection once due, however late that is."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = _head(host, path, {"Content-Type": "application/json", **(headers or {})})
    loop = asyncio.get_running_loop()
    statuses: dict[int, int] = {}
    send_times: dict[int, float] = {}
    due_times: dict[int, float] = {}
    late: list[float] = []
    ok_numbers: list[int] = []
    scheduled = scheduled_count(rate, duration) if rate else 0
    idle: list[_Connection] = []
    finished = loop.create_future()
    freed = asyncio.Event()  # a connection became idle
    state = {"next": 0, "in_flight": 0}

    def check_finished() -> None:
        in_flight = state["in_flight"]
        out_of_work = state["next"] >= scheduled if rate else time.perf_counter() >= stop_sending
        if in_flight == 0 and (out_of_work or all(c.dead for c in conns)) and not finished.done():
            finished.set_result(None)

    def send(conn: _Connection, number: int, due: float) -> None:
        now = time.perf_counter()
        wall = wall0 + (now - perf0)
        send_times[number] = wall
        due_times[number] = wall0 + (due - perf0)
        late.append(now - due)
        body = body_for(number)
        conn.number = number
        state["in_flight"] += 1
        assert conn.transport is not None
        conn.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def next_due() -> tuple[int, float] | None:
        """The next request on the schedule if it is due now (closed loop: the next one, before the end)."""
        now = time.perf_counter()
        number = state["next"]
        if rate:
            due = started + due_offset(number, rate)
            if number >= scheduled or due > now + LEAD_SECONDS:
                return None
        else:
            if now >= stop_sending:
                return None
            due = now
        state["next"] += 1
        return number, due

    def on_answer(conn: _Connection, status: int) -> None:
        number = conn.number
        conn.number = None
        state["in_flight"] -= 1
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200 and number is not None:
            ok_numbers.append(number)
        if not conn.dead:
            job = next_due()
            if job is not None:
                send(conn, *job)
                return
            idle.append(conn)
            freed.set()
        check_finished()

    conns = [(await loop.create_connection(lambda: _Connection(on_answer), host, port))[1] for _ in range(connections)]
    idle.extend(conns)
    perf0, wall0 = time.perf_counter(), time.time()
    started = perf0
    stop_sending = started + duration  # closed loop
    give_up = started + duration + (GRACE_SECONDS if rate else 5.0)

    async def dispatch() -> None:
        """Hand due requests to idle connections; sleep until the next due time."""
        while state["next"] < (scheduled if rate else float("inf")) and not finished.done():
            while idle:
                job = next_due()
                if job is None:
                    break
                conn = idle.pop()
                if conn.dead:
                    state["next"] -= 1  # not sent: give the number to the next free connection
                    continue
                send(conn, *job)
            if not rate:
                return  # closed loop: each answer sends the next request itself
            if not idle:
                # Every connection is busy: each answer sends the next due request itself; wake
                # when one is left idle.
                freed.clear()
                await freed.wait()
                continue
            now = time.perf_counter()
            wake = started + due_offset(state["next"], rate) - LEAD_SECONDS
            await asyncio.sleep(max(0.0, wake - now))

    dispatcher = asyncio.ensure_future(dispatch())
    try:
        await asyncio.wait_for(asyncio.shield(finished), timeout=max(0.1, give_up - time.perf_counter()))
    except TimeoutError:
        pass  # at a fixed rate: what is still unsent or unanswered after the grace is given up
    finally:
        dispatcher.cancel()
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    seconds = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return LoadResult(
        sent=len(send_times),
        ok=ok,
        statuses=statuses,
        seconds=seconds,
        send_times=send_times,
        ok_numbers=ok_numbers,
        due_times=due_times,
        lateness=lateness(late) if rate else None,
        scheduled=scheduled,
    )
