"""RQ's key prefix follows the config without any entry point binding it by hand: importing
trackpipe defaults it, loading a config file binds the file's `key_prefix`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SCRIPT = """
import sys
from trackpipe.config import ConfigError, load
config = load(sys.argv[1])
import rq.defaults
from redis import Redis
from trackpipe.jobs import make_queue
from trackpipe.keys import KeyLayout
print(rq.defaults.RQ_KEY_PREFIX)
print(make_queue("ingest", Redis()).key == KeyLayout(config.key_prefix).queue("ingest"))
try:
    load(sys.argv[2])
except ConfigError as exc:
    print("refused:", exc)
"""


def run(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "RQ_KEY_PREFIX"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_loading_a_config_binds_its_prefix_and_refuses_another_later(tmp_path: Path) -> None:
    shop, other = tmp_path / "shop.toml", tmp_path / "other.toml"
    shop.write_text('key_prefix = "shop"\n')
    other.write_text('key_prefix = "other"\n')
    prefix, same_queue, refused = run(str(shop), str(other))
    assert prefix == "shop:rq"
    assert same_queue == "True"
    # A second config with another prefix in the same process cannot be honoured: a ConfigError
    # naming the file and the key (SIGHUP reload keeps the running config).
    assert refused.startswith(f"refused: {other}: key_prefix 'other':")
    assert "shop:rq" in refused


def test_the_default_prefix_needs_no_config(tmp_path: Path) -> None:
    default = tmp_path / "default.toml"
    default.write_text("")
    assert run(str(default), str(default)) == ["trackpipe:rq", "True"]  # loading it again is fine
