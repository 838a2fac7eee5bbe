"""`trackpipe soak`: the pipeline under load and faults (tooling.soak), through a failover of its
primary (`--failover`, tooling.failover), or over several shards (`--shards N`, tooling.shardsoak);
exits 1 on any loss (with --failover and --min-replicas 0, a loss is that setting's risk: reported,
exit 0; with --shards also on misplaced data or a 503 for a source whose shard was up)."""

from __future__ import annotations

import argparse
import sys

WEBHOOK_OUTAGE, REDIS_OUTAGE = 10, 3


def _refuse(message: str) -> int:
    print(f"trackpipe soak: {message}", file=sys.stderr)
    return 2


def run_soak(args: argparse.Namespace) -> int:
    import msgspec

    for option, value in (("--seed", args.seed), ("--random-kills", args.random_kills)):
        if value is not None and value < 0:
            return _refuse(f"{option} {value} must be 0 or more")
    progress = (lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.shards is not None:
        code = _shards_arguments(args)
        if code:
            return code
        from tooling.shardsoak import run_shard_soak

        report = run_shard_soak(
            args.shards,
            args.duration,
            args.rate,
            log=progress,
            drain_timeout=args.drain_timeout,
            seed=args.seed,
            default_timings=args.default_timings,
        )
    elif args.failover:
        code = _failover_arguments(args)
        if code:
            return code
        from tooling.failover import DEFAULT_REJOIN_AFTER, run_failover

        report = run_failover(
            args.duration,
            args.rate,
            1 if args.min_replicas is None else args.min_replicas,
            log=progress,
            drain_timeout=args.drain_timeout,
            layout=args.layout or "mixed",
            seed=args.seed,
            rejoin=not args.no_rejoin,
            rejoin_after=DEFAULT_REJOIN_AFTER if args.rejoin_after is None else args.rejoin_after,
            default_timings=args.default_timings,
        )
    else:
        for option in ("--min-replicas", "--rejoin-after", "--no-rejoin"):
            if getattr(args, option[2:].replace("-", "_")) not in (None, False):
                return _refuse(f"{option} applies only to --failover")
        webhook_outage = WEBHOOK_OUTAGE if args.webhook_outage is None else args.webhook_outage
        redis_outage = REDIS_OUTAGE if args.redis_outage is None else args.redis_outage
        # Faults start at 5, 20, 40, 60, 70 and 80 % of the run; each outage must end before the next fault.
        for option, seconds in (("--webhook-outage", webhook_outage), ("--redis-outage", redis_outage)):
            if seconds > args.duration * 0.2:
                return _refuse(f"{option} {seconds} needs --duration of at least {seconds * 5}")
        from tooling.soak import run_soak as soak

        report = soak(
            args.duration,
            args.rate,
            webhook_outage,
            redis_outage,
            log=progress,
            drain_timeout=args.drain_timeout,
            layout=args.layout or "mixed",
            seed=args.seed,
            random_kills=args.random_kills,
            default_timings=args.default_timings,
        )
    text = msgspec.json.encode(report).decode()
    print(text if args.json else msgspec.json.format(text, indent=2))
    return 0 if report.ok else 1


def _shards_arguments(args: argparse.Namespace) -> int:
    """0 when the arguments fit a sharded run, else 2 with the problem named on stderr."""
    from tooling.shardsoak import MAX_SHARDS, MIN_DURATION, MIN_SHARDS

    if args.failover:
        return _refuse("--shards and --failover are separate runs; choose one")
    if not MIN_SHARDS <= args.shards <= MAX_SHARDS:
        return _refuse(f"--shards {args.shards}: from {MIN_SHARDS} to {MAX_SHARDS}")
    for option in ("--webhook-outage", "--redis-outage", "--random-kills", "--min-replicas", "--rejoin-after"):
        if getattr(args, option[2:].replace("-", "_")) is not None:
            return _refuse(f"{option} does not apply to --shards")
    if args.no_rejoin:
        return _refuse("--no-rejoin does not apply to --shards")
    if args.layout is not None:
        return _refuse("--layout does not apply to --shards (one worker process per shard)")
    if args.duration < MIN_DURATION:
        return _refuse(f"--shards needs --duration of at least {MIN_DURATION}")
    return 0


def _failover_arguments(args: argparse.Namespace) -> int:
    """0 when the arguments fit a failover run, else 2 with the problem named on stderr."""
    from tooling.failover import MAX_MIN_REPLICAS, MIN_DURATION

    for option in ("--webhook-outage", "--redis-outage", "--random-kills"):
        if getattr(args, option[2:].replace("-", "_")) is not None:
            return _refuse(f"{option} does not apply to --failover (its one fault is the primary's SIGKILL)")
    if args.min_replicas is not None and not 0 <= args.min_replicas <= MAX_MIN_REPLICAS:
        return _refuse(f"--min-replicas {args.min_replicas}: the failover layout has one replica (0 or 1)")
    if args.duration < MIN_DURATION:
        return _refuse(f"--failover needs --duration of at least {MIN_DURATION} (load before and after the kill)")
    if args.rejoin_after is not None:
        if args.no_rejoin:
            return _refuse("--rejoin-after and --no-rejoin contradict each other")
        if not 0 <= args.rejoin_after <= args.duration:
            return _refuse(f"--rejoin-after {args.rejoin_after:g} must be from 0 to --duration ({args.duration})")
    return 0
