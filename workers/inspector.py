"""What the live event inspector keeps of each processed event, and which events it keeps."""

from __future__ import annotations

import ipaddress
from typing import Any

import msgspec

from workers.status import EventStatus


class InspectorRecord(msgspec.Struct):
    received_at: int
    status: str
    event_id: str | None
    event_name: str | None
    warnings: list[str]
    errors: list[str]
    destinations: dict[str, str]  # destination id -> "queued" or "filtered"
    test_code: str | None
    payload: Any  # the normalized event, IP masked (or the raw text when it could not be decoded)


def mask_ip(value: Any) -> Any:
    """The last octet of an IPv4 address zeroed; an IPv6 address cut to its first 48 bits.
    Anything else that is not null is masked whole: it may encode an address another way."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "masked"
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return "masked"
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def _with_masked_device(holder: dict[str, Any]) -> dict[str, Any]:
    device = holder.get("device")
    if not isinstance(device, dict) or "ip" not in device:
        return holder
    return {**holder, "device": {**device, "ip": mask_ip(device["ip"])}}


def masked_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The event with `context.device.ip` (and a stray root `device.ip`) masked; the input is not changed."""
    masked = _with_masked_device(event)
    context = masked.get("context")
    if isinstance(context, dict):
        masked_context = _with_masked_device(context)
        if masked_context is not context:
            masked = {**masked, "context": masked_context}
    return masked


def test_code_of(event: dict[str, Any]) -> str | None:
    for holder in (event, event.get("context")):
        if isinstance(holder, dict) and holder.get("test_code") not in (None, ""):
            return str(holder["test_code"])
    return None


def always_kept(status: str, test_code: str | None) -> bool:
    """Rejected events and test events are always kept; the rest are sampled at high volume."""
    return status == EventStatus.INVALID_REJECTED or test_code is not None


_encoder = msgspec.json.Encoder()


def encode_record(record: InspectorRecord) -> bytes:
    return _encoder.encode(record)
