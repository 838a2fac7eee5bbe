"""`ga4`: Google Analytics 4 through the Measurement Protocol (server-side events).

Where the facts come from:

- The vendor's GA4 destination page (Commanders Act): the event names (each standard event keeps its
  name; custom events pass through under their own), every parameter and item mapping
  (`payment_method`→`payment_type`, `shipping_amount`→`shipping`, `tax_amount`→`tax`, `type`→
  `conversion_type`, `status`→`conversion_status`, items `id`→`item_id`, `product.name`→`item_name`,
  `product.category_1..5`→`item_category..item_category5`, `variant`→`item_variant`,
  `list_position`→`index`, ...), the client id from the `_ga` cookie (the right-most two dot-separated
  parts, `GA1.1.123.456` → `123.456`) falling back to `user.consistent_anonymous_id`, the session id
  from the `_ga_<measurement id without "G-">` cookie falling back to `ga_session_id` and then
  `context.device.lifecycle.session_id`, app streams (`firebase_app_id`, an `app_instance_id` from a
  configured field or the first 32 characters of the SHA-256 of `context.device.sdk_id` or
  `user.tcId`), `user.id`→`user_id`, consent (`user.google_consent_mode.ad_user_data` /
  `.ad_personalization`), geography (`user.current_location_*`→`user_location`, `context.device.ip`→
  `ip_override`), the engagement time (default 1 ms) and debug mode.
  The page names the transaction id's field `id`; Google's events call it `transaction_id` (GA4
  deduplicates purchases on it), so that is what is sent.
- Google's Measurement Protocol documentation (the platform itself): the request (`POST
  /mp/collect?measurement_id=&api_secret=` or `?firebase_app_id=&api_secret=`, a JSON body with
  `client_id` or `app_instance_id`, `user_id`, `timestamp_micros`, `consent`, `user_properties`,
  `events`), `session_id` and `engagement_time_msec` as event parameters, the validation server
  (`/debug/mp/collect`, `{"validationMessages": [{"fieldPath", "description", "validationCode"}]}`), and
  the limits enforced here before sending: 25 events per request; event names and parameter names at
  most 40 characters of letters, digits and underscores, starting with a letter, reserved names and
  the `google_`, `ga_`, `firebase_` prefixes refused; 25 parameters per event; parameter values of at
  most 100 characters (GA4's collection limits allow `page_location` 1,000, `page_referrer` 420 and
  `page_title` 300); 10 custom parameters per item; 25 user properties, names of at most 24
  characters, values of at most 36; `user_id` at most 256 characters; a body under 130 kB; events
  backdated at most 72 hours. GA4's collection limits add 200 items per event. `currency` is required
  when `value` is set (Google's e-commerce reference).

Google answers 2xx to `/mp/collect` even for data it then drops, so each limit is checked here and an
event that breaks one is rejected (dead letter) with the limit it broke; `validate = true` sends to the
validation server instead (GA4 records nothing) and turns its messages into per-event outcomes. An
event without any client id (or app instance id) cannot be attributed by GA4: it is skipped (FILTERED
for this destination, the reason in the inspector), since replaying it could never succeed.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import msgspec

from destinations.base import Outcome, OutgoingEvent, Rejected, Skipped, short_reason
from destinations.http import HttpRequest, HttpSender
from trackpipe.destination_settings import Ga4Destination

# --- Google's Measurement Protocol limits ----------------------------------------------------------

MAX_EVENTS_PER_REQUEST = 25
MAX_PARAMS_PER_EVENT = 25
MAX_ITEMS_PER_EVENT = 200
MAX_CUSTOM_ITEM_PARAMS = 10
MAX_NAME_LENGTH = 40
MAX_VALUE_LENGTH = 100
# GA4's collection limits give these page parameters longer values.
VALUE_LENGTH_EXCEPTIONS = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
MAX_USER_PROPERTIES = 25
MAX_USER_PROPERTY_NAME = 24
MAX_USER_PROPERTY_VALUE = 36
MAX_USER_ID_LENGTH = 256
MAX_BODY_BYTES = 130_000  # "smaller than 130kB": the decimal reading, the stricter one
MAX_BACKDATE_MS = 72 * 3600 * 1000

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
RESERVED_EVENT_NAMES = frozenset(
    {
        "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query", "ad_reward",
        "adunit_exposure", "app_background", "app_clear_data", "app_exception", "app_install",
        "app_remove", "app_store_refund", "app_update", "app_upgrade", "dynamic_link_app_open",
        "dynamic_link_app_update", "dynamic_link_first_open", "error", "firebase_campaign",
        "firebase_in_app_message_action", "firebase_in_app_message_dismiss",
        "firebase_in_app_message_impression", "first_open", "first_visit", "in_app_purchase",
        "notification_dismiss", "notification_foreground", "notification_open", "notification_receive",
        "notification_send", "os_update", "screen_view", "session_start", "user_engagement",
    }
)  # fmt: skip
RESERVED_PARAM_NAMES = frozenset({"firebase_conversion"})
RESERVED_USER_PROPERTY_NAMES = frozenset(
    {"first_open_time", "first_visit_time", "last_deep_link_referrer", "user_id", "first_open_after_install"}
)
# The item parameters Google defines; others count against the 10 custom ones.
STANDARD_ITEM_PARAMS = frozenset(
    {
        "item_id", "item_name", "affiliation", "coupon", "currency", "discount", "index", "item_brand",
        "item_category", "item_category2", "item_category3", "item_category4", "item_category5",
        "item_list_id", "item_list_name", "item_variant", "location_id", "price", "quantity",
    }
)  # fmt: skip
CONSENT_VALUES = {"granted": "GRANTED", "denied": "DENIED", True: "GRANTED", False: "DENIED"}

# --- the vendor's mapping tables ---------------------------------------------------------------------

# GA4 item parameter <- path under each entry of `items`.
ITEM_MAP: tuple[tuple[str, str], ...] = (
    ("item_id", "id"),
    ("item_name", "product.name"),
    ("affiliation", "product.affiliation"),
    ("coupon", "coupon"),
    ("currency", "product.currency"),
    ("discount", "discount"),
    ("index", "list_position"),
    ("item_brand", "product.brand"),
    ("item_category", "product.category_1"),
    ("item_category2", "product.category_2"),
    ("item_category3", "product.category_3"),
    ("item_category4", "product.category_4"),
    ("item_category5", "product.category_5"),
    ("item_list_id", "product.list_id"),
    ("item_list_name", "product.list_name"),
    ("item_variant", "variant"),
    ("location_id", "product.location_id"),
    ("price", "product.price"),
    ("quantity", "quantity"),
)

# GA4 event parameter <- property of the v2 event (at its root unless said otherwise).
_CART = (("currency", "currency"), ("value", "value"), ("items", "items"))
_TRANSACTION = (
    ("currency", "currency"),
    ("value", "value"),
    ("transaction_id", "id"),
    ("affiliation", "affiliation"),
    ("coupon", "coupon"),
    ("shipping", "shipping_amount"),
    ("tax", "tax_amount"),
    ("revenue", "revenue"),
    ("conversion_type", "type"),
    ("conversion_status", "status"),
    ("conversion_url", "url"),
    ("payment_type", "payment_method"),
    ("items", "items"),
)
_PAGE = (
    ("page_location", "url"),
    ("page_referrer", "referrer"),
    ("page_title", "title"),
    ("page_name", "page_name"),
    ("page_type", "page_type"),
    ("page_path", "path"),
)
EVENT_MAP: dict[str, tuple[tuple[str, str], ...]] = {
    "add_payment_info": (
        ("currency", "currency"),
        ("value", "value"),
        ("coupon", "coupon"),
        ("payment_type", "payment_method"),
        ("revenue", "revenue"),
        ("items", "items"),
    ),
    "add_shipping_info": (
        ("currency", "currency"),
        ("value", "value"),
        ("coupon", "coupon"),
        ("shipping_tier", "shipping_tier"),
        ("items", "items"),
    ),
    "add_to_cart": _CART,
    "add_to_wishlist": _CART,
    "begin_checkout": (
        ("currency", "currency"),
        ("value", "value"),
        ("coupon", "coupon"),
        ("revenue", "revenue"),
        ("items", "items"),
    ),
    "generate_lead": (("currency", "currency"), ("value", "value"), ("transaction_id", "id")),
    "login": (("method", "method"),),
    "page_view": _PAGE,
    "purchase": _TRANSACTION,
    "refund": _TRANSACTION,
    "remove_from_cart": _CART,
    "search": (("search_term", "search_term"),),
    "select_content": (("content_type", "content_type"), ("item_id", "item_id")),
    "select_item": (("item_list_name", "item_list_name"), ("items", "items")),
    "sign_up": (("method", "method"),),
    "view_cart": _CART,
    "view_item": _CART,
    "view_item_list": (("item_list_name", "item_list_name"), ("items", "items")),
}
# Any other event name: a custom event, with these parameters attached when present.
CUSTOM_MAP: tuple[tuple[str, str], ...] = (
    ("currency", "currency"),
    ("value", "value"),
    ("transaction_id", "id"),
    ("content_type", "content_type"),
    ("conversion_type", "type"),
    ("conversion_status", "status"),
    ("conversion_url", "url"),
    ("coupon", "coupon"),
    ("item_id", "item_id"),
    ("item_list_name", "item_list_name"),
    ("method", "method"),
    *_PAGE,
    ("payment_type", "payment_method"),
    ("revenue", "revenue"),
    ("search_term", "search_term"),
    ("shipping_tier", "shipping_tier"),
    ("shipping", "shipping_amount"),
    ("tax", "tax_amount"),
    ("items", "items"),
)
# The page parameters' fallback: context.page (where the JS SDK puts them), when the root has none.
CONTEXT_PAGE_FALLBACK = {
    "page_location": "url",
    "page_referrer": "referrer",
    "page_title": "title",
    "page_path": "path",
}
# Ids GA4 reads as strings, even when an event carries them as numbers.
STRING_PARAMS = frozenset({"transaction_id", "item_id"})
USER_LOCATION_MAP = (
    ("city", "current_location_city"),
    ("region_id", "current_location_region"),
    ("country_id", "current_location_country"),
    ("subcontinent_id", "current_location_subcontinent"),
    ("continent_id", "current_location_continent"),
)


class LimitBroken(Exception):
    """An event GA4 would drop: the message names the limit it broke."""


class Mapped(msgspec.Struct):
    """One v2 event as GA4 takes it: the request-level fields (`top`) and the event itself."""

    top: dict[str, Any]  # client_id or app_instance_id, user_id, consent, user_properties, ...
    timestamp_micros: int
    event: dict[str, Any]  # {"name": ..., "params": {...}}


# --- reading the v2 event ------------------------------------------------------------------------------


def get_path(data: Any, path: str) -> Any:
    """The value at a dotted path (`items.0.product.size`); None when any step is missing."""
    for step in path.split("."):
        if isinstance(data, dict):
            data = data.get(step)
        elif isinstance(data, list) and step.isdigit() and int(step) < len(data):
            data = data[int(step)]
        else:
            return None
    return data


def cookie_value(header: Any, name: str) -> str | None:
    """One cookie from a `Cookie`-style string (`a=1; _ga=GA1.1.2.3`)."""
    if not isinstance(header, str):
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value.strip().strip('"')
    return None


def client_id_from_cookie(value: str) -> str:
    """`GA1.1.123.456` → `123.456`: the right-most two parts (the vendor: "the right most string in the
    cookie, including a single dot")."""
    parts = value.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else value


def session_id_from_cookie(value: str) -> str | None:
    """The session id in a `_ga_<id>` cookie: `GS1.1.1700000000.3.1...` (third part) or the newer
    `GS2.1.s1700000000$o3$g1...` (the `s` field)."""
    parts = value.split(".")
    if len(parts) < 3:
        return None
    third = parts[2]
    if "$" in third or third.startswith("s"):
        for field in third.split("$"):
            if field.startswith("s") and field[1:].isdigit():
                return field[1:]
        return None
    return third if third.isdigit() else None


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise LimitBroken(f"{where}: {value!r} is not a finite number")
        return value
    raise LimitBroken(f"{where}: GA4 parameter values must be strings or numbers, not {type(value).__name__}")


def _check_name(name: str, what: str, max_length: int, reserved: frozenset[str]) -> None:
    if len(name) > max_length:
        raise LimitBroken(f"{what} {name[:60]!r} is {len(name)} characters; GA4 allows {max_length}")
    if not NAME_PATTERN.match(name):
        raise LimitBroken(
            f"{what} {name[:60]!r} must start with a letter and hold only letters, digits and underscores"
        )
    if name in reserved:
        raise LimitBroken(f"{what} {name!r} is reserved by GA4")
    if name.startswith(RESERVED_PREFIXES):
        raise LimitBroken(f"{what} {name!r} uses a prefix GA4 reserves (google_, ga_, firebase_)")


def _check_value_length(name: str, value: Any, where: str) -> None:
    limit = VALUE_LENGTH_EXCEPTIONS.get(name, MAX_VALUE_LENGTH)
    if isinstance(value, str) and len(value) > limit:
        raise LimitBroken(f"{where} is {len(value)} characters; GA4 allows {limit}")


def _map_item(item: Any, index: int) -> dict[str, Any]:
    where = f"items[{index}]"
    if not isinstance(item, dict):
        raise LimitBroken(f"{where}: an item must be an object")
    mapped: dict[str, Any] = {}
    for field, path in ITEM_MAP:
        value = get_path(item, path)
        if not _present(value):
            continue
        value = _scalar(value, f"{where}.{path}")
        if field == "item_id" and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        _check_value_length(field, value, f"{where}.{field}")
        mapped[field] = value
    if "item_id" not in mapped and "item_name" not in mapped:
        raise LimitBroken(f"{where}: GA4 needs item_id or item_name (items.X.id or items.X.product.name)")
    return mapped


def _params(event: dict[str, Any], table: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    page = get_path(event, "context.page")
    for field, source in table:
        value = event.get(source)
        if not _present(value) and field in CONTEXT_PAGE_FALLBACK and isinstance(page, dict):
            value = page.get(CONTEXT_PAGE_FALLBACK[field])
        if not _present(value):
            continue
        if field == "items":
            if not isinstance(value, list):
                raise LimitBroken("items: must be a list")
            if len(value) > MAX_ITEMS_PER_EVENT:
                raise LimitBroken(f"items: {len(value)} items; GA4 allows {MAX_ITEMS_PER_EVENT} per event")
            params["items"] = [_map_item(item, i) for i, item in enumerate(value)]
            continue
        value = _scalar(value, source)
        if field in STRING_PARAMS and not isinstance(value, str | bool):
            value = str(value)
        params[field] = value
    return params


def _consent(event: dict[str, Any]) -> dict[str, str]:
    consent: dict[str, str] = {}
    mode = get_path(event, "user.google_consent_mode")
    if not isinstance(mode, dict):
        return consent
    for name in ("ad_user_data", "ad_personalization"):
        value = mode.get(name)
        if value is None:
            continue
        key = value.lower() if isinstance(value, str) else value
        if isinstance(key, int | float) and not isinstance(key, bool):
            key = None  # 1 and 0 are not consent answers
        if key not in CONSENT_VALUES:
            raise LimitBroken(
                f"user.google_consent_mode.{name}: {str(value)[:40]!r} is not GRANTED or DENIED (GA4's consent values)"
            )
        consent[name] = CONSENT_VALUES[key]
    return consent


def _identity(settings: Ga4Destination, event: dict[str, Any]) -> dict[str, str] | None:
    """`{"client_id": ...}` or `{"app_instance_id": ...}`, or None when the event has neither."""
    if settings.firebase_app_id:
        if settings.app_instance_id_field:
            value = get_path(event, settings.app_instance_id_field)
            if not _present(value):
                return None
            value = str(value)
            if not re.fullmatch(r"[0-9A-Fa-f]{32}", value):
                raise LimitBroken(f"{settings.app_instance_id_field}: an app_instance_id must be 32 hexadecimal digits")
            return {"app_instance_id": value}
        for path in ("context.device.sdk_id", "user.tcId"):
            value = get_path(event, path)
            if _present(value) and isinstance(value, str | int):
                return {"app_instance_id": hashlib.sha256(str(value).encode()).hexdigest()[:32]}
        return None
    cookie = cookie_value(get_path(event, "context.device.cookie"), settings.client_id_cookie)
    if cookie:
        return {"client_id": client_id_from_cookie(cookie)}
    anonymous = get_path(event, "user.consistent_anonymous_id")
    if _present(anonymous) and isinstance(anonymous, str | int) and not isinstance(anonymous, bool):
        return {"client_id": str(anonymous)}
    return None


def _session_id(settings: Ga4Destination, event: dict[str, Any]) -> str | None:
    if settings.measurement_id:
        name = "_ga_" + settings.measurement_id.removeprefix("G-")
        cookie = cookie_value(get_path(event, "context.device.cookie"), name)
        if cookie and (found := session_id_from_cookie(cookie)):
            return found
    for path in ("ga_session_id", "context.device.lifecycle.session_id"):
        value = get_path(event, path)
        if _present(value) and isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def map_event(settings: Ga4Destination, event: dict[str, Any], now_ms: int) -> Mapped | Skipped:
    """One normalized v2 event as GA4 takes it, Skipped when it has no client id, or LimitBroken
    (raised) naming the limit it breaks (pure but for `now_ms`, the time backdating is measured from)."""
    name = event.get("event_name")
    if not isinstance(name, str) or not name:
        raise LimitBroken("event_name: missing")
    _check_name(name, "event name", MAX_NAME_LENGTH, RESERVED_EVENT_NAMES)
    identity = _identity(settings, event)
    if identity is None:
        if settings.firebase_app_id:
            what = settings.app_instance_id_field or "context.device.sdk_id or user.tcId"
            return Skipped(f"no app_instance_id for GA4: the event has no {what}")
        return Skipped(
            f"no client_id for GA4: no {settings.client_id_cookie} cookie in context.device.cookie "
            "and no user.consistent_anonymous_id"
        )
    top: dict[str, Any] = dict(identity)

    user_id = get_path(event, "user.id")
    if _present(user_id):
        if not isinstance(user_id, str | int) or isinstance(user_id, bool):
            raise LimitBroken("user.id: must be a string or a number to become GA4's user_id")
        user_id = str(user_id)
        if len(user_id) > MAX_USER_ID_LENGTH:
            raise LimitBroken(f"user_id is {len(user_id)} characters; GA4 allows {MAX_USER_ID_LENGTH}")
        top["user_id"] = user_id

    timestamp = get_path(event, "context.event_timestamp")
    timestamp_ms = timestamp if isinstance(timestamp, int) and not isinstance(timestamp, bool) else now_ms
    if now_ms - timestamp_ms > MAX_BACKDATE_MS:
        hours = (now_ms - timestamp_ms) / 3_600_000
        raise LimitBroken(f"the event is {hours:.0f} hours old; GA4 takes events backdated at most 72 hours")

    consent = _consent(event)
    if consent:
        top["consent"] = consent

    user_properties: dict[str, dict[str, Any]] = {}
    for prop, path in settings.user_properties.items():
        value = get_path(event, path)
        if not _present(value):
            continue
        value = _scalar(value, path)
        if isinstance(value, str) and len(value) > MAX_USER_PROPERTY_VALUE:
            raise LimitBroken(
                f"user property {prop} ({path}) is {len(value)} characters; GA4 allows {MAX_USER_PROPERTY_VALUE}"
            )
        user_properties[prop] = {"value": value}
    if len(user_properties) > MAX_USER_PROPERTIES:
        raise LimitBroken(f"{len(user_properties)} user properties; GA4 allows {MAX_USER_PROPERTIES}")
    if user_properties:
        top["user_properties"] = user_properties

    location = {field: value for field, prop in USER_LOCATION_MAP if _present(value := get_path(event, f"user.{prop}"))}
    if location:
        top["user_location"] = {k: _scalar(v, f"user.{k}") for k, v in location.items()}
    if settings.ip_override:
        ip = get_path(event, "context.device.ip")
        if isinstance(ip, str) and ip:
            top["ip_override"] = ip

    params = _params(event, EVENT_MAP.get(name, CUSTOM_MAP))
    for param, path in settings.event_params.items():
        value = get_path(event, path)
        if _present(value):
            params[param] = _scalar(value, path)
    session_id = _session_id(settings, event)
    if session_id is not None:
        params["session_id"] = session_id
    if settings.engagement_time_msec:
        params["engagement_time_msec"] = settings.engagement_time_msec
    if settings.debug_mode:
        params["debug_mode"] = True
    check_params(params)
    return Mapped(top=top, timestamp_micros=timestamp_ms * 1000, event={"name": name, "params": params})


def check_params(params: dict[str, Any]) -> None:
    """Google's per-event limits on the parameters of one GA4 event (raises LimitBroken)."""
    if len(params) > MAX_PARAMS_PER_EVENT:
        raise LimitBroken(f"{len(params)} parameters; GA4 allows {MAX_PARAMS_PER_EVENT} per event")
    for name, value in params.items():
        _check_name(name, "parameter name", MAX_NAME_LENGTH, RESERVED_PARAM_NAMES)
        if name == "items":
            for i, item in enumerate(value):
                custom = [key for key in item if key not in STANDARD_ITEM_PARAMS]
                if len(custom) > MAX_CUSTOM_ITEM_PARAMS:
                    raise LimitBroken(
                        f"items[{i}]: {len(custom)} custom item parameters; GA4 allows {MAX_CUSTOM_ITEM_PARAMS}"
                    )
                for key, item_value in item.items():
                    _check_name(key, "item parameter name", MAX_NAME_LENGTH, RESERVED_PARAM_NAMES)
                    _check_value_length(key, item_value, f"items[{i}].{key}")
            continue
        _check_value_length(name, value, f"parameter {name}")
    value = params.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise LimitBroken(f"value: {str(value)[:40]!r} is not a number")
    if value is not None and "currency" not in params:
        raise LimitBroken("value is set without currency; GA4 requires currency (ISO 4217) with value")
    currency = params.get("currency")
    if currency is not None and not (isinstance(currency, str) and re.fullmatch(r"[A-Z]{3}", currency)):
        raise LimitBroken(f"currency: {str(currency)[:40]!r} is not a 3-letter ISO 4217 code")


# --- requests ---------------------------------------------------------------------------------------------

_VALIDATION_INDEX = (re.compile(r"^events\[(\d+)\]"), re.compile(r"[Ee]vent at index: \[(\d+)\]"))


class _ValidationMessage(msgspec.Struct):
    fieldPath: str = ""  # Google's field names
    description: str = ""
    validationCode: str = ""


class _ValidationAnswer(msgspec.Struct):
    validationMessages: list[_ValidationMessage] = []


_validation_decoder = msgspec.json.Decoder(_ValidationAnswer)


def validation_endpoint(endpoint: str) -> str:
    """`…/mp/collect` → `…/debug/mp/collect` (Google's validation server)."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    if path.endswith("/mp/collect"):
        path = path[: -len("/mp/collect")] + "/debug/mp/collect"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def request_url(settings: Ga4Destination) -> str:
    base = validation_endpoint(settings.endpoint) if settings.validate else settings.endpoint
    stream = (
        f"firebase_app_id={quote(settings.firebase_app_id, safe='')}"
        if settings.firebase_app_id
        else f"measurement_id={quote(settings.measurement_id or '', safe='')}"
    )
    return f"{base}{'&' if '?' in base else '?'}{stream}&api_secret={quote(settings.api_secret, safe='')}"


def request_body(top: dict[str, Any], events: list[Mapped]) -> bytes:
    """The JSON body of one request: the shared request-level fields, the first event's timestamp at the
    request level and, when the request holds several events, each event's own `timestamp_micros`."""
    body = dict(top)
    body["timestamp_micros"] = events[0].timestamp_micros
    if len(events) == 1:
        body["events"] = [events[0].event]
    else:
        body["events"] = [{**m.event, "timestamp_micros": m.timestamp_micros} for m in events]
    return msgspec.json.encode(body)


class Ga4Sender(HttpSender):
    settings: Ga4Destination

    def __init__(self, settings: Ga4Destination, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(settings, transport)
        self.settings = settings
        self._url = request_url(settings)

    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        now_ms = int(time.time() * 1000)
        decided: dict[int, Outcome] = {}
        # Events of one user (same client id and request-level fields) share requests, in order.
        groups: dict[bytes, tuple[dict[str, Any], list[tuple[int, Mapped]]]] = {}
        for index, outgoing in enumerate(events):
            try:
                mapped = map_event(self.settings, outgoing.event, now_ms)
            except LimitBroken as exc:
                decided[index] = Rejected(short_reason(f"GA4 limit: {exc}"))
                continue
            if isinstance(mapped, Skipped):
                decided[index] = mapped
                continue
            key = msgspec.json.encode(mapped.top, order="sorted")
            groups.setdefault(key, (mapped.top, []))[1].append((index, mapped))
        requests: list[HttpRequest] = []
        size = min(self.settings.batch_size, MAX_EVENTS_PER_REQUEST)
        for top, members in groups.values():
            chunk: list[tuple[int, Mapped]] = []
            for index, mapped in members:
                if chunk and (
                    len(chunk) >= size or len(request_body(top, [m for _, m in chunk] + [mapped])) >= MAX_BODY_BYTES
                ):
                    requests.append(self._request(top, chunk))
                    chunk = []
                if len(request_body(top, [mapped])) >= MAX_BODY_BYTES:
                    decided[index] = Rejected(
                        f"GA4 limit: the event makes a request body of {len(request_body(top, [mapped]))} bytes; "
                        "GA4 takes bodies under 130 kB"
                    )
                    continue
                chunk.append((index, mapped))
            if chunk:
                requests.append(self._request(top, chunk))
        return requests, decided

    def _request(self, top: dict[str, Any], chunk: list[tuple[int, Mapped]]) -> HttpRequest:
        return HttpRequest(url=self._url, body=request_body(top, [m for _, m in chunk]), indexes=[i for i, _ in chunk])

    def read(self, request: HttpRequest, response: httpx.Response, now: float) -> list[Outcome]:
        if not self.settings.validate or not 200 <= response.status_code < 300:
            return super().read(request, response, now)
        answer = _validation_decoder.decode(response.content)  # unreadable: the base retries
        return validation_outcomes(answer.validationMessages, len(request.indexes))


def validation_outcomes(messages: list[_ValidationMessage], count: int) -> list[Outcome]:
    """The validation server's messages as one outcome per event of the request: a message that names an
    event (`events[2]…`, "Event at index: [2]") concerns that event, any other every event."""
    found: list[list[str]] = [[] for _ in range(count)]
    for message in messages:
        text = f"{message.validationCode or 'INVALID'} at {message.fieldPath or '(body)'}: {message.description}"
        index = None
        for pattern, subject in zip(_VALIDATION_INDEX, (message.fieldPath, message.description), strict=True):
            if match := pattern.search(subject):
                index = int(match.group(1))
                break
        targets = [index] if index is not None and 0 <= index < count else range(count)
        for target in targets:
            found[target].append(text)
    return [
        Rejected(short_reason("GA4 validation: " + "; ".join(texts)))
        if texts
        else Skipped("validate = true: GA4's validation server found no problem (events are not recorded)")
        for texts in found
    ]


Settings = Ga4Destination
open_sender = Ga4Sender
