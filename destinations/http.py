"""The base of every HTTP destination: one connection pool per sender, timeouts, Retry-After, dry
runs and the exchanges the destination inspector shows.

A vendor module subclasses `HttpSender` and writes `build` (the requests for a list of events, and the
outcomes it can decide without sending) and, when the vendor reports per-event errors, `read`. Everything
else is here: one HTTP call per request; 2xx delivered; 408, 429, 5xx, timeouts and connection errors
retried (honouring `Retry-After`); other 4xx rejected with the status and the start of the body; each
request recorded as an `Exchange` with the settings' secrets masked and bodies cut; a dry run builds and
records requests and sends nothing.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx
import msgspec

from destinations.base import (
    DELIVERED,
    Exchange,
    Outcome,
    OutgoingEvent,
    Rejected,
    Retry,
    Skipped,
    mask,
    mask_values,
    masked_outcome,
    short_reason,
)
from trackpipe.types import DestinationBase

# A Retry-After longer than this is read as this: a receiver cannot park events for years.
MAX_RETRY_AFTER_SECONDS = 86_400
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
BODY_IN_REASON = 200
# Bodies kept in an exchange: enough to read a request, bounded so the inspector list stays small.
EXCHANGE_BODY_LIMIT = 4096
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 10.0
DRY_RUN_REASON = "dry run: request recorded, not sent"


class HttpRequest(msgspec.Struct):
    url: str
    body: bytes
    indexes: list[int]  # positions, in the events given to build(), this request carries
    method: str = "POST"
    headers: dict[str, str] = {}  # Content-Type defaults to application/json


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


def status_outcome(response: httpx.Response, now: float) -> Outcome:
    """What a non-2xx answer means for the events it was about; DELIVERED for a 2xx (pure)."""
    status = response.status_code
    if 200 <= status < 300:
        return DELIVERED
    text = response.content[:BODY_IN_REASON].decode("utf-8", "replace")
    reason = short_reason(f"HTTP {status}: {text}" if text else f"HTTP {status}")
    if status in RETRYABLE_STATUSES:
        return Retry(reason, retry_after(response.headers.get("retry-after"), now))
    return Rejected(reason)


def cut(data: bytes | str, limit: int = EXCHANGE_BODY_LIMIT) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit} more characters)"


class HttpSender:
    """Base of every HTTP destination's sender (see the module docstring)."""

    def __init__(self, settings: DestinationBase, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        connect = float(getattr(settings, "connect_timeout_seconds", DEFAULT_CONNECT_TIMEOUT))
        read = float(getattr(settings, "read_timeout_seconds", DEFAULT_READ_TIMEOUT))
        timeout = httpx.Timeout(read, connect=connect, pool=connect)
        # One client per sender: its pool keeps connections to the vendor open between batches.
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        self._exchanges: list[Exchange] = []
        self._masks = mask_values(settings.secrets())

    # --- for subclasses -------------------------------------------------------------------------

    def build(self, events: list[OutgoingEvent]) -> tuple[list[HttpRequest], dict[int, Outcome]]:
        """Subclasses: the requests for the events, and outcomes decided without sending, by position
        (Skipped for an event the vendor has no mapping for, Rejected for one that breaks a vendor
        limit). Every position appears in exactly one request's indexes or in the dict."""
        raise NotImplementedError

    def read(self, request: HttpRequest, response: httpx.Response, now: float) -> list[Outcome]:
        """One outcome per index of `request`. Default: 2xx delivered; 408/429/5xx Retry (honouring
        Retry-After); other 4xx Rejected with the status and the start of the body. Override to read
        a vendor's per-event errors."""
        return [status_outcome(response, now)] * len(request.indexes)

    def mask(self, text: str) -> str:
        """The settings' secrets (and their URL-encoded forms) replaced by `***`."""
        return mask(text, self._masks)

    # --- provided ----------------------------------------------------------------------------------

    def send(self, events: list[OutgoingEvent]) -> list[Outcome]:
        if not events:
            return []
        try:
            requests, decided = self.build(events)
        except Exception as exc:  # a bug in a vendor's mapping must not lose the batch: retry it
            reason = self._masked_reason(f"cannot build the request: {type(exc).__name__}: {exc}")
            return [Retry(reason)] * len(events)
        outcomes: list[Outcome | None] = [None] * len(events)
        for index, outcome in decided.items():
            if 0 <= index < len(events):
                outcomes[index] = self._masked(outcome)
        for request in requests:
            answers = self._exchange(request)
            if len(answers) != len(request.indexes):
                raise ValueError(f"{len(answers)} outcomes for a request of {len(request.indexes)} events")
            # An answer is mostly one shared outcome for the whole request: mask it once.
            masked: dict[int, Outcome] = {}
            for index, outcome in zip(request.indexes, answers, strict=True):
                if 0 <= index < len(events):
                    done = masked.get(id(outcome))
                    if done is None:
                        done = masked[id(outcome)] = self._masked(outcome)
                    outcomes[index] = done
        # A position build() forgot is a bug in the vendor module: retry rather than claim delivery.
        return [o if o is not None else Retry("no request was built for this event") for o in outcomes]

    def take_exchanges(self) -> list[Exchange]:
        taken, self._exchanges = self._exchanges, []
        return taken

    def close(self) -> None:
        self._client.close()

    # --- internals ---------------------------------------------------------------------------------

    def _headers(self, request: HttpRequest) -> dict[str, str]:
        headers = dict(request.headers)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        return headers

    def _record(
        self,
        request: HttpRequest,
        *,
        status: int | None = None,
        response_body: bytes | None = None,
        error: str | None = None,
        dry_run: bool = False,
    ) -> None:
        self._exchanges.append(
            Exchange(
                at=int(time.time() * 1000),
                method=request.method,
                url=self.mask(request.url),
                request_body=self.mask(cut(request.body)),
                events=len(request.indexes),
                status=status,
                response_body=None if response_body is None else self.mask(cut(response_body)),
                error=None if error is None else self.mask(error),
                dry_run=dry_run,
            )
        )

    def _exchange(self, request: HttpRequest) -> list[Outcome]:
        count = len(request.indexes)
        if self.settings.dry_run:
            self._record(request, dry_run=True)
            return [Skipped(DRY_RUN_REASON)] * count
        try:
            response = self._client.request(
                request.method, request.url, content=request.body, headers=self._headers(request)
            )
        except httpx.TimeoutException as exc:
            reason = self._masked_reason(f"timeout: {type(exc).__name__}")
            self._record(request, error=reason)
            return [Retry(reason)] * count
        except httpx.HTTPError as exc:
            reason = self._masked_reason(f"connection error: {type(exc).__name__}: {exc}")
            self._record(request, error=reason)
            return [Retry(reason)] * count
        self._record(request, status=response.status_code, response_body=response.content)
        try:
            outcomes = self.read(request, response, time.time())
        except Exception as exc:  # a vendor answer the module cannot read: retry, do not crash the job
            reason = self._masked_reason(f"cannot read the answer (HTTP {response.status_code}): {exc}")
            return [Retry(reason)] * count
        if len(outcomes) != count:
            return [Retry("the answer did not account for every event of the request")] * count
        return outcomes

    def _masked_reason(self, text: str) -> str:
        # Mask before cutting, so a cut cannot leave half a secret that no longer matches.
        return short_reason(self.mask(text))

    def _masked(self, outcome: Outcome) -> Outcome:
        return masked_outcome(outcome, self._masks)
