"""`trackpipe bench deliver`: the CPU a delivery worker spends per event, by destination.

Ingest jobs (not measured) fan events out to a webhook (the `tooling.benchsink` receiver, in its own
process) and a `file` destination, leaving delivery jobs of up to 2,000 events on each destination's
queue. Then one RQ worker per destination drains its queue in this process, as `trackpipe worker`
would: the figure is this process's CPU (user + system) over that drain, per event, with RQ's
bookkeeping, the HTTP client and the file's write and fsync included; the server's CPU over the
same drain (`INFO cpu`) is reported next to it. Every event must reach both destinations once.

`python -m tooling.benchdeliver --compare ROOT` also runs the same measurement with the code at
ROOT (another checkout, on PYTHONPATH; this module is copied into it), the two sides taking turns,
so that a change to the delivery path is measured against the code before it in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from tooling.bench import BENCH_CONFIG, Measurement, _enqueue_jobs, bench_server, event_bytes
from tooling.harness import file_ids, free_port, wait_http
from trackpipe.config import parse
from trackpipe.keys import KeyLayout, deliver_queue

DELIVER_CONFIG = (
    BENCH_CONFIG
    + """[[destinations]]
id = "bench-hook"
type = "webhook"
url = "{hook_url}"
"""
)
DESTINATIONS = ("bench-hook", "bench-file")


def _server_cpu(connection: Any) -> float:
    info = connection.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _delivered(connection: Any, layout: KeyLayout, destination_id: str) -> int:
    hour = time.time_ns() // 3_600_000_000_000
    keys = [layout.destination_hour_stats(destination_id, h) for h in (hour - 1, hour)]
    return sum(int(connection.hget(k, "delivered") or 0) for k in keys)


def measure_once(events: int, per_job: int, hook_url: str) -> dict[str, Any]:
    """One side: µs of worker CPU (and server CPU) per event, for each destination."""
    from rq import Queue

    from workers.runner import build_worker

    with bench_server() as (connection, url, tmp):
        out_dir = tmp / "out"
        config = parse(DELIVER_CONFIG.format(redis_url=url, out_dir=out_dir, hook_url=hook_url))
        layout = KeyLayout(config.key_prefix)
        _enqueue_jobs(connection, config, event_bytes(events, "deliver"), per_job)
        build_worker(config, connection, ["ingest"]).work(burst=True, logging_level="WARNING")
        result: dict[str, Any] = {}
        for dest in DESTINATIONS:
            queue = deliver_queue(dest)
            jobs = Queue(queue, connection=connection).count
            worker = build_worker(config, connection, [queue])
            server_before = _server_cpu(connection)
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            worker.work(burst=True, logging_level="WARNING")
            cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
            server = _server_cpu(connection) - server_before
            delivered = _delivered(connection, layout, dest)
            if delivered != events:
                raise RuntimeError(f"bench deliver: {events} events but {delivered} delivered to {dest}")
            result[dest] = {
                "jobs": jobs,
                "worker_us_per_event": round(cpu / events * 1e6, 2),
                "server_us_per_event": round(server / events * 1e6, 2),
                "events_per_second": round(events / wall),
            }
        ids = file_ids(out_dir)
        if len(ids) != events or sum(ids.values()) != events:
            lines = sum(ids.values())
            raise RuntimeError(f"bench deliver: {events} events but {len(ids)} ids, {lines} lines in the file")
        return result


class _Sink:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(os.environ.get("TMPDIR", "/tmp"))
        self.out = self.dir / f"trackpipe-benchsink-{os.getpid()}-{self.port}.txt"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tooling.benchsink", "--port", str(self.port), "--out", str(self.out)],
            cwd=Path(__file__).resolve().parent.parent,
        )
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.out.unlink(missing_ok=True)


def _side(root: Path, events: int, per_job: int, hook_url: str) -> dict[str, Any]:
    """One measurement in a fresh process with `root` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tooling.benchdeliver",
            "--side",
            "--events",
            str(events),
            "--job-events",
            str(per_job),
            "--hook-url",
            hook_url,
        ],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    return msgspec.json.decode(out.stdout.splitlines()[-1])


def _mean(rounds: list[dict[str, Any]], dest: str, key: str) -> float:
    return round(sum(r[dest][key] for r in rounds) / len(rounds), 2)


def bench_deliver(
    events: int = 20_000, per_job: int = 2_000, rounds: int = 2, compare: Path | None = None
) -> Measurement:
    """µs of delivery-worker CPU per event, webhook + file; with `compare`, the same at that checkout
    (the baseline), rounds alternating. Without it the baseline is the current code's first round."""
    here = Path(__file__).resolve().parent.parent
    sink = _Sink()
    try:
        copy = compare / "tooling" / "benchdeliver.py" if compare is not None else None
        if copy is not None and not (copy.exists() and copy.samefile(__file__)):
            shutil.copy(Path(__file__), copy)
        new: list[dict[str, Any]] = []
        old: list[dict[str, Any]] = []
        for i in range(rounds):
            sides = [("new", here, new), ("old", compare, old)] if compare else [("new", here, new)]
            for _, root, into in sides if i % 2 == 0 else sides[::-1]:
                # Compared: both sides in fresh processes alike; alone: in this process.
                if compare:
                    into.append(_side(root, events, per_job, sink.url))
                else:
                    into.append(measure_once(events, per_job, sink.url))
    finally:
        sink.close()
    detail: dict[str, Any] = {"events": events, "job_events": per_job, "rounds": rounds, "new": new}
    value = sum(_mean(new, d, "worker_us_per_event") for d in DESTINATIONS)
    for dest in DESTINATIONS:
        detail[f"{dest}_worker_us"] = _mean(new, dest, "worker_us_per_event")
        detail[f"{dest}_server_us"] = _mean(new, dest, "server_us_per_event")
    if old:
        detail["old"] = old
        baseline = sum(_mean(old, d, "worker_us_per_event") for d in DESTINATIONS)
        for dest in DESTINATIONS:
            detail[f"{dest}_worker_us_before"] = _mean(old, dest, "worker_us_per_event")
            detail[f"{dest}_server_us_before"] = _mean(old, dest, "server_us_per_event")
    else:
        baseline = value
    return Measurement(round(value, 2), round(baseline, 2), round(value / baseline, 3), "µs/event", detail)


def main() -> None:
    parser = argparse.ArgumentParser(description="delivery worker CPU per event")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--job-events", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hook-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(msgspec.json.encode(measure_once(args.events, args.job_events, args.hook_url)).decode())
        return
    m = bench_deliver(args.events, args.job_events, args.rounds, args.compare)
    print(msgspec.json.encode(m).decode())


if __name__ == "__main__":
    main()
