"""Delivery jobs end to end: real valkey, real HTTP receivers (tests.support.HookServer), the real
config parser and worker context, and once a real `trackpipe worker` process with its scheduler.

process_delivery(ctx, conn, job_key, payload, now=...) is called the way run_delivery_job calls it;
retry jobs are read back from the destination's retry queue (RQ's scheduled registry) and run the
same way, so a chain of retries is followed without waiting for the clock.
"""

from __future__ import annotations

import json
import time
import types
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import destinations.http
from tests.support import HookServer, Reply, closed_url, poll_until, start_worker, stop_worker
from trackpipe.config import Config, parse
from trackpipe.jobs import (
    DELIVER_FUNCTION,
    DONE_FIELD,
    MsgpackSerializer,
    SafeJob,
    delivery_job_options,
    delivery_queue,
    delivery_retry_queue,
)
from trackpipe.keys import KeyLayout
from trackpipe.messages import (
    DeadLetter,
    DeliveryBatch,
    DeliveryEvent,
    decode_dead_letter,
    decode_delivery,
    encode_delivery,
)
from workers.context import WorkerContext
from workers.deliver import process_delivery

LAYOUT = KeyLayout()
HOOK = "crm-hook"
LAKE = "lake"
WORKER_DEADLINE = 30.0

CONFIG = """\
redis_url = "{redis_url}"

[dlq]
max_events = {max_events}

[worker]
maintenance_interval_seconds = 1
abandoned_grace_seconds = 1

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]
{hook}
[[destinations]]
id = "lake"
type = "file"
path = "{lake}"
"""

HOOK_CONFIG = """
[[destinations]]
id = "crm-hook"
type = "webhook"
url = "{url}"
secret = "hook-secret-0123"
connect_timeout_seconds = 2
read_timeout_seconds = 0.3
batch_size = {batch_size}
{hook_extra}
[destinations.retry]
max_attempts = 3
backoff_seconds = [1, 2]
"""


def config_text(
    redis_url: str,
    lake: Path,
    hook_url: str | None,
    *,
    max_events: int = 1000,
    batch_size: int = 100,
    hook_extra: str = "",
) -> str:
    hook = HOOK_CONFIG.format(url=hook_url, batch_size=batch_size, hook_extra=hook_extra) if hook_url else ""
    return CONFIG.format(redis_url=redis_url, max_events=max_events, hook=hook, lake=lake)


class Env:
    """A config, its worker context and the connection, rebuilt whenever the test changes the config."""

    def __init__(self, conn: redis.Redis, redis_url: str, lake: Path) -> None:
        self.conn = conn
        self.redis_url = redis_url
        self.lake = lake
        self.ctx: WorkerContext | None = None

    def configure(self, hook_url: str | None, **options: Any) -> Config:
        if self.ctx is not None:
            self.ctx.close()
        config = parse(config_text(self.redis_url, self.lake, hook_url, **options), env={})
        self.ctx = WorkerContext(config, self.conn)
        return config

    def run(self, payload: bytes, now: float, job_key: str | None = None):
        assert self.ctx is not None, "configure() first"
        return process_delivery(self.ctx, self.conn, job_key or new_job_key(), payload, now=now)

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.close()


@pytest.fixture
def env(valkey_client: redis.Redis, valkey_url: str, tmp_path: Path) -> Iterator[Env]:
    environment = Env(valkey_client, valkey_url, tmp_path / "lake")
    try:
        yield environment
    finally:
        environment.close()


@pytest.fixture
def now() -> float:
    """The delivery's clock: real time, in whole seconds (so scheduled times are exact)."""
    return float(int(time.time()))


# -- building and reading back -------------------------------------------------------------------------


def new_job_key() -> str:
    return f"{LAYOUT.rq_prefix}:job:test-{uuid.uuid4().hex}"


def body_of(i: int) -> bytes:
    event = {"event_name": "purchase", "id": f"O-{i}", "context": {"event_id": f"e{i}", "received_at": 1}}
    return json.dumps(event, separators=(",", ":")).encode()


def make_events(n: int, start: int = 0) -> list[DeliveryEvent]:
    return [DeliveryEvent(f"e{i}", "purchase", body_of(i)) for i in range(start, start + n)]


def payload_for(destination: str, events: list[DeliveryEvent]) -> bytes:
    return encode_delivery(DeliveryBatch(destination, events, 1_700_000_000_000, "ingest-job-1"))


def scheduled(conn: redis.Redis, destination: str = HOOK) -> list[tuple[float, SafeJob, DeliveryBatch]]:
    """Jobs waiting on the destination's retry queue: (due time, job, its batch), earliest first."""
    registry = delivery_retry_queue(destination, conn).scheduled_job_registry
    found = []
    for job_id, score in conn.zrange(registry.key, 0, -1, withscores=True):
        job = SafeJob.fetch(job_id.decode(), connection=conn, serializer=MsgpackSerializer)
        found.append((score, job, decode_delivery(job.args[0])))
    return found


def take_only_retry(conn: redis.Redis, destination: str = HOOK) -> tuple[float, SafeJob, DeliveryBatch]:
    """The one scheduled retry job, removed from the registry (as the scheduler would move it)."""
    jobs = scheduled(conn, destination)
    assert len(jobs) == 1, jobs
    registry = delivery_retry_queue(destination, conn).scheduled_job_registry
    conn.zrem(registry.key, jobs[0][1].id)
    return jobs[0]


def dead_letters(conn: redis.Redis, destination: str = HOOK) -> list[DeadLetter]:
    """The destination's DLQ, newest first."""
    return [decode_dead_letter(raw) for raw in conn.lrange(LAYOUT.dlq(destination), 0, -1)]


def stats(conn: redis.Redis, destination: str = HOOK) -> Counter:
    """Per-minute outcome counters of a destination, summed over all minutes."""
    total: Counter = Counter()
    for key in conn.scan_iter(f"{LAYOUT.prefix}:stats:dest:{destination}:*"):
        total.update({k.decode(): int(v) for k, v in conn.hgetall(key).items()})
    return total


def minute_stats(conn: redis.Redis, at: float, destination: str = HOOK) -> dict[str, int]:
    key = LAYOUT.destination_stats(destination, int(at * 1000) // 60_000)
    return {k.decode(): int(v) for k, v in conn.hgetall(key).items()}


def errors(conn: redis.Redis, destination: str = HOOK) -> tuple[dict[str, int], dict[str, int]]:
    counts = conn.hgetall(LAYOUT.destination_errors(destination))
    last = conn.hgetall(LAYOUT.destination_errors_last(destination))
    return ({k.decode(): int(v) for k, v in counts.items()}, {k.decode(): int(v) for k, v in last.items()})


def ids_in(body: bytes) -> list[str]:
    return [e["context"]["event_id"] for e in json.loads(body)["batch"]]


# -- delivered --------------------------------------------------------------------------------------


def test_2xx_is_counted_delivered_and_the_job_is_marked_done(env: Env, now: float) -> None:
    with HookServer(Reply(200)) as server:
        env.configure(server.url)
        job_key = new_job_key()
        payload = payload_for(HOOK, make_events(3))
        settled = env.run(payload, now, job_key)
        assert settled is not None and [e.event_id for e in settled.delivered] == ["e0", "e1", "e2"]
        assert env.run(payload, now + 5, job_key) is None  # a re-run of a settled job
        assert len(server.requests()) == 1  # ... does not send again
    [got] = server.requests()
    assert ids_in(got.body) == ["e0", "e1", "e2"]
    assert got.headers["x-trackpipe-destination"] == HOOK
    assert got.headers["x-trackpipe-signature"].startswith("sha256=")
    assert env.conn.hget(job_key, DONE_FIELD) == b"1"
    assert minute_stats(env.conn, now) == {"delivered": 3}
    assert stats(env.conn) == {"delivered": 3}  # nothing counted by the re-run
    assert dead_letters(env.conn) == []
    assert scheduled(env.conn) == []
    assert errors(env.conn) == ({}, {})


def test_file_destination_writes_the_bodies(env: Env, now: float) -> None:
    env.configure(None)
    events = make_events(2)
    env.run(payload_for(LAKE, events), now)
    files = sorted(env.lake.glob("*.jsonl"))
    lines = b"".join(p.read_bytes() for p in files).splitlines()
    assert lines == [e.body for e in events]
    assert stats(env.conn, LAKE) == {"delivered": 2}


def test_file_destination_that_cannot_write_schedules_a_retry(env: Env, now: float) -> None:
    env.lake.parent.mkdir(parents=True, exist_ok=True)
    env.lake.write_text("a regular file where the directory should be")
    env.configure(None)
    env.run(payload_for(LAKE, make_events(2)), now)
    [(due, job, batch)] = scheduled(env.conn, LAKE)
    assert job.origin == "retry:lake"
    assert due == now + 1  # the default retry table starts at 1 s
    assert all(e.attempts == 1 and (e.last_error or "").startswith("cannot write") for e in batch.events)
    assert dead_letters(env.conn, LAKE) == []


# -- retried ----------------------------------------------------------------------------------------


def test_500_schedules_one_retry_job_after_the_first_backoff(env: Env, now: float) -> None:
    with HookServer(Reply(500, b"boom")) as server:
        config = env.configure(server.url)
        env.run(payload_for(HOOK, make_events(3)), now)
    [(due, job, batch)] = scheduled(env.conn)
    assert due == now + 1
    assert job.origin == "retry:crm-hook"
    assert job.func_name == DELIVER_FUNCTION
    assert job.timeout == config.worker.delivery_timeout_seconds
    assert batch.destination_id == HOOK
    assert [e.event_id for e in batch.events] == ["e0", "e1", "e2"]
    assert [e.body for e in batch.events] == [body_of(i) for i in range(3)]
    for event in batch.events:
        assert event.attempts == 1
        assert event.last_error == "HTTP 500: boom"
        assert event.first_failure_at == int(now * 1000)
    assert minute_stats(env.conn, now) == {"retried": 3}
    assert dead_letters(env.conn) == []
    assert len(server.requests()) == 1


def test_retries_follow_the_table_then_dead_letter(env: Env, now: float) -> None:
    with HookServer(Reply(500, b"still down")) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, make_events(2)), now)
        due1, job1, batch1 = take_only_retry(env.conn)
        assert due1 == now + 1
        assert [e.attempts for e in batch1.events] == [1, 1]

        env.run(job1.args[0], now + 1, job1.key)
        due2, job2, batch2 = take_only_retry(env.conn)
        assert due2 == now + 1 + 2  # second backoff
        assert [e.attempts for e in batch2.events] == [2, 2]
        assert [e.first_failure_at for e in batch2.events] == [int(now * 1000)] * 2

        env.run(job2.args[0], now + 3, job2.key)
        assert scheduled(env.conn) == []  # max_attempts = 3: no fourth try
        assert len(server.requests()) == 3
    dead = dead_letters(env.conn)
    assert sorted(d.event_id for d in dead) == ["e0", "e1"]
    for record in dead:
        assert record.destination_id == HOOK
        assert record.event_name == "purchase"
        assert record.attempts == 3
        # The reason leads with the error itself, so error details group exhausted retries by it.
        assert record.reason.startswith("HTTP 500: still down")
        assert "(attempts exhausted: 3)" in record.reason
        assert record.first_failure_at == int(now * 1000)
        assert record.last_failure_at == int((now + 3) * 1000)
        assert json.loads(bytes(record.event)) == json.loads(body_of(int(record.event_id[1:])))
    assert stats(env.conn) == {"retried": 4, "dead_lettered": 2}
    assert env.conn.hget(job2.key, DONE_FIELD) == b"1"


def test_500_twice_then_200_is_delivered_once(env: Env, now: float) -> None:
    with HookServer(Reply(500), Reply(500), Reply(200)) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, make_events(1)), now)
        _, job1, _ = take_only_retry(env.conn)
        env.run(job1.args[0], now + 1, job1.key)
        _, job2, _ = take_only_retry(env.conn)
        settled = env.run(job2.args[0], now + 3, job2.key)
        assert settled is not None and [e.event_id for e in settled.delivered] == ["e0"]
        assert env.run(job2.args[0], now + 4, job2.key) is None
    got = server.requests()
    assert [r.status for r in got] == [500, 500, 200]
    assert all(ids_in(r.body) == ["e0"] for r in got)
    assert scheduled(env.conn) == []
    assert dead_letters(env.conn) == []
    assert stats(env.conn) == {"retried": 2, "delivered": 1}


def test_429_retry_after_longer_than_the_backoff_wins(env: Env, now: float) -> None:
    with HookServer(Reply(429, b"slow down", (("Retry-After", "30"),))) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, make_events(2)), now)
    [(due, _, batch)] = scheduled(env.conn)
    assert due >= now + 30
    assert all(e.attempts == 1 and (e.last_error or "").startswith("HTTP 429") for e in batch.events)


@pytest.mark.parametrize(
    ("reply", "asked"),
    [(Reply(500), 1.0), (Reply(429, headers=(("Retry-After", "30"),)), 30.0)],
    ids=["backoff", "retry-after"],
)
def test_retry_is_never_due_before_what_was_asked(
    env: Env, monkeypatch: pytest.MonkeyPatch, reply: Reply, asked: float
) -> None:
    """The failure happens at a fractional second: the retry may be late, never early."""
    failed_at = 1_700_000_000.2
    monkeypatch.setattr(destinations.http, "time", types.SimpleNamespace(time=lambda: failed_at))
    with HookServer(reply) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, make_events(1)), failed_at)
    [(due, _, _)] = scheduled(env.conn)
    assert due >= failed_at + asked


def test_retry_after_on_one_post_does_not_delay_the_others(env: Env, now: float) -> None:
    replies = [Reply(429, headers=(("Retry-After", "60"),)), Reply(500), Reply(200)]
    with HookServer(*replies) as server:
        env.configure(server.url, batch_size=2)
        settled = env.run(payload_for(HOOK, make_events(6)), now)
        assert len(server.requests()) == 3
    assert settled is not None and [e.event_id for e in settled.delivered] == ["e4", "e5"]
    jobs = scheduled(env.conn)
    assert [([e.event_id for e in b.events]) for _, _, b in jobs] == [["e2", "e3"], ["e0", "e1"]]
    assert jobs[0][0] == now + 1
    assert jobs[1][0] >= now + 60
    assert stats(env.conn) == {"delivered": 2, "retried": 4}


def test_connection_refused_is_retried(env: Env, now: float) -> None:
    env.configure(closed_url())
    env.run(payload_for(HOOK, make_events(2)), now)
    [(due, _, batch)] = scheduled(env.conn)
    assert due == now + 1
    assert all((e.last_error or "").startswith("connection error") for e in batch.events)
    assert dead_letters(env.conn) == []
    assert errors(env.conn)[0] == {"connection error": 2}


def test_read_timeout_is_retried(env: Env, now: float) -> None:
    with HookServer(Reply(200, delay=10)) as server:
        env.configure(server.url)  # read_timeout_seconds = 0.3
        env.run(payload_for(HOOK, make_events(1)), now)
        assert len(server.requests()) == 1
    [(due, _, batch)] = scheduled(env.conn)
    assert due == now + 1
    assert (batch.events[0].last_error or "").startswith("timeout")
    assert dead_letters(env.conn) == []


@pytest.mark.parametrize("value", ["999999999999", "9" * 400], ids=["year-33715", "400-digits"])
def test_a_huge_retry_after_does_not_break_the_job(env: Env, now: float, value: str) -> None:
    """A valid (if absurd) Retry-After must not crash the job: a crash re-runs it, sending again."""
    with HookServer(Reply(429, headers=(("Retry-After", value),))) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, make_events(1)), now)
    kept = [e.event_id for _, _, b in scheduled(env.conn) for e in b.events] + [
        d.event_id for d in dead_letters(env.conn)
    ]
    assert kept == ["e0"]


# -- dead-lettered --------------------------------------------------------------------------------------


def test_400_goes_straight_to_the_dlq(env: Env, now: float) -> None:
    body = b"unknown field 'sku' in item 0; see https://example.test/docs " + b"#" * 1000
    with HookServer(Reply(400, body)) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, make_events(2)), now)
        assert len(server.requests()) == 1
    assert scheduled(env.conn) == []
    raw = [json.loads(r) for r in env.conn.lrange(LAYOUT.dlq(HOOK), 0, -1)]
    assert all(
        set(r)
        == {
            "event_id",
            "event_name",
            "destination_id",
            "reason",
            "attempts",
            "first_failure_at",
            "last_failure_at",
            "event",
        }
        for r in raw
    )
    dead = dead_letters(env.conn)
    assert sorted(d.event_id for d in dead) == ["e0", "e1"]
    for record in dead:
        assert record.reason.startswith("HTTP 400: unknown field 'sku' in item 0")
        assert len(record.reason) <= 300
        assert record.attempts == 1
        assert record.first_failure_at == record.last_failure_at == int(now * 1000)
        assert json.loads(bytes(record.event)) == json.loads(body_of(int(record.event_id[1:])))
    assert minute_stats(env.conn, now) == {"dead_lettered": 2}


def test_partial_answer_dead_letters_only_the_refused_event(env: Env, now: float) -> None:
    answer = json.dumps({"rejected": [{"index": 1, "error": "bad sku"}]}).encode()
    with HookServer(Reply(200, answer)) as server:
        env.configure(server.url)
        settled = env.run(payload_for(HOOK, make_events(3)), now)
    assert settled is not None and [e.event_id for e in settled.delivered] == ["e0", "e2"]
    [record] = dead_letters(env.conn)
    assert record.event_id == "e1"
    assert "bad sku" in record.reason
    assert record.attempts == 1
    assert scheduled(env.conn) == []
    assert minute_stats(env.conn, now) == {"delivered": 2, "dead_lettered": 1}


def test_dlq_keeps_the_newest_and_counts_the_dropped(env: Env, now: float) -> None:
    with HookServer(Reply(400, b"no")) as server:
        env.configure(server.url, max_events=3)
        env.run(payload_for(HOOK, make_events(5)), now)
        assert [d.event_id for d in dead_letters(env.conn)] == ["e4", "e3", "e2"]
        assert env.conn.hget(LAYOUT.dlq_dropped, HOOK) == b"2"

        env.run(payload_for(HOOK, make_events(2, start=5)), now + 1)
    assert [d.event_id for d in dead_letters(env.conn)] == ["e6", "e5", "e4"]
    assert env.conn.hget(LAYOUT.dlq_dropped, HOOK) == b"4"
    assert stats(env.conn) == {"dead_lettered": 7}  # counted even when dropped from the full DLQ


def test_error_details_count_kinds_and_remember_when_last_seen(env: Env, now: float) -> None:
    with HookServer(Reply(500, b"a body that varies 1"), Reply(400, b"bad"), Reply(500, b"varies 2")) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, make_events(1)), now)
        assert errors(env.conn) == ({"HTTP 500": 1}, {"HTTP 500": int(now * 1000)})
        env.run(payload_for(HOOK, make_events(1, start=1)), now + 5)
        env.run(payload_for(HOOK, make_events(2, start=2)), now + 10)
    counts, last = errors(env.conn)
    assert counts == {"HTTP 500": 3, "HTTP 400": 1}
    assert last == {"HTTP 500": int((now + 10) * 1000), "HTTP 400": int((now + 5) * 1000)}


def test_events_for_a_removed_destination_are_dead_lettered(env: Env, now: float) -> None:
    env.configure(None)  # crm-hook is no longer in the config
    env.run(payload_for(HOOK, make_events(2)), now)
    dead = dead_letters(env.conn)
    assert sorted(d.event_id for d in dead) == ["e0", "e1"]
    for record in dead:
        assert "'crm-hook'" in record.reason
        assert "no longer configured" in record.reason
        assert record.destination_id == HOOK
    assert scheduled(env.conn) == []
    assert minute_stats(env.conn, now) == {"dead_lettered": 2}


# -- skipped by the destination, secrets, the destination inspector's requests --------------------------

SOURCE = "shop-web"
URL_SECRET = "ga-api-secret-4242"


def sourced_events(n: int) -> list[DeliveryEvent]:
    """Events that say which source they came from (the inspector's failure list is per source)."""
    found = []
    for i in range(n):
        event = {"event_name": "purchase", "id": f"O-{i}", "context": {"event_id": f"e{i}", "source_id": SOURCE}}
        found.append(DeliveryEvent(f"e{i}", "purchase", json.dumps(event).encode(), received_at=1_700_000_000_000))
    return found


def inspector_entries(conn: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in conn.lrange(LAYOUT.inspector_failures(SOURCE), 0, -1)]


def stored_requests(conn: redis.Redis, destination: str = HOOK) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in conn.lrange(LAYOUT.destination_requests(destination), 0, -1)]


def everything_stored(conn: redis.Redis) -> bytes:
    """Every value in the database, as bytes: where a secret must not be."""
    found = []
    for key in conn.scan_iter("*"):
        kind = conn.type(key)
        if kind == b"string":
            found.append(conn.get(key) or b"")
        elif kind == b"list":
            found += conn.lrange(key, 0, -1)
        elif kind == b"hash":
            found += [k + b"=" + v for k, v in conn.hgetall(key).items()]
        elif kind == b"zset":
            found += [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == b"set":
            found += list(conn.smembers(key))
        found.append(key)
    return b"\n".join(found)


def test_dry_run_sends_nothing_counts_filtered_and_keeps_the_request(env: Env, now: float) -> None:
    with HookServer(Reply(200)) as server:
        env.configure(server.url, hook_extra="dry_run = true")
        settled = env.run(payload_for(HOOK, sourced_events(3)), now)
        assert server.requests() == []
    assert settled is not None and [e.event_id for e, _ in settled.skipped] == ["e0", "e1", "e2"]
    assert minute_stats(env.conn, now) == {"filtered": 3, "skipped": 3}  # skipped: by the destination itself
    assert dead_letters(env.conn) == [] and scheduled(env.conn) == [] and errors(env.conn) == ({}, {})
    [request] = stored_requests(env.conn)
    assert request["dry_run"] is True and request["status"] is None and request["events"] == 3
    assert [e["context"]["event_id"] for e in json.loads(request["request_body"])["batch"]] == ["e0", "e1", "e2"]
    entries = inspector_entries(env.conn)
    assert {(e["event_id"], e["destination_id"], e["status"]) for e in entries} == {
        (f"e{i}", HOOK, "FILTERED") for i in range(3)
    }
    assert all(e["reason"] == "dry run: request recorded, not sent" for e in entries)


def test_a_skipped_event_is_filtered_not_failed(env: Env, now: float) -> None:
    from destinations.base import DELIVERED, Skipped

    class Picky:
        def send(self, events: list) -> list:
            return [Skipped(f"no mapping for {e.event_id}") if e.event_id == "e1" else DELIVERED for e in events]

        def take_exchanges(self) -> list:
            return []

        def close(self) -> None:
            pass

    env.configure("http://127.0.0.1:9/unused")
    assert env.ctx is not None
    env.ctx._senders[HOOK] = Picky()
    env.run(payload_for(HOOK, sourced_events(3)), now)
    assert minute_stats(env.conn, now) == {"delivered": 2, "filtered": 1, "skipped": 1}
    assert dead_letters(env.conn) == [] and scheduled(env.conn) == []
    [entry] = inspector_entries(env.conn)
    assert (entry["event_id"], entry["status"], entry["reason"]) == ("e1", "FILTERED", "no mapping for e1")


def test_a_secret_in_the_url_is_masked_in_everything_stored(env: Env, now: float) -> None:
    echo = f"bad request to /hook?api_secret={URL_SECRET}".encode()
    with HookServer(Reply(500, echo), Reply(400, echo)) as server:
        env.configure(f"{server.url}?api_secret={URL_SECRET}")
        env.run(payload_for(HOOK, sourced_events(1)), now)  # 500: a retry job holds the reason
        env.run(payload_for(HOOK, sourced_events(2)), now + 1)  # 400: dead letters, inspector entries
        assert all(URL_SECRET in r.path for r in server.requests())  # the receiver got the real URL
    [retry] = scheduled(env.conn)
    assert retry[2].events[0].last_error == "HTTP 500: bad request to /hook?api_secret=***"
    assert {d.reason for d in dead_letters(env.conn)} == {"HTTP 400: bad request to /hook?api_secret=***"}
    assert {e["status"] for e in inspector_entries(env.conn)} == {"FAILED"}
    requests = stored_requests(env.conn)
    assert [r["status"] for r in requests] == [400, 500]  # newest first
    assert requests[0]["url"].endswith("/hook?api_secret=***")
    assert URL_SECRET.encode() not in everything_stored(env.conn)
    assert b"hook-secret-0123" not in everything_stored(env.conn)  # nor the signing secret


def test_reasons_from_any_sender_are_masked_with_the_destinations_secrets(env: Env, now: float) -> None:
    from destinations.base import Rejected

    class Leaky:  # not an HttpSender: the delivery job masks what it reports all the same
        def send(self, events: list) -> list:
            return [Rejected(f"refused with signing key hook-secret-0123 for {e.event_id}") for e in events]

        def take_exchanges(self) -> list:
            return []

        def close(self) -> None:
            pass

    env.configure("http://127.0.0.1:9/unused")
    assert env.ctx is not None
    env.ctx._senders[HOOK] = Leaky()
    env.run(payload_for(HOOK, sourced_events(1)), now)
    [letter] = dead_letters(env.conn)
    assert letter.reason == "refused with signing key *** for e0"
    assert b"hook-secret-0123" not in everything_stored(env.conn)


def test_a_damaged_stored_event_is_dead_lettered_and_the_others_sent(env: Env, now: float) -> None:
    events = make_events(3)
    events[1] = DeliveryEvent("e1", "purchase", b'{"event_name": "purch')
    with HookServer(Reply(200)) as server:
        env.configure(server.url)
        env.run(payload_for(HOOK, events), now)
        [got] = server.requests()
    assert ids_in(got.body) == ["e0", "e2"]
    [letter] = dead_letters(env.conn)
    assert letter.event_id == "e1" and letter.reason.startswith("stored event is not a JSON object")
    assert json.loads(bytes(letter.event)) == '{"event_name": "purch'  # kept, as a string: the record stays JSON
    assert minute_stats(env.conn, now) == {"delivered": 2, "dead_lettered": 1}


def test_the_destination_keeps_its_last_requests_newest_first(env: Env, now: float) -> None:
    from trackpipe.keys import DESTINATION_REQUESTS_KEPT

    with HookServer(Reply(200, b'{"ok":true}')) as server:
        env.configure(server.url, batch_size=1)
        for round_ in range(DESTINATION_REQUESTS_KEPT // 3 + 2):
            env.run(payload_for(HOOK, make_events(3, start=3 * round_)), now)
        total = len(server.requests())
    assert total > DESTINATION_REQUESTS_KEPT
    requests = stored_requests(env.conn)
    assert len(requests) == DESTINATION_REQUESTS_KEPT
    newest = [json.loads(r["request_body"])["batch"][0]["context"]["event_id"] for r in requests[:3]]
    assert newest == [f"e{total - 1}", f"e{total - 2}", f"e{total - 3}"]
    assert requests[0]["status"] == 200 and requests[0]["response_body"] == '{"ok":true}'


def test_the_file_destination_keeps_no_requests(env: Env, now: float) -> None:
    env.configure(None)
    env.run(payload_for(LAKE, make_events(2)), now)
    assert stored_requests(env.conn, LAKE) == []


# -- a real worker process ------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_worker_retries_through_the_scheduler_until_delivered(
    valkey_client: redis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    conn = valkey_client
    log = tmp_path / "worker.log"
    with HookServer(Reply(500, b"down"), Reply(503), Reply(200), secret="hook-secret-0123") as server:
        config_path = tmp_path / "trackpipe.toml"
        config_path.write_text(config_text(valkey_url, tmp_path / "lake", server.url))
        config = parse(config_path.read_text(), env={})
        proc = start_worker(config_path, "--queues", f"deliver:{HOOK},retry:{HOOK}", log=log)
        try:
            delivery_queue(HOOK, conn).enqueue_call(
                DELIVER_FUNCTION,
                args=(payload_for(HOOK, make_events(1)),),
                description=f"deliver to {HOOK}",
                **delivery_job_options(config.worker),
            )

            def delivered() -> bool:
                assert proc.poll() is None, f"worker exited:\n{log.read_text()[-3000:]}"
                return stats(conn).get("delivered", 0) == 1

            try:
                poll_until(delivered, WORKER_DEADLINE, "the worker did not deliver the event")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nworker log:\n{log.read_text()[-3000:]}") from None
        finally:
            stop_worker(proc)
    got = server.requests()
    assert [r.status for r in got] == [500, 503, 200]
    assert all(ids_in(r.body) == ["e0"] for r in got)
    assert dead_letters(conn) == []
    assert scheduled(conn) == []
    assert stats(conn) == {"retried": 2, "delivered": 1}
