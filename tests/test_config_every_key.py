"""Every setting of every table: a wrong value is refused with a message naming the key."""

from __future__ import annotations

import msgspec
import pytest

from trackpipe.config import Config, ConfigError, parse

TABLES = ["edge", "dedup", "dlq", "worker", "inspector"]
WRONG_VALUES = ['"not a value"', "-1", "0", "1e300", "true", "[1]", "{}"]


def settings() -> list[tuple[str, str, object]]:
    """(table, key, default) for every scalar setting of the tables."""
    out = []
    config = Config()
    for table in TABLES:
        section = getattr(config, table)
        for field in msgspec.structs.fields(section):
            out.append((table, field.name, getattr(section, field.name)))
    return out


def accepted(text: str) -> bool:
    try:
        parse(text, env={})
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(("table", "key", "default"), settings(), ids=lambda v: str(v))
def test_every_wrong_value_names_its_key(table: str, key: str, default: object) -> None:
    assert accepted(f"[{table}]\n{key} = {msgspec.json.encode(default).decode()}\n"), "the default must parse"
    refused = 0
    for wrong in WRONG_VALUES:
        text = f"[{table}]\n{key} = {wrong}\n"
        try:
            parse(text, env={})
        except ConfigError as exc:
            refused += 1
            assert f"{table}.{key}" in str(exc), (wrong, str(exc))
    assert refused >= 4, "most of these values must be refused"


@pytest.mark.parametrize("table", TABLES)
def test_an_unknown_key_in_every_table_is_named(table: str) -> None:
    with pytest.raises(ConfigError, match=rf"{table}\.no_such_setting: unknown key"):
        parse(f"[{table}]\nno_such_setting = 1\n", env={})
