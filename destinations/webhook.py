"""`webhook`: POST `{"batch": [event, ...]}` to a URL (docs/CONTRACT.md §6).

2xx: delivered, except events the receiver lists as refused in a trackpipe-style answer
(`{"rejected": [{"index": i, "error": "..."}]}`), which are rejected. 408, 429, 5xx, connection
errors and timeouts: retried, honouring `Retry-After`. Other 4xx: rejected, with the status and the
start of the response body as the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime

import httpx
import msgspec

from destinations.base import DELIVERED, Outcome, Rejected, Retry, short_reason
from trackpipe.destination_settings import WebhookDestination

# A Retry-After longer than this is read as this: a receiver cannot park events for years.
MAX_RETRY_AFTER_SECONDS = 86_400
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
BODY_IN_REASON = 200


class _Refused(msgspec.Struct):
    index: int
    error: str = "refused by the destination"


class _Answer(msgspec.Struct):
    rejected: list[_Refused] = []


_answer_decoder = msgspec.json.Decoder(_Answer)


def batch_body(bodies: list[bytes]) -> bytes:
    """`{"batch":[...]}` from already-encoded events, without decoding them again."""
    return b'{"batch":[' + b",".join(bodies) + b"]}"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_after(value: str | None, now: float) -> float | None:
    """Unix time a `Retry-After` header (seconds or HTTP date) asks to wait until."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return now + min(int(value[:12]), MAX_RETRY_AFTER_SECONDS)
    try:
        at = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(at, now + MAX_RETRY_AFTER_SECONDS)


def outcomes_for(response: httpx.Response, count: int, now: float) -> list[Outcome]:
    """What one HTTP answer means for each of the `count` events it was about (pure)."""
    status = response.status_code
    if 200 <= status < 300:
        outcomes: list[Outcome] = [DELIVERED] * count
        try:
            answer = _answer_decoder.decode(response.content) if response.content else _Answer()
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return outcomes  # any 2xx body that is not a per-event answer means "all taken"
        for refused in answer.rejected:
            if 0 <= refused.index < count:
                outcomes[refused.index] = Rejected(short_reason(f"refused by the destination: {refused.error}"))
        return outcomes
    text = response.content[:BODY_IN_REASON].decode("utf-8", "replace")
    reason = short_reason(f"HTTP {status}: {text}" if text else f"HTTP {status}")
    if status in RETRYABLE_STATUSES:
        return [Retry(reason, retry_after(response.headers.get("retry-after"), now))] * count
    return [Rejected(reason)] * count


class WebhookSender:
    def __init__(self, settings: WebhookDestination, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        timeout = httpx.Timeout(
            settings.read_timeout_seconds,
            connect=settings.connect_timeout_seconds,
            pool=settings.connect_timeout_seconds,
        )
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def _post(self, bodies: list[bytes]) -> list[Outcome]:
        body = batch_body(bodies)
        headers = {"Content-Type": "application/json", "X-Trackpipe-Destination": self.settings.id}
        if self.settings.secret:
            headers["X-Trackpipe-Signature"] = signature(self.settings.secret, body)
        try:
            response = self._client.post(self.settings.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return [Retry(short_reason(f"timeout: {type(exc).__name__}"))] * len(bodies)
        except httpx.HTTPError as exc:
            return [Retry(short_reason(f"connection error: {type(exc).__name__}: {exc}"))] * len(bodies)
        return outcomes_for(response, len(bodies), time.time())

    def send(self, bodies: list[bytes]) -> list[Outcome]:
        size = self.settings.batch_size
        outcomes: list[Outcome] = []
        for start in range(0, len(bodies), size):
            outcomes += self._post(bodies[start : start + size])
        return outcomes

    def close(self) -> None:
        self._client.close()


Settings = WebhookDestination
open_sender = WebhookSender
