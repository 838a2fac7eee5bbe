"""The edge's HTTP protocol: uvicorn's httptools protocol plus a deadline for request headers.

uvicorn arms no timer while a request's headers are incomplete: its keep-alive timer runs only
after a response and is cancelled by the first byte of the next request. A client that connects and
sends nothing, or half a request line, or its headers a byte every few seconds, would keep its
connection (and a slot of `edge.max_connections`) for as long as it likes. Here a connection gets
`edge.header_timeout_seconds` to complete its headers whenever it is not busy with a request; past
that it is closed without an answer (there is no request to answer yet).

Cost: a request whose headers arrive in one read arms no timer (two attribute checks; the timer is
only armed when a read leaves headers incomplete); a new connection arms one loop timer, cancelled
by its first complete headers.

It also writes each response in one socket write: uvicorn writes the status line and headers as
soon as `http.response.start` is sent and the body on its own, two `send()` system calls per
response. Here the head is held until the body's write (or the close) and goes out with it
(`HeldHead`): ~5 µs less kernel time per single-event request (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# uvicorn settings of the edge (see README, "Operating the edge"); the benchmarks' baseline apps use
# them too, so that a ratio compares like with like.
UVICORN_SETTINGS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",  # the edge itself uses header_timeout_protocol(...) below instead
    "lifespan": "on",
    "timeout_keep_alive": 5,
    "backlog": 2048,
    "access_log": False,
    "timeout_graceful_shutdown": 30,
    # The edge reads X-Forwarded-For / Forwarded itself, from edge.trusted_proxies only (ingest/client.py);
    # uvicorn's own rewrite of the peer would trust any local process.
    "proxy_headers": False,
}


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # what uvicorn writes to a request that asked for it


class HeldHead:
    """One request's transport, as its uvicorn cycle sees it: the response head (the cycle's first
    write other than a 100 Continue) waits for the next write, the body, and goes out with it.
    A HEAD response has no body write, so its head is not held; a close (the app failed after
    starting its answer) sends a held head first."""

    __slots__ = ("fresh", "head", "transport")

    def __init__(self, transport: asyncio.Transport, hold: bool) -> None:
        self.transport = transport
        self.fresh = hold
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self.head
        if head is not None:
            self.head = None
            self.transport.write(head + data)
        elif self.fresh and data != CONTINUE:
            self.fresh = False
            self.head = data
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.head is not None:
            self.transport.write(self.head)
            self.head = None
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # anything else the cycle may ask of its transport
        return getattr(self.transport, name)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that closes connections whose request headers do not arrive in time."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The first request's headers are due header_timeout after the connect, sent or not.
        self.header_timer = self.loop.call_later(self.header_timeout, self.header_timeout_handler)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # uvicorn cancelled its keep-alive timer on this data. Unless the data completed a request's
        # headers (the connection is then busy: body timeout, then the response, then keep-alive),
        # the next request's headers are now due within header_timeout. The deadline is not moved
        # by later data, so dripping bytes does not extend it.
        if self.header_timer is None and (self.cycle is None or self.cycle.response_complete):
            if self.transport.is_closing():  # e.g. uvicorn's 400 for a malformed request
                return
            self.header_timer = self.loop.call_later(self.header_timeout, self.header_timeout_handler)

    def on_headers_complete(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # A new request's cycle (a WebSocket upgrade makes none): its task has not run yet.
        if cycle is not before and cycle is not None and cycle.transport is self.transport:
            cycle.transport = HeldHead(self.transport, cycle.scope["method"] != "HEAD")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        super().connection_lost(exc)

    def header_timeout_handler(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed already, or handed over by a WebSocket upgrade
        if self.cycle is not None and not self.cycle.response_complete:
            # Not expected (complete headers cancel the timer, and it is armed only between requests),
            # but never cut a response: close once it is sent, as uvicorn's graceful shutdown does.
            self.cycle.keep_alive = False
            return
        # Imported here: `trackpipe edge --workers N` imports this module in the supervising process,
        # which must not create metric files of its own.
        from ingest.metrics import HEADER_TIMEOUTS

        HEADER_TIMEOUTS.inc()
        self.transport.close()


def header_timeout_protocol(header_timeout: float) -> Callable[..., HeaderTimeoutProtocol]:
    """The `http=` protocol factory for uvicorn.Config. A partial of a module-level class, so that it
    pickles into the processes of `trackpipe edge --workers N`."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout=header_timeout)
