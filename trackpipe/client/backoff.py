"""When to send a batch again, and which answers are worth another attempt (pure)."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from typing import Literal

import msgspec

Verdict = Literal["ok", "retry", "refused"]

# Answers that may succeed later: the edge's back-pressure (503), rate limits, timeouts, server errors.
RETRY_STATUSES = frozenset({408, 425, 429})


def classify(status: int) -> Verdict:
    """2xx: done; 408/425/429 and 5xx: send again later; any other answer (400 bad body, 401 unknown
    key in strict mode, 413, 415, 404 wrong URL): the same request would be refused again, so it is
    reported and not retried."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRY_STATUSES or status >= 500:
        return "retry"
    return "refused"


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base * 2**attempt)) for the
    `attempt`-th retry (0 for the first). Full jitter spreads many producers that failed together."""
    ceiling = min(cap, base * (2 ** min(attempt, 62)))
    return rand() * ceiling


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from `now` (epoch seconds): delta-seconds or an HTTP date; None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - now, 0.0)


def retry_delay(attempt: int, retry_after: float | None, base: float, cap: float, rand: Callable[[], float]) -> float:
    """The wait before the next attempt: the jittered back-off, never less than what the server asked."""
    delay = backoff_delay(attempt, base, cap, rand)
    return max(delay, retry_after) if retry_after is not None else delay


class Rejection(msgspec.Struct, frozen=True):
    index: int
    error: str


class _BatchAnswer(msgspec.Struct):
    accepted: int | None = None
    rejected: list[Rejection] = []


class Answer(msgspec.Struct, frozen=True):
    """What a 2xx answer to a batch says: how many were accepted and which were rejected, by index."""

    accepted: int
    rejected: list[Rejection]


def read_answer(body: bytes, count: int) -> Answer:
    """The edge answers `{"status":"ok","accepted":N,"rejected":[{"index":i,"error":...}]}`; a server
    that answers anything else with 2xx (the hosted API documents no body) is taken as accepting all."""
    try:
        answer = msgspec.json.decode(body, type=_BatchAnswer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Answer(count, [])
    rejected = [r for r in answer.rejected if 0 <= r.index < count]
    accepted = answer.accepted if answer.accepted is not None else count - len(rejected)
    return Answer(accepted, rejected)
