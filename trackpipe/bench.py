"""`trackpipe bench`: each hot path measured side by side with its baseline, in the same run.

Every measurement starts its own embedded server in a temporary directory and cleans up after itself.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from redis import Redis

from trackpipe.config import Config, parse
from trackpipe.embedded import start_server
from trackpipe.keys import KeyLayout

V2_EXAMPLE: dict[str, Any] = {
    "event_name": "purchase",
    "id": "O-1",
    "value": 42.5,
    "revenue": 35,
    "currency": "EUR",
    "type": "online",
    "payment_method": "card",
    "status": "pending",
    "user": {"id": "7", "consent_categories": ["1", "3"]},
    "items": [{"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "price": 35}}],
    "context": {
        "event_id": "c0ffee-1",
        "event_timestamp": 1700000000000,
        "page": {"url": "https://x/ok"},
        "device": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0"},
    },
}

BENCH_CONFIG = """
redis_url = "{redis_url}"
[[sources]]
id = "bench-web"
site_id = "1"
keys = ["bench-key-0123456789"]
[[destinations]]
id = "bench-file"
type = "file"
path = "{out_dir}"
"""


class Measurement(msgspec.Struct, omit_defaults=True):
    value: float
    baseline: float
    ratio: float
    unit: str
    detail: dict[str, Any] = {}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}


@contextmanager
def bench_server() -> Iterator[tuple[Redis, str, Path]]:
    with tempfile.TemporaryDirectory(prefix="trackpipe-bench-") as tmp:
        server = start_server(Path(tmp) / "valkey")
        url = f"redis://127.0.0.1:{server.port}/0"
        connection = Redis.from_url(url)
        try:
            yield connection, url, Path(tmp)
        finally:
            connection.close()
            server.stop()


def event_bytes(n: int, tag: str) -> list[bytes]:
    events = []
    for i in range(n):
        event = dict(V2_EXAMPLE)
        event["context"] = {**V2_EXAMPLE["context"], "event_id": f"{tag}-{i}-{uuid.uuid4().hex[:8]}"}
        events.append(msgspec.json.encode(event))
    return events


def _enqueue_jobs(connection: Redis, config: Config, events: list[bytes], per_job: int) -> int:
    from ingest.store import IngestStore
    from trackpipe.messages import IngestBatch, IngestRecord

    store = IngestStore(connection, KeyLayout(config.key_prefix), 0, config.worker)
    now = time.time_ns() // 1_000_000
    jobs = 0
    for start in range(0, len(events), per_job):
        store.write(IngestBatch([IngestRecord("bench-web", "1", now, events[start : start + per_job])]), [])
        jobs += 1
    return jobs


def _drain(connection: Redis, config: Config) -> float:
    """Run one worker process's worth of ingest jobs (in this process) until the queue is empty."""
    from workers.runner import build_worker

    worker = build_worker(config, connection, ["ingest"])
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    return time.perf_counter() - started


def bench_worker(events: int = 100_000, per_job: int = 2_000, baseline_events: int = 2_000) -> Measurement:
    """Ingest jobs through decode, normalize, dedup and fan-out to one destination, one worker
    process; against the same work done as one RQ job per event on the same SimpleWorker."""
    with bench_server() as (connection, url, tmp):
        config = parse(BENCH_CONFIG.format(redis_url=url, out_dir=tmp / "out"))
        layout = KeyLayout(config.key_prefix)
        rates = {}
        for name, count, size in (("baseline", baseline_events, 1), ("batched", events, per_job)):
            jobs = _enqueue_jobs(connection, config, event_bytes(count, name), size)
            seconds = _drain(connection, config)
            processed = sum(int(n) for n in connection.hvals(layout.source_stats("bench-web")))
            if processed != count:
                raise RuntimeError(f"bench worker: {count} events enqueued but {processed} processed")
            rates[name] = {"events": count, "jobs": jobs, "seconds": round(seconds, 3)}
            connection.flushall()
        value = rates["batched"]["events"] / rates["batched"]["seconds"]
        baseline = rates["baseline"]["events"] / rates["baseline"]["seconds"]
        return Measurement(round(value), round(baseline), round(value / baseline, 1), "events/s", rates)


def _used_memory(connection: Redis) -> int:
    return int(connection.info("memory")["used_memory"])


def bench_dedup(ids: int = 1_000_000, chunk: int = 2_000) -> Measurement:
    """Redis memory per remembered event id: trackpipe's layout against one SET NX EX key per id."""
    from workers.dedup import Deduplicator

    with bench_server() as (connection, url, _):
        config = parse(BENCH_CONFIG.format(redis_url=url, out_dir="unused"))
        layout = KeyLayout(config.key_prefix)
        dedup = Deduplicator(connection, layout, config.dedup.window_seconds, config.dedup.buckets)
        now = time.time_ns() // 1_000_000
        before = _used_memory(connection)
        for start in range(0, ids, chunk):
            items = [(dedup.key_for("bench-web", uuid.uuid4().hex), now) for _ in range(min(chunk, ids - start))]
            dedup.claim(connection, f"{layout.prefix}:bench:job:{start}", items)
        connection.delete(*connection.keys(f"{layout.prefix}:bench:job:*"))
        ours = (_used_memory(connection) - before) / ids
        buckets = sum(1 for _ in connection.scan_iter(layout.dedup_pattern, count=1000))
        connection.flushall()
        before = _used_memory(connection)
        pipe = connection.pipeline(transaction=False)
        for i in range(ids):
            pipe.set(f"dd:bench-web:{uuid.uuid4()}", 1, nx=True, ex=86_400)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        naive = (_used_memory(connection) - before) / ids
        server_version = connection.info("server").get("valkey_version") or connection.info("server")["redis_version"]
        return Measurement(
            round(ours, 1),
            round(naive, 1),
            round(ours / naive, 3),
            "bytes/id",
            {"ids": ids, "buckets": buckets, "server": str(server_version)},
        )


BENCHES: dict[str, Callable[..., Measurement]] = {"worker": bench_worker, "dedup": bench_dedup}
