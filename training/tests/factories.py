"""Synthetic projects for the training tests: images from ``cytoseg.synthetic`` with their exact
cells written as verified (or annotation) cells, the way the verification workflow leaves them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from annotations.models import Cell, CellSource, Image, ImageStatus, Layer, Project, Role
from annotations.services import images as image_services
from cytoseg.contours import mask_to_polygon
from cytoseg.synthetic import SyntheticField, generate_field
from tests.factories import ProjectFactory, UserFactory

BETHESDA = ("IV", "V", "VI")


@dataclass
class SyntheticProject:
    project: Project
    admin: Any
    images: dict[str, list[Image]] = field(default_factory=dict)
    fields: dict[int, SyntheticField] = field(default_factory=dict)


def synthetic_png(fld: SyntheticField) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(fld.image).save(buffer, format="PNG")
    return buffer.getvalue()


def cells_write(image: Image, fld: SyntheticField, *, layer: str = Layer.VERIFIED) -> int:
    """Write the field's cells (full masks as polygons, in paint order) into ``layer``."""
    by_label = {c.model_label: c for c in image.project.classes.all()}
    rows = []
    for cell in fld.cells:
        poly = mask_to_polygon(cell.mask, x0=cell.x0, y0=cell.y0, tolerance=0.0)
        if poly is None:
            continue
        minx, miny, maxx, maxy = poly.bounds
        rows.append(
            Cell(
                image=image,
                layer=layer,
                cell_class=by_label[cell.label],
                polygon=[[float(x), float(y)] for x, y in list(poly.exterior.coords)[:-1]],
                bbox_x=minx,
                bbox_y=miny,
                bbox_w=maxx - minx,
                bbox_h=maxy - miny,
                area=float(poly.area),
                source=CellSource.CONSENSUS if layer == Layer.VERIFIED else CellSource.MANUAL,
            )
        )
    Cell.objects.bulk_create(rows)
    return len(rows)


def synthetic_project(
    *,
    splits: dict[str, int] | None = None,
    size: int = 96,
    n_cells: int = 10,
    n_erythrocytes: int = 4,
    seed: int = 0,
    verified: bool = True,
    project: Project | None = None,
) -> SyntheticProject:
    """A project with synthetic images per split; each image's cells are in the verified layer
    (status verified) or, with ``verified=False``, in the annotation layer only."""
    splits = splits if splits is not None else {"train": 3, "validation": 1, "test": 2}
    if project is None:
        project = ProjectFactory(created_by=UserFactory())
    admin = project.memberships.get(role=Role.ADMIN).user
    out = SyntheticProject(project=project, admin=admin)
    k = 0
    for split, count in splits.items():
        out.images[split] = []
        for _ in range(count):
            fld = generate_field(seed=seed + k, width=size, height=size, n_cells=n_cells, n_erythrocytes=n_erythrocytes)
            upload = SimpleUploadedFile(f"field-{seed + k}.png", synthetic_png(fld), content_type="image/png")
            image = image_services.image_upload_many(
                project=project,
                files=[upload],
                metadata={"split": split, "bethesda": BETHESDA[k % 3]},
                uploaded_by=admin,
            )[0]
            cells_write(image, fld, layer=Layer.ANNOTATION)
            if verified:
                cells_write(image, fld, layer=Layer.VERIFIED)
                Image.objects.filter(pk=image.pk).update(status=ImageStatus.VERIFIED)
            out.images[split].append(image)
            out.fields[image.pk] = fld
            k += 1
    return out
