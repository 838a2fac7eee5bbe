"""A varied, deterministic corpus of ingest jobs and what the pure half of the ingest job makes of
it (events, statuses, warnings, deliveries, inspector records, quality counters): the guard that a
faster worker changes nothing a destination, the inspector or the console sees
(tests/test_worker_golden.py compares against tests/data/worker_golden.json)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import msgspec

from trackpipe.config import Config, parse
from trackpipe.keys import KeyLayout
from trackpipe.messages import IngestBatch, IngestRecord, encode_batch

CONFIG_TOML = """
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["shop-web-key-0123"]

[[sources]]
id = "app"
site_id = "29"
keys = ["app-key-01234567"]
on_invalid = "reject"

[[sources]]
id = "planned"
site_id = "30"
keys = ["planned-key-0123"]
dedup_window_seconds = 3600
[sources.spec]
missing_required = "reject"
unexpected_format = "omit"
unspecified_events = "warn"
unspecified_properties = "omit"
[[sources.spec.events]]
name = "purchase"
[[sources.spec.events.properties]]
path = "coupon"
type = "string"
[[sources.spec.events.properties]]
path = "items[].product.category"
type = "string"
values = ["home", "garden"]
[[sources.spec.events]]
name = "page_view"
[[sources.spec.events.properties]]
path = "page_name"
type = "string"
required = true

[[sources]]
id = "nodedup"
site_id = "31"
keys = ["nodedup-key-0123"]
dedup = false

[inspector]
events_per_source = 50
per_name_per_minute = 2
test_events_per_minute = 1

[[destinations]]
id = "crm-hook"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
events = ["purchase", "sign_up"]
consent_category = "3"

[[destinations]]
id = "lake.eu"
type = "file"
path = "/tmp/trackpipe-lake"
sources = ["shop-web", "planned"]

[[destinations]]
id = "big-spenders"
type = "file"
path = "/tmp/trackpipe-big"
[destinations.filters]
match = "all"
[[destinations.filters.conditions]]
path = "value"
op = "greater_than"
value = 40
[[destinations.filters.conditions]]
path = "items[].product.name"
op = "not_equals"
value = "Banned"

[[destinations]]
id = "all-file"
type = "file"
path = "/tmp/trackpipe-all"
"""

BASE_MS = 1_700_000_000_000
USER = {"id": "7", "consistent_anonymous_id": "ca-7", "consent_categories": ["1", "3"]}


def config() -> Config:
    return parse(CONFIG_TOML, env={})


def _purchase(rng: random.Random, n: int) -> dict[str, Any]:
    items = [
        {
            "id": f"SKU-{k}",
            "quantity": rng.choice([1, 2, "3"]),
            "product": {
                "name": rng.choice(["Mug", "Banned"]),
                "price": 35,
                "category": rng.choice(["home", "garden", "toys"]),
            },
        }
        for k in range(rng.choice([1, 1, 2, 4]))
    ]
    event: dict[str, Any] = {
        "event_name": "purchase",
        "id": f"O-{n}",
        "value": rng.choice([42.5, 12, "cheap", 99]),
        "revenue": 35,
        "currency": rng.choice(["EUR", "EUR", "eur"]),
        "type": "online",
        "payment_method": rng.choice(["card", "card", "bitcoin"]),
        "status": rng.choice(["pending", "pending", "lost"]),
        "user": dict(USER),
        "items": items,
        "context": {
            "event_id": f"p-{n}",
            "event_timestamp": BASE_MS + n,
            "page": {"url": "https://x/ok"},
            "device": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0"},
        },
    }
    if rng.random() < 0.2:
        event["coupon"] = rng.choice(["SAVE", 10])
    if rng.random() < 0.1:
        event["shipping"] = "free"
    return event


def _page_view(rng: random.Random, n: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "page_view",
        "page_type": rng.choice(["home", "product", ""]),
        "user": rng.choice([dict(USER), {"id": "8"}, {"consistent_anonymous_id": "ca-9", "consent_categories": "1,3"}]),
        "context": {
            "event_id": f"pv-{n}",
            "event_timestamp": rng.choice([BASE_MS, "2023-11-14T22:13:20Z", "soon", 1700000000]),
        },
    }
    if rng.random() < 0.3:
        event["page_name"] = "Home"
    if rng.random() < 0.2:
        event["context"]["test_code"] = "T-1"
    return event


def _v1(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "event_name": rng.choice(["sign_up", "login", "newsletter"]),
        "event_id": n if rng.random() < 0.5 else f"v1-{n}",
        "event_timestamp": rng.choice([1700000000, "1700000000000"]),
        "properties": {"user": {"consistent_anonymous_id": "ca-1", "consent_categories": [1, 3.0]}, "method": "email"},
        "page": {"location": "https://x/signup"},
        "device": {"ip": "2001:db8::1"},
    }


def _odd(rng: random.Random, n: int) -> bytes:
    return rng.choice(
        [
            b"{not json",
            b"[1, 2]",
            b'{"context": {"event_id": "no-name-%d"}}' % n,
            b'{"event_name": "", "context": {}}',
            b'{"event_name": "custom_thing", "user": {"consistent_anonymous_id": "x"}, "n": 1e999}',
            b'{"event_name": "custom_thing", "user": {"consistent_anonymous_id": "x"}, "context": 5}',
            b'{"event_name": "video_start", "video_session_id": "s", "cursor_position": "1", "total_length": null,'
            b' "full_screen": "yes", "user": {"consistent_anonymous_id": "x"}, "device": {"ip": "10.0.0.9"}}',
            b'{"event_name": "add_to_cart", "user": {"consistent_anonymous_id": "x", "consent_categories": [true]},'
            b' "items": [5, {"id": "a", "quantity": 1, "product": "p"}], "currency": "USD"}',
            '{"event_name": "caf\u00e9", "context": {"event_id": "unicode-%d", "test_code": 7}}'.encode() % n,
        ]
    )


def corpus(seed: int = 17, jobs: int = 4, requests_per_job: int = 12) -> list[tuple[str, bytes]]:
    """(job id, ingest payload) pairs: requests from four sources, v2 and v1, purchases with items,
    page views, invalid and odd events, resends of earlier events (within and across jobs)."""
    rng = random.Random(seed)
    sent: dict[str, list[bytes]] = defaultdict(list)
    out = []
    n = 0
    for j in range(jobs):
        records = []
        for _ in range(requests_per_job):
            source = rng.choice(["shop-web", "shop-web", "app", "planned", "nodedup", "unknown-src"])
            events = []
            for _ in range(rng.choice([1, 1, 3, 8])):
                n += 1
                kind = rng.random()
                if kind < 0.35:
                    body = msgspec.json.encode(_purchase(rng, n))
                elif kind < 0.6:
                    body = msgspec.json.encode(_page_view(rng, n))
                elif kind < 0.75:
                    body = msgspec.json.encode(_v1(rng, n))
                elif kind < 0.85 and sent[source]:
                    body = rng.choice(sent[source])  # a resend
                else:
                    body = _odd(rng, n)
                sent[source].append(body)
                events.append(body)
            ip = rng.choice([None, "203.0.113.7", "2001:db8::2"])
            agent = rng.choice([None, "curl/8"])
            records.append(IngestRecord(source, "29", BASE_MS + 1_000 * n, events, ip, agent))
        out.append((f"job-{j}", encode_batch(IngestBatch(records))))
    return out


class _RecordingPipe:
    """Stands in for the fan-out's pipeline: keeps the commands (as lists of str/int/bytes)."""

    def __init__(self) -> None:
        self.commands: list[list[Any]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(list(args))

    def hincrby(self, key: str, field: str, n: int) -> None:
        self.commands.append(["HINCRBY", key, field, n])

    def expire(self, key: str, ttl: int) -> None:
        self.commands.append(["EXPIRE", key, ttl])


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def outputs(payloads: list[tuple[str, bytes]], cfg: Config) -> list[dict[str, Any]]:
    """What the ingest job's pure steps make of each job, as plain JSON values. Duplicates are
    decided here as the dedup script would within this corpus (first (source, id) wins)."""
    import workers.ingest as ingest

    sources = {s.id: s for s in cfg.sources}
    layout = KeyLayout(cfg.key_prefix)
    seen: set[tuple[str, str]] = set()
    results = []
    for job_id, payload in payloads:
        events = ingest.decode_and_normalize(payload, job_id, sources)
        for item in events:
            if item.dedupable and (item.source_id not in sources or sources[item.source_id].dedup):
                key = (item.source_id, str(item.event_id))
                if key in seen:
                    item.status = ingest.EventStatus.DUPLICATE
                seen.add(key)
        plan = ingest.JobPlan.of(events, cfg)
        status_counts = plan.tally.statuses
        fan_out = plan.fan_out()
        pipe = _RecordingPipe()
        ingest._queue_inspector(pipe, layout, cfg.inspector, plan.inspected)
        ingest._queue_quality(pipe, layout, plan.tally)
        results.append(
            {
                "events": [
                    {
                        "source": e.source_id,
                        "status": e.status.value,
                        "event": e.event,
                        "warnings": e.warnings,
                        "errors": e.errors,
                        "event_id": e.event_id,
                        "dedupable": e.dedupable,
                    }
                    for e in events
                ],
                "statuses": sorted([*k, n] for k, n in status_counts.items()),
                "deliveries": {
                    d: [[x.event_id, x.event_name, x.body.decode(), x.received_at] for x in evs]
                    for d, evs in sorted(fan_out.deliveries.items())
                },
                "routes": fan_out.destinations_of,
                "filtered": dict(sorted(fan_out.filtered.items())),
                "filtered_consent": dict(sorted(fan_out.filtered_consent.items())),
                "commands": [_plain(c) for c in pipe.commands],
            }
        )
    return results
