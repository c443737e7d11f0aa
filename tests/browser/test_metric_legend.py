"""The metric legend (issue #17): every abbreviation in the model registry and in the
schedule's promotion gate explains itself on hover (title), to screen readers
(aria-describedby) and in a legend beside the table."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login
from tests.factories import model_version_files
from training.models import DatasetSnapshot, Evaluation
from training.services.registry import model_version_baseline

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

KEY = ["dice", "iou", "f1_50", "f1_70", "ranked_ap50", "dsb", "coco_AP", "erythrocyte_fp_rate"]


def test_registry_and_schedule_explain_their_metrics(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Metric legend", created_by=admin)
    snapshot = DatasetSnapshot.objects.create(
        project=project, number=1, counts={"train": {"images": 4}, "test": {"images": 2}}
    )
    baseline = model_version_baseline(project=project)
    version = model_version_files(project, "cellpose", {"cellpose.pth": b"1"}, name="tuned", snapshot=snapshot)
    for v, base in ((baseline, 0.6), (version, 0.7)):
        Evaluation.objects.create(
            model_version=v, snapshot=snapshot, overall={k: base for k in KEY}, per_bethesda={}, intervals={}
        )

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/models")
    page.wait_for_selector("table.registry tbody tr")
    heads = page.locator("table.registry thead th[data-metric]")
    assert heads.count() == len(KEY)
    for i in range(heads.count()):
        head = heads.nth(i)
        title = head.get_attribute("title") or ""
        assert len(title) > 30, head.inner_text()
        described = head.get_attribute("aria-describedby")
        # the accessible description is the legend entry, with the same words
        assert page.locator(f"[id='{described}']").inner_text() == title
    dsb = page.locator("table.registry thead th[data-metric=dsb]").get_attribute("title") or ""
    assert "Data Science Bowl" in dsb
    legend = page.locator("[data-testid=registry-metric-legend]")
    assert legend.is_visible()
    assert legend.locator("dt").count() == len(KEY)
    shot(page, "registry-metric-legend", full=True)

    # "All metrics": the legend follows the columns (bAP50, BM-P@70, COCO AP75 ...)
    page.click("label.check:has-text('All metrics') input")
    page.wait_for_function("document.querySelectorAll('table.registry thead th[data-metric]').length > 8")
    n = page.locator("table.registry thead th[data-metric]").count()
    assert page.locator("[data-testid=registry-metric-legend] dt").count() == n

    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/schedule")
    legend = page.locator("[data-testid=schedule-metric-legend]")
    legend.wait_for()
    legend.locator("summary").click()
    assert "bAP50" in legend.inner_text() and "Lower is better" in legend.inner_text()
    guarded = page.locator(".check-grid label.check").first
    assert len(guarded.get_attribute("title") or "") > 30
    box = guarded.locator("input")
    assert page.locator(f"[id='{box.get_attribute('aria-describedby')}']").count() == 1
    shot(page, "schedule-metric-legend", full=True)
    # opened stays opened when the panel renders again (it polls its status), here after a tab switch
    page.click("nav.tabs a:has-text('Model registry')")
    page.wait_for_selector("table.registry")
    page.click("nav.tabs a:has-text('Retraining schedule')")
    page.locator("[data-testid=schedule-metric-legend]").wait_for()
    assert page.locator("[data-testid=schedule-metric-legend]").get_attribute("open") is not None
