"""JSON checks of request bodies (pure: bytes in, accepted events and per-event refusals out).

The edge only proves that each event is a well-formed UTF-8 JSON object within its size limit;
it keeps the event's raw bytes. Normalization is the workers' job.
"""

from __future__ import annotations

import msgspec

from ingest.problems import RequestRejected, invalid

MAX_EVENT_BYTES = 32_768
MAX_BATCH_BYTES = 512_000

# Decoding into Raw validates the JSON grammar without building Python objects.
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)


class BatchBody(msgspec.Struct):
    batch: list[msgspec.Raw]


_batch_decoder = msgspec.json.Decoder(BatchBody)


class EventRejection(msgspec.Struct):
    index: int
    error: str


class BatchCheck(msgspec.Struct):
    accepted: list[bytes]
    rejected: list[EventRejection]


def _json_problem(exc: Exception) -> RequestRejected:
    if isinstance(exc, RecursionError):
        return invalid("body is not valid JSON: nested too deeply")
    if isinstance(exc, UnicodeDecodeError):
        return invalid(f"body is not valid UTF-8 (byte {exc.start})")
    return invalid(f"body is not valid JSON: {exc}")


def _check_utf8(data: bytes) -> None:
    # Raw decoding skips over strings without checking their encoding.
    data.decode("utf-8")


def _is_object(raw: bytes | memoryview) -> bool:
    return bytes(raw[:1]) == b"{" or bytes(raw).lstrip()[:1] == b"{"


def check_event(body: bytes) -> bytes:
    """A single-event body: must be one JSON object. Returns the bytes to store."""
    if not body.strip():
        raise invalid("body is empty")
    try:
        _raw_decoder.decode(body)
        _check_utf8(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _json_problem(exc) from None
    if not _is_object(body):
        raise invalid("body is not a JSON object")
    return body


def check_batch(body: bytes) -> BatchCheck:
    """A batch body: `{"batch": [event, ...]}`. Each event is accepted or refused on its own."""
    if not body.strip():
        raise invalid("body is empty")
    try:
        parsed = _batch_decoder.decode(body)
        _check_utf8(body)
    except msgspec.ValidationError as exc:
        if not _is_object(body):
            raise invalid("body is not a JSON object") from None
        raise invalid(f"body must be an object with a 'batch' array ({exc})") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _json_problem(exc) from None
    accepted: list[bytes] = []
    rejected: list[EventRejection] = []
    for index, raw in enumerate(parsed.batch):
        event = bytes(raw)
        if len(event) > MAX_EVENT_BYTES:
            rejected.append(EventRejection(index, "event too large"))
        elif not event.startswith(b"{"):
            rejected.append(EventRejection(index, "event is not a JSON object"))
        else:
            accepted.append(event)
    return BatchCheck(accepted, rejected)
