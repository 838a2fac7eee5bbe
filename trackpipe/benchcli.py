"""Printing `trackpipe bench` results as a table or as JSON."""

from __future__ import annotations

import argparse
import sys

import msgspec

from trackpipe.keys import bind_rq_prefix


def run_bench(args: argparse.Namespace) -> int:
    bind_rq_prefix("trackpipe")
    from trackpipe.bench import bench_dedup, bench_e2e, bench_worker, machine

    names = ["worker", "dedup", "e2e"] if args.what == "all" else [args.what]
    results = {}
    for name in names:
        if not args.json:
            print(f"running {name} ...", file=sys.stderr)
        if name == "worker":
            results[name] = bench_worker(args.events, args.job_events, args.baseline_events)
        elif name == "dedup":
            results[name] = bench_dedup(args.ids)
        else:
            results[name] = bench_e2e(args.rate, args.duration)
    if args.json:
        print(msgspec.json.encode({"machine": machine(), **results}).decode())
        return 0
    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}")
    print(f"{'measurement':<12} {'value':>12} {'baseline':>12} {'ratio':>8}  unit")
    for name, m in results.items():
        print(f"{name:<12} {m.value:>12,.1f} {m.baseline:>12,.1f} {m.ratio:>8}  {m.unit}  {m.detail}")
    return 0
