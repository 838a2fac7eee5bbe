"""The soak run, short: real edge, workers and valkey under load while faults are injected.

`trackpipe soak` (trackpipe/soak.py) posts unique ids, single and batched, v1 and v2; kills the
ingest worker mid-job three times and a delivery worker after its send three times; makes the
webhook answer 500; stops and restarts the Redis server (AOF, appendfsync always); restarts the
edge with SIGTERM. Then every id answered 200 must be at the webhook and in the file.
For a longer local run: `trackpipe soak --duration 600 --webhook-outage 30` (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT


def test_nothing_accepted_is_lost_under_faults() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "trackpipe.cli", "soak", "--json",
            "--duration", "30", "--rate", "40", "--webhook-outage", "4", "--redis-outage", "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
    )  # fmt: skip
    assert done.stdout, done.stderr
    report = json.loads(done.stdout)
    assert report["events_accepted"] > 1000
    assert report["lost"] == {"soak-hook": 0, "soak-file": 0}, json.dumps(report, indent=1)
    assert report["delivered"] == {"soak-hook": report["events_accepted"], "soak-file": report["events_accepted"]}
    # Repeats only where the destination took a batch whose settlement was lost: a delivery worker
    # killed after its send, Redis stopping mid-delivery, or a send that timed out after arriving.
    for destination, unexplained in report["duplicates_unexplained"].items():
        kinds = report["delivery_errors"][destination]
        assert unexplained == 0 or any(k.startswith(("timeout", "connection error")) for k in kinds), report
    assert report["ok_during_redis_outage"] == 0
    assert report["statuses"].get("503", 0) > 0, "the Redis outage must have been answered with 503"
    faults = [f["fault"] + " " + f["detail"] for f in report["faults"]]
    assert sum(f.startswith("SIGKILL ingest worker mid-job #") for f in faults) == 3, faults
    assert sum(f.startswith("SIGKILL delivery worker after its send") for f in faults) == 3, faults
    assert not [f for f in faults if "never took a job" in f], faults
    for expected in ("webhook answers 500", "redis stopped", "redis started again", "edge stopped", "drained"):
        assert any(f.startswith(expected) for f in faults), (expected, faults)
    assert report["ok"] is True
    assert done.returncode == 0


def test_soak_refuses_an_outage_longer_than_its_slot() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trackpipe.cli", "soak", "--duration", "20", "--webhook-outage", "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--webhook-outage 30 needs --duration of at least 150" in done.stderr
