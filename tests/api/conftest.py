from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from rest_framework.test import APIClient

from annotations.models import Image, Role
from cytoseg.slide_synthetic import SyntheticSlide, slide_write
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


def slide_upload(*, slide: SyntheticSlide, project: Any, user: Any, folder: Path) -> Image:
    """``slide`` written as a pyramidal TIFF and uploaded to ``project`` (no pre-segmentation;
    the pyramid task stays unsent: the test's transaction never commits)."""
    project.auto_presegment = False
    project.save(update_fields=["auto_presegment"])
    path = slide_write(slide, folder / "slide.tif", kind="pyramidal-tiff", quality=95)
    with path.open("rb") as handle, mock.patch("core.queue.task_send"):
        response = client_for(user).post(
            f"/api/v1/projects/{project.pk}/images", {"files": [handle]}, format="multipart"
        )
    assert response.status_code == 201, response.content
    return Image.objects.get(pk=response.json()[0]["id"])
