"""ingest.store and trackpipe.jobs: one RQ job per write, refused-key samples, and safe jobs."""

from __future__ import annotations

import os
import pickle
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime

import fakeredis
import msgspec
import pytest
import redis
from rq.exceptions import DeserializationError
from rq.utils import utcparse

from ingest.store import INGEST_DESCRIPTION, IngestStore, held_batches
from ingest.unauthorized import SAMPLE_BODY_BYTES, AuthFailure, UnauthorizedSample
from trackpipe.config import WorkerConfig
from trackpipe.jobs import (
    EVENTS_FIELD,
    INGEST_FUNCTION,
    JOB_FUNCTIONS,
    ForbiddenJobFunction,
    MsgpackSerializer,
    SafeJob,
    ingest_job_options,
    ingest_queue,
    make_queue,
)
from trackpipe.keys import INGEST_QUEUE, KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord, decode_batch, encode_batch

LAYOUT = KeyLayout()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def conn(server: fakeredis.FakeServer) -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


@pytest.fixture
def store(conn: fakeredis.FakeRedis) -> IngestStore:
    return IngestStore(conn, LAYOUT, ring_size=3)


def record(n: int, events: int = 1, site: str = "29") -> IngestRecord:
    return IngestRecord(
        "shop-web", site, 1_700_000_000_000 + n, [b'{"event_name":"e%d","i":%d}' % (n, i) for i in range(events)]
    )


def sample(site: str = "29", reason: AuthFailure = AuthFailure.UNKNOWN_KEY, n: int = 0) -> UnauthorizedSample:
    return UnauthorizedSample.of(site, reason, 1_700_000_000_000 + n, "/events", b'{"n":%d}' % n)


def job_ids(conn: redis.Redis) -> list[str]:
    return [j.decode() for j in conn.lrange(LAYOUT.queue(INGEST_QUEUE), 0, -1)]


# --- one job per write -----------------------------------------------------------------------


def test_rq_keys_live_under_the_trackpipe_prefix(conn: fakeredis.FakeRedis) -> None:
    import rq.defaults

    assert rq.defaults.RQ_KEY_PREFIX == LAYOUT.rq_prefix == "trackpipe:rq"
    assert ingest_queue(conn).key == LAYOUT.queue(INGEST_QUEUE) == "trackpipe:rq:queue:ingest"


def held(conn: fakeredis.FakeRedis, job_id: str) -> list[IngestBatch]:
    job = ingest_queue(conn).fetch_job(job_id)
    assert isinstance(job, SafeJob)
    return held_batches(conn, LAYOUT, job)


def test_write_enqueues_one_job_holding_the_batch(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    batch = IngestBatch([record(1, events=3), record(2), record(3, events=2, site="30")])
    assert store.write(batch, []) == 1
    [job_id] = job_ids(conn)
    job = ingest_queue(conn).fetch_job(job_id)
    assert isinstance(job, SafeJob)
    assert job.func_name == INGEST_FUNCTION
    assert job.origin == INGEST_QUEUE
    assert (list(job.args), job.kwargs) == ([b""], {})  # the events are in the job's parts
    assert held(conn, job_id) == [batch]
    assert conn.hget(job.key, EVENTS_FIELD) == b"6"
    assert conn.get(LAYOUT.open_job(INGEST_QUEUE)) == job_id.encode()
    assert all(key.startswith(b"trackpipe:") for key in conn.scan_iter())


def test_job_written_from_the_template_matches_rqs_own_enqueue(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    """The edge writes a recorded RQ enqueue with its own id and timestamps; the hash must hold
    exactly what RQ's enqueue writes for the same job (plus trackpipe's event count)."""
    before = datetime.now(UTC).replace(microsecond=0)
    store.write(IngestBatch([record(1, events=2)]), [])
    after = datetime.now(UTC)
    [job_id] = job_ids(conn)
    ours = conn.hgetall(f"trackpipe:rq:job:{job_id}")
    assert ours.pop(EVENTS_FIELD.encode()) == b"2"

    other = fakeredis.FakeRedis()
    queue = ingest_queue(other)
    queue.enqueue_call(
        INGEST_FUNCTION,
        args=(b"",),
        description=INGEST_DESCRIPTION,
        job_id=job_id,
        **ingest_job_options(WorkerConfig()),
    )
    theirs = other.hgetall(f"trackpipe:rq:job:{job_id}")
    assert ours.keys() == theirs.keys()
    for field in ours:
        if field in (b"created_at", b"enqueued_at"):
            assert before <= utcparse(ours[field].decode()) <= after
        else:
            assert ours[field] == theirs[field], field
    assert conn.smembers("trackpipe:rq:queues") == other.smembers("trackpipe:rq:queues")
    job = queue.fetch_job(job_id)
    assert job is not None and job.get_status() == "queued" and job.retries_left == 10


def test_writes_join_the_open_job_until_it_is_full(conn: fakeredis.FakeRedis) -> None:
    store = IngestStore(conn, LAYOUT, ring_size=0, max_events=5)
    batches = [IngestBatch([record(i, events=2)]) for i in range(5)]
    lengths = [store.write(b, []) for b in batches]
    assert lengths == [1, 1, 2, 2, 3]  # 2+2 events, then 2+2 (2+2+2 would pass 5), then 2
    first, second, third = job_ids(conn)
    assert held(conn, first) == batches[0:2]
    assert held(conn, second) == batches[2:4]
    assert held(conn, third) == batches[4:5]
    assert conn.get(LAYOUT.open_job(INGEST_QUEUE)) == third.encode()


def test_a_batch_larger_than_max_events_is_one_job(conn: fakeredis.FakeRedis) -> None:
    store = IngestStore(conn, LAYOUT, ring_size=0, max_events=3)
    store.write(IngestBatch([record(1, events=1)]), [])
    store.write(IngestBatch([record(2, events=7)]), [])
    store.write(IngestBatch([record(3, events=1)]), [])
    assert [sum(b.event_count for b in held(conn, j)) for j in job_ids(conn)] == [1, 7, 1]


def test_a_job_a_worker_took_is_never_added_to(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    """Once a worker has popped the job off the queue, the next write makes a new one, even
    while the open marker still names the popped job."""
    store.write(IngestBatch([record(1)]), [])
    [taken] = job_ids(conn)
    assert conn.lpop(LAYOUT.queue(INGEST_QUEUE)) == taken.encode()  # what RQ's dequeue does
    assert conn.get(LAYOUT.open_job(INGEST_QUEUE)) == taken.encode()
    store.write(IngestBatch([record(2)]), [])
    [new] = job_ids(conn)
    assert new != taken
    assert held(conn, taken) == [IngestBatch([record(1)])]
    assert held(conn, new) == [IngestBatch([record(2)])]


def test_a_sealed_job_put_back_on_the_queue_is_never_added_to(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    """RQ re-enqueues an abandoned job at the tail; if its worker had sealed it, it stays sealed."""
    from trackpipe.openjob import seal_and_read_parts

    store.write(IngestBatch([record(1)]), [])
    [job_id] = job_ids(conn)
    conn.lpop(LAYOUT.queue(INGEST_QUEUE))
    assert seal_and_read_parts(conn, LAYOUT, INGEST_QUEUE, job_id) == [encode_batch(IngestBatch([record(1)]))]
    assert conn.get(LAYOUT.open_job(INGEST_QUEUE)) is None
    conn.rpush(LAYOUT.queue(INGEST_QUEUE), job_id)  # the re-enqueue
    store.write(IngestBatch([record(2)]), [])
    assert len(job_ids(conn)) == 2
    assert held(conn, job_id) == [IngestBatch([record(1)])]


def test_a_cancelled_or_deleted_open_job_is_not_added_to(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    store.write(IngestBatch([record(1)]), [])
    [job_id] = job_ids(conn)
    conn.hset(f"trackpipe:rq:job:{job_id}", "status", "canceled")
    store.write(IngestBatch([record(2)]), [])
    assert len(job_ids(conn)) == 2
    conn.delete(f"trackpipe:rq:job:{job_ids(conn)[1]}")
    store.write(IngestBatch([record(3)]), [])
    assert len(job_ids(conn)) == 3


def test_job_data_is_msgpack_not_pickle(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    store.write(IngestBatch([record(1)]), [])
    [job_id] = job_ids(conn)
    raw = conn.hget(f"trackpipe:rq:job:{job_id}", "data")
    assert msgspec.msgpack.decode(zlib.decompress(raw)) == [INGEST_FUNCTION, None, [b""], {}]
    [part] = conn.lrange(LAYOUT.job_parts(job_id), 0, -1)
    assert decode_batch(part) == IngestBatch([record(1)])


def test_no_job_without_a_batch(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    assert store.write(None, []) == 0
    assert store.write(IngestBatch([]), []) == 0
    assert job_ids(conn) == []
    assert not conn.keys("trackpipe:rq:job:*")


def test_ingest_job_options_applied(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    store.write(IngestBatch([record(1)]), [])
    job = ingest_queue(conn).fetch_job(job_ids(conn)[0])
    assert job.result_ttl == 0
    assert job.failure_ttl == 7 * 86_400
    assert job.timeout == WorkerConfig().ingest_timeout_seconds
    # Retries let RQ re-run a job whose worker died (an abandoned job without retries just fails).
    assert job.retries_left == WorkerConfig().ingest_retries > 0
    stored = conn.hgetall(job.key)
    assert stored[b"result_ttl"] == b"0"
    assert stored[b"status"] == b"queued"


def test_write_returns_the_queue_length_including_older_jobs(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    ingest_queue(conn).enqueue_call(INGEST_FUNCTION, args=(b"older",))
    assert store.write(IngestBatch([record(1)]), []) == 2
    assert store.write(None, [sample()]) == 2


def test_write_fails_whole_when_redis_is_down(
    store: IngestStore, conn: fakeredis.FakeRedis, server: fakeredis.FakeServer
) -> None:
    server.connected = False
    with pytest.raises(redis.exceptions.ConnectionError):
        store.write(IngestBatch([record(1)]), [sample()])
    server.connected = True
    assert job_ids(conn) == []
    assert conn.keys() == []


# --- refused-key samples ---------------------------------------------------------------------


def test_samples_are_pushed_to_a_capped_ring_and_counted(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    samples = [sample(n=i) for i in range(5)]
    store.write(None, samples)
    ring = conn.lrange(LAYOUT.unauthorized_ring("29"), 0, -1)
    assert len(ring) == 3  # ring_size
    decoded = [msgspec.json.decode(item, type=UnauthorizedSample) for item in ring]
    assert decoded == [samples[4], samples[3], samples[2]]  # newest first
    assert conn.hgetall(LAYOUT.unauthorized_count) == {b"29|unknown key": b"5"}
    assert job_ids(conn) == []  # samples are never stored for delivery


def test_counts_accumulate_per_site_and_reason(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    store.write(None, [sample("29"), sample("29", AuthFailure.MISSING_KEY), sample("30")])
    store.write(IngestBatch([record(1)]), [sample("29"), sample("29")])
    assert conn.hgetall(LAYOUT.unauthorized_count) == {
        b"29|unknown key": b"3",
        b"29|missing key": b"1",
        b"30|unknown key": b"1",
    }
    assert conn.llen(LAYOUT.unauthorized_ring("29")) == 3
    assert conn.llen(LAYOUT.unauthorized_ring("30")) == 1
    assert len(job_ids(conn)) == 1


def test_ring_size_zero_keeps_no_samples_but_counts(conn: fakeredis.FakeRedis) -> None:
    store = IngestStore(conn, LAYOUT, ring_size=0)
    store.write(None, [sample(), sample()])
    assert conn.llen(LAYOUT.unauthorized_ring("29")) == 0
    assert conn.hgetall(LAYOUT.unauthorized_count) == {b"29|unknown key": b"2"}


def test_sample_body_is_truncated() -> None:
    s = UnauthorizedSample.of("29", AuthFailure.MISSING_KEY, 1, "/events/batch", b"x" * 5000 + b"\xff")
    assert s.body == "x" * SAMPLE_BODY_BYTES
    assert s.body_bytes == 5001
    assert s.reason == "missing key"


def test_custom_key_prefix_for_samples(conn: fakeredis.FakeRedis) -> None:
    layout = KeyLayout("tp2")
    IngestStore(conn, layout, ring_size=5).write(None, [sample()])
    assert conn.llen("tp2:unauth:ring:29") == 1
    assert conn.hget("tp2:unauth:count", "29|unknown key") == b"1"


# --- SafeJob and the serializer --------------------------------------------------------------


def test_msgpack_serializer_round_trip() -> None:
    value = ["workers.ingest.run_ingest_job", None, [b"\x00\xff", 1, 2.5, "é"], {"k": True}]
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps(value)) == value


def test_safe_job_refuses_a_function_not_registered(conn: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(os, "system", calls.append)
    queue = make_queue("evil", conn)
    job = queue.enqueue_call("os.system", args=("echo pwned",))
    fetched = queue.fetch_job(job.id)
    assert isinstance(fetched, SafeJob)
    assert "os.system" not in JOB_FUNCTIONS
    with pytest.raises(ForbiddenJobFunction, match=r"'os\.system' is not a trackpipe job"):
        fetched.func  # noqa: B018
    with pytest.raises(ForbiddenJobFunction):
        fetched.perform()
    assert calls == []


def test_safe_job_refuses_a_function_planted_in_redis(store: IngestStore, conn: fakeredis.FakeRedis) -> None:
    store.write(IngestBatch([record(1)]), [])
    [job_id] = job_ids(conn)
    planted = MsgpackSerializer.dumps(["builtins.eval", None, ["__import__('os').system('id')"], {}])
    conn.hset(f"trackpipe:rq:job:{job_id}", "data", zlib.compress(planted))
    job = ingest_queue(conn).fetch_job(job_id)
    assert job.func_name == "builtins.eval"
    with pytest.raises(ForbiddenJobFunction):
        job.func  # noqa: B018


def test_safe_job_refuses_an_instance_method(conn: fakeredis.FakeRedis) -> None:
    job = SafeJob.create(INGEST_FUNCTION, args=(b"",), connection=conn, serializer=MsgpackSerializer)
    job._instance = object()
    with pytest.raises(ForbiddenJobFunction):
        job.func  # noqa: B018


UNPICKLED: list[str] = []


def _mark_unpickled(*args: object) -> str:
    UNPICKLED.append("unpickled")
    return "pwned"


class Planted:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_mark_unpickled, ())


@pytest.mark.parametrize("compressed", [True, False])
def test_pickle_payload_is_never_unpickled(store: IngestStore, conn: fakeredis.FakeRedis, compressed: bool) -> None:
    UNPICKLED.clear()
    store.write(IngestBatch([record(1)]), [])
    [job_id] = job_ids(conn)
    payload = pickle.dumps((Planted(), None, (), {}))
    pickle.loads(payload)  # the payload does run code when unpickled ...
    assert UNPICKLED == ["unpickled"]
    UNPICKLED.clear()
    conn.hset(f"trackpipe:rq:job:{job_id}", "data", zlib.compress(payload) if compressed else payload)
    job = SafeJob.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    with pytest.raises(DeserializationError):
        job.func_name  # noqa: B018
    with pytest.raises(DeserializationError):
        job.args  # noqa: B018
    assert UNPICKLED == []  # ... but the msgpack serializer never unpickles it
