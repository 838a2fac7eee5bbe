"""The `trackpipe` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trackpipe import __version__
from trackpipe.config import ConfigError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0, 1 or 2)") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"{value}: dev runs 0, 1 or 2 replicas")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackpipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trackpipe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dev = commands.add_parser("dev", help="run everything on this machine (embedded server, edge, worker)")
    dev.add_argument("--config", help="config file (default: TRACKPIPE_CONFIG, else a demo config)")
    dev.add_argument("--data-dir", default=".trackpipe", help="where the server's data lives (default: %(default)s)")
    dev.add_argument("--host", default="127.0.0.1", help="edge address (default: %(default)s)")
    dev.add_argument("--port", type=_port, default=8080, help="edge port (default: %(default)s)")
    dev.add_argument("--console-port", type=_port, default=8081, help="console (admin API) port (default: %(default)s)")
    dev.add_argument(
        "--redis-port", type=_port, default=0, help="embedded server port (default: 6399, or a free one if taken)"
    )
    dev.add_argument(
        "--replicas",
        type=_replicas,
        default=0,
        help="also run this many replicas (1 or 2) and three sentinels, to try a failover (default: none)",
    )

    edge = commands.add_parser("edge", help="run the HTTP edge (uvicorn)")
    edge.add_argument("--config", help="config file (default: TRACKPIPE_CONFIG)")
    edge.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    edge.add_argument("--port", type=_port, default=8080, help="port (default: %(default)s)")
    edge.add_argument("--workers", type=_positive, default=1, help="edge processes (default: %(default)s)")

    console = commands.add_parser("console", help="run the admin API (inspector, delivery view, dead letters)")
    console.add_argument("--config", help="config file (default: TRACKPIPE_CONFIG)")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    console.add_argument("--port", type=_port, default=8081, help="port (default: %(default)s)")

    worker = commands.add_parser("worker", help="run an RQ worker (ingest and delivery jobs)")
    worker.add_argument("--config", help="config file (default: TRACKPIPE_CONFIG)")
    worker.add_argument(
        "--queues",
        help="comma-separated queues (ingest, deliver:<id>, retry:<id>), or all (default) or deliveries",
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.add_argument("--name", help="worker name (default: RQ's)")
    worker.add_argument("--no-scheduler", action="store_true", help="do not run the retry scheduler")
    worker.add_argument("--verbose", action="store_true", help="log every job")
    worker.add_argument("--metrics-port", type=_port, help="serve Prometheus metrics on this port")
    worker.add_argument("--metrics-host", help="address for --metrics-port (default: 127.0.0.1)")
    worker.add_argument(
        "--shard",
        help="serve this shard's queues (a [[shards]] name); default: the only shard, or one worker "
        "process per shard (--metrics-port P gives the i-th shard's process P+i)",
    )

    status = commands.add_parser("status", help="queues, lag, workers, retries, dead letters, delivery rates")
    status.add_argument("--config", help="config file (default: TRACKPIPE_CONFIG)")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    status.add_argument("--shard", help="only this shard (a [[shards]] name)")
    status.add_argument("--source", help="where this source's events go, and its events still waiting per shard")

    from commands.dlq import add_parser as add_dlq_parser

    add_dlq_parser(commands, _positive)

    from commands.requests import add_parser as add_requests_parser

    add_requests_parser(commands, _positive)

    bench = commands.add_parser("bench", help="measure the hot paths against their baselines")
    bench.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["edge", "batch", "worker", "e2e", "dedup", "redis", "deliver", "client", "capacity", "all"],
    )
    bench.add_argument("--json", action="store_true", help="one JSON object on stdout")
    bench.add_argument(
        "--generator",
        choices=["auto", "wrk", "builtin"],
        default="auto",
        help="edge, batch, client: load generator (default: wrk if on the PATH, else the built-in one)",
    )
    bench.add_argument(
        "--duration",
        type=_positive,
        default=10,
        help=(
            "edge, batch, e2e: seconds of load; client: of raw batches; redis: per stage; capacity: per step "
            "(default: %(default)s)"
        ),
    )
    bench.add_argument(
        "--events", type=_positive, default=100_000, help="worker, deliver, client: events (default: %(default)s)"
    )
    bench.add_argument(
        "--job-events",
        type=_positive,
        default=2_000,
        help="worker, deliver: events per ingest job (default: %(default)s, the edge's commit_max_events)",
    )
    bench.add_argument(
        "--baseline-events",
        type=_positive,
        default=2_000,
        help="worker: one-job-per-event events (default: %(default)s)",
    )
    bench.add_argument(
        "--rounds",
        type=_positive,
        default=3,
        help="worker: rounds of the batched run; the figure is their median (default: %(default)s)",
    )
    bench.add_argument(
        "--compare",
        help="deliver: a checkout of older code to measure against in the same run (its repository root)",
    )
    bench.add_argument("--ids", type=_positive, default=1_000_000, help="dedup: ids remembered (default: %(default)s)")
    bench.add_argument(
        "--rate", type=_positive, default=5_000, help="e2e: events per second offered (default: %(default)s)"
    )
    bench.add_argument(
        "--e2e-batch", type=_positive, default=1, help="e2e: events per request (default: %(default)s, single events)"
    )
    bench.add_argument(
        "--events-per-request",
        type=_positive,
        default=1,
        help="capacity: events per request (default: %(default)s; more than 1: /events/batch)",
    )
    bench.add_argument(
        "--start-rate", type=_positive, help="capacity: first step's requests/s (default: 2000 events/s' worth)"
    )
    bench.add_argument("--max-steps", type=_positive, default=8, help="capacity: steps at most (default: %(default)s)")
    bench.add_argument("--edges", type=_positive, default=1, help="capacity: edge processes (default: %(default)s)")
    bench.add_argument(
        "--ingest-workers", type=_positive, default=1, help="capacity: ingest workers (default: %(default)s)"
    )
    bench.add_argument(
        "--shared-workers",
        type=_positive,
        help="capacity: this many workers on every queue instead of one per role (ingest, each destination)",
    )

    soak = commands.add_parser(
        "soak", help="load the real pipeline while injecting faults; prove nothing accepted is lost"
    )
    soak.add_argument("--duration", type=_positive, default=60, help="seconds of load (default: %(default)s)")
    soak.add_argument("--rate", type=_positive, default=100, help="requests per second (default: %(default)s)")
    soak.add_argument("--webhook-outage", type=_positive, help="seconds the webhook answers 500 (default: 10)")
    soak.add_argument("--redis-outage", type=_positive, help="seconds the Redis server is down (default: 3)")
    soak.add_argument(
        "--drain-timeout", type=_positive, default=300, help="seconds to wait for delivery after the load"
    )
    soak.add_argument("--json", action="store_true", help="the report as one JSON object")
    soak.add_argument(
        "--layout",
        choices=["roles", "all-queues", "mixed"],
        help="workers: per-role and supervised, two on every queue left unsupervised, or both (default: mixed;"
        " not with --shards, which runs one worker per shard)",
    )
    soak.add_argument(
        "--seed", type=int, help="seed of the random kills (default: a new one; the report prints it to repeat a run)"
    )
    soak.add_argument(
        "--random-kills",
        type=int,
        help="workers SIGKILLed at random moments, besides the burst (default: one per 10 s of load, at least 3)",
    )
    soak.add_argument(
        "--default-timings",
        action="store_true",
        help="run the workers with the product's default timings instead of the soak's short ones",
    )
    soak.add_argument(
        "--failover",
        action="store_true",
        help="instead: primary + replica + 3 sentinels, the primary SIGKILLed mid-load at a seeded moment",
    )
    soak.add_argument("--min-replicas", type=int, help="--failover: the edge's min_replicas, 0 or 1 (default: 1)")
    soak.add_argument(
        "--rejoin-after",
        type=float,
        help="--failover: seconds after the promotion to restart the old primary as a replica (default: 3)",
    )
    soak.add_argument("--no-rejoin", action="store_true", help="--failover: leave the old primary down")
    soak.add_argument(
        "--shards",
        type=int,
        help="instead: N (2 to 4) primaries, sources on each, worker and server kills; each source's data on its shard",
    )

    keys = commands.add_parser("keys", help="source keys")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_commands.add_parser("new", help="print a new source key and its hashed form for the config")
    return parser


# command -> (module, function): imported only when that command runs, so that `trackpipe keys new`
# does not load uvicorn, RQ or the workers.
COMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("commands.dev", "run_dev"),
    "edge": ("commands.edge", "run_edge_command"),
    "worker": ("commands.worker", "run_worker"),
    "console": ("commands.console", "run_console_command"),
    "status": ("commands.status", "run_status"),
    "dlq": ("commands.dlq", "run_dlq"),
    "requests": ("commands.requests", "run_requests"),
    "keys": ("commands.keys", "run_keys"),
    "bench": ("commands.bench", "run_bench"),
    "soak": ("commands.soak", "run_soak"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, function_name = COMMANDS[args.command]
    try:
        run = getattr(importlib.import_module(module_name), function_name)
        return run(args)
    except ConfigError as exc:
        print(f"trackpipe: bad config: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling
        return 130


if __name__ == "__main__":
    sys.exit(main())
