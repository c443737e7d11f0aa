"""factory_boy factories shared by the API and integration tests."""

from __future__ import annotations

import io
from typing import Any

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from annotations import services
from annotations.models import Image, Project, ProjectMembership, Role

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create:
            self.save()


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"Project {n}")
    auto_presegment = False

    @classmethod
    def _create(cls, model_class: type[Project], *args: Any, **kwargs: Any) -> Project:
        creator = kwargs.pop("created_by", None) or UserFactory()
        return services.project_create(created_by=creator, **kwargs)


def member(project: Project, role: str = Role.ANNOTATOR, **user_kwargs: Any) -> Any:
    user = UserFactory(**user_kwargs)
    ProjectMembership.objects.create(project=project, user=user, role=role)
    return user


def png_bytes(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    array = rng.integers(0, 255, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(name: str = "field.png", data: bytes | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data if data is not None else png_bytes(), content_type="image/png")


def image_create(project: Project, *, seed: int = 0, width: int = 64, height: int = 48, **metadata: Any) -> Image:
    creator = project.memberships.filter(role=Role.ADMIN).first()
    assert creator is not None
    files = [upload(f"img-{seed}.png", png_bytes(width, height, seed))]
    return services.image_upload_many(project=project, files=files, metadata=metadata, uploaded_by=creator.user)[0]


def square(x: float, y: float, size: float = 10) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size]]
