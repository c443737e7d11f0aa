"""Browser end-to-end tests: Python Playwright drives Debian's Chromium against the real Django
server (pytest-django's ``live_server``), which serves the API and the built frontend
(``frontend/dist`` is in ``STATICFILES_DIRS`` once built: run ``npm run build`` in frontend/).

Screenshots of every screen go to ``test-artifacts/screenshots/`` (gitignored).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist"
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1440, "height": 900}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def _frontend_built() -> None:
    index = DIST / "index.html"
    if not index.exists():
        pytest.fail(
            "frontend/dist is missing: build the frontend first (bin/test does; or cd frontend && npm run build)"
        )
    sources = [p for p in (ROOT / "frontend" / "src").rglob("*") if p.is_file()]
    stale = [p for p in sources if p.stat().st_mtime > index.stat().st_mtime + 1]
    if stale:
        pytest.fail(
            f"frontend/dist is older than {stale[0].relative_to(ROOT)}: rebuild it (cd frontend && npm run build)"
        )


@pytest.fixture(autouse=True)
def _browser_settings(settings: Any, _frontend_built: None) -> None:
    settings.STATICFILES_DIRS = [DIST]
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    # Many users per test: the production password hasher costs a quarter second each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Module-scoped: Playwright's sync API keeps an asyncio loop
    running in this thread while it is open, which Django's async-safety check would otherwise
    refuse for the tests' (plain synchronous) ORM calls; the permission is limited to it."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (bin/test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


class PageErrors:
    """Uncaught exceptions and console errors of the pages of one test."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Any) -> Any:
        page.wait_for_function = _csp_safe_wait(page)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console: {msg.text}")
                if msg.type == "error" and not _expected_console_error(msg.text)
                else None
            ),
        )
        return page


def _csp_safe_wait(page: Any) -> Any:
    """``page.wait_for_function`` that works under the app's Content-Security-Policy: Playwright's
    own compiles the predicate with eval inside the page, which the policy (rightly) refuses;
    ``page.evaluate`` goes through the DevTools protocol, which the policy does not govern."""
    import time

    def wait(expression: str, arg: Any = None, timeout: float | None = None, **_: Any) -> Any:
        deadline = time.monotonic() + (timeout if timeout is not None else 15_000) / 1000
        last: Exception | None = None
        while True:
            try:
                value = page.evaluate(expression, arg)
                if value:
                    return value
            except Exception as exc:  # the element is not there yet: try again
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"wait_for_function timed out: {expression!r} (last error: {last})")
            page.wait_for_timeout(50)

    return wait


def _expected_console_error(text: str) -> bool:
    # Failed requests the app handles itself (409 conflict, 404 not assigned, 400 shown in the UI).
    return bool(re.search(r"status of (400|401|403|404|409)", text))


@pytest.fixture
def page_errors() -> Iterator[PageErrors]:
    errors = PageErrors()
    yield errors
    assert not errors.errors, "errors in the browser:\n" + "\n".join(errors.errors)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def new_page(browser: Any, page_errors: PageErrors, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Factory of pages, each in its own browser context (its own session)."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        context.set_default_timeout(15_000)
        contexts.append(context)
        return page_errors.watch(context.new_page())

    yield make
    failed = getattr(request.node, "rep_call", None)
    for i, context in enumerate(contexts):
        if failed is not None and failed.failed:
            for page in context.pages:
                shot(page, f"FAILED-{request.node.name}-{i}")
        context.close()


@pytest.fixture
def page(new_page: Any) -> Any:
    return new_page()


def shot(page: Any, name: str, *, full: bool = False) -> Path:
    """Saves a screenshot of the page (``full``: the whole scrollable page) as a test artifact."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.wait_for_timeout(300)  # let the map finish its animation and re-render
    page.screenshot(path=str(path), full_page=full)
    return path


@pytest.fixture
def celery_worker(settings: Any, tmp_path: Path) -> Iterator[Any]:
    """A real Celery worker process (prefork, as in production) on the test database."""
    from tests.worker import celery_worker as start_worker

    env = {"TRAINING_DIR": str(tmp_path / "training"), "TRAINING_HEARTBEAT_SECONDS": "2"}
    with start_worker(log_path=tmp_path / "worker.log", env=env, name="browser") as process:
        yield process
