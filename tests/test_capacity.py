"""`trackpipe bench capacity`: the step logic (pure) and one short real run.

The figures are not pass/fail here (a shared machine is too noisy); what must hold anywhere: the
decision of a step follows its figures, the rates climb and narrow as documented, CPU shares add up,
and a real run reports a consistent, loss-free result.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT
from tooling.capacity import HOLD_P99_MS, ProcessCpu, cpu_shares, event_latencies, growing, next_rate, why_not_held


def reasons(**changes: object) -> list[str]:
    figures: dict = {
        "p99_ms": 120.0,
        "scheduled": 1000,
        "answered_200": 1000,
        "lost": 0,
        "duplicates": 0,
        "growing": [],
    }
    figures.update(changes)
    return why_not_held(**figures)


def test_a_step_within_every_bound_is_held() -> None:
    assert reasons() == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"p99_ms": HOLD_P99_MS}, "p99 250 ms >= 250 ms"),
        ({"p99_ms": None}, "no event arrived"),
        ({"answered_200": 990}, "10 of 1000 requests not answered 200"),
        ({"lost": 3}, "3 accepted events missing at a destination"),
        ({"duplicates": 1}, "1 events delivered twice"),
        ({"growing": ["ingest"]}, "backlog growing: ingest"),
        ({"late_p99_ms": 300.0}, "requests sent late (p99 300 ms): the edge was not keeping up"),
    ],
)
def test_each_bound_broken_is_named(changes: dict, expected: str) -> None:
    assert reasons(**changes) == [expected]


def test_every_broken_bound_is_listed() -> None:
    assert len(reasons(p99_ms=900.0, lost=1, growing=["deliver:bench-hook"])) == 3


def test_rates_double_while_every_step_keeps_up() -> None:
    # Held or not: a step that kept up (latency aside) says nothing about higher rates.
    assert next_rate([(1000, True, True)]) == 2000
    assert next_rate([(1000, False, True), (2000, True, True), (4000, True, True)]) == 8000


def test_after_a_step_that_did_not_keep_up_the_rate_bisects() -> None:
    climb = [(1000, True, True), (2000, True, True), (4000, True, True)]
    assert next_rate([*climb, (8000, False, False)]) == 6000
    assert next_rate([*climb, (8000, False, False), (6000, True, True)]) == 7000
    assert next_rate([*climb, (8000, False, False), (6000, False, True)]) == 5000
    # A low rate whose latency was too high does not stop the search above a higher held one.
    assert next_rate([(2000, False, True), (4000, True, True), (8000, False, False)]) == 6000


def test_bisecting_stops_within_the_precision() -> None:
    assert next_rate([(7000, True, True), (7600, False, False)]) is None  # 7600 <= 7000 * 1.1
    assert next_rate([(7000, True, True), (7800, False, False)]) == 7400
    assert next_rate([(7000, True, True), (3000, False, False)]) is None  # nothing above the held one failed


def test_nothing_held_halves_below_the_lowest_failure() -> None:
    assert next_rate([(1000, False, False)]) == 500
    assert next_rate([(2000, False, True), (4000, False, False)]) == 1000
    assert next_rate([(1.5, False, False)]) is None  # below one request/s: stop


def test_a_flat_or_draining_backlog_is_not_growing() -> None:
    flat = [(t / 4, 5 + (t % 3)) for t in range(40)]
    draining = [(t / 4, 400 - 10 * t) for t in range(40)]
    assert not growing(flat)
    assert not growing(draining)
    assert not growing([])


def test_a_backlog_rising_over_the_last_half_is_growing() -> None:
    rising_late = [(t / 4, 3 if t < 20 else 3 + 10 * (t - 20)) for t in range(40)]
    assert growing(rising_late)
    # Rising early then flat: the last half is what counts.
    rising_early = [(t / 4, min(10 * t, 150)) for t in range(40)]
    assert not growing(rising_early)


def test_cpu_shares_are_cores_and_fractions_of_the_whole() -> None:
    before = {"edge": 10.0, "valkey": 4.0, "worker ingest": 1.0, "gone": 1.0}
    after = {"edge": 17.0, "valkey": 6.0, "worker ingest": 2.0, "new": 5.0}
    shares, cores = cpu_shares(before, after, wall_seconds=10.0)
    assert set(shares) == {"edge", "valkey", "worker ingest"}  # only processes read both times
    assert shares["edge"] == ProcessCpu(seconds=7.0, cores=0.7, share=0.7)
    assert shares["valkey"].share == 0.2 and shares["worker ingest"].cores == 0.1
    assert sum(s.share for s in shares.values()) == pytest.approx(1.0)
    assert cores == pytest.approx(1.0)
    per_event, _ = cpu_shares(before, after, 10.0, {"edge": 2.5}, events=70_000)
    assert per_event["edge"].us_per_event == 100.0 and per_event["edge"].waiting == 0.25
    assert per_event["valkey"].waiting == 0.0


def test_latency_is_from_the_requests_due_time() -> None:
    # 10 requests/s, 3 events each: events 0-2 due at 100.0, 3-5 at 100.1.
    arrivals = {0: 100.05, 2: 100.2, 4: 100.1, 5: 100.5}
    assert [round(x, 3) for x in event_latencies(arrivals, 100.0, 10.0, 3)] == [0.05, 0.2, 0.0, 0.4]


@pytest.mark.slow
def test_a_short_capacity_run_reports_a_consistent_result(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "commands",
            "bench",
            "capacity",
            "--json",
            "--duration",
            "2",
            "--start-rate",
            "50",
            "--max-steps",
            "2",
            "--events-per-request",
            "5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["capacity"]
    assert report["appendfsync"] == "always" and report["events_per_request"] == 5
    assert "1 edge process" in report["layout"] and "1 ingest" in report["layout"]
    steps = report["steps"]
    assert 1 <= len(steps) <= 2 and steps[0]["requests_per_second"] == 50
    for step in steps:
        assert step["scheduled"] == round(step["requests_per_second"] * 2)
        assert step["events_per_second"] == step["requests_per_second"] * 5
        # Nothing lost or repeated, counted at both destinations.
        assert step["webhook_received"] == step["file_received"] == step["accepted_events"] == step["answered_200"] * 5
        assert step["lost"] == 0 and step["duplicates"] == 0
        assert step["held"] == (step["why_not"] == [])
        kept_up = (
            step["answered_200"] == step["scheduled"]
            and not step["backlog_growing"]
            and step["generator_lateness"]["p99_ms"] < 250
        )
        assert step["sustained"] == kept_up  # nothing lost or repeated (above)
        assert step["sustained"] or not step["held"]
        assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
        names = set(step["cpu"])
        assert {"edge", "valkey", "receiver", "load generator", "worker ingest"} <= names
        assert sum(c["share"] for c in step["cpu"].values()) == pytest.approx(1.0, abs=0.01)
        per_event = sum(c["us_per_event"] for c in step["cpu"].values())
        assert step["us_per_event"] == pytest.approx(per_event, abs=0.2) and step["us_per_event"] > 0
    held = [s for s in steps if s["held"]]
    if held:
        best = max(held, key=lambda s: s["requests_per_second"])
        assert report["held_requests_per_second"] == best["requests_per_second"]
        assert report["held_events_per_second"] == best["events_per_second"]
        assert report["p99_ms"] == best["p99_ms"] and report["cpu"] == best["cpu"]
    if len(steps) == 2 and steps[0]["sustained"]:
        assert steps[1]["requests_per_second"] == 100  # doubled after a step that kept up
    else:
        assert report["held_requests_per_second"] == 0 and report["cpu"] == {}
    assert report["sustained_requests_per_second"] >= report["held_requests_per_second"]
    assert report["met"] is False  # 250 events/s is far below the target
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # every process it started is gone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--events-per-request", "0"], "--events-per-request: 0 must be at least 1"),
        (["--start-rate", "fast"], "--start-rate: 'fast' is not a whole number"),
        (["--shared-workers", "-1"], "--shared-workers: -1 must be at least 1"),
        (["--edges", "0"], "--edges: 0 must be at least 1"),
    ],
)
def test_bad_capacity_arguments_are_named(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "bench", "capacity", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
