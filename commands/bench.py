"""`trackpipe bench`: run the measurements, print a table or one JSON object."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import msgspec

MEASUREMENTS = ["edge", "batch", "worker", "e2e", "dedup"]


class Report(msgspec.Struct):
    """How one measurement is named in the JSON and checked against its target."""

    value_key: str
    baseline_key: str | None
    target: str
    met: Callable[[Any], bool]


REPORTS = {
    "edge": Report("rps", "baseline_rps", "ratio >= 0.5", lambda m: m.ratio >= 0.5),
    "batch": Report(
        "events_per_second", "baseline_events_per_second", ">= 150,000 events/s", lambda m: m.value >= 150_000
    ),
    "worker": Report("events_per_second", "baseline_events_per_second", "ratio >= 50", lambda m: m.ratio >= 50),
    "e2e": Report(
        "p99_ms",
        None,
        "p99 < 500 ms, nothing lost",
        lambda m: m.value < 500 and m.detail.get("lost") == 0 and m.detail.get("accepted", 0) > 0,
    ),
    "dedup": Report("bytes_per_id", "baseline_bytes_per_id", "<= 16 bytes/id", lambda m: m.value <= 16),
    # Not a target: the figures the capacity model in docs/PERFORMANCE.md is built from.
    "redis": Report(
        "single_events_per_core",
        "batch_events_per_core",
        "server CPU per event (info)",
        lambda m: m.value > 0 and m.baseline > 0,
    ),
}


def measure(name: str, args: argparse.Namespace) -> Any:
    from tooling.bench import bench_dedup, bench_e2e, bench_worker
    from tooling.benchhttp import bench_http

    if name in ("edge", "batch"):
        return bench_http(name, args.duration, generator=args.generator)
    if name == "worker":
        return bench_worker(args.events, args.job_events, args.baseline_events)
    if name == "e2e":
        return bench_e2e(args.rate, args.duration, args.e2e_batch)
    if name == "redis":
        from tooling.benchredis import bench_redis

        return bench_redis(args.duration)
    return bench_dedup(args.ids)


def as_json(name: str, m: Any) -> dict[str, Any]:
    report = REPORTS[name]
    out: dict[str, Any] = {report.value_key: m.value}
    if report.baseline_key:
        out[report.baseline_key] = m.baseline
        out["ratio"] = m.ratio
    out.update(m.figures)
    out.update(target=report.target, met=report.met(m), detail=m.detail)
    return out


def run_bench(args: argparse.Namespace) -> int:
    import shutil

    from tooling.bench import machine

    if args.generator == "wrk" and not shutil.which("wrk"):
        print("trackpipe bench: --generator wrk: wrk is not on the PATH", file=sys.stderr)
        return 2

    names = MEASUREMENTS if args.what == "all" else [args.what]
    results: dict[str, Any] = {}
    for name in names:
        if not args.json:
            print(f"running {name} ...", file=sys.stderr)
        results[name] = measure(name, args)
    info = machine()
    if args.json:
        print(msgspec.json.encode({"machine": info, **{n: as_json(n, m) for n, m in results.items()}}).decode())
        return 0
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, {info['redis_server']}, "
        f"wrk on PATH: {info['wrk']}"
    )
    print(f"{'measurement':<12} {'value':>12} {'baseline':>12} {'ratio':>8}  {'unit':<10} {'target':<28} met")
    for name, m in results.items():
        report = REPORTS[name]
        baseline = f"{m.baseline:>12,.1f}" if report.baseline_key else f"{'-':>12}"
        ratio = f"{m.ratio:>8}" if report.baseline_key else f"{'-':>8}"
        met = "yes" if report.met(m) else "NO"
        print(f"{name:<12} {m.value:>12,.1f} {baseline} {ratio}  {m.unit:<10} {report.target:<28} {met}")
        if "fsync_everysec_rps" in m.figures:
            # The price of a 200 meaning "on disk": the same edge with the server at each fsync policy.
            always, everysec = m.figures["fsync_always_rps"], m.figures["fsync_everysec_rps"]
            target = "always vs everysec (info)"
            print(
                f"{'  fsync':<12} {always:>12,.1f} {everysec:>12,.1f} {m.figures['fsync_ratio']:>8}  "
                f"{m.unit:<10} {target:<28} -"
            )
    if "redis" in results:
        _print_capacity(results["redis"])
    for name, m in results.items():
        print(f"  {name}: {msgspec.json.encode(m.detail).decode()}")
    return 0


def _print_capacity(m: Any) -> None:
    """Server CPU per event by stage, and what one primary core sustains."""
    print(f"{'redis':<12} {'appendfsync':<12} {'edge µs':>9} {'workers µs':>11} {'total µs':>9} {'events/s/core':>14}")
    figures = m.figures
    for kind in ("single", "batch"):
        for policy in ("always", "everysec"):
            key = f"{kind}_{policy}"
            print(
                f"  {kind:<10} {policy:<12} {figures[key + '_edge_us_per_event']:>9.2f} "
                f"{figures[key + '_workers_us_per_event']:>11.2f} {figures[key + '_total_us_per_event']:>9.2f} "
                f"{figures[key + '_events_per_core']:>14,.0f}"
            )
        if f"{kind}_waitaof_cpu_ratio" in figures:
            print(
                f"  {kind:<10} WAITAOF (min_replicas 1 vs 0): primary CPU per event "
                f"x{figures[kind + '_waitaof_cpu_ratio']}, edge rate x{figures[kind + '_waitaof_rate_ratio']}"
            )
