"""Alert rules in Redis, and the evaluator that checks them from the console process.

Rules (`P:alerts:rules`), their states (`P:alerts:state`) and the recent firings
(`P:alerts:firings`) live in Redis (the home shard's, with several shards; rules are measured over
every shard), so that every console process shows the same ones. The evaluator
is a thread: every `interval` seconds it takes or renews a short lock (`P:alerts:lock`; with several
console processes one evaluates at a time, and another takes over within the lock's lifetime when it
stops), measures each rule, and posts a Slack-compatible body to the rule's webhook when the rule
starts firing or resolves — not on every pass. A post that fails is recorded with the firing and in
the rule's state; nothing a rule or a webhook does ends the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from datetime import UTC, datetime

import httpx
import msgspec
from redis import Redis
from redis.exceptions import RedisError

from trackpipe.alerts import (
    FIRINGS_KEPT,
    INGEST_TARGET,
    AlertRule,
    Firing,
    Reading,
    RuleState,
    Transition,
    evaluate,
    mask_url,
    slack_body,
)
from trackpipe.config import Config
from trackpipe.keys import INGEST_QUEUE, KeyLayout, deliver_queue, retry_queue

log = logging.getLogger("trackpipe.console.alerts")

DEFAULT_INTERVAL = 15.0
INTERVAL_ENV = "TRACKPIPE_ALERTS_INTERVAL_SECONDS"  # shorter passes for tests and demos
POST_TIMEOUT = 5.0
MAX_RULES = 200

_rule_decoder = msgspec.json.Decoder(AlertRule)
_state_decoder = msgspec.json.Decoder(RuleState)
_firing_decoder = msgspec.json.Decoder(Firing)
_json = msgspec.json.Encoder()

# Take the lock, or renew it when this evaluator holds it.
_TAKE_LOCK = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A rule's new state (and a firing, if any), unless the rule was deleted meanwhile.
_SAVE_STATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
end
return 1
"""


# -- storage (the page and the evaluator) ---------------------------------------------------


def new_rule_id() -> str:
    return secrets.token_hex(6)


def load_rules(redis: Redis, layout: KeyLayout) -> list[AlertRule]:
    """Every stored rule that decodes (a damaged one is skipped and logged), by name."""
    rules = []
    for rule_id, raw in redis.hgetall(layout.alert_rules).items():
        try:
            rules.append(_rule_decoder.decode(raw))
        except msgspec.DecodeError as exc:
            log.error("alert rule %r cannot be read: %s", rule_id, exc)
    return sorted(rules, key=lambda r: (r.name.lower(), r.id))


def load_rule(redis: Redis, layout: KeyLayout, rule_id: str) -> AlertRule | None:
    raw = redis.hget(layout.alert_rules, rule_id)
    if raw is None:
        return None
    try:
        return _rule_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def save_rule(redis: Redis, layout: KeyLayout, rule: AlertRule) -> bool:
    """Store a checked rule (new or edited); False when there are MAX_RULES already."""
    if not redis.hexists(layout.alert_rules, rule.id) and redis.hlen(layout.alert_rules) >= MAX_RULES:
        return False
    redis.hset(layout.alert_rules, rule.id, _json.encode(rule))
    return True


def delete_rule(redis: Redis, layout: KeyLayout, rule_id: str) -> bool:
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(layout.alert_rules, rule_id)
    pipe.hdel(layout.alert_state, rule_id)
    return bool(pipe.execute()[0])


def load_states(redis: Redis, layout: KeyLayout) -> dict[str, RuleState]:
    states = {}
    for rule_id, raw in redis.hgetall(layout.alert_state).items():
        try:
            states[rule_id.decode()] = _state_decoder.decode(raw)
        except msgspec.DecodeError:
            continue  # rewritten on the next pass
    return states


def load_firings(redis: Redis, layout: KeyLayout, limit: int = FIRINGS_KEPT) -> list[Firing]:
    found = []
    for raw in redis.lrange(layout.alert_firings, 0, limit - 1):
        try:
            found.append(_firing_decoder.decode(raw))
        except msgspec.DecodeError:
            continue
    return found


# -- measuring -------------------------------------------------------------------------------


def _queue_lag(redis: Redis, name: str, now: float) -> float | None:
    """How long the oldest waiting job of queue `name` has waited (as trackpipe.queries reads it)."""
    from trackpipe.jobs import make_queue  # imports RQ: only once the config bound its prefix

    queue = make_queue(name, redis)
    oldest = redis.lindex(queue.key, 0)
    if oldest is None:
        return None
    enqueued = redis.hget(f"{queue.job_class.redis_job_namespace_prefix}{oldest.decode()}", "enqueued_at")
    if not enqueued:
        return None
    stamp = datetime.fromisoformat(enqueued.decode().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return max(0.0, now - stamp.timestamp())


def read(redis: Redis, layout: KeyLayout, rule: AlertRule, now: float) -> Reading:
    """What `rule` needs, measured now."""
    if rule.kind == "failure_rate":
        minute = int(now // 60)
        pipe = redis.pipeline(transaction=False)
        for m in range(minute - rule.window_minutes + 1, minute + 1):
            pipe.hgetall(layout.destination_stats(rule.target, m))
        outcomes: dict[str, int] = {}
        for counts in pipe.execute():
            for field, value in counts.items():
                outcomes[field.decode()] = outcomes.get(field.decode(), 0) + int(value)
        return Reading(at=now, outcomes=outcomes)
    if rule.kind in ("dlq_size", "dlq_growth"):
        return Reading(at=now, dlq=int(redis.llen(layout.dlq(rule.target))))
    if rule.kind == "lag":
        names = (
            [INGEST_QUEUE] if rule.target == INGEST_TARGET else [deliver_queue(rule.target), retry_queue(rule.target)]
        )
        lags = [lag for name in names if (lag := _queue_lag(redis, name, now)) is not None]
        return Reading(at=now, lag_seconds=max(lags) if lags else None)
    statuses = {k.decode(): int(v) for k, v in redis.hgetall(layout.source_stats(rule.target)).items()}
    return Reading(at=now, statuses=statuses)


def combine_readings(readings: list[Reading]) -> Reading:
    """One rule's readings on several shards as one (pure): outcomes, DLQ sizes and status counters
    summed, the lag the largest."""
    first = readings[0]
    if len(readings) == 1:
        return first

    def summed(many: list[dict[str, int] | None]) -> dict[str, int] | None:
        present = [m for m in many if m is not None]
        if not present:
            return None
        total: dict[str, int] = {}
        for counts in present:
            for name, value in counts.items():
                total[name] = total.get(name, 0) + value
        return total

    dlqs = [r.dlq for r in readings if r.dlq is not None]
    lags = [r.lag_seconds for r in readings if r.lag_seconds is not None]
    return Reading(
        at=first.at,
        outcomes=summed([r.outcomes for r in readings]),
        dlq=sum(dlqs) if dlqs else None,
        lag_seconds=max(lags) if lags else None,
        statuses=summed([r.statuses for r in readings]),
    )


def read_union(shards: list[Redis], layout: KeyLayout, rule: AlertRule, now: float) -> Reading:
    """What `rule` needs, measured now over every shard (each shard has its own counters and queues)."""
    return combine_readings([read(redis, layout, rule, now) for redis in shards])


# -- posting ---------------------------------------------------------------------------------


def post_webhook(client: httpx.Client, rule: AlertRule, body: dict[str, object]) -> str | None:
    """None when the webhook took the body (2xx); otherwise why not, without the URL (it may hold
    a token)."""
    try:
        answer = client.post(rule.webhook_url, json=body)
    except httpx.TimeoutException:
        return f"timeout after {POST_TIMEOUT:g} s ({mask_url(rule.webhook_url)})"
    except (httpx.HTTPError, ValueError) as exc:
        return f"connection error: {type(exc).__name__} ({mask_url(rule.webhook_url)})"
    if not 200 <= answer.status_code < 300:
        return f"HTTP {answer.status_code} from {mask_url(rule.webhook_url)}"
    return None


# -- the evaluator ---------------------------------------------------------------------------


class Evaluator:
    """Checks every rule each `interval` seconds on a thread of its own (`start`, `stop`), or once
    (`run_once`, for tests)."""

    def __init__(
        self, config: Config, redis: Redis, *, interval: float | None = None, shards: list[Redis] | None = None
    ) -> None:
        self.config = config
        self.redis = redis  # the home shard: rules, states, firings and the lock
        # Every shard's client (the home one first): rules are measured over their union.
        self.shards = shards or [redis]
        self.layout = KeyLayout(config.key_prefix)
        self.interval = interval if interval is not None else interval_from_env()
        self.lock_ms = int(max(self.interval * 3, 10.0) * 1000)
        self._token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=POST_TIMEOUT, follow_redirects=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="trackpipe-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=POST_TIMEOUT + 5)
        with contextlib.suppress(RedisError, OSError):  # else the lock expires by itself
            self.redis.eval(_RELEASE_LOCK, 1, self.layout.alert_lock, self._token)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except (RedisError, OSError) as exc:
                log.warning("alerts: storage unavailable (%s); next try in %g s", type(exc).__name__, self.interval)
            except Exception:  # a bug must not end alerting for good
                log.exception("alerts: evaluation pass failed")
            self._stop.wait(self.interval)

    def _hold_lock(self) -> bool:
        return bool(self.redis.eval(_TAKE_LOCK, 1, self.layout.alert_lock, self._token, self.lock_ms))

    def run_once(self, now: float | None = None) -> int | None:
        """One pass: the number of rules evaluated, or None when another process holds the lock."""
        if not self._hold_lock():
            return None
        rules = load_rules(self.redis, self.layout)
        states = load_states(self.redis, self.layout)
        done = 0
        for rule in rules:
            if self._stop.is_set() or (done and not self._hold_lock()):
                break
            try:
                self._check(rule, states.get(rule.id), time.time() if now is None else now)
            except (RedisError, OSError):
                raise
            except Exception:
                log.exception("alerts: rule %s (%s) could not be evaluated", rule.id, rule.name)
            done += 1
        return done

    def _check(self, rule: AlertRule, state: RuleState | None, now: float) -> None:
        state, transition = evaluate(rule, state, read_union(self.shards, self.layout, rule, now))
        firing = b""
        if transition is not None:
            record = self._announce(rule, state, transition, now)
            state.last_error = record.error
            firing = _json.encode(record)
        self.redis.eval(
            _SAVE_STATE,
            3,
            self.layout.alert_rules,
            self.layout.alert_state,
            self.layout.alert_firings,
            rule.id,
            _json.encode(state),
            firing,
            FIRINGS_KEPT,
        )

    def _announce(self, rule: AlertRule, state: RuleState, transition: Transition, now: float) -> Firing:
        record = Firing(
            rule_id=rule.id,
            rule_name=rule.name,
            event=transition.event,
            at=now,
            value=state.value or 0.0,
            message=transition.message,
        )
        record.error = post_webhook(self._client, rule, slack_body(rule, record))
        record.posted = record.error is None
        if record.error:
            log.warning(
                "alerts: rule %s (%s) %s, webhook post failed: %s", rule.id, rule.name, record.event, record.error
            )
        else:
            log.info("alerts: rule %s (%s) %s: %s", rule.id, rule.name, record.event, record.message)
        return record


def interval_from_env() -> float:
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        log.warning("%s=%r is not a number; using %g s", INTERVAL_ENV, text, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL
    return min(max(value, 0.2), 3600.0)
