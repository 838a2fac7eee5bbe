"""A small asyncio HTTP/1.1 load generator (keep-alive connections, fixed request rate or closed loop).

Used by `trackpipe bench` when `wrk` is not installed, and for steady-rate end-to-end runs where
each request's send time matters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import msgspec


class LoadResult(msgspec.Struct):
    sent: int
    ok: int
    statuses: dict[int, int]
    seconds: float
    send_times: dict[int, float]  # request number -> time.time() when written
    ok_numbers: list[int]  # request numbers answered 200

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def _request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    url: str,
    body_for: Callable[[int], bytes],
    *,
    connections: int = 64,
    duration: float = 5.0,
    rate: float | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST `body_for(i)` to `url` for `duration` seconds: as fast as answers come (closed loop), or
    at a steady `rate` of requests per second spread over the connections."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": "application/json", **(headers or {})}
    statuses: dict[int, int] = {}
    send_times: dict[int, float] = {}
    ok_numbers: list[int] = []
    counter = 0
    started = time.perf_counter()
    deadline = started + duration

    def next_number() -> int | None:
        nonlocal counter
        if time.perf_counter() >= deadline:
            return None
        number = counter
        counter += 1
        return number

    async def connection_loop(slot: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                number = next_number()
                if number is None:
                    return
                if rate:
                    due = started + number / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if time.perf_counter() >= deadline:
                        return
                send_times[number] = time.time()
                writer.write(_request(host, path, body_for(number), headers))
                status = await _read_response(reader)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    ok_numbers.append(number)
        finally:
            writer.close()

    await asyncio.gather(*(connection_loop(i) for i in range(connections)))
    seconds = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return LoadResult(sum(statuses.values()), ok, statuses, seconds, send_times, ok_numbers)
