"""A local Google Analytics 4 Measurement Protocol server for tests: it checks each request the way
Google's validation server does and answers the way Google does.

- `POST /mp/collect?measurement_id=…&api_secret=…` (or `firebase_app_id=…`): `204 No Content`, whatever
  the body holds — Google answers 2xx even to data it then drops. The problems found are kept with the
  request (`Ga4Server.requests()[i].messages`) so a test can assert that GA4 would have taken it.
- `POST /debug/mp/collect?…`: `200 {"validationMessages": [...]}`, each message with `fieldPath`,
  `description` and `validationCode` (`VALUE_INVALID`, `VALUE_REQUIRED`, `NAME_INVALID`,
  `NAME_RESERVED`, `VALUE_OUT_OF_BOUNDS`, `EXCEEDED_MAX_ENTITIES`), an empty list for a valid request.
- `fail(status, retry_after=…, times=…)`: the next requests get that status (429 or 5xx, with
  `Retry-After`), as Google does when overloaded.

What is checked (Google's Measurement Protocol reference and its limits, written here independently of
`destinations.ga4`): the query names this test's stream and secret; the body is a JSON object with only
the fields the protocol defines; a web stream needs `client_id`, an app stream an `app_instance_id` of 32
hexadecimal digits; `user_id` at most 256 characters; `timestamp_micros` an integer; consent values
`GRANTED`/`DENIED`; 1 to 25 events, each with a valid name (at most 40 characters, letters, digits and
underscores, starting with a letter; not reserved, no `google_`/`ga_`/`firebase_` prefix), at most 25
parameters with valid names and values (strings of at most 100 characters — `page_location` 1,000,
`page_referrer` 420, `page_title` 300 — numbers or booleans; `items` a list of at most 200 objects with
`item_id` or `item_name` and at most 10 custom parameters), `value` a number with a 3-letter
`currency`; at most 25 user properties, names of at most 24 characters, values of at most 36; a body
under 130 kB. A wrong `api_secret` is reported here, which Google's server does not do: a test secret
that does not reach it is a bug worth seeing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tooling.harness import LocalServer, read_body, send_reply

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
RESERVED_EVENTS = frozenset(
    [
        "ad_activeview",
        "ad_click",
        "ad_exposure",
        "ad_impression",
        "ad_query",
        "ad_reward",
        "adunit_exposure",
        "app_background",
        "app_clear_data",
        "app_exception",
        "app_install",
        "app_remove",
        "app_store_refund",
        "app_update",
        "app_upgrade",
        "dynamic_link_app_open",
        "dynamic_link_app_update",
        "dynamic_link_first_open",
        "error",
        "firebase_campaign",
        "firebase_in_app_message_action",
        "firebase_in_app_message_dismiss",
        "firebase_in_app_message_impression",
        "first_open",
        "first_visit",
        "in_app_purchase",
        "notification_dismiss",
        "notification_foreground",
        "notification_open",
        "notification_receive",
        "notification_send",
        "os_update",
        "screen_view",
        "session_start",
        "user_engagement",
    ]
)
RESERVED_PARAMS = frozenset({"firebase_conversion"})
RESERVED_USER_PROPERTIES = frozenset(
    {"first_open_time", "first_visit_time", "last_deep_link_referrer", "user_id", "first_open_after_install"}
)
ITEM_FIELDS = frozenset(
    [
        "item_id",
        "item_name",
        "affiliation",
        "coupon",
        "currency",
        "discount",
        "index",
        "item_brand",
        "item_category",
        "item_category2",
        "item_category3",
        "item_category4",
        "item_category5",
        "item_list_id",
        "item_list_name",
        "item_variant",
        "location_id",
        "price",
        "quantity",
    ]
)
BODY_FIELDS = frozenset(
    [
        "client_id",
        "app_instance_id",
        "user_id",
        "timestamp_micros",
        "user_properties",
        "consent",
        "non_personalized_ads",
        "events",
        "user_location",
        "ip_override",
        "device",
        "user_data",
        "validation_behavior",
    ]
)
LONG_VALUES = {"page_location": 1000, "page_referrer": 420, "page_title": 300}


@dataclasses.dataclass
class Ga4Received:
    """One request the server got: what it was, what it held, what a validation server says of it."""

    path: str
    query: dict[str, str]
    body: bytes
    payload: Any  # the decoded JSON (None when it is not JSON)
    messages: list[dict[str, str]]
    status: int


def _msg(field: str, description: str, code: str) -> dict[str, str]:
    return {"fieldPath": field, "description": description, "validationCode": code}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _name_messages(name: Any, field: str, what: str, limit: int, reserved: frozenset[str]) -> list[dict[str, str]]:
    if not isinstance(name, str) or not name:
        return [_msg(field, f"{what} is required.", "VALUE_REQUIRED")]
    if len(name) > limit:
        return [_msg(field, f"{what} [{name}] exceeds the maximum length of {limit}.", "VALUE_OUT_OF_BOUNDS")]
    if not NAME.match(name):
        return [
            _msg(
                field,
                f"{what} [{name}] is invalid. Names must start with an alphabetic character and contain only "
                "alphanumeric characters and underscores.",
                "NAME_INVALID",
            )
        ]
    if name in reserved or name.startswith(RESERVED_PREFIXES):
        return [_msg(field, f"{what} [{name}] is reserved.", "NAME_RESERVED")]
    return []


def _value_messages(name: str, value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        limit = LONG_VALUES.get(name, 100)
        if len(value) > limit:
            return [_msg(field, f"Value of [{name}] exceeds the maximum length of {limit}.", "VALUE_OUT_OF_BOUNDS")]
        return []
    if isinstance(value, bool) or _is_number(value):
        return []
    return [_msg(field, f"Value of [{name}] must be a string, a number or a boolean.", "VALUE_INVALID")]


def _event_messages(index: int, event: Any) -> list[dict[str, str]]:
    at = f"events[{index}]"
    if not isinstance(event, dict):
        return [_msg(at, f"Event at index: [{index}] is not an object.", "VALUE_INVALID")]
    found: list[dict[str, str]] = []
    name = event.get("name")
    for message in _name_messages(name, "events", f"Event at index: [{index}] has name", 40, RESERVED_EVENTS):
        found.append(message)
    for key in event:
        if key not in ("name", "params", "timestamp_micros"):
            found.append(
                _msg(at, f"Unable to parse event at index: [{index}]. Cannot find field: {key}", "VALUE_INVALID")
            )
    if "timestamp_micros" in event and not isinstance(event["timestamp_micros"], int):
        found.append(_msg(f"{at}.timestamp_micros", "timestamp_micros must be an integer.", "VALUE_INVALID"))
    params = event.get("params", {})
    if not isinstance(params, dict):
        return [*found, _msg(f"{at}.params", "params must be an object.", "VALUE_INVALID")]
    if len(params) > 25:
        found.append(
            _msg(f"{at}.params", f"Event at index: [{index}] has more than 25 parameters.", "EXCEEDED_MAX_ENTITIES")
        )
    for key, value in params.items():
        field = f"{at}.params.{key}"
        found += _name_messages(key, field, "Parameter name", 40, RESERVED_PARAMS)
        if key == "items":
            found += _items_messages(value, field)
        else:
            found += _value_messages(key, value, field)
    if "value" in params and not _is_number(params["value"]):
        found.append(_msg(f"{at}.params.value", "value must be a number.", "VALUE_INVALID"))
    if "currency" in params:
        currency = params["currency"]
        if not (isinstance(currency, str) and re.fullmatch(r"[A-Z]{3}", currency)):
            found.append(_msg(f"{at}.params.currency", "currency must be a 3-letter ISO 4217 code.", "VALUE_INVALID"))
    elif "value" in params:
        found.append(_msg(f"{at}.params.currency", "currency is required when value is set.", "VALUE_REQUIRED"))
    return found


def _items_messages(items: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(items, list):
        return [_msg(field, "items must be an array.", "VALUE_INVALID")]
    found: list[dict[str, str]] = []
    if len(items) > 200:
        found.append(_msg(field, "More than 200 items.", "EXCEEDED_MAX_ENTITIES"))
    for i, item in enumerate(items):
        at = f"{field}[{i}]"
        if not isinstance(item, dict):
            found.append(_msg(at, "An item must be an object.", "VALUE_INVALID"))
            continue
        if "item_id" not in item and "item_name" not in item:
            found.append(_msg(at, "Item requires item_id or item_name.", "VALUE_REQUIRED"))
        custom = [key for key in item if key not in ITEM_FIELDS]
        if len(custom) > 10:
            found.append(_msg(at, "Item has more than 10 custom parameters.", "EXCEEDED_MAX_ENTITIES"))
        for key, value in item.items():
            found += _name_messages(key, f"{at}.{key}", "Item parameter name", 40, RESERVED_PARAMS)
            found += _value_messages(key, value, f"{at}.{key}")
        for key in ("price", "quantity", "discount", "index"):
            if key in item and not _is_number(item[key]):
                found.append(_msg(f"{at}.{key}", f"{key} must be a number.", "VALUE_INVALID"))
    return found


def validation_messages(
    query: dict[str, str],
    body: bytes,
    *,
    api_secret: str,
    measurement_id: str | None = None,
    firebase_app_id: str | None = None,
) -> list[dict[str, str]]:
    """What Google's validation server would say of one request (pure)."""
    found: list[dict[str, str]] = []
    if "api_secret" not in query:
        found.append(_msg("api_secret", "api_secret is required.", "VALUE_REQUIRED"))
    elif query["api_secret"] != api_secret:
        found.append(_msg("api_secret", "api_secret does not match this stream's secret.", "VALUE_INVALID"))
    app = firebase_app_id is not None
    stream_key, expected = ("firebase_app_id", firebase_app_id) if app else ("measurement_id", measurement_id)
    if stream_key not in query:
        found.append(_msg(stream_key, f"{stream_key} is required.", "VALUE_REQUIRED"))
    elif query[stream_key] != expected:
        found.append(_msg(stream_key, f"{stream_key} [{query[stream_key]}] is not this stream.", "VALUE_INVALID"))
    if len(body) >= 130_000:
        found.append(_msg("", "The post body must be smaller than 130kB.", "VALUE_OUT_OF_BOUNDS"))
    try:
        payload = json.loads(body)
    except ValueError:
        return [*found, _msg("", "Unable to parse Measurement Protocol JSON payload.", "VALUE_INVALID")]
    if not isinstance(payload, dict):
        return [*found, _msg("", "The payload must be a JSON object.", "VALUE_INVALID")]
    for key in payload:
        if key not in BODY_FIELDS:
            found.append(
                _msg(
                    key, f"Unable to parse Measurement Protocol JSON payload. Cannot find field: {key}", "VALUE_INVALID"
                )
            )
    if app:
        instance = payload.get("app_instance_id")
        if instance is None:
            found.append(_msg("app_instance_id", "app_instance_id is required.", "VALUE_REQUIRED"))
        elif not (isinstance(instance, str) and re.fullmatch(r"[0-9A-Fa-f]{32}", instance)):
            found.append(_msg("app_instance_id", "app_instance_id must be 32 hexadecimal digits.", "VALUE_INVALID"))
    else:
        client = payload.get("client_id")
        if not isinstance(client, str) or not client:
            found.append(_msg("client_id", "client_id is required.", "VALUE_REQUIRED"))
    if "user_id" in payload:
        user_id = payload["user_id"]
        if not isinstance(user_id, str):
            found.append(_msg("user_id", "user_id must be a string.", "VALUE_INVALID"))
        elif len(user_id) > 256:
            found.append(_msg("user_id", "user_id exceeds the maximum length of 256.", "VALUE_OUT_OF_BOUNDS"))
    if "timestamp_micros" in payload and not isinstance(payload["timestamp_micros"], int):
        found.append(_msg("timestamp_micros", "timestamp_micros must be an integer.", "VALUE_INVALID"))
    consent = payload.get("consent", {})
    if not isinstance(consent, dict):
        found.append(_msg("consent", "consent must be an object.", "VALUE_INVALID"))
    else:
        for key, value in consent.items():
            if key not in ("ad_user_data", "ad_personalization"):
                found.append(_msg(f"consent.{key}", f"Cannot find field: {key}", "VALUE_INVALID"))
            elif value not in ("GRANTED", "DENIED"):
                found.append(_msg(f"consent.{key}", f"{key} must be GRANTED or DENIED.", "VALUE_INVALID"))
    found += _user_property_messages(payload.get("user_properties", {}))
    events = payload.get("events")
    if not isinstance(events, list) or not events:
        found.append(_msg("events", "events is required.", "VALUE_REQUIRED"))
    else:
        if len(events) > 25:
            found.append(_msg("events", "A request can have at most 25 events.", "EXCEEDED_MAX_ENTITIES"))
        for index, event in enumerate(events):
            found += _event_messages(index, event)
    return found


def _user_property_messages(properties: Any) -> list[dict[str, str]]:
    if not isinstance(properties, dict):
        return [_msg("user_properties", "user_properties must be an object.", "VALUE_INVALID")]
    found: list[dict[str, str]] = []
    if len(properties) > 25:
        found.append(_msg("user_properties", "More than 25 user properties.", "EXCEEDED_MAX_ENTITIES"))
    for name, holder in properties.items():
        field = f"user_properties.{name}"
        found += _name_messages(name, field, "User property name", 24, RESERVED_USER_PROPERTIES)
        if not isinstance(holder, dict) or "value" not in holder:
            found.append(_msg(field, "A user property needs a value.", "VALUE_REQUIRED"))
            continue
        value = holder["value"]
        if isinstance(value, str) and len(value) > 36:
            found.append(_msg(field, "User property value exceeds the maximum length of 36.", "VALUE_OUT_OF_BOUNDS"))
        elif not isinstance(value, str | bool) and not _is_number(value):
            found.append(_msg(field, "User property value must be a string or a number.", "VALUE_INVALID"))
    return found


class Ga4Server(LocalServer):
    """A real HTTP/1.1 server on a free port in a thread (see the module docstring).

    with Ga4Server(measurement_id="G-TEST123", api_secret="s3cret") as ga4:
        ... send to ga4.url ...
        assert ga4.requests()[0].messages == []
    """

    REFUSED = ("GET",)

    def __init__(
        self, *, api_secret: str, measurement_id: str | None = None, firebase_app_id: str | None = None
    ) -> None:
        if (measurement_id is None) == (firebase_app_id is None):
            raise ValueError("give measurement_id (a web stream) or firebase_app_id (an app stream)")
        self.api_secret = api_secret
        self.measurement_id = measurement_id
        self.firebase_app_id = firebase_app_id
        self._received: list[Ga4Received] = []
        self._failures: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/mp/collect"  # the `endpoint` setting

    def fail(self, status: int, *, retry_after: str | None = None, times: int = 1) -> None:
        """Answer the next `times` requests with `status` (e.g. 429 or 503), with `Retry-After`."""
        with self._lock:
            self._failures += [(status, retry_after)] * times

    def requests(self) -> list[Ga4Received]:
        with self._lock:
            return list(self._received)

    def accepted_events(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(request body without `events`, event) for every event of every request answered 2xx."""
        found = []
        for received in self.requests():
            if 200 <= received.status < 300 and isinstance(received.payload, dict):
                top = {k: v for k, v in received.payload.items() if k != "events"}
                found += [(top, event) for event in received.payload.get("events", [])]
        return found

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        if body is None:
            return
        parts = urlsplit(handler.path)
        query = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        headers: list[tuple[str, str]] = []
        messages = validation_messages(
            query,
            body,
            api_secret=self.api_secret,
            measurement_id=self.measurement_id,
            firebase_app_id=self.firebase_app_id,
        )
        if failure is not None:
            status, retry_after = failure
            answer = b'{"error":{"code":%d,"message":"unavailable"}}' % status
            headers.append(("Content-Type", "application/json"))
            if retry_after is not None:
                headers.append(("Retry-After", retry_after))
        elif parts.path == "/debug/mp/collect":
            status = 200
            answer = json.dumps({"validationMessages": messages}).encode()
            headers.append(("Content-Type", "application/json"))
        elif parts.path == "/mp/collect":
            status, answer = 204, b""
        else:
            status, answer = 404, b"Not Found"
        with self._lock:
            self._received.append(Ga4Received(parts.path, query, body, payload, messages, status))
        send_reply(handler, status, answer, headers, content_length=status != 204)
