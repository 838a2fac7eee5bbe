"""`trackpipe soak --shards N`: a sharded pipeline under load and faults; then proves that nothing
answered 200 was lost and that every source's data stayed on its own shard.

Runs on one machine: N embedded valkey servers (the durable settings of `tooling.embedded`), a config
with N `[[shards]]` and 2N sources (one per shard pinned with `shard`, with an id the hash would have
placed elsewhere, and one per shard placed by the hash, ids chosen so that each shard wins one), one
edge, the worker supervisor (`trackpipe worker` without `--shard`: one child per shard), the soak's
webhook receiver and a `file` destination.

The soak's producer posts unique ids to every source in turn at a steady rate (singles and batches
of 10, v1 and v2) and, every fifth request, resends ids its source already had answered 200 (each
shard's dedup must drop them). At moments drawn from the seed: a random shard's worker child is
SIGKILLed a few times (the supervisor starts it again; the lease recovers its claims), and one
shard's server is SIGKILLed and started again on its AOF: meanwhile its sources must get 503, the
other shards' sources 200.

Then, per shard: accepted, delivered per destination, lost, duplicates (explained by a fault of that
shard, as the soak explains them), 503s; and the placement check: the source ids held by job payloads
on each shard (sampled throughout the run), the per-source keys (counters, inspector lists, quality
hours), and the dedup mark of every accepted id are on the source's shard and on no other.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tooling.embedded import start_server
from tooling.harness import file_ids, free_port, wait_http
from tooling.soak import (
    DESTINATIONS,
    DESTINATIONS_CONFIG,
    EXPLAIN_AFTER,
    EXPLAIN_BEFORE,
    FAST_TIMINGS,
    FILE,
    HOOK,
    Answer,
    Arrivals,
    FaultRecord,
    FileTail,
    Producer,
    Sink,
    Window,
    connect,
    delivery_errors,
    drain,
    end_processes,
    locate,
    start_load,
    tally,
    v1_event,
    v2_event,
)

SHARD_NAMES = ("a", "b", "c", "d")
MIN_SHARDS, MAX_SHARDS = 2, len(SHARD_NAMES)
MIN_DURATION = 10  # load before, during and after the server's outage
WORKER_KILLS = 3
SERVER_OUTAGE_SECONDS = 3.0
# After its restart, the edge finds the shard again at its next write (a reconnect, the AOF loaded):
# a 503 this long after the server is back still belongs to the outage.
RECONNECT_GRACE_SECONDS = 5.0
RESEND_EVERY = 5  # every fifth request resends up to 3 ids its source already had answered 200
DEDUP_BUCKETS = 64  # few buckets: the placement check reads every dedup hash of every shard
EXAMPLES = 20  # misplaced items listed


class SoakSource(msgspec.Struct, frozen=True):
    id: str
    site: str
    key: str
    shard: str | None  # explicit; None: the hash places it


def plan_sources(names: list[str]) -> list[SoakSource]:
    """2 sources per shard: one pinned to it by `shard` (an id the hash gives to another shard, so
    the pin is what puts it there), one placed there by the hash (an id found by trying)."""
    from trackpipe.shards import pick

    sources: list[SoakSource] = []
    i = 0
    for name in names:
        while pick(names, f"pinned-{i}") == name:
            i += 1
        sources.append(SoakSource(f"pinned-{i}", "", "", name))
        i += 1
    hashed: dict[str, str] = {}
    i = 0
    while len(hashed) < len(names):
        hashed.setdefault(pick(names, f"hashed-{i}"), f"hashed-{i}")
        i += 1
    sources += [SoakSource(hashed[name], "", "", None) for name in names]
    return [
        SoakSource(s.id, str(100 + n), f"shard-soak-key-{n:02d}-0123456789abcdef", s.shard)
        for n, s in enumerate(sources)
    ]


def sharded_config(
    urls: dict[str, str], sources: list[SoakSource], hook_url: str, out_dir: Path, default_timings: bool
) -> str:
    """The config of a sharded run: the shards, the sources, the soak's two destinations."""
    parts = ["[edge]\nretry_after_seconds = 1\n", f"[dedup]\nbuckets = {DEDUP_BUCKETS}\n"]
    parts.append("" if default_timings else FAST_TIMINGS)
    parts += [f'[[shards]]\nname = "{name}"\nredis_url = "{url}"\n' for name, url in urls.items()]
    for s in sources:
        pin = f'shard = "{s.shard}"\n' if s.shard else ""
        parts.append(f'[[sources]]\nid = "{s.id}"\nsite_id = "{s.site}"\nkeys = ["{s.key}"]\n{pin}')
    parts.append(DESTINATIONS_CONFIG.format(hook_url=hook_url, out_dir=out_dir))
    return "\n".join(parts)


class PlannedFault(msgspec.Struct, frozen=True):
    fraction: float  # of the load
    kind: str  # "worker" (SIGKILL the shard's worker child) or "server" (SIGKILL + restart)
    shard: str


def fault_plan(seed: int, names: list[str], kills: int = WORKER_KILLS) -> list[PlannedFault]:
    """The seeded faults, in time order: `kills` worker kills, one server outage."""
    rng = random.Random(seed)
    plan = [PlannedFault(rng.uniform(0.3, 0.55), "server", rng.choice(names))]
    plan += [PlannedFault(rng.uniform(0.1, 0.85), "worker", rng.choice(names)) for _ in range(kills)]
    return sorted(plan, key=lambda f: f.fraction)


class ShardProducer(Producer):
    """The soak's producer, over several sources: request n goes to source n mod count; every
    RESEND_EVERY-th resends ids that source already had answered 200."""

    def __init__(self, port: int, rate: float, sources: list[SoakSource], seed: int) -> None:
        super().__init__(port, rate)
        self.sources = sources
        self.source_of: dict[str, str] = {}  # event id -> source id
        self.answers_by_source: dict[str, list[Answer]] = {s.id: [] for s in sources}
        self.accepted_by_source: dict[str, list[str]] = {s.id: [] for s in sources}
        self.resends = 0  # requests that resent accepted ids
        self.resent_events = 0
        self._rng = random.Random(seed)

    def _request(self) -> tuple[str, bytes, list[str], str]:  # type: ignore[override]
        n = self._n
        self._n += 1
        source = self.sources[n % len(self.sources)]
        turn = n // len(self.sources)
        make = v1_event if turn % 2 else v2_event
        query = f"tc_s={source.site}&token={source.key}"
        done = self.accepted_by_source[source.id]
        if turn % RESEND_EVERY == RESEND_EVERY - 1 and done:
            ids = self._rng.sample(done[-500:], min(len(done), self._rng.randint(1, 3)))
            self.resends += 1
            self.resent_events += len(ids)
        elif turn % 4 == 3:
            ids = [f"{source.id}-{n}-{i}" for i in range(10)]
        else:
            ids = [f"{source.id}-{n}"]
        self.source_of.update(dict.fromkeys(ids, source.id))
        if len(ids) == 1:
            return "/events", make(ids[0]), ids, query
        return "/events/batch", b'{"batch":[' + b",".join(make(i) for i in ids) + b"]}", ids, query

    async def _one(self, route: str, body: bytes, ids: list[str], query: str = "") -> str:
        # Fresh ids go out in one request only (resends pick ids already accepted).
        fresh = [i for i in ids if i not in self.accepted]
        status = await super()._one(route, body, ids, query)
        source = self.source_of[ids[0]]
        self.answers_by_source[source].append(self.answers[-1])
        if status == "200":
            self.accepted_by_source[source] += fresh
        return status


# -- the pure parts of the report -----------------------------------------------------------------


class Outage(msgspec.Struct):
    """The one server outage, and how the edge answered meanwhile (times: seconds since the load started)."""

    shard: str
    down_at: float  # SIGKILLed
    restart_at: float  # started again (it answers a little later, once it has loaded its AOF)
    up_at: float  # answering again
    answers_503: int  # of its sources, from the kill until RECONNECT_GRACE_SECONDS after it answered
    answers_200_while_down: int  # of its sources, from the kill until the restart (must be 0)
    others_200: int  # of the other shards' sources, while it was down
    others_503: int  # of the other shards' sources, while it was down (must be 0)


class AnswerCounts(msgspec.Struct):
    statuses: dict[str, int]
    answers_503: int
    answers_503_in_outage: int  # while its own server was down (or reconnecting)
    answers_503_while_up: int  # must be 0
    answers_200_while_down: int  # must be 0


OutageTimes = tuple[str, float, float, float]  # (shard, killed, restart began, answering again)


def classify_answers(
    answers_by_source: dict[str, list[Answer]],
    shard_of: dict[str, str],
    outage: OutageTimes | None,
) -> dict[str, AnswerCounts]:
    """Per shard, its sources' answers; a 503 is its outage's when the request was answered after the
    kill and sent before RECONNECT_GRACE_SECONDS after the server answered again, otherwise a 503
    while up. A 200 is answered while down from 0.2 s after the kill (a write just before it may be
    answered just after) until the restart began (it may answer before the restart call returns)."""
    counts = {name: AnswerCounts({}, 0, 0, 0, 0) for name in sorted(set(shard_of.values()))}
    for source, answers in answers_by_source.items():
        shard = shard_of[source]
        c = counts[shard]
        for sent, answered, status in answers:
            c.statuses[status] = c.statuses.get(status, 0) + 1
            mine = outage is not None and outage[0] == shard
            if status == "503":
                c.answers_503 += 1
                if mine and answered >= outage[1] and sent <= outage[3] + RECONNECT_GRACE_SECONDS:
                    c.answers_503_in_outage += 1
                else:
                    c.answers_503_while_up += 1
            elif status == "200" and mine and outage[1] + 0.2 <= answered <= outage[2]:
                c.answers_200_while_down += 1
    return counts


def outage_summary(
    answers_by_source: dict[str, list[Answer]],
    shard_of: dict[str, str],
    shard: str,
    down: float,
    restart: float,
    up: float,
    started: float,
) -> Outage:
    report = Outage(shard, *(round(t - started, 2) for t in (down, restart, up)), 0, 0, 0, 0)
    for source, answers in answers_by_source.items():
        for sent, answered, status in answers:
            if shard_of[source] == shard:
                if status == "503" and answered >= down and sent <= up + RECONNECT_GRACE_SECONDS:
                    report.answers_503 += 1
                elif status == "200" and down + 0.2 <= answered <= restart:
                    report.answers_200_while_down += 1
            elif down <= answered <= up:
                report.others_200 += status == "200"
                report.others_503 += status == "503"
    return report


def key_source(key: str, prefix: str = "trackpipe") -> str | None:
    """The source a per-source key belongs to (counters, inspector lists, quality hours); None for
    any other key."""
    for kind, suffixed in (
        ("stats:source:", False),
        ("inspect:", False),
        ("inspecttest:", False),
        ("inspectfail:", False),
        ("inspsample:", True),
        ("quality:status:", True),
        ("quality:msg:", True),
    ):
        head = f"{prefix}:{kind}"
        if key.startswith(head):
            rest = key.removeprefix(head)
            return rest.rsplit(":", 1)[0] if suffixed else rest
    return None


SOURCE_KEY_PATTERNS = (
    "stats:source:*",
    "inspect:*",
    "inspecttest:*",
    "inspectfail:*",
    "inspsample:*",
    "quality:status:*",
    "quality:msg:*",
)


Problem = tuple[str, str]  # (the shard it concerns, what is wrong)


def misplaced_keys(keys_by_shard: dict[str, set[str]], shard_of: dict[str, str]) -> list[Problem]:
    """Per-source keys on a shard not the source's, and each source's counters and inspector list
    missing from its own shard."""
    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    found: list[Problem] = []
    for shard, keys in sorted(keys_by_shard.items()):
        for key in sorted(keys):
            source = key_source(key)
            if source is not None and shard_of.get(source) != shard:
                found.append((shard, f"{key} on shard {shard} (source {source} is on {shard_of.get(source, '-')})"))
    for source, shard in sorted(shard_of.items()):
        for key in (layout.source_stats(source), layout.inspector(source)):
            if key not in keys_by_shard.get(shard, set()):
                found.append((shard, f"{key} missing from shard {shard}"))
    return found


def misplaced_marks(
    marks: dict[str, set[tuple[int, bytes]]], accepted_by_source: dict[str, list[str]], shard_of: dict[str, str]
) -> tuple[int, list[Problem]]:
    """Every accepted id's dedup mark must be on its source's shard and no other: (ids checked, problems)."""
    from workers.dedup import dedup_key

    checked = 0
    found: list[Problem] = []
    for source, ids in sorted(accepted_by_source.items()):
        for event_id in ids:
            key = dedup_key(source, event_id, DEDUP_BUCKETS)
            holders = {name for name, held in marks.items() if (key.bucket, key.field) in held}
            checked += 1
            if holders != {shard_of[source]}:
                where = ", ".join(sorted(holders)) or "no shard"
                found.append(
                    (shard_of[source], f"dedup mark of {source}/{event_id} on {where} (its shard: {shard_of[source]})")
                )
    return checked, found


# -- reading the shards ---------------------------------------------------------------------------


def payload_sources(payload: bytes) -> Counter[str]:
    """Events per source in one job payload: a delivery batch, or an ingest batch."""
    from trackpipe.messages import decode_batch, decode_delivery

    try:
        return Counter(msgspec.json.decode(e.body)["context"]["source_id"] for e in decode_delivery(payload).events)
    except (msgspec.DecodeError, KeyError, TypeError):
        pass
    try:
        found: Counter[str] = Counter()
        for record in decode_batch(payload).records:
            found[record.source_id] += len(record.events)
        return found
    except msgspec.DecodeError:
        return Counter()


def job_sources(conn: Any) -> Counter[str]:
    """Events per source held by the jobs on one server now: job arguments and job parts."""
    from redis.exceptions import ResponseError

    from trackpipe.jobs import MsgpackSerializer
    from trackpipe.keys import KeyLayout

    layout = KeyLayout()
    found: Counter[str] = Counter()
    for key in conn.scan_iter(f"{layout.job_parts_prefix}*", count=1000):
        with contextlib.suppress(ResponseError):
            for part in conn.lrange(key, 0, -1):
                found.update(payload_sources(part))
    for key in conn.scan_iter(f"{layout.rq_prefix}:job:*", count=1000):
        try:
            data = conn.hget(key, "data")
            _, _, args, _ = MsgpackSerializer.loads(zlib.decompress(data)) if data else (0, 0, (), 0)
        except Exception:  # not a job hash, or a job deleted meanwhile: nothing to read
            continue
        if args and isinstance(args[0], bytes):
            found.update(payload_sources(args[0]))
    return found


def source_keys(conn: Any) -> set[str]:
    return {k.decode() for pattern in SOURCE_KEY_PATTERNS for k in conn.scan_iter(f"trackpipe:{pattern}", count=1000)}


def dedup_marks(conn: Any) -> set[tuple[int, bytes]]:
    """(bucket, field) of every dedup mark on one server."""
    from redis.exceptions import ResponseError

    marks: set[tuple[int, bytes]] = set()
    for pattern in ("trackpipe:dd:*", "trackpipe:ddw:*"):
        for key in conn.scan_iter(pattern, count=1000):
            with contextlib.suppress(ResponseError, ValueError):
                bucket = int(key.rsplit(b":", 1)[1])
                marks.update((bucket, field) for field in conn.hkeys(key))
    return marks


class JobSampler:
    """Reads every shard's job payloads once a second during the run: which sources' events each
    shard holds (a shard that is down is skipped)."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.events: dict[str, Counter[str]] = {name: Counter() for name in ports}
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        from redis.exceptions import RedisError

        for name, port in self.ports.items():
            with contextlib.suppress(RedisError, OSError), connect(port, socket_timeout=2) as conn:
                self.events[name].update(job_sources(conn))
        self.samples += 1

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()


def shard_children(supervisor: int) -> dict[str, int]:
    """shard -> pid of the supervisor's worker child for it (Linux /proc)."""
    found: dict[str, int] = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (pid_dir / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != supervisor:
                continue
            args = (pid_dir / "cmdline").read_bytes().decode().split("\0")
            if "--shard" in args:
                found[args[args.index("--shard") + 1]] = int(pid_dir.name)
    return found


# -- the report -----------------------------------------------------------------------------------


class ShardReport(msgspec.Struct):
    name: str
    sources: list[str]
    pinned: list[str]  # of those, placed by `shard` (the others by the hash)
    statuses: dict[str, int]
    events_accepted: int  # distinct ids answered 200
    delivered: dict[str, int]
    lost: dict[str, int]
    duplicates: dict[str, int]
    # Repeats of ids that arrived around a fault of this shard (its worker killed, its server killed).
    duplicates_explained: dict[str, int]
    duplicates_unexplained: dict[str, int]
    unexplained_arrivals: dict[str, dict[str, list[float]]]
    answers_503: int
    answers_503_in_outage: int
    answers_503_while_up: int  # must be 0
    answers_200_while_down: int  # must be 0
    worker_kills: int
    worker_starts: int  # by the supervisor, the first start included
    server_killed: bool
    job_events_sampled: int  # events of its own sources seen in job payloads here during the run
    misplaced: int  # items of the placement check that name this shard
    missing: dict[str, dict[str, list[str]]]  # where lost ids sit here, if anywhere


class Placement(msgspec.Struct):
    job_samples: int  # reads of every shard's job payloads during the run
    job_events_sampled: int
    source_keys_checked: int
    dedup_ids_checked: int
    misplaced: int
    examples: list[str]


class ShardSoakReport(msgspec.Struct):
    seed: int  # `--seed` repeats the choice of victims and moments
    shards: int
    timings: str
    seconds: float
    requests: int
    statuses: dict[str, int]
    events_sent: int
    events_accepted: int
    resend_requests: int  # requests that resent ids already answered 200 (dedup must drop them)
    resent_events: int
    assignment: dict[str, str]  # source -> shard
    outage: Outage
    per_shard: list[ShardReport]
    delivered: dict[str, int]
    lost: dict[str, int]
    duplicates_unexplained: dict[str, int]
    placement: Placement
    delivery_errors: dict[str, dict[str, int]]
    drain_seconds: float
    faults: list[FaultRecord]
    ok: bool


def verdict(report: ShardSoakReport) -> bool:
    return (
        report.events_accepted > 0
        and not any(report.lost.values())
        and not any(report.duplicates_unexplained.values())
        and report.placement.misplaced == 0
        and all(s.answers_503_while_up == 0 and s.answers_200_while_down == 0 for s in report.per_shard)
    )


def _only(arrivals: Arrivals, ids: set[str]) -> Arrivals:
    return [(seen, kept) for seen, got in arrivals if (kept := [i for i in got if i in ids])]


# -- the run --------------------------------------------------------------------------------------


def run_shard_soak(
    shards: int = 3,
    duration: float = 40.0,
    rate: float = 100.0,
    log: Callable[[str], None] = lambda _: None,
    drain_timeout: float = 300.0,
    seed: int | None = None,
    default_timings: bool = False,
) -> ShardSoakReport:
    """Load for `duration` seconds with the seeded faults, then wait for delivery and check placement."""
    if not MIN_SHARDS <= shards <= MAX_SHARDS:
        raise ValueError(f"shards {shards}: from {MIN_SHARDS} to {MAX_SHARDS}")
    if duration < MIN_DURATION:
        raise ValueError(f"duration {duration}: at least {MIN_DURATION} s")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    names = list(SHARD_NAMES[:shards])
    plan = fault_plan(seed, names)
    log(f"seed {seed} (--seed {seed} repeats these choices), {shards} shards")
    faults: list[FaultRecord] = []
    windows: dict[str, list[Window]] = {name: [] for name in names}
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKPIPE_REDIS_URL", "TRACKPIPE_CONFIG")}
    with tempfile.TemporaryDirectory(prefix="trackpipe-shardsoak-") as tmp_name:
        tmp = Path(tmp_name)
        ports = {name: free_port() for name in names}
        servers = {name: start_server(tmp / f"valkey-{name}", port=ports[name]) for name in names}
        urls = {name: f"redis://127.0.0.1:{port}/0" for name, port in ports.items()}
        sources = plan_sources(names)
        sink = Sink()
        tail = FileTail(tmp / "out")
        config_file = tmp / "shards.toml"
        config_file.write_text(sharded_config(urls, sources, sink.url, tmp / "out", default_timings))
        from trackpipe.config import parse
        from trackpipe.shards import assignment

        shard_of = assignment(parse(config_file.read_text(), env={}))
        edge_port = free_port()
        producer = ShardProducer(edge_port, rate, sources, seed)
        sampler = JobSampler(ports)
        supervisor_log = tmp / "supervisor.log"
        processes: list[subprocess.Popen] = []
        kills: Counter[str] = Counter()
        outage_times: OutageTimes | None = None

        def spawn(*args: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "commands", *args, "--config", str(config_file)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            )
            return processes[-1]

        try:
            edge = spawn("edge", "--port", str(edge_port))
            wait_http(f"http://127.0.0.1:{edge_port}/healthz", timeout=30, proc=edge)
            with supervisor_log.open("wb") as log_file:
                supervisor = spawn("worker", stderr=log_file)
            end = time.monotonic() + 30
            while len(shard_children(supervisor.pid)) < shards and time.monotonic() < end:
                time.sleep(0.1)
            loop_thread, started, note = start_load(producer, faults, log)
            sampler.thread.start()

            for planned in plan:
                time.sleep(max(0.0, started + duration * planned.fraction - time.monotonic()))
                name = planned.shard
                if planned.kind == "worker":
                    # The supervisor may be between a death and the restart: wait for the child.
                    deadline = time.monotonic() + 20
                    while (pid := shard_children(supervisor.pid).get(name)) is None and time.monotonic() < deadline:
                        time.sleep(0.1)
                    if pid is None:
                        note("SIGKILL worker: skipped", f"shard {name} has no worker running")
                        continue
                    os.kill(pid, signal.SIGKILL)
                    kills[name] += 1
                    now = time.monotonic()
                    windows[name].append((now - EXPLAIN_BEFORE, now + EXPLAIN_AFTER, DESTINATIONS))
                    note("SIGKILL worker", f"shard {name}, pid {pid}")
                else:
                    servers[name].terminate()
                    down = time.monotonic()
                    note("server SIGKILLed", f"shard {name}")
                    time.sleep(SERVER_OUTAGE_SECONDS)
                    restart = time.monotonic()
                    servers[name] = start_server(tmp / f"valkey-{name}", port=ports[name])
                    up = time.monotonic()
                    outage_times = (name, down, restart, up)
                    windows[name].append((down - EXPLAIN_BEFORE, up + EXPLAIN_BEFORE, DESTINATIONS))
                    note("server started again (AOF)", f"shard {name}")
            time.sleep(max(0.0, started + duration - time.monotonic()))
            producer.stop = True
            loop_thread.join(timeout=60)
            sampler.stop.set()
            sampler.thread.join(timeout=30)
            note("load stopped")
            seconds = time.monotonic() - started
            accepted = producer.accepted
            drain_seconds = drain(accepted, sink, tail, list(ports.values()), drain_timeout, note)
            sampler.sample()  # what is left after the drain
            tail.poll()
            arrivals: dict[str, Arrivals] = {HOOK: sink.arrivals(), FILE: tail.arrivals()}
            received = {HOOK: sink.ids(), FILE: file_ids(tmp / "out")}
            errors: dict[str, dict[str, int]] = {d: {} for d in DESTINATIONS}
            for port in ports.values():
                for d, kinds in delivery_errors(port, received).items():
                    for kind, n in kinds.items():
                        errors[d][kind] = errors[d].get(kind, 0) + n
            keys_by_shard: dict[str, set[str]] = {}
            marks: dict[str, set[tuple[int, bytes]]] = {}
            for name, port in ports.items():
                with connect(port, socket_timeout=30) as conn:
                    keys_by_shard[name] = source_keys(conn)
                    marks[name] = dedup_marks(conn)
            missing: dict[str, dict[str, dict[str, list[str]]]] = {}
            for name, port in ports.items():
                mine = {i for i in accepted if shard_of[producer.source_of[i]] == name}
                gone = {d: mine - set(got) for d, got in received.items()}
                missing[name] = {d: locate(port, ids) for d, ids in gone.items() if ids}
            log_text = supervisor_log.read_text(errors="replace")
        finally:
            producer.stop = True
            sampler.stop.set()
            end_processes(processes, str(config_file), timeout=90)
            sink.close()
            tail.close()
            for server in servers.values():
                with contextlib.suppress(Exception):
                    server.stop()
    assert outage_times is not None
    answer_counts = classify_answers(producer.answers_by_source, shard_of, outage_times)
    problems = misplaced_keys(keys_by_shard, shard_of)
    for name, held in sampler.events.items():
        problems += [
            (name, f"{n} events of source {source} in job payloads on shard {name} (its shard: {shard_of.get(source)})")
            for source, n in sorted(held.items())
            if shard_of.get(source) != name
        ]
    dedup_checked, mark_problems = misplaced_marks(marks, producer.accepted_by_source, shard_of)
    problems += mark_problems
    per_shard: list[ShardReport] = []
    for name in names:
        mine = [s for s in sources if shard_of[s.id] == name]
        ids = {i for i in accepted if shard_of[producer.source_of[i]] == name}
        counts = tally(
            ids,
            {d: Counter({i: n for i, n in got.items() if i in ids}) for d, got in received.items()},
            {d: _only(a, ids) for d, a in arrivals.items()},
            windows[name],
            started,
        )
        answers = answer_counts[name]
        per_shard.append(
            ShardReport(
                name=name,
                sources=[s.id for s in mine],
                pinned=[s.id for s in mine if s.shard],
                statuses=answers.statuses,
                events_accepted=len(ids),
                delivered=counts.delivered,
                lost=counts.lost,
                duplicates=counts.duplicates,
                duplicates_explained=counts.duplicates_explained,
                duplicates_unexplained=counts.duplicates_unexplained,
                unexplained_arrivals=counts.unexplained_arrivals,
                answers_503=answers.answers_503,
                answers_503_in_outage=answers.answers_503_in_outage,
                answers_503_while_up=answers.answers_503_while_up,
                answers_200_while_down=answers.answers_200_while_down,
                worker_kills=kills[name],
                worker_starts=log_text.count(f"worker of shard {name} started"),
                server_killed=outage_times[0] == name,
                job_events_sampled=sum(n for s, n in sampler.events[name].items() if shard_of.get(s) == name),
                misplaced=sum(1 for shard, _ in problems if shard == name),
                missing=missing[name],
            )
        )
    report = ShardSoakReport(
        seed=seed,
        shards=shards,
        timings="default" if default_timings else "fast",
        seconds=round(seconds, 1),
        requests=sum(producer.statuses.values()),
        statuses=dict(producer.statuses),
        events_sent=producer.sent,
        events_accepted=len(accepted),
        resend_requests=producer.resends,
        resent_events=producer.resent_events,
        assignment=shard_of,
        outage=outage_summary(producer.answers_by_source, shard_of, *outage_times, started),
        per_shard=per_shard,
        delivered={d: sum(s.delivered[d] for s in per_shard) for d in DESTINATIONS},
        lost={d: sum(s.lost[d] for s in per_shard) for d in DESTINATIONS},
        duplicates_unexplained={d: sum(s.duplicates_unexplained[d] for s in per_shard) for d in DESTINATIONS},
        placement=Placement(
            job_samples=sampler.samples,
            job_events_sampled=sum(sum(c.values()) for c in sampler.events.values()),
            source_keys_checked=sum(len(k) for k in keys_by_shard.values()),
            dedup_ids_checked=dedup_checked,
            misplaced=len(problems),
            examples=[text for _, text in problems[:EXAMPLES]],
        ),
        delivery_errors=errors,
        drain_seconds=round(drain_seconds, 1),
        faults=sorted(faults, key=lambda f: f.at),
        ok=False,
    )
    report.ok = verdict(report)
    return report


