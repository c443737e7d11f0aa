"""Verification by region on a whole slide (GitHub issue #14) in a real browser: the doctor
submits one region for verification from the editor's regions panel and sees its status change;
an expert opens that region's review from the work queue, on the region, with its cells only,
and submits; once the second expert has too, the region is verified and the other region is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotations.models import Cell, Image, ImageStatus, Layer, Region, Role, TileStatus
from annotations.services import images as image_services
from annotations.services.regions import region_create
from annotations.services.slides import image_pyramid_build
from cytoseg.slide_synthetic import slide_synthetic, slide_write
from review.models import Review, ReviewStatus
from review.services import reviews
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    UserFactory,
    annotate,
    login,
    member,
    screen_of,
    wait_editor_ready,
    wait_saved,
)
from tests.factories import square

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT = 2048, 1536
LEFT = [[200, 200], [900, 200], [900, 900], [200, 900]]
RIGHT = [[1100, 400], [1800, 400], [1800, 1200], [1100, 1200]]


def _slide(project: Any, tmp_path: Path) -> Image:
    slide = slide_synthetic(width=WIDTH, height=HEIGHT, distinct=3, seed=7)
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff", mpp=0.25)
    admin = project.memberships.filter(role=Role.ADMIN).first().user
    upload = SimpleUploadedFile("slide.tif", path.read_bytes(), content_type="image/tiff")
    image = image_services.image_upload_many(project=project, files=[upload], metadata={}, uploaded_by=admin)[0]
    image_pyramid_build(image_id=image.pk)  # what the worker's task runs
    image.refresh_from_db()
    assert image.tiled and image.tile_status == TileStatus.DONE, image.tile_error
    return image


def test_submit_a_region_for_verification_and_review_only_it(live_server: Any, new_page: Any, tmp_path: Path) -> None:
    project = ProjectFactory(name="Slides", created_by=UserFactory(username="head"), auto_presegment=False)
    doctor = member(project, Role.ANNOTATOR, username="dr.region")
    for name in ("dr.kim", "dr.osei"):
        member(project, Role.EXPERT, username=name)
    image = _slide(project, tmp_path)
    left = region_create(image=image, user=doctor, polygon=LEFT, name="Left field")
    right = region_create(image=image, user=doctor, polygon=RIGHT, name="Right field")
    annotate(
        image,
        doctor,
        [
            square(300, 300, 60),
            square(500, 600, 60),
            square(750, 350, 60),
            square(1300, 600, 60),
            square(1500, 900, 60),
        ],
    )
    left_cells = list(
        Cell.objects.filter(image=image, layer=Layer.ANNOTATION, bbox_x__lt=900)
        .order_by("id")
        .values_list("pk", flat=True)
    )
    assert len(left_cells) == 3

    # ---- the doctor submits the left region from the regions panel
    page = new_page()
    login(page, live_server.url, "dr.region")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    row = page.locator(f".region-row[data-region='{left.pk}']")
    row.wait_for()
    assert row.locator(".region-status").inner_text() == "New"
    assert page.locator(f".region-row[data-region='{right.pk}'] [data-action=submit-region]").count() == 1
    row.locator("[data-action=submit-region]").click()
    page.wait_for_selector(f".region-row[data-region='{left.pk}'][data-status=in_review]")
    assert row.locator(".region-status").inner_text() == "In review"
    assert row.locator("[data-action=submit-region]").count() == 0  # locked: no second submission
    assert row.locator("[data-action=presegment-region]").count() == 0
    assert page.locator(f".region-row[data-region='{right.pk}'] .region-status").inner_text() == "New"
    shot(page, "region-submitted-for-verification")
    # a cell inside the region under review is locked: the doctor's class change there is undone
    # (the server's version back, said why) and a change outside it is saved
    erythrocyte = project.classes.get(model_label=2).pk
    outside_id = Cell.objects.get(image=image, layer=Layer.ANNOTATION, bbox_x=1500).pk
    for x, y in ((330, 330), (1530, 930)):  # a left-region cell, then one outside every locked region
        sx, sy = screen_of(page, x, y, image)
        page.mouse.click(sx, sy)
        page.wait_for_selector(".selection-box select")
        page.keyboard.press("2")
        page.keyboard.press("Escape")
    page.wait_for_selector(".toast-warn:has-text('locked until an admin reopens it')")
    wait_saved(page)
    assert Cell.objects.get(pk=left_cells[0]).cell_class_id != erythrocyte
    assert Cell.objects.get(pk=outside_id).cell_class_id == erythrocyte
    shot(page, "region-locked-edit-undone")
    left.refresh_from_db()
    assert left.status == ImageStatus.IN_REVIEW
    image.refresh_from_db()
    assert image.status == ImageStatus.ANNOTATING  # the slide itself stays open
    assert sorted(r.reviewer.username for r in Review.objects.filter(round__region=left)) == ["dr.kim", "dr.osei"]

    # ---- an expert opens the region's review from the work queue: on the region, its cells only
    kim = new_page()
    login(kim, live_server.url, "dr.kim")
    kim.click(".project-card")
    card = kim.locator("a[data-queue=review]")
    card.wait_for()
    assert "Left field" in card.inner_text()
    card.click()
    kim.wait_for_function(
        "h => location.hash === h", arg=f"#/projects/{project.pk}/images/{image.pk}/review?region={left.pk}"
    )
    wait_editor_ready(kim)
    kim.wait_for_selector(f".map[data-region='{left.pk}']")
    assert kim.locator("[data-testid=decided]").inner_text().startswith("0 / 3")
    header = kim.locator(".topbar, header").first.inner_text()
    assert "Left field" in header and "Region in review" in header
    shot(kim, "region-review-open")
    kim.click("[data-action=submit-review]")
    kim.click(".dialog .btn-primary")  # accept the three undecided cells and submit
    kim.wait_for_selector(".map-banner.good")
    mine = Review.objects.get(round__region=left, reviewer__username="dr.kim")
    assert mine.status == ReviewStatus.SUBMITTED
    assert sorted(mine.decisions.values_list("cell_id", flat=True)) == left_cells

    # ---- the second expert (service), then the doctor sees the region verified
    osei = Review.objects.get(round__region=left, reviewer__username="dr.osei").reviewer
    reviews.review_draft_save(
        image=image, user=osei, decisions=[], added=[], comments=[], region=Region.objects.get(pk=left.pk)
    )
    reviews.review_submit(image=image, user=osei, accept_undecided=True, region=Region.objects.get(pk=left.pk))
    left.refresh_from_db()
    right.refresh_from_db()
    assert (left.status, right.status) == (ImageStatus.VERIFIED, ImageStatus.NEW)
    verified = Cell.objects.filter(image=image, layer=Layer.VERIFIED)
    assert sorted(c.provenance["origin_cell_id"] for c in verified) == left_cells
    page.reload()
    wait_editor_ready(page)
    page.wait_for_selector(f".region-row[data-region='{left.pk}'][data-status=verified]")
    assert row.locator(".region-status").inner_text() == "Verified"
    shot(page, "region-verified")


def test_an_admin_adjudicates_a_disputed_region_from_the_queue(live_server: Any, new_page: Any, tmp_path: Path) -> None:
    head = UserFactory(username="dr.head")
    project = ProjectFactory(name="Slides — adjudication", created_by=head, auto_presegment=False)
    doctor = member(project, Role.ANNOTATOR, username="dr.region")
    kim = member(project, Role.EXPERT, username="dr.kim")
    osei = member(project, Role.EXPERT, username="dr.osei")
    image = _slide(project, tmp_path)
    left = region_create(image=image, user=doctor, polygon=LEFT, name="Left field")
    right = region_create(image=image, user=doctor, polygon=RIGHT, name="Right field")
    ids = annotate(image, doctor, [square(300, 300, 60), square(500, 600, 60), square(1300, 600, 60)])
    in_left, in_right = ids[:2], ids[2:]
    from review.services.workflow import region_transition

    for region in (left, right):
        region_transition(region=Region.objects.get(pk=region.pk), user=doctor, action="submit")
    # the experts disagree on one cell of the left region
    for expert, second in ((kim, "accept"), (osei, "reject")):
        r = Region.objects.get(pk=left.pk)
        decisions = [{"cell_id": in_left[0], "decision": "accept"}, {"cell_id": in_left[1], "decision": second}]
        reviews.review_draft_save(image=image, user=expert, decisions=decisions, added=[], comments=[], region=r)
        reviews.review_submit(image=image, user=expert, region=r)
    left.refresh_from_db()
    assert left.status == ImageStatus.DISPUTED

    page = new_page()
    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    card = page.locator("a[data-queue=adjudicate]")
    card.wait_for()
    assert "Left field" in card.inner_text()
    card.click()
    page.wait_for_function(
        "h => location.hash === h", arg=f"#/projects/{project.pk}/images/{image.pk}/adjudicate?region={left.pk}"
    )
    wait_editor_ready(page)
    page.wait_for_selector(f".map[data-region='{left.pk}']")
    page.wait_for_selector(".current-dispute .option-row")
    assert page.locator(".dispute-row").count() == 1
    shot(page, "region-adjudication")
    page.keyboard.press("1")
    page.wait_for_function("document.querySelector('.adj-summary .progress-head b')?.textContent.startsWith('1 /')")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".map-banner.good")
    left.refresh_from_db()
    right.refresh_from_db()
    assert (left.status, right.status) == (ImageStatus.VERIFIED, ImageStatus.IN_REVIEW)
    verified = Cell.objects.filter(image=image, layer=Layer.VERIFIED)
    assert {c.provenance["region"] for c in verified} == {left.pk}
    assert not {c.provenance["origin_cell_id"] for c in verified} & set(in_right)
