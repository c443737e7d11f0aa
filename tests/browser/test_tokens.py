"""The API tokens screen in a real browser: create a project-scoped token that expires (the
secret shown once, with a copy button), see it listed, use it, revoke it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from annotations.models import ApiToken, ProjectMembership, Role
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, member

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_user_creates_copies_lists_and_revokes_an_api_token(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — scripts", created_by=admin)
    other = ProjectFactory(name="Other project", created_by=admin)
    ana = member(project, Role.ANNOTATOR, username="ana")
    ProjectMembership.objects.create(project=other, user=ana, role=Role.ANNOTATOR)

    login(page, live_server.url, "ana")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click(".topbar [data-action=tokens]")
    page.wait_for_selector(".token-form select[name=project] option >> nth=2", state="attached")
    assert page.locator(".tokens .empty").count() == 1

    page.click("[data-action=create-token]")  # no name: said under the field, nothing sent
    assert "Give the token a name" in page.locator("[data-error=name]").inner_text()
    page.fill(".token-form input[name=name]", "nightly export")
    page.select_option(".token-form select[name=project]", str(project.pk))
    page.select_option(".token-form select[name=expiry]", "30")
    page.click("[data-action=create-token]")
    dialog = page.wait_for_selector(".dialog.secret-dialog, .secret-dialog")
    secret = page.locator(".secret-dialog input.secret-value").input_value()
    assert secret.startswith("cyt_")
    assert "it is not shown again" in dialog.inner_text()
    page.click("[data-action=copy-token]")
    page.wait_for_function("document.querySelector('[data-action=copy-token]').textContent.includes('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "29-token-created")
    page.click("[data-action=token-stored]")

    token = ApiToken.objects.get(user__username="ana")
    assert token.project_id == project.pk and token.expires_at is not None
    assert 29 <= (token.expires_at - token.created_at).days <= 30
    row = page.locator("tr[data-token='nightly export']")
    assert row.get_attribute("data-state") == "active"
    assert "Thyroid FNA — scripts" in row.inner_text()
    # the token works, for its project only
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200
    assert client.get(f"/api/v1/projects/{other.pk}").status_code in (403, 404)
    shot(page, "30-tokens", full=True)

    row.locator("[data-action=revoke-token]").click()
    page.click(".dialog .btn-danger")
    page.wait_for_selector("tr[data-token='nightly export'][data-state=revoked]")
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 401
