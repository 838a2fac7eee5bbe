"""`trackpipe bench deliver` in smoke mode, and the pieces that keep a delivery job cheap per event:
bodies checked without being decoded, latencies observed per receipt time, shared outcomes masked once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Histogram

from destinations.base import DELIVERED, OutgoingEvent, Rejected, Retry
from tests.support import ROOT
from trackpipe.messages import DeliveryEvent
from workers.deliver import observe_latencies, observe_many, outgoing, send_batch


def bench(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands", "bench", "deliver", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


@pytest.mark.slow
def test_bench_deliver_against_a_checkout_delivers_every_event_to_both_destinations(tmp_path: Path) -> None:
    # Compared with this same checkout: both sides run in processes of their own, taking turns.
    done = bench("--events", "2000", "--job-events", "500", "--json", "--compare", str(ROOT), tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["deliver"]
    assert report["us_per_event"] > 0 and report["baseline_us_per_event"] > 0
    detail = report["detail"]
    assert len(detail["new"]) == len(detail["old"]) == 2
    for side in detail["new"] + detail["old"]:
        for dest in ("bench-hook", "bench-file"):
            assert side[dest]["jobs"] >= 1
            assert side[dest]["worker_us_per_event"] > 0
    assert not list(tmp_path.glob("trackpipe-bench-*")), "bench left its server directory behind"


def test_bench_deliver_refuses_a_compare_path_that_is_no_checkout(tmp_path: Path) -> None:
    done = bench("--compare", str(tmp_path), tmp=tmp_path)
    assert done.returncode == 2
    assert f"--compare {tmp_path}: not a trackpipe checkout" in done.stderr
    assert "Traceback" not in done.stderr


def _histogram() -> Histogram:
    return Histogram("t_seconds", "t", ["d"], buckets=(0.01, 0.1, 1, 10), registry=CollectorRegistry())


def _samples(histogram: Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, round(s.value, 9)) for m in histogram.collect() for s in m.samples if "created" not in s.name
    ]


@pytest.mark.parametrize("seconds", [0.0, 0.01, 0.05, 1.0, 5.5, 10.0, 99.0])
def test_observe_many_counts_like_observing_one_at_a_time(seconds: float) -> None:
    one_by_one, at_once = _histogram(), _histogram()
    for _ in range(7):
        one_by_one.labels("x").observe(seconds)
    observe_many(at_once.labels("x"), seconds, 7)
    assert _samples(at_once) == _samples(one_by_one)


def test_latencies_are_observed_per_event_grouped_by_receipt_time() -> None:
    histogram = _histogram()
    events = [DeliveryEvent(f"e{i}", "page_view", b"{}", received_at=at) for i, at in enumerate([1000, 1000, 1500, 0])]
    observe_latencies(histogram.labels("x"), events, now=2.0)
    samples = {(name, labels.get("le")): value for name, labels, value in _samples(histogram)}
    assert samples[("t_seconds_count", None)] == 3  # received_at 0 (unknown) is not observed
    assert samples[("t_seconds_sum", None)] == pytest.approx(1.0 + 1.0 + 0.5)
    assert samples[("t_seconds_bucket", "1.0")] == 3 and samples[("t_seconds_bucket", "0.1")] == 0


def test_outgoing_events_decode_their_body_on_first_use_and_damaged_ones_are_rejected() -> None:
    good = msgspec.json.encode({"event_name": "purchase", "context": {"event_id": "e1"}})
    events = [
        DeliveryEvent("e1", "purchase", good),
        DeliveryEvent("e2", "purchase", b'{"event_name": '),  # truncated
        DeliveryEvent("e3", "purchase", b"[1, 2]"),  # not an object
    ]
    ready, broken = outgoing(events)
    assert [e.event_id for e in ready] == ["e1"]
    assert ready[0].body is good
    assert ready[0].event == {"event_name": "purchase", "context": {"event_id": "e1"}}
    assert ready[0].event is ready[0].event  # decoded once
    assert sorted(broken) == [1, 2]
    assert all(
        isinstance(o, Rejected) and o.reason.startswith("stored event is not a JSON object") for o in broken.values()
    )
    assert ready[0] == OutgoingEvent("e1", "purchase", None, good)
    assert ready[0] != OutgoingEvent("e1", "purchase", None, b"{}")


class _Sender:
    def __init__(self, outcomes: list) -> None:
        self.outcomes = outcomes
        self.got: list[OutgoingEvent] = []

    def send(self, events: list[OutgoingEvent]) -> list:
        self.got = events
        return self.outcomes[: len(events)]

    def take_exchanges(self) -> list:
        return []

    def close(self) -> None:
        pass


def test_send_batch_keeps_order_around_damaged_events_and_masks_shared_outcomes() -> None:
    shared = Retry("HTTP 503: token s3cr3t-token refused")
    sender = _Sender([DELIVERED, shared, shared])
    events = [
        DeliveryEvent("a", "x", b"{}"),
        DeliveryEvent("b", "x", b"not json"),
        DeliveryEvent("c", "x", b"{}"),
        DeliveryEvent("d", "x", b"{}"),
    ]
    outcomes = send_batch(sender, events, ["s3cr3t-token"])
    assert [e.event_id for e in sender.got] == ["a", "c", "d"]
    assert outcomes[0] is DELIVERED
    assert isinstance(outcomes[1], Rejected)
    assert outcomes[2] == outcomes[3] == Retry("HTTP 503: token *** refused")
