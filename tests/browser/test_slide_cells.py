"""A whole slide's cells in the editor (GitHub issue #14): read by viewport, saved by delta.

A 4096x3072 synthetic slide with every cell of its known masks in the annotation layer: the
editor never asks for the whole layer, reads the cells of the view as the doctor pans and zooms,
and a cell edited far from the origin is saved by a delta (PATCH, no PUT) and is there after a
reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from shapely.geometry import Polygon

from annotations.models import AnnotationRevision, Cell, Image, Layer, Role, TileStatus
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
    map_box,
    member,
    screen_of,
    wait_editor_ready,
    wait_saved,
)
from tests.factories import annotation_cells_bulk_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT = 4096, 3072


def _slide_with_cells(project: Any, tmp_path: Path) -> tuple[Image, int]:
    slide = slide_synthetic(width=WIDTH, height=HEIGHT, distinct=3, seed=11)
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff", mpp=0.25)
    admin = project.memberships.filter(role=Role.ADMIN).first().user
    upload = SimpleUploadedFile("slide.tif", path.read_bytes(), content_type="image/tiff")
    image = image_services.image_upload_many(project=project, files=[upload], metadata={}, uploaded_by=admin)[0]
    image_pyramid_build(image_id=image.pk)  # what the worker's task runs
    image.refresh_from_db()
    assert image.tile_status == TileStatus.DONE, image.tile_error
    # the known masks of the slide become its annotation layer (one bulk revision)
    instances = [Instance(x0=i.x0, y0=i.y0, mask=i.mask, label=i.label, score=1.0) for i in slide.instances()]
    polygons = [[list(map(float, p)) for p in c.points] for c in instances_to_polygons(instances, min_area=16)]
    class_id = project.classes.get(model_label=1).pk
    annotation_cells_bulk_create(image=image, class_id=class_id, polygons=polygons)
    return image, len(polygons)


def test_slide_cells_by_viewport_and_saved_by_delta(live_server: Any, page: Any, tmp_path: Path) -> None:
    project = ProjectFactory(name="Slides", created_by=UserFactory(username="head"))
    member(project, Role.ANNOTATOR, username="dr.slide")
    image, total = _slide_with_cells(project, tmp_path)
    assert total > 1000
    erythrocyte = project.classes.get(model_label=2).pk

    cell_requests: list[tuple[str, str]] = []
    page.on(
        "request",
        lambda r: cell_requests.append((r.method, r.url)) if f"/images/{image.pk}/cells" in r.url else None,
    )
    login(page, live_server.url, "dr.slide")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    page.wait_for_function("Number(document.querySelector('.map')?.dataset.cellsLoaded ?? -1) >= 0")
    page.wait_for_timeout(500)
    shot(page, "slide-cells-fitted")
    # every read of the annotation layer names a box: the whole layer is never asked for
    reads = [url for method, url in cell_requests if method == "GET" and "layer=proposal" not in url]
    assert reads and all("bbox=" in url for url in reads), reads

    # a cell far from the origin: the largest one in the bottom-right part of the slide
    far = (
        Cell.objects.filter(image=image, layer=Layer.ANNOTATION, bbox_x__gt=3000, bbox_y__gt=2200)
        .order_by("-area")
        .first()
    )
    assert far is not None
    inside = Polygon(far.polygon).representative_point()

    # pan a little, then zoom in about the cell (the wheel zooms about the pointer)
    box = map_box(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 40, cy - 30, steps=8)
    page.mouse.up()
    page.wait_for_timeout(400)
    sx, sy = screen_of(page, inside.x, inside.y, image)
    sx, sy = sx - 40, sy - 30  # the pan moved the slide
    before = len(cell_requests)
    for _ in range(10):
        page.mouse.move(sx, sy)
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(120)
    page.wait_for_timeout(1200)  # the view settles, its cells are read
    assert any("bbox=" in url for _, url in cell_requests[before:]), cell_requests[before:]
    loaded = int(page.locator(".map").get_attribute("data-cells-loaded") or "0")
    assert 0 < loaded < total, (loaded, total)  # the view's cells, not the slide's
    screen = ScreenMap(page)
    px, py = screen(inside.x, inside.y)
    page.mouse.click(px, py)
    page.wait_for_selector(".selection-box select")
    page.keyboard.press("2")  # the second class (erythrocyte) for the selected cell
    wait_saved(page)
    shot(page, "slide-cell-edited")

    far.refresh_from_db()
    assert far.cell_class_id == erythrocyte
    methods = [method for method, _ in cell_requests]
    assert "PATCH" in methods and "PUT" not in methods, methods
    last = AnnotationRevision.objects.filter(image=image).order_by("-revision").first()
    assert last is not None and last.action == "delta" and last.summary == {"added": 0, "changed": 1, "deleted": 0}

    # reload: the edit is there (read back by viewport at the same place)
    page.reload()
    wait_editor_ready(page)
    page.wait_for_timeout(500)
    sx, sy = screen_of(page, inside.x, inside.y, image)
    for _ in range(10):
        page.mouse.move(sx, sy)
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(120)
    page.wait_for_timeout(1200)
    screen = ScreenMap(page)
    px, py = screen(inside.x, inside.y)
    page.mouse.click(px, py)
    page.wait_for_selector(".selection-box select")
    assert page.locator(".selection-box select").input_value() == str(erythrocyte)
    shot(page, "slide-cell-after-reload")
