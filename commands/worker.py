"""`trackpipe worker`: one RQ worker process over the chosen queues, with the retry scheduler.

A worker serves one shard (`--shard NAME`, or the only one). With several shards and no `--shard`,
the command supervises one worker process per shard instead (`trackpipe worker --shard NAME` each):
RQ's worker owns its process (signals, the scheduler it forks, one connection), so a process per
shard is simpler and safer than one process juggling several servers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from trackpipe.config import Config, load_from
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

    from trackpipe.jobs import load_job_functions
    from trackpipe.shards import shards
    from workers.runner import (
        QueueNameError,
        ShardNameError,
        WorkerNameError,
        build_worker,
        check_worker_name,
        parse_queues,
        shard_config,
    )

    try:
        queues = parse_queues(args.queues, config)
        check_worker_name(args.name)
        if args.shard is None and len(shards(config)) > 1:
            setup_logging()
            return supervise_shards(args, config)
        config = shard_config(config, args.shard)
    except (QueueNameError, WorkerNameError, ShardNameError) as exc:
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
    # The job functions' imports before Redis is waited for: done after, they would lengthen the
    # start-up between Redis answering and the work loop (which rides out outages), where an outage
    # still stops the worker (build_worker finds them loaded).
    load_job_functions()
    connection = sync_client(config.redis_url, **REDIS_WORKER_TIMEOUTS)
    if not wait_for_redis(connection):
        return 0  # stopped on request before Redis came: nothing was taken
    from trackpipe.replication import check_primary

    # edge.min_replicas on a primary without AOF: no job could ever settle; say so now.
    problem = check_primary(connection, config.edge.min_replicas)
    if problem:
        print(f"trackpipe worker: {problem}", file=sys.stderr)
        return 2
    worker = build_worker(config, connection, queues, name=args.name)
    on_shard = f" of shard {args.shard}" if args.shard else ""
    log.info("worker %s on queues %s%s", worker.name, ", ".join(queues), on_shard)
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


# A shard's worker process that dies is started again after this long, doubling up to the cap (a
# process that keeps dying must not spin); one that ran this long counts as healthy again.
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0
# A warm shutdown waits for the job in hand (a delivery's timeout at most); then the rest is killed.
STOP_SECONDS = 60.0


def shard_worker_command(args: argparse.Namespace, shard: str, index: int) -> list[str]:
    """`trackpipe worker --shard <shard>` with this command's other options."""
    command = [sys.executable, "-m", "commands", "worker", "--shard", shard]
    if args.config is not None:
        command += ["--config", os.path.abspath(args.config)]
    if args.queues is not None:
        command += ["--queues", args.queues]
    if args.name is not None:
        command += ["--name", args.name]  # names need only be unique on one shard's server
    if args.metrics_port is not None:
        command += ["--metrics-port", str(args.metrics_port + index)]
    if args.metrics_host is not None:
        command += ["--metrics-host", args.metrics_host]
    command += [flag for flag, on in (("--burst", args.burst), ("--no-scheduler", args.no_scheduler)) if on]
    command += ["--verbose"] if args.verbose else []
    return command


class ShardProcess:
    def __init__(self, shard: str, command: list[str]) -> None:
        self.shard = shard
        self.command = command
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.delay = RESTART_DELAY_SECONDS
        self.restart_at: float | None = None
        self.finished = False  # --burst: ended with nothing left to do

    def start(self) -> None:
        from workers.scheduler import die_with_parent

        # Its own session: a terminal's Ctrl-C reaches the supervisor, which stops it warmly; and it
        # ends (SIGTERM) if the supervisor is killed.
        self.process = subprocess.Popen(self.command, preexec_fn=die_with_parent, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("worker of shard %s started, pid %d", self.shard, self.process.pid)


def supervise_shards(args: argparse.Namespace, config: Config) -> int:
    """One worker process per shard; a process that dies is started again; SIGTERM or SIGINT stops
    them all (each a warm shutdown). With --burst, ends once every shard's worker has."""
    from trackpipe.shards import shards

    children = [
        ShardProcess(shard.name, shard_worker_command(args, shard.name, i)) for i, shard in enumerate(shards(config))
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for child in children:
            child.start()
        while not stopping and not all(child.finished for child in children):
            now = time.monotonic()
            for child in children:
                if child.finished or child.process is None:
                    continue
                code = child.process.poll()
                if code is None:
                    if now - child.started > HEALTHY_AFTER_SECONDS:
                        child.delay = RESTART_DELAY_SECONDS
                    continue
                if code == 0 and args.burst:
                    child.finished = True
                    continue
                if code == 2:  # a usage or config problem (said on stderr): starting again will not help
                    log.error("worker of shard %s exited with status 2; stopping the others", child.shard)
                    status = 2
                    stopping = True
                    break
                if child.restart_at is None:
                    log.warning(
                        "worker of shard %s (pid %d) ended with status %s; starting it again in %.0f s",
                        child.shard,
                        child.process.pid,
                        code,
                        child.delay,
                    )
                    child.restart_at = now + child.delay
                    child.delay = min(child.delay * 2, RESTART_DELAY_MAX_SECONDS)
                elif now >= child.restart_at:
                    child.start()
            time.sleep(0.2)
    finally:
        stop_children([c.process for c in children if c.process is not None])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def stop_children(processes: list[subprocess.Popen]) -> None:
    """SIGTERM (a warm shutdown) to each, then wait; a process still running after STOP_SECONDS is
    killed with its process group (it holds the scheduler the worker forked)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop within %.0f s; killing it", process.pid, STOP_SECONDS)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
