"""`tiktok`: the TikTok Events API 2.0 (`POST /open_api/v1.3/event/track/`).

Where the facts come from:
- The vendor's destination page (docs: destinations-catalog/tiktok): the event-name table (with its
  web-only and app-only rows and the ViewContent option), every field mapping (`user`, `page`, `app`,
  `properties`, `contents`), where `ttclid` (`partners.tiktok.ttclid`, the `ttclid` cookie, the page
  URL's `ttclid` parameter) and `ttp` (`partners.tiktok.ttp`, the `_ttp` cookie) come from, the event
  source (`partners.tiktok.event_source`, autodiscovery from `context.app`), hashing email, phone (E.164)
  and the user id with SHA-256, and the "do not lower-case the user id" option.
- TikTok's public Events API documentation: the request envelope (`event_source`, `event_source_id`,
  `test_event_code`, `data[]`), `event_time` in Unix seconds, the `Access-Token` header, at most 1,000
  events per request, and answers that are HTTP 200 with a `code`: 0 is success; anything else is an
  error for the whole request. This module reads 40100 (too many requests) and 5xxxx (TikTok's system
  errors) as retry, and every other code (40001 no permission, 40002 invalid parameters, 40104/40105
  missing or bad token, ...) as a refusal: sending the same request again would fail the same way.
  Non-200 statuses follow the HTTP base (429/5xx retried with Retry-After, other 4xx refused).

An event TikTok has no name for (not in the table, not in `event_names`, or a web-only event from an
app and the reverse) is skipped with the reason; an app event without `app_id` in the settings or
`context.app.namespace` in the event is refused (TikTok requires both).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import msgspec

from destinations.base import DELIVERED, Outcome, OutgoingEvent, Rejected, Retry, Skipped, short_reason
from destinations.hashing import hash_if_needed, normalize_email, normalize_external_id, normalize_phone
from destinations.http import HttpRequest, HttpSender, status_outcome
from trackpipe.destination_settings import TiktokDestination

EVENT_SOURCES = ("web", "app", "offline", "crm")

# The vendor page's table. Rows marked [1] (web, offline and CRM only) and [2] (app only) are apart.
BOTH: dict[str, str] = {
    "add_payment_info": "AddPaymentInfo",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "click_button": "ViewContent",
    "view_content": "ViewContent",
    "purchase": "Purchase",
    "complete_payment": "Purchase",
    "search": "Search",
    "start_trial": "StartTrial",
    "subscribe": "Subscribe",
}
WEB_ONLY: dict[str, str] = {
    "application_approval": "ApplicationApproval",
    "begin_checkout": "InitiateCheckout",
    "customize_product": "CustomizeProduct",
    "contact": "Contact",
    "download": "Download",
    "find_location": "FindLocation",
    "submit_form": "Lead",
    "generate_lead": "Lead",
    "schedule": "Schedule",
    "sign_up": "CompleteRegistration",
    "submit_application": "SubmitApplication",
}
APP_ONLY: dict[str, str] = {
    "achieve_level": "AchieveLevel",
    "complete_tutorial": "CompleteTutorial",
    "create_group": "CreateGroup",
    "create_role": "CreateRole",
    "generate_lead": "GenerateLead",
    "in_app_ad_click": "InAppADClick",
    "in_app_ad_impr": "InAppAdImpr",
    "install_app": "InstallApp",
    "join_group": "JoinGroup",
    "launch_app": "LaunchAPP",
    "loan_application": "LoanApplication",
    "loan_approval": "LoanApproval",
    "loan_disbursal": "LoanDisbursal",
    "login": "Login",
    "rate": "Rate",
    "sign_up": "Registration",
    "spend_credits": "SpendCredits",
    "unlock_achievement": "UnlockAchievement",
}
# page_view and view_item become ViewContent only when the settings' `view_content_from` lists them.
VIEW_CONTENT_OPTIONAL = ("page_view", "view_item")

# TikTok answer codes (HTTP 200) worth sending again: rate limit, and the 5xxxx system errors.
RETRY_CODES = frozenset({40100})


class _Answer(msgspec.Struct):
    code: int
    message: str = ""


_answer_decoder = msgspec.json.Decoder(_Answer)


def path(event: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path of the event, or None."""
    value: Any = event
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def text(value: Any) -> str | None:
    """A non-empty string from a string or a number; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int | float) else None


def cookie(event: dict[str, Any], name: str) -> str | None:
    """A cookie of `context.device.cookie` (the `name=value; ...` string browsers send)."""
    raw = path(event, "context.device.cookie")
    if not isinstance(raw, str):
        return None
    for part in raw.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value
    return None


def url_parameter(url: Any, name: str) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    for key, value in parse_qsl(query):
        if key == name and value:
            return value
    return None


def event_time_seconds(event: dict[str, Any], now: float) -> int:
    """`context.event_timestamp` (ms once normalized) in Unix seconds; now when missing."""
    stamp = number(path(event, "context.event_timestamp"))
    return int(stamp // 1000) if stamp is not None and stamp > 0 else int(now)


def event_source(event: dict[str, Any], settings: TiktokDestination) -> str:
    given = text(path(event, "partners.tiktok.event_source"))
    if given is not None:
        return given.lower()
    app = path(event, "context.app")
    if settings.autodiscover_event_source and isinstance(app, dict) and any(v is not None for v in app.values()):
        return "app"
    return "web"


def tiktok_event_name(name: str, source: str, settings: TiktokDestination) -> str | None:
    if name in settings.event_names:
        return settings.event_names[name]
    if name in VIEW_CONTENT_OPTIONAL:
        return "ViewContent" if name in settings.view_content_from else None
    if name in BOTH:
        return BOTH[name]
    return (APP_ONLY if source == "app" else WEB_ONLY).get(name)


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def user_data(event: dict[str, Any], settings: TiktokDestination) -> dict[str, Any]:
    user = event.get("user") if isinstance(event.get("user"), dict) else {}
    out: dict[str, Any] = {}
    email = user.get("email") if user.get("email") is not None else user.get("email_sha256")
    _put(out, "email", hash_if_needed(email, normalize_email))
    phone = user.get("phone") if user.get("phone") is not None else user.get("phone_sha256")
    _put(out, "phone", hash_if_needed(phone, e164))
    normalize_id = normalize_external_id if settings.lowercase_user_id else text
    _put(out, "external_id", hash_if_needed(user.get("id"), normalize_id))
    ttclid = (
        text(path(event, "partners.tiktok.ttclid"))
        or cookie(event, "ttclid")
        or url_parameter(path(event, "context.page.url"), "ttclid")
    )
    _put(out, "ttclid", ttclid)
    _put(out, "ttp", text(path(event, "partners.tiktok.ttp")) or cookie(event, "_ttp"))
    _put(out, "ip", text(path(event, "context.device.ip")))
    _put(out, "user_agent", text(path(event, "context.device.user_agent")))
    _put(out, "locale", text(path(event, "context.device.language")))
    platform = (text(path(event, "context.device.type")) or "").lower()
    if platform == "ios":
        _put(out, "idfv", text(path(event, "context.device.idfv")))
        _put(out, "att_status", text(path(event, "context.device.att_status")))
        _put(out, "idfa", text(path(event, "context.device.advertising_id")))
    elif platform == "android":
        _put(out, "gaid", text(path(event, "context.device.advertising_id")))
    return out


def e164(value: Any) -> str | None:
    """TikTok hashes the phone number in E.164 form: `+` and the digits with the country code."""
    digits = normalize_phone(value)
    return None if digits is None else "+" + digits


def contents(items: list[Any]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        product = item.get("product") if isinstance(item.get("product"), dict) else {}
        content: dict[str, Any] = {}
        _put(content, "content_id", text(item.get("id")))
        _put(content, "content_type", text(item.get("content_type")) or "product")
        _put(content, "content_name", text(product.get("name")))
        _put(content, "content_category", text(product.get("category_1")))
        _put(content, "brand", text(product.get("brand")))
        _put(content, "price", number(product.get("price")))
        _put(content, "quantity", number(item.get("quantity")))
        out.append(content)
    return out


def properties(event: dict[str, Any], source: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = event.get("items") if isinstance(event.get("items"), list) else []
    if items:
        out["contents"] = contents(items)
        ids = [c["content_id"] for c in out["contents"] if "content_id" in c]
        if ids:
            out["content_ids"] = ids
        out["num_items"] = len(items)
    _put(out, "currency", text(event.get("currency")))
    _put(out, "value", number(event.get("value")))
    out["description"] = name  # the page maps the event name here
    if source != "app":  # the page's note [17]: these are set for web events
        _put(out, "search_string", text(event.get("search_term")))
        _put(out, "order_id", text(event.get("id")))
        _put(out, "shop_id", text(path(event, "partners.tiktok.shop_id")))
        _put(out, "status", text(event.get("status")))
        _put(out, "content_type", text(event.get("content_type")))
    return out


def map_event(outgoing: OutgoingEvent, settings: TiktokDestination, now: float) -> tuple[str, dict[str, Any]] | Outcome:
    """(event source, one element of `data`) for an event, or the outcome that keeps it from being sent."""
    event = outgoing.event
    source = event_source(event, settings)
    if source not in EVENT_SOURCES:
        return Rejected(f"partners.tiktok.event_source {source!r} is not one of {', '.join(EVENT_SOURCES)}")
    name = tiktok_event_name(outgoing.event_name, source, settings)
    if name is None:
        kind = "app" if source == "app" else "web"
        return Skipped(
            f"TikTok has no {kind} event for {outgoing.event_name!r}; map it in the destination's event_names"
        )
    entry: dict[str, Any] = {
        "event": name,
        "event_time": event_time_seconds(event, now),
        # The page maps `id`; the trackpipe event id is the fallback, the same one the pixel can use.
        "event_id": text(event.get("id")) or outgoing.event_id,
        "user": user_data(event, settings),
        "properties": properties(event, source, outgoing.event_name),
    }
    page = {k: v for k in ("url", "referrer") if (v := text(path(event, f"context.page.{k}"))) is not None}
    if page:
        entry["page"] = page
    if source == "app":
        if not settings.app_id:
            return Rejected("app event: set the destination's app_id (TikTok App ID) to send app events")
        app_id = text(path(event, "context.app.namespace"))
        if app_id is None:
            return Rejected("app event without context.app.namespace (TikTok requires app.app_id)")
        app = {"app_id": app_id}
        _put(app, "app_name", text(path(event, "context.app.name")))
        _put(app, "app_version", text(path(event, "context.app.version")))
        entry["app"] = app
    ldu = path(event, "partners.tiktok.ldu")
    if isinstance(ldu, bool):
        entry["limited_data_use"] = ldu
    return source, entry


class TiktokSender(HttpSender):
    settings: TiktokDestination

    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        decided: dict[int, Outcome] = {}
        by_source: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        now = time.time()
        for index, outgoing in enumerate(events):
            mapped = map_event(outgoing, self.settings, now)
            if isinstance(mapped, tuple):
                by_source.setdefault(mapped[0], []).append((index, mapped[1]))
            else:
                decided[index] = mapped
        headers = {"Access-Token": self.settings.access_token}
        requests = []
        size = self.settings.batch_size
        for source, entries in by_source.items():
            source_id = self.settings.app_id if source == "app" else self.settings.pixel_code
            for start in range(0, len(entries), size):
                chunk = entries[start : start + size]
                envelope: dict[str, Any] = {"event_source": source, "event_source_id": source_id}
                if self.settings.test_event_code:
                    envelope["test_event_code"] = self.settings.test_event_code
                envelope["data"] = [entry for _, entry in chunk]
                requests.append(
                    HttpRequest(
                        url=self.settings.endpoint,
                        body=msgspec.json.encode(envelope),
                        indexes=[index for index, _ in chunk],
                        headers=headers,
                    )
                )
        return requests, decided

    def read(self, request: HttpRequest, response: httpx.Response, now: float) -> list[Outcome]:
        return [answer_outcome(response, now)] * len(request.indexes)


def answer_outcome(response: httpx.Response, now: float) -> Outcome:
    """What a TikTok answer means for every event of its request (pure)."""
    if not 200 <= response.status_code < 300:
        return status_outcome(response, now)
    try:
        answer = _answer_decoder.decode(response.content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return Retry(short_reason(f"HTTP {response.status_code} without a TikTok answer: {response.text[:200]}"))
    if answer.code == 0:
        return DELIVERED
    reason = short_reason(f"TikTok code {answer.code}: {answer.message}")
    if answer.code in RETRY_CODES or answer.code >= 50000:
        return Retry(reason)
    return Rejected(reason)


Settings = TiktokDestination
open_sender = TiktokSender
