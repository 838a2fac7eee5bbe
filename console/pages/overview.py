"""The overview (`/`): every queue (waiting, lag of the oldest waiting job, running, scheduled retries,
failed, workers), every destination's last hour and DLQ size, and the health of workers and edge. The
live part refreshes itself every few seconds (`/overview/live`).

Workers: those in RQ's registry, each with its queues, state, last heartbeat and whether its lease
(`P:lease:<worker>`, renewed by the worker's keeper thread) is alive; a worker without a live lease is
dead, and its claimed jobs go back on their queues.

Edges: they are stateless, often several behind a load balancer, and leave nothing in Redis the
console could list, so the console does not probe them. It shows what decides their answers instead:
Redis answering (all an edge's `/readyz` checks: the console reads the same server) and the ingest
backlog against `edge.max_backlog` (above it every edge answers 503 with `Retry-After`). Probe each
edge's `/readyz` from the load balancer for the processes themselves.

Several shards: the queues and destinations are their union, workers are listed per shard, and a
table shows each shard (reachable or not, its backlog, its sources); an unreachable shard is named
there and left out of the figures, not a 503.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.web import Endpoint, console_of, page, render, run_blocking
from trackpipe.keys import HISTORY_FIELDS

# trackpipe.queries and rq read RQ's key prefix once, at import: imported where used.

NAV = ("Overview", "/")
REFRESH_SECONDS = 5


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Redis down answers a 503 page naming it (the fragment keeps its last content, marked stale)."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (OSError, RedisError) as exc:
            return render(
                request, "error.html", status_code=503, status=503, detail=f"storage unavailable: {type(exc).__name__}"
            )

    return run


def _workers(console: Any, now: float, redis: Any = None, shard: str | None = None) -> list[dict[str, Any]]:
    from rq import Worker

    redis = console.redis if redis is None else redis
    found = sorted(Worker.all(connection=redis), key=lambda w: w.name)
    pipe = redis.pipeline(transaction=False)
    for worker in found:
        pipe.exists(console.layout.lease(worker.name))
    leases = pipe.execute() if found else []
    rows = []
    for worker, lease in zip(found, leases, strict=True):
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        rows.append(
            {
                "name": worker.name,
                "queues": ", ".join(worker.queue_names()),
                "state": str(worker.get_state()),
                "heartbeat_age": None if beat is None else max(0.0, now - beat.timestamp()),
                "alive": bool(lease),
                "shard": shard,
            }
        )
    return rows


def _view(request: Request) -> dict[str, Any]:
    from trackpipe.queries import collect_union, combine_by_destination, last_hour_by_destination

    console = console_of(request)
    config = console.config
    now = time.time()
    status = collect_union(config, console.sharded, now, errors=(OSError, RedisError))
    reachable = {s.name for s in status.shards if s.reachable} if status.shards else set(console.sharded.names)
    ids = [d.id for d in config.destinations]
    last_hour = combine_by_destination(
        [last_hour_by_destination(c.redis, console.layout, ids, now) for c in console.sharded if c.name in reachable]
    )
    empty = dict.fromkeys([*HISTORY_FIELDS, "dlq"], 0)
    ingest = next((q for q in status.queues if q.name == "ingest"), None)
    several = len(console.sharded) > 1
    workers = [
        w
        for c in console.sharded
        if c.name in reachable
        for w in _workers(console, now, c.redis, c.name if several else None)
    ]
    # An edge refuses a source's events when the backlog of that source's shard is full: with several
    # shards the fullest one is shown (its sources are the ones refused).
    backlogs = [q.depth for sh in status.shards if sh.reachable for q in sh.queues if q.name == "ingest"]
    backlog = max(backlogs, default=0) if status.shards else (ingest.depth if ingest else 0)
    return {
        "shards": status.shards,
        "queues": status.queues,
        "destinations": [{"id": d.id, **last_hour.get(d.id, empty)} for d in config.destinations],
        "workers": workers,
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "edge": {
            "backlog": backlog,
            "max_backlog": config.edge.max_backlog,
            "accepting": backlog < config.edge.max_backlog,
            "lag": ingest.lag_seconds if ingest else None,
        },
        "updated_at": int(now * 1000),
        "refresh_seconds": REFRESH_SECONDS,
    }


@_guarded
async def overview(request: Request) -> Response:
    return render(request, "overview.html", **await run_blocking(_view, request))


@_guarded
async def overview_fragment(request: Request) -> Response:
    return render(request, "overview_live.html", **await run_blocking(_view, request))


ROUTES = [
    Route("/", page(overview)),
    Route("/overview/live", page(overview_fragment)),
]
