"""destinations.http, the base of every HTTP destination, against real local HTTP servers
(tests.support.HookServer): requests as a subclass builds them, statuses to outcomes, Retry-After,
timeouts and connection errors, dry runs, the exchanges the destination inspector shows, and secrets
masked in all of it."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import httpx
import pytest

from destinations.base import DELIVERED, Exchange, Outcome, OutgoingEvent, Rejected, Retry, Skipped
from destinations.http import DRY_RUN_REASON, EXCHANGE_BODY_LIMIT, HttpRequest, HttpSender
from destinations.webhook import WebhookDestination, WebhookSender
from tests.support import HookServer, Reply, closed_url
from trackpipe.types import DestinationBase

# A token with characters that URL encoding changes: both forms must be masked.
TOKEN = "EAAB/tok+en=secret-1234567"
TOKEN_IN_URL = quote(TOKEN, safe="")


class VendorSettings(DestinationBase, kw_only=True):
    """Settings shaped like a vendor's: an endpoint, a credential, timeouts."""

    endpoint: str
    access_token: str
    connect_timeout_seconds: float = 2.0
    read_timeout_seconds: float = 5.0

    def secrets(self) -> list[str]:
        return [self.access_token]


class VendorSender(HttpSender):
    """Two events per request; the token in the query and in the body (as some vendors want it);
    `unmappable` events skipped, `too_big` ones rejected with a reason that (wrongly) names the token."""

    settings: VendorSettings

    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        decided: dict[int, Outcome] = {}
        sendable = []
        for i, event in enumerate(events):
            if event.event_name == "unmappable":
                decided[i] = Skipped("the vendor has no event for 'unmappable'")
            elif event.event_name == "too_big":
                decided[i] = Rejected(f"too big for token {self.settings.access_token}")
            else:
                sendable.append(i)
        requests = []
        for start in range(0, len(sendable), 2):
            indexes = sendable[start : start + 2]
            body = json.dumps({"data": [events[i].event for i in indexes], "access_token": TOKEN}).encode()
            url = f"{self.settings.endpoint}?access_token={TOKEN_IN_URL}"
            requests.append(HttpRequest(url=url, body=body, indexes=indexes, headers={"X-Vendor": "yes"}))
        return requests, decided


def outgoing(name: str, i: int) -> OutgoingEvent:
    event = {"event_name": name, "context": {"event_id": f"e{i}"}, "n": i}
    return OutgoingEvent(f"e{i}", name, event, json.dumps(event).encode())


def vendor(url: str, **settings) -> VendorSender:
    return VendorSender(VendorSettings(id="vendor", endpoint=url, access_token=TOKEN, **settings))


def all_text(outcomes: list[Outcome], exchanges: list[Exchange]) -> str:
    """Everything a sender hands on as text: reasons and exchanges."""
    reasons = [getattr(o, "reason", "") for o in outcomes]
    return json.dumps(reasons) + "".join(json.dumps(e.__struct_fields__) + repr(e) for e in exchanges)


# -- requests and outcomes ------------------------------------------------------------------------------


def test_build_decides_some_events_and_sends_the_rest_in_order() -> None:
    names = ["purchase", "unmappable", "purchase", "too_big", "purchase"]
    with HookServer(Reply(200), Reply(500)) as server:
        sender = vendor(server.url)
        try:
            outcomes = sender.send([outgoing(n, i) for i, n in enumerate(names)])
        finally:
            sender.close()
    got = server.requests()
    assert [[e["n"] for e in json.loads(r.body)["data"]] for r in got] == [[0, 2], [4]]
    assert outcomes[0] == outcomes[2] == DELIVERED
    assert outcomes[1] == Skipped("the vendor has no event for 'unmappable'")
    assert isinstance(outcomes[3], Rejected) and outcomes[3].reason == "too big for token ***"
    assert isinstance(outcomes[4], Retry) and outcomes[4].reason == "HTTP 500"
    # What the server got is the real request: token unmasked, headers as built, JSON by default.
    assert got[0].path == f"/hook?access_token={TOKEN_IN_URL}"
    assert got[0].headers["x-vendor"] == "yes"
    assert got[0].headers["content-type"] == "application/json"
    assert len({r.client_port for r in got}) == 1  # one pooled connection


def test_statuses_become_outcomes() -> None:
    with HookServer(
        Reply(204), Reply(408), Reply(429, headers=(("Retry-After", "120"),)), Reply(422, b"bad field\nx")
    ) as server:
        sender = vendor(server.url)
        before = time.time()
        try:
            outcomes = [sender.send([outgoing("purchase", i)])[0] for i in range(4)]
        finally:
            sender.close()
    assert outcomes[0] == DELIVERED
    assert isinstance(outcomes[1], Retry) and outcomes[1].reason == "HTTP 408" and outcomes[1].not_before is None
    assert isinstance(outcomes[2], Retry) and outcomes[2].not_before is not None
    assert before + 119 <= outcomes[2].not_before <= time.time() + 121
    assert outcomes[3] == Rejected("HTTP 422: bad field x")


def test_read_timeout_is_a_retry_with_the_timeout_prefix_and_an_exchange() -> None:
    with HookServer(Reply(200, delay=3)) as server:
        sender = vendor(server.url, read_timeout_seconds=0.3)
        try:
            outcomes = sender.send([outgoing("purchase", 0), outgoing("purchase", 1)])
            [exchange] = sender.take_exchanges()
        finally:
            sender.close()
    assert all(isinstance(o, Retry) and o.reason.startswith("timeout: ") for o in outcomes)
    assert exchange.status is None and exchange.error is not None and exchange.error.startswith("timeout: ")


def test_connection_refused_is_a_retry_with_its_prefix_and_masked() -> None:
    sender = vendor(closed_url())
    try:
        outcomes = sender.send([outgoing("purchase", 0)])
        [exchange] = sender.take_exchanges()
    finally:
        sender.close()
    [outcome] = outcomes
    assert isinstance(outcome, Retry) and outcome.reason.startswith("connection error: ")
    assert exchange.error == outcome.reason and exchange.status is None
    assert TOKEN not in all_text(outcomes, [exchange]) and TOKEN_IN_URL not in all_text(outcomes, [exchange])


def test_timeouts_come_from_the_settings_and_default_without_them() -> None:
    sender = vendor("http://127.0.0.1:9/x", connect_timeout_seconds=1.5, read_timeout_seconds=7.0)
    bare = VendorSender(DestinationBase(id="bare"))
    try:
        assert (sender._client.timeout.connect, sender._client.timeout.read) == (1.5, 7.0)
        assert (bare._client.timeout.connect, bare._client.timeout.read) == (2.0, 10.0)
    finally:
        sender.close()
        bare.close()


class _Broken(VendorSender):
    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        raise KeyError(f"no field for {self.settings.access_token}")


class _Forgetful(VendorSender):
    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        requests, decided = super().build(events)
        return requests[:-1], decided  # loses the last request's events


class _Miscounting(VendorSender):
    def read(self, request: HttpRequest, response: httpx.Response, now: float) -> list[Outcome]:
        return [DELIVERED]


def test_a_module_bug_retries_instead_of_losing_or_claiming_events() -> None:
    with HookServer(Reply(200)) as server:
        settings = VendorSettings(id="vendor", endpoint=server.url, access_token=TOKEN)
        for cls in (_Broken, _Forgetful, _Miscounting):
            sender = cls(settings)
            try:
                outcomes = sender.send([outgoing("purchase", i) for i in range(3)])
            finally:
                sender.close()
            assert len(outcomes) == 3
            # Broken: every event; Forgetful: the event of the lost request; Miscounting: the two of
            # the first request (one outcome for two events).
            retried = {_Broken: [0, 1, 2], _Forgetful: [2], _Miscounting: [0, 1]}[cls]
            assert [i for i, o in enumerate(outcomes) if isinstance(o, Retry)] == retried, (cls, outcomes)
            assert all(TOKEN not in getattr(o, "reason", "") for o in outcomes)
            if cls is _Broken:
                assert outcomes[0].reason.startswith("cannot build the request: KeyError")


# -- exchanges ------------------------------------------------------------------------------------------


def test_exchanges_record_each_request_and_answer_masked_and_are_taken_once() -> None:
    echo = json.dumps({"error": f"token {TOKEN} expired", "events_received": 2}).encode()
    with HookServer(Reply(200, echo), Reply(401, echo)) as server:
        sender = vendor(server.url)
        try:
            before = int(time.time() * 1000)
            outcomes = sender.send([outgoing("purchase", i) for i in range(3)])
            exchanges = sender.take_exchanges()
            assert sender.take_exchanges() == []
        finally:
            sender.close()
    assert [e.events for e in exchanges] == [2, 1]
    assert [e.status for e in exchanges] == [200, 401]
    first = exchanges[0]
    assert first.method == "POST" and not first.dry_run and first.error is None
    assert first.at >= before
    assert first.url == f"{server.url}?access_token=***"
    assert json.loads(first.request_body)["access_token"] == "***"
    assert [e["n"] for e in json.loads(first.request_body)["data"]] == [0, 1]
    assert first.response_body is not None and "token *** expired" in first.response_body
    assert isinstance(outcomes[2], Rejected) and "token *** expired" in outcomes[2].reason
    text = all_text(outcomes, exchanges)
    assert TOKEN not in text and TOKEN_IN_URL not in text


def test_exchange_bodies_are_cut() -> None:
    big = b"y" * (3 * EXCHANGE_BODY_LIMIT)
    with HookServer(Reply(200, big)) as server:
        sender = vendor(server.url)
        try:
            event = outgoing("purchase", 0)
            event.event["pad"] = "x" * (3 * EXCHANGE_BODY_LIMIT)
            assert sender.send([event]) == [DELIVERED]
            [exchange] = sender.take_exchanges()
        finally:
            sender.close()
    assert len(server.requests()[0].body) > 3 * EXCHANGE_BODY_LIMIT  # the vendor got it whole
    assert EXCHANGE_BODY_LIMIT <= len(exchange.request_body) < EXCHANGE_BODY_LIMIT + 100
    assert exchange.response_body is not None and len(exchange.response_body) < EXCHANGE_BODY_LIMIT + 100
    assert exchange.response_body.endswith("more characters)")


# -- dry run --------------------------------------------------------------------------------------------


def test_dry_run_builds_and_records_but_sends_nothing() -> None:
    with HookServer(Reply(200)) as server:
        sender = VendorSender(VendorSettings(id="vendor", endpoint=server.url, access_token=TOKEN, dry_run=True))
        try:
            outcomes = sender.send([outgoing("purchase", 0), outgoing("unmappable", 1), outgoing("purchase", 2)])
            [exchange] = sender.take_exchanges()
        finally:
            sender.close()
        assert server.requests() == []
    assert outcomes == [Skipped(DRY_RUN_REASON), Skipped("the vendor has no event for 'unmappable'"), outcomes[0]]
    assert exchange.dry_run and exchange.status is None and exchange.response_body is None
    assert exchange.events == 2
    assert exchange.url.endswith("?access_token=***")
    assert [e["n"] for e in json.loads(exchange.request_body)["data"]] == [0, 2]
    assert TOKEN not in exchange.request_body


# -- the webhook on the base -------------------------------------------------------------------------------


@pytest.mark.parametrize("query_secret", ["s3cr3t-in-the-query", "with space&and=signs"])
def test_webhook_url_secret_is_masked_in_reasons_and_exchanges(query_secret: str) -> None:
    with HookServer(Reply(400, f"bad api_secret {query_secret}".encode())) as server:
        url = f"{server.url}?api_secret={quote(query_secret)}&v=1"
        settings = WebhookDestination(id="hook", url=url, headers={"Authorization": "Bearer hdr-token-987"})
        assert query_secret in settings.secrets()
        sender = WebhookSender(settings)
        try:
            outcomes = sender.send([outgoing("purchase", 0)])
            [exchange] = sender.take_exchanges()
        finally:
            sender.close()
        [received] = server.requests()
    assert received.headers["authorization"] == "Bearer hdr-token-987"  # sent as configured
    assert outcomes == [Rejected("HTTP 400: bad api_secret ***")]
    assert exchange.url == f"{server.url}?api_secret=***&v=1"
    text = all_text(outcomes, [exchange])
    assert query_secret not in text and quote(query_secret) not in text


def test_webhook_signing_secret_is_a_secret() -> None:
    settings = WebhookDestination(id="hook", url="http://127.0.0.1:9/x", secret="sign-me-0123")
    assert settings.secrets() == ["sign-me-0123"]
    assert WebhookDestination(id="h", url="http://127.0.0.1:9/x").secrets() == []
