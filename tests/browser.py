"""Driving the console's pages in headless Chromium (selenium, with Debian's chromium and chromium-driver).

Fixtures: `chrome` (a WebDriver, one per test), `console_stack` (a function: config text with
`{redis_url}` and `{admin_token}` placeholders → a running valkey, edge, worker and console, their URLs).
Helpers: `sign_in`, `screenshot` (<name>.png at desktop and phone widths: into docs/console/ with
TRACKPIPE_SCREENSHOTS=1, else a temporary directory, so that a test run leaves tracked files alone),
`wait_for`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support import ROOT, poll_until, running_console, running_edge, start_worker, stop_worker

ADMIN_TOKEN = "admin-token-0123456789"
SHOTS = (
    ROOT / "docs" / "console"
    if os.environ.get("TRACKPIPE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "trackpipe-console-shots"
)
DESKTOP, PHONE = (1280, 900), (390, 844)
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def chrome() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or DRIVER is None:
        pytest.fail("chromium and chromium-driver are needed for the console's browser tests (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "the page") -> Any:
    return poll_until(lambda: _quietly(check), timeout, what)


def _quietly(check: Callable[[], Any]) -> Any:
    from selenium.common.exceptions import WebDriverException

    try:
        return check()
    except WebDriverException:
        return None


def sign_in(driver: Any, base_url: str, token: str = ADMIN_TOKEN, then: str = "/") -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/login?next={then}")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()


def screenshot(driver: Any, name: str) -> None:
    """The current page at desktop and at phone width: <name>.png and <name>-phone.png in SHOTS."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for size, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
        driver.set_window_size(*size)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size[0], min(max(size[1], int(height)), 4000))
        driver.save_screenshot(str(SHOTS / f"{name}{suffix}.png"))
    driver.set_window_size(*DESKTOP)


class Stack(msgspec.Struct):
    edge: str
    console: str
    config: Path
    redis_url: str


@pytest.fixture
def console_stack(tmp_path: Path, valkey_url: str) -> Iterator[Callable[[str], Stack]]:
    """`start(config_text)`: a valkey (the test's), the edge, a worker on every queue and the console."""
    with contextlib.ExitStack() as stack:

        def start(text: str) -> Stack:
            config = tmp_path / "trackpipe.toml"
            config.write_text(text.format(redis_url=valkey_url, admin_token=ADMIN_TOKEN))
            worker = start_worker(config, log=tmp_path / "worker.log")
            stack.callback(stop_worker, worker)
            edge = stack.enter_context(running_edge(config))
            console = stack.enter_context(running_console(config, log=tmp_path / "console.log"))
            return Stack(edge, console, config, valkey_url)

        yield start
