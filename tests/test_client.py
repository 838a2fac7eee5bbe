"""trackpipe.client, the producer library: its pure pieces (events, batches, back-off, settings, the
spool) and the sender against local HTTP servers (503 + Retry-After, rejections, refusals, overflow).
The runs against the real edge are in test_client_live.py."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import random
import struct
import time
import zlib
from email.utils import format_datetime
from pathlib import Path

import msgspec
import pytest

from tests.support import closed_url
from tooling.harness import HookServer, Reply
from trackpipe.client import MAX_BATCH_BYTES, MAX_EVENT_BYTES, AsyncClient, Client, EventTooLarge, SpoolLocked
from trackpipe.client.backoff import backoff_delay, classify, read_answer, retry_after_seconds, retry_delay
from trackpipe.client.batching import batch_body, batch_size, gzip_body, take_count
from trackpipe.client.config import base_url, make_config
from trackpipe.client.events import build_event, encode_event
from trackpipe.client.spool import HEADER, MemoryQueue, SpoolQueue

OK_BODY = b'{"status":"ok","accepted":1,"rejected":[]}'


def quiet(**extra: object) -> dict[str, object]:
    """Client options for tests: short waits."""
    return {"flush_interval": 0.05, "backoff_base": 0.02, "backoff_cap": 0.2, "shutdown_timeout": 5.0, **extra}


def batches(server: HookServer) -> list[list[dict]]:
    out = []
    for request in server.requests():
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        out.append(json.loads(body)["batch"])
    return out


# -- events ------------------------------------------------------------------------------------


def test_build_event_is_v2_with_generated_id_and_ms_timestamp() -> None:
    event = build_event(
        "purchase",
        {"value": 12.5, "currency": "EUR"},
        user={"consistent_anonymous_id": "a1"},
        context={"page": {"url": "https://x/"}},
        clock=lambda: 1_700_000_000_123,
        new_id=lambda: "fixed-id",
    )
    assert event == {
        "event_name": "purchase",
        "value": 12.5,
        "currency": "EUR",
        "user": {"consistent_anonymous_id": "a1"},
        "context": {"page": {"url": "https://x/"}, "event_id": "fixed-id", "event_timestamp": 1_700_000_000_123},
    }
    generated = build_event("page_view")["context"]
    assert len(generated["event_id"]) == 36 and generated["event_id"] != build_event("page_view")["context"]["event_id"]
    assert abs(generated["event_timestamp"] - time.time() * 1000) < 60_000
    given = build_event("x", event_id="e-1", timestamp=5)["context"]
    assert (given["event_id"], given["event_timestamp"]) == ("e-1", 5)
    assert build_event("x", context={"event_id": "in-ctx"})["context"]["event_id"] == "in-ctx"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None,), "event_name must be a non-empty string"),
        (("",), "event_name must be a non-empty string"),
        ((42,), "event_name must be a non-empty string"),
        (("x", {"context": {}}), "property 'context' of 'x' is set by the client"),
        (("x", {"event_name": "y"}), "property 'event_name'"),
        (("x", [1]), "properties of 'x' must be a mapping"),
        (("x", {"user": {}}, {"id": 1}), "user both in properties and as user="),
        (("x", None, None, None, None, 1.5), "timestamp must be integer milliseconds or a datetime"),
    ],
)
def test_bad_track_arguments_are_named(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_event(*args)


def test_oversized_event_is_refused_with_its_size_name_and_limit() -> None:
    event = build_event("big_one", {"pad": "a" * MAX_EVENT_BYTES})
    with pytest.raises(EventTooLarge) as caught:
        encode_event(event)
    message = str(caught.value)
    assert "'big_one'" in message and "32,768" in message and f"{len(msgspec.json.encode(event)):,}" in message
    exact = build_event("x", event_id="e", timestamp=1)
    room = MAX_EVENT_BYTES - len(encode_event(exact)) - len(',"pad":""')
    assert len(encode_event(build_event("x", {"pad": "a" * room}, event_id="e", timestamp=1))) == MAX_EVENT_BYTES
    with pytest.raises(ValueError, match="cannot be encoded as JSON"):
        encode_event(build_event("x", {"when": object()}))


def test_limits_match_the_edge() -> None:
    from ingest import validate

    assert (MAX_EVENT_BYTES, MAX_BATCH_BYTES) == (validate.MAX_EVENT_BYTES, validate.MAX_BATCH_BYTES)


# -- batches -----------------------------------------------------------------------------------


def test_batches_stay_within_bytes_and_count() -> None:
    events = [b'{"e":"' + b"a" * 30_000 + b'"}'] * 40
    n = take_count([len(e) for e in events], max_events=500)
    assert batch_size(events[:n]) <= MAX_BATCH_BYTES < batch_size(events[: n + 1])
    assert len(batch_body(events[:n])) == batch_size(events[:n])
    assert take_count([10] * 1000, max_events=500) == 500
    assert take_count([10] * 3, max_events=500) == 3
    assert take_count([MAX_EVENT_BYTES], max_events=500, max_bytes=1024) == 1  # never stuck
    body = batch_body([b'{"a":1}', b'{"b":2}'])
    assert json.loads(body) == {"batch": [{"a": 1}, {"b": 2}]}
    assert gzip.decompress(gzip_body(body, 6)) == body
    assert gzip_body(body, 1) == gzip_body(body, 1)  # no time stamp in the header


def test_memory_queue_takes_batches_in_order() -> None:
    queue = MemoryQueue(max_events=10)
    for i in range(7):
        queue.put(b'{"i":%d}' % i)
    assert queue.take(3, MAX_BATCH_BYTES) == [b'{"i":0}', b'{"i":1}', b'{"i":2}']
    assert queue.drop_oldest() == b'{"i":3}'
    assert queue.pending_events == 3 and queue.pending_bytes == 21
    assert queue.take(10, MAX_BATCH_BYTES) == [b'{"i":4}', b'{"i":5}', b'{"i":6}']


# -- back-off ----------------------------------------------------------------------------------


def test_classify_answers() -> None:
    assert [classify(s) for s in (200, 202)] == ["ok", "ok"]
    assert [classify(s) for s in (503, 500, 502, 429, 408)] == ["retry"] * 5
    assert [classify(s) for s in (400, 401, 403, 404, 413, 415)] == ["refused"] * 6


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert [backoff_delay(n, 0.5, 30.0, lambda: 1.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(3, 0.5, 30.0, lambda: 0.25) == 1.0
    assert backoff_delay(10_000, 0.5, 30.0, lambda: 1.0) == 30.0
    rng = random.Random(1)
    delays = [backoff_delay(4, 0.5, 30.0, rng.random) for _ in range(200)]
    assert all(0 <= d < 8 for d in delays) and len(set(delays)) == 200


def test_retry_after_is_a_floor() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(" 0 ", now) == 0.0
    import datetime as dt

    date = format_datetime(dt.datetime.fromtimestamp(now + 7, dt.UTC), usegmt=True)
    assert retry_after_seconds(date, now) == pytest.approx(7.0)
    assert retry_after_seconds("Mon, 01 Jan 2001 00:00:00 GMT", now) == 0.0  # past
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None
    assert retry_delay(0, 5.0, 0.5, 30.0, lambda: 1.0) == 5.0
    assert retry_delay(6, 5.0, 0.5, 30.0, lambda: 1.0) == 30.0


def test_batch_answers() -> None:
    answer = read_answer(b'{"status":"ok","accepted":2,"rejected":[{"index":1,"error":"too large"}]}', 3)
    assert answer.accepted == 2 and [(r.index, r.error) for r in answer.rejected] == [(1, "too large")]
    assert read_answer(b"", 4).accepted == 4  # the hosted API documents no body
    assert read_answer(b'{"status":"ok"}', 4).accepted == 4
    assert read_answer(b'{"rejected":[{"index":9,"error":"x"}]}', 2).rejected == []  # out of range: ignored


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "site", "options", "message"),
    [
        ("ftp://x", "29", {}, "url must be an http"),
        ("http://", "29", {}, "url must be an http"),
        ("http://h?tc_s=1", "29", {}, "url must not carry a query"),
        ("http://u:pw@h", "29", {}, "url must not carry credentials"),
        (None, "29", {}, "url must be the edge's base URL"),
        ("http://h", "", {}, "site_id"),
        ("http://h", "29", {"flush_at": 0}, "flush_at must be an integer >= 1"),
        ("http://h", "29", {"max_queue_events": -5}, "max_queue_events"),
        ("http://h", "29", {"max_batch_bytes": 600_000}, "max_batch_bytes must be at most 512000"),
        ("http://h", "29", {"flush_interval": -1}, "flush_interval must be a positive number"),
        ("http://h", "29", {"timeout": float("nan")}, "timeout"),
        ("http://h", "29", {"overflow": "spill"}, "overflow must be one of block, drop_oldest, drop_newest"),
        ("http://h", "29", {"key_in": "cookie"}, "key_in"),
        ("http://h", "29", {"gzip_level": 10}, "gzip_level must be 0 to 9"),
        ("http://h", "29", {"gzip": "yes"}, "gzip must be True or False"),
        ("http://h", "29", {"spool_dir": 5}, "spool_dir must be a directory path"),
        ("http://h", "29", {"flushat": 1}, "unknown option 'flushat'"),
    ],
)
def test_bad_settings_are_named(url: object, site: object, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(url, site, **options)


def test_base_url_takes_the_full_endpoint_too() -> None:
    assert base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert base_url("https://collect.commander1.com/events/batch") == "https://collect.commander1.com"
    assert base_url("https://proxy.example/tp/events") == "https://proxy.example/tp"


def test_key_stays_out_of_repr_and_errors() -> None:
    with pytest.raises(ValueError, match="key must be") as caught:
        Client("http://h", "29", "")
    client = Client(closed_url(), "29", "secret-source-key-123", **quiet())
    try:
        assert "secret-source-key-123" not in repr(client) and "***" in repr(client)
        assert "secret" not in str(client.config)
    finally:
        client.close(timeout=0)
    assert "secret" not in str(caught.value)


# -- the spool ---------------------------------------------------------------------------------


def test_spool_survives_a_restart_and_replays_in_order(tmp_path: Path) -> None:
    spool = SpoolQueue(tmp_path, max_bytes=1 << 20, segment_bytes=32, fsync=False)
    for i in range(10):
        spool.put(b'{"i":%d}' % i)
    assert len(list(tmp_path.glob("*.seg"))) > 2  # rolled at 32 bytes
    assert spool.take(3, MAX_BATCH_BYTES) == [b'{"i":%d}' % i for i in range(3)]
    spool.ack()
    assert spool.take(2, MAX_BATCH_BYTES) == [b'{"i":3}', b'{"i":4}']  # taken, never acknowledged
    spool.close()

    again = SpoolQueue(tmp_path, max_bytes=1 << 20, segment_bytes=32, fsync=True)
    assert again.pending_events == 7
    again.put(b'{"i":10}')
    assert again.take(100, MAX_BATCH_BYTES) == [b'{"i":%d}' % i for i in range(3, 11)]
    again.ack()
    assert again.pending_events == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # acknowledged segments deleted
    again.close()
    assert SpoolQueue(tmp_path, 1 << 20, 64, False).pending_events == 0


def test_torn_spool_record_is_skipped(tmp_path: Path) -> None:
    spool = SpoolQueue(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20, fsync=False)
    for i in range(3):
        spool.put(b'{"i":%d}' % i)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    with segment.open("ab") as f:  # a write cut short by SIGKILL: a header promising more bytes
        f.write(HEADER.pack(100, 0) + b'{"i":3')
    again = SpoolQueue(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20, fsync=False)
    assert (again.pending_events, again.torn) == (3, 1)
    again.put(b'{"i":4}')  # goes to a new segment, after the torn one
    assert again.take(10, MAX_BATCH_BYTES) == [b'{"i":0}', b'{"i":1}', b'{"i":2}', b'{"i":4}']
    again.close()

    # A damaged record (checksum) in the middle ends its segment's readable part, too.
    other = tmp_path / "other"
    spool = SpoolQueue(other, 1 << 20, 1 << 20, False)
    for i in range(3):
        spool.put(b'{"i":%d}' % i)
    spool.close()
    (segment,) = other.glob("*.seg")
    data = bytearray(segment.read_bytes())
    second = HEADER.size + len(b'{"i":0}')
    struct.pack_into(">I", data, second + 4, zlib.crc32(b"other") & 0xFFFFFFFF)
    segment.write_bytes(bytes(data))
    damaged = SpoolQueue(other, 1 << 20, 1 << 20, False)
    assert damaged.torn == 1 and damaged.take(10, MAX_BATCH_BYTES) == [b'{"i":0}']
    damaged.close()


def test_one_client_per_spool_directory(tmp_path: Path) -> None:
    first = Client(closed_url(), "29", "k-0123456789", spool_dir=tmp_path, **quiet())
    try:
        with pytest.raises(SpoolLocked, match="in use by another client"):
            Client(closed_url(), "29", "k-0123456789", spool_dir=str(tmp_path), **quiet())
    finally:
        first.close(timeout=0)
    Client(closed_url(), "29", "k-0123456789", spool_dir=tmp_path, **quiet()).close(timeout=0)  # released


# -- the sender against local servers ----------------------------------------------------------


def test_503_retry_after_is_honoured_then_the_batch_goes_through() -> None:
    busy = Reply(503, b'{"status":"error","error":"ingest backlog is full, retry later"}', (("Retry-After", "1"),))
    with HookServer(busy, busy, Reply(200, OK_BODY)) as server:
        base = f"http://127.0.0.1:{server.port}"
        with Client(base, "29", "k-0123456789", **quiet()) as client:
            client.track("page_view", event_id="e-503")
            assert client.flush(timeout=10)
            stats = client.stats
        received = server.requests()
    assert [r.status for r in received] == [503, 503, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(received)]
    assert all(gap >= 1.0 for gap in gaps), gaps  # jitter alone would wait at most 0.2 s
    assert (stats.retries, stats.accepted, stats.failed, stats.requests) == (2, 1, 0, 3)
    assert batches(server)[2][0]["context"]["event_id"] == "e-503"
    assert received[0].body == received[2].body  # the same batch, the same event id
    assert received[0].headers["authorization"] == "Bearer k-0123456789"
    assert received[0].path.startswith("/events/batch?tc_s=29") and "token" not in received[0].path


def test_rejections_are_reported_not_retried_and_refusals_not_either() -> None:
    answer = b'{"status":"ok","accepted":2,"rejected":[{"index":1,"error":"event is not an object"}]}'
    seen: list[tuple[str, str]] = []
    errors: list[tuple[str, int]] = []
    with HookServer(Reply(200, answer), Reply(401, b'{"status":"error","error":"unknown key"}')) as server:
        client = Client(
            f"http://127.0.0.1:{server.port}",
            "29",
            "k-0123456789",
            on_rejected=lambda event, error: seen.append((event["event_name"], error)),
            on_error=lambda error, events: errors.append((error, len(events))),
            **quiet(flush_at=3),
        )
        for name in ("a", "b", "c"):
            client.track(name)
        assert client.flush(timeout=10)
        client.track("d")
        client.track("e")
        assert client.flush(timeout=10)
        client.close()
        assert len(server.requests()) == 2  # neither answer was sent again
    assert seen == [("b", "event is not an object")]
    assert errors == [('batch of 2 events refused: HTTP 401: {"status":"error","error":"unknown key"}', 2)]
    stats = client.stats
    assert (stats.accepted, stats.rejected, stats.failed, stats.retries, stats.sent) == (2, 1, 2, 0, 5)


def test_compat_mode_accepting_nothing_is_reported() -> None:
    seen: list[str] = []
    body = b'{"status":"ok","accepted":0,"rejected":[]}'
    with HookServer(Reply(200, body)) as server:
        with Client(
            f"http://127.0.0.1:{server.port}",
            "29",
            "k-0123456789",
            on_rejected=lambda e, err: seen.append(err),
            **quiet(),
        ) as client:
            client.track("x")
            client.track("y")
        assert client.stats.rejected == 2 and len(seen) == 2


def test_key_in_query_and_no_gzip_for_the_hosted_api() -> None:
    with HookServer(Reply(200, b"")) as server:
        with Client(
            f"http://127.0.0.1:{server.port}/events/batch", "29", "k-0123456789", key_in="query", gzip=False, **quiet()
        ) as client:
            client.track("x", event_id="q1")
        (request,) = server.requests()
    assert "token=k-0123456789" in request.path and "authorization" not in request.headers
    assert "content-encoding" not in request.headers and json.loads(request.body)["batch"][0]["event_name"] == "x"
    assert client.stats.accepted == 1


def test_a_callback_that_raises_does_not_stop_the_sender() -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("callback failed")

    answer = b'{"status":"ok","accepted":0,"rejected":[{"index":0,"error":"bad"}]}'
    with HookServer(Reply(200, answer), Reply(200, OK_BODY)) as server:
        with Client(f"http://127.0.0.1:{server.port}", "29", "k-0123456789", on_rejected=boom, **quiet()) as client:
            client.track("x")
            assert client.flush(timeout=10)
            client.track("y")
            assert client.flush(timeout=10)
        assert len(server.requests()) == 2


# -- overflow ----------------------------------------------------------------------------------


def test_drop_newest_and_drop_oldest_count_and_call_back(tmp_path: Path) -> None:
    for policy, kept, lost in (
        ("drop_newest", ["e0", "e1", "e2"], ["e3", "e4"]),
        ("drop_oldest", ["e2", "e3", "e4"], ["e0", "e1"]),
    ):
        dropped: list[tuple[str, str]] = []
        client = Client(
            closed_url(),
            "29",
            "k-0123456789",
            overflow=policy,
            max_queue_events=3,
            on_drop=lambda events, reason, into=dropped: into.extend(
                (e["context"]["event_id"], reason) for e in events
            ),
            **quiet(flush_at=1000, flush_interval=60.0),
        )
        for i in range(5):
            client.track("x", event_id=f"e{i}")
        assert client.stats.dropped == 2
        assert [event_id for event_id, _ in dropped] == lost
        assert all("queue full" in reason for _, reason in dropped)
        with client._cond:
            assert [json.loads(e)["context"]["event_id"] for e in client._core.queue.events] == kept
        client.close(timeout=0)
        assert client.stats.dropped == 5  # the rest was unsent at close, without a spool


def test_block_waits_for_room_then_drops_after_block_timeout() -> None:
    with HookServer(Reply(200, OK_BODY, delay=0.5)) as server:
        client = Client(
            f"http://127.0.0.1:{server.port}",
            "29",
            "k-0123456789",
            overflow="block",
            max_queue_events=2,
            block_timeout=5.0,
            **quiet(flush_at=2, max_batch_events=2),
        )
        for i in range(6):  # the sender frees room every time a batch is taken
            client.track("x", event_id=f"b{i}")
        assert client.flush(timeout=15)
        assert client.stats.dropped == 0 and client.stats.accepted == 6
        client.close()
    stalled = Client(
        closed_url(),
        "29",
        "k-0123456789",
        overflow="block",
        max_queue_events=1,
        block_timeout=0.2,
        **quiet(flush_at=1000, flush_interval=60.0),
    )
    stalled.track("x")
    stalled.track("y")  # no room, nobody frees it: dropped after 0.2 s
    assert stalled.stats.dropped == 1 and stalled.stats.queued == 1
    stalled.close(timeout=0)


def test_spool_bytes_bound_with_drop_newest(tmp_path: Path) -> None:
    client = Client(
        closed_url(),
        "29",
        "k-0123456789",
        spool_dir=tmp_path,
        max_spool_bytes=4096,
        overflow="drop_newest",
        **quiet(flush_at=1000, flush_interval=60.0),
    )
    for i in range(100):
        client.track("x", {"pad": "a" * 100}, event_id=f"s{i}")
    stats = client.stats
    client.close(timeout=0)
    assert 0 < stats.queued < 100 and stats.queued + stats.dropped == 100
    assert SpoolQueue(tmp_path, 1 << 20, 1 << 20, False).pending_events == stats.queued  # kept on disk


# -- asyncio -----------------------------------------------------------------------------------


def test_async_client_sends_retries_and_flushes_on_aclose() -> None:
    busy = Reply(503, b"", (("Retry-After", "1"),))
    with HookServer(busy, Reply(200, b'{"status":"ok","accepted":3,"rejected":[]}')) as server:

        async def main() -> AsyncClient:
            async with AsyncClient(f"http://127.0.0.1:{server.port}", "29", "k-0123456789", **quiet()) as client:
                for i in range(3):
                    await client.track("x", event_id=f"a{i}")
                with pytest.raises(EventTooLarge):
                    await client.track("x", {"pad": "a" * 40_000})
            return client

        client = asyncio.run(main())
        received = server.requests()
    assert [r.status for r in received] == [503, 200]
    assert received[1].at - received[0].at >= 1.0
    assert [e["context"]["event_id"] for e in batches(server)[1]] == ["a0", "a1", "a2"]
    assert (client.stats.accepted, client.stats.retries) == (3, 1)


def test_async_sender_runs_while_a_coroutine_only_tracks() -> None:
    body = b'{"status":"ok","accepted":100,"rejected":[]}'
    with HookServer(*[Reply(200, body)] * 1_000) as server:

        async def main() -> tuple[int, AsyncClient]:
            async with AsyncClient(
                f"http://127.0.0.1:{server.port}",
                "29",
                "k-0123456789",
                **quiet(flush_at=100, max_batch_events=100, max_queue_events=1_000_000),
            ) as client:
                tracked = 0
                # Never awaits anything that waits: before, the sender got no turn until the queue
                # was full, and no request was answered however many events were tracked.
                while client.stats.requests == 0 and tracked < 200_000:
                    await client.track("x", event_id=f"e{tracked}")
                    tracked += 1
            return tracked, client

        tracked, client = asyncio.run(main())
    assert tracked < 200_000
    assert client.stats.accepted == tracked


def test_async_overflow_and_fsync_spool(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        client = AsyncClient(
            closed_url(),
            "29",
            "k-0123456789",
            spool_dir=tmp_path,
            spool_fsync=True,
            max_spool_bytes=2048,
            overflow="drop_oldest",
            **quiet(flush_at=1000, flush_interval=60.0),
        )
        for i in range(50):
            await client.track("x", {"pad": "a" * 50}, event_id=f"f{i}")
        stats = client.stats
        await client.aclose(timeout=0)
        return stats.queued, stats.dropped

    queued, dropped = asyncio.run(main())
    assert queued == 50 and dropped > 0
    spool = SpoolQueue(tmp_path, 1 << 20, 1 << 20, False)
    kept = [json.loads(e)["context"]["event_id"] for e in spool.take(1000, MAX_BATCH_BYTES)]
    # Dropped oldest events are forgotten on disk with the next acknowledged batch; none was acknowledged.
    assert kept[-1] == "f49" and len(kept) == 50
    spool.close()


def test_the_client_imports_nothing_else_of_trackpipe() -> None:
    """Producers install trackpipe for the client alone: it must not pull in the config, Redis or RQ."""
    from tests.test_layers import build_graph

    graph = build_graph()
    client_modules = [m for m in graph if m.startswith("trackpipe.client")]
    assert "trackpipe.client.sync" in client_modules
    for module in client_modules:
        assert all(dep.startswith("trackpipe.client") for dep in graph[module]), (module, graph[module])


def test_generated_ids_are_v4_uuids_unique_across_threads_and_a_fork() -> None:
    import os
    import threading
    import uuid

    from trackpipe.client.events import new_event_id

    per_thread: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_event_id() for _ in range(5_000))  # past one pool of random bytes

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in per_thread for i in out]
    assert len(set(ids)) == len(ids) == 20_000
    for i in ids[::97]:
        parsed = uuid.UUID(i)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, i)

    new_event_id()  # this thread's pool is filled; a forked child must not repeat what follows
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, ",".join(new_event_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        in_child = pipe.read().split(",")
    in_parent = [new_event_id() for _ in range(10)]
    assert len(in_child) == 10 and not set(in_child) & set(in_parent)
