"""`trackpipe bench` in smoke mode: every measurement runs end to end and reports sane figures.

The figures themselves are not pass/fail here (a shared CI machine is too noisy); the full runs
live in docs/PERFORMANCE.md. What must hold on any machine: the command runs, cleans up, counts
every event it was answered 200 for, and loses nothing end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

SMALL = ["--duration", "1", "--events", "2000", "--job-events", "500", "--baseline-events", "40", "--ids", "200000"]


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench makes its servers' directories under TMPDIR: a directory of this test's own lets
    `leftover_servers` tell its servers from those of any other bench running on the machine."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def leftover_servers() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    ours = os.path.join(os.environ["TMPDIR"], "trackpipe-bench-")
    return [line for line in ps.splitlines() if ours in line]


@pytest.mark.slow
def test_bench_all_in_smoke_mode_reports_every_measurement() -> None:
    done = bench("all", "--json", "--rate", "400", "--generator", "builtin", *SMALL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["python"].startswith("3.")
    assert machine["redis_server"].split()[0] in ("valkey", "redis")

    edge = report["edge"]
    assert edge["rps"] > 0 and edge["baseline_rps"] > 0
    assert edge["ratio"] == pytest.approx(edge["rps"] / edge["baseline_rps"], abs=0.002)
    assert edge["detail"]["generator"] == "builtin"
    assert edge["detail"]["edge_not_200"] == 0
    assert edge["detail"]["events_stored"] >= edge["detail"]["events_answered_200"] > 0
    # Both fsync policies in the same run; the target's figure is the default, always.
    assert edge["detail"]["appendfsync"] == "always"
    assert edge["fsync_always_rps"] > 0 and edge["fsync_everysec_rps"] > 0
    assert edge["fsync_always_rps"] == edge["rps"]
    assert edge["fsync_ratio"] == pytest.approx(edge["fsync_always_rps"] / edge["fsync_everysec_rps"], abs=0.002)
    assert edge["durability_cost"] == pytest.approx(1 - edge["fsync_ratio"], abs=0.002)
    assert len(edge["detail"]["everysec_rounds"]) == len(edge["detail"]["edge_rounds"]) == 2
    assert all(rate > 0 for rate in edge["detail"]["everysec_rounds"] + edge["detail"]["edge_rounds"])

    batch = report["batch"]
    assert batch["events_per_second"] > 0 and batch["detail"]["events_per_request"] == 100
    assert "fsync_everysec_rps" not in batch
    assert batch["detail"]["events_stored"] >= batch["detail"]["events_answered_200"] > 0

    worker = report["worker"]
    assert worker["detail"]["batched"]["events"] == 2000 and worker["detail"]["batched"]["jobs"] == 4
    rounds = worker["detail"]["rounds_events_per_second"]
    assert len(rounds) == 3 and worker["events_per_second"] == sorted(rounds)[1]  # the median round
    assert worker["detail"]["baseline"]["jobs"] == 40
    assert worker["ratio"] > 1  # batching must beat one job per event on any machine
    # CPU per event, whole and past a job's cost (a one-event job's CPU, taken off once per job).
    batched, single = worker["detail"]["batched"], worker["detail"]["baseline"]
    assert worker["cpu_us_per_event"] == pytest.approx(batched["cpu_seconds"] / 2000 * 1e6, abs=0.6)
    assert worker["cpu_ms_per_job"] == pytest.approx(single["cpu_seconds"] / 40 * 1e3, abs=0.02)
    past = (batched["cpu_seconds"] - 4 * worker["cpu_ms_per_job"] / 1e3) / (2000 - 4) * 1e6
    assert worker["cpu_us_per_event_past_job"] == pytest.approx(past, abs=0.6)
    assert 0 < worker["cpu_us_per_event_past_job"] < worker["cpu_us_per_event"]

    e2e = report["e2e"]["detail"]
    assert e2e["accepted"] > 0
    assert e2e["webhook_received"] == e2e["file_received"] == e2e["accepted"]
    assert e2e["lost"] == 0 and e2e["duplicates"] == 0
    assert 0 < e2e["p50_ms"] <= e2e["p99_ms"]
    # Latency from the schedule, the generator's own lateness beside it, the fsync setting named.
    assert e2e["latency_from"] == "schedule" and e2e["appendfsync"] == "always"
    lateness = e2e["generator_lateness"]
    assert lateness["requests"] == e2e["statuses"]["200"] and 0 <= lateness["late_share"] <= 1
    assert 0 <= lateness["p99_ms"] <= lateness["max_ms"]
    for name in ("edge", "batch", "worker", "e2e"):
        assert report[name]["appendfsync"] == "always"

    dedup = report["dedup"]
    assert dedup["detail"]["ids"] == 200_000 and 0 < dedup["bytes_per_id"] < dedup["baseline_bytes_per_id"]
    for name in ("edge", "batch", "worker", "e2e", "dedup"):
        assert isinstance(report[name]["met"], bool) and report[name]["target"]
    assert leftover_servers() == []


def test_bench_prints_a_table_with_the_machine_line() -> None:
    done = bench("worker", "--events", "600", "--job-events", "300", "--baseline-events", "20")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "valkey" in lines[0]
    assert any(line.startswith("worker ") for line in lines)
    assert lines[1].split()[-1] == "fsync" and next(x for x in lines if x.startswith("worker ")).endswith(" always")
    cpu = next(x for x in lines if x.startswith("  cpu "))
    assert "µs/event" in cpu and float(cpu.split()[1]) > 0


@pytest.mark.slow
def test_bench_edge_table_shows_both_fsync_policies() -> None:
    done = bench("edge", "--duration", "1", "--generator", "builtin")
    assert done.returncode == 0, done.stderr
    [row] = [line.split() for line in done.stdout.splitlines() if line.startswith("  fsync ")]
    always, everysec, ratio = (float(v.replace(",", "")) for v in row[1:4])
    assert always > 0 and everysec > 0
    assert ratio == pytest.approx(always / everysec, abs=0.01)
    [edge] = [line.split() for line in done.stdout.splitlines() if line.startswith("edge ")]
    assert float(edge[1].replace(",", "")) == always  # the edge's figure is the one at always
    assert leftover_servers() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["edge", "--duration", "0"], "--duration: 0 must be at least 1"),
        (["edge", "--duration", "soon"], "--duration: 'soon' is not a whole number"),
        (["e2e", "--rate", "-5"], "--rate: -5 must be at least 1"),
        (["edge", "--generator", "ab"], "--generator: invalid choice: 'ab'"),
    ],
)
def test_bad_bench_arguments_are_named(args: list[str], message: str) -> None:
    done = bench(*args, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_asking_for_wrk_without_wrk_is_refused() -> None:
    import os
    from pathlib import Path

    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [sys.executable, "-m", "commands", "bench", "edge", "--generator", "wrk", "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2
    assert "wrk is not on the PATH" in done.stderr


@pytest.mark.skipif(not __import__("shutil").which("wrk"), reason="wrk is not installed")
@pytest.mark.slow
def test_bench_edge_with_wrk() -> None:
    done = bench("edge", "--json", "--duration", "1", "--generator", "wrk")
    assert done.returncode == 0, done.stderr
    edge = json.loads(done.stdout)["edge"]
    assert edge["detail"]["generator"] == "wrk"
    assert edge["detail"]["events_stored"] >= edge["detail"]["events_answered_200"] > 0
    assert edge["fsync_always_rps"] > 0 and edge["fsync_everysec_rps"] > 0 and edge["durability_cost"] < 1


# The load generator's schedule and lateness accounting (pure: no server, no clock).


def test_schedule_spreads_requests_evenly_from_the_start() -> None:
    from tooling.loadgen import due_offset, scheduled_count

    assert scheduled_count(8_000, 10) == 80_000
    assert scheduled_count(0.2, 1) == 1  # never an empty schedule
    assert [due_offset(n, 4) for n in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_lateness_counts_sends_after_their_due_time() -> None:
    from tooling.loadgen import lateness

    # 100 sends: 97 on time or early (negative), 3 late by 2, 5 and 40 ms.
    late = [-0.0002] * 50 + [0.0] * 47 + [0.002, 0.005, 0.040]
    summary = lateness(late)
    assert summary.requests == 100
    assert summary.max_ms == 40.0
    assert summary.p99_ms == 40.0  # the 99th of 100 sorted values
    assert summary.late_share == 0.03
    assert lateness([0.0005, 0.0009]).late_share == 0.0  # within a millisecond is on time
    assert lateness([]).requests == 0


def test_run_load_takes_due_times_from_the_schedule() -> None:
    """Against a real local server: every request's due time is `start + n / rate` whatever its send."""
    import asyncio

    from tooling.harness import free_port, wait_http
    from tooling.loadgen import run_load

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "tooling.bare", "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        result = asyncio.run(
            run_load(f"http://127.0.0.1:{port}/events", lambda i: b"{}", connections=4, duration=0.5, rate=40)
        )
    finally:
        bare.kill()
        bare.wait()
    assert result.scheduled == 20 and result.sent == 20 and result.ok == 20
    start = result.due_times[0]
    for n, due in result.due_times.items():
        assert due == pytest.approx(start + n / 40, abs=1e-6)
        assert result.send_times[n] >= due - 0.001  # never more than the loop's lead before its time
    assert result.lateness is not None and result.lateness.requests == 20
