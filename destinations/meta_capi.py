"""`meta_capi`: Meta (Facebook) Conversions API, server events in Meta's own format.

Each request is `POST {endpoint}/{api_version}/{pixel_id}/events` with
`{"test_event_code"?: ..., "data": [event, ...], "access_token": ...}` (the token in the body, not the
URL, so proxies' access logs never hold it; it is masked in exchanges and reasons either way).

Where the facts come from:

- The vendor's page (Commanders Act, "Facebook Conversions API"): the event-name table, the root,
  `user_data` and `custom_data` mapping tables, `action_source` (`website` by default, `physical_store`
  for `type = "offline"`), `integrations.facebook.*` overrides, `fbp`/`fbc` from the `_fbp`/`_fbc`
  cookies, `contents` versus `content_ids`, copying the event's own properties into `custom_data`,
  and the minimum-match rule: an event is sent only with at least one of `em`, `ph`, `external_id`,
  `fbp`, `fbc`, or else at least three other `user_data` fields (the page lists the two conditions
  without saying "and"; read as "and", an event with only an email would never be sent, which the
  page's own example contradicts, so they are alternatives). An event that fails it is Skipped: the
  page says such events are not sent, which is a filter, not an error.
- Meta's Conversions API reference (server-event, customer-information and custom-data parameters,
  Graph API errors): normalization before hashing (destinations.hashing), `event_time` in seconds and
  at most 7 days old (62 for `physical_store`), one bad event failing the whole request, and both
  `event_source_url` and `client_user_agent` required for website events, `value` and `currency`
  required for Purchase, at most 1,000 events a request, `fbc` as `fb.1.<ms>.<fbclid>`, and the error
  codes below. Events that break these rules are Rejected before sending (a dead letter naming the
  rule), so one bad event cannot make Meta refuse the other 999 of its request.

Meta's error answers, `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`:
codes 1 and 2 (temporary), 4, 17, 32, 341, 613 and 80004 (rate limits), any error marked
`is_transient`, and every 5xx are retried (rate limits no sooner than a minute, or the Retry-After);
everything else (100 invalid parameter, 190 bad token, 10 and 200-299 permissions, 803 unknown pixel,
...) is refused: the request cannot succeed until the config or the event is fixed, then replayed.

Left out: app events (`action_source = "app"` needs `app_data`, which the events here do not carry)
and Meta's "Smart Mapping"; mapping overrides go through `integrations.facebook` as on the page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec

from destinations import hashing
from destinations.base import DELIVERED, Outcome, OutgoingEvent, Rejected, Retry, Skipped, short_reason
from destinations.http import HttpRequest, HttpSender, retry_after, status_outcome
from trackpipe.destination_settings import MetaCapiDestination

# The vendor page's event-name table; other names are sent as they are (custom events).
EVENT_NAMES = {
    "begin_checkout": "InitiateCheckout",
    "purchase": "Purchase",
    "add_to_cart": "AddToCart",
    "view_item": "ViewContent",
    "view_item_list": "ViewContent",
    "search": "Search",
    "add_payment_info": "AddPaymentInfo",
    "add_to_wishlist": "AddToWishlist",
    "generate_lead": "Lead",
    "page_view": "PageView",
    "sign_up": "CompleteRegistration",
    "contact": "Contact",
    "customize_product": "CustomizeProduct",
    "donate": "Donate",
    "find_location": "FindLocation",
    "schedule": "Schedule",
    "start_trial": "StartTrial",
    "submit_application": "SubmitApplication",
    "subscribe": "Subscribe",
}

MAX_AGE_SECONDS = 7 * 86_400  # Meta refuses older event_time (the whole request)
MAX_AGE_PHYSICAL_STORE_SECONDS = 62 * 86_400
# Meta's codes worth another try: temporary (1, 2) and rate limits (the rest).
TEMPORARY_CODES = frozenset({1, 2})
RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613, 80004})
RATE_LIMIT_PAUSE_SECONDS = 60.0  # Meta's limits reset over minutes: an immediate retry only burns an attempt
# Fields that identify a person on their own (the page's first condition).
STRONG_KEYS = ("em", "ph", "external_id", "fbp", "fbc")
OTHER_NEEDED = 3  # ... or this many of the other user_data fields
# Root properties not copied into custom_data: the envelope, not the event's data.
NOT_CUSTOM_DATA = frozenset({"event_name", "test_code", "type", "event_id", "event_timestamp", "source_key"})


class _Error(msgspec.Struct):
    message: str = ""
    type: str = ""
    code: int | None = None
    error_subcode: int | None = None
    error_user_msg: str | None = None
    is_transient: bool = False
    fbtrace_id: str | None = None


class _ErrorAnswer(msgspec.Struct):
    error: _Error


_error_decoder = msgspec.json.Decoder(_ErrorAnswer)
_encoder = msgspec.json.Encoder()


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _present(value: Any) -> bool:
    return value not in (None, "", [], {})


def _first(*values: Any) -> Any:
    return next((v for v in values if _present(v)), None)


def _scalar_id(value: Any) -> bool:
    """A usable id: a non-empty string or an integer."""
    return (isinstance(value, str) and value != "") or (isinstance(value, int) and not isinstance(value, bool))


def _number(value: Any) -> float | int | None:
    """A finite number, also from a numeric string ("123.45"); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def cookies(event: dict[str, Any]) -> dict[str, str]:
    """The cookies of `context.device.cookie` (or `context.cookie`, as in the vendor's example)."""
    context = _dict(event.get("context"))
    header = _first(_dict(context.get("device")).get("cookie"), context.get("cookie"))
    if not isinstance(header, str):
        return {}
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            found.setdefault(name, value.strip())
    if not found:  # a header SimpleCookie can read when the simple split cannot (quoted values)
        try:
            found = {k: m.value for k, m in SimpleCookie(header).items()}
        except CookieError:
            return {}
    return found


def fbclid_of(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        values = parse_qs(urlsplit(url).query).get("fbclid")
    except ValueError:
        return None
    return values[0] if values and values[0] else None


def _hashed_list(values: Any, normalize: Callable[[Any], str | None]) -> list[str]:
    """Hashes of one value or of each value of a list, in order, without repeats or unusable values."""
    found: list[str] = []
    for value in values if isinstance(values, list) else [values]:
        digest = hashing.hash_if_needed(value, normalize)
        if digest is not None and digest not in found:
            found.append(digest)
    return found


# user_data fields Meta wants hashed -> how their text is normalized first.
def _normalizers(settings: MetaCapiDestination, country: str | None) -> dict[str, Callable[[Any], str | None]]:
    return {
        "em": hashing.normalize_email,
        "ph": lambda v: hashing.normalize_phone(v, settings.default_phone_country_code),
        "fn": hashing.normalize_name,
        "ln": hashing.normalize_name,
        "ge": hashing.normalize_gender,
        "db": hashing.normalize_birthdate,
        "ct": hashing.normalize_city,
        "st": hashing.normalize_state,
        "zp": lambda v: hashing.normalize_zip(v, country),
        "country": hashing.normalize_country,
        "external_id": hashing.normalize_external_id,
    }


LIST_FIELDS = frozenset({"em", "ph", "external_id"})  # may carry several values (the page's lists)


def user_data(event: dict[str, Any], settings: MetaCapiDestination, event_time_ms: int) -> dict[str, Any]:
    """The vendor page's user_data table: hashed identity, plain IP and user agent, fbp/fbc."""
    user = _dict(event.get("user"))
    context = _dict(event.get("context"))
    device = _dict(context.get("device"))
    fb = _dict(_dict(event.get("integrations")).get("facebook"))
    overrides = _dict(fb.get("user_data"))
    jar = cookies(event)
    country = hashing.normalize_country(user.get("country"))
    normalizers = _normalizers(settings, country)

    raw: dict[str, Any] = {
        "em": user.get("email"),
        "ph": user.get("phone"),
        "ge": user.get("gender"),
        "db": user.get("birthdate"),
        "ln": user.get("lastname"),
        "fn": user.get("firstname"),
        "ct": user.get("city"),
        "st": user.get("state"),
        "zp": user.get("zipcode"),
        "country": user.get("country"),
        # In the page's order: the user id, the SDK id, the Commanders Act id.
        "external_id": [
            v
            for v in (
                user.get("id"),
                device.get("sdk_id"),
                _first(user.get("tcId"), user.get("tcid"), user.get("tc_id")),
            )
            if _present(v)
        ],
    }
    raw.update(overrides)  # integrations.facebook.user_data.<field> overrides every field
    data: dict[str, Any] = {}
    for key, value in raw.items():
        if not _present(value):
            continue
        if key in normalizers:
            hashed = _hashed_list(value, normalizers[key])
            if hashed:
                data[key] = hashed if key in LIST_FIELDS else hashed[0]
        else:
            data[key] = value
    plain = {
        "client_ip_address": device.get("ip"),
        "client_user_agent": device.get("user_agent"),
        "fbc": _first(fb.get("fbc"), event.get("fbc"), jar.get("_fbc")),
        "fbp": _first(fb.get("fbp"), event.get("fbp"), jar.get("_fbp")),
        "fb_login_id": _dict(_dict(event.get("partners")).get("facebook")).get("fb_login_id"),
    }
    if plain["fbc"] is None and (click := fbclid_of(_dict(context.get("page")).get("url"))):
        plain["fbc"] = f"fb.1.{event_time_ms}.{click}"  # Meta's format: version, subdomain index, ms, click id
    for key, value in plain.items():
        if key not in data and isinstance(value, str | int) and not isinstance(value, bool) and _present(value):
            data[key] = str(value)
    return data


def minimum_match_problem(data: dict[str, Any]) -> str | None:
    """The vendor page's rule: one of em/ph/external_id/fbp/fbc, or three other user_data fields."""
    if any(key in data for key in STRONG_KEYS):
        return None
    others = sorted(key for key in data if key not in STRONG_KEYS)
    if len(others) >= OTHER_NEEDED:
        return None
    has = ", ".join(others) if others else "none"
    return (
        "not enough customer information for Meta to match a person: needs one of em, ph, external_id, fbp, "
        f"fbc (user.email, user.phone, user.id, the _fbp/_fbc cookies) or {OTHER_NEEDED} other user_data fields "
        f"(has: {has})"
    )


def _item_content(item: dict[str, Any]) -> dict[str, Any] | None:
    """One `contents` entry when the item has a product id, a quantity and a price; else None."""
    product = _dict(item.get("product"))
    ident = product.get("id")
    quantity = _number(_first(item.get("quantity"), item.get("item_quantity")))
    price = _number(_first(product.get("price"), item.get("price")))
    if not _scalar_id(ident):
        return None
    if quantity is None or quantity != int(quantity) or quantity < 1 or price is None:
        return None
    return {"id": str(ident), "quantity": int(quantity), "item_price": price}


def custom_data(event: dict[str, Any], settings: MetaCapiDestination) -> dict[str, Any]:
    """The page's default: the event's own scalar properties, then the mapping table, then
    `integrations.facebook.custom_data`."""
    data: dict[str, Any] = {}
    if settings.custom_data_all_properties:
        for key, value in event.items():
            if key not in NOT_CUSTOM_DATA and isinstance(value, str | int | float | bool):
                data[key] = value
    items = [item for item in event.get("items") or [] if isinstance(item, dict)]
    first = items[0] if items else {}
    first_product = _dict(first.get("product"))
    fb = _dict(_dict(event.get("integrations")).get("facebook"))
    value = _number(event.get("value"))
    mapped: dict[str, Any] = {
        "value": value,
        "currency": _first(event.get("currency"), first.get("currency")),
        "net_revenue": _number(_dict(_dict(event.get("partners")).get("facebook")).get("net_revenue")),
        "order_id": str(event["id"]) if _scalar_id(event.get("id")) else None,
        "search_string": event.get("search_term"),
        "content_name": first_product.get("name"),
        "content_category": first_product.get("category_1"),
        "content_type": settings.content_type,
        "status": event.get("status"),
        "num_items": len(items) if items else None,
    }
    if "value" in data and value is None:
        del data["value"]  # a value Meta cannot read as a number would fail the request
    contents = [_item_content(item) for item in items]
    if items and all(content is not None for content in contents):
        mapped["contents"] = contents
    else:
        ids = [str(i) for i in (_dict(item.get("product")).get("id") for item in items) if _present(i)]
        mapped["content_ids"] = ids or None
    data.update({key: v for key, v in mapped.items() if _present(v)})
    data.update(_dict(fb.get("custom_data")))
    return data


def event_test_code(event: dict[str, Any]) -> str | None:
    """The event's own test code (root first, then context), as the inspector reads it."""
    for holder in (event, event.get("context")):
        if isinstance(holder, dict) and holder.get("test_code") not in (None, ""):
            return str(holder["test_code"])
    return None


def map_event(
    outgoing: OutgoingEvent, settings: MetaCapiDestination, now: float
) -> dict[str, Any] | Skipped | Rejected:
    """One Meta server event, or why the event is not sent (pure but for `now`)."""
    event = outgoing.event
    context = _dict(event.get("context"))
    page = _dict(context.get("page"))
    fb = _dict(_dict(event.get("integrations")).get("facebook"))
    name = outgoing.event_name
    meta_name = settings.event_names.get(name) or EVENT_NAMES.get(name, name)

    timestamp = context.get("event_timestamp")
    now_ms = int(now * 1000)
    # Normalization makes it integer ms; a producer clock ahead of ours is read as "now", as Meta
    # refuses times in the future.
    event_time_ms = min(timestamp, now_ms) if isinstance(timestamp, int) and not isinstance(timestamp, bool) else now_ms
    action_source = fb.get("action_source")
    if not isinstance(action_source, str) or not action_source:
        action_source = "physical_store" if event.get("type") == "offline" else settings.action_source
    max_age = MAX_AGE_PHYSICAL_STORE_SECONDS if action_source == "physical_store" else MAX_AGE_SECONDS
    if event_time_ms // 1000 < int(now) - max_age:
        days = max_age // 86_400
        return Rejected(f"event_time is more than {days} days old: Meta refuses it (and the whole request with it)")

    users = user_data(event, settings, event_time_ms)
    if problem := minimum_match_problem(users):
        return Skipped(problem)
    out: dict[str, Any] = {
        "event_name": meta_name,
        "event_time": event_time_ms // 1000,
        "event_id": str(fb["event_id"]) if _scalar_id(fb.get("event_id")) else outgoing.event_id,
        "event_source_url": page.get("url") if isinstance(page.get("url"), str) else None,
        "referrer_url": page.get("referrer") if isinstance(page.get("referrer"), str) else None,
        "action_source": action_source,
        "opt_out": fb.get("opt_out"),
        "data_processing_options": fb.get("data_processing_options"),
        "data_processing_options_country": fb.get("data_processing_options_country"),
        "data_processing_options_state": fb.get("data_processing_options_state"),
        "user_data": users,
        "custom_data": custom_data(event, settings),
    }
    out = {key: value for key, value in out.items() if value is not None and value != {}}
    if action_source == "website":
        if not isinstance(out.get("event_source_url"), str) or not out["event_source_url"].startswith(
            ("http://", "https://")
        ):
            return Rejected("Meta requires event_source_url (context.page.url, an http(s) URL) for website events")
        if "client_user_agent" not in users:
            return Rejected("Meta requires client_user_agent (context.device.user_agent) for website events")
    if meta_name == "Purchase":
        data = out.get("custom_data", {})
        if _number(data.get("value")) is None or not isinstance(data.get("currency"), str):
            return Rejected("Meta requires custom_data.value (a number) and currency for Purchase events")
    return out


def error_outcome(response: httpx.Response, now: float) -> Outcome:
    """What one Meta error answer means for every event of its request."""
    try:
        error = _error_decoder.decode(response.content).error
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return status_outcome(response, now)  # not a Graph error: by the HTTP status alone
    subcode = f"/{error.error_subcode}" if error.error_subcode is not None else ""
    detail = f": {error.error_user_msg}" if error.error_user_msg else ""
    trace = f" (fbtrace_id {error.fbtrace_id})" if error.fbtrace_id else ""
    reason = short_reason(
        f"Meta error {error.code}{subcode} {error.type} (HTTP {response.status_code}): {error.message}{detail}{trace}"
    )
    wait = retry_after(response.headers.get("retry-after"), now)
    if error.code in RATE_LIMIT_CODES or response.status_code == 429:
        return Retry(reason, max(wait or 0.0, now + RATE_LIMIT_PAUSE_SECONDS))
    if error.code in TEMPORARY_CODES or error.is_transient or response.status_code >= 500:
        return Retry(reason, wait)
    return Rejected(reason)


class MetaCapiSender(HttpSender):
    settings: MetaCapiDestination

    def __init__(
        self,
        settings: MetaCapiDestination,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, transport)
        self._clock = clock

    @property
    def url(self) -> str:
        s = self.settings
        return f"{s.endpoint.rstrip('/')}/{s.api_version}/{s.pixel_id}/events"

    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        now = self._clock()
        decided: dict[int, Outcome] = {}
        # Test events go to Events Manager's test view: one request per test code, in arrival order.
        groups: dict[str | None, list[tuple[int, dict[str, Any]]]] = {}
        for index, outgoing in enumerate(events):
            mapped = map_event(outgoing, self.settings, now)
            if isinstance(mapped, Skipped | Rejected):
                decided[index] = mapped
                continue
            code = event_test_code(outgoing.event) or self.settings.test_event_code
            groups.setdefault(code, []).append((index, mapped))
        requests = []
        size = self.settings.batch_size
        for code, members in groups.items():
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                # The test code first: the inspector cuts long bodies, and it should still show.
                body: dict[str, Any] = {} if code is None else {"test_event_code": code}
                body["data"] = [mapped for _, mapped in chunk]
                body["access_token"] = self.settings.access_token
                requests.append(HttpRequest(self.url, _encoder.encode(body), [index for index, _ in chunk]))
        return requests, decided

    def read(self, request: HttpRequest, response: httpx.Response, now: float) -> list[Outcome]:
        if 200 <= response.status_code < 300:
            return [DELIVERED] * len(request.indexes)
        return [error_outcome(response, now)] * len(request.indexes)


Settings = MetaCapiDestination
open_sender = MetaCapiSender
