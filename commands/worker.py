"""`trackpipe worker`: one RQ worker process over the chosen queues, with the retry scheduler."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import TYPE_CHECKING

from trackpipe.config import load_from
from trackpipe.connection import sync_client
from trackpipe.logs import setup_logging

if TYPE_CHECKING:
    from redis import Redis


log = logging.getLogger("trackpipe")
# No read timeout (RQ's pub/sub thread shares the settings and waits long), but a bounded connect.
REDIS_WORKER_TIMEOUTS = {"socket_connect_timeout": 5.0, "health_check_interval": 30}


def run_worker(args: argparse.Namespace) -> int:
    """`trackpipe worker`: one RQ worker process over the chosen queues, with the scheduler."""
    config = load_from(args.config)

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
    connection = sync_client(config.redis_url, **REDIS_WORKER_TIMEOUTS)
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

    from workers.claims import is_outage, reconnect_delay

    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    attempt = 0
    try:
        while not stopped:
            try:
                connection.ping()
                return True
            except RedisError as exc:
                if not is_outage(exc):
                    raise
                log.warning("worker: waiting for Redis: %s", exc)
                time.sleep(reconnect_delay(attempt))
                attempt += 1
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
