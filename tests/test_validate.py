"""ingest.validate: single-event and batch bodies, checked without building Python objects."""

from __future__ import annotations

import json

import pytest

from ingest.problems import Problem, RequestRejected
from ingest.validate import MAX_EVENT_BYTES, BatchCheck, EventRejection, check_batch, check_event


def event_of_size(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    event = b'{"k":"' + b"x" * (size - 8) + b'"}'
    assert len(event) == size
    return event


def event_error(body: bytes) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        check_event(body)
    return info.value


def batch_error(body: bytes) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        check_batch(body)
    return info.value


def batch_of(*events: bytes) -> bytes:
    return b'{"batch":[' + b",".join(events) + b"]}"


# --- check_event -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_name":"purchase","value":42.5,"user":{"id":"7"}}',
        b"{}",
        b'  \n{"a": [1, 2, {"b": null}]}\r\n ',
        '{"name":"caf\u00e9 \U0001f600"}'.encode(),
        b'{"s":"\\ud83d\\ude00 \\n \\u00e9"}',
    ],
)
def test_valid_event_is_returned_as_is(body: bytes) -> None:
    assert check_event(body) is body


@pytest.mark.parametrize("body", [b"[1,2]", b"[]", b'"text"', b"42", b"-1.5e3", b"true", b"null", b' [{"a":1}]'])
def test_event_that_is_not_an_object(body: bytes) -> None:
    exc = event_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is not a JSON object"


@pytest.mark.parametrize("body", [b"", b" ", b"\n\t\r "])
def test_empty_event_body(body: bytes) -> None:
    exc = event_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is empty"


@pytest.mark.parametrize(
    ("body", "byte"),
    [(b'{"a":"\xff"}', 6), (b'{"\xc3":1}', 2), (b'{"a":"\xed\xa0\x80"}', 6), (b'{"a":"ok \xc3\x28"}', 9)],
)
def test_invalid_utf8_inside_a_string(body: bytes, byte: int) -> None:
    exc = event_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == f"body is not valid UTF-8 (byte {byte})"


@pytest.mark.parametrize(
    "body", [b'{"a":', b'{"a" 1}', b"{'a':1}", b'{"a":1,}', b'{"a":tru}', b"{", b'{"a":"unterminated}']
)
def test_malformed_json(body: bytes) -> None:
    exc = event_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body is not valid JSON")


@pytest.mark.parametrize("body", [b'{"a":1} x', b'{"a":1}{"b":2}', b'{"a":1}]', b'{"a":1} \x00'])
def test_trailing_garbage(body: bytes) -> None:
    exc = event_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body is not valid JSON")
    assert "trailing characters" in exc.reason


@pytest.mark.parametrize("body", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}'])
def test_nan_and_infinity_are_not_json(body: bytes) -> None:
    exc = event_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body is not valid JSON")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["arrays", "objects"],
)
def test_deeply_nested_event_is_a_clear_error(body: bytes) -> None:
    exc = event_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is not valid JSON: nested too deeply"


def test_moderately_nested_event_is_accepted() -> None:
    body = b'{"a":' * 50 + b"1" + b"}" * 50
    assert check_event(body) is body


# --- check_batch -----------------------------------------------------------------------------


def test_valid_batch() -> None:
    events = [b'{"event_name":"a"}', b'{"event_name":"b","v":[1,2]}', b"{}"]
    result = check_batch(batch_of(*events))
    assert isinstance(result, BatchCheck)
    assert result.accepted == events
    assert result.rejected == []


def test_empty_batch() -> None:
    assert check_batch(b'{"batch":[]}') == BatchCheck([], [])


def test_accepted_events_are_the_exact_raw_bytes() -> None:
    events = [b'{ "b" : 2 ,  "a":1 }', b'{"s":"\\u00e9\\n","f":1.50E+2}', '{"x":"caf\u00e9"}'.encode()]
    body = b'{"batch":[ ' + b" ,\n\t".join(events) + b" ]}"
    result = check_batch(body)
    assert result.accepted == events
    assert all(type(e) is bytes for e in result.accepted)
    # Not re-encoded: the key order, spacing and escapes survive.
    assert result.accepted[0] != json.dumps(json.loads(events[0])).encode()


def test_batch_mixing_good_oversized_and_non_object_events() -> None:
    good1, good2 = b'{"event_name":"first"}', b'{"event_name":"last"}'
    at_limit = event_of_size(MAX_EVENT_BYTES)
    over = event_of_size(MAX_EVENT_BYTES + 1)
    body = batch_of(good1, b"[1]", b'"s"', over, b"3", b"null", at_limit, b"true", good2)
    result = check_batch(body)
    assert result.accepted == [good1, at_limit, good2]
    assert result.rejected == [
        EventRejection(1, "event is not a JSON object"),
        EventRejection(2, "event is not a JSON object"),
        EventRejection(3, "event too large"),
        EventRejection(4, "event is not a JSON object"),
        EventRejection(5, "event is not a JSON object"),
        EventRejection(7, "event is not a JSON object"),
    ]


def test_event_of_exactly_max_bytes_is_accepted() -> None:
    event = event_of_size(MAX_EVENT_BYTES)
    assert check_batch(batch_of(event)).accepted == [event]


def test_event_one_byte_over_max_is_rejected() -> None:
    result = check_batch(batch_of(b"{}", event_of_size(MAX_EVENT_BYTES + 1)))
    assert result.accepted == [b"{}"]
    assert result.rejected == [EventRejection(1, "event too large")]


def test_oversized_non_object_is_too_large() -> None:
    big_array = b"[" + b",".join([b"1"] * 20_000) + b"]"
    assert len(big_array) > MAX_EVENT_BYTES
    assert check_batch(batch_of(big_array)).rejected == [EventRejection(0, "event too large")]


def test_extra_top_level_keys_are_ignored() -> None:
    body = b'{"meta":{"sdk":"x","v":[1,2]},"batch":[{"a":1}],"sent_at":1700000000000,"n":null}'
    assert check_batch(body) == BatchCheck([b'{"a":1}'], [])


@pytest.mark.parametrize("body", [b"{}", b'{"events":[{"a":1}]}', b'{"Batch":[]}'])
def test_batch_key_missing(body: bytes) -> None:
    exc = batch_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body must be an object with a 'batch' array")
    assert "batch" in exc.reason


@pytest.mark.parametrize("value", [b"{}", b'{"a":1}', b"null", b'"x"', b"5", b"true"])
def test_batch_not_an_array(value: bytes) -> None:
    exc = batch_error(b'{"batch":' + value + b"}")
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body must be an object with a 'batch' array")
    assert "$.batch" in exc.reason


@pytest.mark.parametrize("body", [b"[]", b'[{"a":1}]', b'"batch"', b"7", b"null"])
def test_batch_body_not_an_object(body: bytes) -> None:
    exc = batch_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is not a JSON object"


@pytest.mark.parametrize("body", [b"", b"   ", b"\n"])
def test_empty_batch_body(body: bytes) -> None:
    assert batch_error(body).reason == "body is empty"


def test_batch_with_invalid_utf8_in_an_event() -> None:
    exc = batch_error(b'{"batch":[{"a":1},{"b":"\xff"}]}')
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is not valid UTF-8 (byte 24)"


def test_batch_with_invalid_utf8_in_an_ignored_key() -> None:
    exc = batch_error(b'{"x":"\xfe","batch":[]}')
    assert exc.reason == "body is not valid UTF-8 (byte 6)"


@pytest.mark.parametrize(
    "body", [b'{"batch":[{"a":1}', b'{"batch":[{"a":1},]}', b'{"batch":[{"a":1}]} x', b'{"batch":[{"a":NaN}]}']
)
def test_malformed_batch(body: bytes) -> None:
    exc = batch_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason.startswith("body is not valid JSON")


def test_malformed_event_sinks_the_whole_batch() -> None:
    # Grammar errors cannot be isolated to one event: the body as a whole is not JSON.
    exc = batch_error(batch_of(b'{"a":1}', b'{"b":}'))
    assert exc.reason.startswith("body is not valid JSON")


@pytest.mark.parametrize(
    "body",
    [
        b'{"batch":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"batch":[' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]}",
    ],
    ids=["arrays", "objects"],
)
def test_deeply_nested_batch_is_a_clear_error(body: bytes) -> None:
    exc = batch_error(body)
    assert exc.problem is Problem.INVALID_BODY
    assert exc.reason == "body is not valid JSON: nested too deeply"
