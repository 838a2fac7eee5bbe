"""`trackpipe bench`: each hot path measured side by side with its baseline, in the same run.

Every measurement starts its own embedded server in a temporary directory and cleans up after itself.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from redis import Redis

from tooling.embedded import start_server
from tooling.examples import V2_EXAMPLE
from tooling.harness import file_ids, free_port, wait_http
from trackpipe.config import Config, parse
from trackpipe.connection import sync_client
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
    # Side figures reported next to value/baseline (the edge's throughput per fsync policy).
    figures: dict[str, float] = {}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_server": server_version(),
        "wrk": shutil.which("wrk") is not None,
    }


def server_version() -> str:
    """Version of the embedded Redis-compatible server the benchmarks run on."""
    with bench_server() as (connection, _, _):
        info = connection.info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info['redis_version']}"


@contextmanager
def bench_server() -> Iterator[tuple[Redis, str, Path]]:
    with tempfile.TemporaryDirectory(prefix="trackpipe-bench-") as tmp:
        server = start_server(Path(tmp) / "valkey")
        url = f"redis://127.0.0.1:{server.port}/0"
        connection = sync_client(url)
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

    # max_events=per_job: each write is its own job, of exactly the size measured.
    store = IngestStore(connection, KeyLayout(config.key_prefix), 0, config.worker, max_events=per_job)
    now = time.time_ns() // 1_000_000
    jobs = 0
    for start in range(0, len(events), per_job):
        store.write(IngestBatch([IngestRecord("bench-web", "1", now, events[start : start + per_job])]), [])
        jobs += 1
    return jobs


def _drain(connection: Redis, config: Config) -> tuple[float, float]:
    """Run one worker process's worth of ingest jobs (in this process) until the queue is empty:
    (wall seconds, CPU seconds of this process meanwhile)."""
    from workers.runner import build_worker

    worker = build_worker(config, connection, ["ingest"])
    started, cpu = time.perf_counter(), time.process_time()
    try:
        worker.work(burst=True, logging_level="WARNING")
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        worker.teardown()


def bench_worker(
    events: int = 100_000, per_job: int = 2_000, baseline_events: int = 2_000, rounds: int = 3
) -> Measurement:
    """Ingest jobs through decode, normalize, dedup and fan-out to one destination, one worker
    process; against the same work done as one RQ job per event on the same SimpleWorker. The
    batched run is repeated `rounds` times (the machine is shared and its speed moves between
    runs): the figure is the median round, every round is in the detail. Side figures: the worker
    process's CPU per event in that round, and the same past the cost of a job (the CPU of the
    one-event jobs, per job, taken off once per job: what each further event costs)."""
    with bench_server() as (connection, url, tmp):
        config = parse(BENCH_CONFIG.format(redis_url=url, out_dir=tmp / "out"))
        layout = KeyLayout(config.key_prefix)
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "batched": []}
        for name, count, size in [("baseline", baseline_events, 1)] + [("batched", events, per_job)] * rounds:
            jobs = _enqueue_jobs(connection, config, event_bytes(count, name), size)
            seconds, cpu = _drain(connection, config)
            processed = sum(int(n) for n in connection.hvals(layout.source_stats("bench-web")))
            if processed != count:
                raise RuntimeError(f"bench worker: {count} events enqueued but {processed} processed")
            runs[name].append({"events": count, "jobs": jobs, "seconds": round(seconds, 3), "cpu_seconds": cpu})
            connection.flushall()
        per_round = [run["events"] / run["seconds"] for run in runs["batched"]]
        value = statistics.median_low(per_round)
        first = runs["baseline"][0]
        baseline = first["events"] / first["seconds"]
        median = runs["batched"][per_round.index(value)]
        job_cpu = first["cpu_seconds"] / first["jobs"]  # a one-event job: the job's cost and one event's
        past_jobs = (median["cpu_seconds"] - median["jobs"] * job_cpu) / (median["events"] - median["jobs"])
        figures = {
            "cpu_us_per_event": round(median["cpu_seconds"] / median["events"] * 1e6, 2),
            "cpu_us_per_event_past_job": round(past_jobs * 1e6, 2),
            "cpu_ms_per_job": round(job_cpu * 1e3, 3),
        }
        for run in runs["baseline"] + runs["batched"]:
            run["cpu_seconds"] = round(run["cpu_seconds"], 3)
        detail = {
            "baseline": first,
            "batched": median,  # the median round
            "rounds_events_per_second": [round(r) for r in per_round],
        }
        return Measurement(round(value), round(baseline), round(value / baseline, 1), "events/s", detail, figures)


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




# The worker benchmark's config plus a webhook destination.
E2E_CONFIG = (
    BENCH_CONFIG
    + """[[destinations]]
id = "bench-hook"
type = "webhook"
url = "{hook_url}"
"""
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _spawn(*args: str, env: dict[str, str]) -> Any:
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "commands", *args], env=env, stderr=subprocess.DEVNULL)


def _file_ids(out_dir: Path) -> tuple[set[str], int]:
    """Distinct event ids in the file destination's output, and how many lines repeated one."""
    found = file_ids(out_dir)
    return set(found), sum(found.values()) - len(found)


def bench_e2e(rate: float = 5_000, duration: float = 20.0, events_per_request: int = 1) -> Measurement:
    """Post events at a steady rate through a real edge and workers to a webhook and a file
    destination; latency from the request's due time on the load generator's schedule (not from
    when it was actually written: a generator falling behind must not hide the wait) to the
    webhook's receipt. The webhook receiver runs in its own process; every accepted event must
    reach both destinations. The server runs at `appendfsync always` (the default)."""
    import asyncio
    import signal
    import subprocess
    import sys

    from tooling.benchsink import read_arrivals
    from tooling.loadgen import run_load

    procs: list[Any] = []
    with bench_server() as (connection, url, tmp):
        server_fsync = str(connection.config_get("appendfsync")["appendfsync"])
        sink_port, port = free_port(), free_port()
        arrivals_file = tmp / "arrivals.txt"
        sink = subprocess.Popen(
            [sys.executable, "-m", "tooling.benchsink", "--port", str(sink_port), "--out", str(arrivals_file)],
            stderr=subprocess.DEVNULL,
        )
        procs.append(sink)
        try:
            config_file = tmp / "e2e.toml"
            hook_url = f"http://127.0.0.1:{sink_port}/hook"
            config_file.write_text(E2E_CONFIG.format(redis_url=url, hook_url=hook_url, out_dir=tmp / "out"))
            env = {**os.environ}
            procs.append(_spawn("edge", "--config", str(config_file), "--port", str(port), env=env))
            for queues in ("ingest", "deliver:bench-hook,retry:bench-hook", "deliver:bench-file,retry:bench-file"):
                procs.append(_spawn("worker", "--config", str(config_file), "--queues", queues, env=env))
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz")
            wait_http(f"http://127.0.0.1:{sink_port}/healthz")
            event = msgspec.json.encode(V2_EXAMPLE).replace(b'"c0ffee-1"', b'"e2e-%d"')
            if events_per_request == 1:
                route, body_for = "/events", (lambda i: event % i)
            else:
                route = "/events/batch"

                def body_for(i: int) -> bytes:
                    first = i * events_per_request
                    return (
                        b'{"batch":[' + b",".join(event % n for n in range(first, first + events_per_request)) + b"]}"
                    )

            result = asyncio.run(
                run_load(
                    f"{base}{route}?tc_s={BENCH_SITE}&token={BENCH_KEY}",
                    body_for,
                    connections=32,
                    duration=duration,
                    rate=rate / events_per_request,
                )
            )
            accepted = {
                f"e2e-{n}"
                for i in result.ok_numbers
                for n in range(i * events_per_request, (i + 1) * events_per_request)
            }
            # Wait until the file holds every accepted event (or a minute passes), then stop all.
            end = time.monotonic() + 60
            while time.monotonic() < end and len(_file_ids(tmp / "out")[0] & accepted) < len(accepted):
                time.sleep(0.2)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)
            arrivals, hook_duplicates = read_arrivals(arrivals_file)
            in_file, file_duplicates = _file_ids(tmp / "out")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    latencies = []
    by_second: dict[int, list[float]] = {}
    start = min(result.due_times.values(), default=0.0)
    for i, due in result.due_times.items():
        for n in range(i * events_per_request, (i + 1) * events_per_request):
            if f"e2e-{n}" in arrivals:
                latencies.append(arrivals[f"e2e-{n}"] - due)
                by_second.setdefault(int(due - start), []).append(latencies[-1])
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    detail = {
        "offered_events_per_second": rate,
        "appendfsync": server_fsync,
        # Latency is from each request's due time on the schedule; how far the sends fell behind it:
        "latency_from": "schedule",
        "generator_lateness": msgspec.to_builtins(result.lateness) if result.lateness else None,
        "events_per_request": events_per_request,
        "achieved_events_per_second": round(len(accepted) / result.seconds, 1),
        "accepted": len(accepted),
        "statuses": result.statuses,
        "webhook_received": len(accepted & arrivals.keys()),
        "file_received": len(accepted & in_file),
        "lost": len(accepted - arrivals.keys()) + len(accepted - in_file),
        "duplicates": hook_duplicates + file_duplicates,
        "p50_ms": round(p50 * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        # p99 of the events due in each second of the run: shows warm-up and stalls.
        "p99_ms_by_second": [round(_percentile(by_second[k], 0.99) * 1000) for k in sorted(by_second)],
    }
    return Measurement(round(p99 * 1000, 1), 500.0, round(p99 * 1000 / 500.0, 3), "ms (p99)", detail)


