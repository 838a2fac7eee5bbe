"""A source's event specification (tracking plan): the config shape and its checks.

Applied to events by workers.specification; docs/CONTRACT.md §4 describes the rules.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import msgspec

from trackpipe.types import Strict

PropertyType = Literal["string", "number", "boolean", "object", "array"]
AllowedValue = str | int | float | bool

# One step of a property path: a name, then any number of `[]` (every element of an array).
_SEGMENT = r"[^.\[\]\s]+(?:\[\])*"
PATH_PATTERN = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*$")
_PARTS = re.compile(r"([^.\[\]]+)|(\[\])")
# `EACH` in a parsed path stands for `[]`.
EACH = None
Step = str | None

# Top-level keys every event may carry whatever its specification says (not "unspecified properties"):
# the name, trackpipe's and the vendor's metadata, the user, and the test marker the inspector reads.
ENVELOPE_KEYS = frozenset({"event_name", "context", "user", "test_code"})
SCALAR_TYPES = ("string", "number", "boolean")


def parse_path(path: str) -> tuple[Step, ...] | None:
    """`items[].product.name` -> ("items", EACH, "product", "name"); None if it is not a path."""
    if not PATH_PATTERN.match(path):
        return None
    return tuple(name if name else EACH for name, _ in _PARTS.findall(path))


def format_path(steps: tuple[Step, ...]) -> str:
    text = ""
    for step in steps:
        if step is EACH:
            text += "[]"
        else:
            text += f".{step}" if text else step
    return text


def type_of(value: object) -> str:
    """The specification's name for a JSON value's type ("null" for None)."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):  # before int: True is an int to Python, not to JSON
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


def matches_type(value: object, expected: str) -> bool:
    kind = type_of(value)
    if kind == "number" and isinstance(value, float) and not math.isfinite(value):
        return False  # 1e999 decodes to infinity: not a number anyone sent on purpose
    return kind == expected


class PropertySpec(Strict):
    # A dotted path from the event's root: "plan", "user.email", "items[].product.name".
    path: str
    type: PropertyType | None = None
    required: bool = False
    # When set, the value must be one of these.
    values: list[AllowedValue] | None = None


class EventSpec(Strict):
    # A custom event name, or a standard one (its catalogue properties still apply, these add to them).
    name: str
    properties: list[PropertySpec] = msgspec.field(default_factory=list)


class SourceSpec(Strict):
    """The tracking plan of one source and the vendor's four rule actions."""

    missing_required: Literal["accept", "reject"] = "accept"
    unexpected_format: Literal["omit", "accept", "reject"] = "omit"
    unspecified_events: Literal["accept", "warn", "reject"] = "accept"
    unspecified_properties: Literal["omit", "accept", "warn"] = "accept"
    events: list[EventSpec] = msgspec.field(default_factory=list)

    def problems(self, where: str) -> list[str]:
        """Checks the types cannot express, each naming its key under `where`."""
        problems: list[str] = []
        first_of: dict[str, int] = {}
        for i, event in enumerate(self.events):
            at = f"{where}.events[{i}]"
            if not event.name.strip():
                problems.append(f"{at}.name: is empty")
            elif event.name != event.name.strip():
                problems.append(f"{at}.name: {event.name!r} has white space at its ends")
            elif event.name in first_of:
                problems.append(f"{at}.name: {event.name!r} is already specified by events[{first_of[event.name]}]")
            else:
                first_of[event.name] = i
            problems += _event_problems(event, at)
        return problems


def _value_problems(prop: PropertySpec, at: str) -> list[str]:
    if prop.values is None:
        return []
    if prop.type in ("object", "array"):
        return [f"{at}.values: allowed values apply to strings, numbers and booleans, not to type {prop.type!r}"]
    if not prop.values:
        return [f"{at}.values: is empty, so no value could match (leave it out to allow any value)"]
    if prop.type is None:
        return []
    return [
        f"{at}.values[{k}]: {value!r} is not a {prop.type} (type = {prop.type!r})"
        for k, value in enumerate(prop.values)
        if not matches_type(value, prop.type)
    ]


def _event_problems(event: EventSpec, at: str) -> list[str]:
    problems: list[str] = []
    seen: dict[tuple[Step, ...], int] = {}
    # What each path (as parsed steps) must be, and which property says so: its own `type`, or
    # the shape a longer path needs ("user.email" needs `user` to be an object, "items[]" an array).
    needs: dict[tuple[Step, ...], tuple[str, int, str]] = {}  # steps -> (type, property, why)

    def need(steps: tuple[Step, ...], kind: str, k: int, key: str, why: str) -> None:
        earlier = needs.setdefault(steps, (kind, k, why))
        if earlier[0] != kind:
            problems.append(
                f"{at}.properties[{k}].{key}: {format_path(steps)!r}: {why}, but properties[{earlier[1]}] {earlier[2]}"
            )

    for k, prop in enumerate(event.properties):
        here = f"{at}.properties[{k}]"
        problems += _value_problems(prop, here)
        steps = parse_path(prop.path)
        if steps is None:
            problems.append(f"{here}.path: {_path_problem(prop.path)}")
            continue
        if steps in seen:
            problems.append(f"{here}.path: {prop.path!r} is already specified by properties[{seen[steps]}]")
            continue
        seen[steps] = k
        for n in range(1, len(steps)):
            kind = "array" if steps[n] is EACH else "object"
            need(steps[:n], kind, k, "path", f"{prop.path!r} needs it to be {_a(kind)}")
        if prop.type is not None:
            need(steps, prop.type, k, "type", f"gives it type {prop.type!r}")
    return problems


def _path_problem(path: str) -> str:
    if not path:
        return "is empty"
    if re.search(r"\[[^\]]+\]", path):
        return f"{path!r}: use `[]` for the elements of an array (every element), not an index"
    return (
        f"{path!r} is not a property path: names joined by dots, `[]` after an array's name, no white "
        "space (e.g. 'plan', 'user.email', 'items[].product.name')"
    )


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
