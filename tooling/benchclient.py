"""`trackpipe bench client`: what the producer library costs a producer.

One edge process (as `bench batch` runs it, the server at `appendfsync always`) takes, in
alternating rounds, N events tracked through `trackpipe.client.Client` by a producer process of its
own (tooling/benchproducer.py, so its CPU is measured apart) and `bench batch`'s load: pre-built
100-event batches from the load generator. The client's events/s (first track() to the last
acknowledgement) over the raw batches' events/s is the figure; one more round runs `AsyncClient`.
After every round the events stored in the ingest jobs are read back: each tracked event must be
stored exactly once, and the raw rounds must have stored at least what was answered 200.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from tooling.bench import BENCH_KEY, BENCH_SITE, Measurement, bench_server
from tooling.benchhttp import (
    BATCH_EVENTS,
    CONNECTIONS,
    EDGE_CONFIG,
    LoadFigures,
    _start,
    _stop,
    _stored_events,
    batch_body,
    drive,
    load_generator,
)
from tooling.benchproducer import ProducerFigures
from tooling.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


class _Context(msgspec.Struct):
    event_id: str


class _EventId(msgspec.Struct):
    context: _Context


_id_decoder = msgspec.json.Decoder(_EventId)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _stored_ids(connection: Any) -> tuple[int, int]:
    """(events, distinct event ids) in the ingest jobs the edge wrote."""
    from ingest.store import held_batches
    from trackpipe.jobs import ingest_queue
    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    ids = [
        _id_decoder.decode(event).context.event_id
        for job in ingest_queue(connection).get_jobs()
        for batch in held_batches(connection, layout, job)
        for record in batch.records
        for event in record.events
    ]
    return len(ids), len(set(ids))


def _produce(base_url: str, events: int, use_asyncio: bool) -> ProducerFigures:
    args = [sys.executable, "-m", "tooling.benchproducer", "--url", base_url, "--site", BENCH_SITE]
    args += ["--events", str(events)] + (["--asyncio"] if use_asyncio else [])
    done = subprocess.run(
        args,
        cwd=ROOT,
        env={**os.environ, "TRACKPIPE_BENCH_KEY": BENCH_KEY},
        capture_output=True,
        timeout=600,
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"bench client: the producer exited with {done.returncode}: {' | '.join(tail)}")
    return msgspec.json.decode(done.stdout, type=ProducerFigures)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def bench_client(
    events: int = 200_000, duration: float = 10.0, rounds: int = 2, generator: str = "auto", with_asyncio: bool = True
) -> Measurement:
    """`Client` (default options: batches of 500, gzip level 1) against `bench batch`'s raw batches,
    `rounds` rounds each, alternating, and one `AsyncClient` round; the raw rounds last
    `duration / rounds` seconds each, the client rounds as long as N events take."""
    from trackpipe.config import parse

    generator = load_generator() if generator == "auto" else generator
    round_seconds = max(duration / rounds, 0.5)
    body = batch_body()
    plan = [kind for n in range(rounds) for kind in (("raw", "client") if n % 2 == 0 else ("client", "raw"))]
    if with_asyncio:
        plan.insert(len(plan) // 2, "asyncio")  # between the rounds, not at an end
    producers: dict[str, list[ProducerFigures]] = {"client": [], "asyncio": []}
    raw_rounds: list[LoadFigures] = []
    edge_cpu: dict[str, list[float]] = {"client": [], "asyncio": [], "raw": []}  # edge µs per event stored
    raw_stored = 0
    load_before = os.getloadavg()
    with bench_server() as (connection, url, tmp), tempfile.TemporaryDirectory(prefix="trackpipe-load-") as load_tmp:
        connection.config_set("appendfsync", "always")
        config_file = tmp / "edge.toml"
        config_file.write_text(EDGE_CONFIG.format(redis_url=url, site=BENCH_SITE, key=BENCH_KEY))
        parse(config_file.read_text())  # a broken bench config should fail here, not as a dead edge
        port = free_port()
        edge = _start(["commands", "edge", "--config", str(config_file), "--port", str(port)], port)
        try:
            base = f"http://127.0.0.1:{port}"
            raw_url = f"{base}/events/batch?tc_s={BENCH_SITE}&token={BENCH_KEY}"
            for kind in plan:
                cpu_before = _cpu_seconds(edge.pid)
                if kind == "raw":
                    raw_rounds.append(drive(raw_url, body, round_seconds, Path(load_tmp), generator))
                    time.sleep(0.2)  # requests wrk gave up on may still be finishing their write
                    stored = _stored_events(connection)
                    raw_stored += stored
                else:
                    figures = _produce(base, events, kind == "asyncio")
                    producers[kind].append(figures)
                    stored, distinct = _stored_ids(connection)
                    stats = figures.stats
                    if not (stored == distinct == stats.accepted == stats.queued == events):
                        raise RuntimeError(
                            f"bench client ({figures.client}): {events} events tracked, {stats.accepted} accepted, "
                            f"{stored} stored ({distinct} distinct ids); {stats.dropped} dropped, "
                            f"{stats.rejected} rejected, {stats.failed} failed"
                        )
                edge_cpu[kind].append((_cpu_seconds(edge.pid) - cpu_before) / max(stored, 1) * 1e6)
                # Every round starts from an empty server: a growing dataset would bring AOF rewrites in.
                connection.flushall()
        finally:
            _stop(edge)
    load_after = os.getloadavg()
    raw_ok = sum(r.ok for r in raw_rounds) * BATCH_EVENTS
    if raw_stored < raw_ok:
        raise RuntimeError(f"bench client: {raw_ok} raw events answered 200 but only {raw_stored} stored")

    def rate(f: ProducerFigures) -> float:
        return f.events / f.seconds if f.seconds else 0.0

    def cpu_us(f: ProducerFigures) -> float:
        return f.cpu_seconds / f.events * 1e6

    client_rate = _mean([rate(f) for f in producers["client"]])
    raw_rate = _mean([r.ok_per_second * BATCH_EVENTS for r in raw_rounds])
    figures: dict[str, float] = {
        "producer_us_per_event": round(_mean([cpu_us(f) for f in producers["client"]]), 2),
        "requests": sum(f.stats.requests for f in producers["client"]),
        # Of producer_us_per_event, the calling thread's share (the track() calls).
        "track_us_per_event": round(
            _mean([(f.track_cpu_seconds or 0.0) / f.events * 1e6 for f in producers["client"]]), 2
        ),
    }
    if producers["asyncio"]:
        figures["asyncio_events_per_second"] = round(_mean([rate(f) for f in producers["asyncio"]]))
        figures["asyncio_producer_us_per_event"] = round(_mean([cpu_us(f) for f in producers["asyncio"]]), 2)
        figures["asyncio_ratio"] = round(figures["asyncio_events_per_second"] / raw_rate, 3) if raw_rate else 0.0
    detail: dict[str, Any] = {
        "appendfsync": "always",
        "events_per_client_round": events,
        "client_options": "defaults: batches of up to 500 events, gzip level 1, one sender",
        "client_rounds": [round(rate(f)) for f in producers["client"]],
        "client_seconds": [round(f.seconds, 3) for f in producers["client"]],
        "client_requests": [f.stats.requests for f in producers["client"]],
        "client_retries": sum(f.stats.retries for f in producers["client"] + producers["asyncio"]),
        "asyncio_rounds": [round(rate(f)) for f in producers["asyncio"]],
        "asyncio_requests": [f.stats.requests for f in producers["asyncio"]],
        "events_tracked": sum(f.events for f in producers["client"] + producers["asyncio"]),
        # Checked above: every tracked event stored exactly once (ids read back from the ingest jobs).
        "events_stored_once": sum(f.stats.accepted for f in producers["client"] + producers["asyncio"]),
        "baseline": f"{generator}, {CONNECTIONS} connections, {BATCH_EVENTS}-event batches of {len(body)} bytes",
        "baseline_rounds": [round(r.ok_per_second * BATCH_EVENTS) for r in raw_rounds],
        "baseline_not_200": sum(r.other for r in raw_rounds),
        "baseline_events_answered_200": raw_ok,
        "baseline_events_stored": raw_stored,
        "edge_us_per_event": {k: round(_mean(v), 2) for k, v in edge_cpu.items() if v},
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        "plan": plan,
    }
    return Measurement(
        round(client_rate),
        round(raw_rate),
        round(client_rate / raw_rate, 3) if raw_rate else 0.0,
        "events/s",
        detail,
        figures,
    )
