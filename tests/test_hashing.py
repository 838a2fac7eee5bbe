"""Normalization and hashing of personal data (destinations.hashing), checked against digests computed
here with hashlib on the literal normalized text, never with the code under test."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from destinations import hashing


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_sha256_hex_is_hashlib_of_the_utf8_bytes() -> None:
    assert hashing.sha256_hex("jane.doe@example.com") == hashlib.sha256(b"jane.doe@example.com").hexdigest()
    assert hashing.sha256_hex("zoë") == hashlib.sha256("zoë".encode()).hexdigest()
    # The vendor page's example: user@example.com hashes to this.
    assert hashing.sha256_hex("user@example.com") == "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("jane@example.com", "jane@example.com"),
        ("not an address", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_email(raw: Any, normalized: str | None) -> None:
    assert hashing.normalize_email(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "country_code", "normalized"),
    [
        ("+1 (650) 555-1212", None, "16505551212"),
        ("+33 6 12 34 56 78", None, "33612345678"),
        ("0033 6 12 34 56 78", None, "33612345678"),  # the international 00 goes
        ("06 12 34 56 78", "33", "33612345678"),  # a national number gets the default country code
        ("06 12 34 56 78", None, "612345678"),  # no default: leading zeros still go
        ("+44 07700 900123", "33", "4407700900123"),  # international: the default is not applied
        (16505551212, None, "16505551212"),
        ("call me", None, None),
        ("", None, None),
    ],
)
def test_phone(raw: Any, country_code: str | None, normalized: str | None) -> None:
    assert hashing.normalize_phone(raw, country_code) == normalized


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Mary", "mary"),
        ("  O'Brien-Smith ", "obriensmith"),
        ("Zoë", "zoë"),
        ("Anne  Marie", "anne marie"),
        ("...", None),
    ],
)
def test_name(raw: str, normalized: str | None) -> None:
    assert hashing.normalize_name(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("San Francisco", "sanfrancisco"), ("Saint-Étienne", "saintétienne"), (" New York, NY ", "newyorkny"), ("", None)],
)
def test_city(raw: str, normalized: str | None) -> None:
    assert hashing.normalize_city(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "normalized"), [("CA", "ca"), ("California", "ca"), ("New York", "ny"), ("Île-de-France", "îledefrance")]
)
def test_state(raw: str, normalized: str) -> None:
    assert hashing.normalize_state(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "country", "normalized"),
    [
        ("94035-1234", None, "94035"),
        ("940351234", None, "94035"),
        ("94035", "us", "94035"),
        ("SW1A 1AA", "gb", "sw1a1aa"),
        ("75001", "fr", "75001"),
        (75001, None, "75001"),
        ("", None, None),
    ],
)
def test_zip(raw: Any, country: str | None, normalized: str | None) -> None:
    assert hashing.normalize_zip(raw, country) == normalized


@pytest.mark.parametrize(
    ("raw", "normalized"), [("US", "us"), (" fr ", "fr"), ("UK", "gb"), ("France", None), ("", None)]
)
def test_country(raw: str, normalized: str | None) -> None:
    assert hashing.normalize_country(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("F", "f"), ("female", "f"), ("Male", "m"), ("m", "m"), ("x", None), ("", None)],
)
def test_gender(raw: str, normalized: str | None) -> None:
    assert hashing.normalize_gender(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("1990-01-31", "19900131"),
        ("19900131", "19900131"),
        ("1990/1/31", "19900131"),
        ("31/01/1990", "19900131"),
        ("1990-01-31T00:00:00Z", "19900131"),
        ("1990-02-31", None),
        ("yesterday", None),
    ],
)
def test_birthdate(raw: str, normalized: str | None) -> None:
    assert hashing.normalize_birthdate(raw) == normalized


def test_hash_if_needed_normalizes_then_hashes() -> None:
    assert hashing.hash_if_needed("  Jane.Doe@Example.COM ", hashing.normalize_email) == sha("jane.doe@example.com")
    assert hashing.hash_if_needed("+1 (650) 555-1212", hashing.normalize_phone) == sha("16505551212")
    assert hashing.hash_if_needed("San Francisco", hashing.normalize_city) == sha("sanfrancisco")
    assert hashing.hash_if_needed("nothing", hashing.normalize_email) is None


def test_an_existing_sha256_is_left_alone() -> None:
    digest = hashlib.sha256(b"jane.doe@example.com").hexdigest()
    assert hashing.hash_if_needed(digest, hashing.normalize_email) == digest
    # Upper-case hex is the same hash: kept, lower-cased (the platforms want lower-case hex).
    assert hashing.hash_if_needed(digest.upper(), hashing.normalize_email) == digest
    # 63 hex characters are not a hash: normalized (not an email: nothing sent).
    assert hashing.hash_if_needed(digest[:63], hashing.normalize_email) is None
    assert hashing.hash_if_needed(digest[:63], hashing.normalize_external_id) == sha(digest[:63])
