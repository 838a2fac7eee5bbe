"""No two kinds of Redis key collide, whatever valid ids the config holds.

Every public builder of `KeyLayout` (method or property) is found by introspection and must have an
entry in BUILDERS, which says what its arguments may be (as a hypothesis strategy and as a regular
expression). From the entries the test derives, for each kind of key, the exact set of names it can
produce (a regex) and checks keys drawn from every kind against every other kind's regex. So a new
builder is covered as soon as it is added (the test fails until it has an entry), and a collision
is found even when it takes one particular id (such as a destination named `dropped`).
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trackpipe.config import Config, SourceConfig
from trackpipe.keys import DELIVER_QUEUE_PREFIX, INGEST_QUEUE, RETRY_QUEUE_PREFIX, UNKNOWN_SITE_BUCKET, KeyLayout
from trackpipe.types import ID_PATTERN


def _meta(struct: type, name: str) -> msgspec.Meta:
    """The constraints the config puts on one of its fields."""
    (meta,) = typing.get_type_hints(struct, include_extras=True)[name].__metadata__
    return meta


ID_RE = ID_PATTERN.removeprefix("^").removesuffix("$")
PREFIX_RE = _meta(Config, "key_prefix").pattern.removeprefix("^").removesuffix("$")
INT_RE = r"0|[1-9][0-9]*"
QUEUE_RE = "|".join(
    [
        re.escape(INGEST_QUEUE),
        *(f"{re.escape(prefix)}(?:{ID_RE})" for prefix in (DELIVER_QUEUE_PREFIX, RETRY_QUEUE_PREFIX)),
    ]
)
# Site ids are any text the config allows (SourceConfig.site_id: only its length is bounded);
# refused requests from unknown sites share UNKNOWN_SITE_BUCKET.
SITE_MIN = _meta(SourceConfig, "site_id").min_length
SITE_MAX = _meta(SourceConfig, "site_id").max_length
SITE_RE = rf"(?s:.{{{SITE_MIN},{SITE_MAX}}})"
# RQ job ids (uuid4 strings, and trackpipe's `<ingest job id>_<hash>` for fan-out jobs).
JOB_RE = r"[A-Za-z0-9_-]{1,100}"


def _literal_words() -> list[str]:
    """Every literal part of today's key names (`dlq`, `dropped`, `last`, ...): the ids most likely
    to make one kind of key look like another, tried on purpose besides random ones."""
    layout = KeyLayout()
    texts = [layout.prefix, INGEST_QUEUE, DELIVER_QUEUE_PREFIX, RETRY_QUEUE_PREFIX]
    for name, member in _public_builders().items():
        if isinstance(member, property):
            texts.append(getattr(layout, name))
        else:
            texts.append(getattr(layout, name)(*["x"] * _arity(name)))
    words = {w for text in texts for w in re.split(r"[^A-Za-z0-9_.-]+", text) if w}
    return sorted(w for w in words if re.fullmatch(ID_RE, w))


def _arity(name: str) -> int:
    """How many arguments builder `name` takes (self not counted)."""
    return len(inspect.signature(getattr(KeyLayout(), name)).parameters)


def _public_builders() -> dict[str, Any]:
    """Every public method or property KeyLayout defines (its struct field `prefix` excluded)."""
    found = {}
    for name, member in vars(KeyLayout).items():
        if name.startswith("_") or name in KeyLayout.__struct_fields__:
            continue
        if isinstance(member, property | staticmethod | classmethod) or inspect.isfunction(member):
            found[name] = member
    return found


@dataclass(frozen=True)
class Arg:
    """One argument of a builder: how to draw it, and the language of its values as a regex."""

    strategy: st.SearchStrategy[Any]
    regex: str


def _ids() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_literal_words()), st.from_regex(ID_PATTERN, fullmatch=True))


ID = Arg(_ids(), ID_RE)
WORKER = Arg(_ids(), ID_RE)  # worker names: the same alphabet as ids
QUEUE = Arg(
    st.one_of(
        st.just(INGEST_QUEUE),
        _ids().map(lambda i: DELIVER_QUEUE_PREFIX + i),
        _ids().map(lambda i: RETRY_QUEUE_PREFIX + i),
    ),
    QUEUE_RE,
)
INT = Arg(st.integers(min_value=0, max_value=2**62), INT_RE)
SITE = Arg(
    st.one_of(
        st.just(UNKNOWN_SITE_BUCKET),
        st.sampled_from(_literal_words()),
        # Any text TOML can hold (no lone surrogates), colons and all.
        st.text(st.characters(exclude_categories=("Cs",)), min_size=SITE_MIN, max_size=SITE_MAX),
        st.text("abc:*?[]", min_size=SITE_MIN, max_size=SITE_MAX),
    ),
    SITE_RE,
)
JOB = Arg(
    st.one_of(
        st.sampled_from([w for w in _literal_words() if re.fullmatch(JOB_RE, w)]),
        st.from_regex(JOB_RE, fullmatch=True),
    ),
    JOB_RE,
)


@dataclass(frozen=True)
class Key:
    """A builder that returns one key; a property when `args` is empty."""

    args: tuple[Arg, ...] = ()


@dataclass(frozen=True)
class Namespace:
    """A property giving the start of some keys; the code that uses it appends `suffix(*args)`.
    `owner` is the builder producing the same keys, if there is one (they must agree)."""

    args: tuple[Arg, ...]
    suffix: Callable[..., str] = lambda *a: ":".join(str(x) for x in a)
    owner: str | None = None


@dataclass(frozen=True)
class Pattern:
    """A property giving a SCAN/KEYS glob; it must match exactly the keys of `owner`."""

    owner: str


@dataclass(frozen=True)
class RqNamespace:
    """`rq_prefix`: RQ's own namespace; only the builders in `members` may build keys under it."""

    members: frozenset[str] = field(default_factory=frozenset)


BUILDERS: dict[str, Key | Namespace | Pattern | RqNamespace] = {
    "rq_prefix": RqNamespace(frozenset({"queue"})),
    "queue": Key((QUEUE,)),
    "unauthorized_ring": Key((SITE,)),
    "unauthorized_count": Key(),
    "dedup_bucket": Key((INT, INT)),
    "dedup_bucket_prefix": Namespace((INT, INT), owner="dedup_bucket"),
    "dedup_slot_marker_prefix": Namespace((INT,)),
    "dedup_pattern": Pattern("dedup_bucket"),
    "dedup_window_bucket": Key((INT, INT, INT)),
    "dedup_window_bucket_prefix": Namespace((INT, INT, INT), owner="dedup_window_bucket"),
    "dedup_window_slot_marker_prefix": Namespace((INT, INT)),
    "dedup_window_pattern": Pattern("dedup_window_bucket"),
    "open_job": Key((QUEUE,)),
    "job_parts_prefix": Namespace((JOB,), owner="job_parts"),
    "job_parts": Key((JOB,)),
    "inspector": Key((ID,)),
    "inspector_failures": Key((ID,)),
    "inspector_tests": Key((ID,)),
    "inspector_sample": Key((ID, INT)),
    "source_hourly": Key((ID, INT)),
    "source_messages": Key((ID, INT)),
    "source_stats": Key((ID,)),
    "destination_stats": Key((ID, INT)),
    "destination_hour_stats": Key((ID, INT)),
    "dlq": Key((ID,)),
    "destination_requests": Key((ID,)),
    "dlq_dropped": Key(),
    "dlq_replay": Key((ID,)),
    "dlq_replay_lock": Key((ID,)),
    "destination_errors": Key((ID,)),
    "destination_errors_last": Key((ID,)),
    "alert_rules": Key(),
    "alert_state": Key(),
    "alert_firings": Key(),
    "alert_lock": Key(),
    "claims_prefix": Namespace((WORKER,), owner="claims"),
    "claims": Key((WORKER,)),
    "claimants": Key(),
    "lease_prefix": Namespace((WORKER,), owner="lease"),
    "lease": Key((WORKER,)),
    "wake_prefix": Namespace((QUEUE,), owner="wake"),
    "wake": Key((QUEUE,)),
    "sweeper_lock": Key(),
}

# The kinds of key: every Key builder, and every Namespace no builder owns (its keys are built
# elsewhere, e.g. by a Lua script).
KINDS = [
    name
    for name, spec in BUILDERS.items()
    if isinstance(spec, Key) or (isinstance(spec, Namespace) and spec.owner is None)
]


def _args_of(name: str) -> tuple[Arg, ...]:
    spec = BUILDERS[name]
    assert isinstance(spec, Key | Namespace)
    return spec.args


def build(layout: KeyLayout, name: str, args: tuple[Any, ...]) -> str:
    spec = BUILDERS[name]
    if isinstance(spec, Namespace):
        return getattr(layout, name) + spec.suffix(*args)
    if not spec.args:
        return getattr(layout, name)
    return getattr(layout, name)(*args)


_SENTINEL = "\x00{}\x00"


def template(layout: KeyLayout, name: str) -> list[str]:
    """The builder's output split into literal text (even positions) and argument numbers (odd
    positions, as text): the builder is called with a sentinel for each argument."""
    args = _args_of(name)
    built = build(layout, name, tuple(_SENTINEL.format(i) for i in range(len(args))))
    pieces = re.split("\x00([0-9]+)\x00", built)
    assert [int(p) for p in pieces[1::2]] == list(range(len(args))), f"{name} must use each argument once, in order"
    return pieces


def language(layout: KeyLayout, name: str) -> re.Pattern[str]:
    """Every key builder `name` can produce for `layout`, as one regex: its template with each
    argument replaced by the argument's language."""
    args = _args_of(name)
    pieces = template(layout, name)
    return re.compile(
        "".join(re.escape(p) if i % 2 == 0 else f"(?:{args[int(p)].regex})" for i, p in enumerate(pieces))
    )


def readings(layout: KeyLayout, name: str, key: str) -> set[tuple[str, ...]]:
    """Every tuple of valid arguments (as text) from which builder `name` makes `key`: all ways of
    cutting the key along the builder's template, each cut checked against its argument's language."""
    args = _args_of(name)
    pieces = template(layout, name)
    found: set[tuple[str, ...]] = set()

    def walk(position: int, piece: int, values: tuple[str, ...]) -> None:
        literal = pieces[piece]
        if not key.startswith(literal, position):
            return
        position += len(literal)
        if piece == len(pieces) - 1:
            if position == len(key):
                found.add(values)
            return
        arg = args[int(pieces[piece + 1])]
        for end in range(position + 1, len(key) + 1):
            if re.fullmatch(arg.regex, key[position:end]):
                walk(end, piece + 2, (*values, key[position:end]))

    walk(0, 0, ())
    return found


def test_every_public_builder_has_an_entry() -> None:
    builders = set(_public_builders())
    missing = builders - set(BUILDERS)
    assert not missing, f"add argument generators to BUILDERS for: {sorted(missing)}"
    assert set(BUILDERS) <= builders, f"BUILDERS names what KeyLayout lacks: {sorted(set(BUILDERS) - builders)}"
    for name, spec in BUILDERS.items():
        member = _public_builders()[name]
        if isinstance(spec, Key) and spec.args:
            assert _arity(name) == len(spec.args), f"{name}: BUILDERS lists {len(spec.args)} arguments"
        else:
            assert isinstance(member, property), f"{name}: an entry without arguments is a property"


def test_literal_parts_of_key_names_collide_with_nothing() -> None:
    """Deterministic: each literal word of the layout (and the unknown-site bucket) as every
    argument of every builder, checked against every other kind. Today's `dropped` case is here."""
    layout = KeyLayout()
    languages = {name: language(layout, name) for name in KINDS}
    words = [*_literal_words(), UNKNOWN_SITE_BUCKET]
    for name in KINDS:
        args = _args_of(name)
        for word in words:
            values = tuple(_word_as(arg, word) for arg in args)
            if any(v is None for v in values):
                continue
            key = build(layout, name, values)
            for other in KINDS:
                if other != name:
                    assert not languages[other].fullmatch(key), (
                        f"{name}{values} builds {key!r}, which {other} can build too"
                    )


def _word_as(arg: Arg, word: str) -> Any:
    if arg is INT:
        return 0  # a word cannot be a number; the other arguments still get it
    if arg is QUEUE:
        word = DELIVER_QUEUE_PREFIX + word
    return word if re.fullmatch(arg.regex, word) else None


@st.composite
def layouts(draw: st.DrawFn) -> KeyLayout:
    return KeyLayout(draw(st.one_of(st.just("trackpipe"), st.from_regex(rf"^{PREFIX_RE}$", fullmatch=True))))


@st.composite
def keys_of_every_kind(draw: st.DrawFn, layout: KeyLayout) -> dict[str, tuple[tuple[Any, ...], str]]:
    chosen = {}
    for name in KINDS:
        args = tuple(draw(a.strategy) for a in _args_of(name))
        chosen[name] = (args, build(layout, name, args))
    return chosen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_two_kinds_of_key_collide(data: st.DataObject) -> None:
    layout = data.draw(layouts())
    languages = {name: language(layout, name) for name in KINDS}
    chosen = data.draw(keys_of_every_kind(layout))
    for name, (args, key) in chosen.items():
        assert languages[name].fullmatch(key), f"{name}{args} builds {key!r}, outside its own language"
        for other in KINDS:
            if other != name:
                assert not languages[other].fullmatch(key), f"{name}{args} builds {key!r}, which {other} can build too"


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_each_builder_gives_different_keys_for_different_arguments(data: st.DataObject) -> None:
    """Each key reads back as exactly the arguments it was built from: no other valid arguments
    give the same key (e.g. `a1`+`2` and `a`+`12` would, were the two not separated)."""
    layout = data.draw(layouts())
    for name, (args, key) in data.draw(keys_of_every_kind(layout)).items():
        assert readings(layout, name, key) == {tuple(str(a) for a in args)}, (name, args, key)
        other = tuple(data.draw(a.strategy) for a in _args_of(name))
        if other != args:
            assert build(layout, name, other) != key, (name, args, other)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_namespaces_patterns_and_rq_hold_only_their_own_keys(data: st.DataObject) -> None:
    layout = data.draw(layouts())
    chosen = data.draw(keys_of_every_kind(layout))
    for name, spec in BUILDERS.items():
        if isinstance(spec, Namespace) and spec.owner is not None:
            args = tuple(data.draw(a.strategy) for a in spec.args)
            assert build(layout, name, args) == build(layout, spec.owner, args), f"{name} and {spec.owner} disagree"
        if isinstance(spec, Namespace):
            start = getattr(layout, name)
            home = spec.owner or name
            for kind, (args, key) in chosen.items():
                assert key.startswith(start) == (kind == home), f"{kind}{args} = {key!r} vs namespace {name}"
        if isinstance(spec, Pattern):
            glob = getattr(layout, name)
            for kind, (args, key) in chosen.items():
                assert fnmatch.fnmatchcase(key, glob) == (kind == spec.owner), f"{glob!r} vs {kind}{args} = {key!r}"
        if isinstance(spec, RqNamespace):
            rq = getattr(layout, name) + ":"
            for kind, (args, key) in chosen.items():
                assert key.startswith(rq) == (kind in spec.members), f"{kind}{args} = {key!r} vs RQ's {rq!r}"
    for kind, (_, key) in chosen.items():
        # The prefix holds no ':', so two installations with different prefixes never share a key.
        assert key.startswith(layout.prefix + ":"), (kind, key)


def test_dedup_slots_of_different_windows_never_share_a_key() -> None:
    """Slot numbers mean a different time span for each window length: the default window's keys,
    and each other window's, are apart (also for the same slot and bucket numbers)."""
    layout = KeyLayout()
    keys = {layout.dedup_bucket(7, 3)} | {layout.dedup_window_bucket(w, 7, 3) for w in (60, 600, 86_400)}
    assert len(keys) == 4
    assert layout.dedup_window_bucket(60, 7, 3).startswith(layout.dedup_window_bucket_prefix + "60:")
    assert not any(fnmatch.fnmatchcase(k, layout.dedup_pattern) for k in keys - {layout.dedup_bucket(7, 3)})
