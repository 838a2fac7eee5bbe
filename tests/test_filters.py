"""Destination filters on any property (docs/CONTRACT.md §6): workers.filters and the config checks
of trackpipe.types.Filters."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.support import TEST_KEY, HookServer, poll_until, running_console, running_edge, start_worker, stop_worker
from tooling.examples import V2_EXAMPLE
from trackpipe.config import ConfigError, parse
from trackpipe.specification import PATH_PATTERN
from trackpipe.types import FILTER_PATH_PATTERN, Filters, Operator
from workers import filters as filters_module
from workers.filters import compiled, first_failed, passes


def make(*conditions: dict[str, Any], match: str = "all") -> Filters:
    made = msgspec.convert({"match": match, "conditions": list(conditions)}, Filters)
    assert made.problems("filters") == [], "test filters must be valid"
    return made


def check(path: str, op: str, value: Any, event: dict[str, Any]) -> bool:
    condition: dict[str, Any] = {"path": path, "op": op}
    if value is not None:
        condition["value"] = value
    return passes(make(condition), event)


PURCHASE: dict[str, Any] = {
    "event_name": "purchase",
    "value": 42.5,
    "revenue": 35,
    "currency": "EUR",
    "coupon": "",
    "tax": None,
    "count": "10",
    "tags": ["sale", "new", 7],
    "user": {"id": "7", "email": "Ann@Example.com", "consent_categories": ["1", "3"], "member": True},
    "items": [
        {"id": "SKU-9", "quantity": 1, "product": {"name": "Mug", "brand": "Acme", "price": 35}},
        {"id": "SKU-10", "quantity": 2, "product": {"name": "Cup", "price": "4.5"}},
    ],
    "empty_list": [],
    "empty_object": {},
}

# (path, op, value, expected) on PURCHASE; every operator, on present, missing, null and odd values.
CASES = [
    # equals / not_equals: case-sensitive; the config's type decides the comparison
    ("currency", "equals", "EUR", True),
    ("currency", "equals", "eur", False),
    ("currency", "not_equals", "eur", True),
    ("currency", "not_equals", "EUR", False),
    ("revenue", "equals", 35, True),
    ("revenue", "equals", 35.0, True),
    ("revenue", "equals", "35", False),  # a string matches only a string
    ("count", "equals", 10, True),  # a number matches a string holding it
    ("count", "equals", 10.0, True),
    ("count", "equals", "10", True),
    ("count", "equals", 11, False),
    ("value", "equals", 42.5, True),
    ("user.member", "equals", True, True),
    ("user.member", "equals", 1, False),  # booleans are not numbers
    ("user.member", "equals", "true", False),
    ("revenue", "equals", True, False),
    ("missing", "equals", "x", False),
    ("missing", "not_equals", "x", True),  # a missing property is not equal to anything
    ("tax", "equals", "", False),
    ("tax", "not_equals", "", True),
    ("user.id", "equals", "7", True),
    ("user.id", "equals", 7, True),
    ("user", "equals", "7", False),  # an object equals no scalar
    ("user.id.deeper", "equals", "7", False),  # a path through a string
    # contains: substring of a string, element of a list
    ("user.email", "contains", "@Example", True),
    ("user.email", "contains", "@example", False),
    ("user.email", "not_contains", "@example", True),
    ("tags", "contains", "sale", True),
    ("tags", "contains", "sal", False),  # an element, not a substring of one
    ("tags", "contains", 7, True),
    ("tags", "contains", "7", False),
    ("tags", "not_contains", "old", True),
    ("tags", "not_contains", "new", False),
    ("revenue", "contains", 3, False),  # a number contains nothing
    ("count", "contains", 1, False),  # a number never matches inside a string
    ("missing", "contains", "x", False),
    ("missing", "not_contains", "x", True),
    ("user", "contains", "id", False),  # not a key lookup: use exists
    # starts_with / ends_with (strings only)
    ("user.email", "starts_with", "Ann", True),
    ("user.email", "starts_with", "ann", False),
    ("user.email", "not_starts_with", "ann", True),
    ("user.email", "not_starts_with", "Ann", False),
    ("user.email", "ends_with", ".com", True),
    ("user.email", "ends_with", ".org", False),
    ("user.email", "not_ends_with", ".org", True),
    ("user.email", "not_ends_with", ".com", False),
    ("revenue", "starts_with", "3", False),
    ("missing", "starts_with", "", False),
    ("missing", "not_ends_with", "x", True),
    ("missing", "ends_with", "", False),
    ("missing", "not_starts_with", "", True),
    ("coupon", "starts_with", "", True),
    # matches / not_matches: found anywhere, Python syntax, case by the pattern
    ("user.email", "matches", r"@example\.com$", False),
    ("user.email", "matches", r"(?i)@example\.com$", True),
    ("user.email", "matches", r"^A.n@", True),
    ("user.email", "matches", "Example", True),
    ("user.email", "not_matches", r"\d", True),
    ("user.email", "not_matches", "Ann", False),
    ("revenue", "matches", "35", False),  # strings only
    ("missing", "matches", ".*", False),
    ("missing", "not_matches", "x", True),
    # exists / not_exists: null is absent
    ("currency", "exists", None, True),
    ("coupon", "exists", None, True),
    ("empty_list", "exists", None, True),
    ("tax", "exists", None, False),
    ("missing", "exists", None, False),
    ("user.missing", "exists", None, False),
    ("currency.deeper", "exists", None, False),
    ("currency", "not_exists", None, False),
    ("tax", "not_exists", None, True),
    ("missing", "not_exists", None, True),
    # is_empty: missing, null, "", [] and {}; 0 and false are values
    ("coupon", "is_empty", None, True),
    ("tax", "is_empty", None, True),
    ("missing", "is_empty", None, True),
    ("empty_list", "is_empty", None, True),
    ("empty_object", "is_empty", None, True),
    ("currency", "is_empty", None, False),
    ("tags", "is_empty", None, False),
    ("user", "is_empty", None, False),
    # greater_than / less_than: numbers and strings holding one
    ("value", "greater_than", 10, True),
    ("value", "greater_than", 42.5, False),
    ("value", "less_than", 42.5, False),
    ("value", "less_than", 42.6, True),
    ("count", "greater_than", 9, True),
    ("count", "less_than", 9.5, False),
    ("items[].product.price", "less_than", 5, True),  # "4.5"
    ("currency", "greater_than", 0, False),
    ("user.member", "greater_than", 0, False),  # a boolean is not a number
    ("missing", "greater_than", 0, False),
    ("missing", "less_than", 0, False),
    ("tax", "less_than", 1, False),
    # in / not_in
    ("currency", "in", ["USD", "EUR"], True),
    ("currency", "in", ["USD", "eur"], False),
    ("currency", "not_in", ["USD", "GBP"], True),
    ("currency", "not_in", ["USD", "EUR"], False),
    ("revenue", "in", [10, 35.0], True),
    ("count", "in", [10], True),  # "10" holds 10
    ("revenue", "in", ["35"], False),
    ("user.member", "in", [1, "true"], False),
    ("user.member", "in", [True], True),
    ("revenue", "in", [True], False),
    ("missing", "in", ["x"], False),
    ("missing", "not_in", ["x"], True),
    ("tags", "in", ["sale"], False),  # a list is not in a list of scalars: use contains or tags[]
    # [] paths: any element for positive operators, no element for negated ones
    ("items[].product.brand", "equals", "Acme", True),
    ("items[].product.brand", "not_equals", "Acme", False),
    ("items[].product.brand", "not_equals", "Other", True),
    ("items[].product.name", "in", ["Cup"], True),
    ("items[].product.name", "not_in", ["Cup"], False),
    ("items[].product.name", "not_in", ["Plate"], True),
    ("items[].quantity", "greater_than", 1, True),
    ("items[].quantity", "greater_than", 2, False),
    ("items[].product.brand", "exists", None, True),
    ("items[].product.brand", "not_exists", None, False),  # one element has it
    ("items[].product.brand", "is_empty", None, True),  # the second has none
    ("items[].id", "starts_with", "SKU-1", True),
    ("items[].id", "not_starts_with", "SKU", False),
    ("items[].id", "matches", "^SKU-\\d+$", True),
    ("tags[]", "equals", "new", True),
    ("tags[]", "not_equals", "new", False),
    ("tags[]", "contains", "ew", True),  # each element is a string
    ("empty_list[].x", "equals", 1, False),  # no elements
    ("empty_list[].x", "not_equals", 1, True),
    ("empty_list[].x", "exists", None, False),
    ("empty_list[].x", "is_empty", None, False),
    ("missing[].x", "exists", None, False),
    ("missing[].x", "is_empty", None, True),
    ("missing[].x", "not_equals", 1, True),
    ("currency[]", "equals", "EUR", False),  # not an array
    ("user.consent_categories[]", "equals", "3", True),
    ("user.consent_categories[]", "equals", 3, True),
]


@pytest.mark.parametrize(("path", "op", "value", "expected"), CASES, ids=lambda v: repr(v))
def test_operator(path: str, op: str, value: Any, expected: bool) -> None:
    assert check(path, op, value, PURCHASE) is expected


def test_every_operator_is_covered_on_present_and_missing_properties() -> None:
    ops = {op for _, op, _, _ in CASES}
    assert ops == set(Operator.__args__)
    on_missing = {op for path, op, _, _ in CASES if path == "missing"}
    assert on_missing == set(Operator.__args__)


NESTED = {"orders": [{"lines": [{"sku": "A"}, {"sku": "B"}]}, {"lines": [{"sku": "C"}]}, {"lines": "odd"}]}


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [("equals", "C", True), ("equals", "D", False), ("not_equals", "C", False), ("not_in", ["X", "Y"], True)],
)
def test_nested_array_paths_reach_every_element(op: str, value: Any, expected: bool) -> None:
    assert check("orders[].lines[].sku", op, value, NESTED) is expected


def test_array_of_arrays() -> None:
    event = {"grid": [[1, 2], [3]]}
    assert check("grid[][]", "equals", 3, event) is True
    assert check("grid[][]", "greater_than", 3, event) is False


def test_events_that_are_not_objects_anywhere_do_not_break_it() -> None:
    for event in ({"user": None}, {"user": []}, {"user": "x"}, {"items": {"a": 1}}, {"items": [None, 3, "x"]}):
        assert check("user.email", "exists", None, event) is False
        assert check("items[].id", "equals", "x", event) is False
        assert check("items[].id", "not_equals", "x", event) is True


NUMBER_TEXT = [
    ("10", True),
    ("10.0", True),
    ("1e1", True),
    ("-10", False),
    (" 10", False),  # nothing around the number
    ("10 ", False),
    ("1_0", False),  # Python's float() would take it; JSON would not
    ("0x0a", False),
    ("ten", False),
    ("", False),
    ("+10", False),
    ("inf", False),
]


@pytest.mark.parametrize(("text", "expected"), NUMBER_TEXT)
def test_which_strings_hold_a_number(text: str, expected: bool) -> None:
    assert check("n", "equals", 10, {"n": text}) is expected


def test_large_integers_compare_exactly() -> None:
    big = 2**63 + 1
    assert check("n", "equals", big, {"n": str(big)}) is True
    assert check("n", "equals", big, {"n": str(big - 1)}) is False
    assert check("n", "greater_than", big - 1, {"n": big}) is True


# --- all / any ------------------------------------------------------------------------------------

HIGH = {"path": "value", "op": "greater_than", "value": 40}
EUR = {"path": "currency", "op": "equals", "value": "EUR"}
USD = {"path": "currency", "op": "equals", "value": "USD"}
LOW = {"path": "value", "op": "less_than", "value": 10}


@pytest.mark.parametrize(
    ("conditions", "match", "expected"),
    [
        ([HIGH, EUR], "all", True),
        ([HIGH, USD], "all", False),
        ([LOW, USD], "all", False),
        ([HIGH, USD], "any", True),
        ([LOW, EUR], "any", True),
        ([LOW, USD], "any", False),
        ([USD], "any", False),
        ([EUR], "any", True),
    ],
)
def test_all_and_any(conditions: list[dict[str, Any]], match: str, expected: bool) -> None:
    assert passes(make(*conditions, match=match), PURCHASE) is expected


def test_match_defaults_to_all() -> None:
    made = msgspec.convert({"conditions": [HIGH, USD]}, Filters)
    assert made.match == "all"
    assert passes(made, PURCHASE) is False


def test_first_failed_names_the_condition_never_the_value() -> None:
    assert first_failed(make(HIGH, EUR), PURCHASE) is None
    assert first_failed(make(HIGH, USD, LOW), PURCHASE) == 'conditions[1] (currency equals "USD") not met'
    assert first_failed(make(LOW, USD, match="any"), PURCHASE) == "none of its 2 conditions met (match = any)"
    assert first_failed(make(USD, match="any"), PURCHASE) == 'conditions[0] (currency equals "USD") not met'
    assert first_failed(make(LOW, EUR, match="any"), PURCHASE) is None
    reason = first_failed(make({"path": "user.email", "op": "not_exists"}), PURCHASE)
    assert reason == "conditions[0] (user.email not_exists) not met"
    assert "Ann@" not in reason
    listed = first_failed(make({"path": "currency", "op": "in", "value": ["USD", 5]}), PURCHASE)
    assert listed == 'conditions[0] (currency in ["USD",5]) not met'


def test_compiled_once_per_filters_object(monkeypatch: pytest.MonkeyPatch) -> None:
    made = make({"path": "user.email", "op": "matches", "value": "^Ann"}, HIGH)
    compiles = []
    real = re.compile
    monkeypatch.setattr(filters_module.re, "compile", lambda *a: compiles.append(a) or real(*a))
    for _ in range(50):
        assert passes(made, PURCHASE) is True
    assert compiles == [("^Ann",)]
    assert compiled(made) is compiled(made)
    # An equal but distinct object (a reloaded config) gets its own, correct, compilation.
    other = make({"path": "user.email", "op": "matches", "value": "^Bob"}, HIGH)
    assert passes(other, PURCHASE) is False
    assert passes(made, PURCHASE) is True


def test_the_input_event_is_not_changed() -> None:
    before = copy.deepcopy(PURCHASE)
    every = [
        make({"path": path, "op": op, **({} if value is None else {"value": value})}) for path, op, value, _ in CASES
    ]
    for made in every:
        passes(made, PURCHASE)
        first_failed(made, PURCHASE)
    assert PURCHASE == before


# --- paths: the same grammar as a source spec's ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "value",
        "user.email",
        "items[].product.brand",
        "a[][]",
        "x-y_z.1",
        "é.ü",
        "",
        "a..b",
        ".a",
        "a.",
        "a b",
        "items[0]",
        "[]",
        "a[]b",
        "a.[]",
        "a[ ]",
        "a\tb",
    ],
)
def test_filter_paths_have_the_spec_grammar(path: str) -> None:
    assert bool(FILTER_PATH_PATTERN.match(path)) is bool(PATH_PATTERN.match(path))


# --- config errors ------------------------------------------------------------------------------------

HEAD = """\
[[sources]]
id = "shop-web"
site_id = "29"
keys = ["a-plain-key-for-tests-0123"]

[[destinations]]
id = "lake"
type = "file"
path = "/tmp/lake"

[[destinations]]
id = "ga4-web"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
"""


def errors(filters_toml: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(HEAD + filters_toml, env={})
    return [line.removeprefix("config: ") for line in str(caught.value).splitlines()]


def condition(body: str) -> str:
    return f"[[destinations.filters.conditions]]\n{body}\n"


def test_a_good_filters_table_parses() -> None:
    config = parse(
        HEAD
        + """\
[destinations.filters]
match = "any"
[[destinations.filters.conditions]]
path = "value"
op = "greater_than"
value = 10
[[destinations.filters.conditions]]
path = "items[].product.brand"
op = "in"
value = ["Acme", "Zed"]
[[destinations.filters.conditions]]
path = "user.email"
op = "not_exists"
[[destinations.filters.conditions]]
path = "context.page.url"
op = "matches"
value = '^https://(www\\.)?shop\\.example/'
""",
        env={},
    )
    assert config.destinations[0].filters is None
    made = config.destinations[1].filters
    assert made is not None and made.match == "any"
    assert [c.op for c in made.conditions] == ["greater_than", "in", "not_exists", "matches"]
    assert passes(made, {"value": 5, "user": {"email": "x"}, "context": {"page": {"url": "https://shop.example/a"}}})
    assert not passes(made, {"value": 5, "user": {"email": "x"}, "context": {"page": {"url": "https://other/"}}})


CONFIG_ERRORS = [
    pytest.param(
        condition('path = "items[0].id"\nop = "exists"'),
        "destinations[1].filters.conditions[0].path: 'items[0].id': use `[]` for the elements of an array "
        "(any element), not an index",
        id="path-index",
    ),
    pytest.param(
        condition('path = "user email"\nop = "exists"'),
        "destinations[1].filters.conditions[0].path: 'user email' is not a property path: names joined by dots, "
        "`[]` after an array's name, no white space (e.g. 'value', 'user.email', 'items[].product.brand')",
        id="path-space",
    ),
    pytest.param(
        condition('path = ""\nop = "exists"'),
        "destinations[1].filters.conditions[0].path: is empty",
        id="path-empty",
    ),
    pytest.param(
        condition('path = "a..b"\nop = "exists"'),
        "destinations[1].filters.conditions[0].path: 'a..b' is not a property path",
        id="path-double-dot",
    ),
    pytest.param(
        condition('path = "url"\nop = "matches"\nvalue = "^(https?://"'),
        "destinations[1].filters.conditions[0].value: '^(https?://' is not a regular expression: "
        "missing ), unterminated subpattern at position 1: '(https?://'",
        id="regex-unterminated",
    ),
    pytest.param(
        condition('path = "url"\nop = "not_matches"\nvalue = "a{3,1}"'),
        "destinations[1].filters.conditions[0].value: 'a{3,1}' is not a regular expression: "
        "min repeat greater than max repeat at position 2: '3,1}'",
        id="regex-bad-repeat",
    ),
    pytest.param(
        condition('path = "url"\nop = "matches"\nvalue = "*.shop"'),
        "destinations[1].filters.conditions[0].value: '*.shop' is not a regular expression: nothing to repeat "
        "at position 0: '*.shop'",
        id="regex-glob",
    ),
    pytest.param(
        condition('path = "url"\nop = "matches"\nvalue = 5'),
        "destinations[1].filters.conditions[0].value: matches needs a string (in quotes), not a number",
        id="regex-not-string",
    ),
    pytest.param(
        condition('path = "currency"\nop = "equals"'),
        'destinations[1].filters.conditions[0].value: equals needs a value (e.g. value = "x")',
        id="missing-value",
    ),
    pytest.param(
        condition('path = "value"\nop = "greater_than"'),
        "destinations[1].filters.conditions[0].value: greater_than needs a value (e.g. value = 10)",
        id="missing-number",
    ),
    pytest.param(
        condition('path = "currency"\nop = "in"'),
        'destinations[1].filters.conditions[0].value: in needs a value (e.g. value = ["a", "b"])',
        id="missing-list",
    ),
    pytest.param(
        condition('path = "currency"\nop = "exists"\nvalue = "EUR"'),
        "destinations[1].filters.conditions[0].value: exists takes no value (it looks at the property alone); "
        "remove it",
        id="exists-with-value",
    ),
    pytest.param(
        condition('path = "currency"\nop = "not_exists"\nvalue = false'),
        "destinations[1].filters.conditions[0].value: not_exists takes no value",
        id="not-exists-with-value",
    ),
    pytest.param(
        condition('path = "coupon"\nop = "is_empty"\nvalue = ""'),
        "destinations[1].filters.conditions[0].value: is_empty takes no value",
        id="is-empty-with-value",
    ),
    pytest.param(
        condition('path = "currency"\nop = "equals"\nvalue = ["EUR", "USD"]'),
        "destinations[1].filters.conditions[0].value: equals needs a single value, not a list (use in for a list)",
        id="equals-list",
    ),
    pytest.param(
        condition('path = "currency"\nop = "not_equals"\nvalue = ["EUR"]'),
        "destinations[1].filters.conditions[0].value: not_equals needs a single value, not a list (use not_in "
        "for a list)",
        id="not-equals-list",
    ),
    pytest.param(
        condition('path = "tags"\nop = "contains"\nvalue = ["a"]'),
        "destinations[1].filters.conditions[0].value: contains needs a single value, not a list",
        id="contains-list",
    ),
    pytest.param(
        condition('path = "currency"\nop = "in"\nvalue = "EUR"'),
        'destinations[1].filters.conditions[0].value: in needs a list of values (e.g. ["EUR"]), not a string',
        id="in-scalar",
    ),
    pytest.param(
        condition('path = "currency"\nop = "not_in"\nvalue = []'),
        "destinations[1].filters.conditions[0].value: not_in needs at least one value in its list",
        id="not-in-empty",
    ),
    pytest.param(
        condition('path = "value"\nop = "greater_than"\nvalue = "10"'),
        "destinations[1].filters.conditions[0].value: greater_than needs a number (e.g. 10 or 9.5, without "
        "quotes), not a string",
        id="greater-than-string",
    ),
    pytest.param(
        condition('path = "value"\nop = "less_than"\nvalue = true'),
        "destinations[1].filters.conditions[0].value: less_than needs a number (e.g. 10 or 9.5, without quotes), "
        "not a boolean",
        id="less-than-boolean",
    ),
    pytest.param(
        condition('path = "value"\nop = "less_than"\nvalue = nan'),
        "destinations[1].filters.conditions[0].value: nan is not a finite number",
        id="nan",
    ),
    pytest.param(
        condition('path = "value"\nop = "in"\nvalue = [1, inf]'),
        "destinations[1].filters.conditions[0].value[1]: inf is not a finite number",
        id="inf-in-list",
    ),
    pytest.param(
        condition('path = "url"\nop = "starts_with"\nvalue = 5'),
        "destinations[1].filters.conditions[0].value: starts_with needs a string (in quotes), not a number",
        id="starts-with-number",
    ),
    pytest.param(
        '[destinations.filters]\nmatch = "any"\n',
        "destinations[1].filters.conditions: needs at least one condition (or leave out the filters table)",
        id="no-conditions",
    ),
    pytest.param(
        "[destinations.filters]\nconditions = []\n",
        "destinations[1].filters.conditions: needs at least one condition",
        id="empty-conditions",
    ),
    # What the types refuse, named by the decoder.
    pytest.param(
        condition('path = "currency"\nop = "is"\nvalue = "EUR"'),
        "destinations[1].filters.conditions[0].op: Invalid enum value 'is'",
        id="unknown-operator",
    ),
    pytest.param(
        '[destinations.filters]\nmatch = "some"\n' + condition('path = "a"\nop = "exists"'),
        "destinations[1].filters.match: Invalid enum value 'some'",
        id="unknown-match",
    ),
    pytest.param(
        condition('path = "a"\nop = "exists"\nnegate = true'),
        "destinations[1].filters.conditions[0].negate: unknown key",
        id="unknown-key",
    ),
    pytest.param(
        condition('path = "a"\nop = "in"\nvalue = [1, [2]]'),
        "destinations[1].filters.conditions[0].value[1]: Expected `bool | int | float | str`, got `array`",
        id="nested-list",
    ),
    pytest.param(
        condition('path = "a"\nop = "equals"\nvalue = { b = 1 }'),
        "destinations[1].filters.conditions[0].value: Expected",
        id="table-value",
    ),
]


@pytest.mark.parametrize(("toml", "expected"), CONFIG_ERRORS)
def test_config_errors_name_the_key_and_the_problem(toml: str, expected: str) -> None:
    found = errors(toml)
    assert any(line.startswith(expected) for line in found), found


def test_every_bad_condition_is_reported_at_once() -> None:
    found = errors(
        condition('path = "items[1]"\nop = "exists"')
        + condition('path = "ok"\nop = "equals"\nvalue = "fine"')
        + condition('path = "url"\nop = "matches"\nvalue = "(("')
        + condition('path = "bad path"\nop = "in"\nvalue = []')
    )
    assert [line.split(":")[0] for line in found] == [
        "destinations[1].filters.conditions[0].path",
        "destinations[1].filters.conditions[2].value",
        "destinations[1].filters.conditions[3].path",
        "destinations[1].filters.conditions[3].value",
    ]


# --- end to end: the edge, a worker, the console and two webhook receivers -------------------------------

E2E_TOKEN = "admin-token-0123456789"
DEADLINE = 60.0


def e2e_config(tmp_path: Path, redis_url: str, big_url: str, acme_url: str) -> Path:
    path = tmp_path / "trackpipe.toml"
    path.write_text(
        f"""\
redis_url = "{redis_url}"
admin_token = "{E2E_TOKEN}"

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{TEST_KEY}"]

[[destinations]]
id = "big-orders"
type = "webhook"
url = "{big_url}"
[destinations.filters]
[[destinations.filters.conditions]]
path = "value"
op = "greater_than"
value = 100

[[destinations]]
id = "acme"
type = "webhook"
url = "{acme_url}"
[destinations.filters]
match = "any"
[[destinations.filters.conditions]]
path = "items[].product.brand"
op = "equals"
value = "Acme"
[[destinations.filters.conditions]]
path = "context.page.url"
op = "matches"
value = '^https://acme\\.'
"""
    )
    return path


def _delivered_ids(server: HookServer) -> set[str]:
    return {e["context"]["event_id"] for r in server.requests() for e in json.loads(r.body)["batch"]}


@pytest.mark.slow
def test_each_destination_gets_the_events_its_filters_let_in(tmp_path: Path, valkey_url: str) -> None:
    def purchase(event_id: str, value: Any, brand: str, url: str = "https://shop.example/") -> dict[str, Any]:
        items = [{"id": "SKU-1", "quantity": 1, "product": {"name": "Mug", "price": 5, "brand": brand}}]
        context = {**V2_EXAMPLE["context"], "event_id": event_id, "page": {"url": url}}
        return {**V2_EXAMPLE, "value": value, "items": items, "context": context}

    events = [
        purchase("f-big-acme", 150, "Acme"),  # both
        purchase("f-big-zed", 250.5, "Zed"),  # big-orders only
        purchase("f-small-acme", 20, "Acme"),  # acme only (brand)
        purchase("f-small-page", 20, "Zed", "https://acme.shop.example/"),  # acme only (page)
        purchase("f-small-zed", 20, "Zed"),  # neither
    ]
    want = {"big-orders": {"f-big-acme", "f-big-zed"}, "acme": {"f-big-acme", "f-small-acme", "f-small-page"}}
    every = {e["context"]["event_id"] for e in events}
    with HookServer() as big, HookServer() as acme:
        config = e2e_config(tmp_path, valkey_url, big.url, acme.url)
        worker = start_worker(config, log=tmp_path / "worker.log")
        try:
            with running_edge(config) as edge, running_console(config, log=tmp_path / "console.log") as console:
                response = httpx.post(
                    f"{edge}/events/batch", params={"tc_s": "29", "token": TEST_KEY}, json={"batch": events}, timeout=10
                )
                assert response.status_code == 200, response.text
                poll_until(
                    lambda: _delivered_ids(big) == want["big-orders"] and _delivered_ids(acme) == want["acme"],
                    DEADLINE,
                    lambda: f"big-orders got {_delivered_ids(big)}, acme got {_delivered_ids(acme)}",
                )
                admin = {"Authorization": f"Bearer {E2E_TOKEN}"}

                def inspected() -> dict[str, dict[str, Any]]:
                    answer = httpx.get(f"{console}/admin/sources/shop-web/events", headers=admin, timeout=10)
                    assert answer.status_code == 200, answer.text
                    return {r["event_id"]: r for r in answer.json()["events"]}

                records = poll_until(
                    lambda: (found := inspected()) and every <= set(found) and found, DEADLINE, "inspector records"
                )
                views = {
                    d: httpx.get(f"{console}/admin/destinations/{d}/delivery", headers=admin, timeout=10).json()
                    for d in want
                }
        finally:
            stop_worker(worker)
    for event_id in every:
        expected = {d: "queued" if event_id in ids else "FILTERED" for d, ids in want.items()}
        assert records[event_id]["destinations"] == expected, event_id
        assert records[event_id]["status"] == "VALID", records[event_id]
    # Exactly the wanted events, nothing more (a late extra would be a repeat of a wanted one at most).
    assert _delivered_ids(big) == want["big-orders"]
    assert _delivered_ids(acme) == want["acme"]
    assert views["big-orders"]["last_hour"]["filtered"] == 3
    assert views["acme"]["last_hour"]["filtered"] == 2
