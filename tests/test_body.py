"""ingest.body: reading a request body within a limit, with bounded gzip inflation."""

from __future__ import annotations

import asyncio
import gzip
import random
import tracemalloc
import zlib
from collections.abc import Iterable
from typing import Any

import pytest

from ingest.body import (
    GZIP_OVERHEAD,
    BoundedGunzip,
    ClientDisconnected,
    body_arrived,
    content_coding,
    parse_content_length,
    read_body,
)
from ingest.problems import Problem, RequestRejected


class FakeReceive:
    """An ASGI `receive` that hands out the given messages in order and counts its calls."""

    def __init__(self, messages: Iterable[dict[str, Any]]) -> None:
        self._messages = list(messages)
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        assert self._messages, "receive() called after the last message"
        return self._messages.pop(0)

    @property
    def left(self) -> int:
        return len(self._messages)


def chunks(*parts: bytes) -> FakeReceive:
    """The body in `parts`, more_body on all but the last."""
    return FakeReceive(
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)
    )


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def read(receive: FakeReceive, *, limit: int, content_length: int | None = None, gzip: bool = False) -> bytes:
    return asyncio.run(read_body(receive, limit=limit, content_length=content_length, gzip=gzip))


def rejected(receive: FakeReceive, **kwargs: Any) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        read(receive, **kwargs)
    return info.value


# --- plain bodies ----------------------------------------------------------------------------


def test_single_chunk_body() -> None:
    receive = chunks(b'{"a":1}')
    assert read(receive, limit=100, content_length=7) == b'{"a":1}'
    assert receive.calls == 1


def test_many_chunks_are_joined() -> None:
    receive = chunks(b"ab", b"", b"cd", b"e")
    assert read(receive, limit=100) == b"abcde"
    assert receive.calls == 4


def test_empty_body() -> None:
    assert read(chunks(b""), limit=100, content_length=0) == b""
    assert read(chunks(b""), limit=100) == b""


def test_message_without_body_key() -> None:
    receive = FakeReceive([{"type": "http.request", "more_body": True}, {"type": "http.request", "body": b"x"}])
    assert read(receive, limit=10) == b"x"


def test_exactly_at_the_limit_with_content_length() -> None:
    assert read(chunks(b"a" * 10), limit=10, content_length=10) == b"a" * 10


def test_exactly_at_the_limit_without_content_length() -> None:
    assert read(chunks(b"a" * 4, b"a" * 6), limit=10) == b"a" * 10


def test_one_byte_over_without_content_length() -> None:
    exc = rejected(chunks(b"a" * 11), limit=10)
    assert exc.problem is Problem.TOO_LARGE
    assert "limit of 10 bytes" in exc.reason


def test_one_byte_over_with_content_length_is_refused_before_reading() -> None:
    receive = chunks(b"a" * 11)
    exc = rejected(receive, limit=10, content_length=11)
    assert exc.problem is Problem.TOO_LARGE
    assert exc.reason == "body of 11 bytes is over the limit of 10 bytes"
    assert receive.calls == 0


def test_huge_content_length_is_refused_before_reading() -> None:
    receive = chunks(b"x")
    exc = rejected(receive, limit=512_000, content_length=10**12)
    assert exc.problem is Problem.TOO_LARGE
    assert receive.calls == 0


def test_chunked_body_over_the_limit_stops_reading() -> None:
    receive = chunks(b"a" * 4, b"a" * 4, b"a" * 4, b"a" * 4, b"a" * 4)
    exc = rejected(receive, limit=10)
    assert exc.problem is Problem.TOO_LARGE
    assert receive.calls == 3  # refused at the chunk that crossed the limit
    assert receive.left == 2


def test_body_longer_than_its_content_length() -> None:
    exc = rejected(chunks(b"abc", b"def"), limit=100, content_length=5)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is longer than its Content-Length"


def test_body_shorter_than_its_content_length() -> None:
    exc = rejected(chunks(b"abc"), limit=100, content_length=5)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is shorter than its Content-Length"


def test_disconnect_before_any_body() -> None:
    receive = FakeReceive([{"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnected):
        read(receive, limit=100)


def test_disconnect_in_the_middle_of_the_body() -> None:
    receive = FakeReceive([{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnected):
        read(receive, limit=100, content_length=10)
    assert receive.calls == 2


def test_disconnect_in_the_middle_of_a_gzip_body() -> None:
    data = gzip.compress(b"x" * 1000)
    receive = FakeReceive([{"type": "http.request", "body": data[:10], "more_body": True}, {"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnected):
        read(receive, limit=10_000, gzip=True)


# --- gzip ------------------------------------------------------------------------------------


def test_gzip_body_is_inflated() -> None:
    payload = b'{"event_name":"purchase"}' * 40
    data = gzip.compress(payload)
    assert read(chunks(data), limit=10_000, content_length=len(data), gzip=True) == payload


def test_gzip_body_in_tiny_chunks() -> None:
    payload = b'{"event_name":"purchase","value":42}' * 30
    data = gzip.compress(payload)
    assert read(chunks(*split(data, 1)), limit=10_000, gzip=True) == payload


def test_gzip_multi_member() -> None:
    data = gzip.compress(b"first,") + gzip.compress(b"second,") + gzip.compress(b"third")
    assert read(chunks(data), limit=100, gzip=True) == b"first,second,third"


def test_gzip_multi_member_split_across_chunks() -> None:
    data = gzip.compress(b"a" * 50) + gzip.compress(b"b" * 50)
    assert read(chunks(*split(data, 7)), limit=100, gzip=True) == b"a" * 50 + b"b" * 50


def test_gzip_inflated_exactly_at_the_limit() -> None:
    data = gzip.compress(b"x" * 1000)
    assert read(chunks(data), limit=1000, gzip=True) == b"x" * 1000
    assert read(chunks(*split(data, 3)), limit=1000, gzip=True) == b"x" * 1000


def test_gzip_inflated_one_byte_over_the_limit() -> None:
    data = gzip.compress(b"x" * 1001)
    exc = rejected(chunks(data), limit=1000, gzip=True)
    assert exc.problem is Problem.TOO_LARGE
    assert exc.reason == "body inflates past the limit of 1000 bytes"


def test_gzip_multi_member_one_byte_over_the_limit() -> None:
    data = gzip.compress(b"a" * 500) + gzip.compress(b"b" * 501)
    assert rejected(chunks(data), limit=1000, gzip=True).problem is Problem.TOO_LARGE


def test_gzip_content_length_may_exceed_the_limit_by_the_overhead() -> None:
    payload = random.Random(1).randbytes(1024)  # incompressible: the wire body is larger than the payload
    data = gzip.compress(payload)
    assert len(data) > len(payload)
    assert read(chunks(data), limit=len(payload), content_length=len(data), gzip=True) == payload


def test_gzip_content_length_over_limit_plus_overhead_is_refused_before_reading() -> None:
    receive = chunks(b"x")
    exc = rejected(receive, limit=1000, content_length=1000 + GZIP_OVERHEAD + 1, gzip=True)
    assert exc.problem is Problem.TOO_LARGE
    assert receive.calls == 0


def test_gzip_wire_bytes_over_limit_plus_overhead_without_content_length() -> None:
    data = gzip.compress(random.Random(2).randbytes(2048))  # incompressible, 2 KB+ on the wire
    receive = chunks(data[: 100 + GZIP_OVERHEAD + 1], data[100 + GZIP_OVERHEAD + 1 :])
    exc = rejected(receive, limit=100, gzip=True)
    assert exc.problem is Problem.TOO_LARGE
    assert exc.reason == "body is over the limit of 100 bytes"  # the wire count, before inflating
    assert receive.left == 1


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000, 9)
    assert len(bomb) < 20_000
    exc = rejected(chunks(bomb), limit=512_000, content_length=len(bomb), gzip=True)
    assert exc.problem is Problem.TOO_LARGE
    assert exc.reason == "body inflates past the limit of 512000 bytes"


def test_gzip_bomb_output_never_exceeds_limit_plus_one() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000, 9)
    inflater = BoundedGunzip(512_000)
    tracemalloc.start()
    try:
        with pytest.raises(RequestRejected) as info:
            for piece in split(bomb, 1024):
                inflater.feed(piece)
                assert len(inflater._out) <= 512_001
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.problem is Problem.TOO_LARGE
    assert len(inflater._out) == 512_001
    assert peak < 4_000_000  # nowhere near the 10 MB the bomb inflates to


def test_gzip_bomb_through_read_body_keeps_memory_bounded() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000, 9)
    receive = chunks(*split(bomb, 4096))
    tracemalloc.start()
    try:
        exc = rejected(receive, limit=512_000, gzip=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.problem is Problem.TOO_LARGE
    assert peak < 4_000_000


def test_corrupt_gzip() -> None:
    data = bytearray(gzip.compress(b'{"event_name":"x"}' * 20))
    data[15] ^= 0xFF  # inside the deflate stream
    exc = rejected(chunks(bytes(data)), limit=10_000, gzip=True)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body is not valid gzip")


def test_gzip_with_bad_crc() -> None:
    data = bytearray(gzip.compress(b"hello world"))
    data[-8] ^= 0x01  # CRC32 in the trailer
    exc = rejected(chunks(bytes(data)), limit=10_000, gzip=True)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body is not valid gzip")


def test_not_gzip_at_all() -> None:
    exc = rejected(chunks(b'{"a":1}'), limit=100, gzip=True)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body is not valid gzip")


def test_raw_deflate_is_not_gzip() -> None:
    assert rejected(chunks(zlib.compress(b"hello")), limit=100, gzip=True).problem is Problem.INVALID_BODY


@pytest.mark.parametrize("cut", [3, 5, 10, 20])
def test_truncated_gzip(cut: int) -> None:
    data = gzip.compress(b"x" * 100)
    exc = rejected(chunks(data[:-cut]), limit=1000, gzip=True)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "gzip body is truncated"


def test_truncated_second_member() -> None:
    data = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10)[:-4]
    exc = rejected(chunks(data), limit=1000, gzip=True)
    assert exc.reason == "gzip body is truncated"


def test_garbage_after_the_last_member() -> None:
    data = gzip.compress(b"a" * 10) + b"trailing"
    assert rejected(chunks(data), limit=1000, gzip=True).problem is Problem.INVALID_BODY


def test_bounded_gunzip_finish_before_any_input() -> None:
    assert BoundedGunzip(10).finish() == b""


# --- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [("gzip", True), ("x-gzip", True), (" GZip ", True), ("X-GZIP", True), ("identity", False), ("", False)],
)
def test_content_coding(header: str, expected: bool) -> None:
    assert content_coding(header) is expected


def test_content_coding_none() -> None:
    assert content_coding(None) is False


@pytest.mark.parametrize("header", ["br", "deflate", "compress", "zstd", "gzip, br", "gzip;q=1"])
def test_content_coding_unsupported(header: str) -> None:
    with pytest.raises(RequestRejected) as info:
        content_coding(header)
    assert info.value.problem is Problem.UNSUPPORTED_MEDIA_TYPE
    assert repr(header) in info.value.reason


@pytest.mark.parametrize(("header", "expected"), [("0", 0), ("12", 12), (" 512000 ", 512_000), ("007", 7)])
def test_parse_content_length(header: str, expected: int) -> None:
    assert parse_content_length(header) == expected


def test_parse_content_length_none() -> None:
    assert parse_content_length(None) is None


@pytest.mark.parametrize("header", ["", " ", "-1", "+5", "1.0", "abc", "0x10", "1_000", "1e3", "12 34", "١٢", "²"])
def test_parse_content_length_invalid(header: str) -> None:
    with pytest.raises(RequestRejected) as info:
        parse_content_length(header)
    assert info.value.problem is Problem.INVALID_BODY
    assert info.value.reason == f"invalid Content-Length {header!r}"


class Cycle:
    """Like uvicorn's request cycle: `receive` is its method, `more_body` False once the body is in."""

    def __init__(self, more_body: bool) -> None:
        self.more_body = more_body

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}


def test_body_arrived_only_when_the_server_says_the_whole_body_is_in() -> None:
    # The edge reads such a body without arming its body timeout (it cannot wait).
    assert body_arrived(Cycle(more_body=False).receive) is True
    assert body_arrived(Cycle(more_body=True).receive) is False
    # Any other receive (another server, a test's) is read with the timeout.
    assert body_arrived(FakeReceive([])) is False

    async def receive() -> dict[str, Any]:
        return {}

    assert body_arrived(receive) is False
