"""Fixtures of the review app's service tests: a project with its admin, an annotator, three
experts and one small image (64 x 48) with the project's default classes."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Image, Role
from tests.factories import image_create, member

W, H = 64, 48


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Many users per test; the production hasher costs a quarter second per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def annotator(project: Any) -> Any:
    return member(project, Role.ANNOTATOR, username="annotator")


@pytest.fixture
def experts(project: Any) -> list[Any]:
    return [member(project, Role.EXPERT, username=f"expert{i}") for i in range(3)]


@pytest.fixture
def class_id(project: Any) -> int:
    return int(project.classes.get(name="thyroid cell").pk)


@pytest.fixture
def other_class_id(project: Any) -> int:
    return int(project.classes.get(name="erythrocyte").pk)


@pytest.fixture
def image(project: Any) -> Image:
    return image_create(project, width=W, height=H)
