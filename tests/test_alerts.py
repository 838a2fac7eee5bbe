"""Alert rules: the pure transitions of each kind (trackpipe.alerts), and the console's evaluator
(console.alerting) against a real valkey, posting to a real HTTP receiver once on fire and once on
resolve."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import redis

from console.alerting import Evaluator, delete_rule, load_firings, load_states, save_rule
from tests.support import HookServer, Reply, closed_url, poll_until
from trackpipe.alerts import (
    INGEST_TARGET,
    AlertError,
    AlertRule,
    Firing,
    Reading,
    RuleState,
    check_rule,
    evaluate,
    mask_url,
    slack_body,
)
from trackpipe.config import parse
from trackpipe.keys import KeyLayout

LAYOUT = KeyLayout()
HOOK_TOKEN = "T000/B000/secret-hook-token"


def rule(kind: str, threshold: float, target: str = "crm", window: int = 5, url: str = "") -> AlertRule:
    return AlertRule(
        id="r1",
        name=f"{kind} rule",
        kind=kind,  # type: ignore[arg-type]
        target=target,
        threshold=threshold,
        window_minutes=window,
        webhook_url=url or f"https://hooks.example.com/services/{HOOK_TOKEN}",
    )


def run(r: AlertRule, readings: list[Reading]) -> list[tuple[str, str | None, float]]:
    """(status, transition event, value) after each reading, the state carried along."""
    state: RuleState | None = None
    seen = []
    for reading in readings:
        state, transition = evaluate(r, state, reading)
        state = msgspec.json.decode(msgspec.json.encode(state), type=RuleState)  # as stored in Redis
        seen.append((state.status, transition.event if transition else None, round(state.value or 0.0, 3)))
    return seen


# -- pure transitions ------------------------------------------------------------------------


def test_failure_rate_fires_once_and_resolves_once() -> None:
    r = rule("failure_rate", 10)
    seen = run(
        r,
        [
            Reading(at=0, outcomes={"delivered": 10, "queued": 10}),
            Reading(at=15, outcomes={"delivered": 8, "retried": 1, "dead_lettered": 1, "filtered": 50}),
            Reading(at=30, outcomes={"delivered": 8, "retried": 2, "dead_lettered": 2}),
            Reading(at=45, outcomes={"delivered": 9, "retried": 1}),  # exactly 10 %: not over
            Reading(at=60, outcomes={}),  # no traffic: nothing fails
        ],
    )
    assert seen == [
        ("ok", None, 0.0),
        ("firing", "firing", 20.0),  # filtered events are no attempts
        ("firing", None, 33.333),
        ("ok", "resolved", 10.0),
        ("ok", None, 0.0),
    ]


def test_dlq_size_over_zero() -> None:
    r = rule("dlq_size", 0)
    assert run(r, [Reading(at=0, dlq=0), Reading(at=15, dlq=1), Reading(at=30, dlq=3), Reading(at=45, dlq=0)]) == [
        ("ok", None, 0.0),
        ("firing", "firing", 1.0),
        ("firing", None, 3.0),
        ("ok", "resolved", 0.0),
    ]


def test_dlq_growth_compares_with_the_length_a_window_ago() -> None:
    r = rule("dlq_growth", 2, window=5)
    seen = run(
        r,
        [
            Reading(at=0, dlq=3),
            Reading(at=60, dlq=4),  # +1 since the first sample (less than a window watched)
            Reading(at=120, dlq=6),  # +3 > 2
            Reading(at=400, dlq=7),  # 5 min ago (t<=100) it was 4: +3
            Reading(at=500, dlq=7),  # at t<=200 it was 6: +1
            Reading(at=515, dlq=0),  # replayed: shrinking is no growth
            Reading(at=530, dlq=2),  # growth counts from what is left, not from 7
            Reading(at=545, dlq=3),
        ],
    )
    assert seen == [
        ("ok", None, 0.0),
        ("ok", None, 1.0),
        ("firing", "firing", 3.0),
        ("firing", None, 3.0),
        ("ok", "resolved", 1.0),
        ("ok", None, 0.0),
        ("ok", None, 2.0),
        ("firing", "firing", 3.0),
    ]


def test_dlq_growth_history_stays_bounded() -> None:
    r = rule("dlq_growth", 100, window=1)
    state: RuleState | None = None
    for i in range(200):
        state, _ = evaluate(r, state, Reading(at=i * 15.0, dlq=i))
    assert state is not None and len(state.history) <= 6  # one window of 15 s samples and its baseline
    assert state.value == 4.0  # 60 s ago it held 4 fewer


def test_lag_of_a_queue() -> None:
    r = rule("lag", 30, target=INGEST_TARGET)
    seen = run(r, [Reading(at=0), Reading(at=15, lag_seconds=12.5), Reading(at=30, lag_seconds=45), Reading(at=45)])
    assert seen == [("ok", None, 0.0), ("ok", None, 12.5), ("firing", "firing", 45.0), ("ok", "resolved", 0.0)]


def test_invalid_share_from_cumulative_counters() -> None:
    r = rule("invalid_share", 20, target="shop-web", window=5)
    seen = run(
        r,
        [
            Reading(at=0, statuses={"VALID": 1000, "INVALID_ACCEPTED": 500}),  # history before: not counted
            Reading(at=60, statuses={"VALID": 1010, "INVALID_ACCEPTED": 505, "INVALID_REJECTED": 5}),
            Reading(at=120, statuses={"VALID": 1090, "INVALID_ACCEPTED": 505, "INVALID_REJECTED": 5}),
            # the window (5 min) moves past the invalid burst: only t>=120 counts
            Reading(at=420, statuses={"VALID": 1190, "INVALID_ACCEPTED": 505, "INVALID_REJECTED": 5}),
            # counters deleted and counting again: history restarts instead of a negative share
            Reading(at=435, statuses={"VALID": 1, "INVALID_REJECTED": 1}),
            Reading(at=450, statuses={"VALID": 2, "INVALID_REJECTED": 9}),
        ],
    )
    assert seen == [
        ("ok", None, 0.0),
        ("firing", "firing", 50.0),  # 10 of 20
        ("ok", "resolved", 10.0),  # 10 of 100
        ("ok", None, 0.0),
        ("ok", None, 0.0),
        ("firing", "firing", 88.889),  # 8 of 9 since the restart
    ]


def test_editing_what_a_rule_watches_starts_its_history_afresh() -> None:
    r = rule("dlq_growth", 0, window=5)
    state, _ = evaluate(r, None, Reading(at=0, dlq=10))
    other = msgspec.structs.replace(r, target="lake")
    state, transition = evaluate(other, state, Reading(at=15, dlq=50))
    assert transition is None and state.value == 0.0  # not "grew by 40": another DLQ
    state, transition = evaluate(other, state, Reading(at=30, dlq=51))
    assert transition is not None and transition.event == "firing" and state.value == 1.0


def test_messages_and_the_slack_body() -> None:
    r = rule("dlq_size", 0, target="crm")
    state, transition = evaluate(r, RuleState(), Reading(at=100, dlq=2))
    assert transition is not None
    assert transition.message == "DLQ of destination crm holds 2 dead letters, above the threshold of 0 dead letters"
    body = slack_body(
        r, Firing(rule_id=r.id, rule_name=r.name, event="firing", at=100, value=2, message=transition.message)
    )
    assert body["text"].startswith(":rotating_light: FIRING [trackpipe] dlq_size rule: DLQ of destination crm holds 2")
    assert body["blocks"][0]["type"] == "section" and "FIRING" in body["blocks"][0]["text"]["text"]
    assert body["blocks"][1]["elements"][0]["text"] == "rule: DLQ size over 0 dead letters, destination crm"
    assert HOOK_TOKEN not in json.dumps(body)
    _, resolved = evaluate(r, state, Reading(at=115, dlq=0))
    assert resolved is not None and resolved.message.endswith("back at or below the threshold of 0 dead letters")


def test_webhook_urls_are_masked_and_checked() -> None:
    assert mask_url("https://hooks.slack.com/services/T0/B0/xyz?token=1") == "https://hooks.slack.com/…"
    assert mask_url("http://127.0.0.1:9999/hook") == "http://127.0.0.1:9999/…"
    assert mask_url("not a url") == "(invalid URL)"
    known = ({"crm"}, {"shop-web"})
    assert check_rule(rule("dlq_size", 0, url=" https://x.example/h "), *known).webhook_url == "https://x.example/h"
    cases = {
        "webhook_url: must be an http": rule("dlq_size", 0, url="ftp://x.example/h"),
        "webhook_url: must not contain spaces": rule("dlq_size", 0, url="https://x.example/a b"),
        "webhook_url: not a URL": rule("dlq_size", 0, url="https://x.example:99999999/"),
        "target: 'nope' is not a destination": rule("dlq_size", 0, target="nope"),
        "target: 'crm' is not a source": rule("invalid_share", 5, target="crm"),
        "target: 'shop-web' is neither the ingest queue": rule("lag", 5, target="shop-web"),
        "threshold: a percentage": rule("failure_rate", 101),
        "threshold: must be a number from 0": rule("lag", float("nan"), target=INGEST_TARGET),
        "window_minutes: must be from 1": rule("dlq_growth", 1, window=0),
    }
    for expected, bad in cases.items():
        with pytest.raises(AlertError, match=expected.replace("(", r"\(")):
            check_rule(bad, *known)
    with pytest.raises(AlertError, match="name: required"):
        check_rule(msgspec.structs.replace(rule("lag", 1, target=INGEST_TARGET), name="  "), *known)


# -- the evaluator against a real valkey -----------------------------------------------------


def make_config(valkey_url: str, tmp_path: Path):
    return parse(
        f"""
redis_url = "{valkey_url}"
admin_token = "admin-token-0123456789"
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["test-key-0123456789"]
[[destinations]]
id = "crm"
type = "webhook"
url = "http://127.0.0.1:9/hook"
[[destinations]]
id = "lake"
type = "file"
path = "{tmp_path / "lake"}"
"""
    )


def stored_rule(client: redis.Redis, kind: str, threshold: float, url: str, target: str = "crm", rid: str = "r1"):
    r = msgspec.structs.replace(rule(kind, threshold, target=target, url=url), id=rid)
    assert save_rule(client, LAYOUT, r)
    return r


def slack_posts(server: HookServer) -> list[dict]:
    return [json.loads(r.body) for r in server.requests()]


def test_evaluator_posts_once_on_fire_and_once_on_resolve(
    valkey_url: str, valkey_client: redis.Redis, tmp_path: Path
) -> None:
    config = make_config(valkey_url, tmp_path)
    with HookServer(Reply(200)) as hook:
        stored_rule(valkey_client, "dlq_size", 0, hook.url + "/" + HOOK_TOKEN)
        evaluator = Evaluator(config, valkey_client, interval=15)
        try:
            assert evaluator.run_once() == 1
            assert hook.requests() == []  # ok from the start: nothing to announce
            valkey_client.lpush(LAYOUT.dlq("crm"), b'{"event_id":"e1"}')
            for _ in range(3):
                evaluator.run_once()
            posts = slack_posts(hook)
            assert len(posts) == 1, posts
            assert posts[0]["text"].startswith(
                ":rotating_light: FIRING [trackpipe] dlq_size rule: DLQ of destination crm"
            )
            assert [b["type"] for b in posts[0]["blocks"]] == ["section", "context"]
            assert hook.requests()[0].headers["content-type"] == "application/json"
            state = load_states(valkey_client, LAYOUT)["r1"]
            assert (state.status, state.value, state.last_error) == ("firing", 1.0, None)

            valkey_client.delete(LAYOUT.dlq("crm"))
            for _ in range(3):
                evaluator.run_once()
            posts = slack_posts(hook)
            assert len(posts) == 2
            assert posts[1]["text"].startswith(":white_check_mark: RESOLVED [trackpipe] dlq_size rule")
            firings = load_firings(valkey_client, LAYOUT)
            assert [(f.event, f.posted, f.error) for f in firings] == [("resolved", True, None), ("firing", True, None)]
        finally:
            evaluator.stop()


def test_a_failed_post_is_recorded_and_the_loop_goes_on(
    valkey_url: str, valkey_client: redis.Redis, tmp_path: Path
) -> None:
    config = make_config(valkey_url, tmp_path)
    with HookServer(Reply(500, b"nope")) as hook:
        stored_rule(valkey_client, "dlq_size", 0, hook.url + "/" + HOOK_TOKEN, rid="bad500")
        stored_rule(valkey_client, "dlq_size", 0, closed_url() + "/" + HOOK_TOKEN, rid="unreachable")
        stored_rule(valkey_client, "lag", 0, hook.url, target=INGEST_TARGET, rid="quiet")
        valkey_client.lpush(LAYOUT.dlq("crm"), b'{"event_id":"e1"}')
        evaluator = Evaluator(config, valkey_client, interval=15)
        try:
            assert evaluator.run_once() == 3
            states = load_states(valkey_client, LAYOUT)
            assert states["bad500"].status == "firing"
            assert states["bad500"].last_error == f"HTTP 500 from {mask_url(hook.url)}"
            assert states["unreachable"].last_error is not None
            assert states["unreachable"].last_error.startswith("connection error: ConnectError (http://127.0.0.1:")
            assert states["quiet"].status == "ok"
            errors = {f.rule_id: f.error for f in load_firings(valkey_client, LAYOUT)}
            assert set(errors) == {"bad500", "unreachable"}
            stored = valkey_client.lrange(LAYOUT.alert_firings, 0, -1) + valkey_client.hvals(LAYOUT.alert_state)
            assert not any(HOOK_TOKEN.encode() in raw for raw in stored)  # the URL's token is never kept
            assert len(hook.requests()) == 1  # not re-posted on the next pass either
            evaluator.run_once()
            assert len(hook.requests()) == 1
        finally:
            evaluator.stop()


def test_lag_rule_reads_the_oldest_waiting_job(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path) -> None:
    config = make_config(valkey_url, tmp_path)
    with HookServer(Reply(200)) as hook:
        stored_rule(valkey_client, "lag", 60, hook.url, target=INGEST_TARGET)
        evaluator = Evaluator(config, valkey_client, interval=15)
        try:
            now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
            valkey_client.rpush(LAYOUT.queue("ingest"), b"job-old")
            valkey_client.hset(f"{LAYOUT.rq_prefix}:job:job-old", "enqueued_at", "2030-01-01T11:58:00.000000Z")
            evaluator.run_once(now=now)
            state = load_states(valkey_client, LAYOUT)["r1"]
            assert (state.status, state.value) == ("firing", 120.0)
            assert "oldest waiting job of the ingest queue has waited 120 s" in slack_posts(hook)[0]["text"]
        finally:
            evaluator.stop()


def test_one_evaluator_at_a_time_and_deleted_rules_stay_deleted(
    valkey_url: str, valkey_client: redis.Redis, tmp_path: Path
) -> None:
    config = make_config(valkey_url, tmp_path)
    first = Evaluator(config, valkey_client, interval=15)
    second = Evaluator(config, valkey_client, interval=15)
    try:
        stored_rule(valkey_client, "dlq_size", 5, "http://127.0.0.1:9/h")
        assert first.run_once() == 1
        assert second.run_once() is None  # the first holds the lock
        first.stop()  # releases it
        assert second.run_once() == 1
        assert delete_rule(valkey_client, LAYOUT, "r1")
        # a pass that read the rule before its deletion does not bring its state back
        second._check(rule("dlq_size", 5), None, 0.0)
        assert load_states(valkey_client, LAYOUT) == {}
    finally:
        first.stop()
        second.stop()


def test_the_evaluator_thread_runs_by_itself(valkey_url: str, valkey_client: redis.Redis, tmp_path: Path) -> None:
    config = make_config(valkey_url, tmp_path)
    with HookServer(Reply(200)) as hook:
        valkey_client.hset(LAYOUT.alert_rules, "broken", b"{not json")  # skipped, not fatal
        stored_rule(valkey_client, "invalid_share", 50, hook.url, target="shop-web")
        evaluator = Evaluator(config, valkey_client, interval=0.2)
        evaluator.start()
        try:
            poll_until(lambda: "r1" in load_states(valkey_client, LAYOUT), 30, "no first pass")
            valkey_client.hset(LAYOUT.source_stats("shop-web"), mapping={"VALID": 1, "INVALID_REJECTED": 3})
            poll_until(lambda: hook.requests(), 30, "no post after the INVALID share rose")
            assert "INVALID share of source shop-web is 75 %" in slack_posts(hook)[0]["text"]
        finally:
            evaluator.stop()
        assert not evaluator._thread.is_alive()  # type: ignore[union-attr]
