"""Normalizing and SHA-256 hashing of personal data, as the ad platforms match it (Meta, TikTok, Snapchat).

The platforms match a hash only against the hash of the same text, so the text must be normalized the
way they normalize it before hashing. The rules follow Meta's "customer information parameters" page of
the Conversions API (TikTok's and Snapchat's pages ask the same for email and phone):

- email: trimmed and lower-cased;
- phone: digits only, with the country code, no leading zeros (an international `00` prefix goes);
- first / last name: lower-case, no punctuation, UTF-8;
- city: lower-case, no punctuation, no special characters, no spaces;
- state: the 2-letter code for US states, lower-case; elsewhere lower-case, no punctuation or spaces;
- zip: lower-case, no spaces or dashes; US zip codes keep their first 5 digits;
- country: ISO 3166-1 alpha-2, lower-case;
- date of birth: YYYYMMDD; gender: `f` or `m`;
- external id: trimmed and lower-cased (hashing is recommended, not required, by Meta).

Each `normalize_*` returns None when nothing usable is left (such a value is not sent: a hash of a
wrong text matches nobody). `hash_if_needed` leaves a value that already is a SHA-256 hex digest alone,
so producers may hash on their side.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import unicodedata
from collections.abc import Callable
from typing import Any

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_NON_DIGITS = re.compile(r"\D+")
_SPACES = re.compile(r"\s+")
_US_ZIP = re.compile(r"^(\d{5})-?\d{4}$")
_DATE = re.compile(r"^(\d{4})[-/.]?(\d{1,2})[-/.]?(\d{1,2})(?:[T ].*)?$")
_DATE_DMY = re.compile(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})$")

# Meta asks for the 2-letter ANSI code of a US state; full names are turned into it.
US_STATES = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca", "colorado": "co",
    "connecticut": "ct", "delaware": "de", "districtofcolumbia": "dc", "florida": "fl", "georgia": "ga",
    "hawaii": "hi", "idaho": "id", "illinois": "il", "indiana": "in", "iowa": "ia", "kansas": "ks",
    "kentucky": "ky", "louisiana": "la", "maine": "me", "maryland": "md", "massachusetts": "ma",
    "michigan": "mi", "minnesota": "mn", "mississippi": "ms", "missouri": "mo", "montana": "mt",
    "nebraska": "ne", "nevada": "nv", "newhampshire": "nh", "newjersey": "nj", "newmexico": "nm",
    "newyork": "ny", "northcarolina": "nc", "northdakota": "nd", "ohio": "oh", "oklahoma": "ok",
    "oregon": "or", "pennsylvania": "pa", "rhodeisland": "ri", "southcarolina": "sc", "southdakota": "sd",
    "tennessee": "tn", "texas": "tx", "utah": "ut", "vermont": "vt", "virginia": "va", "washington": "wa",
    "westvirginia": "wv", "wisconsin": "wi", "wyoming": "wy",
}  # fmt: skip
_GENDERS = {"f": "f", "female": "f", "woman": "f", "w": "f", "m": "m", "male": "m", "man": "m"}


def _text(value: Any) -> str | None:
    """A scalar as text (phones and zips often arrive as numbers); None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else None
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    return None


def _letters_and_digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def _no_punctuation(text: str) -> str:
    """Drops punctuation and symbols (Unicode categories P* and S*), keeps letters of any script."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PS")


def _or_none(text: str) -> str | None:
    return text or None


def sha256_hex(text: str) -> str:
    """The lower-case hex SHA-256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_sha256_hex(value: Any) -> bool:
    return isinstance(value, str) and _SHA256_HEX.match(value) is not None


def normalize_email(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = text.strip().lower()
    return text if "@" in text else None  # not an address: a hash of it would match nobody


def normalize_phone(value: Any, default_country_code: str | None = None) -> str | None:
    """Digits only, without leading zeros. A national number (one leading 0, no `+` or `00`) gets
    `default_country_code` in place of its 0 when one is given; Meta needs the country code."""
    text = _text(value)
    if text is None:
        return None
    text = text.strip()
    digits = _NON_DIGITS.sub("", text)
    international = text.startswith("+") or digits.startswith("00")
    if default_country_code and not international and digits.startswith("0"):
        digits = _NON_DIGITS.sub("", default_country_code) + digits.lstrip("0")
    return _or_none(digits.lstrip("0"))


def normalize_name(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    return _or_none(_SPACES.sub(" ", _no_punctuation(text.lower())).strip())


def normalize_city(value: Any) -> str | None:
    text = _text(value)
    return None if text is None else _or_none(_letters_and_digits(text.lower()))


def normalize_state(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = _letters_and_digits(text.lower())
    return _or_none(US_STATES.get(text, text))


def normalize_zip(value: Any, country: str | None = None) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = re.sub(r"[\s-]+", "", text.strip().lower())
    if country == "us" or _US_ZIP.match(text):
        digits = text[:5]
        return digits if digits.isdigit() else None
    return _or_none(_letters_and_digits(text))


def normalize_country(value: Any) -> str | None:
    """An ISO 3166-1 alpha-2 code, lower-case (`uk` is taken as `gb`); anything else is not sent."""
    text = _text(value)
    if text is None:
        return None
    text = "".join(ch for ch in text.strip().lower() if ch.isascii() and ch.isalpha())
    if text == "uk":
        return "gb"
    return text if len(text) == 2 else None


def normalize_gender(value: Any) -> str | None:
    text = _text(value)
    return None if text is None else _GENDERS.get(text.strip().lower())


def normalize_birthdate(value: Any) -> str | None:
    """YYYYMMDD from `1990-01-31`, `19900131`, `1990/1/31`, `31/01/1990` or an ISO date-time."""
    text = _text(value)
    if text is None:
        return None
    text = text.strip()
    if found := _DATE.match(text):
        year, month, day = (int(part) for part in found.groups())
    elif found := _DATE_DMY.match(text):
        day, month, year = (int(part) for part in found.groups())
    else:
        return None
    try:
        date = datetime.date(year, month, day)
    except ValueError:
        return None
    return date.strftime("%Y%m%d")


def normalize_external_id(value: Any) -> str | None:
    text = _text(value)
    return None if text is None else _or_none(text.strip().lower())


def hash_if_needed(value: Any, normalize: Callable[[Any], str | None]) -> str | None:
    """The SHA-256 hex of the normalized value; a value that already is a SHA-256 hex digest is kept
    (lower-cased, as the platforms want it); None when nothing usable is left."""
    if is_sha256_hex(value):
        return value.lower()
    normalized = normalize(value)
    return None if normalized is None else sha256_hex(normalized)
