"""Reading a request body within a byte limit, with bounded gzip inflation.

Limits apply to the decompressed bytes, and inflation stops as soon as the limit is passed, so
a small gzip body that expands to gigabytes costs at most `limit` bytes of memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from ingest.problems import RequestRejected, invalid, too_large, unsupported

Receive = Callable[[], Awaitable[dict[str, Any]]]

# Compressed data can be a little larger than what it inflates to (incompressible input):
# gzip adds a header, a trailer and 5 bytes per 64 KiB stored block.
GZIP_OVERHEAD = 1024
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class ClientDisconnected(Exception):
    pass


class BoundedGunzip:
    """Inflates gzip (one or more members) and refuses output past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._out = bytearray()
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._member_started = False

    def feed(self, data: bytes) -> None:
        try:
            while data:
                self._member_started = True
                room = self._limit + 1 - len(self._out)
                self._out += self._inflater.decompress(data, room)
                if len(self._out) > self._limit:
                    raise too_large(f"body inflates past the limit of {self._limit} bytes")
                data = self._inflater.unconsumed_tail
                if self._inflater.eof:
                    data = self._inflater.unused_data + data
                    self._inflater = zlib.decompressobj(_GZIP_WBITS)
                    self._member_started = False
        except zlib.error as exc:
            raise invalid(f"body is not valid gzip ({exc})") from None

    def finish(self) -> bytes:
        if self._member_started:  # a member began but its end never came
            raise invalid("gzip body is truncated")
        return bytes(self._out)


def content_coding(header: str | None) -> bool:
    """True for gzip, False for identity; anything else is refused."""
    if header is None:
        return False
    coding = header.strip().lower()
    if coding in ("", "identity"):
        return False
    if coding in ("gzip", "x-gzip"):
        return True
    raise unsupported(f"unsupported Content-Encoding {header.strip()!r} (use gzip or none)")


def parse_content_length(header: str | None) -> int | None:
    if header is None:
        return None
    value = header.strip()
    if not value.isdigit() or not value.isascii():
        raise invalid(f"invalid Content-Length {header!r}")
    digits = value.lstrip("0") or "0"
    if len(digits) > 18:  # far past any limit; and int() refuses over 4,300 digits
        raise too_large(f"body of {len(digits)}-digit length is over the limit")
    return int(digits)


def body_arrived(receive: Receive) -> bool:
    """True when the server already holds the whole body, so reading it cannot wait: uvicorn's
    `receive` is a method of its request cycle, whose `more_body` turns False once the request's
    last byte is in. Anything else (another server, a test's receive) says False, and the caller
    reads with its timeout."""
    return getattr(getattr(receive, "__self__", None), "more_body", True) is False


async def read_body(receive: Receive, *, limit: int, content_length: int | None, gzip: bool) -> bytes:
    """The request body, decompressed, at most `limit` bytes; RequestRejected otherwise."""
    wire_limit = limit + GZIP_OVERHEAD if gzip else limit
    if content_length is not None and content_length > wire_limit:
        raise too_large(f"body of {content_length} bytes is over the limit of {limit} bytes")
    inflater = BoundedGunzip(limit) if gzip else None
    chunks: list[bytes] = []
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if received > wire_limit:
            raise too_large(f"body is over the limit of {limit} bytes")
        if content_length is not None and received > content_length:
            raise invalid("body is longer than its Content-Length")
        if inflater is not None:
            inflater.feed(chunk)
        elif chunk:
            chunks.append(chunk)
    if content_length is not None and received < content_length:
        raise invalid("body is shorter than its Content-Length")
    if inflater is not None:
        return inflater.finish()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


__all__ = [
    "BoundedGunzip",
    "ClientDisconnected",
    "RequestRejected",
    "body_arrived",
    "content_coding",
    "parse_content_length",
    "read_body",
]
