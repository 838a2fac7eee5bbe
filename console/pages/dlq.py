"""Dead letters: every destination's DLQ; a DLQ's letters, filtered and paged in Redis; select some
(by identity: a hash of the stored record, since list positions move as letters arrive) or all
matching; dry run then replay (to the same or another destination, at a rate, in the background with
its progress in Redis); export as JSON lines; purge after a confirmation. Every change is a POST
carrying the CSRF token.

A confirmation page freezes its selection at the time it was shown (`frozen_at`): letters that
arrive between the dry run and the click are neither replayed nor purged by it.

Several shards: each keeps its own DLQs. The pages list a destination's letters merged newest first
over every shard; a purge deletes each letter on its shard; a replay runs on every shard at once
under one id (each shard's lock, its letters back to its own delivery queue, the rate shared out),
and its page shows the sum.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from console.web import Endpoint, console_of, form_with_csrf, page, render, run_blocking

# trackpipe.dlq imports RQ, which reads its key prefix once, at import: imported where used.

log = logging.getLogger("trackpipe.console")

NAV = ("Dead letters", "/dlq")
FILTERS = ("event", "reason", "since", "until")
EXPORT_CHUNK = 256 * 1024  # bytes of JSON lines per piece of a download
SAMPLE = 20  # letters a confirmation page lists


class Choice(msgspec.Struct):
    """What a form or a query picked: the filters as typed (to carry them on), and what they mean."""

    filters: dict[str, str]
    selection: Any  # trackpipe.dlq.Selection
    ids: frozenset[str] | None  # None: every letter that matches the filters


class BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _problem(request: Request, status: int, detail: str) -> Response:
    return render(request, "error.html", status_code=status, status=status, detail=detail)


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Bad input answers with an error page naming it; Redis down answers 503, never 500."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        from trackpipe.dlq import DlqError

        try:
            return await endpoint(request)
        except BadRequest as exc:
            return _problem(request, exc.status, exc.detail)
        except DlqError as exc:
            return _problem(request, 404 if str(exc).startswith("destination:") else 400, str(exc))
        except (OSError, RedisError) as exc:
            return _problem(request, 503, f"storage unavailable: {type(exc).__name__}")

    return run


def _destination(request: Request) -> str:
    from trackpipe.dlq import check_destination

    destination_id = request.path_params["destination_id"]
    check_destination(console_of(request).config, destination_id, "destination")
    return destination_id


def _text(values: Mapping[str, Any], name: str) -> str:
    value = values.get(name)
    return value.strip() if isinstance(value, str) else ""


def _choice(values: Mapping[str, Any], ids: Iterable[Any] = (), *, scope: str = "all") -> Choice:
    from trackpipe import dlq

    filters = {name: _text(values, name) for name in FILTERS}
    frozen = _text(values, "frozen_at")
    until = dlq.parse_time(filters["until"], "until") if filters["until"] else None
    if frozen:
        if not frozen.isdigit() or len(frozen) > 16:
            raise dlq.DlqError(f"frozen_at: {frozen[:40]!r} is not a time in milliseconds")
        until = int(frozen) if until is None else min(until, int(frozen))
    selection = dlq.Selection(
        event_name=filters["event"] or None,
        reason_contains=filters["reason"] or None,
        since_ms=dlq.parse_time(filters["since"], "since") if filters["since"] else None,
        until_ms=until,
    )
    if scope not in ("all", "selected"):
        raise dlq.DlqError(f"scope: {scope[:40]!r} is neither 'all' nor 'selected'")
    chosen = None
    if scope == "selected":
        chosen = dlq.check_ids(i for i in ids if isinstance(i, str))
        if not chosen:
            raise dlq.DlqError("select at least one dead letter, or choose every letter that matches")
    return Choice(filters, selection, chosen)


def _query(filters: Mapping[str, str], **more: str) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in {**filters, **more}.items() if v})


# -- the list of DLQs --------------------------------------------------------------------------


@_guarded
async def index(request: Request) -> Response:
    console = console_of(request)

    def read() -> list[dict[str, Any]]:
        from trackpipe import dlq

        ids = [d.id for d in console.config.destinations]
        sizes = dlq.sizes_union(console.sharded, console.layout, ids)
        dropped: dict[bytes, int] = {}
        for client in console.sharded:
            for name, n in client.redis.hgetall(console.layout.dlq_dropped).items():
                dropped[name] = dropped.get(name, 0) + int(n)
        running = {d: dlq.running_replay_union(console.sharded, console.layout, d) for d in ids if sizes[d]}
        return [
            {
                "id": d.id,
                "type": d.__struct_config__.tag,
                "size": sizes[d.id],
                "dropped": int(dropped.get(d.id.encode(), 0)),
                "replay": running.get(d.id),
            }
            for d in console.config.destinations
        ]

    return render(request, "dlq.html", destinations=await run_blocking(read))


# -- one DLQ's letters ---------------------------------------------------------------------------


@_guarded
async def letters(request: Request) -> Response:
    from trackpipe import dlq

    console = console_of(request)
    destination_id = _destination(request)
    choice = _choice(request.query_params)
    after = request.query_params.get("after", "").strip() or None
    if after is not None:
        (after,) = dlq.check_ids([after])

    def read() -> tuple[Any, int, str | None]:
        found = dlq.page_union(console.sharded, console.layout, destination_id, choice.selection, after=after)
        size = sum(int(c.redis.llen(console.layout.dlq(destination_id))) for c in console.sharded)
        return found, size, dlq.running_replay_union(console.sharded, console.layout, destination_id)

    found, size, running = await run_blocking(read)
    rows = [
        {
            "id": ident,
            "record": record,
            "event": msgspec.json.format(bytes(record.event), indent=2).decode("utf-8", "replace"),
        }
        for ident, record in found.letters
    ]
    return render(
        request,
        "dlq_letters.html",
        destination_id=destination_id,
        destinations=[d.id for d in console.config.destinations],
        filters=choice.filters,
        rows=rows,
        size=size,
        running=running,
        first_page=after is None,
        lost=found.lost,
        newest_link=f"/dlq/{destination_id}?{_query(choice.filters)}",
        older_link=(
            f"/dlq/{destination_id}?{_query(choice.filters, after=found.next_after)}" if found.next_after else None
        ),
        export_link=f"/dlq/{destination_id}/export?{_query(choice.filters)}",
        purged=request.query_params.get("purged", ""),
    )


def _download(console: Any, destination_id: str, choice: Choice) -> Iterator[bytes]:
    """The matching letters as JSON lines, in pieces of about EXPORT_CHUNK bytes, read as sent."""
    from trackpipe import dlq

    piece: list[bytes] = []
    held = 0
    for line in dlq.export_lines_union(console.sharded, console.layout, destination_id, choice.selection, choice.ids):
        piece.append(line)
        held += len(line)
        if held >= EXPORT_CHUNK:
            yield b"".join(piece)
            piece, held = [], 0
    if piece:
        yield b"".join(piece)


async def _export(request: Request, destination_id: str, choice: Choice) -> Response:
    console = console_of(request)
    pieces = _download(console, destination_id, choice)
    # The first piece is read before answering: Redis down still gets an error page, not a cut download.
    first = await run_blocking(next, pieces, b"")

    def rest() -> Iterator[bytes]:
        if first:
            yield first
            yield from pieces

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return StreamingResponse(
        rest(),
        media_type="application/x-ndjson",
        headers={
            "Content-Disposition": f'attachment; filename="{destination_id}-dead-letters-{stamp}.jsonl"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@_guarded
async def export(request: Request) -> Response:
    """GET: every letter matching the filters in the query (reading changes nothing)."""
    return await _export(request, _destination(request), _choice(request.query_params))


# -- actions: dry run, replay, export, purge -------------------------------------------------------


@_guarded
async def action(request: Request) -> Response:
    from trackpipe import dlq

    form = await form_with_csrf(request)
    console = console_of(request)
    destination_id = _destination(request)
    what = _text(form, "action")
    choice = _choice(form, form.getlist("id"), scope=_text(form, "scope") or "all")
    target = _text(form, "to") or destination_id
    dlq.check_destination(console.config, target, "to")
    rate = dlq.check_rate(_text(form, "rate"))
    if what == "export":
        return await _export(request, destination_id, choice)
    if what in ("dry_run", "purge"):
        return await _confirm(request, destination_id, choice, what, target, rate)
    if what == "purge_confirmed":
        return await _purge(request, destination_id, choice)
    if what == "replay":
        return await _replay(request, destination_id, choice, target, rate)
    raise BadRequest(400, f"action: {what[:40]!r} is not one of dry_run, replay, export, purge, purge_confirmed")


async def _confirm(
    request: Request, destination_id: str, choice: Choice, what: str, target: str, rate: float | None
) -> Response:
    """The dry run of a replay or a purge: how many, to where, the first few; and the button."""
    from trackpipe import dlq

    console = console_of(request)
    frozen_at = int(time.time() * 1000)
    selection = msgspec.structs.replace(
        choice.selection, until_ms=frozen_at if choice.selection.until_ms is None else choice.selection.until_ms
    )

    def read() -> tuple[int, list[Any], str | None]:
        total = dlq.count_union(console.sharded, console.layout, destination_id, selection, choice.ids)
        found = dlq.merged_matching(console.sharded, console.layout, destination_id, selection, choice.ids)
        first = [record for _, _, _, record in _first(found)]
        return total, first, dlq.running_replay_union(console.sharded, console.layout, destination_id)

    total, sample, running = await run_blocking(read)
    return render(
        request,
        "dlq_confirm.html",
        destination_id=destination_id,
        what=what,
        total=total,
        sample=sample,
        target=target,
        rate=rate,
        running=running,
        filters=choice.filters,
        ids=sorted(choice.ids) if choice.ids is not None else [],
        scope="selected" if choice.ids is not None else "all",
        frozen_at=frozen_at,
    )


def _first(found: Iterator[Any]) -> Iterator[Any]:
    for n, item in enumerate(found):
        if n >= SAMPLE:
            return
        yield item


async def _purge(request: Request, destination_id: str, choice: Choice) -> Response:
    from trackpipe import dlq

    console = console_of(request)

    def delete() -> int:
        # A running replay holds letters it has counted: deleting under it would be a surprise.
        if dlq.running_replay_union(console.sharded, console.layout, destination_id):
            raise dlq.DlqError(f"a replay of {destination_id}'s dead letters is running: purge once it has ended")
        deleted = 0
        while True:  # a bounded batch at a time, never the whole DLQ in memory
            chosen = [
                (shard, raw, record)
                for shard, _, raw, record in _take(
                    dlq.merged_matching(console.sharded, console.layout, destination_id, choice.selection, choice.ids)
                )
            ]
            if not chosen:
                return deleted
            removed = dlq.purge_union(console.sharded, console.layout, destination_id, chosen)
            deleted += removed
            if removed == 0:
                return deleted  # they left meanwhile; nothing more to do

    deleted = await run_blocking(delete)
    log.info("purged %d dead letters of %s from the console", deleted, destination_id)
    return RedirectResponse(f"/dlq/{destination_id}?{_query(choice.filters, purged=str(deleted))}", status_code=303)


def _take(found: Iterator[Any], size: int = 1_000) -> Iterator[Any]:
    for n, item in enumerate(found):
        if n >= size:
            return
        yield item


async def _replay(request: Request, destination_id: str, choice: Choice, target: str, rate: float | None) -> Response:
    from trackpipe import dlq

    console = console_of(request)
    started = await run_blocking(
        dlq.start_replay_union, console.sharded, console.config, destination_id, choice.selection, target,
        ids=choice.ids, rate=rate,
    )  # fmt: skip
    job_id = started[0][1].job_id
    log.info(
        "replay %s: %d dead letters of %s to %s at %s events/s",
        job_id, sum(job.total for _, job in started), destination_id, target, rate or "full speed",
    )  # fmt: skip

    def run(redis: Any, job: Any) -> None:
        done = dlq.run_replay(redis, console.config, job, choice.selection, ids=choice.ids)
        log.info("replay %s %s: %d of %d replayed %s", job.job_id, done.state, done.done, done.total, done.error or "")

    # The console process does the replay on a thread of its own per shard; the page follows it in Redis.
    for shard, job in started:
        redis = console.sharded.named(shard).redis
        threading.Thread(target=run, args=(redis, job), name=f"replay-{job_id}-{shard}", daemon=True).start()
    return RedirectResponse(f"/dlq/{destination_id}/replays/{job_id}", status_code=303)


# -- a replay's progress ------------------------------------------------------------------------------


async def _progress(request: Request) -> tuple[str, Any]:
    from trackpipe import dlq

    console = console_of(request)
    destination_id = _destination(request)
    job_id = request.path_params["job_id"]
    if not (job_id.isalnum() and len(job_id) <= 32):
        raise BadRequest(404, f"no replay {job_id[:40]!r}")
    job = await run_blocking(dlq.read_progress_union, console.sharded, console.layout, job_id)
    if job is None or job.source != destination_id:
        raise BadRequest(404, f"no replay {job_id!r} of {destination_id}'s dead letters (or it ended over a week ago)")
    return destination_id, job


@_guarded
async def progress_page(request: Request) -> Response:
    destination_id, job = await _progress(request)
    return render(request, "dlq_replay.html", destination_id=destination_id, job=job)


@_guarded
async def progress_fragment(request: Request) -> Response:
    destination_id, job = await _progress(request)
    return render(request, "dlq_progress.html", destination_id=destination_id, job=job)


ROUTES = [
    Route("/dlq", page(index)),
    Route("/dlq/{destination_id}", page(letters)),
    Route("/dlq/{destination_id}/export", page(export)),
    Route("/dlq/{destination_id}/action", page(action), methods=["POST"]),
    Route("/dlq/{destination_id}/replays/{job_id}", page(progress_page)),
    Route("/dlq/{destination_id}/replays/{job_id}/fragment", page(progress_fragment)),
]
