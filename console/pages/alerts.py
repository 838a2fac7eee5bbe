"""Alerts: the rules (failure rate, DLQ size or growth, lag, INVALID share), their state and the recent
firings; a form adds, edits and deletes rules (POST with the CSRF token). Webhook URLs are shown as
scheme and host only: their path is often their secret. The console's evaluator (console/alerting.py)
checks the rules and posts to the webhooks."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from console.alerting import (
    delete_rule,
    interval_from_env,
    load_firings,
    load_rule,
    load_rules,
    load_states,
    new_rule_id,
    save_rule,
)
from console.web import Endpoint, console_of, form_with_csrf, page, render, run_blocking
from trackpipe.alerts import (
    INGEST_TARGET,
    KIND_LABELS,
    KINDS,
    UNITS,
    AlertError,
    AlertRule,
    check_rule,
    describe,
    mask_url,
    value_text,
)

NAV = ("Alerts", "/alerts")
FIRINGS_SHOWN = 30


class RuleForm(msgspec.Struct, kw_only=True):
    """What the form shows: a rule being added or edited (never its webhook URL)."""

    id: str = ""
    name: str = ""
    kind: str = "dlq_size"
    target: str = ""
    threshold: str = "0"
    window_minutes: str = "5"
    has_webhook: bool = False  # editing: an empty URL field keeps the stored one


def _view(request: Request) -> dict[str, Any]:
    console = console_of(request)
    rules = load_rules(console.redis, console.layout)
    states = load_states(console.redis, console.layout)
    rows = []
    for rule in rules:
        state = states.get(rule.id)
        rows.append(
            {
                "rule": rule,
                "describe": describe(rule),
                "webhook": mask_url(rule.webhook_url),
                "status": state.status if state and state.checked_at else "pending",
                "since": state.since if state else None,
                "value": value_text(rule, state.value if state and state.checked_at else None),
                "last_error": state.last_error if state else None,
            }
        )
    return {"rows": rows, "firings": load_firings(console.redis, console.layout, FIRINGS_SHOWN)}


def _choices(request: Request) -> dict[str, Any]:
    config = console_of(request).config
    return {
        "kinds": [(kind, f"{KIND_LABELS[kind]} … ({UNITS[kind]})") for kind in KINDS],
        "destinations": [d.id for d in config.destinations],
        "sources": [s.id for s in config.sources],
        "ingest_target": INGEST_TARGET,
        "interval": interval_from_env(),
    }


def _storage(endpoint: Endpoint) -> Endpoint:
    """Redis down or refusing: a 503 page naming it, not a 500."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (RedisError, OSError) as exc:
            detail = f"storage unavailable: {type(exc).__name__}"
            return render(request, "error.html", status_code=503, status=503, detail=detail)

    guarded.__name__ = endpoint.__name__
    return guarded


async def _page(request: Request, form: RuleForm, error: str | None = None, status_code: int = 200) -> Response:
    view = await run_blocking(_view, request)
    return render(request, "alerts.html", status_code=status_code, form=form, error=error, **view, **_choices(request))


async def alerts(request: Request) -> Response:
    form = RuleForm()
    editing = request.query_params.get("edit")
    if editing:
        console = console_of(request)
        rule = await run_blocking(load_rule, console.redis, console.layout, editing)
        if rule is None:
            return await _page(request, form, f"edit: no rule {editing!r} (deleted meanwhile?)", 404)
        form = RuleForm(
            id=rule.id,
            name=rule.name,
            kind=rule.kind,
            target=rule.target,
            threshold=f"{rule.threshold:g}",
            window_minutes=str(rule.window_minutes),
            has_webhook=True,
        )
    return await _page(request, form)


async def fragment(request: Request) -> Response:
    """The rules' states and the firings, for the page's live refresh."""
    return render(request, "alerts_state.html", **(await run_blocking(_view, request)))


def _text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _rule_from(form: FormData, stored: AlertRule | None) -> AlertRule:
    """The rule the form describes; AlertError naming the field that is wrong."""
    kind = _text(form, "kind")
    if kind not in KINDS:
        raise AlertError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    try:
        threshold = float(_text(form, "threshold"))
    except ValueError:
        raise AlertError(f"threshold: {_text(form, 'threshold')!r} is not a number") from None
    if not math.isfinite(threshold):
        raise AlertError("threshold: must be a finite number")
    window_text = _text(form, "window_minutes") or "5"
    if not (window_text.isascii() and window_text.isdigit() and len(window_text) <= 6):
        raise AlertError(f"window_minutes: {window_text!r} is not a whole number of minutes")
    url = _text(form, "webhook_url")
    if not url and stored is not None:
        url = stored.webhook_url  # an edit that leaves the field empty keeps the URL
    return AlertRule(
        id=stored.id if stored else new_rule_id(),
        name=_text(form, "name"),
        kind=kind,  # type: ignore[arg-type]
        target=_text(form, "target"),
        threshold=threshold,
        window_minutes=int(window_text),
        webhook_url=url,
    )


async def save(request: Request) -> Response:
    form = await form_with_csrf(request)
    console = console_of(request)
    rule_id = _text(form, "id")
    stored = await run_blocking(load_rule, console.redis, console.layout, rule_id) if rule_id else None
    shown = RuleForm(
        id=rule_id,
        name=_text(form, "name"),
        kind=_text(form, "kind"),
        target=_text(form, "target"),
        threshold=_text(form, "threshold"),
        window_minutes=_text(form, "window_minutes"),
        has_webhook=stored is not None,
    )
    if rule_id and stored is None:
        return await _page(request, RuleForm(), f"id: no rule {rule_id!r} (deleted meanwhile?)", 404)
    try:
        rule = check_rule(
            _rule_from(form, stored),
            {d.id for d in console.config.destinations},
            {s.id for s in console.config.sources},
        )
    except AlertError as exc:
        return await _page(request, shown, str(exc), 400)
    if not await run_blocking(save_rule, console.redis, console.layout, rule):
        return await _page(request, shown, "too many rules: delete one first", 400)
    return RedirectResponse(f"/alerts?saved={rule.id}", status_code=303)


async def remove(request: Request) -> Response:
    await form_with_csrf(request)
    console = console_of(request)
    rule_id = request.path_params["rule_id"]
    if not await run_blocking(delete_rule, console.redis, console.layout, rule_id):
        return await _page(request, RuleForm(), f"delete: no rule {rule_id!r}", 404)
    return RedirectResponse("/alerts?deleted=1", status_code=303)


ROUTES = [
    Route("/alerts", page(_storage(alerts)), methods=["GET"]),
    Route("/alerts", page(_storage(save)), methods=["POST"], name="alerts_save"),
    Route("/alerts/fragment", page(_storage(fragment))),
    Route("/alerts/{rule_id}/delete", page(_storage(remove)), methods=["POST"]),
]
