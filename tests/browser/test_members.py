"""The members tab of the project administration in a real browser: invite an existing user by
e-mail address, change a role, remove a member; the last admin stays."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import ProjectMembership, Role
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, member

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_invites_changes_roles_and_removes_members(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — team", created_by=admin)
    member(project, Role.ANNOTATOR, username="ana")
    UserFactory(username="dr.sato", email="sato@clinic.example")

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/members")
    page.wait_for_selector("table.members tr[data-member=ana]")
    # the only admin can be neither demoted nor removed
    assert page.locator("tr[data-member='dr.head'] [data-action=remove-member]").is_disabled()

    # an unknown user: the server's answer under the field
    page.fill("input[name=login]", "nobody@clinic.example")
    page.click("[data-action=invite]")
    error = page.wait_for_selector("[data-error=login]")
    assert "no user with the username or e-mail address" in error.inner_text()

    # invite by e-mail address, as an expert
    page.fill("input[name=login]", "sato@clinic.example")
    page.select_option("select[name=role]", "expert")
    page.click("[data-action=invite]")
    page.wait_for_selector("tr[data-member='dr.sato'][data-role=expert]")
    assert ProjectMembership.objects.get(project=project, user__username="dr.sato").role == Role.EXPERT
    assert page.locator("[data-error=login]").count() == 0
    shot(page, "27-members")

    # change a role: the annotator becomes an admin, so the first admin is no longer the last
    page.select_option("tr[data-member=ana] select.member-role", "admin")
    page.wait_for_selector("tr[data-member=ana][data-role=admin]")
    assert ProjectMembership.objects.get(project=project, user__username="ana").role == Role.ADMIN
    assert page.locator("tr[data-member='dr.head'] [data-action=remove-member]").is_enabled()

    # remove a member (after confirming)
    page.click("tr[data-member='dr.sato'] [data-action=remove-member]")
    page.wait_for_selector(".dialog")
    shot(page, "28-members-remove-confirm")
    page.click(".dialog .btn-danger")
    page.wait_for_selector("tr[data-member='dr.sato']", state="detached")
    assert not ProjectMembership.objects.filter(project=project, user__username="dr.sato").exists()
