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
    assert worker["detail"]["baseline"]["jobs"] == 40
    assert worker["ratio"] > 1  # batching must beat one job per event on any machine

    e2e = report["e2e"]["detail"]
    assert e2e["accepted"] > 0
    assert e2e["webhook_received"] == e2e["file_received"] == e2e["accepted"]
    assert e2e["lost"] == 0 and e2e["duplicates"] == 0
    assert 0 < e2e["p50_ms"] <= e2e["p99_ms"]

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
