"""What becomes of an event's findings: the rules of data quality, as a pure function.

Findings come from the standard-event checks (workers.standard) and from the source's event
specification (trackpipe.specification), which `judge` checks here. Without a specification: a
property with a bad value is removed and the event accepted with a warning naming it (the vendor's
INVALID_ACCEPTED); a missing one is a warning. With one, its four rule actions decide (docs/CONTRACT.md §4).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from trackpipe.events import (
    NUMBER_PROPERTIES,
    STANDARD_EVENTS,
    VIDEO_BOOLEAN_PROPERTIES,
    VIDEO_EVENTS,
    VIDEO_NUMBER_PROPERTIES,
)
from trackpipe.specification import (
    EACH,
    ENVELOPE_KEYS,
    PropertySpec,
    SourceSpec,
    matches_type,
    parse_path,
    type_of,
)
from workers.status import Finding

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# A concrete location in an event: keys and list indexes from its root.
Location = tuple[str | int, ...]
Action = Literal["error", "warn", "remove", "silent"]


class Judgement(msgspec.Struct):
    event: dict[str, Any]
    warnings: list[str]
    errors: list[str]  # any error rejects the event


def _locate(path: str) -> Location:
    return tuple(name if name else int(index) for name, index in _STEP.findall(path))


def _remove(event: dict[str, Any], steps: Location) -> bool:
    if not steps:
        return False
    holder: Any = event
    for step in steps[:-1]:
        if isinstance(step, int):
            if not isinstance(holder, list) or step >= len(holder):
                return False
        elif not isinstance(holder, dict) or step not in holder:
            return False
        holder = holder[step]
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(holder, list) or last >= len(holder):
            return False
    elif not isinstance(holder, dict) or last not in holder:
        return False
    del holder[last]
    return True


def remove_path(event: dict[str, Any], path: str) -> bool:
    """Remove the property at `path` ("value", "items[0].product.price") in place; False if absent."""
    return _remove(event, _locate(path))


# --- the specification, compiled once per SourceSpec ------------------------------------------


class _Node(msgspec.Struct):
    """What the specification says about one place in an event, and about the places below it."""

    type: str | None = None  # declared, or needed by a longer path (object / array)
    required: bool = False
    allowed: frozenset[tuple[str, Any]] | None = None  # (type_of, value): True is not 1
    allowed_text: str = ""
    keys: dict[str, _Node] = msgspec.field(default_factory=dict)
    each: _Node | None = None  # the elements of an array (`[]`)


class _CompiledEvent(msgspec.Struct):
    root: _Node
    specified: frozenset[str]  # top-level keys that are not "unspecified properties"


class _Compiled(msgspec.Struct):
    events: dict[str, _CompiledEvent]


_STANDARD_CHECKED = frozenset({*NUMBER_PROPERTIES, "items", "currency", "payment_method"})
_VIDEO_EVENTS = frozenset(VIDEO_EVENTS)


def _value_key(value: Any) -> tuple[str, Any]:
    return (type_of(value), value)


def _compile_event(name: str, properties: list[PropertySpec]) -> _CompiledEvent:
    root = _Node(type="object")
    specified = set(ENVELOPE_KEYS)
    standard = STANDARD_EVENTS.get(name)
    if standard is not None:
        # The catalogue's properties: those it requires and those whose values it checks.
        specified.update(*standard, _STANDARD_CHECKED)
        if name in _VIDEO_EVENTS:
            specified.update(VIDEO_NUMBER_PROPERTIES, VIDEO_BOOLEAN_PROPERTIES)
    for prop in properties:
        steps = parse_path(prop.path)
        if steps is None:  # the config check refuses these; a hand-made spec just skips them
            continue
        specified.add(str(steps[0]))
        node = root
        for n, step in enumerate(steps):
            # The step's container: an array for `[]`, else an object (the config check refuses
            # contradictions, so the first word stands).
            node.type = node.type or ("array" if step is EACH else "object")
            if step is EACH:
                node.each = node.each or _Node()
                node = node.each
            else:
                node = node.keys.setdefault(step, _Node())
            if n == len(steps) - 1:
                node.type = prop.type or node.type
                node.required = node.required or prop.required
                if prop.values is not None:
                    node.allowed = frozenset(_value_key(v) for v in prop.values)
                    shown = ", ".join(repr(v) for v in prop.values[:10])
                    node.allowed_text = shown + (", ..." if len(prop.values) > 10 else "")
    return _CompiledEvent(root, frozenset(specified))


def _compile(spec: SourceSpec) -> _Compiled:
    events: dict[str, _CompiledEvent] = {}
    for event in spec.events:
        events.setdefault(event.name, _compile_event(event.name, event.properties))
    return _Compiled(events)


# id(spec) -> (spec, compiled): a config's specs live as long as the process; holding the spec
# keeps its id from being reused by another object.
_cache: dict[int, tuple[SourceSpec, _Compiled]] = {}
_CACHE_LIMIT = 256


def compiled(spec: SourceSpec) -> _Compiled:
    entry = _cache.get(id(spec))
    if entry is not None and entry[0] is spec:
        return entry[1]
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    made = _compile(spec)
    _cache[id(spec)] = (spec, made)
    return made


# --- checking an event against its specification ---------------------------------------------


def _text(steps: Location) -> str:
    text = ""
    for step in steps:
        if isinstance(step, int):
            text += f"[{step}]"
        else:
            text += f".{step}" if text else step
    return text


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Found(msgspec.Struct):
    finding: Finding
    steps: Location
    required: bool = False  # a bad value of a required property: removing it leaves it missing


def _missing(node: _Node, steps: Location, out: list[_Found]) -> None:
    """Report the outermost required places under an absent object (not under arrays: no elements)."""
    if node.required:
        path = _text(steps)
        out.append(_Found(Finding(path, f"{path} is missing (required by the specification)", "missing"), steps))
        return
    for key, child in node.keys.items():
        _missing(child, (*steps, key), out)


def _check(node: _Node, value: Any, steps: Location, out: list[_Found]) -> None:
    if value is None:
        _missing(node, steps, out)
        return
    if node.type is not None and not matches_type(value, node.type):
        path = _text(steps)
        message = f"{path} is {_a(type_of(value))}, not {_a(node.type)} as specified"
        out.append(_Found(Finding(path, message, "bad_value"), steps, node.required))
        return
    if node.allowed is not None and _value_key(value) not in node.allowed:
        path = _text(steps)
        message = f"{path} {_short(value)} is not one of the specified values ({node.allowed_text})"
        out.append(_Found(Finding(path, message, "bad_value"), steps, node.required))
        return
    if node.keys and isinstance(value, dict):
        for key, child in node.keys.items():
            _check(child, value.get(key), (*steps, key), out)
    if node.each is not None and isinstance(value, list):
        for i, element in enumerate(value):
            _check(node.each, element, (*steps, i), out)


def _spec_findings(event: dict[str, Any], spec: SourceSpec) -> list[_Found]:
    name = event.get("event_name")
    if not isinstance(name, str):  # normalization rejects these already
        return []
    plan = compiled(spec).events.get(name)
    if plan is None:
        message = f"event {name!r} is not in the source's specification"
        return [_Found(Finding("event_name", message, "unspecified_event"), ("event_name",))]
    out: list[_Found] = []
    for key, child in plan.root.keys.items():
        _check(child, event.get(key), (key,), out)
    if spec.unspecified_properties != "accept":
        for key in event:
            if key not in plan.specified:
                message = f"{key} is not in the specification of {name!r}"
                out.append(_Found(Finding(key, message, "unspecified_property"), (key,)))
    return out


# --- the rules ---------------------------------------------------------------------------------


# finding kind -> (the rule deciding it, its choice -> what is done)
_RULES: dict[str, tuple[str, dict[str, Action]]] = {
    "missing": ("missing_required", {"accept": "warn", "reject": "error"}),
    "bad_value": ("unexpected_format", {"omit": "remove", "accept": "warn", "reject": "error"}),
    "unspecified_event": ("unspecified_events", {"accept": "silent", "warn": "warn", "reject": "error"}),
    "unspecified_property": ("unspecified_properties", {"omit": "remove", "accept": "silent", "warn": "warn"}),
}


def _action(kind: str, spec: SourceSpec | None) -> tuple[Action, str]:
    """What the rules do with a finding of `kind`, and the rule that says so (for error texts)."""
    if spec is None:
        return ("remove" if kind == "bad_value" else "warn"), ""
    rule, choices = _RULES[kind]
    return choices[getattr(spec, rule)], rule


def _order(steps: Location) -> tuple[tuple[int, Any], ...]:
    # Removing deepest and highest indexes first keeps every other location valid (a list shifts
    # when an element goes); ints and strings never meet under one container, the tag just makes
    # the order total for nonsense paths.
    return tuple((0, s) if isinstance(s, int) else (1, s) for s in steps)


def _required_at(event: dict[str, Any], spec: SourceSpec, steps: Location) -> bool:
    """Whether the spec (or, for a standard event, the catalogue) requires the property at `steps`."""
    name = event.get("event_name")
    if not isinstance(name, str):
        return False
    standard = STANDARD_EVENTS.get(name)
    if standard is not None and len(steps) == 1 and steps[0] in standard[0]:
        return True
    plan = compiled(spec).events.get(name)
    node = plan.root if plan is not None else None
    for step in steps:
        if node is None:
            return False
        node = node.each if isinstance(step, int) else node.keys.get(step)
    return node is not None and node.required


# Missing properties the vendor reports as warnings on every event, whatever the rules: only a
# specification that itself requires one can reject an event for lacking it.
ADVISORY_PATHS = frozenset({"user.consistent_anonymous_id", "user.consent_categories"})


def _decide(found: _Found, spec: SourceSpec | None) -> tuple[Action, str]:
    """What is done with one finding, and its text as a warning or error."""
    finding = found.finding
    if finding.kind == "missing" and finding.path in ADVISORY_PATHS and not found.required:
        return "warn", finding.message
    action, rule = _action(finding.kind, spec)
    if action == "error":
        return action, f"{finding.message} ({rule} = reject)"
    if action == "remove" and spec is not None and spec.missing_required == "reject" and found.required:
        # Omitting a required property's bad value would deliver the event without it.
        return "error", f"{finding.message}; a required property cannot be omitted (missing_required = reject)"
    return action, finding.message


def judge(event: dict[str, Any], findings: list[Finding], spec: SourceSpec | None) -> Judgement:
    """Apply the rules to one normalized event (changed in place: removed properties).

    Without a spec: bad values removed with a warning, missing properties warned. With one, the
    event is checked against it too, and its rule actions decide every finding. A rejected event
    keeps its properties (the inspector shows what was sent)."""
    found = [_Found(f, _locate(f.path)) for f in findings]
    if spec is not None:
        already = {(f.path, f.kind) for f in findings}
        found += [f for f in _spec_findings(event, spec) if (f.finding.path, f.finding.kind) not in already]
        if spec.missing_required == "reject" and spec.unexpected_format == "omit":
            for f in found[: len(findings)]:
                f.required = f.finding.kind == "bad_value" and _required_at(event, spec, f.steps)
        for f in found[: len(findings)]:
            if f.finding.kind == "missing" and f.finding.path in ADVISORY_PATHS:
                f.required = _required_at(event, spec, f.steps)
    if not found:
        return Judgement(event, [], [])
    decided = [_decide(f, spec) for f in found]
    errors = [text for action, text in decided if action == "error"]
    removed: set[Location] = set()
    if not errors:
        targets = {f.steps for f, (action, _) in zip(found, decided, strict=True) if action == "remove"}
        for steps in sorted(targets, key=_order, reverse=True):
            if _remove(event, steps):
                removed.add(steps)
    warnings: list[str] = []
    for f, (action, text) in zip(found, decided, strict=True):
        if action == "remove":
            warnings.append(f"{text}; removed" if f.steps in removed else text)
        elif action == "warn":
            warnings.append(text)
    return Judgement(event, warnings, errors)
