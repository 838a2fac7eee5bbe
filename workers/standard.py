"""Checks of the standard events (catalogue: trackpipe.events) and of what every event needs, on the
v2 shape. They only find; workers.specification.judge decides what each finding does (a warning, a
removed property, a rejection).

Paths in findings start at the event's root ("value", "items[0].product.price", "user.consent_categories"),
so the judge can remove exactly the property a `bad_value` finding names.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, Literal

import msgspec

from trackpipe.events import (
    ITEM_KEYS,
    ITEM_NUMBER_PROPERTIES,
    NULLABLE,
    NUMBER_PROPERTIES,
    PAYMENT_METHODS,
    PRODUCT_KEYS,
    PRODUCT_NUMBER_PROPERTIES,
    PURCHASE_STATUSES,
    STANDARD_EVENTS,
    VIDEO_BOOLEAN_PROPERTIES,
    VIDEO_EVENTS,
    VIDEO_NUMBER_PROPERTIES,
)
from workers.status import Finding

_VIDEO_EVENTS = frozenset(VIDEO_EVENTS)
# A warning quotes the offending value; a long one is cut (it is the producer's data, not ours).
_SHOWN_CHARS = 60


def _missing(event: dict[str, Any], key: str) -> bool:
    """Absent, null, or an empty string, list or object (0 and false are values)."""
    value = event.get(key)
    return not value and value != 0


def _absent(mapping: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The keys that are _missing (inlined: this runs several times for every event); a null is a
    value for the NULLABLE ones (total_length of a livestream)."""
    get = mapping.get
    return [
        key
        for key in keys
        if not ((value := get(key)) or value == 0) and not (value is None and key in NULLABLE and key in mapping)
    ]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _is_number(value: Any) -> bool:
    """JSON numbers only: true/false and numeric strings are not numbers; nor is an infinity (a number
    too large for a float, which JSON cannot carry on)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _is_currency(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()


def _not_in(value: Any, allowed: frozenset[str]) -> bool:
    return not isinstance(value, str) or value not in allowed


def _bad(path: str, message: str) -> Finding:
    return Finding(path, message, "bad_value")


def _numbers(mapping: dict[str, Any], keys: tuple[str, ...], prefix: str, skip: set[str]) -> list[Finding]:
    """bad_value for each present, non-null key that is not a number."""
    get = mapping.get
    return [
        _bad(f"{prefix}{key}", f"{prefix}{key} {_show(value)} is not a number")
        for key in keys
        if (value := get(key)) is not None and key not in skip and not _is_number(value)
    ]


def _check_items(items: Any) -> list[Finding]:
    if not isinstance(items, list):
        return [_bad("items", f"items {_show(items)} is not a list of objects")]
    findings: list[Finding] = []
    not_objects: list[int] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            not_objects.append(i)
            continue
        where = f"items[{i}]."
        missing = _absent(item, ITEM_KEYS)
        findings += [Finding(f"{where}{key}", f"{where}{key} is missing", "missing") for key in missing]
        findings += _numbers(item, ITEM_NUMBER_PROPERTIES, where, set(missing))
        product = item.get("product")
        if isinstance(product, dict):
            where = f"items[{i}].product."
            missing = _absent(product, PRODUCT_KEYS)
            findings += [Finding(f"{where}{key}", f"{where}{key} is missing", "missing") for key in missing]
            findings += _numbers(product, PRODUCT_NUMBER_PROPERTIES, where, set(missing))
            currency = product.get("currency")
            if currency is not None and not _is_currency(currency):
                findings.append(
                    _bad(f"{where}currency", f"{where}currency {_show(currency)} is not a three-letter ISO 4217 code")
                )
        elif "product" not in missing:
            findings.append(_bad(f"items[{i}].product", f"items[{i}].product {_show(product)} is not an object"))
    # Entries that are not objects last, highest index first: removing one shifts the ones after it,
    # and every other path of this list must still point where it did.
    findings += [_bad(f"items[{i}]", f"items[{i}] {_show(items[i])} is not an object") for i in reversed(not_objects)]
    return findings


# --- the quick look ----------------------------------------------------------------------------
#
# Most events have nothing to report. A typed look (msgspec converting the event to a Struct made
# for its name, in C) tells those apart; an event it does not take goes to the full check below,
# which alone makes findings. Each shape is at least as strict as the full check (a value the full
# check takes but the shape does not, an empty `user` for one, only costs the full check), so
# "the shape takes it" always means "the full check would find nothing".

_FLOAT = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]  # finite
_NUMBER = int | _FLOAT  # bool is neither: msgspec's strict conversion keeps them apart
# A required property that is there: not null, "", [] or {} (0 and false are values).
_PRESENT = Annotated[str, msgspec.Meta(min_length=1)] | int | float | bool
# Three letters here; that they are ASCII capitals, _fine checks on the converted shape
# (_capitals): a pattern here cost a third of the look (regular expressions are slow in msgspec's
# constraints), and a literal of every code costs half a second to build, once per shape.
_CURRENCY = Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
_PAYMENT = Literal[tuple(sorted(PAYMENT_METHODS))]  # type: ignore[valid-type]
_PURCHASE_STATUS = Literal[tuple(sorted(PURCHASE_STATUSES))]  # type: ignore[valid-type]
_ANY: Any = Any


class _Product(msgspec.Struct):
    name: _PRESENT  # type: ignore[valid-type]
    price: _NUMBER  # type: ignore[valid-type]
    currency: _CURRENCY | None = None


_Item = msgspec.defstruct(
    "_Item",
    [
        *(
            (key, _NUMBER if key in ITEM_NUMBER_PROPERTIES else _Product if key == "product" else _PRESENT)
            for key in ITEM_KEYS
        ),
        *((key, _NUMBER | None, None) for key in ITEM_NUMBER_PROPERTIES if key not in ITEM_KEYS),
    ],
    kw_only=True,
)


class _User(msgspec.Struct):
    consent_categories: _ANY  # a non-empty user without it is a finding


def _shape(name: str, required: tuple[str, ...]) -> type:
    """The Struct an event of this standard name converts to only if the full check finds nothing."""
    numbers = set(NUMBER_PROPERTIES)
    booleans: set[str] = set()
    if name in VIDEO_EVENTS:
        numbers.update(VIDEO_NUMBER_PROPERTIES)
        booleans.update(VIDEO_BOOLEAN_PROPERTIES)
    typed: dict[str, Any] = {
        "items": list[_Item],  # type: ignore[valid-type]
        "user": _User,
        "payment_method": _PAYMENT,
        "currency": _CURRENCY,
        **({"status": _PURCHASE_STATUS} if name == "purchase" else {}),
        **dict.fromkeys(numbers, _NUMBER),
        **dict.fromkeys(booleans, bool),
    }
    fields: list[Any] = []
    for key in required:
        kind = typed.get(key, _PRESENT)
        if key == "items":
            kind = Annotated[list[_Item], msgspec.Meta(min_length=1)]  # type: ignore[valid-type]
        fields.append((key, kind | None if key in NULLABLE else kind))
    fields += [(key, kind | None, None) for key, kind in typed.items() if key not in required]
    return msgspec.defstruct(f"_{name}_shape", fields, kw_only=True)


_SHAPES = {name: _shape(name, required) for name, (required, _) in STANDARD_EVENTS.items()}


def _fine(event: dict[str, Any], name: str, conditional: tuple[str, ...]) -> bool:
    """True only if check_standard_event would find nothing in the event (a standard one)."""
    try:
        shaped = msgspec.convert(event, _SHAPES[name])
    except (msgspec.ValidationError, TypeError):
        return False
    if not _capitals(shaped):
        return False
    for key in conditional:
        triggers = ("value", "revenue") if key == "currency" else ("currency",)
        if _missing(event, key) and any(not _missing(event, t) for t in triggers):
            return False
    return True


def _capitals(shaped: Any) -> bool:
    """The shape's currencies (three-letter strings where present) are ASCII capitals, as
    _is_currency wants them."""
    currency = shaped.currency
    if currency is not None and not (currency.isascii() and currency.isalpha() and currency.isupper()):
        return False
    for item in shaped.items or ():
        currency = item.product.currency
        if currency is not None and not (currency.isascii() and currency.isalpha() and currency.isupper()):
            return False
    return True


def check_standard_event(event: dict[str, Any]) -> list[Finding]:
    """What a standard event lacks (`missing`) or carries with a wrong type or value (`bad_value`),
    as the events reference describes it; [] for custom events."""
    name = event.get("event_name")
    rule = STANDARD_EVENTS.get(name) if isinstance(name, str) else None
    if rule is None:
        return []
    required, conditional = rule
    if _fine(event, name, conditional):
        return []
    return _findings(event, name, required, conditional)


def _findings(
    event: dict[str, Any], name: str, required: tuple[str, ...], conditional: tuple[str, ...]
) -> list[Finding]:
    """The full check of a standard event."""
    missing = _absent(event, required)
    findings = [Finding(key, f"{name}: required property {key!r} is missing", "missing") for key in missing]
    for key in conditional:
        # `currency*` is required once value or revenue is set; `value*` once currency is set.
        triggers = ("value", "revenue") if key == "currency" else ("currency",)
        if _missing(event, key) and any(not _missing(event, t) for t in triggers):
            missing.append(key)
            findings.append(
                Finding(key, f"{name}: property {key!r} is required with {' or '.join(triggers)}", "missing")
            )
    # Checks of values only for values that are there: a missing one already has its finding.
    skip = set(missing)
    findings += _numbers(event, NUMBER_PROPERTIES, "", skip)
    if name in _VIDEO_EVENTS:
        findings += _numbers(event, VIDEO_NUMBER_PROPERTIES, "", skip)
        findings += [
            _bad(key, f"{key} {_show(value)} is not a boolean")
            for key in VIDEO_BOOLEAN_PROPERTIES
            if (value := event.get(key)) is not None and key not in skip and not isinstance(value, bool)
        ]
    if "items" not in skip and event.get("items") is not None:
        findings += _check_items(event["items"])
    user = event.get("user")
    if "user" not in skip and user is not None and not isinstance(user, dict):
        findings.append(_bad("user", f"user {_show(user)} is not an object"))
    elif isinstance(user, dict) and user and "consent_categories" not in user:
        # The reference marks it required in User; without it consent filters cannot match.
        findings.append(
            Finding(
                "user.consent_categories",
                "user.consent_categories is missing: consent filters cannot match this event",
                "missing",
            )
        )
    if (
        name == "purchase"
        and "status" not in skip
        and "status" in event
        and _not_in(event["status"], PURCHASE_STATUSES)
    ):
        findings.append(_bad("status", f"purchase: status {_show(event['status'])} is not a known purchase status"))
    method = event.get("payment_method")
    if method is not None and "payment_method" not in skip and _not_in(method, PAYMENT_METHODS):
        findings.append(_bad("payment_method", f"payment_method {_show(method)} is not a known payment method"))
    currency = event.get("currency")
    if currency is not None and "currency" not in skip and not _is_currency(currency):
        findings.append(_bad("currency", f"currency {_show(currency)} is not a three-letter ISO 4217 code"))
    return findings


def check_common(event: dict[str, Any]) -> list[Finding]:
    """What the HTTP Tracking API's schema requires of every event, standard or custom, beyond
    `event_name` and `context` (normalize reports those): `user.consistent_anonymous_id`."""
    user = event.get("user")
    if isinstance(user, dict) and not _missing(user, "consistent_anonymous_id"):
        return []
    return [
        Finding(
            "user.consistent_anonymous_id",
            "user.consistent_anonymous_id is missing (the user's anonymous id, required on every event)",
            "missing",
        )
    ]
