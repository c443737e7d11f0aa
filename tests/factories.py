"""factory_boy factories shared by the API and integration tests."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from annotations.models import Image, Project, ProjectMembership, Role
from annotations.services import images as image_services
from annotations.services import projects

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
        return projects.project_create(created_by=creator, **kwargs)


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
    return image_services.image_upload_many(project=project, files=files, metadata=metadata, uploaded_by=creator.user)[
        0
    ]


def annotation_cells_bulk_create(
    *, image: Image, class_id: int, polygons: list[list[list[float]]], action: str = "import"
) -> list[int]:
    """Many annotation cells at once (bulk inserts, one history revision): a slide's layer for a
    test without a whole-layer save. The polygons must be simple and inside the image."""
    from annotations.models import AnnotationRevision, Cell, Layer
    from cytoseg.geometry import geometry_digest

    revision = image.revision + 1
    cells = []
    for points in polygons:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(points))))
        cells.append(
            Cell(
                image=image,
                layer=Layer.ANNOTATION,
                cell_class_id=class_id,
                polygon=points,
                bbox_x=min(xs),
                bbox_y=min(ys),
                bbox_w=max(xs) - min(xs),
                bbox_h=max(ys) - min(ys),
                area=area,
                geometry_digest=geometry_digest(points),
                revision=revision,
            )
        )
    created = Cell.objects.bulk_create(cells, batch_size=5000)
    ids = [c.pk for c in created]
    AnnotationRevision.objects.create(
        image=image,
        revision=revision,
        action=action,
        summary={"added": len(ids), "changed": 0, "deleted": 0},
        changes={
            "upserted": [
                {
                    "id": pk,
                    "class_id": class_id,
                    "polygon": points,
                    "source": "manual",
                    "score": None,
                    "model_version_id": None,
                    "author_id": None,
                    "provenance": {},
                }
                for pk, points in zip(ids, polygons, strict=True)
            ],
            "deleted": [],
        },
    )
    Image.objects.filter(pk=image.pk).update(revision=revision)
    image.revision = revision
    return ids


def square(x: float, y: float, size: float = 10) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size]]


def model_version_files(project: Project, kind: str, files: dict[str, bytes], **fields: Any) -> Any:
    """A registered model version whose files lie in the model storage, as an upload leaves them.

    The files are not checked (tests of the registry's bookkeeping use stand-in bytes); uploads
    go through ``training.services.model_version_upload``, which checks them.
    """
    import tempfile

    from training.models import ModelVersion
    from training.services.artifacts import artifacts_prefix_new, artifacts_upload

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        prefix = artifacts_prefix_new(project_id=project.pk)
        artifacts = artifacts_upload(folder=folder, prefix=prefix)
    number = ModelVersion.objects.filter(project=project, kind=kind).count() + 1
    return ModelVersion.objects.create(
        project=project,
        kind=kind,
        number=number,
        artifact_prefix=prefix,
        artifacts=artifacts,
        **fields,
    )


def model_object_read(version: Any, path: str) -> bytes:
    """The bytes of one of a version's stored files."""
    from django.core.files.storage import default_storage

    with default_storage.open(f"{version.artifact_prefix}/{path}", "rb") as handle:
        return bytes(handle.read())


def model_object_replace(version: Any, path: str, data: bytes | None) -> None:
    """Change (or, with None, delete) one of a version's stored files behind the registry's back."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    name = f"{version.artifact_prefix}/{path}"
    default_storage.delete(name)
    if data is not None:
        assert default_storage.save(name, ContentFile(data)) == name


def model_zip(folder: Path, *, name: str = "model.zip") -> SimpleUploadedFile:
    """A model folder as the .zip an admin uploads."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
    return zip_upload(files, name=name)


def zip_upload(files: dict[str, bytes], *, name: str = "model.zip") -> SimpleUploadedFile:
    """A zip archive of ``files`` (member name -> bytes) as an uploaded file."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="application/zip")
