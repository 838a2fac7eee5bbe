"""`webhook`: POST `{"batch": [event, ...]}` to a URL (docs/CONTRACT.md §6).

Options: `per_event = true` sends one request per event whose body is the bare event (as the vendor's
webhook does); `method` PUT or PATCH instead of POST; extra `headers` (values of credential-like
headers are secrets: masked everywhere); `mapping` reshapes each event (destinations.mapping; without
one, each event's stored JSON is forwarded byte for byte).

2xx: delivered, except events the receiver lists as refused in a trackpipe-style answer
(`{"rejected": [{"index": i, "error": "..."}]}`), which are rejected. 408, 429, 5xx, connection
errors and timeouts: retried, honouring `Retry-After`. Other 4xx: rejected, with the status and the
start of the response body as the reason. The HTTP side (pool, timeouts, dry run, exchanges,
masking) is `destinations.http`.
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import msgspec

from destinations.base import DELIVERED, Outcome, OutgoingEvent, Rejected, short_reason
from destinations.http import HttpRequest, HttpSender, retry_after, status_outcome
from destinations.mapping import apply
from trackpipe.destination_settings import WebhookDestination

__all__ = ["WebhookDestination", "WebhookSender", "batch_body", "outcomes_for", "retry_after", "signature"]


class _Refused(msgspec.Struct):
    index: int
    error: str = "refused by the destination"


class _Answer(msgspec.Struct):
    rejected: list[_Refused] = []


_answer_decoder = msgspec.json.Decoder(_Answer)
_encoder = msgspec.json.Encoder()


def batch_body(bodies: list[bytes]) -> bytes:
    """`{"batch":[...]}` from already-encoded events, without decoding them again."""
    return b'{"batch":[' + b",".join(bodies) + b"]}"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def outcomes_for(response: httpx.Response, count: int, now: float) -> list[Outcome]:
    """What one HTTP answer means for each of the `count` events it was about (pure)."""
    outcome = status_outcome(response, now)
    if outcome is not DELIVERED:
        return [outcome] * count
    outcomes: list[Outcome] = [DELIVERED] * count
    try:
        answer = _answer_decoder.decode(response.content) if response.content else _Answer()
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return outcomes  # any 2xx body that is not a per-event answer means "all taken"
    for refused in answer.rejected:
        if 0 <= refused.index < count:
            outcomes[refused.index] = Rejected(short_reason(f"refused by the destination: {refused.error}"))
    return outcomes


class WebhookSender(HttpSender):
    settings: WebhookDestination

    def __init__(self, settings: WebhookDestination, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(settings, transport)

    def _request(self, body: bytes, indexes: list[int]) -> HttpRequest:
        # The X-Trackpipe-* headers are trackpipe's own: a configured one cannot stand in for them.
        headers = {k: v for k, v in self.settings.headers.items() if not k.lower().startswith("x-trackpipe-")}
        headers["X-Trackpipe-Destination"] = self.settings.id
        if self.settings.secret:
            headers["X-Trackpipe-Signature"] = signature(self.settings.secret, body)
        return HttpRequest(
            url=self.settings.url, body=body, indexes=indexes, method=self.settings.method, headers=headers
        )

    def _body(self, event: OutgoingEvent) -> bytes:
        mapping = self.settings.mapping
        return event.body if mapping is None else _encoder.encode(apply(mapping, event.event))

    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        bodies = [self._body(e) for e in events]
        if self.settings.per_event:
            return [self._request(body, [i]) for i, body in enumerate(bodies)], {}
        size = self.settings.batch_size
        requests = []
        for start in range(0, len(bodies), size):
            chunk = bodies[start : start + size]
            requests.append(self._request(batch_body(chunk), list(range(start, start + len(chunk)))))
        return requests, {}

    def read(self, request: HttpRequest, response: httpx.Response, now: float) -> list[Outcome]:
        return outcomes_for(response, len(request.indexes), now)


Settings = WebhookDestination
open_sender = WebhookSender
