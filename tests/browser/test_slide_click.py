"""Click-to-segment and the box tool on a whole slide in the real browser (issues #13 and #14):
the W and Q tools work on a tiled image as on a plain one; the server reads a crop of the slide
around the prompt and answers in slide pixels, and the new cell is saved by a delta."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from shapely.geometry import Polygon

from annotations.models import Cell, Image, Layer, Role, TileStatus
from annotations.services import images as image_services
from annotations.services.slides import image_pyramid_build
from cytoseg.backends.base import Instance
from cytoseg.contours import instances_to_polygons
from cytoseg.slide_synthetic import slide_synthetic, slide_write
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    ScreenMap,
    UserFactory,
    login,
    member,
    screen_of,
    wait_editor_ready,
    wait_saved,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT = 2048, 1536


def _slide(project: Any, tmp_path: Path) -> tuple[Image, list[list[list[float]]]]:
    """A slide with its pyramid built and no cell; the true outlines of its lone cells."""
    slide = slide_synthetic(width=WIDTH, height=HEIGHT, field_width=512, field_height=512, distinct=3, seed=11)
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff", mpp=0.25)
    admin = project.memberships.filter(role=Role.ADMIN).first().user
    upload = SimpleUploadedFile("slide.tif", path.read_bytes(), content_type="image/tiff")
    image = image_services.image_upload_many(project=project, files=[upload], metadata={}, uploaded_by=admin)[0]
    image_pyramid_build(image_id=image.pk)  # what the worker's task runs
    image.refresh_from_db()
    assert image.tiled and image.tile_status == TileStatus.DONE, image.tile_error
    instances = [
        Instance(x0=i.x0, y0=i.y0, mask=i.mask, label=i.label, score=1.0) for i in slide.instances() if i.label == 1
    ]
    truth = [[list(map(float, p)) for p in c.points] for c in instances_to_polygons(instances, min_area=200)]
    return image, truth


def _lone_far_cell(truth: list[list[list[float]]]) -> list[list[float]]:
    """The largest true cell in the slide's bottom-right quarter with no other within 10 px."""
    polys = [Polygon(p) for p in truth]
    far = [
        i
        for i, p in enumerate(polys)
        if p.bounds[0] > WIDTH / 2 + 100 and p.bounds[1] > HEIGHT / 2 + 100 and p.bounds[2] < WIDTH - 100
    ]
    alone = [i for i in far if all(polys[i].distance(q) > 10 for j, q in enumerate(polys) if j != i)]
    assert alone
    return truth[max(alone, key=lambda i: polys[i].area)]


def _iou(a: list[list[float]], b: list[list[float]]) -> float:
    pa, pb = Polygon(a).buffer(0), Polygon(b).buffer(0)
    return float(pa.intersection(pb).area / pa.union(pb).area)


def _annotation(image: Image) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).order_by("id"))


def test_click_and_box_on_a_slide(live_server: Any, page: Any, tmp_path: Path) -> None:
    project = ProjectFactory(name="Slide clicks", created_by=UserFactory(username="head"))
    member(project, Role.ANNOTATOR, username="dr.slideclick")
    image, truth = _slide(project, tmp_path)
    target = _lone_far_cell(truth)
    inside = Polygon(target).representative_point()
    requests: list[tuple[str, str, int]] = []
    page.on("response", lambda r: requests.append((r.request.method, r.url, r.status)))
    login(page, live_server.url, "dr.slideclick")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)

    # zoom in about the cell (the wheel zooms about the pointer)
    sx, sy = screen_of(page, inside.x, inside.y, image)
    for _ in range(6):
        page.mouse.move(sx, sy)
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(120)
    page.wait_for_timeout(800)
    screen = ScreenMap(page)

    page.keyboard.press("w")
    assert "active" in (page.locator('[data-tool="segment"]').get_attribute("class") or "")
    page.mouse.click(*screen(inside.x, inside.y))
    page.wait_for_selector(".toast >> text=classical baseline", timeout=30_000)
    wait_saved(page)
    shot(page, "slide-click-segment")
    clicks = [s for m, u, s in requests if m == "POST" and u.endswith(f"/images/{image.pk}/segment/click")]
    assert clicks == [200], requests
    cells = _annotation(image)
    assert len(cells) == 1 and Polygon(cells[0].polygon).is_valid
    assert _iou(cells[0].polygon, target) > 0.6, (cells[0].polygon, target)  # in slide pixels
    assert any(m == "PATCH" and "/cells" in u for m, u, _ in requests)  # a slide saves by delta
    page.keyboard.press("Escape")

    # a box around the same cell's neighbourhood: the cells found there, none twice
    x0, y0, x1, y1 = Polygon(target).bounds
    page.keyboard.press("q")
    a, b = screen(x0 - 60, y0 - 60), screen(x1 + 60, y1 + 60)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=6)
    page.mouse.move(*b, steps=6)
    page.mouse.up()
    page.wait_for_selector(".toast >> text=/from the box|No new cell in the box/", timeout=30_000)
    wait_saved(page)
    shot(page, "slide-box")
    boxes = [s for m, u, s in requests if m == "POST" and u.endswith(f"/images/{image.pk}/segment/box")]
    assert boxes == [200], requests
    after = _annotation(image)
    assert len(after) >= 1
    centres = np.array([Polygon(c.polygon).centroid.coords[0] for c in after])
    assert (centres[:, 0] > WIDTH / 2).all() and (centres[:, 1] > HEIGHT / 2).all()  # where the box was
