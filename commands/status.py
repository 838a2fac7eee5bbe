"""`trackpipe status`: queues, lag, workers, retries, dead letters and delivery rates at a glance.

The figures come from trackpipe.queries (shared with the queue metrics); this module renders them."""

from __future__ import annotations

import argparse
import sys

from trackpipe.config import load_from
from trackpipe.queries import Status


def render(status: Status) -> str:
    """The status as a table for a terminal (pure)."""
    lines = [f"{'queue':<32} {'waiting':>8} {'lag':>9} {'running':>8} {'retries':>8} {'failed':>7} {'workers':>8}"]
    for q in status.queues:
        lag = "-" if q.lag_seconds is None else f"{q.lag_seconds:.1f}s"
        lines.append(f"{q.name:<32} {q.depth:>8} {lag:>9} {q.running:>8} {q.scheduled:>8} {q.failed:>7} {q.workers:>8}")
    if status.destinations:
        lines.append("")
        lines.append(f"{'destination':<24} {'dlq':>7} {'dropped':>8}  this minute | last minute")
        for d in status.destinations:
            now = ", ".join(f"{k} {v}" for k, v in d.this_minute.items()) or "idle"
            last = ", ".join(f"{k} {v}" for k, v in d.last_minute.items()) or "idle"
            lines.append(f"{d.id:<24} {d.dlq:>7} {d.dlq_dropped:>8}  {now} | {last}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    config = load_from(args.config)
    import msgspec
    from redis import Redis
    from redis.exceptions import RedisError

    from commands.status import render
    from trackpipe.queries import collect

    try:
        with Redis.from_url(config.redis_url, socket_connect_timeout=3, socket_timeout=10) as connection:
            status = collect(config, connection)
    except RedisError as exc:
        print(f"trackpipe status: cannot read {config.redis_url}: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(status).decode() if args.json else render(status))
    return 0
