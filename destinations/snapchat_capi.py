"""`snapchat_capi`: Snapchat's Conversions API v3 (`POST https://tr.snapchat.com/v3/{asset_id}/events`).

Where the facts come from:
- The vendor's destination page (docs: destinations-catalog/snapchat/snapchat-conversions-api-v3): the
  event-name table, custom events to `CUSTOM_EVENT_1..5` by a mapping of your own, every field mapping
  (server parameters, `user_data`, `custom_data`, `app_data` and its `extinfo` positions), the
  `action_source` rule (`partners.snapchat.event_conversion_type`, else `MOBILE_APP` when
  `context.app.name` is set, else `WEB`), the "Send IP Address" option, hashing of the personal fields
  and the identity requirement: at least one of email, phone, mobile advertising id, or IP address and
  user agent together. An event without it is skipped (FILTERED here) with the reason.
- Snapchat's public Conversions API documentation: the v3 endpoint with the pixel id (web and offline
  events) or the Snap App ID (app events) in the path and the token in the `access_token` query
  parameter (masked in everything trackpipe shows), the `{"data": [...]}` body with `event_time` in Unix
  seconds, the hashed identifiers as lists of lower-case SHA-256 hex (`em`, `ph`, ...), phone numbers as
  digits with the country code, at most 2,000 events per request, and the validation rules its test
  endpoint lists (required `event_name`, `event_time`, `action_source`, `event_source_url` for web
  events; PURCHASE needs value and currency; no unhashed personal data; enough identity).
  Events that break those are refused here, before sending, with the rule in the reason.
- Snapchat answers a refused request with HTTP 400 and `{"status": "INVALID", "reason": ...}`: the whole
  request is refused; 401/403 (token) too; 429 and 5xx are retried (the HTTP base).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import msgspec

from destinations.base import Outcome, OutgoingEvent, Rejected, Skipped
from destinations.hashing import (
    hash_if_needed,
    normalize_city,
    normalize_country,
    normalize_email,
    normalize_external_id,
    normalize_gender,
    normalize_name,
    normalize_phone,
    normalize_state,
    normalize_zip,
)
from destinations.http import HttpRequest, HttpSender
from destinations.tiktok import cookie, event_time_seconds, number, path, text
from trackpipe.destination_settings import SnapchatCapiDestination

ACTION_SOURCES = ("WEB", "MOBILE_APP", "OFFLINE")

# The vendor page's table.
EVENT_NAMES: dict[str, str] = {
    "achievement_unlocked": "ACHIEVEMENT_UNLOCKED",
    "ad_click": "AD_CLICK",
    "ad_view": "AD_VIEW",
    "add_payment_info": "ADD_BILLING",
    "add_billing": "ADD_BILLING",
    "add_to_cart": "ADD_CART",
    "add_to_wishlist": "ADD_TO_WISHLIST",
    "app_open": "APP_OPEN",
    "begin_checkout": "START_CHECKOUT",
    "complete_tutorial": "COMPLETE_TUTORIAL",
    "generate_lead": "SUBSCRIBE",
    "invite": "INVITE",
    "level_complete": "LEVEL_COMPLETE",
    "login": "LOGIN",
    "page_view": "PAGE_VIEW",
    "purchase": "PURCHASE",
    "rate": "RATE",
    "reserve": "RESERVE",
    "save": "SAVE",
    "search": "SEARCH",
    "share": "SHARE",
    "sign_up": "SIGN_UP",
    "spent_credits": "SPENT_CREDITS",
    "start_trial": "START_TRIAL",
    "view_item": "VIEW_CONTENT",
    "view_item_list": "LIST_VIEW",
}

# user.<key> -> user_data field, each normalized then hashed (the page's note [16]).
HASHED_USER_FIELDS: tuple[tuple[str, str, Callable[[Any], str | None]], ...] = (
    ("email", "em", normalize_email),
    ("phone", "ph", normalize_phone),
    ("firstname", "fn", normalize_name),
    ("lastname", "ln", normalize_name),
    ("gender", "ge", normalize_gender),
    ("city", "ct", normalize_city),
    ("state_short", "st", normalize_state),
    ("zipcode", "zp", normalize_zip),
    ("country", "country", normalize_country),
    ("id", "external_id", normalize_external_id),
)
# partners.snapchat.<key> -> user_data field, sent as given.
PARTNER_USER_FIELDS = (
    ("sub_id", "subscription_id"),
    ("lead_id", "lead_id"),
    ("app_install_id", "anon_id"),
    ("download_id", "download_id"),
    ("partner_id", "partner_id"),
)
# partners.snapchat.<key> -> custom_data field (travel and predicted value).
PARTNER_CUSTOM_FIELDS = (
    ("predicted_ltv", "predicted_ltv"),
    ("checkin_date", "checkin_date"),
    ("travel_end", "travel_end"),
    ("travel_start", "travel_start"),
    ("suggest_dest", "suggested_destinations"),
    ("dest_airport", "destination_airport"),
    ("dest_country", "country"),
    ("dest_city", "city"),
    ("dest_region", "region"),
    ("dest_neigh", "neighborhood"),
)
# app_data.extinfo positions 2..15, from the event (0 is the platform, 1 the app id).
EXTINFO_PATHS = (
    "context.app.version",
    "context.app.version_long",
    "context.device.os.version",
    "context.device.model",
    "context.device.language",
    "context.device.timezone_short",
    "context.device.network.carrier",
    "context.device.screen.width",
    "context.device.screen.height",
    "context.device.screen.density",
    "context.device.cpu_core",
    "context.device.storage",
    "context.device.ex_storage",
    "context.device.timezone",
)
IDENTITY_REASON = (
    "Snapchat needs user.email, user.phone, context.device.advertising_id, or context.device.ip and "
    "context.device.user_agent together"
)


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def snapchat_event_name(name: str, settings: SnapchatCapiDestination) -> str | None:
    return settings.custom_events.get(name) or EVENT_NAMES.get(name)


def action_source(event: dict[str, Any]) -> str:
    given = text(path(event, "partners.snapchat.event_conversion_type"))
    if given is not None:
        return given.upper()
    return "MOBILE_APP" if text(path(event, "context.app.name")) is not None else "WEB"


def user_data(event: dict[str, Any], settings: SnapchatCapiDestination) -> dict[str, Any]:
    user = event.get("user") if isinstance(event.get("user"), dict) else {}
    out: dict[str, Any] = {}
    for key, field, normalize in HASHED_USER_FIELDS:
        value = user.get(key)
        if value is None and key in ("email", "phone"):
            value = user.get(f"{key}_sha256")  # a producer that hashed on its side
        hashed = hash_if_needed(value, normalize)
        if hashed is not None:
            out[field] = [hashed]
    if settings.send_ip_address:
        _put(out, "client_ip_address", text(path(event, "context.device.ip")))
    _put(out, "client_user_agent", text(path(event, "context.device.user_agent")))
    _put(out, "madid", text(path(event, "context.device.advertising_id")))
    idfv = hash_if_needed(path(event, "context.device.idfv"), normalize_external_id)
    _put(out, "idfv", idfv)
    for key, field in PARTNER_USER_FIELDS:
        _put(out, field, text(path(event, f"partners.snapchat.{key}")))
    _put(out, "sc_cookie1", text(path(event, "partners.snapchat.uuid_c1")) or cookie(event, "_scid"))
    _put(out, "sc_click_id", text(path(event, "partners.snapchat.click_id")))
    return out


def has_identity(user: dict[str, Any]) -> bool:
    """The page's rule: email, phone, mobile advertising id, or IP address and user agent together."""
    return bool(
        user.get("em")
        or user.get("ph")
        or user.get("madid")
        or (user.get("client_ip_address") and user.get("client_user_agent"))
    )


def custom_data(event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw_items = event.get("items")
    items = [i for i in raw_items if isinstance(i, dict)] if isinstance(raw_items, list) else []
    if items:
        products = [i.get("product") if isinstance(i.get("product"), dict) else {} for i in items]
        ids = [found for i in items if (found := text(i.get("id"))) is not None]
        if ids:
            out["content_ids"] = ids
        categories = list(dict.fromkeys(c for p in products if (c := text(p.get("category_1"))) is not None))
        if categories:
            out["content_category"] = categories
        contents = []
        for item, product in zip(items, products, strict=True):
            content: dict[str, Any] = {}
            _put(content, "id", text(item.get("id")))
            _put(content, "quantity", number(item.get("quantity")))
            _put(content, "item_price", number(product.get("price")))
            _put(content, "delivery_category", text(product.get("delivery_category")))
            contents.append(content)
        out["contents"] = contents
        out["num_items"] = len(items)
        out["content_type"] = text(path(event, "partners.snapchat.content_type")) or "product"
    _put(out, "content_name", text(path(event, "context.page.title")))
    _put(out, "value", number(event.get("value")))
    _put(out, "currency", text(event.get("currency")))
    _put(out, "order_id", text(event.get("id")))
    _put(out, "search_string", text(event.get("search_term")))
    _put(out, "sign_up_method", text(event.get("method")))
    for key, field in PARTNER_CUSTOM_FIELDS:
        value = path(event, f"partners.snapchat.{key}")
        kept = isinstance(value, list) or number(value) is not None
        _put(out, field, value if kept else text(value))
    _put(out, "os_version", text(path(event, "context.device.os.version")))
    _put(out, "device_model", text(path(event, "context.device.model")))
    return out


def app_data(event: dict[str, Any]) -> dict[str, Any] | str:
    """`app_data` of an app event, or the reason it cannot be built."""
    os_name = (text(path(event, "context.device.os.name")) or "").lower()
    platform = {"android": "a2", "ios": "i2"}.get(os_name)
    if platform is None:
        return "app event: context.device.os.name must be iOS or Android (Snapchat's extinfo version)"
    app_id = text(path(event, "context.app.namespace"))
    if app_id is None:
        return "app event without context.app.namespace (Snapchat's app_data.app_id)"
    extinfo = [platform, app_id] + [text(path(event, p)) or "" for p in EXTINFO_PATHS]
    out: dict[str, Any] = {"app_id": app_id, "extinfo": extinfo}
    tracking = path(event, "context.device.ad_tracking_enabled")
    if isinstance(tracking, bool):
        out["advertiser_tracking_enabled"] = int(tracking)
    return out


def map_event(
    outgoing: OutgoingEvent, settings: SnapchatCapiDestination, now: float
) -> tuple[str, dict[str, Any]] | Outcome:
    """(asset id, one element of `data`) for an event, or the outcome that keeps it from being sent."""
    event = outgoing.event
    name = snapchat_event_name(outgoing.event_name, settings)
    if name is None:
        return Skipped(
            f"Snapchat has no event for {outgoing.event_name!r}; map it to one of CUSTOM_EVENT_1..5 "
            "in the destination's custom_events"
        )
    source = action_source(event)
    if source not in ACTION_SOURCES:
        return Rejected(f"partners.snapchat.event_conversion_type {source!r} is not one of {', '.join(ACTION_SOURCES)}")
    user = user_data(event, settings)
    if not has_identity(user):
        hint = "" if settings.send_ip_address else " (the IP address is sent only with send_ip_address = true)"
        return Skipped(IDENTITY_REASON + hint)
    entry: dict[str, Any] = {
        "event_name": name,
        "event_time": event_time_seconds(event, now),
        "action_source": source,
    }
    url = text(path(event, "context.page.url"))
    if url is not None:
        entry["event_source_url"] = url
    elif source == "WEB":
        return Rejected("WEB event without context.page.url (Snapchat requires event_source_url)")
    # The page maps `id`; the trackpipe event id is the fallback (the pixel's client_dedup_id must match).
    entry["event_id"] = text(event.get("id")) or outgoing.event_id
    dpo = path(event, "partners.snapchat.dpo")
    if isinstance(dpo, list):
        entry["data_processing_options"] = dpo
    _put(entry, "test_event_code", text(path(event, "partners.snapchat.test_code")))
    entry["user_data"] = user
    data = custom_data(event)
    if name == "PURCHASE" and ("value" not in data or "currency" not in data):
        return Rejected("PURCHASE without value and currency (Snapchat refuses it)")
    entry["custom_data"] = data
    asset = settings.pixel_id
    if source == "MOBILE_APP":
        if not settings.snap_app_id:
            return Rejected("app event: set the destination's snap_app_id to send MOBILE_APP events")
        app = app_data(event)
        if isinstance(app, str):
            return Rejected(app)
        entry["app_data"] = app
        asset = settings.snap_app_id
    return asset, entry


class SnapchatCapiSender(HttpSender):
    settings: SnapchatCapiDestination

    def url(self, asset: str) -> str:
        base = self.settings.endpoint.replace("{asset_id}", quote(asset, safe=""))
        separator = "&" if "?" in base else "?"
        # Snapchat's documented form; the token is masked wherever the URL is shown.
        return f"{base}{separator}access_token={quote(self.settings.access_token, safe='')}"

    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        decided: dict[int, Outcome] = {}
        by_asset: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        now = time.time()
        for index, outgoing in enumerate(events):
            mapped = map_event(outgoing, self.settings, now)
            if isinstance(mapped, tuple):
                by_asset.setdefault(mapped[0], []).append((index, mapped[1]))
            else:
                decided[index] = mapped
        requests = []
        size = self.settings.batch_size
        for asset, entries in by_asset.items():
            for start in range(0, len(entries), size):
                chunk = entries[start : start + size]
                requests.append(
                    HttpRequest(
                        url=self.url(asset),
                        body=msgspec.json.encode({"data": [entry for _, entry in chunk]}),
                        indexes=[index for index, _ in chunk],
                    )
                )
        return requests, decided


Settings = SnapchatCapiDestination
open_sender = SnapchatCapiSender
