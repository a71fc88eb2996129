"""Shared test set-up."""

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Tiny models run fastest on one thread, and CI shares its 2 cores with other work:
    # two OpenMP threads contending for one free core can make a test 30x slower.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    """Debian's chromium driven by Playwright (no browser download): skipped where it is not
    installed, but a failure in CI, which must run the browser tests."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        message = "Debian's chromium is not installed: run `make browser` as root"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run the browser tests, not skip them)")
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()
