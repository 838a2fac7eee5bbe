"""A destination's filters on any property (docs/CONTRACT.md §6, filters), as pure functions.

The operators are the vendor's (destination-filters page: is, isn't, contains, starts/ends with, match
regex, exists, is empty and their negations; the advanced mode's > and <), plus `in` / `not_in`.
What they mean here, where the vendor page says nothing:

- Comparisons are case-sensitive, as the vendor's "is" is; `matches "(?i)^web"` ignores case.
- The config value's type decides how `equals`, `contains` (on a list) and `in` compare, as in the
  vendor's advanced mode (a value without quotes is a number): a number matches an equal number
  (10 and 10.0) or a string holding that decimal number ("10", "10.0"); a string matches only the
  same string; a boolean only the same boolean.
- `contains` on a string looks for a substring (a string value only); on a list, for an element
  equal to the value. The other text operators (`starts_with`, `ends_with`, `matches`) look at
  strings only; `matches` finds the expression anywhere in the string (Python `re.search`).
- `greater_than` / `less_than` take a number and compare numbers, or strings holding a decimal
  number; anything else, a missing property included, fails.
- Missing (absent or null): `exists` fails, `is_empty` passes (as for "", [] and {}).
- Every `not_*` operator is exactly the negation of its positive one: `not_equals` passes on a
  missing property, and on an `items[]` path it passes when *no* element matches, while a positive
  operator passes when *any* element does. A `[]` over an empty array has no elements.

Each Filters object is compiled once (paths split, regular expressions compiled, `in` lists made
sets); destinations without filters never reach this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from trackpipe.specification import EACH, Step, parse_path
from trackpipe.types import Condition, Filters, Scalar

_MISSING: Any = object()
# A string that stands for a number: JSON's number grammar (leading zeros allowed), nothing around it.
_NUMBER_TEXT = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")

Test = Callable[[Any], bool]  # one candidate value (or _MISSING) -> does it satisfy the positive operator


def _number(value: Any) -> int | float | None:
    """The value as a number, for a number or a string holding one; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        return int(value) if value.lstrip("-").isdigit() else float(value)
    return None


def _equal_to(expected: Scalar) -> Test:
    if isinstance(expected, bool):
        return lambda v: isinstance(v, bool) and v is expected
    if isinstance(expected, str):
        return lambda v: isinstance(v, str) and v == expected

    def number_equal(v: Any) -> bool:
        n = _number(v)
        return n is not None and n == expected

    return number_equal


def _member_of(values: list[Scalar]) -> Test:
    strings = {v for v in values if isinstance(v, str)}
    booleans = {v for v in values if isinstance(v, bool)}
    numbers = {v for v in values if not isinstance(v, bool | str)}

    def member(v: Any) -> bool:
        if isinstance(v, bool):
            return v in booleans
        if isinstance(v, str) and v in strings:
            return True
        n = _number(v)
        return n is not None and n in numbers

    return member


def _is_empty(v: Any) -> bool:
    return v is _MISSING or v is None or (isinstance(v, str | list | dict) and not v)


def _positive_test(condition: Condition) -> Test:
    """The test of the positive form of the condition's operator (`not_x` is the negation of `x`)."""
    op = condition.op.removeprefix("not_")
    value = condition.value
    if op == "exists":
        return lambda v: v is not _MISSING and v is not None
    if op == "is_empty":
        return _is_empty
    if op == "in":
        assert isinstance(value, list)  # Filters.problems refuses anything else
        return _member_of(value)
    assert value is not None and not isinstance(value, list)
    if op == "equals":
        return _equal_to(value)
    if op == "contains":
        element = _equal_to(value)
        text = value if isinstance(value, str) else None

        def contains(v: Any) -> bool:
            if isinstance(v, str):
                return text is not None and text in v
            return isinstance(v, list) and any(element(e) for e in v)

        return contains
    if op in ("starts_with", "ends_with"):
        affix = str(value)
        if op == "starts_with":
            return lambda v: isinstance(v, str) and v.startswith(affix)
        return lambda v: isinstance(v, str) and v.endswith(affix)
    if op == "matches":
        search = re.compile(str(value)).search
        return lambda v: isinstance(v, str) and search(v) is not None
    if op in ("greater_than", "less_than"):
        bound = value
        if op == "greater_than":
            return lambda v: (n := _number(v)) is not None and n > bound
        return lambda v: (n := _number(v)) is not None and n < bound
    raise ValueError(f"unknown operator {condition.op!r}")


def _candidates(event: Any, steps: tuple[Step, ...]) -> list[Any]:
    """The values the path reaches: one per element for each `[]`, `_MISSING` where it stops."""
    values = [event]
    for step in steps:
        reached: list[Any] = []
        for value in values:
            if step is EACH:
                if isinstance(value, list):
                    reached.extend(value)
                else:
                    reached.append(_MISSING)
            elif isinstance(value, dict):
                reached.append(value.get(step, _MISSING))
            else:
                reached.append(_MISSING)
        values = reached
    return values


def _compile_condition(condition: Condition) -> Callable[[dict[str, Any]], bool]:
    steps = parse_path(condition.path)
    if steps is None:
        raise ValueError(f"not a property path: {condition.path!r}")  # Filters.problems refuses it first
    test = _positive_test(condition)
    positive: Callable[[dict[str, Any]], bool]
    if EACH not in steps:
        # The common case, a plain dotted path: one value, no list built.
        def positive(event: dict[str, Any]) -> bool:
            value: Any = event
            for step in steps:
                value = value.get(step, _MISSING) if isinstance(value, dict) else _MISSING
                if value is _MISSING:
                    break
            return test(value)

    else:

        def positive(event: dict[str, Any]) -> bool:
            return any(test(v) for v in _candidates(event, steps))

    if condition.op.startswith("not_"):
        return lambda event: not positive(event)
    return positive


def describe(condition: Condition, index: int) -> str:
    """`conditions[1] (value greater_than 10)`: how the inspector names a condition (the config's
    own words; never the event's value, which may be personal data)."""
    if condition.value is None:
        return f"conditions[{index}] ({condition.path} {condition.op})"
    return f"conditions[{index}] ({condition.path} {condition.op} {msgspec.json.encode(condition.value).decode()})"


class Compiled:
    __slots__ = ("filters", "match_all", "tests")

    def __init__(self, filters: Filters) -> None:
        self.filters = filters  # held so that its id is not reused while cached
        self.match_all = filters.match == "all"
        self.tests = [_compile_condition(c) for c in filters.conditions]

    def passes(self, event: dict[str, Any]) -> bool:
        if self.match_all:
            return all(test(event) for test in self.tests)
        return any(test(event) for test in self.tests)


# id(filters) -> compiled: a config's filters live as long as the process.
_cache: dict[int, Compiled] = {}
_CACHE_LIMIT = 256


def compiled(filters: Filters) -> Compiled:
    entry = _cache.get(id(filters))
    if entry is not None and entry.filters is filters:
        return entry
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    made = _cache[id(filters)] = Compiled(filters)
    return made


def passes(filters: Filters, event: dict[str, Any]) -> bool:
    """True if the event satisfies the filters (all or any of the conditions, per `match`)."""
    return compiled(filters).passes(event)


def first_failed(filters: Filters, event: dict[str, Any]) -> str | None:
    """Why the event fails the filters, naming the condition (None if it passes): with `match = "all"`
    the first condition it fails; with `"any"`, that none was met."""
    made = compiled(filters)
    if made.match_all:
        for i, test in enumerate(made.tests):
            if not test(event):
                return f"{describe(filters.conditions[i], i)} not met"
        return None
    if any(test(event) for test in made.tests):
        return None
    if len(filters.conditions) == 1:
        return f"{describe(filters.conditions[0], 0)} not met"
    return f"none of its {len(filters.conditions)} conditions met (match = any)"
