"""Fixtures shared by the API tests and the apps' service tests: a project (its creator is
its admin). Imported by the conftest files that use them."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Role
from tests.factories import ProjectFactory, UserFactory


@pytest.fixture
def project(db: Any) -> Any:
    return ProjectFactory(created_by=UserFactory(username="owner"))


@pytest.fixture
def admin_user(project: Any) -> Any:
    return project.memberships.get(role=Role.ADMIN).user
