"""`trackpipe edge`: the HTTP edge under uvicorn, one process or several."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import uvicorn

from commands.serving import serve
from ingest.protocol import UVICORN_SETTINGS
from trackpipe.config import CONFIG_ENV, Config, ConfigError, config_path, load_from
from trackpipe.logs import setup_logging

log = logging.getLogger("trackpipe")


def edge_server_config(config: Config, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    from ingest.app import create_app
    from ingest.protocol import header_timeout_protocol

    # log_config=None: uvicorn logs through the JSON handler set up by trackpipe.logs.
    # http: httptools with a deadline for request headers (uvicorn has none; see ingest/protocol.py).
    return uvicorn.Config(
        create_app(config),
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        limit_concurrency=config.edge.max_connections,
        **{**UVICORN_SETTINGS, "http": header_timeout_protocol(config.edge.header_timeout_seconds)},
    )


def aof_problems(config: Config) -> list[str]:
    """edge.min_replicas on a shard whose primary has no AOF: every write there would get 503, so
    the edge refuses to start. A shard not reachable now is not judged (the edge waits for it)."""
    from redis.exceptions import RedisError

    from trackpipe.connection import sync_client
    from trackpipe.replication import check_primary
    from trackpipe.shards import shards

    if config.edge.min_replicas <= 0:
        return []
    problems = []
    for shard in shards(config):
        try:
            with sync_client(shard.redis_url, socket_connect_timeout=2, socket_timeout=5) as client:
                problem = check_primary(client, config.edge.min_replicas)
        except RedisError as exc:
            log.warning("shard %s not reachable at start, its AOF not checked: %s", shard.name, exc)
            continue
        if problem:
            problems.append(problem if len(shards(config)) == 1 else f"shard {shard.name}: {problem}")
    return problems


def run_edge(config_arg: str | None, *, host: str, port: int, workers: int) -> int:
    config = load_from(config_arg)
    path = config_path(config_arg)
    assert path is not None  # load_from just read it (--config or TRACKPIPE_CONFIG)
    setup_logging()
    problems = aof_problems(config)
    if problems:
        for problem in problems:
            print(f"trackpipe edge: {problem}", file=sys.stderr)
        return 2
    if workers == 1:
        server_config = edge_server_config(config, host, port)
        edge = server_config.app.edge

        def reload() -> None:
            # SIGHUP: re-read the sources (keys) without a restart; a bad file changes nothing.
            try:
                edge.reload(load_from(str(path)))
            except ConfigError as exc:
                log.error("SIGHUP: config not reloaded, keeping the running one: %s", exc)

        serve(server_config, on_hangup=reload)
        return 0
    # Several processes: each loads the config itself; metrics are summed across them.
    os.environ[CONFIG_ENV] = str(Path(path).resolve())
    metrics_dir = tempfile.mkdtemp(prefix="trackpipe-metrics-")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
    from ingest.protocol import header_timeout_protocol

    uvicorn.run(
        "ingest.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=None,
        limit_concurrency=config.edge.max_connections,
        # The protocol factory is pickled into each process, with this config's header timeout.
        **{**UVICORN_SETTINGS, "http": header_timeout_protocol(config.edge.header_timeout_seconds)},
    )
    return 0


def run_edge_command(args: argparse.Namespace) -> int:
    return run_edge(args.config, host=args.host, port=args.port, workers=args.workers)
