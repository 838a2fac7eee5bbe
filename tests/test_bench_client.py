"""`trackpipe bench client` run tiny: the producer library's events/s next to raw batches, with
every tracked event read back from the ingest jobs exactly once. The figures are not pass/fail
here (a shared machine is too noisy); the counts are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tooling.benchproducer import EVENT_BYTES, event_parts, main
from trackpipe.client.events import build_event, encode_event


@pytest.mark.slow  # about 5 s: an edge, wrk and three producer processes
def test_bench_client_reports_the_ratio_and_stores_every_event_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "bench", "client", "--events", "2000", "--duration", "1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    client = json.loads(done.stdout)["client"]
    detail = client["detail"]

    assert client["appendfsync"] == "always" and detail["appendfsync"] == "always"
    assert client["events_per_second"] > 0 and client["baseline_events_per_second"] > 0
    assert client["ratio"] > 0
    ratio = client["events_per_second"] / client["baseline_events_per_second"]
    assert client["ratio"] == pytest.approx(ratio, abs=0.002)
    assert client["producer_us_per_event"] > client["track_us_per_event"] > 0
    assert client["asyncio_events_per_second"] > 0 and client["asyncio_ratio"] > 0
    # Two Client rounds and one AsyncClient round of 2,000 events, every one stored exactly once.
    assert detail["plan"] == ["raw", "client", "asyncio", "client", "raw"]
    assert detail["events_tracked"] == detail["events_stored_once"] == 3 * 2000
    assert len(detail["client_rounds"]) == 2 and len(detail["baseline_rounds"]) == 2
    # Batches of up to 500 events: at least 4 requests a round, never one per event.
    assert all(4 <= n < 100 for n in detail["client_requests"] + detail["asyncio_requests"])
    assert detail["baseline_events_stored"] >= detail["baseline_events_answered_200"] > 0
    assert list(tmp_path.iterdir()) == []  # the server's directory is gone


def test_producer_events_are_the_size_of_the_raw_batches_events() -> None:
    name, properties, user, context = event_parts()
    size = len(encode_event(build_event(name, properties, user, context)))
    assert abs(size - EVENT_BYTES) <= 2  # the UUID and the timestamp were counted in advance


def test_producer_names_a_missing_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TRACKPIPE_BENCH_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--url", "http://127.0.0.1:9", "--site", "1", "--events", "10"])
    assert exit_.value.code == 2
    assert "TRACKPIPE_BENCH_KEY" in capsys.readouterr().err
