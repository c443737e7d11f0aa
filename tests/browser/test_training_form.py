"""The start-training form (issue #17): typing a value, then clicking "Start training" starts
the job with the first click (the form used to re-render on the field's `change`, fired by the
blur of that very mousedown, and replace the button under the pointer)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.helpers import ProjectFactory, UserFactory, login
from training.models import TrainingJob
from training.tests.factories import synthetic_project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_start_training_takes_the_first_click_after_typing(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Training form", created_by=admin)
    synthetic_project(project=project, splits={"train": 2, "test": 1}, size=96, n_cells=6, n_erythrocytes=2)

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/training")
    page.wait_for_selector(".job-form")
    page.click(".segmented[data-name=preset] [data-value=tiny]")
    field = page.locator("input[data-field='config.synthetic.count']")
    field.click()
    page.keyboard.type("5")
    assert page.evaluate("document.activeElement?.dataset?.field") == "config.synthetic.count"
    # the preview follows while typing
    assert "synthetic" in page.locator(".config-preview pre").inner_text()
    page.click("[data-action=start-job]")  # one click, straight from the field
    page.wait_for_selector(".job-progress", timeout=5000)
    job = TrainingJob.objects.get(project=project)
    assert job.config["synthetic"] == {"count": 5}
    assert job.config["preset"] == "tiny"
