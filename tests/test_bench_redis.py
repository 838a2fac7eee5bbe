"""`trackpipe bench redis`: the server-CPU arithmetic (pure), and the whole command in smoke mode.

The figures themselves are not pass/fail (a shared machine is too noisy); what must hold is that
every figure is positive, the stages add up to the totals, and nothing answered 200 is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT
from tooling.benchredis import (
    ServerSample,
    body_maker,
    combined,
    difference,
    events_per_core,
    idle_rate,
    parse_sample,
    script_calls,
    stage_figures,
    totals,
)

CPU_INFO = {
    "used_cpu_sys": 1.5,
    "used_cpu_user": 2.25,
    "used_cpu_sys_children": 0.0,
    "used_cpu_user_children": 0.5,
    "used_cpu_sys_main_thread": 1.0,
    "used_cpu_user_main_thread": 2.0,
}


def test_a_sample_reads_the_process_cpu_and_every_command() -> None:
    stats = {"cmdstat_eval": {"calls": 10, "usec": 500, "usec_per_call": 50.0}, "cmdstat_llen": {"calls": 3, "usec": 6}}
    got = parse_sample(CPU_INFO, stats, at=7.0)
    assert got.cpu == pytest.approx(3.75)  # sys + user, every thread
    assert got.main == pytest.approx(3.0)
    assert got.children == pytest.approx(0.5)
    assert got.commands == {"eval": (10, 500), "llen": (3, 6)}


def test_the_difference_of_two_samples_is_what_ran_between_them() -> None:
    before = ServerSample(1.0, 0.9, 0.0, {"eval": (10, 500), "get": (5, 10)}, at=100.0)
    after = ServerSample(1.5, 1.3, 0.25, {"eval": (30, 1_700), "get": (5, 10), "exec": (2, 40)}, at=102.0)
    delta = difference(before, after)
    assert delta.cpu_us == pytest.approx(500_000)
    assert delta.main_us == pytest.approx(400_000)
    assert delta.children_us == pytest.approx(250_000)
    assert delta.seconds == pytest.approx(2.0)
    assert delta.commands == {"eval": (20, 1_200), "exec": (2, 40)}  # `get` did not run
    assert script_calls(delta) == 20
    both = combined([delta, delta])
    assert (both.cpu_us, both.seconds, both.commands["eval"]) == (pytest.approx(1e6), pytest.approx(4.0), (40, 2_400))


def test_per_event_figures_are_net_of_the_idle_server_and_add_up() -> None:
    idle = difference(ServerSample(0.0, 0.0, 0.0, {}, at=0.0), ServerSample(0.002, 0.002, 0.0, {}, at=1.0))
    assert idle_rate(idle) == pytest.approx(2_000)  # µs per second
    stage = difference(
        ServerSample(1.0, 1.0, 0.0, {"eval": (0, 0)}, at=10.0),
        ServerSample(1.104, 1.104, 0.0, {"eval": (100, 50_000), "rpush": (100, 1_000)}, at=12.0),
    )
    figures = stage_figures(stage, 10_000, idle_rate(idle), top=1)
    # 104 ms of CPU in 2 s, of which 4 ms the idle server's, over 10,000 events.
    assert figures["us_per_event"] == pytest.approx(10.0)
    assert figures["idle_us_per_event"] == pytest.approx(0.4)
    assert list(figures["commands"]) == ["eval"]  # the costliest only
    assert figures["commands"]["eval"] == {"calls_per_event": 0.01, "us_per_event": 5.0}
    whole = totals({"us_per_event": 2.5}, {"us_per_event": 7.5})
    assert whole == {"total_us_per_event": 10.0, "events_per_core": 100_000}
    assert events_per_core(0.0) == 0.0
    with pytest.raises(ValueError, match="no events"):
        stage_figures(stage, 0)


def test_every_event_of_the_load_has_an_id_of_its_own() -> None:
    route, per_request, body_for = body_maker("single", "t")
    assert (route, per_request) == ("/events", 1)
    assert json.loads(body_for(7))["context"]["event_id"] == "t-7"
    route, per_request, body_for = body_maker("batch", "b")
    batch = json.loads(body_for(2))["batch"]
    assert (route, per_request, len(batch)) == ("/events/batch", 100, 100)
    assert [e["context"]["event_id"] for e in batch] == [f"b-{n}" for n in range(200, 300)]
    assert 450 <= len(json.dumps(batch[0], separators=(",", ":"))) <= 550  # ~500 B, as in `bench batch`


@pytest.mark.slow
def test_bench_redis_reports_positive_figures_that_add_up(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "commands", "bench", "redis", "--duration", "1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["redis"]
    assert report["met"] is True
    runs = report["detail"]["runs"]
    for kind in ("single", "batch"):
        for policy in ("always", "everysec"):
            run = runs[kind][policy]
            edge, workers = run["edge"], run["workers"]
            assert edge["us_per_event"] > 0 and workers["us_per_event"] > 0
            assert run["total_us_per_event"] == pytest.approx(edge["us_per_event"] + workers["us_per_event"], abs=0.002)
            assert run["events_per_core"] == pytest.approx(1e6 / run["total_us_per_event"], rel=0.001)
            assert edge["events"] == workers["events"] > 0  # the workers drained all the edge stored
            assert edge["not_200"] == 0
            assert edge["events_per_write"] >= 1
            assert report[f"{kind}_{policy}_total_us_per_event"] == run["total_us_per_event"]
        assert runs[kind]["together"]["us_per_event"] > 0
    assert report["single_events_per_core"] == runs["single"]["always"]["events_per_core"]
    assert report["batch_events_per_core"] == runs["batch"]["always"]["events_per_core"]
    waitaof = report["detail"]["waitaof"]
    for kind in ("single", "batch"):
        for n in (0, 1):
            side = waitaof[kind][f"min_replicas_{n}"]
            assert side["events"] > 0 and side["events_per_second"] > 0
            # Net of the idle server: a slow replicated write leaves few events over a long time.
            assert side["primary_us_per_event"] >= 0 and side["replica_us_per_event"] >= 0
        assert waitaof[kind]["rate_ratio"] > 0
    trips = waitaof["round_trip_ms"]
    # Medians of round trips: which is longer is the benchmark's to report (seen inverted by 0.02 ms
    # on a loaded machine), not a test's to assert.
    assert trips["write"] > 0 and trips["write_wait_then_waitaof"] > 0
