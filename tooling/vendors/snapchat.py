"""A local stand-in for Snapchat's Conversions API v3 (`POST /v3/{asset_id}/events`), for tests.

It checks a request the way Snapchat does and answers the way Snapchat does: 200
`{"status": "OK", "reason": "All records processed"}` when taken; 400 `{"status": "INVALID", "reason":
...}` naming the rule an event broke (the rules Snapchat's validation endpoint lists); 401 for a missing
or wrong token (`access_token` query parameter, or `Authorization: Bearer`); 404 for an asset id that is
neither the pixel nor the Snap App ID. Scripted answers (`answer_next`) stand for rate limits (429 with
Retry-After) and outages (5xx). Every request is kept in `received`, taken or not.

What it refuses: `data` not 1 to 2,000 events; an unknown `event_name` (the standard names and
`CUSTOM_EVENT_1..5`); `event_time` not an integer of Unix seconds; `action_source` not WEB, MOBILE_APP or
OFFLINE; a WEB event without `event_source_url`; hashed `user_data` fields (`em`, `ph`, `fn`, `ln`, `ge`,
`ct`, `st`, `zp`, `country`, `external_id`) that are not lists of lower-case SHA-256 hex; an `idfv` not
hashed; a `client_ip_address` that is not an IP address in clear; not enough identity (email, phone,
madid, or IP address and user agent together); a PURCHASE without value and currency; app events sent to
the pixel, web events sent to the app id, app events without `app_data.app_id` and a 16-element
`extinfo` starting with `a2` or `i2`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tooling.harness import LocalServer, read_body, send_reply

MAX_EVENTS = 2000
EVENT_NAMES = frozenset(
    {
        "ACHIEVEMENT_UNLOCKED", "AD_CLICK", "AD_VIEW", "ADD_BILLING", "ADD_CART", "ADD_TO_WISHLIST", "APP_OPEN",
        "COMPLETE_TUTORIAL", "INVITE", "LEVEL_COMPLETE", "LIST_VIEW", "LOGIN", "PAGE_VIEW", "PURCHASE", "RATE",
        "RESERVE", "SAVE", "SEARCH", "SHARE", "SIGN_UP", "SPENT_CREDITS", "START_CHECKOUT", "START_TRIAL",
        "SUBSCRIBE", "VIEW_CONTENT", "CUSTOM_EVENT_1", "CUSTOM_EVENT_2", "CUSTOM_EVENT_3", "CUSTOM_EVENT_4",
        "CUSTOM_EVENT_5",
    }
)  # fmt: skip
ACTION_SOURCES = ("WEB", "MOBILE_APP", "OFFLINE")
HASHED_LISTS = ("em", "ph", "fn", "ln", "ge", "ct", "st", "zp", "country", "external_id")
_PATH = re.compile(r"^/v3/([^/]+)/events(/validate)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Request:
    path: str  # with the query string, as sent
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()


class Invalid(Exception):
    pass


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.match(value) is not None


def check(body: Any, app_event_expected: bool) -> None:
    """Raises Invalid with a reason naming the field, as Snapchat refuses a request."""
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    data = body.get("data")
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_EVENTS:
        raise Invalid(f"data: must be a list of 1 to {MAX_EVENTS} events")
    for i, event in enumerate(data):
        _check_event(event, f"data[{i}]", app_event_expected)


def _check_event(event: Any, where: str, app_asset: bool) -> None:
    if not isinstance(event, dict):
        raise Invalid(f"{where}: must be an object")
    if event.get("event_name") not in EVENT_NAMES:
        raise Invalid(f"{where}.event_name: missing or unknown event {event.get('event_name')!r}")
    stamp = event.get("event_time")
    if not isinstance(stamp, int) or isinstance(stamp, bool) or not 1_000_000_000 <= stamp < 10_000_000_000:
        raise Invalid(f"{where}.event_time: timestamp invalid (Unix seconds)")
    source = event.get("action_source")
    if source not in ACTION_SOURCES:
        raise Invalid(f"{where}.action_source: must be one of {', '.join(ACTION_SOURCES)}")
    if (source == "MOBILE_APP") != app_asset:
        raise Invalid(f"{where}.action_source: {source} events go to the {'Snap App ID' if app_asset else 'pixel'}"
                      " of their kind")  # fmt: skip
    if source == "WEB" and not isinstance(event.get("event_source_url"), str):
        raise Invalid(f"{where}.event_source_url: required for WEB events")
    user = event.get("user_data")
    if not isinstance(user, dict):
        raise Invalid(f"{where}.user_data: required")
    for key in HASHED_LISTS:
        if key in user and not (isinstance(user[key], list) and user[key] and all(map(_is_hash, user[key]))):
            raise Invalid(f"{where}.user_data.{key}: unhashed PII (a list of SHA-256 lower-case hex)")
    if "idfv" in user and not _is_hash(user["idfv"]):
        raise Invalid(f"{where}.user_data.idfv: unhashed PII")
    if "client_ip_address" in user:
        try:
            ipaddress.ip_address(user["client_ip_address"])
        except (ValueError, TypeError):
            raise Invalid(f"{where}.user_data.client_ip_address: invalid IP address") from None
    if not (
        user.get("em") or user.get("ph") or user.get("madid")
        or (user.get("client_ip_address") and user.get("client_user_agent"))
    ):  # fmt: skip
        raise Invalid(f"{where}.user_data: insufficient PII")
    custom = event.get("custom_data", {})
    if not isinstance(custom, dict):
        raise Invalid(f"{where}.custom_data: must be an object")
    if event["event_name"] == "PURCHASE" and ("value" not in custom or "currency" not in custom):
        raise Invalid(f"{where}.custom_data: missing price and/or currency in PURCHASE event")
    if source == "MOBILE_APP":
        app = event.get("app_data")
        extinfo = app.get("extinfo") if isinstance(app, dict) else None
        if not isinstance(app, dict) or not isinstance(app.get("app_id"), str):
            raise Invalid(f"{where}.app_data.app_id: required for MOBILE_APP events")
        if not (isinstance(extinfo, list) and len(extinfo) == 16 and extinfo[0] in ("a2", "i2")):
            raise Invalid(f"{where}.app_data.extinfo: 16 strings starting with a2 or i2")


class SnapchatServer(LocalServer):
    """Snapchat's Conversions API v3 on a free local port, in a thread. `endpoint` is the setting to
    configure (with its `{asset_id}`).

        with SnapchatServer(access_token="tok", pixel_id="px") as server:
            ...
            server.events()  # the data[] elements of the requests it took
    """

    def __init__(self, *, access_token: str, pixel_id: str, snap_app_id: str | None = None) -> None:
        self.access_token = access_token
        self.pixel_id = pixel_id
        self.snap_app_id = snap_app_id
        self.received: list[Request] = []
        self._scripted: list[Answer] = []
        self._lock = threading.Lock()
        super().__init__()
        self.base = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.base + "/v3/{asset_id}/events"

    def answer_next(self, *answers: Answer) -> None:
        """The next requests get these answers (after being recorded), whatever they hold."""
        with self._lock:
            self._scripted.extend(answers)

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self.received)

    def events(self) -> list[dict[str, Any]]:
        """The events of every request the server took (200)."""
        return [event for r in self.requests() if r.status == 200 for event in r.json()["data"]]

    def _decide(self, handler: BaseHTTPRequestHandler, body: bytes) -> Answer:
        with self._lock:
            if self._scripted:
                return self._scripted.pop(0)
        parts = urlsplit(handler.path)
        found = _PATH.match(parts.path)
        if found is None or found.group(1) not in (self.pixel_id, self.snap_app_id):
            return Answer(404, {"status": "NOT_FOUND", "reason": "unknown pixel or Snap App ID"})
        token = parse_qs(parts.query).get("access_token", [None])[0]
        bearer = handler.headers.get("Authorization", "")
        if token is None and bearer.startswith("Bearer "):
            token = bearer[len("Bearer ") :]
        if token != self.access_token:
            return Answer(401, {"status": "UNAUTHORIZED", "reason": "invalid or missing access token"})
        try:
            check(json.loads(body), app_event_expected=found.group(1) == self.snap_app_id)
        except (ValueError, UnicodeDecodeError):
            return Answer(400, {"status": "INVALID", "reason": "request body is not JSON"})
        except Invalid as exc:
            return Answer(400, {"status": "INVALID", "reason": str(exc)})
        return Answer(200, {"status": "OK", "reason": "All records processed"})

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        if body is None:
            return
        answer = self._decide(handler, body)
        payload = json.dumps(answer.body).encode() if answer.body is not None else b""
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.received.append(Request(handler.path, headers, body, answer.status))
        send_reply(handler, answer.status, payload, [("Content-Type", "application/json"), *answer.headers])
