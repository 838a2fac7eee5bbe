"""The failover run (`trackpipe soak --failover`, tooling/failover.py): a primary, a replica and three
sentinels, an edge with min_replicas 1 and the soak's workers on the redis+sentinel:// URL, load on,
the primary SIGKILLed, the replica promoted, the old primary back as a replica. Every 200 must be
delivered. Also the pure parts of its report and the refusals of bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from tests.support import ROOT
from tooling.failover import (
    RERUN_WITHIN,
    LostEvent,
    edge_outage,
    explained_window,
    lost_events,
    recovery_seconds,
    verdict,
)
from tooling.soak import DESTINATIONS, EXPLAIN_BEFORE, tally

KILL = 100.0


def test_the_outage_counts_503s_by_second_and_the_first_200_of_a_request_sent_after_the_kill() -> None:
    answers = [
        (99.0, 99.1, "200"),
        (99.0, 99.5, "503"),  # a slow replica before the kill: counted apart
        (99.9, 100.2, "200"),  # sent before the kill, answered after it: not "200 again"
        (100.1, 100.3, "503"),
        (100.5, 100.9, "503"),
        (101.0, 102.5, "503"),
        (102.0, 103.0, "connection error"),
        (103.0, 104.25, "200"),
        (104.0, 104.5, "200"),
    ]
    outage = edge_outage(answers, KILL)
    assert outage.answers_503 == 3 and outage.answers_503_before_kill == 1
    assert outage.seconds_with_503 == 2  # seconds 0 and 2 after the kill
    assert (outage.first_503_after_kill, outage.last_503_after_kill) == (0.3, 2.5)
    assert outage.connection_errors == 1
    assert outage.first_200_after_kill == 4.25


def test_an_outage_without_any_503_or_200_again() -> None:
    outage = edge_outage([(99.0, 99.5, "200"), (100.5, 101.0, "connection error")], KILL)
    assert outage.answers_503 == outage.seconds_with_503 == 0
    assert outage.first_503_after_kill is None and outage.first_200_after_kill is None


def test_lost_events_name_each_destination_s_missing_200s_earliest_first() -> None:
    accepted_at = {"a": 99.5, "b": 99.9, "c": 101.0}
    received = {"hook": Counter({"a": 1, "c": 2}), "file": Counter()}
    shown = lost_events(accepted_at, received, KILL)
    assert shown["hook"] == [LostEvent("b", -0.1)]
    assert [e.event_id for e in shown["file"]] == ["a", "b", "c"]
    assert [e.accepted_after_kill for e in shown["file"]] == [-0.5, -0.1, 1.0]


def test_recovery_is_from_the_kill_until_the_last_event_accepted_before_it_arrived() -> None:
    accepted_at = {"a": 90.0, "b": 99.0, "c": 105.0}
    assert recovery_seconds({"a": 91.0, "b": 112.5, "c": 106.0}, accepted_at, KILL) == 12.5
    assert recovery_seconds({"a": 91.0, "b": 99.5}, accepted_at, KILL) == 0.0  # all there before the kill
    assert recovery_seconds({"a": 91.0, "c": 106.0}, accepted_at, KILL) is None  # b never arrived


def test_only_repeats_around_the_failover_are_explained() -> None:
    window = explained_window(KILL, writable=103.0)
    assert window == (KILL - EXPLAIN_BEFORE, 103.0 + RERUN_WITHIN, DESTINATIONS)
    hook, _ = DESTINATIONS
    arrivals = {hook: [(50.0, ["early"]), (60.0, ["early"]), (99.0, ["inflight"]), (115.0, ["inflight"])]}
    received = {hook: Counter({"early": 2, "inflight": 2, "other": 1})}
    counts = tally({"early", "inflight", "gone"}, received, arrivals, [window], started=0.0)
    assert counts.delivered == {hook: 2} and counts.lost == {hook: 1}
    assert counts.duplicates == {hook: 2}
    assert counts.duplicates_explained == {hook: 1}
    assert counts.duplicates_unexplained == {hook: 1}
    assert counts.unexplained_arrivals == {hook: {"early": [50.0, 60.0]}}
    assert counts.unexpected_ids == {hook: 1}  # delivered, never answered 200


def test_the_verdict_fails_a_loss_only_when_replicas_were_required() -> None:
    assert verdict(1, 100, {"hook": 0, "file": 0}, split_brain=False)
    assert not verdict(1, 100, {"hook": 1, "file": 0}, split_brain=False)
    assert verdict(0, 100, {"hook": 3, "file": 3}, split_brain=False)  # the setting's risk, reported
    assert not verdict(0, 100, {"hook": 0}, split_brain=True)
    assert not verdict(1, 0, {"hook": 0}, split_brain=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--failover", "--min-replicas", "2"], "--min-replicas 2: the failover layout has one replica (0 or 1)"),
        (["--failover", "--min-replicas", "-1"], "--min-replicas -1: the failover layout has one replica"),
        (["--failover", "--duration", "10"], "--failover needs --duration of at least 15"),
        (["--failover", "--redis-outage", "2"], "--redis-outage does not apply to --failover"),
        (["--failover", "--random-kills", "2"], "--random-kills does not apply to --failover"),
        (["--failover", "--rejoin-after", "5", "--no-rejoin"], "--rejoin-after and --no-rejoin contradict"),
        (["--failover", "--rejoin-after", "-1"], "--rejoin-after -1 must be from 0 to --duration (60)"),
        (["--min-replicas", "1"], "--min-replicas applies only to --failover"),
        (["--no-rejoin"], "--no-rejoin applies only to --failover"),
    ],
)
def test_bad_failover_arguments_are_refused_naming_the_problem(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "soak", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


@pytest.mark.slow
def test_a_failover_with_min_replicas_1_loses_nothing_answered_200() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "commands", "soak", "--failover", "--json", "--min-replicas", "1",
            "--duration", "20", "--rate", "40", "--seed", "5", "--layout", "roles", "--drain-timeout", "120",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )  # fmt: skip
    assert done.stdout, done.stderr
    report = json.loads(done.stdout)
    shown = json.dumps(report, indent=1)
    assert report["min_replicas"] == 1 and report["seed"] == 5
    assert report["appendfsync"] == {"primary": "always", "replica": "always"}
    assert report["repl_diskless_sync_delay"] == 0
    accepted = report["events_accepted"]
    assert accepted > 300 and report["accepted_before_kill"] > 0, shown
    assert report["lost"] == {"soak-hook": 0, "soak-file": 0}, shown
    for destination in ("soak-hook", "soak-file"):
        assert report["delivered"][destination] + report["lost"][destination] == accepted
        assert report["lost_events"][destination] == []
        assert (
            report["duplicates_explained"][destination] + report["duplicates_unexplained"][destination]
            == report["duplicates"][destination]
        )
        assert isinstance(report["recovery_seconds"][destination], float), shown
    assert (
        report["statuses"].get("200", 0)
        + report["statuses"].get("503", 0)
        + report["statuses"].get("connection error", 0)
        == report["requests"]
    ), shown
    # The kill, the promotion and the rejoin, in that order; the old primary back as a replica.
    faults = [f["fault"] for f in report["faults"]]
    assert faults[:3] == ["primary SIGKILLed", "replica promoted", "old primary started again"], faults
    assert report["split_brain"] is False
    assert report["old_primary"].startswith("replica of 127.0.0.1:") and report["old_primary"].endswith("link up")
    assert 0 < report["promoted_after_kill"] < report["rejoined_after_kill"] <= report["in_sync_after_kill"]
    # Until the old primary is back, the new one has no replica for WAITAOF: the edge answers 503,
    # then 200 again once the replica is in sync.
    outage = report["outage"]
    assert outage["answers_503"] > 0, shown
    assert outage["answers_503"] + outage["answers_503_before_kill"] == report["statuses"]["503"], shown
    assert outage["seconds_with_503"] > 0 and outage["first_503_after_kill"] < report["promoted_after_kill"]
    assert outage["first_200_after_kill"] is not None
    assert outage["first_200_after_kill"] >= report["in_sync_after_kill"] - 0.5, shown
    assert report["ok"] is True and done.returncode == 0
