"""Required properties of the standard events (catalogue: trackpipe.events), checked on the v2 shape."""

from __future__ import annotations

from typing import Any

from trackpipe.events import ITEM_KEYS, PAYMENT_METHODS, PRODUCT_KEYS, PURCHASE_STATUSES, STANDARD_EVENTS


def _missing(event: dict[str, Any], key: str) -> bool:
    """Absent, null, or an empty string, list or object (0 and false are values)."""
    value = event.get(key)
    return not value and value != 0


def _absent(mapping: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The keys that are _missing (inlined: this runs several times for every event)."""
    get = mapping.get
    return [key for key in keys if not ((value := get(key)) or value == 0)]


def _check_items(items: Any) -> list[str]:
    if not isinstance(items, list):
        return ["items is not a list"]
    warnings = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            warnings.append(f"items[{i}] is not an object")
            continue
        warnings += [f"items[{i}].{key} is missing" for key in _absent(item, ITEM_KEYS)]
        product = item.get("product")
        if isinstance(product, dict):
            warnings += [f"items[{i}].product.{key} is missing" for key in _absent(product, PRODUCT_KEYS)]
        elif not _missing(item, "product"):
            warnings.append(f"items[{i}].product is not an object")
    return warnings


def _not_in(value: Any, allowed: frozenset[str]) -> bool:
    return not isinstance(value, str) or value not in allowed


def _is_currency(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()


def check_standard_event(event: dict[str, Any]) -> list[str]:
    """Warnings for a standard event that lacks what the seed platform requires; [] for custom events."""
    name = event.get("event_name")
    rule = STANDARD_EVENTS.get(name) if isinstance(name, str) else None
    if rule is None:
        return []
    required, conditional = rule
    warnings = [f"{name}: required property {key!r} is missing" for key in _absent(event, required)]
    for key in conditional:
        # `currency*` is required once value or revenue is set; `value*` once currency is set.
        triggers = ("value", "revenue") if key == "currency" else ("currency",)
        if _missing(event, key) and any(not _missing(event, t) for t in triggers):
            warnings.append(f"{name}: property {key!r} is required with {' or '.join(triggers)}")
    if "items" in event and not _missing(event, "items"):
        warnings += _check_items(event["items"])
    # Checks of values only for values that are there: a missing one already has its warning.
    user = event.get("user")
    if isinstance(user, dict) and user and "consent_categories" not in user:
        warnings.append("user.consent_categories is missing: consent filters cannot match this event")
    if name == "purchase" and not _missing(event, "status") and _not_in(event["status"], PURCHASE_STATUSES):
        warnings.append(f"purchase: status {event['status']!r} is not a known purchase status")
    if not _missing(event, "payment_method") and _not_in(event["payment_method"], PAYMENT_METHODS):
        warnings.append(f"payment_method {event['payment_method']!r} is not a known payment method")
    if not _missing(event, "currency") and not _is_currency(event["currency"]):
        warnings.append(f"currency {event['currency']!r} is not a three-letter ISO 4217 code")
    return warnings
