"""A whole slide in the editor (GitHub issue #14): uploaded, tiled by a real Celery worker, opened,
panned and zoomed; only tiles are fetched (never a whole image), each level as the view needs
it, and cells stay in full-resolution image pixels."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotations.models import Image, Role, TileStatus
from annotations.services import images as image_services
from cytoseg.contours import mask_to_polygon
from cytoseg.slide_synthetic import slide_synthetic, slide_write
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    UserFactory,
    annotate,
    image_point,
    login,
    map_box,
    member,
    wait_editor_ready,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT = 4096, 3072  # the CI-sized slide of the issue
TILE = re.compile(r"/api/v1/images/(\d+)/tiles/(\d+)/(\d+)_(\d+)\.jpeg$")


def _slide_upload(project: Any, tmp_path: Path) -> tuple[Image, list[list[list[float]]]]:
    """The slide uploaded, and the true outlines of its cells around the centre (slide pixels)."""
    slide = slide_synthetic(width=WIDTH, height=HEIGHT, distinct=3, seed=11)
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff", mpp=0.25)
    admin = project.memberships.filter(role=Role.ADMIN).first().user
    upload = SimpleUploadedFile("slide.tif", path.read_bytes(), content_type="image/tiff")
    image = image_services.image_upload_many(project=project, files=[upload], metadata={}, uploaded_by=admin)[0]
    outlines = []
    for inst in slide.instances():
        near = abs(inst.x0 - WIDTH / 2) < 250 and abs(inst.y0 - HEIGHT / 2) < 180
        poly = mask_to_polygon(inst.mask, x0=inst.x0, y0=inst.y0, tolerance=1.0) if near and inst.label == 1 else None
        if poly is not None and poly.area > 200:
            outlines.append([[round(float(x), 1), round(float(y), 1)] for x, y in list(poly.exterior.coords)[:-1]])
    return image, outlines


def _wait_tiles_built(image: Image, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image.refresh_from_db()
        if image.tile_status in (TileStatus.DONE, TileStatus.FAILED):
            break
        time.sleep(0.5)
    assert image.tile_status == TileStatus.DONE, (image.tile_status, image.tile_error)


def test_slide_opens_pans_and_zooms_by_tiles(live_server: Any, page: Any, celery_worker: Any, tmp_path: Path) -> None:
    project = ProjectFactory(name="Slides", created_by=UserFactory(username="head"))
    doctor = member(project, Role.ANNOTATOR, username="dr.slide")
    image, outlines = _slide_upload(project, tmp_path)
    assert image.tiled and image.tile_status == TileStatus.QUEUED
    _wait_tiles_built(image)
    # the true outlines of cells near the centre, as annotations: in the zoomed screenshot they
    # lie on the cells of the full-resolution tiles (cells stay in full-resolution pixels)
    assert len(outlines) >= 5
    annotate(image, doctor, outlines)

    tiles: list[tuple[int, int, int, int]] = []
    other_images: list[str] = []

    def seen(response: Any) -> None:
        found = TILE.search(response.url)
        if found:
            tiles.append((response.status, int(found[2]), int(found[3]), int(found[4])))
        elif "/file" in response.url and "variant=display" in response.url:
            other_images.append(response.url)

    page.on("response", seen)
    login(page, live_server.url, "dr.slide")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    page.wait_for_function("document.querySelector('.map canvas') !== null")
    page.wait_for_timeout(800)
    first = shot(page, "slide-fitted")
    assert first.exists()
    assert tiles and all(status == 200 for status, *_ in tiles), tiles
    fitted_levels = {level for _, level, _, _ in tiles}
    # fitted to a ~1000 px map, the 4096 px slide needs a level 2-4x below full size (12)
    assert max(fitted_levels) <= 11, fitted_levels
    assert not other_images  # never the whole image

    # the readout is in full-resolution image pixels: the centre of the map is the slide's centre
    box = map_box(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    x, y = image_point(page, cx, cy)
    assert abs(x - WIDTH / 2) < WIDTH * 0.03 and abs(y - HEIGHT / 2) < HEIGHT * 0.03, (x, y)

    # zoom in on the centre until full-resolution tiles come
    before = len(tiles)
    for _ in range(12):
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(120)
    page.wait_for_timeout(800)
    zoomed = shot(page, "slide-zoomed")
    assert zoomed.exists()
    new = tiles[before:]
    assert new and max(level for _, level, _, _ in new) == 12, sorted({t[1] for t in new})
    x2, y2 = image_point(page, cx, cy)
    assert abs(x2 - x) < 60 and abs(y2 - y) < 60, (x, y, x2, y2)  # zoomed about the centre

    # pan: drag the map left and up; new full-resolution tiles to the right and below load
    before = len(tiles)
    for _ in range(3):  # beyond the tiles the zoom's intermediate views fetched
        page.mouse.move(cx + 300, cy + 200)
        page.mouse.down()
        page.mouse.move(cx - 300, cy - 200, steps=15)
        page.mouse.up()
        page.wait_for_timeout(200)
    page.wait_for_timeout(800)
    panned = shot(page, "slide-panned")
    assert panned.exists()
    x3, y3 = image_point(page, cx, cy)
    assert x3 > x2 + 100 and y3 > y2 + 60, (x2, y2, x3, y3)
    new = tiles[before:]
    assert new and all(status == 200 for status, *_ in new), new
    assert {level for _, level, _, _ in new} >= {12}
    assert all(status == 200 for status, *_ in tiles)
    assert not other_images
