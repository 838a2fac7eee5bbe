"""`trackpipe soak`: the pipeline under load and faults (tooling.soak); exits 1 on any loss."""

from __future__ import annotations

import argparse
import sys


def run_soak(args: argparse.Namespace) -> int:
    import msgspec

    from tooling.soak import run_soak as soak

    for option, value in (("--seed", args.seed), ("--random-kills", args.random_kills)):
        if value is not None and value < 0:
            print(f"trackpipe soak: {option} {value} must be 0 or more", file=sys.stderr)
            return 2
    # Faults start at 5, 20, 40, 60, 70 and 80 % of the run; each outage must end before the next fault.
    for option, seconds in (("--webhook-outage", args.webhook_outage), ("--redis-outage", args.redis_outage)):
        if seconds > args.duration * 0.2:
            print(
                f"trackpipe soak: {option} {seconds} needs --duration of at least {seconds * 5}",
                file=sys.stderr,
            )
            return 2
    progress = (lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    report = soak(
        args.duration,
        args.rate,
        args.webhook_outage,
        args.redis_outage,
        log=progress,
        drain_timeout=args.drain_timeout,
        layout=args.layout,
        seed=args.seed,
        random_kills=args.random_kills,
        default_timings=args.default_timings,
    )
    text = msgspec.json.encode(report).decode()
    print(text if args.json else msgspec.json.format(text, indent=2))
    return 0 if report.ok else 1
