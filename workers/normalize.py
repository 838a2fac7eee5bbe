"""v1 → v2 normalization (docs/CONTRACT.md §3), as a pure function: a decoded event in, the v2 event out.

The rules run in the order of docs/CONTRACT.md §3; every fix-up that changes what the producer sent is
reported as a warning, every reason not to deliver as an error.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

V1_CONTEXT_KEYS = ("event_id", "event_timestamp", "page", "device", "app")
# v1 metadata objects: at the root only in v1 (v2 keeps them in `context`).
V1_ROOT_OBJECTS = ("page", "device", "app")
V2_ROOT_CONTEXT_KEYS = ("event_id", "event_timestamp")
# Numbers below this are read as seconds, not milliseconds (1e11 ms is March 1973).
SECONDS_THRESHOLD = 100_000_000_000
# Later than year 9999 is not a time anyone meant.
MAX_MILLIS = 253_402_300_799_999
# Namespace for event ids trackpipe generates: the same job always generates the same ids.
GENERATED_ID_NAMESPACE = uuid.UUID("6f1c2a57-6d0e-4b8e-9a43-3f7d5f0c2b11")


class Normalized(msgspec.Struct):
    event: dict[str, Any]
    warnings: list[str]
    errors: list[str]
    version: int  # 1 or 2, as received
    generated_id: bool = False


def _to_millis(value: Any) -> int | None:
    if type(value) is int and value >= 0:  # the usual case, first
        millis = value * 1000 if value < SECONDS_THRESHOLD else value
        return millis if millis <= MAX_MILLIS else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            return None
        millis = value * 1000 if value < SECONDS_THRESHOLD else value
        return int(millis) if millis <= MAX_MILLIS else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return _to_millis(float(text)) if text and text.lstrip("-").replace(".", "", 1).isdigit() else None
        except ValueError:
            return None
    return None


def parse_timestamp(value: Any) -> int | None:
    """Milliseconds since the epoch from a number, a numeric string or an ISO-8601 string."""
    millis = _to_millis(value)
    if millis is not None or not isinstance(value, str):
        return millis
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    millis = int(parsed.timestamp() * 1000)
    return millis if millis >= 0 else None


def _consent_categories(value: Any) -> list[str] | None:
    """`[1, 3]`, `["1", "3"]`, `3` and `"1,3"` all become `["1", "3"]`; None if unusable."""
    if type(value) is list:  # the usual case first: a list of clean strings, kept as it is
        for item in value:
            if type(item) is not str or item != item.strip():
                break
        else:
            return value
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [_category(value)]
    if isinstance(value, list):
        for item in value:
            if type(item) is not str:
                break
        else:  # a list of strings
            return [item.strip() for item in value]
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                return None
            out.append(_category(item))
        return out
    return None


def _category(item: str | int | float) -> str:
    if isinstance(item, float) and item.is_integer():
        return str(int(item))
    return str(item).strip()


def _move_into_context(event: dict[str, Any], context: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in event and key not in context:
            context[key] = event.pop(key)


def normalize(
    raw: Any, *, received_at: int, source_id: str, id_seed: str | Callable[[], str], owned: bool = False
) -> Normalized:
    """Normalize one decoded event. `id_seed` (or the function making it, called only when an id is
    generated) makes a generated event_id deterministic. The input is left as it was, unless the
    caller hands it over (`owned`: an event it decoded for this call alone), which saves copying it."""
    if not isinstance(raw, dict):
        return Normalized({}, [], ["event is not a JSON object"], 2)
    event: dict[str, Any] = raw if owned else dict(raw)
    warnings: list[str] = []
    errors: list[str] = []
    version = 2

    # Rule 1: v1 — properties to the root, metadata into context. v1 is a `properties` object, or,
    # without one, no `context` object and a root page/device/app object (v1 metadata; v2 puts them
    # in `context`): some v1 producers leave `properties` out and send their data at the root.
    properties = event.get("properties")
    if isinstance(properties, dict):
        version = 1
        del event["properties"]
        for key, value in properties.items():
            if key in event and event[key] != value:
                warnings.append(f"v1 property {key!r} replaced the root key of the same name")
            event[key] = value
    elif not isinstance(event.get("context"), dict) and any(isinstance(event.get(k), dict) for k in V1_ROOT_OBJECTS):
        version = 1
    context = event.get("context")
    if not isinstance(context, dict):
        if context is not None:
            warnings.append("context was not an object and was replaced")
        context = event["context"] = {}
    elif not owned:
        context = event["context"] = dict(context)
    # Rules 1 and 2: root metadata into context (v2 clients send event_id/timestamp at the root).
    if version == 1:
        _move_into_context(event, context, V1_CONTEXT_KEYS)
    elif "event_id" in event or "event_timestamp" in event:  # (most v2 events have neither)
        _move_into_context(event, context, V2_ROOT_CONTEXT_KEYS)

    # Rule 3: page.location (v1 name) becomes context.page.url.
    page = context.get("page")
    if isinstance(page, dict) and "location" in page and "url" not in page:
        page = page if owned else dict(page)
        page["url"] = page.pop("location")
        context["page"] = page

    # Rule 4: the timestamp as integer milliseconds.
    if "event_timestamp" in context:
        stamp = context["event_timestamp"]
        if type(stamp) is int and SECONDS_THRESHOLD <= stamp <= MAX_MILLIS:  # already milliseconds
            millis = stamp
        else:
            millis = _to_millis(stamp) if type(stamp) is int else parse_timestamp(stamp)
        if millis is None:
            shown = repr(context["event_timestamp"])[:60]
            warnings.append(f"context.event_timestamp {shown} is not a time; receive time used")
            millis = received_at
        if millis is not stamp:
            context["event_timestamp"] = millis
    else:
        warnings.append("context.event_timestamp is missing; receive time used")
        context["event_timestamp"] = received_at

    # Rule 5: consent categories as strings.
    user = event.get("user")
    if isinstance(user, dict) and "consent_categories" in user:
        categories = _consent_categories(given := user["consent_categories"])
        if categories is None:
            user = user if owned else dict(user)
            warnings.append("user.consent_categories is not a list of categories; removed")
            del user["consent_categories"]
            event["user"] = user
        elif categories is not given or not owned:  # (an owned event's clean list stays as it is)
            if categories is given:
                categories = list(given)  # the caller's list stays the caller's
            user = user if owned else dict(user)
            user["consent_categories"] = categories
            event["user"] = user

    # Rule 6: an event id, generated (deterministically) when missing.
    event_id = context.get("event_id")
    generated = False
    if isinstance(event_id, (int, float)) and not isinstance(event_id, bool):
        context["event_id"] = event_id = _category(event_id)
    if not isinstance(event_id, str) or not event_id.strip():
        seed = id_seed if isinstance(id_seed, str) else id_seed()
        context["event_id"] = str(uuid.uuid5(GENERATED_ID_NAMESPACE, seed))
        generated = True
        warnings.append("context.event_id is missing; generated (this event cannot be deduplicated)")

    # Rule 7: what trackpipe adds.
    context["received_at"] = received_at
    context["source_id"] = source_id

    # Rule 8: event_name is required.
    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip():
        errors.append("event_name is missing" if name is None else "event_name is not a non-empty string")

    return Normalized(event, warnings, errors, version, generated)


def fill_client(event: dict[str, Any], ip: str | None, user_agent: str | None) -> dict[str, Any]:
    """The event with `context.device.ip` / `context.device.user_agent` set from the request that
    carried it (the edge's `IngestRecord.ip` / `.user_agent`) where the event has none (absent, null
    or ""). What the event carries is never replaced; a `device` that is not an object is left
    alone. Pure: a changed event is a new dict (its context and device copied), the input is kept."""
    context = event.get("context")
    if not isinstance(context, dict):
        return event
    device = context.get("device")
    if device is None:
        device = {}
    elif not isinstance(device, dict):
        return event
    # (spelled out: this runs for every event, and most already carry both)
    get = device.get
    fill_ip = bool(ip) and ((held := get("ip")) is None or held == "")
    fill_agent = bool(user_agent) and ((held := get("user_agent")) is None or held == "")
    if not fill_ip and not fill_agent:
        return event
    device = dict(device)
    if fill_ip:
        device["ip"] = ip
    if fill_agent:
        device["user_agent"] = user_agent
    return {**event, "context": {**context, "device": device}}
