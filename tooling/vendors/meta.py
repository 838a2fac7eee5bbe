"""A local stand-in for Meta's Conversions API endpoint that checks requests the way Meta does.

`POST /{version}/{pixel_id}/events` with the access token (JSON body member, form field or query
parameter). It refuses, with Meta's error shape `{"error": {"message", "type", "code", "error_subcode",
"fbtrace_id", ...}}` and HTTP 400 (as the Graph API answers): an unknown path (2500), a wrong pixel id
(100/33), no token (104), a wrong token (190), a body that is not JSON or has no `data` array of 1 to
1,000 events (100), and, failing the whole request as Meta does, any event without `event_name`, with
an `event_time` that is not whole seconds, in the future or more than 7 days old (62 for
`physical_store`), an unknown `action_source`, no `user_data` or none of its customer information
parameters, a hashed field (`em`, `ph`, `fn`, `ln`, `ge`, `db`, `ct`, `st`, `zp`, `country`) that is not
64 lower-case hex characters, an IP address or user agent that is not plain text, a website event without
`event_source_url` or `client_user_agent`, a Purchase without `custom_data.value` and `currency`, or
`contents` entries without `id` and `quantity`. Accepted: `{"events_received": n, "messages": [],
"fbtrace_id": "..."}`.

Faults for tests, each answering one request in turn: `rate_limit(code)` (Meta's throttling errors,
HTTP 400 or 429), `server_error(status)` and `graph_error(...)` for any other Graph error.

    with MetaServer(pixel_id="123", access_token="tok") as meta:
        ... endpoint = meta.url ...
        meta.accepted_events()
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tooling.harness import LocalServer, read_body, send_reply

HASHED_FIELDS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
CUSTOMER_FIELDS = (
    *HASHED_FIELDS,
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
)
ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
MAX_EVENTS = 1000
MAX_AGE_SECONDS = 7 * 86_400
MAX_AGE_PHYSICAL_STORE_SECONDS = 62 * 86_400
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^v[0-9]+\.[0-9]+$")
_PATH = re.compile(r"^/(?P<version>[^/]+)/(?P<pixel>[^/]+)/events/?$")


@dataclasses.dataclass(frozen=True)
class Fault:
    """One scripted answer instead of the normal checks."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class MetaRequest:
    """One request the server got and what it answered."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int
    answer: dict[str, Any]

    def json(self) -> Any:
        return json.loads(self.body)


def _trace() -> str:
    return "A" + secrets.token_urlsafe(16)


def error_body(
    message: str, code: int, *, type_: str = "OAuthException", subcode: int | None = None, user_msg: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["is_transient"] = code in (1, 2)
    if user_msg is not None:
        error["error_user_title"] = "Invalid parameter"
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = _trace()
    return {"error": error}


def graph_error(
    status: int, message: str, code: int, subcode: int | None = None, retry_after: str | None = None
) -> Fault:
    headers = (("Retry-After", retry_after),) if retry_after else ()
    body = json.dumps(error_body(message, code, subcode=subcode)).encode()
    return Fault(status, body, headers)


def rate_limit(code: int = 17, status: int = 400, retry_after: str | None = None) -> Fault:
    """Meta's throttling: 4 (application), 17 (user), 32 (page), 613 (calls per hour), 80004 (ads)."""
    messages = {
        4: "Application request limit reached",
        17: "User request limit reached",
        32: "Page request limit reached",
        613: "Calls to this api have exceeded the rate limit.",
        80004: "There have been too many calls to this ad-account.",
    }
    return graph_error(status, messages.get(code, "Request limit reached"), code, retry_after=retry_after)


def server_error(status: int = 500) -> Fault:
    if status == 503:
        return graph_error(status, "Service temporarily unavailable", 2)
    return graph_error(status, "An unknown error occurred", 1, subcode=99)


class _Refusal(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


def _invalid(user_msg: str, subcode: int = 2804019) -> _Refusal:
    return _Refusal(400, error_body("Invalid parameter", 100, subcode=subcode, user_msg=user_msg))


def _check_hashed(index: int, key: str, value: Any) -> None:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _invalid(f"data[{index}].user_data.{key}: empty")
    for one in values:
        if not isinstance(one, str) or not _HEX64.match(one):
            raise _invalid(f"data[{index}].user_data.{key}: must be a SHA-256 hash (64 lower-case hex characters)")


def check_event(index: int, event: Any, now: float) -> None:
    """Meta's checks on one server event; raises the error Meta would answer for the request."""
    if not isinstance(event, dict):
        raise _invalid(f"data[{index}]: must be an object")
    name = event.get("event_name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"data[{index}].event_name: required")
    event_time = event.get("event_time")
    if not isinstance(event_time, int) or isinstance(event_time, bool):
        raise _invalid(f"data[{index}].event_time: must be a Unix time in whole seconds")
    if event_time > now + 1:
        raise _invalid(f"data[{index}].event_time: cannot be in the future", subcode=2804004)
    action_source = event.get("action_source")
    if action_source not in ACTION_SOURCES:
        raise _invalid(f"data[{index}].action_source: must be one of {sorted(ACTION_SOURCES)}")
    max_age = MAX_AGE_PHYSICAL_STORE_SECONDS if action_source == "physical_store" else MAX_AGE_SECONDS
    if event_time < now - max_age:
        raise _invalid(f"data[{index}].event_time: more than {max_age // 86_400} days ago", subcode=2804003)
    user = event.get("user_data")
    if not isinstance(user, dict) or not any(user.get(key) not in (None, "", []) for key in CUSTOMER_FIELDS):
        raise _invalid(f"data[{index}].user_data: at least one customer information parameter is required")
    for key in HASHED_FIELDS:
        if key in user:
            _check_hashed(index, key, user[key])
    external = user.get("external_id")
    if external is not None and not (
        isinstance(external, str) or (isinstance(external, list) and all(isinstance(v, str) for v in external))
    ):
        raise _invalid(f"data[{index}].user_data.external_id: a string or a list of strings")
    if "client_ip_address" in user:
        try:
            ipaddress.ip_address(user["client_ip_address"])
        except (TypeError, ValueError):
            raise _invalid(f"data[{index}].user_data.client_ip_address: not a plain IP address") from None
    ua = user.get("client_user_agent")
    if ua is not None and (not isinstance(ua, str) or _HEX64.match(ua)):
        raise _invalid(f"data[{index}].user_data.client_user_agent: must be the plain user agent")
    if action_source == "website":
        url = event.get("event_source_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _invalid(f"data[{index}].event_source_url: required for website events")
        if not isinstance(ua, str) or not ua:
            raise _invalid(f"data[{index}].user_data.client_user_agent: required for website events")
    custom = event.get("custom_data", {})
    if not isinstance(custom, dict):
        raise _invalid(f"data[{index}].custom_data: must be an object")
    if name == "Purchase":
        value = custom.get("value")
        if not isinstance(value, int | float) or isinstance(value, bool) or not isinstance(custom.get("currency"), str):
            raise _invalid(f"data[{index}].custom_data: value and currency are required for Purchase events")
    for position, content in enumerate(custom.get("contents") or []):
        if not isinstance(content, dict) or "id" not in content or not isinstance(content.get("quantity"), int):
            raise _invalid(f"data[{index}].custom_data.contents[{position}]: needs id and an integer quantity")


class MetaServer(LocalServer):
    """A real HTTP/1.1 server on a free port in a thread (see the module docstring)."""

    METHODS = ("POST", "GET")

    def __init__(self, pixel_id: str, access_token: str, api_version: str | None = None) -> None:
        self.pixel_id = pixel_id
        self.access_token = access_token
        self.api_version = api_version  # None: any well-formed version
        self.received: list[MetaRequest] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    # --- for tests ---------------------------------------------------------------------------------

    def fail_next(self, *faults: Fault) -> None:
        """Answer the next requests with these faults, one each, then check normally again."""
        with self._lock:
            self._faults.extend(faults)

    def requests(self) -> list[MetaRequest]:
        with self._lock:
            return list(self.received)

    def accepted_events(self) -> list[dict[str, Any]]:
        """Every event of every request answered 200, in arrival order."""
        return [event for r in self.requests() if r.status == 200 for event in r.json()["data"]]

    # --- serving -----------------------------------------------------------------------------------

    def _token(self, query: dict[str, list[str]], payload: Any) -> str | None:
        if isinstance(payload, dict) and isinstance(payload.get("access_token"), str):
            return payload["access_token"]
        return query.get("access_token", [None])[0]

    def _answer(
        self, method: str, path: str, query: dict[str, list[str]], content_type: str, body: bytes
    ) -> dict[str, Any]:
        found = _PATH.match(path)
        if method != "POST" or not found or not _VERSION.match(found["version"]):
            raise _Refusal(400, error_body(f"Unknown path components: {path}", 2500))
        if self.api_version is not None and found["version"] != self.api_version:
            raise _Refusal(400, error_body(f"Unknown path components: {path}", 2500))
        payload: Any
        if content_type.startswith("application/x-www-form-urlencoded"):
            form = parse_qs(body.decode("utf-8", "replace"))
            payload = {key: values[0] for key, values in form.items()}
            if "data" in payload:
                try:
                    payload["data"] = json.loads(payload["data"])
                except ValueError:
                    raise _invalid("data: not valid JSON") from None
        else:
            try:
                payload = json.loads(body) if body else {}
            except (ValueError, UnicodeDecodeError):
                raise _invalid("the body is not valid JSON") from None
        token = self._token(query, payload)
        if not token:
            raise _Refusal(400, error_body("An access token is required to request this resource.", 104))
        if token != self.access_token:
            raise _Refusal(400, error_body("Invalid OAuth access token - Cannot parse access token", 190))
        if found["pixel"] != self.pixel_id:
            message = (
                f"Unsupported post request. Object with ID '{found['pixel']}' does not exist, cannot be loaded "
                "due to missing permissions, or does not support this operation."
            )
            raise _Refusal(400, error_body(message, 100, type_="GraphMethodException", subcode=33))
        if not isinstance(payload, dict):
            raise _invalid("the body must be an object")
        data = payload.get("data")
        if not isinstance(data, list) or not data:
            raise _invalid("data: a non-empty array of events is required")
        if len(data) > MAX_EVENTS:
            raise _invalid(f"data: at most {MAX_EVENTS} events per request (got {len(data)})")
        code = payload.get("test_event_code")
        if code is not None and (not isinstance(code, str) or not code):
            raise _invalid("test_event_code: must be a non-empty string")
        now = time.time()
        for index, event in enumerate(data):
            check_event(index, event, now)
        return {"events_received": len(data), "messages": [], "fbtrace_id": _trace()}

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        if body is None:
            return
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        extra: tuple[tuple[str, str], ...] = ()
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            status, raw, extra = fault.status, fault.body, fault.headers
            answer = json.loads(raw)
        else:
            try:
                status, answer = (
                    200,
                    self._answer(handler.command, parts.path, query, headers.get("content-type", ""), body),
                )
            except _Refusal as refusal:
                status, answer = refusal.status, refusal.body
            raw = json.dumps(answer).encode()
        with self._lock:
            self.received.append(MetaRequest(parts.path, query, headers, body, status, answer))
        send_reply(handler, status, raw, [("Content-Type", "application/json"), *extra])
