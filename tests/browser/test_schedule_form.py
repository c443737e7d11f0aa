"""The retraining-schedule form (issue #17, like the start-training form): typing a value, then
clicking "Save schedule" saves with the first click (the form used to re-render on the field's
`change`, fired by the blur of that very mousedown, and replace the button under the pointer)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.helpers import ProjectFactory, UserFactory, login
from training.models import TrainingPolicy

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_save_schedule_takes_the_first_click_after_typing(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Schedule form", created_by=admin)

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/schedule")
    page.wait_for_selector(".schedule-form")
    page.wait_for_load_state("networkidle")  # the registry's metric names re-render the form once
    page.locator("[data-field=cron_hour]").click()
    page.keyboard.press("Control+a")
    page.keyboard.type("22")
    page.locator("[data-field=min_new_images]").click()
    page.keyboard.press("Control+a")
    page.keyboard.type("7")
    page.click("[data-action=save-schedule]")  # one click, straight from the field
    page.wait_for_selector(".toast >> text=Schedule saved", timeout=5000)
    policy = TrainingPolicy.objects.get(project=project)
    assert policy.min_new_images == 7 and policy.cron_hour == "22"
