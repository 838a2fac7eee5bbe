"""CORS for browser producers: which origins may call the ingest routes, and the headers that say so.

Pure logic; the edge calls it only for requests with an `Origin` header. Each source lists its
origins (`cors_origins`, `"*"` for any). A request with a good key is judged by its source's list.
A preflight (`OPTIONS` + `Access-Control-Request-Method`) carries no key, only the query string of
the request to come: its `tc_s` names the site, and an origin listed by any source of that site is
allowed (so is any origin when one of them lists `"*"`); without a known site nothing is allowed.

An origin listed by name is answered with itself and `Access-Control-Allow-Credentials: true` (a page
may send cookies along, e.g. `navigator.sendBeacon` does; the edge never reads them). An origin allowed
only through `"*"` is answered `*`, without credentials: browsers then refuse to let a credentialed
request read the answer, so list the origin itself for those.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from trackpipe.config import SourceConfig

ANY = "*"
MAX_AGE = b"7200"  # seconds; Chromium caps a preflight cache at two hours anyway
VARY = (b"vary", b"Origin")
# Always allowed (what the edge reads), and what else a page may ask for that does no harm here.
BASE_HEADERS = ("content-type", "authorization", "content-encoding")
SAFE_HEADERS = frozenset({*BASE_HEADERS, "accept", "accept-language", "content-language", "x-requested-with"})

Headers = list[tuple[bytes, bytes]]


class Origins(msgspec.Struct, frozen=True):
    """The origins one source (or, for preflights, one site) allows."""

    named: frozenset[str]
    any: bool

    @classmethod
    def of(cls, lists: Iterable[Iterable[str]]) -> Origins:
        lists = [list(origins) for origins in lists]
        named = {o.lower() for origins in lists for o in origins if o != ANY}
        return cls(frozenset(named), any(ANY in origins for origins in lists))

    def __bool__(self) -> bool:
        return self.any or bool(self.named)

    def answer(self, origin: str) -> Headers | None:
        """The headers granting `origin`, or None when it is not allowed."""
        if origin.lower() in self.named:
            return [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                VARY,
            ]
        if self.any:
            return [(b"access-control-allow-origin", b"*"), VARY]
        return None


NOBODY = Origins(frozenset(), False)


class CorsPolicy:
    """Built from the config's sources (again on a reload); answers per source and per site."""

    def __init__(self, sources: Iterable[SourceConfig]) -> None:
        sources = list(sources)
        self.by_source = {s.id: Origins.of([s.cors_origins]) for s in sources if s.cors_origins}
        sites: dict[str, list[list[str]]] = {}
        for s in sources:
            sites.setdefault(s.site_id, []).append(s.cors_origins)
        self.by_site = {site: Origins.of(lists) for site, lists in sites.items()}

    def for_source(self, source_id: str) -> Origins:
        return self.by_source.get(source_id, NOBODY)

    def for_site(self, site_id: str | None) -> Origins | None:
        """The union of the site's sources' origins; None for a missing or unknown site."""
        if not site_id:
            return None
        return self.by_site.get(site_id)


def allowed_request_headers(requested: str | None) -> bytes:
    """Access-Control-Allow-Headers: the edge's own, plus the safe ones the preflight asked for."""
    names = list(BASE_HEADERS)
    for name in (requested or "").split(","):
        name = name.strip().lower()
        if name in SAFE_HEADERS and name not in names:
            names.append(name)
    return ", ".join(names).encode()


class Preflight(msgspec.Struct, frozen=True):
    """The verdict on a preflight: status, headers, and (when refused) why."""

    status: int
    headers: Headers
    refusal: str | None = None


def preflight(
    policy: CorsPolicy,
    site_id: str | None,
    origin: str,
    method: str,
    requested_headers: str | None,
    methods: tuple[str, ...],
) -> Preflight:
    """Answers `OPTIONS` with `Origin` and `Access-Control-Request-Method` for a route serving `methods`.
    Refused: 403, no CORS headers (the browser then does not send the request)."""
    origins = policy.for_site(site_id)
    if origins is None:
        why = "tc_s is missing from the query" if not site_id else "unknown site (tc_s)"
        return Preflight(403, [VARY], f"CORS preflight refused: {why}")
    granted = origins.answer(origin)
    if granted is None:
        return Preflight(403, [VARY], "CORS preflight refused: origin not allowed for this site")
    if method.strip().upper() not in methods:
        return Preflight(403, [VARY], f"CORS preflight refused: method {method.strip()[:20]!r} not allowed here")
    return Preflight(
        204,
        [
            *granted,
            (b"access-control-allow-methods", ", ".join(methods).encode()),
            (b"access-control-allow-headers", allowed_request_headers(requested_headers)),
            (b"access-control-max-age", MAX_AGE),
        ],
    )
