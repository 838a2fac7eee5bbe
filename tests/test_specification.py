"""Event specifications (tracking plans): the config checks (trackpipe.specification) and the rules
applied to events (workers.specification.judge). Pure and fast: no Redis, no processes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trackpipe.config import ConfigError, parse
from trackpipe.specification import EventSpec, PropertySpec, SourceSpec, parse_path
from workers.specification import compiled, judge
from workers.status import Finding

SOURCE = """
[[sources]]
id = "web"
site_id = "29"
keys = ["a-plain-key-1"]
"""


def config_with(spec: str) -> str:
    return SOURCE + "[sources.spec]\n" + spec


def spec_of(toml: str) -> SourceSpec:
    spec = parse(config_with(toml), env={}).sources[0].spec
    assert spec is not None
    return spec


def error_of(toml: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(config_with(toml), env={})
    return str(info.value)


def plan(*properties: PropertySpec, name: str = "signup", **rules: str) -> SourceSpec:
    return SourceSpec(events=[EventSpec(name=name, properties=list(properties))], **rules)  # type: ignore[arg-type]


def event(**props: Any) -> dict[str, Any]:
    return {"event_name": "signup", "context": {"event_id": "e1"}, "user": {"id": "u1"}, **props}


# --- the config -----------------------------------------------------------------------------------

FULL_SPEC = """\
missing_required = "reject"
unexpected_format = "accept"
unspecified_events = "warn"
unspecified_properties = "omit"
[[sources.spec.events]]
name = "newsletter_signup"
[[sources.spec.events.properties]]
path = "plan"
type = "string"
required = true
values = ["free", "pro"]
[[sources.spec.events.properties]]
path = "items[].product.name"
type = "string"
[[sources.spec.events]]
name = "purchase"
[[sources.spec.events.properties]]
path = "coupon"
"""


def test_a_full_spec_decodes() -> None:
    spec = spec_of(FULL_SPEC)
    assert (spec.missing_required, spec.unexpected_format) == ("reject", "accept")
    assert (spec.unspecified_events, spec.unspecified_properties) == ("warn", "omit")
    assert [e.name for e in spec.events] == ["newsletter_signup", "purchase"]
    assert spec.events[0].properties[0] == PropertySpec(
        path="plan", type="string", required=True, values=["free", "pro"]
    )
    assert parse_path(spec.events[0].properties[1].path) == ("items", None, "product", "name")


def test_defaults_accept_everything_and_omit_bad_formats() -> None:
    spec = spec_of("")
    assert (spec.missing_required, spec.unexpected_format, spec.unspecified_events, spec.unspecified_properties) == (
        "accept",
        "omit",
        "accept",
        "accept",
    )


def one_property(body: str, name: str = "e") -> str:
    return f'[[sources.spec.events]]\nname = "{name}"\n[[sources.spec.events.properties]]\n{body}\n'


PROP = "config: sources[0].spec.events[0].properties[0]"


@pytest.mark.parametrize("path", ["a..b", ".a", "a.", "a b", "a[", "a]", "[]", "a[].", "a[]b"])
def test_bad_path_syntax_is_named(path: str) -> None:
    message = error_of(one_property(f'path = "{path}"'))
    assert message.startswith(f"{PROP}.path: {path!r} is not a property path")


def test_an_indexed_path_points_at_the_every_element_form() -> None:
    message = error_of(one_property('path = "items[0].name"'))
    assert (
        message == f"{PROP}.path: 'items[0].name': use `[]` for the elements of an array (every element), not an index"
    )


def test_an_empty_path_is_named() -> None:
    assert error_of(one_property('path = ""')) == f"{PROP}.path: is empty"


def test_event_names_empty_padded_or_twice() -> None:
    message = error_of('[[sources.spec.events]]\nname = ""\n[[sources.spec.events]]\nname = " x"\n')
    assert "config: sources[0].spec.events[0].name: is empty" in message
    assert "sources[0].spec.events[1].name: ' x' has white space at its ends" in message
    twice = error_of('[[sources.spec.events]]\nname = "signup"\n[[sources.spec.events]]\nname = "signup"\n')
    assert twice == "config: sources[0].spec.events[1].name: 'signup' is already specified by events[0]"


def test_a_path_twice_in_one_event() -> None:
    message = error_of(one_property('path = "plan"\n[[sources.spec.events.properties]]\npath = "plan"'))
    assert (
        message == "config: sources[0].spec.events[0].properties[1].path: 'plan' is already specified by properties[0]"
    )


def test_the_same_path_in_two_events_is_fine() -> None:
    spec = spec_of(one_property('path = "plan"', "a") + one_property('path = "plan"', "b"))
    assert len(spec.events) == 2


@pytest.mark.parametrize(
    ("type_", "values", "bad"),
    [
        ("string", '["free", 1]', "values[1]: 1 is not a string (type = 'string')"),
        ("number", "[1, 2.5, true]", "values[2]: True is not a number (type = 'number')"),
        ("number", '["1"]', "values[0]: '1' is not a number (type = 'number')"),
        ("boolean", "[true, 0]", "values[1]: 0 is not a boolean (type = 'boolean')"),
    ],
)
def test_values_of_the_wrong_type(type_: str, values: str, bad: str) -> None:
    message = error_of(one_property(f'path = "p"\ntype = "{type_}"\nvalues = {values}'))
    assert message == f"{PROP}.{bad}"


@pytest.mark.parametrize("type_", ["object", "array"])
def test_values_on_objects_and_arrays(type_: str) -> None:
    message = error_of(one_property(f'path = "p"\ntype = "{type_}"\nvalues = ["a"]'))
    assert message == f"{PROP}.values: allowed values apply to strings, numbers and booleans, not to type {type_!r}"


def test_empty_values_could_never_match() -> None:
    message = error_of(one_property('path = "p"\nvalues = []'))
    assert message.startswith(f"{PROP}.values: is empty")


def test_values_without_a_type_may_mix_scalars() -> None:
    spec = spec_of(one_property('path = "p"\nvalues = ["a", 1, true]'))
    assert spec.events[0].properties[0].values == ["a", 1, True]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (
            'path = "user"\ntype = "string"',
            'path = "user.email"',
            "properties[1].path: 'user': 'user.email' needs it to be an object, "
            "but properties[0] gives it type 'string'",
        ),
        (
            'path = "user.email"',
            'path = "user"\ntype = "array"',
            "properties[1].type: 'user': gives it type 'array', "
            "but properties[0] 'user.email' needs it to be an object",
        ),
        (
            'path = "items"\ntype = "object"',
            'path = "items[].id"',
            "properties[1].path: 'items': 'items[].id' needs it to be an array, "
            "but properties[0] gives it type 'object'",
        ),
        (
            'path = "a.b"',
            'path = "a[].c"',
            "properties[1].path: 'a': 'a[].c' needs it to be an array, "
            "but properties[0] 'a.b' needs it to be an object",
        ),
        (
            'path = "items[]"\ntype = "string"',
            'path = "items[].product.name"',
            "properties[1].path: 'items[]': 'items[].product.name' needs it to be an object, "
            "but properties[0] gives it type 'string'",
        ),
    ],
)
def test_types_that_contradict_each_other(first: str, second: str, expected: str) -> None:
    message = error_of(one_property(first + "\n[[sources.spec.events.properties]]\n" + second))
    assert message == f"config: sources[0].spec.events[0].{expected}"


def test_consistent_nested_paths_are_fine() -> None:
    spec = spec_of(
        one_property(
            'path = "items"\ntype = "array"\nrequired = true\n'
            '[[sources.spec.events.properties]]\npath = "items[]"\ntype = "object"\n'
            '[[sources.spec.events.properties]]\npath = "items[].product.name"\ntype = "string"\n'
            '[[sources.spec.events.properties]]\npath = "items[].product.price"\ntype = "number"'
        )
    )
    assert len(spec.events[0].properties) == 4


def test_unknown_rule_choices_and_keys_are_named() -> None:
    assert "sources[0].spec.missing_required" in error_of('missing_required = "warn"')
    assert error_of(one_property('path = "p"\nrequird = true')) == f"{PROP}.requird: unknown key (misspelt?)"
    assert "sources[0].spec.events[0].properties[0].type" in error_of(one_property('path = "p"\ntype = "int"'))


def test_every_problem_is_reported_at_once() -> None:
    message = error_of(one_property('path = "a..b"\n[[sources.spec.events.properties]]\npath = "c"\nvalues = []'))
    assert message.count("\n") == 1
    assert "properties[0].path" in message and "properties[1].values" in message


# --- judge without a spec: unchanged -----------------------------------------------------------


def test_without_a_spec_bad_values_are_removed_and_missing_ones_warned() -> None:
    ev = event(value="ten", currency="EUR")
    findings = [
        Finding("value", "value 'ten' is not a number", "bad_value"),
        Finding("items", "purchase: required property 'items' is missing", "missing"),
        Finding("absent", "absent 'x' is bad", "bad_value"),
    ]
    result = judge(ev, findings, None)
    assert result.errors == []
    assert result.warnings == [
        "value 'ten' is not a number; removed",
        "purchase: required property 'items' is missing",
        "absent 'x' is bad",  # nothing there to remove: no "removed"
    ]
    assert "value" not in ev and ev["currency"] == "EUR"


def test_without_a_spec_a_clean_event_is_untouched() -> None:
    ev = event(anything={"goes": [1]})
    before = copy.deepcopy(ev)
    assert judge(ev, [], None) == judge(before, [], None)
    assert ev == before


def test_without_a_spec_several_list_elements_are_removed_in_a_safe_order() -> None:
    ev = event(items=[{"id": "a"}, 1, {"id": "b", "quantity": "x"}, 2, {"id": "c"}])
    findings = [
        Finding("items[1]", "items[1] is not an object", "bad_value"),
        Finding("items[2].quantity", "items[2].quantity 'x' is not a number", "bad_value"),
        Finding("items[3]", "items[3] is not an object", "bad_value"),
    ]
    result = judge(ev, findings, None)
    assert ev["items"] == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert all(w.endswith("; removed") for w in result.warnings)


# --- missing_required ------------------------------------------------------------------------


@pytest.mark.parametrize(("choice", "rejected"), [("accept", False), ("reject", True)])
def test_missing_required(choice: str, rejected: bool) -> None:
    spec = plan(PropertySpec(path="plan", required=True), missing_required=choice)
    result = judge(event(), [], spec)
    message = "plan is missing (required by the specification)"
    if rejected:
        assert (result.warnings, result.errors) == ([], [f"{message} (missing_required = reject)"])
    else:
        assert (result.warnings, result.errors) == ([message], [])


def test_null_is_missing_and_optional_properties_may_be_absent() -> None:
    spec = plan(PropertySpec(path="plan", required=True), PropertySpec(path="note", type="string"))
    assert judge(event(plan=None), [], spec).warnings == ["plan is missing (required by the specification)"]
    assert judge(event(plan="free", note=None), [], spec).warnings == []


def test_required_below_an_absent_object_but_not_below_an_absent_array() -> None:
    spec = plan(
        PropertySpec(path="shipping.address.city", required=True),
        PropertySpec(path="items[].id", required=True),
    )
    ev = event()
    del ev["user"]
    assert judge(ev, [], spec).warnings == ["shipping.address.city is missing (required by the specification)"]
    result = judge(event(shipping={"address": {"city": "Paris"}}, items=[{"id": 1}, {}, {"id": None}]), [], spec)
    assert result.warnings == [
        "items[1].id is missing (required by the specification)",
        "items[2].id is missing (required by the specification)",
    ]


def test_the_outermost_missing_required_property_is_reported_once() -> None:
    spec = plan(PropertySpec(path="address", required=True), PropertySpec(path="address.city", required=True))
    assert judge(event(), [], spec).warnings == ["address is missing (required by the specification)"]


# --- unexpected_format -------------------------------------------------------------------------


def test_unexpected_format_omit_removes_and_says_so() -> None:
    spec = plan(PropertySpec(path="plan", type="string"), PropertySpec(path="age", type="number"))
    ev = event(plan=3, age=41)
    result = judge(ev, [], spec)
    assert (result.warnings, result.errors) == (["plan is a number, not a string as specified; removed"], [])
    assert "plan" not in ev and ev["age"] == 41


def test_unexpected_format_accept_keeps_the_property() -> None:
    spec = plan(PropertySpec(path="plan", type="string"), unexpected_format="accept")
    ev = event(plan=3)
    result = judge(ev, [], spec)
    assert (result.warnings, result.errors) == (["plan is a number, not a string as specified"], [])
    assert ev["plan"] == 3


def test_unexpected_format_reject_names_the_path_and_keeps_the_event_whole() -> None:
    spec = plan(
        PropertySpec(path="plan", type="string"), PropertySpec(path="x", type="string"), unexpected_format="reject"
    )
    ev = event(plan=True, x=1, y=2)
    result = judge(ev, [], spec)
    assert result.warnings == []
    assert result.errors == [
        "plan is a boolean, not a string as specified (unexpected_format = reject)",
        "x is a number, not a string as specified (unexpected_format = reject)",
    ]
    assert ev["plan"] is True and ev["x"] == 1


def test_a_rejected_event_keeps_what_omit_would_have_removed() -> None:
    spec = plan(
        PropertySpec(path="plan", type="string"),
        PropertySpec(path="email", required=True),
        missing_required="reject",
    )
    ev = event(plan=3)
    result = judge(ev, [], spec)
    assert result.errors == ["email is missing (required by the specification) (missing_required = reject)"]
    assert result.warnings == ["plan is a number, not a string as specified"]  # not "removed": it was not
    assert ev["plan"] == 3


def test_allowed_values() -> None:
    spec = plan(PropertySpec(path="plan", type="string", values=["free", "pro"]))
    assert judge(event(plan="pro"), [], spec).warnings == []
    ev = event(plan="gold")
    assert judge(ev, [], spec).warnings == ["plan 'gold' is not one of the specified values ('free', 'pro'); removed"]
    assert "plan" not in ev


@pytest.mark.parametrize(
    ("values", "value", "allowed"),
    [
        ([1, 2], 1, True),
        ([1, 2], 1.0, True),  # one JSON number
        ([1, 2], True, False),  # true is not 1
        ([True], 1, False),
        ([False], 0, False),
        ([False], False, True),
        (["1"], 1, False),
        ([1.5], 1.5, True),
    ],
)
def test_allowed_values_tell_numbers_from_booleans_and_strings(values: list[Any], value: Any, allowed: bool) -> None:
    spec = plan(PropertySpec(path="p", values=values), unexpected_format="accept")
    assert (judge(event(p=value), [], spec).warnings == []) is allowed


@pytest.mark.parametrize(
    ("type_", "good", "bad"),
    [
        ("number", [0, -1, 2.5, 10**30], [True, False, "1", float("inf"), [1], {"n": 1}]),
        ("boolean", [True, False], [0, 1, "true", [True]]),
        ("string", ["", "x"], [1, True, ["x"], {"x": 1}]),
        ("object", [{}, {"a": 1}], [[], "x", 1]),
        ("array", [[], [1, "a"]], [{}, "x", 1]),
    ],
)
def test_types(type_: str, good: list[Any], bad: list[Any]) -> None:
    spec = plan(PropertySpec(path="p", type=type_), unexpected_format="accept")  # type: ignore[arg-type]
    for value in good:
        assert judge(event(p=value), [], spec).warnings == [], value
    for value in bad:
        [warning] = judge(event(p=value), [], spec).warnings
        assert warning.startswith("p is a") and warning.endswith(
            f"not {'an' if type_[0] in 'aeiou' else 'a'} {type_} as specified"
        )


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    spec = plan(PropertySpec(path="plan", values=["free"]), unexpected_format="accept")
    [warning] = judge(event(plan="x" * 500), [], spec).warnings
    assert len(warning) < 200 and "..." in warning


def test_a_bad_value_of_a_required_property_cannot_be_omitted_when_missing_rejects() -> None:
    spec = plan(PropertySpec(path="plan", type="string", required=True), missing_required="reject")
    ev = event(plan=3)
    result = judge(ev, [], spec)
    assert result.errors == [
        "plan is a number, not a string as specified; a required property cannot be omitted (missing_required = reject)"
    ]
    assert ev["plan"] == 3
    # An optional one is omitted as usual.
    optional = plan(PropertySpec(path="plan", type="string"), missing_required="reject")
    assert judge(event(plan=3), [], optional).warnings == ["plan is a number, not a string as specified; removed"]


# --- paths with [] -------------------------------------------------------------------------------


def test_every_element_and_concrete_paths() -> None:
    spec = plan(
        PropertySpec(path="items[].product.name", type="string", required=True),
        PropertySpec(path="items[].quantity", type="number"),
    )
    ev = event(
        items=[
            {"product": {"name": "T-shirt"}, "quantity": 1},
            {"product": {"name": 7}, "quantity": "2"},
            "not an item",
            {"product": "not a product"},
            {"product": {}},
        ]
    )
    result = judge(ev, [], spec)
    assert result.errors == []
    assert result.warnings == [
        "items[1].product.name is a number, not a string as specified; removed",
        "items[1].quantity is a string, not a number as specified; removed",
        "items[2] is a string, not an object as specified; removed",
        "items[3].product is a string, not an object as specified; removed",
        "items[4].product.name is missing (required by the specification)",
    ]
    assert ev["items"] == [
        {"product": {"name": "T-shirt"}, "quantity": 1},
        {"product": {}},
        {},
        {"product": {}},
    ]


def test_an_array_of_scalars() -> None:
    spec = plan(PropertySpec(path="tags[]", type="string", values=["a", "b"]))
    ev = event(tags=["a", 1, "c", "b"])
    result = judge(ev, [], spec)
    assert result.warnings == [
        "tags[1] is a number, not a string as specified; removed",
        "tags[2] 'c' is not one of the specified values ('a', 'b'); removed",
    ]
    assert ev["tags"] == ["a", "b"]


def test_a_container_of_the_wrong_shape_is_a_format_problem() -> None:
    spec = plan(PropertySpec(path="items[].id", type="string"), unexpected_format="reject")
    result = judge(event(items={"id": "x"}), [], spec)
    assert result.errors == ["items is an object, not an array as specified (unexpected_format = reject)"]


def test_nested_context_paths_can_be_specified() -> None:
    spec = plan(PropertySpec(path="context.page.url", type="string", required=True), missing_required="reject")
    assert judge(event(), [], spec).errors == [
        "context.page.url is missing (required by the specification) (missing_required = reject)"
    ]
    ok = event()
    ok["context"]["page"] = {"url": "https://shop.example/"}
    assert judge(ok, [], spec) == judge(copy.deepcopy(ok), [], None)


# --- unspecified_events ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "warnings", "errors"),
    [
        ("accept", [], []),
        ("warn", ["event 'other' is not in the source's specification"], []),
        ("reject", [], ["event 'other' is not in the source's specification (unspecified_events = reject)"]),
    ],
)
def test_unspecified_events(choice: str, warnings: list[str], errors: list[str]) -> None:
    spec = plan(PropertySpec(path="plan", required=True), unspecified_events=choice, unspecified_properties="omit")
    ev = {**event(extra=1), "event_name": "other"}
    result = judge(ev, [], spec)
    assert (result.warnings, result.errors) == (warnings, errors)
    assert ev["extra"] == 1  # no plan for the event: its properties are not judged


# --- unspecified_properties ----------------------------------------------------------------------


def test_unspecified_properties_omit_removes_with_a_warning() -> None:
    spec = plan(PropertySpec(path="plan"), PropertySpec(path="items[].id"), unspecified_properties="omit")
    ev = event(plan="free", items=[{"id": 1, "other": 2}], extra=1, test_code="t1")
    result = judge(ev, [], spec)
    assert result.warnings == ["extra is not in the specification of 'signup'; removed"]
    # The envelope (event_name, context, user, test_code) is always specified; only top-level keys count.
    assert ev == event(plan="free", items=[{"id": 1, "other": 2}], test_code="t1")


def test_unspecified_properties_accept_and_warn() -> None:
    silent = plan(PropertySpec(path="plan"), unspecified_properties="accept")
    assert judge(event(extra=1), [], silent).warnings == []
    loud = plan(PropertySpec(path="plan"), unspecified_properties="warn")
    ev = event(extra=1, more=2)
    assert judge(ev, [], loud).warnings == [
        "extra is not in the specification of 'signup'",
        "more is not in the specification of 'signup'",
    ]
    assert ev["extra"] == 1


# --- standard events -------------------------------------------------------------------------------


def purchase(**props: Any) -> dict[str, Any]:
    return {**event(**props), "event_name": "purchase"}


def test_a_standard_event_extended_keeps_its_catalogue_properties_specified() -> None:
    spec = plan(
        PropertySpec(path="coupon", type="string", required=True), name="purchase", unspecified_properties="omit"
    )
    ev = purchase(
        id="o1",
        type="online",
        value=10,
        revenue=8,
        tax=2,
        payment_method="card",
        currency="EUR",
        status="pending",
        items=[],
        coupon="X",
        gift=True,
    )
    result = judge(ev, [], spec)
    assert result.warnings == ["gift is not in the specification of 'purchase'; removed"]
    assert "gift" not in ev and ev["tax"] == 2 and ev["coupon"] == "X"
    assert judge(purchase(), [], spec).warnings == ["coupon is missing (required by the specification)"]


def test_a_video_event_keeps_its_catalogue_properties_specified() -> None:
    spec = plan(name="video_volume", unspecified_properties="warn")
    ev = {**event(sound=40, full_screen=False, bitrate=2000, video_session_id="s"), "event_name": "video_volume"}
    assert judge(ev, [], spec).warnings == []


def test_standard_findings_follow_the_spec_rules() -> None:
    findings = [
        Finding("value", "value 'ten' is not a number", "bad_value"),
        Finding("items", "purchase: required property 'items' is missing", "missing"),
    ]
    spec = plan(name="purchase", unexpected_format="accept", missing_required="reject")
    ev = purchase(value="ten")
    result = judge(ev, findings, spec)
    assert result.warnings == ["value 'ten' is not a number"]
    assert result.errors == ["purchase: required property 'items' is missing (missing_required = reject)"]
    assert ev["value"] == "ten"
    # Also for events the spec does not list (the rules are the source's).
    omit = plan(name="signup", unexpected_format="omit")
    ev = purchase(value="ten")
    assert judge(ev, findings[:1], omit).warnings == ["value 'ten' is not a number; removed"]


def test_a_bad_required_catalogue_property_cannot_be_omitted_when_missing_rejects() -> None:
    spec = plan(name="purchase", missing_required="reject")
    ev = purchase(currency="euro")
    result = judge(ev, [Finding("currency", "currency 'euro' is not a three-letter ISO 4217 code", "bad_value")], spec)
    assert result.errors == [
        "currency 'euro' is not a three-letter ISO 4217 code; a required property cannot be omitted "
        "(missing_required = reject)"
    ]


def test_a_path_found_by_both_checks_is_reported_once() -> None:
    spec = plan(PropertySpec(path="value", type="number"), name="purchase")
    ev = purchase(value="ten")
    result = judge(ev, [Finding("value", "value 'ten' is not a number", "bad_value")], spec)
    assert result.warnings == ["value 'ten' is not a number; removed"]


# --- compiling ----------------------------------------------------------------------------------


def test_a_spec_is_compiled_once_per_object() -> None:
    spec = plan(PropertySpec(path="plan"))
    assert compiled(spec) is compiled(spec)
    other = plan(PropertySpec(path="plan"))
    assert compiled(other) is not compiled(spec)


def test_a_hand_made_spec_with_a_bad_path_does_not_crash() -> None:
    spec = plan(PropertySpec(path="a..b", required=True), PropertySpec(path="plan", required=True))
    assert judge(event(), [], spec).warnings == ["plan is missing (required by the specification)"]


def test_an_event_without_a_name_is_left_to_normalization() -> None:
    spec = plan(unspecified_events="reject")
    assert judge({"context": {}}, [], spec).errors == []


# --- what the vendor only ever warns about ---------------------------------------------------------


def test_a_missing_anonymous_id_stays_a_warning_unless_the_spec_itself_requires_it() -> None:
    missing = Finding("user.consistent_anonymous_id", "user.consistent_anonymous_id is missing", "missing")
    strict = plan(missing_required="reject")
    result = judge(event(), [missing], strict)
    assert (result.warnings, result.errors) == (["user.consistent_anonymous_id is missing"], [])
    required = plan(PropertySpec(path="user.consistent_anonymous_id", required=True), missing_required="reject")
    result = judge(event(), [missing], required)
    assert result.errors == ["user.consistent_anonymous_id is missing (missing_required = reject)"]
