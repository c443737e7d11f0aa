"""Data set-up (through the services, as the app would) and browser steps shared by the tests."""

from __future__ import annotations

import io
import re
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from annotations.models import Cell, Image, Layer, Role
from annotations.services import cells as cell_services
from annotations.services import images as image_services
from cytoseg.contours import mask_to_polygon
from cytoseg.synthetic import generate_field
from review.services import workflow as review_workflow
from tests.factories import PASSWORD, ProjectFactory, UserFactory, member

__all__ = ["PASSWORD", "ProjectFactory", "UserFactory", "member"]


def synthetic_image(
    project: Any, *, seed: int = 1, width: int = 640, height: int = 480, n_cells: int = 10, **metadata: Any
) -> tuple[Image, list[list[list[float]]]]:
    """A synthetic Diff-Quik field uploaded to the project, and its true cell outlines."""
    field = generate_field(seed=seed, width=width, height=height, n_cells=n_cells, n_erythrocytes=3)
    buffer = io.BytesIO()
    PILImage.fromarray(field.image).save(buffer, format="PNG")
    admin = project.memberships.filter(role=Role.ADMIN).first().user
    upload = SimpleUploadedFile(f"field-{seed:03d}.png", buffer.getvalue(), content_type="image/png")
    image = image_services.image_upload_many(project=project, files=[upload], metadata=metadata, uploaded_by=admin)[0]
    outlines = []
    for cell in field.cells:
        if cell.label != 1:
            continue
        poly = mask_to_polygon(cell.mask, x0=cell.x0, y0=cell.y0, tolerance=1.0)
        if poly is not None and poly.area > 80:
            outlines.append([[round(float(x), 1), round(float(y), 1)] for x, y in list(poly.exterior.coords)[:-1]])
    return image, outlines


def annotate(image: Image, user: Any, polygons: list[list[list[float]]], class_id: int | None = None) -> list[int]:
    """Write the annotation layer as ``user`` (the first write makes them the annotator)."""
    image.refresh_from_db()
    class_id = class_id or image.project.classes.get(model_label=1).pk
    cells = [{"class_id": class_id, "polygon": p} for p in polygons]
    cell_services.cells_replace(image=image, user=user, base_revision=image.revision, cells=cells)
    image.refresh_from_db()
    return list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).order_by("id").values_list("pk", flat=True))


def proposals_create(image: Image, outlines: list[list[list[float]]], *, area: float | None = None) -> list[Cell]:
    """Proposals of the project's baseline model on ``image``, one per outline (thyroid cells,
    score 0.9), as pre-segmentation would store them."""
    from training.services.registry import model_version_baseline

    version = model_version_baseline(project=image.project)
    class_id = image.project.classes.get(model_label=1).pk
    out = []
    for poly in outlines:
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        out.append(
            Cell.objects.create(
                image=image,
                layer=Layer.PROPOSAL,
                cell_class_id=class_id,
                polygon=poly,
                bbox_x=min(xs),
                bbox_y=min(ys),
                bbox_w=w,
                bbox_h=h,
                area=w * h if area is None else area,
                score=0.9,
                model_version=version,
            )
        )
    return out


def login(page: Any, base_url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/#/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_selector(".topbar .user-name")


def wait_editor_ready(page: Any) -> None:
    page.wait_for_selector(".map-overlay", state="hidden")
    page.wait_for_function("document.querySelector('.map canvas') !== null")
    page.wait_for_timeout(250)  # the first render of the layers


def map_box(page: Any) -> dict[str, float]:
    return page.locator(".map").bounding_box()


def image_point(page: Any, sx: float, sy: float) -> tuple[float, float]:
    """Image pixel coordinates under the screen point (read from the status bar readout)."""
    page.mouse.move(sx, sy)
    page.wait_for_timeout(80)  # the readout updates on the next animation frame
    page.wait_for_function("/x \\d+/.test(document.querySelector('.coords').textContent)")
    text = page.locator(".coords").inner_text()
    m = re.search(r"x (\d+)\s+y (\d+)", text)
    assert m, text
    return float(m.group(1)), float(m.group(2))


def screen_of(page: Any, x: float, y: float, image: Image) -> tuple[float, float]:
    """Screen point of an image pixel, for a view fitted to the image (as after loading)."""
    box = map_box(page)
    pad = 24
    scale = min((box["width"] - 2 * pad) / image.width, (box["height"] - 2 * pad) / image.height)
    ox = box["x"] + box["width"] / 2 - image.width * scale / 2
    oy = box["y"] + box["height"] / 2 - image.height * scale / 2
    return ox + x * scale, oy + y * scale


def save_status(page: Any) -> str:
    return page.locator(".save-status").inner_text()


def wait_saved(page: Any, text: str = "All changes saved", timeout: int = 15_000) -> None:
    page.wait_for_function(
        "t => document.querySelector('.save-status')?.textContent.includes(t)", arg=text, timeout=timeout
    )


class ScreenMap:
    """Image pixel -> screen point for the map's current view, measured with the coordinate
    readout of the status bar at two points around the centre of the map (no zoom or pan in
    between; the screens centre the current cell)."""

    def __init__(self, page: Any, spread: float = 0.12) -> None:
        box = map_box(page)
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        dx, dy = box["width"] * spread, box["height"] * spread
        a, b = (cx - dx, cy - dy), (cx + dx, cy + dy)
        ia, ib = image_point(page, *a), image_point(page, *b)
        self.kx = (b[0] - a[0]) / (ib[0] - ia[0])
        self.ky = (b[1] - a[1]) / (ib[1] - ia[1])
        self.a, self.ia = a, ia

    def __call__(self, x: float, y: float) -> tuple[float, float]:
        return self.a[0] + (x - self.ia[0]) * self.kx, self.a[1] + (y - self.ia[1]) * self.ky


def submit_for_review(image: Image, annotator: Any) -> None:
    review_workflow.image_transition(image=image, user=annotator, action="submit")
    image.refresh_from_db()
