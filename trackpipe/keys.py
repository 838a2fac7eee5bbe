"""The one place that knows Redis key names. Every key trackpipe or RQ writes starts with the prefix.

Layout (``P`` is ``key_prefix`` from the config, default ``trackpipe``):

    P:rq:...                         everything RQ keeps (queues, jobs, registries, workers)
    P:rq:queue:ingest                the ingest queue (RQ list of job ids)
    P:unauth:ring:<site_id>          last N requests with a missing/unknown key (capped list)
    P:unauth:count                   hash "<site_id>|<reason>" -> requests refused
    P:rq:queue:deliver:<dest>        one delivery queue per destination
    P:rq:queue:retry:<dest>          its retry queue (jobs wait in RQ's scheduled registry first)
    P:dlq:<dest>                     dead letters of a destination (capped list, newest first)
    P:dlqdropped                     hash dest -> dead letters dropped because the DLQ was full (not
                                     under P:dlq:, where `dropped` is a valid destination id)
    P:dlqreplay:<job>                a console replay's progress (JSON, expires a week after it ends)
    P:dlqreplaying:<dest>            lock: the id of the replay running on that DLQ (expires unless
                                     refreshed)
    P:errors:dest:<dest>             hash error kind -> count
    P:errors:dest:<dest>:last        hash error kind -> last seen (ms)
    P:dd:<slot>:<bucket>             dedup: hash of 8-byte id digests seen in window slot <slot>
    P:ddslot:<slot>                  dedup: marker that slot <slot> holds any id
    P:ddw:<window>:<slot>:<bucket>   dedup of sources whose window (seconds) differs from
                                     dedup.window_seconds: their slots are <window> long, so they
                                     live apart from the default's
    P:ddwslot:<window>:<slot>        their slot markers
    P:open:<queue>                   id of the job on <queue> that new payloads join while it
                                     waits (see trackpipe.openjob)
    P:parts:<job_id>                 the payloads (edge writes, fan-outs) a job holds, in order
    P:rq:job:<job_id>                RQ's job hash; trackpipe adds fields: events held, dedup
                                     verdicts and the done mark (see workers.ingest)
    P:inspect:<source>               recent processed events of a source (capped list)
    P:inspecttest:<source>           recent events of a source that carry a test_code (capped list)
    P:inspsample:<source>:<minute>   hash "n:<event name>" / "t" (test events) -> events the inspector
                                     kept that minute (expires; see workers.inspector)
    P:inspectfail:<source>           recent dead-lettered deliveries of a source's events (capped
                                     list: event id, destination, reason), merged into the
                                     inspector's records as FAILED
    P:destreq:<dest>                 the last requests sent to a destination, secrets masked (capped
                                     list of JSON exchanges, newest first: the destination inspector)
    P:stats:source:<source>          hash status -> events
    P:stats:dest:<dest>:<minute>     hash outcome -> events, per minute (expires)
    P:quality:status:<source>:<hour> hash status -> events, per hour (expires after ~35 days)
    P:quality:msg:<source>:<hour>    hash "warning|<kind>" / "error|<kind>" -> events, per hour
                                     (bounded, expires after 2 days)
    P:stats:desthour:<dest>:<hour>   the same per hour, kept a month (the destination page's history)
    P:claims:<worker>                jobs a worker has taken and not yet finished (list; see
                                     workers.claims)
    P:claimants                      set of worker names that may hold claims
    P:lease:<worker>                 a worker is alive while this exists (refreshed by a thread)
    P:wake:<queue>                   doorbell: a token pushed when a job lands on <queue>
    P:sweeper                        lock of the pass that recovers dead workers' claims
    P:alerts:rules                   hash rule id -> alert rule (JSON, trackpipe.alerts.AlertRule)
    P:alerts:state                   hash rule id -> its state: ok/firing, since, last value, samples
    P:alerts:firings                 recent firings and resolutions (capped list, newest first)
    P:alerts:lock                    lock: one console process evaluates the rules at a time
"""

from __future__ import annotations

import os
import sys

import msgspec

DEFAULT_PREFIX = "trackpipe"
RQ_PREFIX_ENV = "RQ_KEY_PREFIX"
INGEST_QUEUE = "ingest"
DELIVER_QUEUE_PREFIX = "deliver:"
RETRY_QUEUE_PREFIX = "retry:"
# Requests the destination inspector keeps per destination (P:destreq:<dest>).
DESTINATION_REQUESTS_KEPT = 50
# How long the per-minute and per-hour delivery counters live (P:stats:dest:, P:stats:desthour:). The
# hourly ones outlive the console's month view (30 days) by a few days, as the vendor keeps a month.
DESTINATION_MINUTE_STATS_TTL_SECONDS = 2 * 86_400
DESTINATION_HOUR_STATS_TTL_SECONDS = 35 * 86_400
# Refused requests naming a site no source has share one sample ring and count under this name, so
# random `tc_s` values cannot create keys (the edge writes it; status and the console read it).
UNKNOWN_SITE_BUCKET = "_unknown_site"


def deliver_queue(destination_id: str) -> str:
    return f"{DELIVER_QUEUE_PREFIX}{destination_id}"


def retry_queue(destination_id: str) -> str:
    return f"{RETRY_QUEUE_PREFIX}{destination_id}"


def rq_prefix_for(prefix: str) -> str:
    return f"{prefix}:rq"


class KeyLayout(msgspec.Struct, frozen=True):
    prefix: str = DEFAULT_PREFIX

    @property
    def rq_prefix(self) -> str:
        return rq_prefix_for(self.prefix)

    def queue(self, name: str) -> str:
        """The Redis list RQ uses for queue `name`."""
        return f"{self.rq_prefix}:queue:{name}"

    def unauthorized_ring(self, site_id: str) -> str:
        return f"{self.prefix}:unauth:ring:{site_id}"

    @property
    def unauthorized_count(self) -> str:
        return f"{self.prefix}:unauth:count"

    def dedup_bucket(self, slot: int, bucket: int) -> str:
        return f"{self.dedup_bucket_prefix}{slot}:{bucket}"

    @property
    def dedup_bucket_prefix(self) -> str:
        """The dedup script builds `<this><slot>:<bucket>` itself (see workers.dedup)."""
        return f"{self.prefix}:dd:"

    @property
    def dedup_slot_marker_prefix(self) -> str:
        return f"{self.prefix}:ddslot:"

    @property
    def dedup_pattern(self) -> str:
        return f"{self.prefix}:dd:*"

    # Sources with a window of their own (SourceConfig.dedup_window_seconds): slot numbers only mean
    # something for one window length, so each length has its own namespace.
    def dedup_window_bucket(self, window_seconds: int, slot: int, bucket: int) -> str:
        return f"{self.dedup_window_bucket_prefix}{window_seconds}:{slot}:{bucket}"

    @property
    def dedup_window_bucket_prefix(self) -> str:
        """The dedup script builds `<this><window>:<slot>:<bucket>` itself (see workers.dedup)."""
        return f"{self.prefix}:ddw:"

    @property
    def dedup_window_slot_marker_prefix(self) -> str:
        """The dedup script builds `<this><window>:<slot>` itself."""
        return f"{self.prefix}:ddwslot:"

    @property
    def dedup_window_pattern(self) -> str:
        return f"{self.prefix}:ddw:*"

    def open_job(self, queue_name: str) -> str:
        return f"{self.prefix}:open:{queue_name}"

    @property
    def job_parts_prefix(self) -> str:
        """The open-job script builds `<this><job_id>` itself (see trackpipe.openjob)."""
        return f"{self.prefix}:parts:"

    def job_parts(self, job_id: str) -> str:
        return f"{self.job_parts_prefix}{job_id}"

    def inspector(self, source_id: str) -> str:
        return f"{self.prefix}:inspect:{source_id}"

    def inspector_tests(self, source_id: str) -> str:
        return f"{self.prefix}:inspecttest:{source_id}"

    def inspector_sample(self, source_id: str, minute: int) -> str:
        return f"{self.prefix}:inspsample:{source_id}:{minute}"

    def source_hourly(self, source_id: str, hour: int) -> str:
        return f"{self.prefix}:quality:status:{source_id}:{hour}"

    def source_messages(self, source_id: str, hour: int) -> str:
        return f"{self.prefix}:quality:msg:{source_id}:{hour}"

    def inspector_failures(self, source_id: str) -> str:
        return f"{self.prefix}:inspectfail:{source_id}"

    def destination_requests(self, destination_id: str) -> str:
        return f"{self.prefix}:destreq:{destination_id}"

    def source_stats(self, source_id: str) -> str:
        return f"{self.prefix}:stats:source:{source_id}"

    def destination_stats(self, destination_id: str, minute: int) -> str:
        return f"{self.prefix}:stats:dest:{destination_id}:{minute}"

    def destination_hour_stats(self, destination_id: str, hour: int) -> str:
        """`hour` counts hours since the epoch (ms // 3,600,000)."""
        return f"{self.prefix}:stats:desthour:{destination_id}:{hour}"

    def dlq(self, destination_id: str) -> str:
        return f"{self.prefix}:dlq:{destination_id}"

    def dlq_replay(self, job_id: str) -> str:
        return f"{self.prefix}:dlqreplay:{job_id}"

    def dlq_replay_lock(self, destination_id: str) -> str:
        return f"{self.prefix}:dlqreplaying:{destination_id}"

    @property
    def dlq_dropped(self) -> str:
        # Once `P:dlq:dropped`, which is also the DLQ of a destination named `dropped`;
        # workers.deadletter folds counts left there into this hash.
        return f"{self.prefix}:dlqdropped"

    def destination_errors(self, destination_id: str) -> str:
        return f"{self.prefix}:errors:dest:{destination_id}"

    def destination_errors_last(self, destination_id: str) -> str:
        return f"{self.prefix}:errors:dest:{destination_id}:last"

    # Worker claims (workers.claims): what a worker took, and whether it is alive.
    @property
    def claims_prefix(self) -> str:
        return f"{self.prefix}:claims:"

    def claims(self, worker_name: str) -> str:
        return f"{self.claims_prefix}{worker_name}"

    @property
    def claimants(self) -> str:
        return f"{self.prefix}:claimants"

    @property
    def lease_prefix(self) -> str:
        return f"{self.prefix}:lease:"

    def lease(self, worker_name: str) -> str:
        return f"{self.lease_prefix}{worker_name}"

    @property
    def wake_prefix(self) -> str:
        return f"{self.prefix}:wake:"

    def wake(self, queue_name: str) -> str:
        return f"{self.wake_prefix}{queue_name}"

    @property
    def sweeper_lock(self) -> str:
        return f"{self.prefix}:sweeper"

    # Alerts (trackpipe.alerts, console.alerting).
    @property
    def alert_rules(self) -> str:
        return f"{self.prefix}:alerts:rules"

    @property
    def alert_state(self) -> str:
        return f"{self.prefix}:alerts:state"

    @property
    def alert_firings(self) -> str:
        return f"{self.prefix}:alerts:firings"

    @property
    def alert_lock(self) -> str:
        return f"{self.prefix}:alerts:lock"


class PrefixMismatch(RuntimeError):
    pass


def bind_rq_prefix(prefix: str) -> None:
    """Make RQ keep its keys under `prefix`. RQ reads its prefix once, when first imported."""
    wanted = rq_prefix_for(prefix)
    loaded = sys.modules.get("rq.defaults")
    if loaded is not None:
        if loaded.RQ_KEY_PREFIX != wanted:
            raise PrefixMismatch(
                f"key_prefix {prefix!r}: RQ was already loaded with prefix {loaded.RQ_KEY_PREFIX!r}; "
                f"set {RQ_PREFIX_ENV}={wanted} or start a fresh process"
            )
        return
    os.environ[RQ_PREFIX_ENV] = wanted


# The counters a destination's per-minute and per-hour hashes hold. `filtered` is every event not sent
# because of a filter: `filtered_consent` (its consent category not given) + `filtered_conditions` (its
# sources, events or filters) + `skipped` (the destination itself could not map it, or a dry run).
# Counts written before the split existed are in `filtered` only.
HISTORY_FIELDS = (
    "queued",
    "delivered",
    "retried",
    "dead_lettered",
    "filtered",
    "filtered_consent",
    "filtered_conditions",
    "skipped",
)
