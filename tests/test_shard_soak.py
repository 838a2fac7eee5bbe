"""The sharded run (`trackpipe soak --shards N`, tooling/shardsoak.py): N valkey servers, sources on
each, one edge and the worker supervisor under load while a shard's worker child is SIGKILLed and
one shard's server is SIGKILLed and restarted. Nothing accepted may be lost, 503s only for the
killed shard's sources, and every source's data on its own shard. Also the pure pieces of the run
(the config placing sources on every shard, the answers' classification, the placement checks) and
the refusals of bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT
from tooling.shardsoak import (
    DEDUP_BUCKETS,
    MAX_SHARDS,
    MIN_SHARDS,
    RECONNECT_GRACE_SECONDS,
    SHARD_NAMES,
    classify_answers,
    fault_plan,
    key_source,
    misplaced_keys,
    misplaced_marks,
    plan_sources,
    sharded_config,
)
from trackpipe.config import parse
from trackpipe.shards import assignment, pick
from workers.dedup import dedup_key


@pytest.mark.parametrize("count", range(MIN_SHARDS, MAX_SHARDS + 1))
def test_the_config_puts_sources_on_every_shard_pinned_and_hashed(tmp_path, count: int) -> None:
    names = list(SHARD_NAMES[:count])
    sources = plan_sources(names)
    urls = {name: f"redis://127.0.0.1:{7000 + i}/0" for i, name in enumerate(names)}
    config = parse(sharded_config(urls, sources, "http://127.0.0.1:9/hook", tmp_path / "out", False), env={})
    shard_of = assignment(config)
    assert len(sources) == 2 * count and len(shard_of) == 2 * count
    for name in names:
        on_it = [s for s in sources if shard_of[s.id] == name]
        pinned = [s for s in on_it if s.shard == name]
        hashed = [s for s in on_it if s.shard is None]
        assert len(pinned) == 1 and len(hashed) == 1, (name, on_it)
        # The pin is what puts it there: the hash alone would have chosen another shard.
        assert pick(names, pinned[0].id) != name
        assert pick(names, hashed[0].id) == name
    assert len({s.site for s in sources}) == len({s.key for s in sources}) == 2 * count
    assert [s.name for s in config.shards] == names
    assert config.dedup.buckets == DEDUP_BUCKETS
    assert [d.id for d in config.destinations] == ["soak-hook", "soak-file"]


def test_the_fault_plan_is_seeded_with_one_server_outage_and_worker_kills() -> None:
    names = ["a", "b", "c"]
    plan = fault_plan(5, names)
    assert plan == fault_plan(5, names)
    assert [f.kind for f in plan].count("server") == 1 and [f.kind for f in plan].count("worker") == 3
    assert all(f.shard in names and 0 < f.fraction < 1 for f in plan)
    assert [f.fraction for f in plan] == sorted(f.fraction for f in plan)
    assert any(fault_plan(seed, names) != plan for seed in range(6, 10))


def test_503s_of_the_down_shard_are_its_outage_and_any_other_503_is_a_failure() -> None:
    shard_of = {"s1": "a", "s2": "b"}
    down, restart, up = 100.0, 103.0, 103.5
    answers = {
        "s1": [
            (99.0, 99.5, "200"),
            (99.9, 100.1, "200"),  # written just before the kill: allowed
            (101.0, 101.0, "503"),
            (up + RECONNECT_GRACE_SECONDS - 1, 106.0, "503"),  # still reconnecting
            (102.0, 102.5, "200"),  # answered 200 while down: a failure
            (103.0, 103.2, "200"),  # restarting: it may answer before the start returns
            (120.0, 120.1, "503"),  # long after: a failure
        ],
        "s2": [(101.0, 101.1, "200"), (101.0, 101.2, "503")],  # b was up
    }
    counts = classify_answers(answers, shard_of, ("a", down, restart, up))
    assert counts["a"].statuses == {"200": 4, "503": 3}
    assert counts["a"].answers_503 == 3 and counts["a"].answers_503_in_outage == 2
    assert counts["a"].answers_503_while_up == 1 and counts["a"].answers_200_while_down == 1
    assert counts["b"].answers_503_while_up == 1 and counts["b"].answers_503_in_outage == 0


def test_key_source_reads_the_source_of_per_source_keys_only() -> None:
    assert key_source("trackpipe:stats:source:web") == "web"
    assert key_source("trackpipe:inspect:web") == "web"
    assert key_source("trackpipe:inspsample:web:2901") == "web"
    assert key_source("trackpipe:quality:msg:web:48") == "web"
    assert key_source("trackpipe:stats:dest:hook:2901") is None
    assert key_source("trackpipe:rq:queue:ingest") is None


def test_placement_names_keys_and_dedup_marks_on_the_wrong_shard_and_missing_ones() -> None:
    shard_of = {"s1": "a", "s2": "b"}
    keys = {
        "a": {"trackpipe:stats:source:s1", "trackpipe:inspect:s1", "trackpipe:inspsample:s2:5"},
        "b": {"trackpipe:stats:source:s2"},
    }
    problems = misplaced_keys(keys, shard_of)
    assert ("a", "trackpipe:inspsample:s2:5 on shard a (source s2 is on b)") in problems
    assert ("b", "trackpipe:inspect:s2 missing from shard b") in problems
    assert len(problems) == 2

    def mark(source: str, event_id: str) -> tuple[int, bytes]:
        key = dedup_key(source, event_id, DEDUP_BUCKETS)
        return key.bucket, key.field

    marks = {"a": {mark("s1", "e1"), mark("s2", "e3")}, "b": {mark("s2", "e3")}}
    checked, wrong = misplaced_marks(marks, {"s1": ["e1", "e2"], "s2": ["e3"]}, shard_of)
    assert checked == 3
    assert [text for _, text in wrong] == [
        "dedup mark of s1/e2 on no shard (its shard: a)",
        "dedup mark of s2/e3 on a, b (its shard: b)",
    ]


def soak(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commands", "soak", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "1"], "--shards 1: from 2 to 4"),
        (["--shards", "5"], "--shards 5: from 2 to 4"),
        (["--shards", "x"], "--shards: invalid int value: 'x'"),
        (["--shards", "2", "--failover"], "--shards and --failover are separate runs"),
        (["--shards", "2", "--redis-outage", "2"], "--redis-outage does not apply to --shards"),
        (["--shards", "2", "--min-replicas", "1"], "--min-replicas does not apply to --shards"),
        (["--shards", "2", "--layout", "roles"], "--layout does not apply to --shards"),
        (["--shards", "2", "--duration", "5"], "--shards needs --duration of at least 10"),
    ],
)
def test_shard_soak_refuses_bad_arguments(args: list[str], message: str) -> None:
    done = soak(*args)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.slow
def test_a_sharded_run_loses_nothing_and_keeps_every_source_on_its_shard() -> None:
    done = soak("--shards", "2", "--duration", "15", "--rate", "60", "--seed", "3", "--json", timeout=400)
    assert done.stdout, done.stderr
    report = json.loads(done.stdout)
    shown = json.dumps(report, indent=1)
    assert report["seed"] == 3 and report["shards"] == 2
    assert report["events_accepted"] > 500 and report["resend_requests"] > 0
    assert report["lost"] == {"soak-hook": 0, "soak-file": 0}, shown
    assert report["delivered"] == {"soak-hook": report["events_accepted"], "soak-file": report["events_accepted"]}
    # Resent ids were dropped by their shard's dedup: a repeat only where a fault explains it.
    assert report["duplicates_unexplained"] == {"soak-hook": 0, "soak-file": 0}, shown
    placement = report["placement"]
    assert placement["misplaced"] == 0, placement["examples"]
    assert placement["dedup_ids_checked"] == report["events_accepted"]
    assert placement["job_events_sampled"] > 0 and placement["source_keys_checked"] >= 8
    shards = {s["name"]: s for s in report["per_shard"]}
    assert set(shards) == {"a", "b"} and set(report["assignment"].values()) == {"a", "b"}
    killed = report["outage"]["shard"]
    for name, shard in shards.items():
        assert len(shard["sources"]) == 2 and len(shard["pinned"]) == 1
        assert shard["events_accepted"] > 0 and shard["answers_503_while_up"] == 0, shown
        assert shard["server_killed"] is (name == killed)
        # 503s only for the killed shard's sources.
        assert (shard["answers_503"] > 0) is (name == killed), shown
        assert shard["worker_starts"] >= 1 + shard["worker_kills"]  # the supervisor started it again
    assert report["outage"]["answers_200_while_down"] == 0 and report["outage"]["others_503"] == 0
    assert report["outage"]["others_200"] > 0  # the other shard's sources kept being accepted
    assert sum(s["worker_kills"] for s in shards.values()) == 3, report["faults"]
    assert report["ok"] is True
    assert done.returncode == 0
