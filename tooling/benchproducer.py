"""The producer of `trackpipe bench client`: tracks N events through `trackpipe.client` as fast as
track() takes them, in a process of its own so its CPU is counted apart from the bench's.

    python -m tooling.benchproducer --url http://127.0.0.1:8080 --site 1 --events 200000 [--asyncio]

The source key comes from the TRACKPIPE_BENCH_KEY environment variable (never an argument, which
`ps` shows). Prints one JSON object (ProducerFigures) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import msgspec

from tooling.examples import V2_EXAMPLE
from trackpipe.client import AsyncClient, Client, ClientStats

EVENT_BYTES = 500  # about the size of `bench batch`'s events, so both sides carry the same bytes


class ProducerFigures(msgspec.Struct):
    client: str  # "Client" or "AsyncClient"
    events: int  # track() calls
    seconds: float  # first track() to the last acknowledgement
    cpu_seconds: float  # this process (every thread) over the same span
    stats: ClientStats
    # Client only: the calling thread's CPU (the track() calls); the rest is the sender thread's.
    track_cpu_seconds: float | None = None


def event_parts(size: int = EVENT_BYTES) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(name, properties, user, context) of a purchase event about `size` bytes as the client sends it."""
    properties = {k: v for k, v in V2_EXAMPLE.items() if k not in ("event_name", "user", "context")}
    user = dict(V2_EXAMPLE["user"])
    context = {k: v for k, v in V2_EXAMPLE["context"].items() if k not in ("event_id", "event_timestamp")}
    # The id (a UUID) and the timestamp are added by track(); count them in the size.
    sample = {
        "event_name": V2_EXAMPLE["event_name"],
        **properties,
        "note": "",
        "user": user,
        "context": {**context, "event_id": "0" * 36, "event_timestamp": 1700000000000},
    }
    properties["note"] = "x" * max(size - len(msgspec.json.encode(sample)), 0)
    return V2_EXAMPLE["event_name"], properties, user, context


def run_sync(url: str, site: str, key: str, events: int) -> ProducerFigures:
    name, properties, user, context = event_parts()
    client = Client(url, site, key)
    try:
        started, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
        for _ in range(events):
            client.track(name, properties, user=user, context=context)
        track_cpu = time.thread_time() - own
        done = client.flush(timeout=120)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    finally:
        client.close()
    if not done:
        raise RuntimeError("the client did not get an answer for every batch within 120 s")
    return ProducerFigures("Client", events, seconds, cpu_seconds, client.stats, track_cpu)


async def run_async(url: str, site: str, key: str, events: int) -> ProducerFigures:
    name, properties, user, context = event_parts()
    async with AsyncClient(url, site, key) as client:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(events):
            await client.track(name, properties, user=user, context=context)
        done = await client.flush(timeout=120)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    if not done:
        raise RuntimeError("the client did not get an answer for every batch within 120 s")
    return ProducerFigures("AsyncClient", events, seconds, cpu_seconds, client.stats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.benchproducer")
    parser.add_argument("--url", required=True, help="the edge's base URL")
    parser.add_argument("--site", required=True, help="the site id (tc_s)")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--asyncio", action="store_true", help="AsyncClient instead of Client")
    args = parser.parse_args(argv)
    key = os.environ.get("TRACKPIPE_BENCH_KEY", "")
    if not key:
        parser.error("TRACKPIPE_BENCH_KEY (the source key) is not set")
    if args.events < 1:
        parser.error(f"--events must be at least 1, got {args.events}")
    if args.asyncio:
        figures = asyncio.run(run_async(args.url, args.site, key, args.events))
    else:
        figures = run_sync(args.url, args.site, key, args.events)
    sys.stdout.write(msgspec.json.encode(figures).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
