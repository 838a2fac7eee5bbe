"""The console's web pages: templates, sign-in, CSRF, and the helpers every page module uses.

Signing in takes the admin token once and sets a cookie holding a signed, expiring session (HMAC with a
key derived from the admin token: every console process of one deployment accepts it, and rotating the
token signs everyone out). The cookie is HttpOnly and SameSite=Strict; every state-changing action is a
POST carrying the session's CSRF token. Blocking Redis calls run on threads (`run_blocking`), never on
the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

HERE = Path(__file__).parent
COOKIE = "trackpipe_session"
SESSION_SECONDS = 12 * 3600
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
)
P = ParamSpec("P")
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


def _when(ms: Any) -> str:
    """Milliseconds since the epoch as a UTC time a person reads."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(ms) / 1000)) + " UTC"
    except (TypeError, ValueError, OverflowError):
        return "-"


_templates.filters["when"] = _when


def console_of(request: Request) -> Any:
    """The app's `console.app.Console` (config, layout, Redis client); typed loosely, since console.app
    imports this module."""
    return request.app.console


def _key(console: Any) -> bytes | None:
    token = console.config.admin_token
    if not token:
        return None
    return hmac.new(token.encode(), b"trackpipe console session", hashlib.sha256).digest()


def _sign(key: bytes, payload: str) -> str:
    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return payload + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def new_session(console: Any, now: float | None = None) -> str | None:
    """A cookie value: expiry and a random CSRF secret, signed."""
    key = _key(console)
    if key is None:
        return None
    expires = int((now or time.time()) + SESSION_SECONDS)
    return _sign(key, f"{expires}:{secrets.token_urlsafe(18)}")


def session_of(request: Request, now: float | None = None) -> str | None:
    """The session's CSRF secret when the cookie is genuine and not expired; None otherwise."""
    value = request.cookies.get(COOKIE)
    key = _key(console_of(request))
    if not value or key is None or value.count(".") != 1:
        return None
    payload = value.rsplit(".", 1)[0]
    if not hmac.compare_digest(_sign(key, payload), value):
        return None
    expires, _, nonce = payload.partition(":")
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return None
    return nonce


def signed_in(request: Request) -> bool:
    return session_of(request) is not None


def csrf_token(request: Request) -> str:
    nonce = session_of(request) or ""
    return hmac.new(nonce.encode(), b"csrf", hashlib.sha256).hexdigest() if nonce else ""


async def form_with_csrf(request: Request) -> FormData:
    """The POST form of a state-changing action; 403 unless it carries this session's CSRF token."""
    if request.method != "POST":
        raise HTTPException(405, "use POST")
    form = await request.form()
    expected = csrf_token(request)
    given = form.get("csrf")
    if not expected or not isinstance(given, str) or not hmac.compare_digest(given, expected):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return form


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A blocking call (Redis) on a thread: the event loop keeps serving."""
    return await run_in_threadpool(fn, *args, **kwargs)


def nav_items() -> list[tuple[str, str]]:
    from console.pages import PAGE_MODULES

    return [module.NAV for module in PAGE_MODULES if module.NAV is not None]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    page = _templates.get_template(template).render(
        request=request,
        console=console_of(request),
        csrf_token=csrf_token(request),
        nav=nav_items(),
        path=request.url.path,
        signed_in=signed_in(request),
        **context,
    )
    return HTMLResponse(page, status_code=status_code, headers=SECURITY_HEADERS)


# Pages load nothing from elsewhere and are never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(endpoint: Endpoint) -> Endpoint:
    """A page: sign-in required (else a redirect to /login, back here afterwards)."""

    async def guarded(request: Request) -> Response:
        if not signed_in(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={_safe_next(target)}", status_code=303)
        return await endpoint(request)

    guarded.__name__ = getattr(endpoint, "__name__", "page")
    return guarded


def _safe_next(target: str | None) -> str:
    """Only a path on this console (never //elsewhere or a full URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login(request: Request) -> Response:
    console = console_of(request)
    next_page = _safe_next(request.query_params.get("next"))
    if request.method == "GET":
        return render(request, "login.html", error=None, next_page=next_page, enabled=bool(console.config.admin_token))
    form = await request.form()
    token = form.get("token")
    next_page = _safe_next(form.get("next") if isinstance(form.get("next"), str) else None)  # type: ignore[arg-type]
    expected = console.config.admin_token
    if not expected or not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
        return render(
            request,
            "login.html",
            status_code=401,
            error="Wrong admin token.",
            next_page=next_page,
            enabled=bool(expected),
        )
    response = RedirectResponse(next_page, status_code=303)
    response.set_cookie(
        COOKIE,
        new_session(console) or "",
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def logout(request: Request) -> Response:
    await form_with_csrf(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def forbidden(request: Request, exc: Exception) -> Response:
    """HTTP errors of pages as a page (JSON routes keep their own answers)."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "error")
    headers = getattr(exc, "headers", None) or {}  # e.g. the Allow header of a 405
    if request.url.path.startswith("/admin/"):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "error", "error": detail}, status_code=status, headers=headers)
    page = render(request, "error.html", status_code=status, status=status, detail=detail)
    page.headers.update(headers)
    return page
