"""The verification tab of the project administration in a real browser: K, quorum, match IoU,
adjudicators and the active-learning order, with errors under their fields (the form's own
check and the server's); then the work queue says why its next image comes next."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import ProjectMembership, Role
from review.selectors import adjudicator_ids, verification_settings_get
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, member, synthetic_image

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_edits_verification_settings_and_the_queue_says_why(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — verification rules", created_by=admin)
    kim = member(project, Role.EXPERT, username="kim")
    member(project, Role.EXPERT, username="lee")
    member(project, Role.ANNOTATOR, username="ana")
    synthetic_image(project, seed=3, n_cells=4)

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/verification")
    page.wait_for_selector("form.verification-form")
    assert page.locator("a.tab.active").inner_text().strip() == "Verification"
    assert page.input_value("input[name=experts_required]") == "2"
    assert page.input_value("input[name=quorum]") == ""
    # admins always adjudicate (ticked, not a choice); annotators are never offered
    assert page.locator("[data-adjudicator='dr.head']").is_checked()
    assert page.locator("[data-adjudicator='dr.head']").is_disabled()
    assert page.locator("[data-adjudicator=ana]").count() == 0
    assert not page.locator("[data-adjudicator=kim]").is_checked()

    # the form's own check: each wrong field says why, nothing is sent
    page.fill("input[name=experts_required]", "3")
    page.fill("input[name=quorum]", "5")
    page.fill("input[name=match_iou]", "1.4")
    page.click("[data-action=save-verification]")
    assert "At most the number of reviewers (3)" in page.wait_for_selector("[data-error=quorum]").inner_text()
    assert "at most 1" in page.locator("[data-error=match_iou]").inner_text()
    assert page.locator("[data-error=experts_required]").count() == 0
    # the error is the field's description for a screen reader
    quorum = page.locator("input[name=quorum]")
    assert quorum.get_attribute("aria-invalid") == "true"
    assert quorum.get_attribute("aria-describedby") == "verification-error-quorum"
    shot(page, "46-verification-settings-errors")
    assert project.experts_required == 2

    # valid: K 3, quorum 2, IoU 0.6, kim adjudicates, uncertainty order
    page.fill("input[name=quorum]", "2")
    page.fill("input[name=match_iou]", "0.6")
    assert "2 of 3 reviewers" in page.locator("[data-consensus]").inner_text()
    page.check("[data-adjudicator=kim]")
    page.check("input[name=active_learning_order][value=uncertainty]")
    page.click("[data-action=save-verification]")
    page.wait_for_selector(".toast:has-text('Verification settings saved')")
    assert page.locator("[data-error]").count() == 0
    project.refresh_from_db()
    assert (project.experts_required, project.quorum, project.match_iou) == (3, 2, 0.6)
    assert adjudicator_ids(project=project) == [kim.pk]
    assert verification_settings_get(project=project).active_learning_order == "uncertainty"
    shot(page, "47-verification-settings-saved")

    # the server's 400 under its field: kim left the project while the page was open
    page.check("[data-adjudicator=lee]")
    ProjectMembership.objects.filter(project=project, user=kim).delete()
    page.click("[data-action=save-verification]")
    error = page.wait_for_selector("[data-error=adjudicators]")
    assert "Not experts or admins of this project: kim." in error.inner_text()
    shot(page, "48-verification-settings-server-error")
    assert adjudicator_ids(project=project) == [kim.pk]  # nothing changed

    # the work queue: the waiting image is next "uncertain" (no proposals: after the scored ones)
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images")
    reason = page.wait_for_selector("[data-queue=annotate] .queue-reason")
    assert reason.get_attribute("data-reason") == "no_proposals"
    assert reason.inner_text().startswith("Why: no proposals yet")
    shot(page, "49-queue-reason")
