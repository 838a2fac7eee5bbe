"""trackpipe.config: decoding the TOML file, defaults, and a precise message for every bad case."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from destinations.file import FileDestination
from destinations.webhook import WebhookDestination
from trackpipe.config import (
    CONFIG_ENV,
    REDIS_URL_ENV,
    Config,
    ConfigError,
    config_path,
    load,
    load_from,
    parse,
)

HASHED = "sha256:" + hashlib.sha256(b"a-hashed-key-for-prod").hexdigest()

FULL = f"""\
redis_url = "redis://127.0.0.1:6379/0"
admin_token = "change-me"

[edge]
status_mode = "compat"

[dedup]
window_seconds = 86400

[[sources]]
id = "shop-web"
site_id = "29"
keys = ["{HASHED}", "a-plain-key-for-dev"]

[[destinations]]
id = "crm-hook"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
events = ["purchase", "sign_up"]
consent_category = "3"
retry = {{ max_attempts = 6, backoff_seconds = [1, 5, 30, 120, 600] }}

[[destinations]]
id = "lake"
type = "file"
path = "./data/lake"
"""

SOURCE = """
[[sources]]
id = "{id}"
site_id = "{site}"
keys = [{keys}]
"""


def source(id: str = "shop-web", site: str = "29", keys: str = '"a-plain-key-1"') -> str:
    return SOURCE.format(id=id, site=site, keys=keys)


def error_of(text: str | bytes, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env={} if env is None else env)
    return str(info.value)


# --- valid documents -------------------------------------------------------------------------


def test_full_contract_example_decodes() -> None:
    config = parse(FULL, env={})
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.admin_token == "change-me"
    assert config.edge.status_mode == "compat"
    assert config.dedup.window_seconds == 86400
    [src] = config.sources
    assert (src.id, src.site_id, src.keys) == ("shop-web", "29", [HASHED, "a-plain-key-for-dev"])
    assert src.on_invalid == "accept"
    hook, lake = config.destinations
    assert isinstance(hook, WebhookDestination)
    assert hook.id == "crm-hook"
    assert hook.url == "http://127.0.0.1:9000/hook"
    assert hook.events == ["purchase", "sign_up"]
    assert hook.consent_category == "3"
    assert hook.sources is None
    assert hook.retry.max_attempts == 6
    assert hook.retry.backoff_seconds == [1.0, 5.0, 30.0, 120.0, 600.0]
    assert hook.secret is None
    assert isinstance(lake, FileDestination)
    assert lake.path == "./data/lake"
    assert lake.events is None


def test_bytes_input_decodes_like_text() -> None:
    assert parse(FULL.encode(), env={}) == parse(FULL, env={})


def test_empty_document_gives_all_defaults() -> None:
    config = parse("", env={})
    assert config == Config()
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.key_prefix == "trackpipe"
    assert config.admin_token is None
    assert config.edge.status_mode == "compat"
    assert config.edge.max_backlog == 20_000
    assert config.edge.commit_max_events == 2_000
    assert config.edge.commit_interval_ms == 20.0
    assert config.edge.commit_min_events == 32
    assert config.edge.retry_after_seconds == 1
    assert config.edge.unauthorized_ring_size == 500
    assert config.dedup.window_seconds == 86_400
    assert config.dlq.max_events == 100_000
    assert config.sources == []
    assert config.destinations == []


def test_destination_defaults() -> None:
    text = source() + '[[destinations]]\nid = "hook"\ntype = "webhook"\nurl = "https://example.com/h"\n'
    [hook] = parse(text, env={}).destinations
    assert isinstance(hook, WebhookDestination)
    assert hook.sources is None
    assert hook.events is None
    assert hook.consent_category is None
    assert hook.retry.max_attempts == 6
    assert hook.retry.backoff_seconds == [1.0, 5.0, 30.0, 120.0, 600.0, 3600.0]
    assert hook.connect_timeout_seconds == 2.0
    assert hook.read_timeout_seconds == 10.0
    assert hook.batch_size == 500


def test_strict_mode_and_source_filters_decode() -> None:
    text = (
        '[edge]\nstatus_mode = "strict"\n'
        + source("a")
        + source("b", site="30", keys='"another-key-1"')
        + '[[destinations]]\nid = "f"\ntype = "file"\npath = "/tmp/x"\nsources = ["b", "a"]\n'
    )
    config = parse(text, env={})
    assert config.edge.status_mode == "strict"
    assert config.destinations[0].sources == ["b", "a"]


def test_same_key_on_different_sites_is_allowed() -> None:
    text = source("a", site="1", keys='"shared-key-123"') + source("b", site="2", keys='"shared-key-123"')
    config = parse(text, env={})
    assert [s.id for s in config.sources] == ["a", "b"]


def test_limits_exactly_at_the_minimum_are_accepted() -> None:
    config = parse('admin_token = "12345678"\n' + source(keys='"12345678"'), env={})
    assert config.admin_token == "12345678"
    assert config.sources[0].keys == ["12345678"]


@pytest.mark.parametrize(
    "url", ["redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock", "valkey://h/0", "valkeys://h/0"]
)
def test_redis_url_schemes_accepted(url: str) -> None:
    assert parse(f'redis_url = "{url}"', env={}).redis_url == url


# --- TRACKPIPE_REDIS_URL ---------------------------------------------------------------------


def test_env_redis_url_overrides_the_file() -> None:
    config = parse(FULL, env={REDIS_URL_ENV: "redis://10.0.0.5:6380/2"})
    assert config.redis_url == "redis://10.0.0.5:6380/2"


def test_env_redis_url_applies_when_file_has_none() -> None:
    assert parse("", env={REDIS_URL_ENV: "rediss://cache:6379/1"}).redis_url == "rediss://cache:6379/1"


def test_empty_env_redis_url_is_ignored() -> None:
    assert parse(FULL, env={REDIS_URL_ENV: ""}).redis_url == "redis://127.0.0.1:6379/0"


def test_env_redis_url_is_checked_too() -> None:
    message = error_of(FULL, env={REDIS_URL_ENV: "http://10.0.0.5/"})
    assert "redis_url:" in message
    assert "'http://10.0.0.5/'" in message


def test_parse_uses_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, "redis://from-env:6379/3")
    assert parse(FULL).redis_url == "redis://from-env:6379/3"


# --- documents that are not TOML -------------------------------------------------------------


def test_malformed_toml() -> None:
    message = error_of('redis_url = "x"\n[edge\nstatus_mode = "strict"\n')
    assert message.startswith("config: not valid TOML")
    assert "line 2" in message


def test_malformed_toml_unterminated_value() -> None:
    assert error_of("redis_url = ").startswith("config: not valid TOML")


def test_non_utf8_bytes() -> None:
    message = error_of(b'redis_url = "\xff"\n')
    assert message.startswith("config: not UTF-8 text")
    assert "byte 13" in message


def test_origin_prefixes_the_message() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/tp\.toml: admin_token: "):
        parse('admin_token = "x"', env={}, origin="/etc/tp.toml")


# --- unknown keys ----------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    # Top-level keys are reported the same way as nested ones: "<key>: unknown key (misspelt?)".
    message = error_of('redis_urll = "redis://x/0"')
    assert "redis_urll: unknown key (misspelt?)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[edge]\nstauts_mode = "compat"', "edge.stauts_mode: unknown key (misspelt?)"),
        ("[dedup]\nwindow = 5", "dedup.window: unknown key (misspelt?)"),
        ("[dlq]\nmax = 5", "dlq.max: unknown key (misspelt?)"),
        (source() + 'key = "x"', "sources[0].key: unknown key (misspelt?)"),
        (
            source() + '[[destinations]]\nid = "d"\ntype = "file"\npath = "p"\nurll = "x"',
            "destinations[0].urll: unknown key (misspelt?)",
        ),
        (
            source() + '[[destinations]]\nid = "d"\ntype = "file"\npath = "p"\nretry = { max_attemps = 3 }',
            "destinations[0].retry.max_attemps: unknown key (misspelt?)",
        ),
    ],
)
def test_unknown_nested_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


# --- wrong types and values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[dedup]\nwindow_seconds = "x"', "dedup.window_seconds", "Expected `int`, got `str`"),
        ("[dedup]\nwindow_seconds = 1.5", "dedup.window_seconds", "Expected `int`, got `float`"),
        ("[dedup]\nwindow_seconds = true", "dedup.window_seconds", "Expected `int`, got `bool`"),
        ("redis_url = 5", "redis_url", "Expected `str`, got `int`"),
        ("edge = 3", "edge", "Expected `object`, got `int`"),
        ('sources = "x"', "sources", "Expected `array`, got `str`"),
        ('[[sources]]\nid = "a"\nsite_id = "1"\nkeys = "abcdefgh1"', "sources[0].keys", "Expected `array`"),
        ('[[sources]]\nid = "a"\nsite_id = 29\nkeys = ["abcdefgh1"]', "sources[0].site_id", "Expected `str`"),
    ],
)
def test_wrong_type(text: str, key: str, problem: str) -> None:
    message = error_of(text)
    assert f"{key}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[dedup]\nwindow_seconds = 0", "dedup.window_seconds"),
        ("[dedup]\nwindow_seconds = -5", "dedup.window_seconds"),
        ("[edge]\nmax_backlog = 0", "edge.max_backlog"),
        ("[edge]\nmax_backlog = -1", "edge.max_backlog"),
        ("[edge]\ncommit_max_events = 0", "edge.commit_max_events"),
        ("[edge]\nretry_after_seconds = 0", "edge.retry_after_seconds"),
        ("[dlq]\nmax_events = 0", "dlq.max_events"),
    ],
)
def test_zero_or_negative_counts(text: str, key: str) -> None:
    message = error_of(text)
    assert f"{key}: Expected `int` >= 1" in message


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[edge]\ncommit_interval_ms = -0.5", "edge.commit_interval_ms", ">= 0"),
        ("[edge]\ncommit_interval_ms = 5000", "edge.commit_interval_ms", "<= 1000"),
        ("[edge]\ncommit_min_events = 0", "edge.commit_min_events", ">= 1"),
        ("[worker]\ningest_retries = 0", "worker.ingest_retries", ">= 1"),
        ("[edge]\nunauthorized_ring_size = -1", "edge.unauthorized_ring_size", ">= 0"),
        ("[edge]\nunauthorized_ring_size = 100001", "edge.unauthorized_ring_size", "<= 100000"),
    ],
)
def test_out_of_range_values(text: str, key: str, problem: str) -> None:
    message = error_of(text)
    assert f"{key}: " in message
    assert problem in message


def test_zero_and_negative_retry_values() -> None:
    base = source() + '[[destinations]]\nid = "d"\ntype = "file"\npath = "p"\n'
    message = error_of(base + "retry = { max_attempts = 0 }")
    assert "destinations[0].retry.max_attempts: Expected `int` >= 1" in message
    message = error_of(base + "retry = { backoff_seconds = [1, -2] }")
    assert "destinations[0].retry.backoff_seconds[1]: Expected `float` > 0" in message
    message = error_of(base + "retry = { backoff_seconds = [] }")
    assert "destinations[0].retry.backoff_seconds: Expected `array` of length >= 1" in message


def test_zero_webhook_timeout() -> None:
    text = source() + '[[destinations]]\nid = "d"\ntype = "webhook"\nurl = "http://h/"\nread_timeout_seconds = 0'
    assert "destinations[0].read_timeout_seconds: Expected `float` > 0" in error_of(text)


def test_bad_status_mode() -> None:
    message = error_of('[edge]\nstatus_mode = "loose"')
    assert "edge.status_mode: " in message
    assert "'loose'" in message


def test_bad_on_invalid() -> None:
    message = error_of(source() + 'on_invalid = "drop"')
    assert "sources[0].on_invalid: " in message
    assert "'drop'" in message


@pytest.mark.parametrize("bad_id", ["bad id", "-leading-dash", "", "x" * 65, "a/b", "a:b"])
def test_bad_source_id_pattern(bad_id: str) -> None:
    message = error_of(source("ok") + source(bad_id, keys='"another-key-1"'))
    assert "sources[1].id: " in message
    assert "regex" in message


def test_bad_destination_id_pattern() -> None:
    message = error_of(source() + '[[destinations]]\nid = "no spaces"\ntype = "file"\npath = "p"')
    assert "destinations[0].id: " in message
    assert "regex" in message


def test_bad_key_prefix() -> None:
    message = error_of('key_prefix = "a b"')
    assert "key_prefix: " in message
    assert "regex" in message


def test_empty_site_id() -> None:
    assert "sources[0].site_id: " in error_of(source(site=""))


def test_empty_keys_list() -> None:
    assert "sources[0].keys: Expected `array` of length >= 1" in error_of(source(keys=""))


# --- duplicates and cross-references ---------------------------------------------------------


def test_duplicate_source_ids() -> None:
    message = error_of(source("a", site="1", keys='"key-number-1"') + source("a", site="2", keys='"key-number-2"'))
    assert "sources[1].id: 'a' is used by another source" in message


def test_duplicate_destination_ids() -> None:
    text = (
        source()
        + '[[destinations]]\nid = "d"\ntype = "file"\npath = "x"\n'
        + '[[destinations]]\nid = "d"\ntype = "webhook"\nurl = "http://h/"\n'
    )
    assert "destinations[1].id: 'd' is used by another destination" in error_of(text)


def test_destination_sources_naming_a_missing_source() -> None:
    text = source("a") + '[[destinations]]\nid = "d"\ntype = "file"\npath = "x"\nsources = ["a", "nope"]'
    assert "destinations[0].sources[1]: no source has id 'nope'" in error_of(text)


# --- destination types -----------------------------------------------------------------------


def test_unknown_destination_type() -> None:
    text = (
        source() + '[[destinations]]\nid = "ok"\ntype = "file"\npath = "p"\n[[destinations]]\nid = "k"\ntype = "kafka"'
    )
    message = error_of(text)
    assert "destinations[1].type: unknown destination type 'kafka'" in message
    assert "webhook" in message
    assert "file" in message


def test_destination_type_not_a_string() -> None:
    text = source() + '[[destinations]]\nid = "d"\ntype = 3\npath = "p"'
    assert "destinations[0].type: " in error_of(text)


def test_missing_destination_type() -> None:
    text = source() + '[[destinations]]\nid = "d"\npath = "p"'
    assert "destinations[0].type: required key is missing" in error_of(text)


# --- missing required keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[sources]]\nsite_id = "1"\nkeys = ["abcdefgh1"]', "sources[0].id: required key is missing"),
        ('[[sources]]\nid = "a"\nkeys = ["abcdefgh1"]', "sources[0].site_id: required key is missing"),
        ('[[sources]]\nid = "a"\nsite_id = "1"', "sources[0].keys: required key is missing"),
        (source() + '[[destinations]]\nid = "d"\ntype = "webhook"', "destinations[0].url: required key is missing"),
        (source() + '[[destinations]]\nid = "d"\ntype = "file"', "destinations[0].path: required key is missing"),
        (source() + '[[destinations]]\ntype = "file"\npath = "p"', "destinations[0].id: required key is missing"),
    ],
)
def test_missing_required_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


# --- checks across keys ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://h/hook", "127.0.0.1:9000/hook", "http:///hook", "file:///etc/passwd"])
def test_bad_webhook_url(url: str) -> None:
    text = source() + f'[[destinations]]\nid = "d"\ntype = "webhook"\nurl = "{url}"'
    assert f"destinations[0].url: {url!r} is not an http:// or https:// URL" in error_of(text)


def test_blank_file_path() -> None:
    text = source() + '[[destinations]]\nid = "d"\ntype = "file"\npath = "  "'
    assert "destinations[0].path: cannot be empty" in error_of(text)


@pytest.mark.parametrize(
    "key",
    [
        "sha256:" + "g" * 64,  # not hex
        "sha256:" + "a" * 63,  # too short
        "sha256:" + "a" * 65,  # too long
        "sha256:" + "A" * 64,  # upper case
        "sha256:",
    ],
)
def test_hashed_key_with_bad_hex_or_length(key: str) -> None:
    message = error_of(source(keys=f'"a-plain-key-1", "{key}"'))
    assert "sources[0].keys[1]: a hashed key is 'sha256:' and 64 lowercase hex digits" in message


def test_too_short_plain_key() -> None:
    assert "sources[0].keys[0]: a plain key needs at least 8 characters" in error_of(source(keys='"1234567"'))


def test_plain_key_with_white_space() -> None:
    assert "sources[0].keys[0]: a key cannot contain white space" in error_of(source(keys='"abcd efgh"'))


def test_same_key_on_two_sources_of_one_site() -> None:
    text = source("a", site="29", keys='"shared-key-123"') + source(
        "b", site="29", keys='"other-1234", "shared-key-123"'
    )
    assert "sources[1].keys[1]: the same key belongs to source 'a' on site '29'" in error_of(text)


def test_same_key_plain_and_hashed_on_two_sources_of_one_site() -> None:
    # "shared-key-123" and its sha256 form are the same key: a request with it could belong to either source.
    hashed = "sha256:" + hashlib.sha256(b"shared-key-123").hexdigest()
    text = source("a", site="29", keys='"shared-key-123"') + source("b", site="29", keys=f'"{hashed}"')
    assert "sources[1].keys[0]: the same key belongs to source 'a' on site '29'" in error_of(text)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "127.0.0.1:6379", "memcached://h/"])
def test_bad_redis_url_scheme(url: str) -> None:
    assert f"redis_url: {url!r} is not a redis:// , rediss:// or unix:// URL" in error_of(f'redis_url = "{url}"')


def test_short_admin_token() -> None:
    assert "admin_token: needs at least 8 characters" in error_of('admin_token = "1234567"')


def test_every_problem_is_reported_each_on_its_own_line() -> None:
    text = 'admin_token = "x"\nredis_url = "http://h/"\n' + source(keys='"short"')
    lines = error_of(text).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("config: ") for line in lines)
    assert any("admin_token:" in line for line in lines)
    assert any("redis_url:" in line for line in lines)
    assert any("sources[0].keys[0]:" in line for line in lines)


# --- loading files ---------------------------------------------------------------------------


def test_load_valid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    path = tmp_path / "trackpipe.toml"
    path.write_text(FULL)
    assert load(path) == parse(FULL, env={})
    assert load(str(path)).sources[0].id == "shop-web"


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[edge]\nstauts_mode = "strict"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: edge.stauts_mode: unknown key (misspelt?)"


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: no such config file"


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a config file"


def test_load_from_with_nothing_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ConfigError) as info:
        load_from(None)
    assert "no config given" in str(info.value)
    assert "--config" in str(info.value)
    assert CONFIG_ENV in str(info.value)


def test_load_from_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.toml"
    path.write_text('[edge]\nstatus_mode = "strict"\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    assert load_from(None).edge.status_mode == "strict"


def test_load_from_explicit_path_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('[edge]\nstatus_mode = "strict"\n')
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.toml"))
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    assert load_from(str(explicit)).edge.status_mode == "strict"


def test_config_path() -> None:
    assert config_path(None, env={}) is None
    assert config_path(None, env={CONFIG_ENV: ""}) is None
    assert config_path(None, env={CONFIG_ENV: "/a.toml"}) == Path("/a.toml")
    assert config_path("/b.toml", env={CONFIG_ENV: "/a.toml"}) == Path("/b.toml")
