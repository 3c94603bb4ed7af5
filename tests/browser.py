"""What the Playwright tests share: Debian's Chromium (never a downloaded browser), its flags,
the skip when it is absent, and the fixtures that launch it beside Django's ORM.

A browser test module does `from .browser import *` (fixtures and `pytestmark` come with it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module", autouse=True)
def _orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an event loop running in the main thread, so Django would
    refuse the test's own ORM calls (fixtures, assertions) as "async unsafe". They are not run
    concurrently with anything, so allow them, for the browser modules only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def browser(_orm_beside_playwright: None) -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "DOCS",
    "VIEWPORT",
    "_orm_beside_playwright",
    "browser",
    "pytestmark",
]
