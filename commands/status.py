"""`trackpipe status`: queues, lag, workers, retries, dead letters and delivery rates at a glance;
events per source (duplicates among them: a producer that reuses event ids shows here) and the
requests refused for their key, per site, with the latest few.

The figures come from trackpipe.queries (shared with the queue metrics); this module renders them."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from trackpipe.config import Config, load_from
from trackpipe.logs import masked_url
from trackpipe.queries import RefusedSample, Status

if TYPE_CHECKING:
    from trackpipe.sharded import Sharded

# Of a refused request's body, this much is shown on its line (the JSON form has the sampled 2 KB).
BODY_CHARS = 80


def _sample_line(sample: RefusedSample) -> str:
    at = datetime.fromtimestamp(sample.received_at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # One line of printable text, whatever the producer sent (no terminal escapes get through).
    body = "".join(c if c.isprintable() else "\ufffd" for c in " ".join(sample.body.split()))
    if len(body) > BODY_CHARS:
        body = body[: BODY_CHARS - 1] + "…"
    return f"  {at}  {sample.reason:<13} {sample.route:<14} {sample.body_bytes:>7} B  {body}"


def _queue_row(cells: tuple[object, ...]) -> str:
    name, *figures = cells
    widths = (8, 9, 6, 8, 8, 7, 8)
    return f"{name!s:<32} " + " ".join(f"{value!s:>{width}}" for value, width in zip(figures, widths, strict=True))


def render(status: Status) -> str:
    """The status as a table for a terminal (pure)."""
    head = ("queue", "waiting", "lag", "taken", "running", "retries", "failed", "workers")
    lines = [_queue_row(head)]
    for q in status.queues:
        lag = "-" if q.lag_seconds is None else f"{q.lag_seconds:.1f}s"
        lines.append(_queue_row((q.name, q.depth, lag, q.taken, q.running, q.scheduled, q.failed, q.workers)))
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


def render_shards(status: Status) -> str:
    """The per-shard section (several shards only): what each holds and whether it answered."""
    lines = [f"{'shard':<16} {'state':<12} {'waiting':>8} {'retries':>8} {'running':>8} {'workers':>8}  sources / url"]
    for shard in status.shards:
        if not shard.reachable:
            lines.append(f"{shard.name:<16} {'UNREACHABLE':<12} {'-':>8} {'-':>8} {'-':>8} {'-':>8}  {shard.url}")
            lines.append(f"  {shard.error}")
            continue
        held = ", ".join(shard.sources) or "no source"
        lines.append(
            f"{shard.name:<16} {'ok':<12} {shard.waiting:>8} {shard.scheduled:>8} {shard.running:>8} "
            f"{shard.workers:>8}  {held}  ({shard.url})"
        )
    return "\n".join(lines)


def render_source(source_id: str, assigned: str, waiting: list[tuple[str, int | None]]) -> str:
    """`status --source`: where the source's events go, and its events still waiting per shard."""
    lines = [
        f"source {source_id!r}: new events go to shard {assigned!r}",
        f"{'shard':<16} {'ingest events waiting':>22}",
    ]
    for name, count in waiting:
        lines.append(f"{name:<16} {'unreachable' if count is None else count:>22}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    import msgspec
    from redis.exceptions import RedisError

    from commands.status import render
    from trackpipe.queries import collect_union
    from trackpipe.sharded import connect

    config = load_from(args.config)
    shard_name = getattr(args, "shard", None)
    source_id = getattr(args, "source", None)
    sharded = connect(config, socket_connect_timeout=3, socket_timeout=10)
    try:
        try:
            chosen = sharded.only(shard_name)
        except KeyError as exc:
            print(f"trackpipe status: --shard: {exc.args[0]}", file=sys.stderr)
            return 2
        if source_id is not None:
            return _source_status(config, chosen, source_id)
        try:
            status = collect_union(config, chosen, per_source=True, errors=(RedisError, OSError))
        except RedisError as exc:  # one shard: as before
            print(f"trackpipe status: cannot read {masked_url(config.redis_url)}: {exc}", file=sys.stderr)
            return 1
        down = [s for s in status.shards if not s.reachable]
        if status.shards and len(down) == len(status.shards):
            for shard in down:
                print(
                    f"trackpipe status: shard {shard.name!r} ({shard.url}) unreachable: {shard.error}", file=sys.stderr
                )
            return 1
        if args.json:
            print(msgspec.json.encode(status).decode())
        else:
            print(render(status))
            if status.shards:
                print()
                print(render_shards(status))
        for shard in down:
            print(
                f"trackpipe status: shard {shard.name!r} unreachable; the figures above leave it out", file=sys.stderr
            )
        # Some shard unreachable: what could be read is printed, and the exit status says it is partial.
        return 1 if down else 0
    finally:
        sharded.close()


def _source_status(config: Config, sharded: Sharded, source_id: str) -> int:
    from redis.exceptions import RedisError

    from trackpipe.keys import KeyLayout
    from trackpipe.queries import source_waiting
    from trackpipe.shards import shard_name_of

    if source_id not in {s.id for s in config.sources}:
        known = ", ".join(s.id for s in config.sources) or "none"
        print(f"trackpipe status: --source: no source {source_id!r} (sources: {known})", file=sys.stderr)
        return 2
    layout = KeyLayout(config.key_prefix)
    waiting: list[tuple[str, int | None]] = []
    for client in sharded:
        try:
            waiting.append((client.name, source_waiting(client.redis, layout, source_id)))
        except (RedisError, OSError):
            waiting.append((client.name, None))
    print(render_source(source_id, shard_name_of(config, source_id), waiting))
    return 1 if any(count is None for _, count in waiting) else 0
