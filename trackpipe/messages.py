"""Messages that cross Redis: edge -> workers, ingest job -> delivery job, and dead letters (written
by delivery jobs, read by the DLQ commands and the admin API)."""

from __future__ import annotations

import msgspec


class IngestRecord(msgspec.Struct, array_like=True, frozen=True):
    """The accepted events of one request, as the edge received them."""

    source_id: str
    site_id: str
    received_at: int  # ms since the epoch, set by the edge
    events: list[bytes]  # each the raw JSON of one event (decompressed, checked to be an object)
    # The client's address (after the source's ip_mode; None when dropped or unknown) and User-Agent,
    # for events that do not carry their own. Last, with defaults: older records decode unchanged.
    ip: str | None = None
    user_agent: str | None = None


class IngestBatch(msgspec.Struct, array_like=True, frozen=True):
    """One group commit: the records of every request that joined it. One RQ job each."""

    records: list[IngestRecord]

    @property
    def event_count(self) -> int:
        return sum(len(r.events) for r in self.records)


class DeliveryEvent(msgspec.Struct, array_like=True):
    """One normalized event on its way to one destination."""

    event_id: str
    event_name: str
    body: bytes  # the normalized v2 event as JSON, ready to send or to write
    attempts: int = 0
    first_failure_at: int | None = None  # ms
    last_error: str | None = None
    received_at: int = 0  # ms, when the edge received it (for ingest-to-delivery latency)


class DeliveryBatch(msgspec.Struct, array_like=True):
    """The input of one delivery job, on the destination's own queue."""

    destination_id: str
    events: list[DeliveryEvent]
    created_at: int  # ms
    origin: str  # the ingest job (or replay) that made it


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(IngestBatch)


def encode_batch(batch: IngestBatch) -> bytes:
    return _encoder.encode(batch)


def decode_batch(data: bytes) -> IngestBatch:
    return _batch_decoder.decode(data)


_delivery_decoder = msgspec.msgpack.Decoder(DeliveryBatch)


def encode_delivery(batch: DeliveryBatch) -> bytes:
    return _encoder.encode(batch)


def decode_delivery(data: bytes) -> DeliveryBatch:
    return _delivery_decoder.decode(data)


class DeadLetter(msgspec.Struct):
    """One event a destination will not take, with why and when (a `P:dlq:<dest>` entry, as JSON)."""

    event_id: str
    event_name: str
    destination_id: str
    reason: str
    attempts: int
    first_failure_at: int  # ms
    last_failure_at: int  # ms
    event: msgspec.Raw  # the normalized event, as it would have been delivered


_json_encoder = msgspec.json.Encoder()
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)


def encode_dead_letter(record: DeadLetter) -> bytes:
    return _json_encoder.encode(record)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(data)
