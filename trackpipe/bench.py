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
from trackpipe.examples import V2_EXAMPLE
from trackpipe.keys import KeyLayout

BENCH_SITE = "1"
BENCH_KEY = "bench-key-0123456789"
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


# The worker benchmark's config plus a webhook destination.
E2E_CONFIG = (
    BENCH_CONFIG
    + """[[destinations]]
id = "bench-hook"
type = "webhook"
url = "{hook_url}"
"""
)


class _Receiver:
    """A webhook receiver that notes when each event id arrived."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                now = time.time()
                ids = [e["context"]["event_id"] for e in msgspec.json.decode(body)["batch"]]
                with lock:
                    for event_id in ids:
                        if event_id in receiver.arrivals:
                            receiver.duplicates += 1
                        else:
                            receiver.arrivals[event_id] = now
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _spawn(*args: str, env: dict[str, str]) -> Any:
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "trackpipe.cli", *args], env=env, stderr=subprocess.DEVNULL)


def wait_http(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def bench_e2e(rate: float = 1_000, duration: float = 20.0) -> Measurement:
    """Post single events at a steady rate through a real edge and workers to a webhook and a file
    destination; latency from writing the request to the webhook's receipt."""
    import asyncio
    import signal
    import socket

    from trackpipe.loadgen import run_load

    receiver = _Receiver()
    procs = []
    try:
        with bench_server() as (_, url, tmp):
            config_file = tmp / "e2e.toml"
            config_file.write_text(E2E_CONFIG.format(redis_url=url, hook_url=receiver.url, out_dir=tmp / "out"))
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            env = {**os.environ}
            procs.append(_spawn("edge", "--config", str(config_file), "--port", str(port), env=env))
            for queues in ("ingest", "deliver:bench-hook,retry:bench-hook", "deliver:bench-file,retry:bench-file"):
                procs.append(_spawn("worker", "--config", str(config_file), "--queues", queues, env=env))
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz")
            template = msgspec.json.encode(V2_EXAMPLE).replace(b'"c0ffee-1"', b'"e2e-%d"')
            result = asyncio.run(
                run_load(
                    f"{base}/events?tc_s={BENCH_SITE}&token={BENCH_KEY}",
                    lambda i: template % i,
                    connections=32,
                    duration=duration,
                    rate=rate,
                )
            )
            end = time.monotonic() + 60
            while len(receiver.arrivals) < result.ok and time.monotonic() < end:
                time.sleep(0.1)
            latencies = [
                receiver.arrivals[f"e2e-{i}"] - sent
                for i, sent in result.send_times.items()
                if f"e2e-{i}" in receiver.arrivals
            ]
            in_file = (
                sum(len(path.read_bytes().splitlines()) for path in (tmp / "out").glob("*.jsonl"))
                if (tmp / "out").exists()
                else 0
            )
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        receiver.close()
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    detail = {
        "offered_rate": rate,
        "achieved_rate": round(result.ok / result.seconds, 1),
        "accepted": result.ok,
        "statuses": result.statuses,
        "webhook_received": len(receiver.arrivals),
        "file_lines": in_file,
        "lost_webhook": result.ok - len(receiver.arrivals),
        "duplicates": receiver.duplicates,
        "p50_ms": round(p50 * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }
    return Measurement(round(p99 * 1000, 1), 500.0, round(p99 * 1000 / 500.0, 3), "p99 ms (target 500)", detail)


BENCHES["e2e"] = bench_e2e
