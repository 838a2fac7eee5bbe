"""Mapping for the webhook and file destinations (destinations.mapping): drop, rename, set, flatten,
in that order; the config checks; and the mapped events as a real receiver and a file get them, with
the webhook's per-event, method and header options."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from destinations.base import DELIVERED, OutgoingEvent
from destinations.file import FileDestination, FileSender
from destinations.mapping import Mapping, apply, flatten
from destinations.webhook import WebhookDestination, WebhookSender, signature
from tests.support import HookServer, Reply
from trackpipe.config import ConfigError, parse

EVENT = {
    "event_name": "purchase",
    "id": "O-1",
    "value": 12.5,
    "user": {"id": "u1", "email": "a@b.c", "consent-categories": ["1"]},
    "items": [
        {"id": "sku-1", "product": {"name": "Shoe", "price": 10}},
        {"id": "sku-2", "product": {"name": "Sock"}},
    ],
    "context": {"event_id": "e1", "page": {"url": "https://s/p"}},
}


def mapping(**fields) -> Mapping:
    if "set" in fields:
        fields["set_"] = fields.pop("set")
    return Mapping(**fields)


def test_drop_removes_paths_and_ignores_missing_ones() -> None:
    out = apply(mapping(drop=["user.email", "context", "items[].product.price", "no.such.path", "value.x"]), EVENT)
    assert out["user"] == {"id": "u1", "consent-categories": ["1"]}
    assert "context" not in out
    assert out["items"] == [
        {"id": "sku-1", "product": {"name": "Shoe"}},
        {"id": "sku-2", "product": {"name": "Sock"}},
    ]
    assert out["value"] == 12.5


def test_rename_moves_values_also_inside_every_list_element() -> None:
    out = apply(
        mapping(rename={"id": "order.id", "user.email": "email", "items[].product.name": "items[].name", "gone": "x"}),
        EVENT,
    )
    assert out["order"] == {"id": "O-1"} and "id" not in out
    assert out["email"] == "a@b.c" and "email" not in out["user"]
    assert [i["name"] for i in out["items"]] == ["Shoe", "Sock"]
    assert out["items"][0]["product"] == {"price": 10}
    assert "x" not in out


def test_set_places_constants_creating_objects_on_the_way() -> None:
    out = apply(mapping(set={"source": "web", "meta.version": 2, "items[].currency": "EUR", "value.x": True}), EVENT)
    assert out["source"] == "web" and out["meta"] == {"version": 2}
    assert [i["currency"] for i in out["items"]] == ["EUR", "EUR"]
    assert out["value"] == {"x": True}  # a non-object on the way is replaced


def test_flatten_joins_keys_and_replaces_dashes_like_the_vendor() -> None:
    assert flatten({"a": {"b-c": 1, "d": {"e": [{"f": {"g": 2}}]}}, "x-y": {}}) == {
        "a_b_c": 1,
        "a_d_e": [{"f_g": 2}],
        "x_y": {},
    }
    out = apply(mapping(flatten=True, flatten_separator="."), EVENT)
    assert out["user.consent_categories"] == ["1"]
    assert out["context.page.url"] == "https://s/p"
    assert out["items"][0] == {"id": "sku-1", "product.name": "Shoe", "product.price": 10}


def test_steps_run_in_order_drop_rename_set_flatten() -> None:
    out = apply(
        mapping(
            drop=["user.id"],
            rename={"user.id": "uid", "user.email": "customer.email"},  # user.id is gone by now
            set={"customer.email": "overridden"},  # set comes after rename
            flatten=True,
        ),
        EVENT,
    )
    assert "uid" not in out
    assert out["customer_email"] == "overridden"


def test_apply_leaves_the_event_unchanged() -> None:
    before = copy.deepcopy(EVENT)
    apply(mapping(drop=["items[].id"], rename={"user.id": "uid"}, set={"user.x": 1}, flatten=True), EVENT)
    assert EVENT == before


# -- config -------------------------------------------------------------------------------------------


def config_with(table: str) -> str:
    return f"""
[[sources]]
id = "web"
site_id = "29"
keys = ["k-0123456789abcdef"]

[[destinations]]
id = "hook"
type = "webhook"
url = "https://example.test/hook"
{table}
"""


def test_a_mapping_table_parses_with_set_under_its_config_name() -> None:
    config = parse(
        config_with('[destinations.mapping]\ndrop = ["user.email"]\nset = { "a.b" = 1 }\nflatten = true'), env={}
    )
    [hook] = config.destinations
    assert isinstance(hook, WebhookDestination) and hook.mapping is not None
    assert hook.mapping.set_ == {"a.b": 1} and hook.mapping.drop == ["user.email"] and hook.mapping.flatten


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('drop = ["a..b"]', "mapping.drop: 'a..b'"),
        ('rename = { "items[].id" = "item_id" }', "mapping.rename: 'items[].id' -> 'item_id'"),
        ('set = { "items[]" = 1 }', "mapping.set: 'items[]'"),
        ('flatten_separator = ""', "mapping.flatten_separator"),
        ("unknown = 1", "unknown"),
    ],
)
def test_a_bad_mapping_is_refused_naming_the_key(table: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(config_with(f"[destinations.mapping]\n{table}"), env={})
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('method = "DELETE"', "method"),
        ('headers = { "Bad Name" = "x" }', "headers: 'Bad Name'"),
        ('headers = { "Content-Length" = "3" }', "headers: 'Content-Length'"),
    ],
)
def test_bad_webhook_options_are_refused(line: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(config_with(line), env={})
    assert named in str(caught.value)


def test_a_bad_url_is_refused_without_showing_its_query() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(config_with("").replace("https://example.test/hook", "ftp://x/?api_secret=hidden-123"), env={})
    assert "url: 'ftp://x/?api_secret=***' is not an http" in str(caught.value)
    assert "hidden-123" not in str(caught.value)


# -- delivered with a mapping ------------------------------------------------------------------------------


def outgoing(event: dict) -> OutgoingEvent:
    return OutgoingEvent(event["context"]["event_id"], event["event_name"], event, json.dumps(event).encode())


def test_a_webhook_with_a_mapping_sends_the_mapped_events() -> None:
    second = {**EVENT, "id": "O-2", "context": {"event_id": "e2"}}
    rules = mapping(drop=["items"], rename={"id": "order_id"}, set={"shop": "eu"}, flatten=True)
    with HookServer(Reply(200)) as server:
        sender = WebhookSender(WebhookDestination(id="hook", url=server.url, mapping=rules, secret="sign-0123"))
        try:
            assert sender.send([outgoing(EVENT), outgoing(second)]) == [DELIVERED, DELIVERED]
        finally:
            sender.close()
        [received] = server.requests()
    batch = json.loads(received.body)["batch"]
    assert [e["order_id"] for e in batch] == ["O-1", "O-2"]
    assert batch[0] == {
        "event_name": "purchase",
        "value": 12.5,
        "user_id": "u1",
        "user_email": "a@b.c",
        "user_consent_categories": ["1"],
        "context_event_id": "e1",
        "context_page_url": "https://s/p",
        "order_id": "O-1",
        "shop": "eu",
    }
    assert received.headers["x-trackpipe-signature"] == signature("sign-0123", received.body)  # of the mapped body


def test_without_a_mapping_the_stored_bytes_are_forwarded_unchanged() -> None:
    odd = b'{"event_name":"purchase",  "context":{"event_id":"e9"}, "n":1.50}'  # not how msgspec would write it
    event = OutgoingEvent("e9", "purchase", json.loads(odd), odd)
    with HookServer(Reply(200)) as server:
        sender = WebhookSender(WebhookDestination(id="hook", url=server.url))
        try:
            sender.send([event])
        finally:
            sender.close()
    assert server.requests()[0].body == b'{"batch":[' + odd + b"]}"


def test_per_event_put_with_headers_sends_one_bare_event_per_request() -> None:
    events = [outgoing({**EVENT, "context": {"event_id": f"e{i}"}}) for i in range(3)]
    settings = WebhookDestination(
        id="hook",
        url="",
        per_event=True,
        method="PUT",
        headers={"X-Api-Key": "key-abc-123", "X-Team": "growth", "X-Trackpipe-Destination": "spoof"},
        mapping=mapping(drop=["items", "user"]),
    )
    assert "key-abc-123" in settings.secrets() and "growth" not in settings.secrets()
    with HookServer(Reply(200), Reply(500), Reply(200)) as server:
        sender = WebhookSender(WebhookDestination(**{**_fields(settings), "url": server.url}))
        try:
            outcomes = sender.send(events)
            exchanges = sender.take_exchanges()
        finally:
            sender.close()
        got = server.requests()
    assert [r.method for r in got] == ["PUT"] * 3
    assert [json.loads(r.body)["context"]["event_id"] for r in got] == ["e0", "e1", "e2"]
    assert all("batch" not in json.loads(r.body) and "items" not in json.loads(r.body) for r in got)
    assert got[0].headers["x-api-key"] == "key-abc-123" and got[0].headers["x-team"] == "growth"
    assert got[0].headers["x-trackpipe-destination"] == "hook"  # trackpipe's own header is not replaced
    assert outcomes[0] == outcomes[2] == DELIVERED and outcomes[1] != DELIVERED
    assert [e.method for e in exchanges] == ["PUT"] * 3 and [e.events for e in exchanges] == [1, 1, 1]


def _fields(settings: WebhookDestination) -> dict:
    return {f: getattr(settings, f) for f in settings.__struct_fields__}


def test_a_file_destination_with_a_mapping_writes_the_mapped_lines(tmp_path: Path) -> None:
    sender = FileSender(
        FileDestination(id="lake", path=str(tmp_path), mapping=mapping(drop=["items"], flatten=True)),
        clock=lambda: 1_700_000_000.0,
    )
    assert sender.send([outgoing(EVENT)]) == [DELIVERED]
    [written] = tmp_path.glob("*.jsonl")
    [line] = written.read_text().splitlines()
    assert json.loads(line)["user_email"] == "a@b.c" and "items" not in json.loads(line)
    assert sender.take_exchanges() == []
