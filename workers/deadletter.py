"""Dead-letter records: one per event a destination will not take, with why and when."""

from __future__ import annotations

import msgspec


class DeadLetter(msgspec.Struct):
    event_id: str
    event_name: str
    destination_id: str
    reason: str
    attempts: int
    first_failure_at: int  # ms
    last_failure_at: int  # ms
    event: msgspec.Raw  # the normalized event, as it would have been delivered


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def encode_dead_letter(record: DeadLetter) -> bytes:
    return _encoder.encode(record)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _decoder.decode(data)


def error_kind(reason: str) -> str:
    """The part of a reason that groups errors (`HTTP 500`, `timeout`), without response bodies."""
    return reason.split(": ", 1)[0][:80]
