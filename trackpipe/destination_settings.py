"""The settings of each destination type, as the config holds them (a `[[destinations]]` table, tagged
by `type`). They are configuration shapes, so they live in the core; the code that sends lives in
`destinations/`, one module per type (`destinations.TYPES`, which a test keeps in step with
`DESTINATION_SETTINGS`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec

from trackpipe.types import DestinationBase, PositiveFloat, PositiveInt, Strict

# A mapping path: dotted keys; `key[]` goes into every element of the list at `key`.
_MAPPING_PATH = re.compile(r"^[^.\[\]]+(\[\])?(\.[^.\[\]]+(\[\])?)*$")
# Header and query-parameter names whose values are credentials (masked everywhere).
SECRET_NAME = re.compile(r"auth|token|key|secret|signature|password|passwd|credential|session|cookie", re.I)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the HTTP client sets itself from the request; a config value would contradict it.
_MANAGED_HEADERS = frozenset({"content-length", "host", "transfer-encoding", "connection"})


def _list_prefix(path: str) -> str:
    """The part of a path up to and including its last `[]` ("" when it has none)."""
    at = path.rfind("[]")
    return path[: at + 2] if at >= 0 else ""


class Mapping(Strict):
    """How the event is reshaped before a webhook or file destination gets it (destinations.mapping),
    in this order: drop, rename, set, flatten."""

    drop: list[str] = msgspec.field(default_factory=list)
    rename: dict[str, str] = msgspec.field(default_factory=dict)  # old path -> new path
    set_: dict[str, Any] = msgspec.field(default_factory=dict, name="set")  # path -> constant
    flatten: bool = False  # nested objects become one level, keys joined by the separator
    flatten_separator: str = "_"

    def problems(self, where: str) -> list[str]:
        found = []
        paths = [("drop", p) for p in self.drop] + [("rename", p) for p in self.rename]
        paths += [("rename", p) for p in self.rename.values()] + [("set", p) for p in self.set_]
        for table, path in paths:
            if not _MAPPING_PATH.match(path):
                found.append(f"{where}.{table}: {path!r} is not a dotted path (keys, `key[]` for each element)")
        for table, path in paths:
            if table != "drop" and path.endswith("[]"):
                found.append(f"{where}.{table}: {path!r} must name a key, not every element of a list")
        for old, new in self.rename.items():
            if _MAPPING_PATH.match(old) and _MAPPING_PATH.match(new) and _list_prefix(old) != _list_prefix(new):
                found.append(
                    f"{where}.rename: {old!r} -> {new!r} must stay inside the same list "
                    f"(both start with {_list_prefix(old) or 'no list'!r})"
                )
        if not self.flatten_separator or len(self.flatten_separator) > 8:
            found.append(f"{where}.flatten_separator: must be 1 to 8 characters")
        return found


def _url_secrets(url: str) -> list[str]:
    """Credentials a URL carries: its password and the values of query parameters named like keys."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [value for name, value in parse_qsl(parts.query) if value and SECRET_NAME.search(name)]
    return found


class WebhookDestination(DestinationBase, kw_only=True, tag_field="type", tag="webhook"):
    url: str
    secret: str | None = None  # signs each body (X-Trackpipe-Signature)
    connect_timeout_seconds: PositiveFloat = 2.0
    read_timeout_seconds: PositiveFloat = 10.0
    batch_size: PositiveInt = 500
    # One request per event with the bare event as the body, as the vendor's webhook sends; otherwise
    # `{"batch": [...]}` of up to batch_size events.
    per_event: bool = False
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    mapping: Mapping | None = None

    def problems(self, where: str) -> list[str]:
        found = []
        try:
            parts = urlsplit(self.url)
            ok = parts.scheme in ("http", "https") and bool(parts.netloc)
        except ValueError:
            ok = False
        if not ok:
            shown = self.url
            for secret in sorted(self.secrets(), key=len, reverse=True):  # its query may carry a credential
                shown = shown.replace(secret, "***")
            found.append(f"{where}.url: {shown!r} is not an http:// or https:// URL")
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name):
                found.append(f"{where}.headers: {name!r} is not a valid header name")
            elif name.lower() in _MANAGED_HEADERS:
                found.append(f"{where}.headers: {name!r} is set by the HTTP client and cannot be configured")
            if "\r" in value or "\n" in value:
                found.append(f"{where}.headers.{name}: a header value cannot hold a line break")
        if self.mapping is not None:
            found += self.mapping.problems(f"{where}.mapping")
        return found

    def secrets(self) -> list[str]:
        found = [self.secret] if self.secret else []
        for name, value in self.headers.items():
            if value and SECRET_NAME.search(name):
                # "Bearer <token>": the token alone is masked too, wherever it shows up.
                found += [value, value.rsplit(" ", 1)[-1]]
        return found + _url_secrets(self.url)


class FileDestination(DestinationBase, kw_only=True, tag_field="type", tag="file"):
    path: str
    mapping: Mapping | None = None

    def problems(self, where: str) -> list[str]:
        found = [] if self.path.strip() else [f"{where}.path: cannot be empty"]
        if self.mapping is not None:
            found += self.mapping.problems(f"{where}.mapping")
        return found


TIKTOK_EVENTS_URL = "https://business-api.tiktok.com/open_api/v1.3/event/track/"
# `{asset_id}` becomes the pixel id (web and offline events) or the Snap App ID (app events).
SNAPCHAT_EVENTS_URL = "https://tr.snapchat.com/v3/{asset_id}/events"
TIKTOK_MAX_EVENTS = 1000  # TikTok's limit of events per request
SNAPCHAT_MAX_EVENTS = 2000  # Snapchat's limit of events per request


def _endpoint_problems(where: str, url: str) -> list[str]:
    parts = urlsplit(url.replace("{asset_id}", "x"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return [f"{where}.endpoint: {url!r} is not an http:// or https:// URL"]
    return []


def _required_text(where: str, **values: str) -> list[str]:
    return [f"{where}.{name}: cannot be empty" for name, value in values.items() if not value.strip()]


class TiktokDestination(DestinationBase, kw_only=True, tag_field="type", tag="tiktok"):
    """TikTok Events API 2.0 (destinations.tiktok)."""

    pixel_code: str
    access_token: str
    app_id: str | None = None  # TikTok App ID: needed only for app events (event_source "app")
    endpoint: str = TIKTOK_EVENTS_URL
    test_event_code: str | None = None
    # Your event name -> TikTok event name (standard or custom); checked before the built-in table.
    event_names: dict[str, str] = {}
    # Which of these become TikTok's ViewContent (the vendor's "ViewContent Event Mapping").
    view_content_from: list[Literal["page_view", "view_item"]] = msgspec.field(default_factory=lambda: ["view_item"])
    # Events with a `context.app` are app events (the vendor's "Autodiscovery Event Source").
    autodiscover_event_source: bool = False
    # False: `user.id` is hashed as sent, not lower-cased first (the vendor's "Do Not Lower Case User Id").
    lowercase_user_id: bool = True
    connect_timeout_seconds: PositiveFloat = 2.0
    read_timeout_seconds: PositiveFloat = 10.0
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=TIKTOK_MAX_EVENTS)] = TIKTOK_MAX_EVENTS

    def problems(self, where: str) -> list[str]:
        found = _endpoint_problems(where, self.endpoint)
        found += _required_text(where, pixel_code=self.pixel_code, access_token=self.access_token)
        if self.app_id is not None and not self.app_id.strip():
            found.append(f"{where}.app_id: cannot be empty (leave it out for web events only)")
        found += [f"{where}.event_names.{key}: cannot be empty" for key, v in self.event_names.items() if not v.strip()]
        return found

    def secrets(self) -> list[str]:
        return [self.access_token] if self.access_token else []


SnapchatCustomEvent = Annotated[str, msgspec.Meta(pattern=r"^CUSTOM_EVENT_[1-5]$")]


class SnapchatCapiDestination(DestinationBase, kw_only=True, tag_field="type", tag="snapchat_capi"):
    """Snapchat Conversions API v3 (destinations.snapchat_capi)."""

    pixel_id: str
    access_token: str
    snap_app_id: str | None = None  # needed only for app events (action_source MOBILE_APP)
    endpoint: str = SNAPCHAT_EVENTS_URL
    # Your event name -> one of Snapchat's five custom events, e.g. {newsletter = "CUSTOM_EVENT_1"}.
    custom_events: dict[str, SnapchatCustomEvent] = {}
    # Send `context.device.ip` as client_ip_address (the vendor's "Send IP Address" option, off by default).
    send_ip_address: bool = False
    connect_timeout_seconds: PositiveFloat = 2.0
    read_timeout_seconds: PositiveFloat = 10.0
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=SNAPCHAT_MAX_EVENTS)] = SNAPCHAT_MAX_EVENTS

    def problems(self, where: str) -> list[str]:
        found = _endpoint_problems(where, self.endpoint)
        found += _required_text(where, pixel_id=self.pixel_id, access_token=self.access_token)
        if self.snap_app_id is not None and not self.snap_app_id.strip():
            found.append(f"{where}.snap_app_id: cannot be empty (leave it out for web events only)")
        return found

    def secrets(self) -> list[str]:
        return [self.access_token] if self.access_token else []


META_GRAPH_URL = "https://graph.facebook.com"
META_MAX_EVENTS = 1000  # Meta's limit of events per Conversions API request
# Where an event happened, as Meta names it (app events, which need app_data, are not supported).
MetaActionSource = Literal[
    "website", "email", "phone_call", "chat", "physical_store", "system_generated", "business_messaging", "other"
]


class MetaCapiDestination(DestinationBase, kw_only=True, tag_field="type", tag="meta_capi"):
    """Meta (Facebook) Conversions API (destinations.meta_capi)."""

    pixel_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,32}$")]
    access_token: str
    api_version: Annotated[str, msgspec.Meta(pattern=r"^v[0-9]{1,3}\.[0-9]{1,2}$")] = "v23.0"
    test_event_code: str | None = None  # every request goes to Events Manager's "Test events"
    endpoint: str = META_GRAPH_URL
    action_source: MetaActionSource = "website"  # events with `type = "offline"` are physical_store
    # Your event name -> Meta event name; checked before the built-in table.
    event_names: dict[str, str] = {}
    content_type: Literal["product", "product_group"] | None = None  # custom_data.content_type
    # The event's top-level text, number and boolean properties are copied into custom_data.
    custom_data_all_properties: bool = True
    # Digits put in place of the leading 0 of a national phone number (e.g. "33"); None: left as is.
    default_phone_country_code: Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,3}$")] | None = None
    connect_timeout_seconds: PositiveFloat = 2.0
    read_timeout_seconds: PositiveFloat = 10.0
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=META_MAX_EVENTS)] = META_MAX_EVENTS

    def problems(self, where: str) -> list[str]:
        found = _endpoint_problems(where, self.endpoint)
        found += _required_text(where, access_token=self.access_token)
        if self.test_event_code is not None and not self.test_event_code.strip():
            found.append(f"{where}.test_event_code: cannot be empty (leave it out to send live events)")
        found += [f"{where}.event_names.{key}: cannot be empty" for key, v in self.event_names.items() if not v.strip()]
        return found

    def secrets(self) -> list[str]:
        return [self.access_token] if self.access_token else []


GA4_COLLECT_URL = "https://www.google-analytics.com/mp/collect"
_GA4_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_GA4_RESERVED_PREFIXES = ("google_", "ga_", "firebase_")


def _ga4_name_problems(where: str, name: str, max_length: int, reserved: frozenset[str]) -> list[str]:
    """Google's rules for parameter and user property names (checked when the config is loaded)."""
    if len(name) > max_length:
        return [f"{where}: {name!r} is {len(name)} characters; GA4 allows {max_length}"]
    if not _GA4_NAME.match(name):
        return [f"{where}: {name!r} must start with a letter and hold only letters, digits and underscores"]
    if name in reserved or name.startswith(_GA4_RESERVED_PREFIXES):
        return [f"{where}: {name!r} is reserved by GA4 (reserved names and the google_, ga_, firebase_ prefixes)"]
    return []


class Ga4Destination(DestinationBase, kw_only=True, tag_field="type", tag="ga4"):
    """Google Analytics 4 Measurement Protocol (destinations.ga4): a web stream (`measurement_id`) or an
    app stream (`firebase_app_id`), one per destination."""

    api_secret: str
    measurement_id: str | None = None  # web stream: "G-XXXXXXXXXX"
    firebase_app_id: str | None = None  # app stream
    endpoint: str = GA4_COLLECT_URL
    # True: send to the validation server (`/debug/mp/collect`); GA4 records nothing.
    validate: bool = False
    client_id_cookie: str = "_ga"  # the cookie in context.device.cookie holding the client id
    # App streams: the event property holding the app_instance_id (default: a hash of
    # context.device.sdk_id or user.tcId, as the vendor does).
    app_instance_id_field: str | None = None
    engagement_time_msec: int = 1  # 0: not sent
    debug_mode: bool = False  # `debug_mode: true` on each event (GA4's DebugView)
    ip_override: bool = False  # send context.device.ip as `ip_override`
    user_properties: dict[str, str] = {}  # GA4 user property name -> dotted path in the event
    event_params: dict[str, str] = {}  # extra GA4 event parameter name -> dotted path in the event
    connect_timeout_seconds: PositiveFloat = 2.0
    read_timeout_seconds: PositiveFloat = 10.0
    batch_size: PositiveInt = 25  # events per request; Google takes at most 25

    def problems(self, where: str) -> list[str]:
        found = _endpoint_problems(where, self.endpoint)
        found += _required_text(where, api_secret=self.api_secret)
        if bool(self.measurement_id) == bool(self.firebase_app_id):
            found.append(
                f"{where}: set exactly one of measurement_id (a web stream) or firebase_app_id (an app stream)"
            )
        if self.measurement_id and not re.fullmatch(r"G-[A-Z0-9]+", self.measurement_id):
            found.append(f"{where}.measurement_id: {self.measurement_id!r} is not a GA4 measurement id (G-XXXXXXXXXX)")
        if self.validate and not urlsplit(self.endpoint).path.rstrip("/").endswith("/mp/collect"):
            found.append(f"{where}.validate: needs an endpoint ending in /mp/collect (its /debug/mp/collect validates)")
        if self.batch_size > 25:
            found.append(f"{where}.batch_size: {self.batch_size} is over 25, Google's events-per-request limit")
        if self.engagement_time_msec < 0:
            found.append(f"{where}.engagement_time_msec: cannot be negative")
        if not self.client_id_cookie.strip():
            found.append(f"{where}.client_id_cookie: cannot be empty")
        if len(self.user_properties) > 25:
            found.append(f"{where}.user_properties: {len(self.user_properties)} properties; GA4 allows 25")
        reserved_user = frozenset(
            {"first_open_time", "first_visit_time", "last_deep_link_referrer", "user_id", "first_open_after_install"}
        )
        for name, path in self.user_properties.items():
            found += _ga4_name_problems(f"{where}.user_properties.{name}", name, 24, reserved_user)
            if not path.strip():
                found.append(f"{where}.user_properties.{name}: the path cannot be empty")
        for name, path in self.event_params.items():
            found += _ga4_name_problems(f"{where}.event_params.{name}", name, 40, frozenset({"firebase_conversion"}))
            if not path.strip():
                found.append(f"{where}.event_params.{name}: the path cannot be empty")
        return found

    def secrets(self) -> list[str]:
        return [self.api_secret] if self.api_secret else []


# config `type` -> its settings
DESTINATION_SETTINGS: dict[str, type[DestinationBase]] = {
    "ga4": Ga4Destination,
    "webhook": WebhookDestination,
    "file": FileDestination,
    "tiktok": TiktokDestination,
    "snapchat_capi": SnapchatCapiDestination,
    "meta_capi": MetaCapiDestination,
}
