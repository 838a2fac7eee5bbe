"""`trackpipe bench`: run the measurements, print a table or one JSON object."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

MEASUREMENTS = ["edge", "batch", "worker", "e2e", "dedup"]

# The server's fsync policy behind each figure, where the measurement does not report its own
# (`detail.appendfsync`): every bench server runs the product's default, `always`.
FSYNC_DEFAULT = {"worker": "always", "dedup": "n/a (memory)", "redis": "always, everysec"}


class Report(msgspec.Struct):
    """How one measurement is named in the JSON and checked against its target."""

    value_key: str
    baseline_key: str | None
    target: str
    met: Callable[[Any], bool]


REPORTS = {
    # The targets of the current round (docs/PERFORMANCE.md): the edge at 0.65 of the bare app, a
    # worker at 50,000 events/s with large jobs and <= 12 µs of CPU per event past a job's own cost
    # (the earlier ones: 0.5, and 50x one-job-per-event).
    "edge": Report("rps", "baseline_rps", "ratio >= 0.65", lambda m: m.ratio >= 0.65),
    "batch": Report(
        "events_per_second", "baseline_events_per_second", ">= 150,000 events/s", lambda m: m.value >= 150_000
    ),
    "worker": Report(
        "events_per_second",
        "baseline_events_per_second",
        ">= 50k/s, x50, <= 12 µs/event",
        lambda m: m.ratio >= 50 and m.value >= 50_000 and 0 < m.figures.get("cpu_us_per_event_past_job", 0) <= 12,
    ),
    "e2e": Report(
        "p99_ms",
        None,
        "p99 < 500 ms, nothing lost",
        lambda m: m.value < 500 and m.detail.get("lost") == 0 and m.detail.get("accepted", 0) > 0,
    ),
    "dedup": Report("bytes_per_id", "baseline_bytes_per_id", "<= 16 bytes/id", lambda m: m.value <= 16),
    # Not a target: delivery-worker CPU per event (webhook + file); the baseline is `--compare`'s code.
    "deliver": Report("us_per_event", "baseline_us_per_event", "delivery CPU per event (info)", lambda m: m.value > 0),
    # Not a target: the figures the capacity model in docs/PERFORMANCE.md is built from.
    "redis": Report(
        "single_events_per_core",
        "batch_events_per_core",
        "server CPU per event (info)",
        lambda m: m.value > 0 and m.baseline > 0,
    ),
    # Not a target: what the producer library costs, its events/s against pre-built raw batches.
    "client": Report(
        "events_per_second",
        "baseline_events_per_second",
        "producer library vs raw (info)",
        lambda m: m.value > 0 and m.baseline > 0,
    ),
}


def measure(name: str, args: argparse.Namespace) -> Any:
    from tooling.bench import bench_dedup, bench_e2e, bench_worker
    from tooling.benchhttp import bench_http

    if name in ("edge", "batch"):
        return bench_http(name, args.duration, generator=args.generator)
    if name == "worker":
        return bench_worker(args.events, args.job_events, args.baseline_events, args.rounds)
    if name == "e2e":
        return bench_e2e(args.rate, args.duration, args.e2e_batch)
    if name == "redis":
        from tooling.benchredis import bench_redis

        return bench_redis(args.duration)
    if name == "deliver":
        from tooling.benchdeliver import bench_deliver

        return bench_deliver(args.events, args.job_events, compare=Path(args.compare) if args.compare else None)
    if name == "client":
        from tooling.benchclient import bench_client

        return bench_client(args.events, args.duration, generator=args.generator)
    return bench_dedup(args.ids)


def as_json(name: str, m: Any) -> dict[str, Any]:
    report = REPORTS[name]
    out: dict[str, Any] = {report.value_key: m.value}
    if report.baseline_key:
        out[report.baseline_key] = m.baseline
        out["ratio"] = m.ratio
    out.update(m.figures)
    out.update(appendfsync=fsync_of(name, m), target=report.target, met=report.met(m), detail=m.detail)
    return out


def fsync_of(name: str, m: Any) -> str:
    return str(m.detail.get("appendfsync") or FSYNC_DEFAULT.get(name, "always"))


def run_bench(args: argparse.Namespace) -> int:
    import shutil

    from tooling.bench import machine

    if args.generator == "wrk" and not shutil.which("wrk"):
        print("trackpipe bench: --generator wrk: wrk is not on the PATH", file=sys.stderr)
        return 2

    if args.what == "capacity":
        return run_capacity_command(args)
    if getattr(args, "compare", None) and not (Path(args.compare) / "workers" / "deliver.py").is_file():
        print(
            f"trackpipe bench: --compare {args.compare}: not a trackpipe checkout (no workers/deliver.py)",
            file=sys.stderr,
        )
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
    print(f"{'measurement':<12} {'value':>12} {'baseline':>12} {'ratio':>8}  {'unit':<10} {'target':<28} met  fsync")
    for name, m in results.items():
        report = REPORTS[name]
        baseline = f"{m.baseline:>12,.1f}" if report.baseline_key else f"{'-':>12}"
        ratio = f"{m.ratio:>8}" if report.baseline_key else f"{'-':>8}"
        met = "yes" if report.met(m) else "NO"
        print(
            f"{name:<12} {m.value:>12,.1f} {baseline} {ratio}  {m.unit:<10} {report.target:<28} {met:<4} "
            f"{fsync_of(name, m)}"
        )
        if "fsync_everysec_rps" in m.figures:
            # The price of a 200 meaning "on disk": the same edge with the server at each fsync policy.
            always, everysec = m.figures["fsync_always_rps"], m.figures["fsync_everysec_rps"]
            target = "always vs everysec (info)"
            print(
                f"{'  fsync':<12} {always:>12,.1f} {everysec:>12,.1f} {m.figures['fsync_ratio']:>8}  "
                f"{m.unit:<10} {target:<28} -"
            )
        if "cpu_us_per_event_past_job" in m.figures:
            # The worker's CPU per event, whole and past the cost of a job (the target).
            f = m.figures
            print(
                f"{'  cpu':<12} {f['cpu_us_per_event_past_job']:>12,.2f} {f['cpu_us_per_event']:>12,.2f} {'-':>8}  "
                f"µs/event   past the job's {f['cpu_ms_per_job']:,.2f} ms, and whole"
            )
        if "producer_us_per_event" in m.figures:
            # What the library costs the producing process, and the asyncio twin's round.
            f = m.figures
            us = f["producer_us_per_event"]
            track = f.get("track_us_per_event", 0.0)
            print(f"{'  producer':<12} {us:>12,.2f} {'-':>12} {'-':>8}  µs/event   Client CPU ({track:,.2f} track())")
            if "asyncio_events_per_second" in f:
                print(
                    f"{'  asyncio':<12} {f['asyncio_events_per_second']:>12,.1f} {m.baseline:>12,.1f} "
                    f"{f['asyncio_ratio']:>8}  {m.unit:<10} AsyncClient, "
                    f"{f['asyncio_producer_us_per_event']:,.2f} µs/event CPU"
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


def run_capacity_command(args: argparse.Namespace) -> int:
    """`trackpipe bench capacity`: the step table as it goes (stderr), then the report."""
    from tooling.bench import machine
    from tooling.capacity import run_capacity

    def progress(line: str) -> None:
        if not args.json:
            print(f"  step: {line}", file=sys.stderr, flush=True)

    report = run_capacity(
        args.events_per_request,
        args.duration,
        start_rate=args.start_rate,
        max_steps=args.max_steps,
        edges=args.edges,
        ingest_workers=args.ingest_workers,
        shared_workers=args.shared_workers or 0,
        progress=progress,
    )
    info = machine()
    if args.json:
        print(msgspec.json.encode({"machine": info, "capacity": report}).decode())
        return 0
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, {info['redis_server']} "
        f"(appendfsync {report.appendfsync})"
    )
    print(
        f"layout: {report.layout}; {report.events_per_request} event(s) per request, steps of {report.duration} s; "
        f"load average {report.load_average[0]} -> {report.load_average[1]}"
    )
    print(
        f"{'req/s':>9} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'late p99':>9} "
        f"{'busy':>5} {'µs/event':>9} {'kept up':>7}  held"
    )
    for step in report.steps:
        verdict = "yes" if step.held else "no: " + "; ".join(step.why_not)
        print(
            f"{step.requests_per_second:>9,.0f} {step.events_per_second:>10,.0f} {_ms(step.p50_ms):>8} "
            f"{_ms(step.p99_ms):>8} {_ms(step.max_ms):>8} {step.generator_lateness.p99_ms:>9.1f} "
            f"{step.machine_busy:>5.0%} {step.us_per_event:>9.1f} {'yes' if step.sustained else 'no':>7}  {verdict}"
        )
    met = "met" if report.met else "NOT met"
    print(
        f"held: {report.held_requests_per_second:,.0f} requests/s = {report.held_events_per_second:,.0f} events/s, "
        f"p50 {_ms(report.p50_ms)} / p99 {_ms(report.p99_ms)} / max {_ms(report.max_ms)} ms "
        f"(target >= {report.target_events_per_second:,.0f} events/s: {met}; appendfsync {report.appendfsync})"
    )
    print(f"kept up with (p99 aside): {report.sustained_requests_per_second:,.0f} requests/s")
    # Where the CPU went: at the highest held step, else at the highest step kept up with.
    shown = [s for s in report.steps if s.held] or [s for s in report.steps if s.sustained]
    if shown:
        step = max(shown, key=lambda s: s.requests_per_second)
        print(
            f"CPU at {step.requests_per_second:,.0f} requests/s ({'held' if step.held else 'kept up'}): "
            "cores busy, share of all used, µs per event, cores' worth of waiting for a core"
        )
        for name, cpu in sorted(step.cpu.items(), key=lambda item: -item[1].seconds):
            print(f"  {name:<24} {cpu.cores:>6.2f} {cpu.share:>7.1%} {cpu.us_per_event:>8.1f} {cpu.waiting:>6.2f}")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
