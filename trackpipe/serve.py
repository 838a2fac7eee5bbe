"""Running the edge under uvicorn, one process or several."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from trackpipe.config import CONFIG_ENV, Config, ConfigError, config_path, load_from
from trackpipe.keys import bind_rq_prefix
from trackpipe.logs import setup_logging

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("trackpipe")
# No read timeout (RQ's pub/sub thread shares the settings and waits long), but a bounded connect.
REDIS_WORKER_TIMEOUTS = {"socket_connect_timeout": 5.0, "health_check_interval": 30}

# uvicorn settings of the edge (see README, "Operating the edge").
UVICORN_SETTINGS = {
    "loop": "uvloop",
    "http": "httptools",  # the edge itself uses ingest.protocol's subclass (edge_server_config, run_edge)
    "lifespan": "on",
    "timeout_keep_alive": 5,
    "backlog": 2048,
    "access_log": False,
    "timeout_graceful_shutdown": 30,
}


class _Stopped(Exception):
    pass


def serve(config: uvicorn.Config, on_hangup: Callable[[], None] | None = None) -> None:
    """Run uvicorn until SIGINT or SIGTERM (or SIGHUP without `on_hangup`), then return normally so
    callers can clean up. With `on_hangup`, SIGHUP calls it instead (config reload).

    uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal against the handlers
    that were in place before it started: ours turn that into a normal return instead of a
    KeyboardInterrupt traceback or an abrupt death that would skip `finally` blocks.
    """
    server = uvicorn.Server(config)

    def stopped(signum: int, frame: object) -> None:
        raise _Stopped()

    def hangup(signum: int, frame: object) -> None:
        if on_hangup is None:
            server.should_exit = True
        else:
            on_hangup()

    handled = {signal.SIGINT: stopped, signal.SIGTERM: stopped, signal.SIGHUP: hangup}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handled.items()}
    try:
        server.run()
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def edge_server_config(config: Config, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    bind_rq_prefix(config.key_prefix)
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


def run_worker(args: argparse.Namespace) -> int:
    """`trackpipe worker`: one RQ worker process over the chosen queues, with the scheduler."""
    config = load_from(args.config)
    bind_rq_prefix(config.key_prefix)
    from redis import Redis

    from workers.runner import QueueNameError, WorkerNameError, build_worker, check_worker_name, parse_queues

    try:
        queues = parse_queues(args.queues, config)
        check_worker_name(args.name)
    except (QueueNameError, WorkerNameError) as exc:
        print(f"trackpipe worker: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    if args.metrics_port is not None:
        from prometheus_client import REGISTRY, start_http_server

        from workers.queue_metrics import QueueCollector

        REGISTRY.register(QueueCollector(config, config.redis_url))

        try:
            start_http_server(args.metrics_port, addr="127.0.0.1" if args.metrics_host is None else args.metrics_host)
        except OSError as exc:
            print(f"trackpipe worker: --metrics-port {args.metrics_port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    connection = Redis.from_url(config.redis_url, **REDIS_WORKER_TIMEOUTS)
    if not wait_for_redis(connection):
        return 0  # stopped on request before Redis came: nothing was taken
    worker = build_worker(config, connection, queues, name=args.name)
    log.info("worker %s on queues %s", worker.name, ", ".join(queues))
    try:
        worker.work(
            burst=args.burst,
            with_scheduler=not args.no_scheduler,
            logging_level="INFO" if args.verbose else "WARNING",
        )
    except WorkerNameError as exc:
        print(f"trackpipe worker: {exc}", file=sys.stderr)
        return 2
    return 0


def wait_for_redis(connection: Redis) -> bool:
    """A worker started while Redis is down (a server restart, a host reboot in any order) waits for
    it instead of exiting. False when stopped (SIGTERM/SIGINT) while waiting."""
    from redis.exceptions import RedisError

    from workers.claims import is_outage

    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    wait = 0.5
    try:
        while not stopped:
            try:
                connection.ping()
                return True
            except RedisError as exc:
                if not is_outage(exc):
                    raise
                log.warning("worker: waiting for Redis: %s", exc)
                time.sleep(wait)
                wait = min(wait * 2, 5.0)
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_status(args: argparse.Namespace) -> int:
    config = load_from(args.config)
    bind_rq_prefix(config.key_prefix)
    import msgspec
    from redis import Redis
    from redis.exceptions import RedisError

    from trackpipe.status import collect, render

    try:
        with Redis.from_url(config.redis_url, socket_connect_timeout=3, socket_timeout=10) as connection:
            status = collect(config, connection)
    except RedisError as exc:
        print(f"trackpipe status: cannot read {config.redis_url}: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(status).decode() if args.json else render(status))
    return 0


def run_edge(config_arg: str | None, *, host: str, port: int, workers: int) -> int:
    config = load_from(config_arg)
    setup_logging()
    if workers == 1:
        server_config = edge_server_config(config, host, port)
        path = config_path(config_arg)
        edge = server_config.app.edge

        def reload() -> None:
            # SIGHUP: re-read the sources (keys) without a restart; a bad file changes nothing.
            if path is None:
                log.warning("SIGHUP: no config file to reload (config came from the environment)")
                return
            try:
                edge.reload(load_from(str(path)))
            except ConfigError as exc:
                log.error("SIGHUP: config not reloaded, keeping the running one: %s", exc)

        serve(server_config, on_hangup=reload)
        return 0
    # Several processes: each loads the config itself; metrics are summed across them.
    bind_rq_prefix(config.key_prefix)
    path = config_path(config_arg)
    assert path is not None
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
