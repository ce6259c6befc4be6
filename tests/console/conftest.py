"""The console's tests: the shared settings, with a QR that rotates quickly so a test can watch
the picture change; and, for the browser tests, Debian's chromium and where screenshots go."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from wanotify.settings import Settings

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: the README's pictures, written by a run with ``WANOTIFY_SCREENSHOTS=1``
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.sim_delivery_delay_seconds = 0.05
    settings.sim_qr_rotate_seconds = 2.0
    return settings


@pytest.fixture
async def browser(live_url: str) -> AsyncIterator[Browser]:
    """Closed before the live server stops (open event streams would keep it waiting)."""
    playwright = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    async with playwright.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def shots(tmp_path: Path, database_url: str) -> Path:
    """``docs/screenshots/`` when ``WANOTIFY_SCREENSHOTS`` is set (SQLite run only), else the
    test's tmp dir."""
    if os.environ.get("WANOTIFY_SCREENSHOTS") and database_url.startswith("sqlite"):
        DOCS.mkdir(parents=True, exist_ok=True)
        return DOCS
    return tmp_path
