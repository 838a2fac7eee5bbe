"""`trackpipe status`: queues, lag, workers, retries, dead letters and delivery rates at a glance;
events per source (duplicates among them: a producer that reuses event ids shows here) and the
requests refused for their key, per site, with the latest few.

The figures come from trackpipe.queries (shared with the queue metrics); this module renders them."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from trackpipe.config import load_from
from trackpipe.connection import sync_client
from trackpipe.logs import masked_url
from trackpipe.queries import RefusedSample, Status

# Of a refused request's body, this much is shown on its line (the JSON form has the sampled 2 KB).
BODY_CHARS = 80


def _sample_line(sample: RefusedSample) -> str:
    at = datetime.fromtimestamp(sample.received_at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # One line of printable text, whatever the producer sent (no terminal escapes get through).
    body = "".join(c if c.isprintable() else "\ufffd" for c in " ".join(sample.body.split()))
    if len(body) > BODY_CHARS:
        body = body[: BODY_CHARS - 1] + "…"
    return f"  {at}  {sample.reason:<13} {sample.route:<14} {sample.body_bytes:>7} B  {body}"


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
    if status.sources:
        lines.append("")
        lines.append(f"{'source':<24} {'processed':>10} {'duplicates':>10} {'dup %':>6}  by status")
        for src in status.sources:
            share = f"{100 * src.duplicates / src.processed:.1f}" if src.processed else "-"
            counts = ", ".join(f"{k} {v}" for k, v in src.by_status.items()) or "none yet"
            lines.append(f"{src.id:<24} {src.processed:>10} {src.duplicates:>10} {share:>6}  {counts}")
    if status.refused:
        lines.append("")
        lines.append("refused for their key (missing or unknown key; never stored), per site:")
        for site in status.refused:
            reasons = ", ".join(f"{k} {v}" for k, v in site.by_reason.items())
            lines.append(f"site {site.site_id!r}: {site.total} ({reasons})")
            lines.extend(_sample_line(sample) for sample in site.latest)
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    config = load_from(args.config)
    import msgspec
    from redis.exceptions import RedisError

    from commands.status import render
    from trackpipe.queries import collect

    try:
        with sync_client(config.redis_url, socket_connect_timeout=3, socket_timeout=10) as connection:
            status = collect(config, connection, per_source=True)
    except RedisError as exc:
        print(f"trackpipe status: cannot read {masked_url(config.redis_url)}: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(status).decode() if args.json else render(status))
    return 0
