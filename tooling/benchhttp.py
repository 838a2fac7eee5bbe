"""`trackpipe bench edge` and `bench batch`: one edge process against the bare ASGI app.

Both run under the same uvicorn settings and are driven by the same load generator (wrk when it is
on the PATH, else the built-in asyncio one), in alternating rounds so a noisy neighbour hits both.
Every event the edge answered 200 for is counted back out of Redis afterwards.

`bench edge` also runs the edge with the server at `appendfsync everysec` in the same rounds, to show
what the default `always` (a 200 means on disk) costs; the target is measured at `always`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from tooling.bench import BENCH_KEY, BENCH_SITE, Measurement, bench_server
from tooling.examples import V2_EXAMPLE
from tooling.harness import free_port, wait_http

CONNECTIONS = 64
BATCH_EVENTS = 100
BATCH_EVENT_BYTES = 500

EDGE_CONFIG = """
redis_url = "{redis_url}"
[edge]
max_backlog = 100000000
[[sources]]
id = "bench-web"
site_id = "{site}"
keys = ["{key}"]
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
"""


class LoadFigures(msgspec.Struct):
    ok: int  # answered 200
    other: int  # answered anything else, or failed
    seconds: float

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def single_body() -> bytes:
    return msgspec.json.encode(V2_EXAMPLE)


def batch_body(events: int = BATCH_EVENTS, size: int = BATCH_EVENT_BYTES) -> bytes:
    """`{"batch": [...]}` of v2 events padded to about `size` bytes each, each with its own id."""
    batch = []
    for i in range(events):
        event = {**V2_EXAMPLE, "context": {**V2_EXAMPLE["context"], "event_id": f"bench-{i:04d}"}}
        pad = size - len(msgspec.json.encode({**event, "note": ""}))
        event["note"] = "x" * max(pad, 0)
        batch.append(event)
    return msgspec.json.encode({"batch": batch})


def load_generator() -> str:
    return "wrk" if shutil.which("wrk") else "builtin"


def _wrk(url: str, body: bytes, duration: float, tmp: Path) -> LoadFigures:
    body_file = tmp / "body.json"
    body_file.write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body_file))
    seconds = max(1, round(duration))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    summary = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if summary is None:
        raise RuntimeError(f"cannot read wrk's output: {out!r}")
    total = int(summary.group(1))
    took = float(summary.group(2)) / (1000 if summary.group(3) == "ms" else 1)
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad += sum(int(n) for n in errors.groups()) if errors else 0
    return LoadFigures(ok=total - min(bad, total), other=bad, seconds=took)


def _builtin(url: str, body: bytes, duration: float) -> LoadFigures:
    from tooling.loadgen import run_load

    result = asyncio.run(run_load(url, lambda _: body, connections=CONNECTIONS, duration=duration))
    return LoadFigures(ok=result.ok, other=result.sent - result.ok, seconds=result.seconds)


def drive(url: str, body: bytes, duration: float, tmp: Path, generator: str) -> LoadFigures:
    return _wrk(url, body, duration, tmp) if generator == "wrk" else _builtin(url, body, duration)


def _start(args: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    except (RuntimeError, TimeoutError):
        proc.kill()
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stored_events(connection: Any) -> int:
    """Events held in the ingest jobs the edge wrote (read back from Redis)."""
    from ingest.store import held_batches
    from trackpipe.jobs import ingest_queue
    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    return sum(
        batch.event_count
        for job in ingest_queue(connection).get_jobs()
        for batch in held_batches(connection, layout, job)
    )


FSYNC_POLICIES = ("always", "everysec")


def _rate(rounds: list[LoadFigures], per_request: int) -> float:
    return sum(r.ok_per_second for r in rounds) / len(rounds) * per_request if rounds else 0.0


def bench_http(kind: str, duration: float = 10.0, rounds: int = 2, generator: str = "auto") -> Measurement:
    """kind "edge": single v2 events to /events, at appendfsync always (the default, the measured
    value) and everysec; kind "batch": 100-event batches to /events/batch, at the default only."""
    from trackpipe.config import parse

    body = single_body() if kind == "edge" else batch_body()
    per_request = 1 if kind == "edge" else BATCH_EVENTS
    route = "/events" if kind == "edge" else "/events/batch"
    generator = load_generator() if generator == "auto" else generator
    round_seconds = max(duration / rounds, 0.5)
    policies = FSYNC_POLICIES if kind == "edge" else FSYNC_POLICIES[:1]
    edge_rounds: dict[str, list[LoadFigures]] = {policy: [] for policy in policies}
    stored = 0
    bare_rounds: list[LoadFigures] = []
    with bench_server() as (connection, url, tmp), tempfile.TemporaryDirectory(prefix="trackpipe-load-") as load_tmp:
        config_file = tmp / "edge.toml"
        config_file.write_text(EDGE_CONFIG.format(redis_url=url, site=BENCH_SITE, key=BENCH_KEY))
        parse(config_file.read_text())  # a broken bench config should fail here, not as a dead edge
        edge_port, bare_port = free_port(), free_port()
        edge = _start(["commands", "edge", "--config", str(config_file), "--port", str(edge_port)], edge_port)
        try:
            bare = _start(["tooling.bare", "--port", str(bare_port)], bare_port)
        except BaseException:
            _stop(edge)
            raise
        try:
            edge_url = f"http://127.0.0.1:{edge_port}{route}?tc_s={BENCH_SITE}&token={BENCH_KEY}"
            for n in range(rounds):
                bare_rounds.append(
                    drive(f"http://127.0.0.1:{bare_port}{route}", body, round_seconds, Path(load_tmp), generator)
                )
                # The policies take turns going first, so neither always runs right after the baseline.
                for policy in policies if n % 2 == 0 else policies[::-1]:
                    connection.config_set("appendfsync", policy)
                    edge_rounds[policy].append(drive(edge_url, body, round_seconds, Path(load_tmp), generator))
                    # Count what this round stored, then start the next from an empty server: with no
                    # workers draining it, a growing dataset would bring AOF rewrites into later rounds.
                    time.sleep(0.2)  # requests wrk gave up on may still be finishing their write
                    stored += _stored_events(connection)
                    connection.flushall()
            connection.config_set("appendfsync", FSYNC_POLICIES[0])
        finally:
            _stop(edge)
            _stop(bare)
    every_edge_round = [r for figures in edge_rounds.values() for r in figures]
    edge_ok = sum(r.ok for r in every_edge_round)
    edge_rate = _rate(edge_rounds["always"], per_request)
    bare_rate = _rate(bare_rounds, per_request)
    detail: dict[str, Any] = {
        "generator": generator,
        "connections": CONNECTIONS,
        "events_per_request": per_request,
        "request_bytes": len(body),
        "appendfsync": "always",
        "edge_rounds": [round(r.ok_per_second * per_request) for r in edge_rounds["always"]],
        "baseline_rounds": [round(r.ok_per_second * per_request) for r in bare_rounds],
        "edge_not_200": sum(r.other for r in every_edge_round),
        "events_answered_200": edge_ok * per_request,
        # wrk stops counting with requests still in flight: those may be stored without being counted.
        "events_stored": stored,
    }
    figures: dict[str, float] = {}
    if "everysec" in edge_rounds:
        everysec_rate = _rate(edge_rounds["everysec"], per_request)
        detail["everysec_rounds"] = [round(r.ok_per_second * per_request) for r in edge_rounds["everysec"]]
        fsync_ratio = round(edge_rate / everysec_rate, 3) if everysec_rate else 0.0
        figures = {
            "fsync_always_rps": round(edge_rate),
            "fsync_everysec_rps": round(everysec_rate),
            "fsync_ratio": fsync_ratio,  # always / everysec
            "durability_cost": round(1 - fsync_ratio, 3) if everysec_rate else 0.0,  # share of throughput
        }
    if stored < edge_ok * per_request:
        raise RuntimeError(f"bench {kind}: {edge_ok * per_request} events answered 200 but only {stored} stored")
    unit = "req/s" if kind == "edge" else "events/s"
    return Measurement(
        round(edge_rate),
        round(bare_rate),
        round(edge_rate / bare_rate, 3) if bare_rate else 0.0,
        unit,
        detail,
        figures,
    )
