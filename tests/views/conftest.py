"""Fixtures for the view tests: a tmp cache for built page data, the default
explorer page (built once per session), and headless Debian chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Never read or write the user's cache from tests.
    monkeypatch.setenv("CONVEYOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def default_data(request):
    """The explorer data exactly as `conveyor viz` embeds it by default.

    Building it simulates every configuration (seconds), so it goes through
    the data cache, kept in pytest's cache folder: the key covers every source
    file the data depends on, so any change to them rebuilds it.
    """
    from conveyor.views.data import build_data
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVEYOR_CACHE_DIR", str(request.config.cache.mkdir("conveyor-viz-data")))
        return build_data()


@pytest.fixture(scope="session")
def default_page(default_data, tmp_path_factory) -> Path:
    from conveyor.views.page import render_page, write_page
    path = tmp_path_factory.mktemp("page") / "explorer.html"
    html = render_page(default_data, initial={"schedule": "gpipe", "P": 4, "M": 8,
                                              "view": "fwd", "ratio": 2})
    return write_page(path, html)


def _need_chromium() -> None:
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is missing (Debian's chromium package; `make browser`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright Python package is missing (pip install playwright)"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run in CI: {missing}")
    pytest.skip(f"browser test skipped: {missing}; with CI=true this is a failure")


@pytest.fixture(scope="session")
def browser():
    _need_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $CONVEYOR_SCREENSHOT_DIR if set (to keep them),
    else the test's tmp folder."""
    d = Path(os.environ.get("CONVEYOR_SCREENSHOT_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d
