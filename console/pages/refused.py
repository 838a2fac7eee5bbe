"""Refused requests: per site, the requests the edge refused for their key (missing, unknown, or a key
of another site), counted by reason, with the latest samples. The samples never held the key's
parameter or header; keys found in a body are masked before they are shown (trackpipe.queries)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.charts import stacked_bars
from console.web import console_of, page, render, run_blocking
from trackpipe.keys import UNKNOWN_SITE_BUCKET

NAV = ("Refused", "/refused")
DEFAULT_LATEST = 20
MAX_LATEST = 200
BODY_SHOWN = 600  # characters of a sample's body shown before "…" (the whole start is in a <details>)


def _problem(request: Request, status: int, detail: str) -> Response:
    return render(request, "error.html", status_code=status, status=status, detail=detail)


async def refused(request: Request) -> Response:
    from trackpipe.queries import refused_sites

    console = console_of(request)
    sites_of_sources: dict[str, list[str]] = {}
    for source in console.config.sources:
        sites_of_sources.setdefault(source.site_id, []).append(source.id)
    site = request.query_params.get("site", "").strip() or None
    if site is not None and site != UNKNOWN_SITE_BUCKET and site not in sites_of_sources:
        other = f"other sites are under {UNKNOWN_SITE_BUCKET!r}"
        return _problem(request, 404, f"site: no source has site id {site!r} ({other})")
    latest_text = request.query_params.get("latest", "").strip() or str(DEFAULT_LATEST)
    if not latest_text.isdigit() or not 1 <= int(latest_text) <= MAX_LATEST:
        return _problem(request, 400, f"latest: must be a whole number from 1 to {MAX_LATEST}")
    try:
        found = await run_blocking(refused_sites, console.config, console.redis, int(latest_text), site)
    except (OSError, RedisError) as exc:
        return _problem(request, 503, f"storage unavailable: {type(exc).__name__}")
    reasons = sorted({reason for s in found for reason in s.by_reason})
    totals = {reason: sum(s.by_reason.get(reason, 0) for s in found) for reason in reasons}
    chart: Any = None
    if any(s.total for s in found):
        chart = stacked_bars(
            [_site_label(s.site_id) for s in found],
            {reason: [float(s.by_reason.get(reason, 0)) for s in found] for reason in reasons},
            x_label="site",
            y_label="requests refused",
        )
    return render(
        request,
        "refused.html",
        sites=found,
        site=site or "",
        latest=int(latest_text),
        site_choices=[*sorted(sites_of_sources), UNKNOWN_SITE_BUCKET],
        sources_of=sites_of_sources,
        unknown_bucket=UNKNOWN_SITE_BUCKET,
        reasons=reasons,
        totals=totals,
        chart=chart,
        body_shown=BODY_SHOWN,
    )


def _site_label(site_id: str) -> str:
    return "other sites" if site_id == UNKNOWN_SITE_BUCKET else f"site {site_id}"


ROUTES = [Route("/refused", page(refused))]
