"""Accessibility (issue #17): axe-core (frontend/node_modules/axe-core, a devDependency) runs on
the main screens, which must have no "serious" or "critical" violation.

The page is opened in a context that bypasses the Content-Security-Policy only so that
Playwright can inject axe's script; the app itself runs as in production."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from annotations.models import Role
from review.models import Review
from tests.browser.conftest import ROOT, VIEWPORT, PageErrors, shot
from tests.browser.helpers import (
    ProjectFactory,
    UserFactory,
    annotate,
    login,
    member,
    submit_for_review,
    synthetic_image,
    wait_editor_ready,
)
from training.services import jobs
from training.tests.factories import synthetic_project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = ROOT / "frontend" / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = {"serious", "critical"}


@pytest.fixture
def axe_page(browser: Any, page_errors: PageErrors) -> Iterator[Any]:
    if not AXE.exists():
        pytest.fail("axe-core is missing: cd frontend && npm install")
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, bypass_csp=True)
    context.set_default_timeout(15_000)
    yield page_errors.watch(context.new_page())
    context.close()


def violations(page: Any, screen: str) -> list[str]:
    """The serious and critical axe violations on the page, one line each (rule, nodes)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
    lines = []
    for v in result["violations"]:
        if v.get("impact") in BLOCKING:
            targets = ", ".join(
                " ".join(n["target"]) if isinstance(n["target"], list) else str(n["target"]) for n in v["nodes"][:6]
            )
            detail = (v["nodes"][0].get("failureSummary") or "").replace("\n", " ")[:240]
            lines.append(f"{screen}: {v['impact']} {v['id']} ({v['help']}) on {len(v['nodes'])}: {targets} — {detail}")
    # icon-only buttons: a title is not enough (not announced everywhere, never on touch)
    unnamed = page.evaluate(
        """[...document.querySelectorAll('button, a[href], [role=button]')]
            .filter((el) => !el.textContent.trim() && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
            .map((el) => el.outerHTML.slice(0, 120))"""
    )
    lines += [f"{screen}: icon-only control without aria-label: {html}" for html in unnamed]
    return lines


def test_main_screens_have_no_serious_accessibility_violations(live_server: Any, axe_page: Any) -> None:
    page = axe_page
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Accessible project", created_by=admin)
    annotator = member(project, Role.ANNOTATOR, username="dr.ruiz")
    for name in ("dr.kim", "dr.osei"):
        member(project, Role.EXPERT, username=name)
    image, _ = synthetic_image(project, seed=21, bethesda="IV", split="train")
    found: list[str] = []

    login(page, live_server.url, "dr.head")
    page.wait_for_selector(".project-card")
    found += violations(page, "project list")

    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    page.wait_for_selector(".image-grid:not(.is-loading) .image-card")
    page.wait_for_timeout(300)  # the grid fades in (opacity): contrast is judged on the settled page
    found += violations(page, "image list")
    # its upload and pre-segmentation panels
    page.click("[data-action=open-upload]")
    page.wait_for_selector(".upload-panel")
    page.click("[data-action=open-presegment]")
    page.wait_for_timeout(500)
    found += violations(page, "image list with its panels")

    # a project without images: the guided start instead of the grid
    empty = ProjectFactory(name="Empty project", created_by=admin)
    page.goto(f"{live_server.url}/#/projects/{empty.pk}")
    page.wait_for_selector("[data-testid=first-run]")
    page.wait_for_timeout(300)
    found += violations(page, "first run")

    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    found += violations(page, "editor")
    shot(page, "a11y-editor")

    for tab in ("training", "models", "schedule", "agreement", "members", "webhooks"):
        page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/{tab}")
        page.wait_for_selector("nav.tabs", timeout=10_000)
        page.wait_for_selector(".loading-block", state="detached", timeout=10_000)
        page.wait_for_timeout(300)
        found += violations(page, f"admin {tab}")
    # a training job's screen
    synthetic_project(project=project, splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    with mock.patch("core.queue.task_send"):
        job = jobs.training_job_start(project=project, user=admin, kind="cellpose", config={"preset": "tiny"})
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/jobs/{job.pk}")
    page.wait_for_selector(".job-progress [role=progressbar]")
    page.wait_for_timeout(300)
    found += violations(page, "training job")
    # an expert's review of a submitted image
    submitted, outlines = synthetic_image(project, seed=22, bethesda="II", split="train")
    annotate(submitted, annotator, outlines[:4])
    submit_for_review(submitted, annotator)
    reviewer = Review.objects.filter(image=submitted, status="assigned").select_related("reviewer").first()
    assert reviewer is not None
    page.click("button[aria-label='Sign out']")
    page.wait_for_selector("input[name=username]")
    login(page, live_server.url, reviewer.reviewer.username)
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{submitted.pk}/review")
    wait_editor_ready(page)
    found += violations(page, "review")
    shot(page, "a11y-review")
    assert not found, "axe found serious or critical violations:\n" + "\n".join(found)
