"""Alert rules and their evaluation, without I/O: given what was measured, the new state of a rule,
whether it started firing or resolved, and the Slack-compatible message to post about it.

The console's evaluator (console/alerting.py) reads the measurements from Redis, calls `evaluate`,
stores the state and posts the message. Kept pure so that every transition is tested without Redis.

Kinds (the threshold's unit in brackets):
- `failure_rate` [%], of a destination: (retried + dead-lettered) / (delivered + retried +
  dead-lettered) over the last `window_minutes` minutes of its per-minute counters;
- `dlq_size` [dead letters], of a destination: the length of its DLQ now;
- `dlq_growth` [dead letters], of a destination: its DLQ's length now minus its length
  `window_minutes` ago (or since the evaluator first saw it, while it has watched for less);
- `lag` [seconds], of the ingest queue (target `INGEST_TARGET`) or of a destination (the older
  waiting job of its delivery and retry queues);
- `invalid_share` [%], of a source: (INVALID_ACCEPTED + INVALID_REJECTED) / every event processed
  over the last `window_minutes`, from samples of the source's cumulative status counters.

A rule fires when its value goes above the threshold and resolves when it is at or below it again.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

Kind = Literal["failure_rate", "dlq_size", "dlq_growth", "lag", "invalid_share"]
KINDS: tuple[str, ...] = ("failure_rate", "dlq_size", "dlq_growth", "lag", "invalid_share")
DESTINATION_KINDS = frozenset({"failure_rate", "dlq_size", "dlq_growth"})
SOURCE_KINDS = frozenset({"invalid_share"})
# The target of a lag rule on the ingest queue; not a valid destination id (ids have no "@").
INGEST_TARGET = "@ingest"
KIND_LABELS = {
    "failure_rate": "failure rate over",
    "dlq_size": "DLQ size over",
    "dlq_growth": "DLQ growing by more than",
    "lag": "lag over",
    "invalid_share": "INVALID share over",
}
UNITS = {
    "failure_rate": "%",
    "dlq_size": "dead letters",
    "dlq_growth": "dead letters",
    "lag": "s",
    "invalid_share": "%",
}
# Kinds whose value is taken over a window of minutes (the others are instant readings).
WINDOWED = frozenset({"failure_rate", "dlq_growth", "invalid_share"})
MAX_WINDOW_MINUTES = 24 * 60
MAX_WEBHOOK_URL = 2048
FIRINGS_KEPT = 100  # recent firings and resolutions, all rules together
INVALID_STATUSES = ("INVALID_ACCEPTED", "INVALID_REJECTED")

RuleId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]{1,32}$")]


class AlertError(ValueError):
    """A rule that cannot be saved; the message names the field."""


class AlertRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: RuleId
    name: str
    kind: Kind
    target: str  # a destination id, a source id, or INGEST_TARGET (lag)
    threshold: float
    webhook_url: str  # may carry a token: never shown whole (see `mask_url`)
    window_minutes: int = 5  # for the windowed kinds


class RuleState(msgspec.Struct, kw_only=True):
    status: Literal["ok", "firing"] = "ok"
    since: float | None = None  # when it entered `status` (s)
    value: float | None = None  # the last value measured
    checked_at: float | None = None
    # What `history` was measured for: a rule edited to watch something else starts afresh.
    basis: str = ""
    # (time, reading, total) samples kept for dlq_growth and invalid_share, oldest first.
    history: list[tuple[float, float, float]] = msgspec.field(default_factory=list)
    last_error: str | None = None  # the last failed webhook post, masked


class Reading(msgspec.Struct, kw_only=True):
    """What the evaluator measured for one rule at `at` (only the field the kind needs is set)."""

    at: float
    outcomes: dict[str, int] | None = None  # failure_rate: summed over the window
    dlq: int | None = None  # dlq_size, dlq_growth
    lag_seconds: float | None = None  # lag: None when nothing waits
    statuses: dict[str, int] | None = None  # invalid_share: the cumulative counters


class Firing(msgspec.Struct, kw_only=True):
    """A rule started firing or resolved; kept in a bounded list for the page."""

    rule_id: str
    rule_name: str
    event: Literal["firing", "resolved"]
    at: float
    value: float
    message: str
    posted: bool = False
    error: str | None = None  # why the webhook post failed, masked


class Transition(msgspec.Struct, kw_only=True):
    event: Literal["firing", "resolved"]
    message: str


# -- rules ---------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """Scheme and host only: a webhook's path or query often is its secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    if not parts.scheme or not host:
        return "(invalid URL)"
    return f"{parts.scheme}://{host}{port}/…"


def check_webhook_url(url: str) -> str:
    url = url.strip()
    if not url:
        raise AlertError("webhook_url: required")
    if len(url) > MAX_WEBHOOK_URL:
        raise AlertError(f"webhook_url: longer than {MAX_WEBHOOK_URL} characters")
    if re.search(r"\s", url):
        raise AlertError("webhook_url: must not contain spaces")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise AlertError("webhook_url: not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertError("webhook_url: must be an http:// or https:// URL with a host")
    return url


def check_rule(rule: AlertRule, destinations: set[str], sources: set[str]) -> AlertRule:
    """The rule, checked against the config; AlertError naming the field otherwise."""
    name = rule.name.strip()
    if not name or len(name) > 100:
        raise AlertError("name: required, at most 100 characters")
    if rule.kind in DESTINATION_KINDS and rule.target not in destinations:
        raise AlertError(f"target: {rule.target!r} is not a destination of the config")
    if rule.kind in SOURCE_KINDS and rule.target not in sources:
        raise AlertError(f"target: {rule.target!r} is not a source of the config")
    if rule.kind == "lag" and rule.target != INGEST_TARGET and rule.target not in destinations:
        raise AlertError(f"target: {rule.target!r} is neither the ingest queue nor a destination of the config")
    if not (rule.threshold >= 0 and rule.threshold < 1e12):  # also refuses NaN
        raise AlertError("threshold: must be a number from 0")
    if rule.kind in ("failure_rate", "invalid_share") and rule.threshold > 100:
        raise AlertError("threshold: a percentage, from 0 to 100")
    if not 1 <= rule.window_minutes <= MAX_WINDOW_MINUTES:
        raise AlertError(f"window_minutes: must be from 1 to {MAX_WINDOW_MINUTES}")
    return msgspec.structs.replace(rule, name=name, webhook_url=check_webhook_url(rule.webhook_url))


def target_label(rule: AlertRule) -> str:
    if rule.target == INGEST_TARGET:
        return "the ingest queue"
    if rule.kind in SOURCE_KINDS:
        return f"source {rule.target}"
    return f"destination {rule.target}"


def describe(rule: AlertRule) -> str:
    """`DLQ size over 0 dead letters, destination hook`."""
    window = f" in {rule.window_minutes} min" if rule.kind in WINDOWED else ""
    return f"{KIND_LABELS[rule.kind]} {_number(rule.threshold)} {UNITS[rule.kind]}{window}, {target_label(rule)}"


def value_text(rule: AlertRule, value: float | None) -> str:
    """`3 dead letters`, `12.5 %`; `-` before the first evaluation."""
    return "-" if value is None else f"{_number(value)} {UNITS[rule.kind]}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


# -- evaluation ----------------------------------------------------------------------------


def _basis(rule: AlertRule) -> str:
    return f"{rule.kind}|{rule.target}|{rule.window_minutes}"


def _windowed(
    history: list[tuple[float, float, float]], sample: tuple[float, float, float], window_seconds: float
) -> tuple[tuple[float, float, float], list[tuple[float, float, float]]]:
    """The baseline to compare `sample` with (the newest sample at least `window_seconds` old, or
    the oldest there is) and the history to keep (that baseline onwards, plus `sample`). A reading
    lower than the last one of a counter means the counter was reset: history starts again."""
    kept = [s for s in history if s[0] < sample[0]]
    if kept and (sample[1] < kept[-1][1] or sample[2] < kept[-1][2]):
        kept = []
    cutoff = sample[0] - window_seconds
    older = [i for i, s in enumerate(kept) if s[0] <= cutoff]
    if older:
        kept = kept[older[-1] :]
    kept.append(sample)
    return kept[0], kept


def measure(
    rule: AlertRule, reading: Reading, history: list[tuple[float, float, float]]
) -> tuple[float, list[tuple[float, float, float]]]:
    """The rule's value for this reading, and the history to keep for the next one."""
    window = rule.window_minutes * 60.0
    if rule.kind == "failure_rate":
        counts = reading.outcomes or {}
        failed = counts.get("retried", 0) + counts.get("dead_lettered", 0)
        attempted = failed + counts.get("delivered", 0)
        return (100.0 * failed / attempted if attempted else 0.0), []
    if rule.kind == "dlq_size":
        return float(reading.dlq or 0), []
    if rule.kind == "lag":
        return float(reading.lag_seconds or 0.0), []
    if rule.kind == "dlq_growth":
        # A DLQ shrinks when it is replayed or purged: that is no reset, but the baseline may not
        # stay higher than what is there now, or later growth would be hidden.
        now = float(reading.dlq or 0)
        kept = [(t, min(v, now), 0.0) for t, v, _ in history]
        baseline, kept = _windowed(kept, (reading.at, now, 0.0), window)
        return max(0.0, now - baseline[1]), kept
    # invalid_share
    counts = reading.statuses or {}
    invalid = float(sum(counts.get(s, 0) for s in INVALID_STATUSES))
    total = float(sum(counts.values()))
    baseline, kept = _windowed(history, (reading.at, invalid, total), window)
    processed = total - baseline[2]
    return (100.0 * (invalid - baseline[1]) / processed if processed > 0 else 0.0), kept


def evaluate(rule: AlertRule, state: RuleState | None, reading: Reading) -> tuple[RuleState, Transition | None]:
    """The rule's new state after `reading`, and the transition to announce (None when its status
    did not change)."""
    state = state or RuleState()
    history = state.history if state.basis == _basis(rule) else []
    value, history = measure(rule, reading, history)
    firing = value > rule.threshold
    new = msgspec.structs.replace(state, value=value, checked_at=reading.at, basis=_basis(rule), history=history)
    if firing == (state.status == "firing"):
        if new.since is None:
            new.since = reading.at
        return new, None
    new.status = "firing" if firing else "ok"
    new.since = reading.at
    event: Literal["firing", "resolved"] = "firing" if firing else "resolved"
    return new, Transition(event=event, message=message(rule, event, value))


def message(rule: AlertRule, event: str, value: float) -> str:
    unit = UNITS[rule.kind]
    of, amount, window = target_label(rule), f"{_number(value)} {unit}", f"{rule.window_minutes} min"
    what = {
        "failure_rate": f"failure rate of {of} is {amount} over {window}",
        "dlq_size": f"DLQ of {of} holds {amount}",
        "dlq_growth": f"DLQ of {of} grew by {amount} in {window}",
        "lag": f"oldest waiting job of {of} has waited {amount}",
        "invalid_share": f"INVALID share of {of} is {amount} over {window}",
    }[rule.kind]
    verdict = "above" if event == "firing" else "back at or below"
    return f"{what}, {verdict} the threshold of {_number(rule.threshold)} {unit}"


def slack_body(rule: AlertRule, firing: Firing, console_url: str | None = None) -> dict[str, object]:
    """A body Slack's incoming webhooks take (`text` is the fallback, `blocks` the layout); other
    chat tools read `text`."""
    mark = ":rotating_light: FIRING" if firing.event == "firing" else ":white_check_mark: RESOLVED"
    text = f"{mark} [trackpipe] {rule.name}: {firing.message}"
    context = f"rule: {describe(rule)}"
    if console_url:
        context += f" · <{console_url.rstrip('/')}/alerts|alerts page>"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{mark}* — *{rule.name}*\n{firing.message}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }
