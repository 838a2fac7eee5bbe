"""The building blocks of config shapes, shared by the config and the destination plug-ins.

They live in the core so that a destination type depends on the core, never the other way round.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

import msgspec

# Ids end up in Redis key names and queue names: keep them to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Ident = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config tables: a misspelt key is an error, not silently ignored."""


Operator = Literal[
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "starts_with",
    "not_starts_with",
    "ends_with",
    "not_ends_with",
    "matches",
    "not_matches",
    "exists",
    "not_exists",
    "is_empty",
    "greater_than",
    "less_than",
    "in",
    "not_in",
]
Scalar = str | int | float | bool

# What each operator needs as its `value` (docs/CONTRACT.md §6, filters).
NO_VALUE_OPERATORS = frozenset({"exists", "not_exists", "is_empty"})
LIST_OPERATORS = frozenset({"in", "not_in"})
TEXT_OPERATORS = frozenset({"starts_with", "not_starts_with", "ends_with", "not_ends_with", "matches", "not_matches"})
NUMBER_OPERATORS = frozenset({"greater_than", "less_than"})

# A property path, the grammar of a source spec's paths (trackpipe.specification, which cannot be
# imported here: it imports this module): names joined by dots, `[]` after an array's name.
_PATH_SEGMENT = r"[^.\[\]\s]+(?:\[\])*"
FILTER_PATH_PATTERN = re.compile(rf"^{_PATH_SEGMENT}(?:\.{_PATH_SEGMENT})*$")


def _kind(value: object) -> str:
    if isinstance(value, bool):  # before int: True is an int to Python
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list"


class Condition(Strict):
    # A dotted path from the event's root: "value", "user.email", "items[].product.brand" (any element).
    path: str
    op: Operator
    # The operand: a scalar, or a list for in / not_in; none for exists / not_exists / is_empty.
    value: Scalar | list[Scalar] | None = None

    def problems(self, where: str) -> list[str]:
        problems = []
        if not FILTER_PATH_PATTERN.match(self.path):
            if not self.path:
                why = "is empty"
            elif re.search(r"\[[^\]]+\]", self.path):
                why = f"{self.path!r}: use `[]` for the elements of an array (any element), not an index"
            else:
                why = (
                    f"{self.path!r} is not a property path: names joined by dots, `[]` after an array's "
                    "name, no white space (e.g. 'value', 'user.email', 'items[].product.brand')"
                )
            problems.append(f"{where}.path: {why}")
        return problems + self._value_problems(f"{where}.value")

    def _value_problems(self, where: str) -> list[str]:
        op, value = self.op, self.value
        if op in NO_VALUE_OPERATORS:
            if value is not None:
                return [f"{where}: {op} takes no value (it looks at the property alone); remove it"]
            return []
        if value is None:
            example = '["a", "b"]' if op in LIST_OPERATORS else "10" if op in NUMBER_OPERATORS else '"x"'
            return [f"{where}: {op} needs a value (e.g. value = {example})"]
        if op in LIST_OPERATORS:
            if not isinstance(value, list):
                return [f"{where}: {op} needs a list of values (e.g. [{_toml(value)}]), not {_kind(value)}"]
            if not value:
                return [f"{where}: {op} needs at least one value in its list"]
            return [f"{where}[{i}]: {_nan_problem(v)}" for i, v in enumerate(value) if _nan_problem(v)]
        if isinstance(value, list):
            alternative = {"equals": " (use in for a list)", "not_equals": " (use not_in for a list)"}.get(op, "")
            return [f"{where}: {op} needs a single value, not a list{alternative}"]
        if op in NUMBER_OPERATORS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return [f"{where}: {op} needs a number (e.g. 10 or 9.5, without quotes), not {_kind(value)}"]
        elif op in TEXT_OPERATORS and not isinstance(value, str):
            return [f"{where}: {op} needs a string (in quotes), not {_kind(value)}"]
        if _nan_problem(value):
            return [f"{where}: {_nan_problem(value)}"]
        if op in ("matches", "not_matches"):
            return [f"{where}: {problem}" for problem in _regex_problems(str(value))]
        return []


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _nan_problem(value: object) -> str | None:
    # TOML has nan and inf; no event value equals nan, and inf compares with nothing useful.
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    return None


def _regex_problems(pattern: str) -> list[str]:
    try:
        re.compile(pattern)
    except re.error as exc:
        where = ""
        if exc.pos is not None:
            # Point at the part that broke: the pattern from there on (Python's `re` syntax).
            rest = pattern[exc.pos :]
            where = f" at position {exc.pos}: {rest[:20]!r}{'…' if len(rest) > 20 else ''}" if rest else " at its end"
        return [f"{pattern!r} is not a regular expression: {exc.msg}{where}"]
    return []


class Filters(Strict):
    """A destination's filters on any property, the vendor's operators combined with all or any
    (applied by workers.filters)."""

    match: Literal["all", "any"] = "all"
    conditions: list[Condition] = msgspec.field(default_factory=list)

    def problems(self, where: str) -> list[str]:
        """Checks the types cannot express, each naming its key under `where`."""
        if not self.conditions:
            return [f"{where}.conditions: needs at least one condition (or leave out the filters table)"]
        problems: list[str] = []
        for i, condition in enumerate(self.conditions):
            problems += condition.problems(f"{where}.conditions[{i}]")
        return problems


class RetryConfig(Strict):
    max_attempts: PositiveInt = 6
    backoff_seconds: Annotated[list[PositiveFloat], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0, 600.0, 3600.0]
    )


class DestinationBase(Strict, kw_only=True):
    """What every destination table has; routing (workers.routing) reads only these fields."""

    id: Ident
    sources: list[str] | None = None  # None: every source
    events: list[str] | None = None  # None: every event name
    consent_category: str | None = None
    # Conditions on any property (workers.filters): an event that fails them is FILTERED here.
    filters: Filters | None = None
    # Build and record each request (the destination inspector shows it), send nothing.
    dry_run: bool = False
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)

    def problems(self, where: str) -> list[str]:
        """Checks the types cannot express, each naming its key under `where`."""
        return []

    def secrets(self) -> list[str]:
        """Values never shown in logs, error reasons, dead letters, pages or the destination inspector."""
        return []
