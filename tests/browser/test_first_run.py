"""The guided start (issue #17): a project without images shows the five steps to a first
verified image (classes, upload, pre-segment, annotate, submit), each with where it is done,
and the work queues say what brings work to them."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Role
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, member

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_new_project_guides_its_admin_and_its_doctors(live_server: Any, page: Any, new_page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Brand new", created_by=admin)
    member(project, Role.ANNOTATOR, username="dr.ruiz")

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    guide = page.locator("[data-testid=first-run]")
    guide.wait_for()
    steps = guide.locator("li[data-step]")
    assert [steps.nth(i).get_attribute("data-step") for i in range(steps.count())] == [
        "classes",
        "upload",
        "presegment",
        "annotate",
        "submit",
    ]
    classes = guide.locator("li[data-step=classes]")
    assert "Done" in classes.inner_text()  # a project is created with its classes
    assert (
        guide.locator("li[data-step=submit] a").get_attribute("href") == f"#/projects/{project.pk}/admin/verification"
    )
    assert "uploads come here" in page.locator(".queue-card[data-queue=annotate]").inner_text()
    shot(page, "first-run-admin", full=True)
    # the upload step opens the upload panel of this screen
    guide.locator("[data-action=first-run-upload]").click()
    page.wait_for_selector(".upload-panel")

    doctor = new_page()
    login(doctor, live_server.url, "dr.ruiz")
    doctor.goto(f"{live_server.url}/#/projects/{project.pk}")
    guide = doctor.locator("[data-testid=first-run]")
    guide.wait_for()
    assert guide.locator("button").count() == 0  # uploading and pre-segmenting are the admin's
    assert "A project admin uploads the images" in guide.inner_text()
