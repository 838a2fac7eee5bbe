"""The soak run, short: real edge, workers and valkey under load while faults are injected.

`trackpipe soak` (tooling/soak.py) posts unique ids, single and batched, v1 and v2, to an edge in
front of both worker layouts at once (supervised per-role workers and two default all-queue workers
nothing restarts). It kills the ingest worker mid-job three times and a delivery worker after its
send three times; SIGKILLs random workers at seeded random moments (just after a pop, mid-job, idle)
and one all-queue worker three times in a row; makes the webhook answer 500; stops and restarts the
Redis server, then SIGKILLs and restarts it (AOF); restarts the edge with SIGTERM. Then every id
answered 200 must be at the webhook and in the file.
For a longer local run: `trackpipe soak --duration 120 --json` (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.slow
def test_nothing_accepted_is_lost_under_faults() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "commands", "soak", "--json",
            "--duration", "30", "--rate", "40", "--webhook-outage", "4", "--redis-outage", "2",
            "--layout", "mixed", "--seed", "7", "--random-kills", "4", "--drain-timeout", "150",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.stdout, done.stderr
    report = json.loads(done.stdout)
    assert report["seed"] == 7 and report["layout"] == "mixed"
    assert report["events_accepted"] > 1000
    assert report["lost"] == {"soak-hook": 0, "soak-file": 0}, json.dumps(report, indent=1)
    assert report["delivered"] == {"soak-hook": report["events_accepted"], "soak-file": report["events_accepted"]}
    # Repeats only where the destination took a batch whose settlement was lost: a delivery worker
    # killed after its send, Redis stopping mid-delivery, a send that timed out after arriving, or a
    # delivery job stopped by its own timeout after its send (counted as "job timeout").
    for destination, unexplained in report["duplicates_unexplained"].items():
        kinds = report["delivery_errors"][destination]
        shown = ("duplicates", "duplicates_unexplained", "unexplained_arrivals", "delivery_errors")
        why = {k: report[k] for k in shown}
        why["faults"] = [f"{f['at']} {f['fault']} {f['detail']}" for f in report["faults"]]
        assert unexplained == 0 or any(k.startswith(("timeout", "connection error", "job ")) for k in kinds), (
            json.dumps(why, indent=1)
        )
    assert report["ok_during_redis_outage"] == 0
    assert report["statuses"].get("503", 0) > 0, "the Redis outage must have been answered with 503"
    faults = [f["fault"] + " " + f["detail"] for f in report["faults"]]
    assert sum(f.startswith("SIGKILL ingest worker mid-job #") for f in faults) == 3, faults
    assert sum(f.startswith("SIGKILL delivery worker after its send") for f in faults) == 3, faults
    assert not [f for f in faults if "never took a job" in f], faults
    # The burst's later kills are skipped if its victim has died on its own meanwhile (see below).
    assert sum(f.startswith("SIGKILL burst #") and "skipped" not in f for f in faults) >= 1, faults
    assert sum(f.startswith("SIGKILL random worker") for f in faults) >= 1, faults
    for expected in (
        "webhook answers 500",
        "redis stopped",
        "redis SIGKILLed",
        "redis started again after SIGKILL",
        "edge stopped",
        "drained",
    ):
        assert any(f.startswith(expected) for f in faults), (expected, faults)
    workers = {w["name"]: w for w in report["workers"]}
    assert set(workers) == {"ingest", "hook", "file", "all-1", "all-2"}
    # The burst hit the first all-queue worker, which the soak restarted; the second one is never
    # touched nor restarted, so it must have survived every fault on its own.
    assert workers["all-1"]["killed"] >= 1 and workers["all-1"]["supervised"] is False
    assert workers["all-2"]["killed"] == 0 and workers["all-2"]["starts"] == 1
    dead = [w for w in workers.values() if not w["alive_at_end"]]
    assert not dead, json.dumps({"dead": dead, "faults": report["faults"]}, indent=1)
    assert sum(report["kills_by_state"].values()) >= 4, report["kills_by_state"]
    assert all(isinstance(report["recovery_seconds"][d], float) for d in ("soak-hook", "soak-file")), report
    assert report["ok"] is True
    assert done.returncode == 0


def test_soak_refuses_an_outage_longer_than_its_slot() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "soak", "--duration", "20", "--webhook-outage", "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--webhook-outage 30 needs --duration of at least 150" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layout", "threads"], "invalid choice: 'threads'"),
        (["--seed", "x"], "--seed: invalid int value: 'x'"),
        (["--random-kills", "-1"], "--random-kills -1 must be 0 or more"),
    ],
)
def test_soak_refuses_bad_arguments(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "soak", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr
