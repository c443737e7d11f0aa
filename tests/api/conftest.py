from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from annotations.models import Role
from tests.factories import ProjectFactory, member


@pytest.fixture
def annotator(project: Any) -> Any:
    return member(project, Role.ANNOTATOR)


@pytest.fixture
def expert(project: Any) -> Any:
    return member(project, Role.EXPERT)


@pytest.fixture
def outsider(db: Any) -> Any:
    other = ProjectFactory()
    return other.memberships.get().user


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client
