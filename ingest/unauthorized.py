"""Requests refused for their key: counted, and a capped sample kept for the inspector.

They are never stored for delivery. The sample holds the start of the body, never the key.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

SAMPLE_BODY_BYTES = 2_048


class AuthFailure(StrEnum):
    MISSING_KEY = "missing key"
    UNKNOWN_KEY = "unknown key"
    MISSING_SITE = "missing tc_s"


class UnauthorizedSample(msgspec.Struct, frozen=True):
    site_id: str
    reason: str
    received_at: int
    route: str
    body: str  # the start of the body, decoded leniently
    body_bytes: int

    @classmethod
    def of(cls, site_id: str, reason: AuthFailure, received_at: int, route: str, body: bytes):
        start = body[:SAMPLE_BODY_BYTES].decode("utf-8", "replace")
        return cls(site_id, reason.value, received_at, route, start, len(body))


_encoder = msgspec.json.Encoder()


def encode_sample(sample: UnauthorizedSample) -> bytes:
    return _encoder.encode(sample)
