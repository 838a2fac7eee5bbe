"""The worker's quick paths against the full ones they stand in for (pure, no Redis): the typed look
at standard events (workers.standard._fine) never passes an event the full check finds fault with,
the inspector's early cut keeps what plan_samples would send, the dedup claim built from ids
equals the one built from DedupKeys, and the fan-out, the inspector's candidates and the counts
gathered part by part equal those gathered at once."""

from __future__ import annotations

import copy
import functools
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis

from trackpipe.config import Config
from trackpipe.events import STANDARD_EVENTS, VIDEO_EVENTS
from trackpipe.keys import KeyLayout
from workers import standard
from workers.dedup import Deduplicator
from workers.ingest import (
    FanOutPlanner,
    InspectorCut,
    ProcessedEvent,
    Tally,
    decode_and_normalize,
    plan_fan_out,
)
from workers.inspector import plan_samples

USER = {"id": "7", "consistent_anonymous_id": "ca-7", "consent_categories": ["1", "3"]}
ITEM = {"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "price": 35, "currency": "EUR"}}
GOOD_VALUES: dict[str, Any] = {
    "user": USER,
    "items": [ITEM],
    "currency": "EUR",
    "value": 42.5,
    "revenue": 35,
    "payment_method": "card",
    "status": "pending",
    "total_length": 120,
    "full_screen": True,
    "sound": 3,
    "bitrate": 1200,
    "cursor_position": 0,
}
# Values each property may be given: good ones, and the ways producers get them wrong.
ODD_VALUES: list[Any] = [
    None, "", 0, 0.0, -1, 1.5, math.inf, -math.inf, math.nan, True, False, "x", "EUR", "eur", "EURO", "EUR\n",
    [], {}, [1], {"a": 1}, "card", "bitcoin", "pending", "lost", 10**30, "3",
]  # fmt: skip
KEYS = sorted(
    {k for required, conditional in STANDARD_EVENTS.values() for k in (*required, *conditional)}
    | {"tax", "shipping", "seek_position", "ad_enabled", "livestream", "status", "payment_method", "currency"}
)


def _good(name: str) -> dict[str, Any]:
    required, _ = STANDARD_EVENTS[name]
    event: dict[str, Any] = {"event_name": name, "context": {"event_id": "e"}}
    for key in required:
        event[key] = copy.deepcopy(GOOD_VALUES.get(key, "v"))
    return event


def _mutate(rng: random.Random, event: dict[str, Any]) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for _ in range(rng.choice([1, 1, 2, 3])):
        where = rng.random()
        if where < 0.55:
            key = rng.choice(KEYS)
            if rng.random() < 0.2:
                event.pop(key, None)
            else:
                event[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif where < 0.85:
            items = event.setdefault("items", [copy.deepcopy(ITEM)])
            if isinstance(items, list) and items and isinstance(items[0], dict):
                item = items[0]
                target = item["product"] if isinstance(item.get("product"), dict) and rng.random() < 0.5 else item
                key = rng.choice(["id", "quantity", "product", "name", "price", "currency", "discount", "value"])
                if rng.random() < 0.2:
                    target.pop(key, None)
                else:
                    target[key] = copy.deepcopy(rng.choice(ODD_VALUES))
            else:
                event["items"] = rng.choice([[5], [copy.deepcopy(ITEM), "x"], [], [copy.deepcopy(ITEM)] * 2])
        else:
            user = rng.choice([{}, {"id": "1"}, {"consent_categories": []}, "u", None, dict(USER)])
            event["user"] = user
    return event


@pytest.mark.parametrize("name", sorted(STANDARD_EVENTS))
def test_the_typed_look_passes_only_what_the_full_check_passes(name: str) -> None:
    rng = random.Random(name)
    required, conditional = STANDARD_EVENTS[name]
    good = _good(name)
    # The plain good event takes the quick path (else the quick path would be worth nothing).
    assert standard._fine(good, name, conditional), name
    assert standard._findings(good, name, required, conditional) == []
    passed = 0
    for _ in range(400):
        event = _mutate(rng, good)
        if standard._fine(event, name, conditional):
            passed += 1
            assert standard._findings(event, name, required, conditional) == [], (name, event)
    assert 0 < passed < 400  # some mutations are harmless, most are not


def test_the_typed_look_refuses_what_only_looks_like_a_number() -> None:
    event = _good("purchase")
    for value in (True, math.inf, math.nan, "1", None, -math.inf, [], {}):
        assert not standard._fine({**event, "value": value}, "purchase", ())
    assert VIDEO_EVENTS  # the catalogue's video events have shapes too
    assert all(name in standard._SHAPES for name in VIDEO_EVENTS)


def test_the_inspector_cut_keeps_what_plan_samples_sends() -> None:
    from tests.worker_corpus import config, corpus

    cfg = config()
    sources = {s.id: s for s in cfg.sources}
    layout = KeyLayout(cfg.key_prefix)
    for caps in ((0, 0), (1, 0), (2, 1), (5, 5)):
        for job_id, payload in corpus(seed=5):
            events = decode_and_normalize(payload, job_id, sources)
            fan_out = plan_fan_out(events, cfg)

            sent = [
                [
                    p.command
                    for p in plan_samples(
                        _inspector_records(events, fan_out, cut),
                        list_key=layout.inspector,
                        test_list_key=layout.inspector_tests,
                        counter_key=layout.inspector_sample,
                        list_size=100,
                        per_name_per_minute=caps[0],
                        test_per_minute=caps[1],
                    )
                ]
                for cut in (caps, None)
            ]
            assert sent[0] == sent[1]


def test_ids_blob_equals_keys_blob() -> None:
    # No server: registering the script only hashes it.
    dedup = Deduplicator(redis.Redis(port=1), KeyLayout("trackpipe"), 86_400, 64)
    rng = random.Random(3)
    items = [
        (rng.choice(["web", "app", "a.b"]), f"id-{rng.randrange(10**6)}", rng.choice([None, 86_400, 3_600, 60]),
         1_700_000_000_000 + rng.randrange(10**9))
        for _ in range(300)
    ]  # fmt: skip
    by_keys = dedup.keys_blob([(dedup.key_for(s, e, w), t) for s, e, w, t in items])
    assert dedup.ids_blob(items) == by_keys
    assert len(by_keys[1]) == 3  # the default window (86_400 among them) and two of their own


def test_normalize_in_place_gives_what_a_copy_gives() -> None:
    import copy as copying

    import msgspec

    from tests.worker_corpus import corpus
    from trackpipe.messages import decode_batch
    from workers.normalize import normalize

    checked = 0
    for job_id, payload in corpus(seed=9):
        for record in decode_batch(payload).records:
            for raw in record.events:
                try:
                    decoded = msgspec.json.decode(raw)
                except msgspec.MsgspecError:
                    continue
                kept = copying.deepcopy(decoded)
                args: dict[str, Any] = {"received_at": record.received_at, "source_id": "s", "id_seed": job_id}
                by_copy = normalize(decoded, **args)
                assert decoded == kept  # the input left alone
                assert normalize(decoded, owned=True, **args) == by_copy
                checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    "currency", ["EUR", "USD", "ZZZ", "eur", "Eur", "EURO", "EU", "", "E1R", "ÉUR", "EUR\n", " EUR", 978, None]
)
def test_the_typed_look_takes_a_currency_exactly_when_the_full_check_does(currency: Any) -> None:
    event = _good("purchase")
    fine_at_root = standard._fine({**event, "currency": currency}, "purchase", ())
    assert fine_at_root == standard._is_currency(currency)
    item = copy.deepcopy(event["items"][0])
    item["product"]["currency"] = currency
    fine_in_product = standard._fine({**event, "items": [item]}, "purchase", ())
    # A product's currency may be absent (null); the full check then finds nothing either.
    assert fine_in_product == (currency is None or standard._is_currency(currency))


def _inspector_records(
    events: list[ProcessedEvent], fan_out: Any, caps: tuple[int, int] | None
) -> dict[str, list[Any]]:
    """The inspector's candidates gathered at once."""
    cut = InspectorCut(caps)
    cut.add(events, fan_out.destinations_of)
    return cut.kept


def _corpus_events(seed: int) -> Iterator[tuple[Config, list[ProcessedEvent]]]:
    """The worker corpus's jobs, decoded and normalized, with the corpus's config."""
    from tests.worker_corpus import config, corpus

    cfg = config()
    sources = {s.id: s for s in cfg.sources}
    for job_id, payload in corpus(seed=seed):
        yield cfg, decode_and_normalize(payload, job_id, sources)


def _add_in_parts(
    rng: random.Random, events: list[ProcessedEvent], sizes: list[int], add: Callable[[list[Any], int], None]
) -> None:
    """`add(the events so far, where the new part starts)` over parts of random sizes, as the
    ingest job calls it."""
    start = 0
    while start < len(events):
        end = min(len(events), start + rng.choice(sizes))
        add(events[:end], start)
        start = end


def test_planning_the_fan_out_part_by_part_plans_what_planning_it_at_once_does() -> None:
    rng = random.Random(7)
    planned = 0
    for cfg, events in _corpus_events(seed=3):
        whole = plan_fan_out(events, cfg)
        planner = FanOutPlanner(cfg)
        _add_in_parts(rng, events, [1, 2, 5, 50], planner.add)
        assert msgspec.to_builtins(planner.result()) == msgspec.to_builtins(whole)
        planned += sum(len(d) for d in whole.deliveries.values()) + sum(whole.filtered.values())
    assert planned > 100  # the corpus has events to deliver and to filter


def _made(kept: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Candidates with their records made, as plain values."""
    return {
        source: [msgspec.to_builtins(msgspec.structs.replace(c, record=c.record())) for c in candidates]
        for source, candidates in kept.items()
    }


def _cut_add(cut: InspectorCut, routes: list[dict[str, str]], events: list[ProcessedEvent], start: int) -> None:
    cut.add(events, routes, start)


@pytest.mark.parametrize("caps", [(0, 0), (1, 0), (2, 1), None])
def test_the_inspector_cut_part_by_part_keeps_what_it_keeps_at_once(caps: tuple[int, int] | None) -> None:
    rng = random.Random(11)
    kept_any = 0
    for cfg, events in _corpus_events(seed=4):
        fan_out = plan_fan_out(events, cfg)
        whole = _inspector_records(events, fan_out, caps)
        cut = InspectorCut(caps)
        _add_in_parts(rng, events, [1, 3, 40], functools.partial(_cut_add, cut, fan_out.destinations_of))
        assert _made(cut.kept) == _made(whole)
        kept_any += sum(len(c) for c in whole.values())
    assert kept_any > 20


def test_the_tally_part_by_part_counts_what_it_counts_at_once() -> None:
    rng = random.Random(13)
    messages = 0
    for _, events in _corpus_events(seed=6):
        whole = Tally()
        whole.add(events)
        in_parts = Tally()
        _add_in_parts(rng, events, [1, 4, 30], in_parts.add)
        for field in ("statuses", "hourly", "messages"):
            assert msgspec.to_builtins(getattr(in_parts, field)) == msgspec.to_builtins(getattr(whole, field))
        assert sum(whole.statuses.values()) == len(events)
        messages += sum(sum(kinds.values()) for kinds in whole.messages.values())
    assert messages > 10  # the corpus has warnings and errors to count
