"""Event specifications end to end: a real edge, a real worker and a webhook receiver. Three sources
share one tracking plan but choose differently for each of the four rule actions; one event per
case shows what arrives at the destination (or not) and what the inspector says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support import HookServer, poll_until, running_edge, start_worker, stop_worker
from trackpipe.keys import KeyLayout

DEADLINE = 60.0
KEYS = {"lenient": "lenient-key-0123456789", "strict": "strict-key-0123456789", "relaxed": "relaxed-key-0123456789"}
RULES = {
    # The defaults, but unspecified events and properties warned about / omitted.
    "lenient": {"unspecified_events": "warn", "unspecified_properties": "omit"},
    "strict": {
        "missing_required": "reject",
        "unexpected_format": "reject",
        "unspecified_events": "reject",
        "unspecified_properties": "warn",
    },
    "relaxed": {"unexpected_format": "accept", "unspecified_events": "accept", "unspecified_properties": "accept"},
}
PLAN = """
[[sources.spec.events]]
name = "newsletter_signup"
[[sources.spec.events.properties]]
path = "plan"
type = "string"
required = true
values = ["free", "pro"]
[[sources.spec.events.properties]]
path = "items[].product.name"
type = "string"
[[sources.spec.events]]
name = "purchase"
[[sources.spec.events.properties]]
path = "coupon"
type = "string"
"""


def write_config(tmp_path: Path, redis_url: str, hook: HookServer) -> Path:
    text = f'redis_url = "{redis_url}"\n[inspector]\nper_name_per_minute = 1000\n'
    for source_id, rules in RULES.items():
        text += f'[[sources]]\nid = "{source_id}"\nsite_id = "29"\nkeys = ["{KEYS[source_id]}"]\n[sources.spec]\n'
        text += "".join(f'{rule} = "{choice}"\n' for rule, choice in rules.items()) + PLAN
    text += f'[[destinations]]\nid = "hook"\ntype = "webhook"\nurl = "{hook.url}"\n'
    text += "retry = { max_attempts = 20, backoff_seconds = [0.5, 1] }\n"
    path = tmp_path / "trackpipe.toml"
    path.write_text(text)
    return path


def signup(event_id: str, **props: Any) -> dict[str, Any]:
    # Everything the checks of every event want, so that only the case at hand is found.
    return {
        "event_name": "newsletter_signup",
        "context": {"event_id": event_id, "event_timestamp": 1_700_000_000_000},
        "user": {"id": "u1", "consistent_anonymous_id": "anon-1", "consent_categories": ["1"]},
        **props,
    }


def other(event_id: str, **props: Any) -> dict[str, Any]:
    return {**signup(event_id, **props), "event_name": "quiz_answered"}


def purchase(event_id: str, **props: Any) -> dict[str, Any]:
    item = {"id": "sku-1", "quantity": 1, "product": {"name": "T-shirt", "price": 20}}
    complete = {
        "id": "order-1",
        "type": "online",
        "value": 20,
        "revenue": 16.7,
        "payment_method": "card",
        "currency": "EUR",
        "status": "pending",
        "items": [item],
    }
    return {**signup(event_id, **{**complete, **props}), "event_name": "purchase"}


ENVELOPE = ("event_name", "context", "user")


def props(event: dict[str, Any], *removed: str) -> dict[str, Any]:
    """The event's own properties (not the envelope), less those the rules remove."""
    return {k: v for k, v in event.items() if k not in ENVELOPE and k not in removed}


class Case:
    def __init__(
        self,
        source: str,
        event: dict[str, Any],
        status: str,
        arrives: dict[str, Any] | None,  # the properties the destination gets; None: not delivered
        *,
        warnings: tuple[str, ...] = (),  # texts the inspector's warnings (errors) must contain
        errors: tuple[str, ...] = (),
    ) -> None:
        self.source, self.event, self.status, self.arrives = source, event, status, arrives
        self.warnings, self.errors = warnings, errors
        self.event_id: str = event["context"]["event_id"]


ITEMS = [{"product": {"name": "Guide"}}, {"product": {"name": 12}}]
BAD_CURRENCY = purchase("l-standard", currency="euro", coupon="WELCOME")
CASES = [
    # lenient: missing accepted with a warning, bad formats omitted, unspecified events warned about,
    # unspecified properties omitted.
    Case("lenient", signup("l-valid", plan="pro", items=ITEMS[:1]), "VALID", {"plan": "pro", "items": ITEMS[:1]}),
    Case(
        "lenient",
        signup("l-format", plan="gold", items=ITEMS),
        "INVALID_ACCEPTED",
        {"items": [{"product": {"name": "Guide"}}, {"product": {}}]},
        warnings=(
            "plan 'gold' is not one of the specified values ('free', 'pro'); removed",
            "items[1].product.name is a number, not a string as specified; removed",
        ),
    ),
    Case("lenient", signup("l-missing"), "INVALID_ACCEPTED", {}, warnings=("plan is missing",)),
    Case(
        "lenient",
        signup("l-unspecified-property", plan="free", referrer="ad"),
        "INVALID_ACCEPTED",
        {"plan": "free"},
        warnings=("referrer is not in the specification of 'newsletter_signup'; removed",),
    ),
    Case(
        "lenient",
        other("l-unspecified-event", answer=3),
        "INVALID_ACCEPTED",
        {"answer": 3},
        warnings=("event 'quiz_answered' is not in the source's specification",),
    ),
    # A standard event's own finding, decided by the source's rules (omitted here).
    Case(
        "lenient",
        BAD_CURRENCY,
        "INVALID_ACCEPTED",
        props(BAD_CURRENCY, "currency"),
        warnings=("currency 'euro' is not a three-letter ISO 4217 code; removed",),
    ),
    # strict: everything rejects, but unspecified properties are only warned about.
    Case("strict", signup("s-valid", plan="free"), "VALID", {"plan": "free"}),
    Case(
        "strict", signup("s-missing"), "INVALID_REJECTED", None, errors=("plan is missing", "missing_required = reject")
    ),
    Case(
        "strict",
        signup("s-format", plan=2),
        "INVALID_REJECTED",
        None,
        errors=("plan is a number, not a string as specified (unexpected_format = reject)",),
    ),
    Case(
        "strict",
        signup("s-items", plan="free", items=ITEMS),
        "INVALID_REJECTED",
        None,
        errors=("items[1].product.name is a number, not a string as specified (unexpected_format = reject)",),
    ),
    Case(
        "strict",
        other("s-unspecified-event"),
        "INVALID_REJECTED",
        None,
        errors=("event 'quiz_answered' is not in the source's specification (unspecified_events = reject)",),
    ),
    Case(
        "strict",
        signup("s-unspecified-property", plan="pro", referrer="ad"),
        "INVALID_ACCEPTED",
        {"plan": "pro", "referrer": "ad"},
        warnings=("referrer is not in the specification of 'newsletter_signup'",),
    ),
    Case(
        "strict",
        purchase("s-standard", value="20"),
        "INVALID_REJECTED",
        None,
        errors=("value '20' is not a number (unexpected_format = reject)",),
    ),
    # relaxed: bad formats kept with a warning, anything unspecified accepted silently.
    Case(
        "relaxed",
        signup("r-format", plan=2),
        "INVALID_ACCEPTED",
        {"plan": 2},
        warnings=("plan is a number, not a string as specified",),
    ),
    Case("relaxed", other("r-unspecified-event", answer=3), "VALID", {"answer": 3}),
    Case(
        "relaxed",
        signup("r-unspecified-property", plan="pro", referrer="ad"),
        "VALID",
        {"plan": "pro", "referrer": "ad"},
    ),
]


def inspector(conn: redis.Redis, source: str) -> dict[str, dict[str, Any]]:
    return {
        record["event_id"]: record
        for record in (json.loads(raw) for raw in conn.lrange(KeyLayout().inspector(source), 0, -1))
    }


def delivered(hook: HookServer) -> dict[str, dict[str, Any]]:
    return {
        event["context"]["event_id"]: event
        for request in hook.requests()
        if request.status == 200
        for event in json.loads(request.body)["batch"]
    }


@pytest.mark.slow
def test_each_rule_action_through_the_edge_and_a_worker(tmp_path: Path, valkey_url: str) -> None:
    conn = redis.Redis.from_url(valkey_url)
    with HookServer() as hook:
        config = write_config(tmp_path, valkey_url, hook)
        worker = start_worker(config, "--queues", "all", log=tmp_path / "worker.log")
        try:
            with running_edge(config) as base:
                for case in CASES:
                    response = httpx.post(
                        f"{base}/events",
                        params={"tc_s": "29", "token": KEYS[case.source]},
                        json=case.event,
                        timeout=10,
                    )
                    assert response.status_code == 200, response.text

                def seen() -> int:
                    return sum(len(inspector(conn, source)) for source in RULES)

                poll_until(lambda: seen() == len(CASES), DEADLINE, lambda: f"{seen()} of {len(CASES)} in the inspector")
                expected = {case.event_id for case in CASES if case.arrives is not None}
                poll_until(
                    lambda: set(delivered(hook)) >= expected,
                    DEADLINE,
                    lambda: f"delivered {sorted(delivered(hook))}, expected {sorted(expected)}",
                )
        finally:
            stop_worker(worker)
    arrived = delivered(hook)
    assert set(arrived) == expected  # rejected events never reach the destination
    records = {source: inspector(conn, source) for source in RULES}
    for case in CASES:
        record = records[case.source][case.event_id]
        where = f"{case.source}/{case.event_id}: {record}"
        assert record["status"] == case.status, where
        for text in case.warnings:
            assert any(text in w for w in record["warnings"]), where
        for text in case.errors:
            assert any(text in e for e in record["errors"]), where
        if case.status == "VALID":
            assert record["warnings"] == [] and record["errors"] == [], where
        if case.arrives is None:
            assert record["destinations"] == {} and record["errors"], where
            assert case.event_id not in arrived
            continue
        assert record["destinations"] == {"hook": "queued"}, where
        got = arrived[case.event_id]
        assert props(got) == case.arrives, where
        assert got["event_name"] == case.event["event_name"] and got["user"] == case.event["user"], where
