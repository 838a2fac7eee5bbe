"""The `trackpipe` command line, run as the real console script (and as `python -m commands`)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import ROOT, TEST_KEY, config_text, free_port, running_edge, wait_for_http
from trackpipe import __version__
from trackpipe.auth import KeyRing
from trackpipe.config import parse
from trackpipe.keys import KeyLayout

# Real processes (the CLI, the edge under uvicorn): the full suite, not the fast set.
pytestmark = pytest.mark.slow

TRACKPIPE = Path(sys.executable).parent / "trackpipe"
ENV_VARS = ("TRACKPIPE_CONFIG", "TRACKPIPE_REDIS_URL")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(extra)
    return env


def trackpipe(*args: str, env: dict[str, str] | None = None, module: bool = False) -> subprocess.CompletedProcess:
    """Run the command line to completion. Commands that should fail fast must not start a server:
    the timeout turns a server that started anyway into a failure."""
    cmd = [sys.executable, "-m", "commands", *args] if module else [str(TRACKPIPE), *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=env or clean_env(), capture_output=True, text=True, timeout=60, check=False
    )


def assert_usage_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    for needle in needles:
        assert needle in done.stderr, f"{needle!r} not in stderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr


def test_console_script_is_installed() -> None:
    assert TRACKPIPE.is_file(), f"no console script at {TRACKPIPE}"
    assert os.access(TRACKPIPE, os.X_OK)


# -- keys ------------------------------------------------------------------------------------


def test_keys_new_prints_a_key_and_its_sha256() -> None:
    done = trackpipe("keys", "new")
    assert done.returncode == 0, done.stderr
    key_match = re.search(r"^key:\s+(\S+)$", done.stdout, re.MULTILINE)
    hash_match = re.search(r"^config:\s+(sha256:([0-9a-f]{64}))$", done.stdout, re.MULTILINE)
    assert key_match and hash_match, done.stdout
    key, hashed, hex_digest = key_match.group(1), hash_match.group(1), hash_match.group(2)
    assert hashlib.sha256(key.encode()).hexdigest() == hex_digest
    assert key not in hex_digest and len(key) >= 32

    # The printed config line is accepted in a config, and the printed key opens it.
    config = parse(f'[[sources]]\nid = "app"\nsite_id = "5"\nkeys = ["{hashed}"]\n', env={}, origin="generated.toml")
    ring = KeyRing(config.sources)
    assert ring.resolve("5", key) is config.sources[0]
    assert ring.resolve("5", key + "x") is None


def test_keys_new_makes_a_different_key_each_time() -> None:
    first, second = trackpipe("keys", "new"), trackpipe("keys", "new")
    assert first.returncode == second.returncode == 0
    assert first.stdout != second.stdout


# -- version and usage errors ------------------------------------------------------------------


@pytest.mark.parametrize("module", [False, True], ids=["console-script", "python-m"])
def test_version(module: bool) -> None:
    done = trackpipe("--version", module=module)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"trackpipe {__version__}"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ((), ("required", "COMMAND")),
        (("frobnicate",), ("invalid choice", "frobnicate")),
        (("keys",), ("required", "ACTION")),
        (("edge", "--port", "abc"), ("--port", "abc")),
        (("edge", "--port", "70000"), ("--port", "70000")),
        (("dev", "--port", "70000"), ("--port", "70000")),
        (("edge", "--workers", "0"), ("--workers", "0")),
        (("edge", "--workers", "two"), ("--workers", "two")),
    ],
    ids=[
        "no-command",
        "unknown-command",
        "keys-no-action",
        "port-abc",
        "port-70000",
        "dev-port-70000",
        "workers-0",
        "workers-two",
    ],
)
def test_usage_errors_exit_2_naming_the_argument(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    done = trackpipe(*args)
    assert_usage_error(done, "usage: trackpipe", *needles)


# -- edge: the config file ---------------------------------------------------------------------


def test_edge_without_config_says_what_to_pass() -> None:
    done = trackpipe("edge", "--port", str(free_port()))
    assert_usage_error(done, "--config", "TRACKPIPE_CONFIG")


BAD_CONFIGS = {
    "misspelt-top-level-key": ('redis_ur = "redis://127.0.0.1:6379/0"\n', ["redis_ur", "unknown"]),
    "misspelt-table-key": ('[edge]\nstatus_mod = "strict"\n', ["edge.status_mod", "unknown key"]),
    "misspelt-source-key": (
        '[[sources]]\nid = "a"\nsite_id = "1"\nkey = ["a-long-enough-key"]\n',
        ["sources[0]", "key"],
    ),
    "invalid-toml": ('redis_url = "redis://127.0.0.1:6379/0\n', ["not valid TOML"]),
    "invalid-toml-table": ("[edge\nstatus_mode = 'strict'\n", ["not valid TOML", "line 1"]),
    "bad-value": ('[edge]\nstatus_mode = "lenient"\n', ["edge.status_mode"]),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_edge_with_bad_config_exits_2_naming_file_and_problem(tmp_path: Path, name: str) -> None:
    content, needles = BAD_CONFIGS[name]
    path = tmp_path / f"{name}.toml"
    path.write_text(content)
    done = trackpipe("edge", "--config", str(path), "--port", str(free_port()))
    assert_usage_error(done, str(path), *needles)


def test_edge_with_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "trackpipe.toml"
    done = trackpipe("edge", "--config", str(path), "--port", str(free_port()))
    assert_usage_error(done, str(path), "no such config file")


def test_edge_config_that_is_a_directory(tmp_path: Path) -> None:
    done = trackpipe("edge", "--config", str(tmp_path), "--port", str(free_port()))
    assert_usage_error(done, str(tmp_path), "directory")


def test_trackpipe_config_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text("[dedup]\nwindow_second = 10\n")
    done = trackpipe("edge", "--port", str(free_port()), env=clean_env(TRACKPIPE_CONFIG=str(path)))
    assert_usage_error(done, str(path), "dedup.window_second", "unknown key")


def test_config_option_wins_over_env(tmp_path: Path) -> None:
    from_env = tmp_path / "from-env.toml"
    from_env.write_text('redis_url = "redis://127.0.0.1:6379/0"\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[edge]\nstatus_mod = 1\n")
    done = trackpipe(
        "edge", "--config", str(explicit), "--port", str(free_port()), env=clean_env(TRACKPIPE_CONFIG=str(from_env))
    )
    assert_usage_error(done, str(explicit), "edge.status_mod")


def test_trackpipe_redis_url_is_checked_like_redis_url(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(config_text("redis://127.0.0.1:6379/0"))
    done = trackpipe(
        "edge",
        "--config",
        str(path),
        "--port",
        str(free_port()),
        env=clean_env(TRACKPIPE_REDIS_URL="http://127.0.0.1:6379/0"),
    )
    assert_usage_error(done, "redis_url", "http://127.0.0.1:6379/0")


# -- edge: running against a real server -------------------------------------------------------


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_edge_honours_trackpipe_config(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "trackpipe.toml"
    path.write_text(config_text(valkey_url))
    port = free_port()
    proc = subprocess.Popen(
        [str(TRACKPIPE), "edge", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(TRACKPIPE_CONFIG=str(path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", proc=proc)
        assert httpx.get(f"{base}/readyz").status_code == 200
        # The sources come from that file too: its key is accepted and the event stored.
        answer = httpx.post(f"{base}/events", params={"tc_s": "29", "token": TEST_KEY}, json={"event_name": "x"})
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        assert valkey_client.llen(KeyLayout().queue("ingest")) == 1
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_trackpipe_redis_url_overrides_redis_url(
    tmp_path: Path, valkey_url: str, valkey_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "trackpipe.toml"
    path.write_text(config_text(dead_redis_url()))

    # Control: as written, the config points at nothing.
    with running_edge(path) as base:
        assert httpx.get(f"{base}/readyz").status_code == 503

    with running_edge(path, env={"TRACKPIPE_REDIS_URL": valkey_url}) as base:
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200, ready.text
        answer = httpx.post(f"{base}/events", params={"tc_s": "29", "token": TEST_KEY}, json={"event_name": "x"})
        assert answer.status_code == 200, answer.text
        assert valkey_client.llen(KeyLayout().queue("ingest")) == 1


def test_edge_ctrl_c_exits_0_without_traceback(tmp_path: Path, valkey_url: str) -> None:
    path = tmp_path / "trackpipe.toml"
    path.write_text(config_text(valkey_url))
    port = free_port()
    proc = subprocess.Popen(
        [str(TRACKPIPE), "edge", "--config", str(path), "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert "Traceback" not in stderr, stderr
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
