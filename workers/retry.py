"""When a failed delivery is tried again (pure)."""

from __future__ import annotations

from trackpipe.types import RetryConfig


def next_attempt_at(attempts: int, retry: RetryConfig, now: float, not_before: float | None = None) -> float | None:
    """Unix time of the next try after `attempts` failed tries, or None once they are used up.

    The n-th retry waits `backoff_seconds[n-1]` (the last delay repeats); a `Retry-After` asking for
    longer wins.
    """
    if attempts >= retry.max_attempts:
        return None
    delays = retry.backoff_seconds
    at = now + delays[min(max(attempts, 1), len(delays)) - 1]
    if not_before is not None and not_before > at:
        at = not_before
    return at
