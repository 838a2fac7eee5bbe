"""destinations.webhook against real HTTP servers (tests.support.HookServer), plus the pure pieces:
`retry_after` and the backoff of workers.retry.next_attempt_at."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from email.utils import formatdate

import pytest

from destinations import open_sender
from destinations.base import DELIVERED, Delivered, OutgoingEvent, Rejected, Retry
from destinations.webhook import WebhookDestination, WebhookSender, retry_after
from tests.support import HookServer, Reply, closed_url
from trackpipe.types import RetryConfig
from workers.retry import next_attempt_at

SECRET = "s3cret-signing-key"


def event(i: int) -> bytes:
    return json.dumps(
        {"event_name": "purchase", "id": f"O-{i}", "context": {"event_id": f"e{i}"}}, separators=(",", ":")
    ).encode()


def events(n: int) -> list[bytes]:
    return [event(i) for i in range(n)]


def batch_of(bodies: list[bytes]) -> bytes:
    return b'{"batch":[' + b",".join(bodies) + b"]}"


def outgoing(bodies: list[bytes]) -> list[OutgoingEvent]:
    """The events as the delivery job hands them to a sender (decoded once, body kept)."""
    found = []
    for body in bodies:
        event = json.loads(body)
        found.append(OutgoingEvent(event.get("context", {}).get("event_id", ""), event["event_name"], event, body))
    return found


def sender_for(url: str, **settings) -> WebhookSender:
    sender = open_sender(WebhookDestination(id="crm-hook", url=url, **settings))
    assert isinstance(sender, WebhookSender)
    return sender


def send(url: str, bodies: list[bytes], **settings) -> list:
    sender = sender_for(url, **settings)
    try:
        return sender.send(outgoing(bodies))
    finally:
        sender.close()


# -- 2xx, body and headers ------------------------------------------------------------------------


def test_2xx_delivers_the_exact_batch_body_with_headers() -> None:
    bodies = events(3)
    with HookServer(Reply(200, b"ok")) as server:
        outcomes = send(server.url, bodies)
    assert outcomes == [DELIVERED] * 3
    [got] = server.requests()
    assert got.path == "/hook"
    assert got.body == batch_of(bodies)
    assert json.loads(got.body) == {"batch": [json.loads(b) for b in bodies]}
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-trackpipe-destination"] == "crm-hook"
    assert "x-trackpipe-signature" not in got.headers  # no secret, no signature


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_every_2xx_status_delivers(status: int) -> None:
    with HookServer(Reply(status)) as server:
        assert send(server.url, events(2)) == [DELIVERED, DELIVERED]
    assert len(server.requests()) == 1


def test_signature_is_verified_by_the_receiver() -> None:
    bodies = events(2)
    with HookServer(Reply(200), secret=SECRET) as server:
        outcomes = send(server.url, bodies, secret=SECRET)
    assert outcomes == [DELIVERED, DELIVERED]  # the server answers 401 unless its hmac check passes
    [got] = server.requests()
    expected = "sha256=" + hmac.new(SECRET.encode(), batch_of(bodies), hashlib.sha256).hexdigest()
    assert got.headers["x-trackpipe-signature"] == expected


def test_wrong_secret_fails_the_receivers_check() -> None:
    with HookServer(Reply(200), secret=SECRET) as server:
        outcomes = send(server.url, events(1), secret="another-secret")
    [outcome] = outcomes
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("HTTP 401")
    assert "bad signature" in outcome.reason


def test_no_signature_header_without_secret_even_for_a_verifying_receiver() -> None:
    with HookServer(Reply(200), secret=SECRET) as server:
        [outcome] = send(server.url, events(1))
    assert "x-trackpipe-signature" not in server.requests()[0].headers
    assert isinstance(outcome, Rejected) and outcome.reason.startswith("HTTP 401")


# -- retryable answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_is_retried(status: int) -> None:
    with HookServer(Reply(status, b"upstream down")) as server:
        outcomes = send(server.url, events(2))
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Retry)
        assert outcome.reason == f"HTTP {status}: upstream down"
        assert outcome.not_before is None


def test_408_is_retried() -> None:
    with HookServer(Reply(408)) as server:
        [outcome] = send(server.url, events(1))
    assert isinstance(outcome, Retry)
    assert outcome.reason == "HTTP 408"


def test_429_with_retry_after_seconds_sets_not_before() -> None:
    with HookServer(Reply(429, b"slow down", (("Retry-After", "30"),))) as server:
        before = time.time()
        outcomes = send(server.url, events(2))
        after = time.time()
    for outcome in outcomes:
        assert isinstance(outcome, Retry)
        assert outcome.reason.startswith("HTTP 429")
        assert outcome.not_before is not None
        assert before + 30 <= outcome.not_before <= after + 30


def test_429_with_retry_after_http_date_sets_not_before() -> None:
    until = int(time.time()) + 120
    with HookServer(Reply(429, headers=(("Retry-After", formatdate(until, usegmt=True)),))) as server:
        [outcome] = send(server.url, events(1))
    assert isinstance(outcome, Retry)
    assert outcome.not_before == until


def test_503_with_retry_after_is_honoured_too() -> None:
    with HookServer(Reply(503, headers=(("Retry-After", "7"),))) as server:
        before = time.time()
        [outcome] = send(server.url, events(1))
    assert isinstance(outcome, Retry)
    assert outcome.not_before is not None and outcome.not_before >= before + 7


def test_429_with_an_unusable_retry_after_has_no_not_before() -> None:
    with HookServer(Reply(429, headers=(("Retry-After", "soon"),))) as server:
        [outcome] = send(server.url, events(1))
    assert isinstance(outcome, Retry)
    assert outcome.not_before is None


@pytest.mark.parametrize("value", ["9" * 400, "\u00b2"], ids=["400-digits", "superscript-two"])
def test_429_with_an_odd_retry_after_is_still_a_retry(value: str) -> None:
    # "9"*400: delta-seconds is 1*DIGIT, any length is valid. "\u00b2" (byte 0xB2, a superscript two
    # in latin-1) passes str.isdigit() but not int(). Neither may make the sender blow up.
    with HookServer(Reply(429, headers=(("Retry-After", value),))) as server:
        outcomes = send(server.url, events(2))
    assert len(outcomes) == 2
    assert all(isinstance(o, Retry) for o in outcomes)


def test_read_timeout_is_retried() -> None:
    with HookServer(Reply(200, delay=10)) as server:
        outcomes = send(server.url, events(2), read_timeout_seconds=0.3)
        assert len(server.requests()) == 1  # the request did arrive; the answer came too late
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Retry)
        assert outcome.reason.startswith("timeout")


def test_connection_refused_is_retried() -> None:
    outcomes = send(closed_url(), events(2), connect_timeout_seconds=2)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Retry)
        assert outcome.reason.startswith("connection error")


def test_timeouts_come_from_the_config() -> None:
    sender = sender_for("http://127.0.0.1:9/hook", connect_timeout_seconds=1.5, read_timeout_seconds=7.0)
    try:
        timeout = sender._client.timeout
        assert timeout.connect == 1.5
        assert timeout.read == 7.0
    finally:
        sender.close()


# -- permanent refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 401, 403, 410, 422])
def test_other_4xx_is_rejected_with_status_and_body_start(status: int) -> None:
    body = b"invalid payload: field 'items' is required. " + b"x" * 2000
    with HookServer(Reply(status, body)) as server:
        outcomes = send(server.url, events(2))
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Rejected)
        assert outcome.reason.startswith(f"HTTP {status}: invalid payload: field 'items' is required.")
        assert len(outcome.reason) <= 300  # the start of the body, not all of it
    assert len(server.requests()) == 1  # not retried by the sender itself


def test_4xx_reason_is_one_line() -> None:
    with HookServer(Reply(400, b"line one\nline two\r\n\ttab")) as server:
        [outcome] = send(server.url, events(1))
    assert isinstance(outcome, Rejected)
    assert "\n" not in outcome.reason and "\r" not in outcome.reason
    assert outcome.reason.startswith("HTTP 400: line one")


# -- batches -----------------------------------------------------------------------------------------


def test_batch_size_splits_into_posts_with_outcomes_in_order() -> None:
    bodies = events(5)
    with HookServer(Reply(200), Reply(500), Reply(400, b"nope")) as server:
        outcomes = send(server.url, bodies, batch_size=2)
    got = server.requests()
    assert [r.body for r in got] == [batch_of(bodies[0:2]), batch_of(bodies[2:4]), batch_of(bodies[4:])]
    assert outcomes[0:2] == [DELIVERED, DELIVERED]
    assert all(isinstance(o, Retry) and o.reason == "HTTP 500" for o in outcomes[2:4])
    assert isinstance(outcomes[4], Rejected) and outcomes[4].reason == "HTTP 400: nope"
    assert len({r.client_port for r in got}) == 1  # one pooled keep-alive connection for all three


def test_sender_reuses_its_connection_across_sends() -> None:
    with HookServer(Reply(200)) as server:
        sender = sender_for(server.url)
        try:
            for i in range(3):
                assert sender.send(outgoing([event(i)])) == [DELIVERED]
        finally:
            sender.close()
    got = server.requests()
    assert len(got) == 3
    assert len({r.client_port for r in got}) == 1


def test_partial_answer_rejects_the_listed_events_only() -> None:
    answer = json.dumps({"rejected": [{"index": 1, "error": "bad sku"}]}).encode()
    with HookServer(Reply(200, answer, (("Content-Type", "application/json"),))) as server:
        outcomes = send(server.url, events(3))
    assert outcomes[0] == DELIVERED and outcomes[2] == DELIVERED
    assert isinstance(outcomes[1], Rejected)
    assert "bad sku" in outcomes[1].reason


def test_partial_answer_indexes_are_per_post() -> None:
    answer = json.dumps({"rejected": [{"index": 1, "error": "bad sku"}]}).encode()
    with HookServer(Reply(200, answer)) as server:
        outcomes = send(server.url, events(4), batch_size=2)
    assert len(server.requests()) == 2
    assert [type(o) for o in outcomes] == [Delivered, Rejected, Delivered, Rejected]


def test_partial_answer_out_of_range_indexes_are_ignored() -> None:
    answer = json.dumps(
        {"rejected": [{"index": -1, "error": "x"}, {"index": 3, "error": "y"}, {"index": 99, "error": "z"}]}
    ).encode()
    with HookServer(Reply(200, answer)) as server:
        assert send(server.url, events(3)) == [DELIVERED] * 3


def test_partial_answer_without_error_text_still_rejects() -> None:
    with HookServer(Reply(200, b'{"rejected":[{"index":0}]}')) as server:
        outcomes = send(server.url, events(2))
    assert isinstance(outcomes[0], Rejected) and outcomes[0].reason
    assert outcomes[1] == DELIVERED


@pytest.mark.parametrize(
    "body",
    [b"OK", b"<html>thanks</html>", b'{"rejected":"none"}', b"[1,2,3]", b'{"status":"ok"}', b"\xff\xfe", b"{"],
)
def test_2xx_body_that_is_not_a_per_event_answer_delivers_all(body: bytes) -> None:
    with HookServer(Reply(200, body)) as server:
        assert send(server.url, events(3)) == [DELIVERED] * 3


def test_empty_send_posts_nothing() -> None:
    with HookServer(Reply(200)) as server:
        assert send(server.url, []) == []
    assert server.requests() == []


# -- retry_after (pure) ------------------------------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert retry_after("30", 1000.0) == 1030.0
    assert retry_after(" 30 ", 1000.0) == 1030.0
    assert retry_after("0", 1000.0) == 1000.0


def test_retry_after_http_date() -> None:
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0 - 60) == 1445412480.0
    assert retry_after(formatdate(1_700_000_123, usegmt=True), 1_700_000_000.0) == 1_700_000_123


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "-5", "1.5", "Mon, 99 Foo 2015"])
def test_retry_after_unusable_is_none(value: str | None) -> None:
    assert retry_after(value, 1000.0) is None


@pytest.mark.parametrize(
    "value",
    ["9" * 400, "999999999999", "99999999999999999999", "\u00b2", "\u0661\u0662"],
    ids=["400-digits", "12-digits", "20-digits", "superscript-two", "arabic-indic-12"],
)
def test_retry_after_never_raises_on_odd_values(value: str) -> None:
    at = retry_after(value, 1000.0)
    assert at is None or (math.isfinite(at) and at >= 1000.0)


# -- next_attempt_at (pure) --------------------------------------------------------------------------

TABLE = RetryConfig(max_attempts=5, backoff_seconds=[1.0, 5.0, 30.0])
NOW = 1_700_000_000.0


def test_next_attempt_follows_the_backoff_table() -> None:
    assert next_attempt_at(1, TABLE, NOW) == NOW + 1
    assert next_attempt_at(2, TABLE, NOW) == NOW + 5
    assert next_attempt_at(3, TABLE, NOW) == NOW + 30


def test_next_attempt_repeats_the_last_delay() -> None:
    assert next_attempt_at(4, TABLE, NOW) == NOW + 30


def test_next_attempt_is_none_once_attempts_are_used_up() -> None:
    assert next_attempt_at(5, TABLE, NOW) is None
    assert next_attempt_at(6, TABLE, NOW) is None
    assert next_attempt_at(5, TABLE, NOW, not_before=NOW + 10) is None
    assert next_attempt_at(1, RetryConfig(max_attempts=1, backoff_seconds=[1.0]), NOW) is None


def test_retry_after_longer_than_the_backoff_wins() -> None:
    assert next_attempt_at(1, TABLE, NOW, not_before=NOW + 100) == NOW + 100
    assert next_attempt_at(4, TABLE, NOW, not_before=NOW + 31) == NOW + 31


def test_retry_after_shorter_than_the_backoff_is_ignored() -> None:
    assert next_attempt_at(2, TABLE, NOW, not_before=NOW + 0.5) == NOW + 5
    assert next_attempt_at(1, TABLE, NOW, not_before=NOW - 100) == NOW + 1


def test_the_receiver_drops_a_request_whose_sender_went_away_mid_body() -> None:
    """A sender killed mid-request leaves half a body: the receiver (as a real server) neither
    records nor answers it, and the next, complete request is taken as usual."""
    import socket

    import httpx

    with HookServer() as server, socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"batch":[')
        raw.shutdown(socket.SHUT_WR)
        assert raw.recv(100) == b""  # closed without an answer
        assert httpx.post(server.url, content=b'{"batch":[]}').status_code == 200
        assert [r.body for r in server.requests()] == [b'{"batch":[]}']
