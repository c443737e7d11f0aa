"""Regions of interest on a whole slide (GitHub issue #14): a doctor draws a region with the
region tool, pre-segments only it from the regions panel, and sees proposals only inside it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotations.models import Cell, Image, Layer, PresegmentStatus, Region, Role, TileStatus
from annotations.services import images as image_services
from annotations.services.slides import image_pyramid_build
from cytoseg.regions import cells_inside
from cytoseg.slide_synthetic import slide_synthetic, slide_write
from inference import tiled
from inference.models import PresegmentTile
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, member, screen_of, wait_editor_ready

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT = 2048, 1536
REGION = [(300, 250), (1000, 300), (900, 900), (350, 800)]  # image pixels


def _slide(project: Any, tmp_path: Path) -> Image:
    slide = slide_synthetic(width=WIDTH, height=HEIGHT, distinct=3, seed=5)
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff", mpp=0.25)
    admin = project.memberships.filter(role=Role.ADMIN).first().user
    upload = SimpleUploadedFile("slide.tif", path.read_bytes(), content_type="image/tiff")
    image = image_services.image_upload_many(project=project, files=[upload], metadata={}, uploaded_by=admin)[0]
    image_pyramid_build(image_id=image.pk)  # what the worker's task runs
    image.refresh_from_db()
    assert image.tiled and image.tile_status == TileStatus.DONE, image.tile_error
    return image


def test_draw_a_region_and_pre_segment_only_it(live_server: Any, page: Any, tmp_path: Path, settings: Any) -> None:
    settings.PRESEGMENT_TILE_SIZE = 512
    project = ProjectFactory(name="Regions", created_by=UserFactory(username="head"), auto_presegment=False)
    member(project, Role.ANNOTATOR, username="dr.region")
    image = _slide(project, tmp_path)
    login(page, live_server.url, "dr.region")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    page.wait_for_timeout(600)

    # the region tool (G): click the vertices, Enter closes the outline
    page.keyboard.press("g")
    for x, y in REGION:
        sx, sy = screen_of(page, x, y, image)
        page.mouse.click(sx, sy)
        page.wait_for_timeout(120)
    page.keyboard.press("Enter")
    page.wait_for_selector(".region-row")
    region = Region.objects.get(image=image)
    assert region.name == "Region 1"
    assert all(abs(px - x) < 15 and abs(py - y) < 15 for (px, py), (x, y) in zip(region.polygon, REGION, strict=True))
    shot(page, "region-drawn")

    # pre-segment only it: the tiles it meets, no others
    page.locator(".region-row [data-action='presegment-region']").click()
    deadline = time.monotonic() + 20
    while not PresegmentTile.objects.filter(image=image).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    planned = sorted(PresegmentTile.objects.filter(image=image).values_list("index", flat=True))
    assert planned == [0, 1, 4, 5], planned  # 512 px cores, 4 per row: the region's 2x2
    # the worker's task, run here (its service): every tile task of the run, then the stitch
    version_id = Image.objects.get(pk=image.pk).presegment_model_id
    assert version_id is not None
    for task in sorted(set(PresegmentTile.objects.filter(image=image).values_list("task", flat=True))):
        tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=task)
    assert Image.objects.get(pk=image.pk).presegment_status == PresegmentStatus.DONE
    proposals = list(Cell.objects.filter(image=image, layer=Layer.PROPOSAL).values_list("polygon", flat=True))
    assert len(proposals) > 20
    assert all(cells_inside(region.polygon, proposals))

    # the doctor sees them, inside the region only
    page.reload()
    wait_editor_ready(page)
    page.wait_for_selector(".region-row")
    page.wait_for_function(
        "n => (document.querySelector('.proposal-box')?.textContent ?? '').includes(`${n}`)", arg=len(proposals)
    )
    assert f"{len(proposals)}" in page.locator(".proposal-box").inner_text()
    # the layer panel counts them too, once the view's proposals are read (after the panel's
    # first render; the box above may already name the run's count from the image)
    page.wait_for_function(
        "n => document.querySelector('[data-count=\"proposals\"]')?.textContent === `${n}`", arg=len(proposals)
    )
    shot(page, "region-pre-segmented")
