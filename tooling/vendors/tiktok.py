"""A local stand-in for TikTok's Events API 2.0 (`POST /open_api/v1.3/event/track/`), for tests.

It checks a request the way TikTok does and answers the way TikTok does: HTTP 200 with
`{"code": 0, "message": "OK", ...}` when taken, HTTP 200 with a non-zero `code` when refused (40104 no
token, 40105 wrong token, 40001 no permission on the pixel, 40002 invalid parameters, naming the
field). Scripted answers (`answer_next`) stand for rate limits (`code` 40100, or HTTP 429 with
Retry-After) and outages (5xx). Every request is kept in `received`, taken or not.

What it refuses: a missing or wrong `Access-Token`; a body that is not a JSON object; an unknown
`event_source`; an `event_source_id` other than the pixel (or, for `app`, the app id); `data` that is not
1 to 1,000 events; an event without `event` or with a standard name misspelt (case), an `event_time` that
is not an integer of Unix seconds; `email`, `phone`, `external_id` that are not lower-case SHA-256 hex;
`value` not a number, `currency` not 3 upper-case letters, `contents` not objects with a string
`content_id`, a numeric `price` and an integer `quantity`; app events without `app.app_id`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from tooling.harness import LocalServer, read_body, send_reply

PATH = "/open_api/v1.3/event/track/"
MAX_EVENTS = 1000
SOURCES = ("web", "app", "offline", "crm")
STANDARD_EVENTS = frozenset(
    {
        "AchieveLevel", "AddPaymentInfo", "AddToCart", "AddToWishlist", "ApplicationApproval", "CompletePayment",
        "CompleteRegistration", "CompleteTutorial", "Contact", "CreateGroup", "CreateRole", "CustomizeProduct",
        "Download", "FindLocation", "GenerateLead", "InAppADClick", "InAppAdImpr", "InitiateCheckout", "InstallApp",
        "JoinGroup", "LaunchAPP", "Lead", "LoanApplication", "LoanApproval", "LoanDisbursal", "Login", "PlaceAnOrder",
        "Purchase", "Rate", "Registration", "Schedule", "Search", "SpendCredits", "StartTrial", "SubmitApplication",
        "SubmitForm", "Subscribe", "UnlockAchievement", "ViewContent", "ClickButton",
    }
)  # fmt: skip
_STANDARD_BY_LOWER = {name.lower(): name for name in STANDARD_EVENTS}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_CUSTOM_NAME = re.compile(r"^[A-Za-z0-9_]{1,50}$")


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # HTTP status answered
    code: int | None  # TikTok's answer code (None when the answer was scripted without one)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()


class Invalid(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check(body: Any, pixel_code: str, app_id: str | None) -> None:
    """Raises Invalid with TikTok's code and a message naming the field, as TikTok refuses a request."""
    if not isinstance(body, dict):
        raise Invalid(40002, "request body must be a JSON object")
    source = body.get("event_source")
    if source not in SOURCES:
        raise Invalid(40002, f"event_source: must be one of {', '.join(SOURCES)}")
    expected = app_id if source == "app" else pixel_code
    if body.get("event_source_id") != expected:
        raise Invalid(40001, f"No permission to operate event_source_id {body.get('event_source_id')!r}")
    data = body.get("data")
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_EVENTS:
        raise Invalid(40002, f"data: must be a list of 1 to {MAX_EVENTS} events")
    if "test_event_code" in body and not isinstance(body["test_event_code"], str):
        raise Invalid(40002, "test_event_code: must be a string")
    for i, event in enumerate(data):
        _check_event(event, f"data[{i}]", source)


def _check_event(event: Any, where: str, source: str) -> None:
    if not isinstance(event, dict):
        raise Invalid(40002, f"{where}: must be an object")
    name = event.get("event")
    if not isinstance(name, str) or not _CUSTOM_NAME.match(name):
        raise Invalid(40002, f"{where}.event: missing or not a valid event name")
    if name not in STANDARD_EVENTS and name.lower() in _STANDARD_BY_LOWER:
        raise Invalid(40002, f"{where}.event: {name!r} is not a standard event (did you mean "
                      f"{_STANDARD_BY_LOWER[name.lower()]!r}?)")  # fmt: skip
    stamp = event.get("event_time")
    # Seconds: a millisecond timestamp (13 digits) is refused.
    if not _is_int(stamp) or not 1_000_000_000 <= stamp < 10_000_000_000:
        raise Invalid(40002, f"{where}.event_time: must be a Unix timestamp in seconds")
    if "event_id" in event and not isinstance(event["event_id"], str):
        raise Invalid(40002, f"{where}.event_id: must be a string")
    user = event.get("user", {})
    if not isinstance(user, dict):
        raise Invalid(40002, f"{where}.user: must be an object")
    for key in ("email", "phone", "external_id"):
        if key in user and not (isinstance(user[key], str) and _SHA256.match(user[key])):
            raise Invalid(40002, f"{where}.user.{key}: must be SHA-256 hashed (64 lower-case hex characters)")
    for key in ("ip", "user_agent", "ttclid", "ttp", "locale"):
        if key in user and not isinstance(user[key], str):
            raise Invalid(40002, f"{where}.user.{key}: must be a string")
    props = event.get("properties", {})
    if not isinstance(props, dict):
        raise Invalid(40002, f"{where}.properties: must be an object")
    if "value" in props and not _is_number(props["value"]):
        raise Invalid(40002, f"{where}.properties.value: must be a number")
    if "currency" in props and not (isinstance(props["currency"], str) and _CURRENCY.match(props["currency"])):
        raise Invalid(40002, f"{where}.properties.currency: must be an ISO 4217 code")
    for j, content in enumerate(props.get("contents", [])):
        at = f"{where}.properties.contents[{j}]"
        if not isinstance(content, dict):
            raise Invalid(40002, f"{at}: must be an object")
        if "content_id" in content and not isinstance(content["content_id"], str):
            raise Invalid(40002, f"{at}.content_id: must be a string")
        if "price" in content and not _is_number(content["price"]):
            raise Invalid(40002, f"{at}.price: must be a number")
        if "quantity" in content and not _is_int(content["quantity"]):
            raise Invalid(40002, f"{at}.quantity: must be an integer")
    if source == "app":
        app = event.get("app")
        if not isinstance(app, dict) or not isinstance(app.get("app_id"), str):
            raise Invalid(40002, f"{where}.app.app_id: required for app events")


class TiktokServer(LocalServer):
    """TikTok's Events API on a free local port, in a thread. `url` is the endpoint to configure.

    with TiktokServer(access_token="tok", pixel_code="PX") as server:
        ...
        server.requests()  # everything received
        server.events()    # the data[] elements of the requests it took
    """

    def __init__(self, *, access_token: str, pixel_code: str, app_id: str | None = None) -> None:
        self.access_token = access_token
        self.pixel_code = pixel_code
        self.app_id = app_id
        self.received: list[Request] = []
        self._scripted: list[Answer] = []
        self._lock = threading.Lock()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}{PATH}"

    def answer_next(self, *answers: Answer) -> None:
        """The next requests get these answers (after being recorded), whatever they hold."""
        with self._lock:
            self._scripted.extend(answers)

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self.received)

    def events(self) -> list[dict[str, Any]]:
        """The events of every request the server took (code 0)."""
        return [event for r in self.requests() if r.code == 0 for event in r.json()["data"]]

    def _decide(self, handler: BaseHTTPRequestHandler, body: bytes) -> Answer:
        with self._lock:
            if self._scripted:
                return self._scripted.pop(0)
        token = handler.headers.get("Access-Token")
        request_id = uuid.uuid4().hex
        if handler.path.split("?")[0] != PATH:
            return Answer(404, {"code": 40400, "message": "Not Found", "request_id": request_id})
        if not token:
            return Answer(200, {"code": 40104, "message": "Access token is null", "request_id": request_id})
        if token != self.access_token:
            message = "Access token is incorrect or has been revoked."
            return Answer(200, {"code": 40105, "message": message, "request_id": request_id})
        try:
            check(json.loads(body), self.pixel_code, self.app_id)
        except (ValueError, UnicodeDecodeError):
            return Answer(200, {"code": 40002, "message": "request body is not JSON", "request_id": request_id})
        except Invalid as exc:
            return Answer(200, {"code": exc.code, "message": exc.message, "request_id": request_id})
        return Answer(200, {"code": 0, "message": "OK", "request_id": request_id, "data": {}})

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        if body is None:
            return
        answer = self._decide(handler, body)
        payload = json.dumps(answer.body).encode() if answer.body is not None else b""
        code = answer.body.get("code") if isinstance(answer.body, dict) else None
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.received.append(Request(handler.path, headers, body, answer.status, code))
        send_reply(handler, answer.status, payload, [("Content-Type", "application/json"), *answer.headers])
