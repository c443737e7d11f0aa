"""Multi-expert verification in real browsers: two experts review an image blind, keyboard
driven, and it becomes verified; an admin adjudicates a disputed image."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Cell, Image, Layer, Role
from review.models import Review
from review.services import reviews
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    ScreenMap,
    UserFactory,
    annotate,
    login,
    member,
    submit_for_review,
    synthetic_image,
    wait_editor_ready,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _decided(page: Any) -> str:
    return page.locator("[data-testid=decided]").inner_text()


def _wait_draft_saved(page: Any) -> None:
    page.wait_for_function("document.querySelector('.save-status')?.textContent.includes('Draft saved')")


def _key(page: Any, key: str, decided_after: str | None = None) -> None:
    page.keyboard.press(key)
    if decided_after is not None:
        page.wait_for_function(
            "t => document.querySelector('[data-testid=decided]')?.textContent.startsWith(t)", arg=decided_after
        )


def test_two_experts_review_blind_and_the_image_becomes_verified(live_server: Any, new_page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — verification", created_by=admin)
    annotator = member(project, Role.ANNOTATOR, username="ana")
    member(project, Role.EXPERT, username="dr.kim")
    member(project, Role.EXPERT, username="dr.osei")
    image, outlines = synthetic_image(project, seed=41, n_cells=9, bethesda="IV")
    cell_ids = annotate(image, annotator, outlines[:4])
    submit_for_review(image, annotator)
    assert image.status == "in_review"
    assert sorted(r.reviewer.username for r in Review.objects.filter(image=image)) == ["dr.kim", "dr.osei"]

    # ---- expert 1: from the work queue, keyboard only
    kim = new_page()
    requests: list[str] = []
    kim.on("request", lambda r: requests.append(r.url))
    login(kim, live_server.url, "dr.kim")
    kim.click(".project-card")
    kim.wait_for_selector("a[data-queue=review]")
    kim.click("a[data-queue=review]")
    wait_editor_ready(kim)
    assert _decided(kim) == "0 / 4"
    assert "Hidden until you submit" in kim.locator(".others").inner_text()
    shot(kim, "08-review-start")

    _key(kim, "Tab")
    kim.wait_for_selector(".current-cell .state-pill")
    _key(kim, "a", "1 / 4")
    _key(kim, "a", "2 / 4")
    # edit the third cell: E, drag a vertex outwards, Enter, then accept the edited contour
    _key(kim, "e")
    kim.wait_for_selector(".current-cell .btn-edit.on")
    kim.wait_for_timeout(400)  # the zoom to the cell
    current = _current_cell(kim, image, cell_ids)
    to_screen = ScreenMap(kim)
    vx, vy = current.polygon[0]
    sx, sy = to_screen(vx, vy)
    kim.mouse.move(sx, sy)
    kim.mouse.down()
    kim.mouse.move(sx + 10, sy + 6, steps=5)
    kim.mouse.up()
    kim.wait_for_function("document.querySelector('.current-cell .state-pill')?.textContent === 'Edited'")
    _key(kim, "Enter")
    _key(kim, "a", "3 / 4")
    _key(kim, "r", "4 / 4")
    # add a missed cell (D), then take it back (R removes an added cell)
    _key(kim, "d")
    box = kim.locator(".map").bounding_box()
    for dx, dy in [(0.1, 0.1), (0.16, 0.1), (0.16, 0.17), (0.1, 0.17)]:
        kim.mouse.click(box["x"] + box["width"] * dx, box["y"] + box["height"] * dy)
        kim.wait_for_timeout(300)
    _key(kim, "Enter")
    kim.wait_for_function("document.querySelector('[data-state=added] b')?.textContent === '1'")
    _key(kim, "r")
    kim.wait_for_function("document.querySelector('[data-state=added] b')?.textContent === '0'")
    # comments on the image
    kim.fill(".comments textarea", "Slight blur in the lower left corner.")
    kim.click("[data-action=add-image-comment]")
    _wait_draft_saved(kim)
    draft = Review.objects.get(image=image, reviewer__username="dr.kim")
    assert draft.status == "assigned" and draft.decisions.count() == 4 and draft.comments.count() == 1
    shot(kim, "09-review-decided")

    # the draft survives a reload
    kim.reload()
    wait_editor_ready(kim)
    assert _decided(kim) == "4 / 4"
    assert "Slight blur" in kim.locator(".comments").first.inner_text()

    kim.click("[data-action=submit-review]")
    kim.click(".dialog .btn-primary")
    kim.wait_for_selector(".map-banner.good")
    kim.wait_for_function("document.querySelector('.others')?.textContent.includes('Waiting for dr.osei')")
    image.refresh_from_db()
    assert image.status == "in_review"

    # ---- the admin sees who reviews the image (and could assign or unassign by hand)
    head = new_page()
    login(head, live_server.url, "dr.head")
    head.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(head)
    head.click("[data-action=reviewers]")
    head.wait_for_selector(".reviewer-row")
    rows = head.locator(".reviewer-row").all_inner_texts()
    assert any("dr.kim" in r and "Submitted" in r for r in rows)
    assert any("dr.osei" in r and "Reviewing" in r for r in rows)
    shot(head, "10a-editor-reviewers")
    head.close()

    # ---- expert 2: "Next image" picks the review; blind until submitted
    osei = new_page()
    osei_requests: list[str] = []
    osei.on("request", lambda r: osei_requests.append(r.url))
    login(osei, live_server.url, "dr.osei")
    osei.goto(f"{live_server.url}/#/projects/{project.pk}")
    osei.click("[data-action=next-image]")
    osei.wait_for_function("h => location.hash === h", arg=f"#/projects/{project.pk}/images/{image.pk}/review")
    wait_editor_ready(osei)
    assert "Hidden until you submit" in osei.locator(".others").inner_text()
    _key(osei, "n")
    osei.wait_for_selector(".current-cell .state-pill")
    _key(osei, "a", "1 / 4")
    _key(osei, "a", "2 / 4")
    _key(osei, "a", "3 / 4")
    _key(osei, "r", "4 / 4")
    # blind: no request for the other reviews before submitting
    assert not [u for u in osei_requests if u.rstrip("/").endswith("/reviews") or "/reviews?" in u]
    osei.keyboard.press("Control+Enter")
    osei.click(".dialog .btn-primary")
    osei.wait_for_selector(".map-banner.good")
    osei.wait_for_function("document.querySelector('.others')?.textContent.includes('Slight blur')")
    osei.wait_for_function("document.querySelector('.topbar .pill')?.textContent === 'Verified'")
    shot(osei, "10-review-submitted-verified")

    image.refresh_from_db()
    assert image.status == "verified"
    verified = Cell.objects.filter(image=image, layer=Layer.VERIFIED)
    assert verified.count() == 3  # the cell both rejected is gone
    assert {c.provenance["fusion"] for c in verified} >= {"accepted", "majority_vote"}


def _current_cell(page: Any, image: Image, cell_ids: list[int]) -> Cell:
    """The annotation cell shown as current (matched by its area shown in the panel)."""
    text = page.locator(".current-cell .muted.small").first.inner_text()
    area = float(text.split(" px²")[0])
    cells = list(Cell.objects.filter(pk__in=cell_ids))
    return min(cells, key=lambda c: abs(c.area - area))


def test_admin_adjudicates_a_disputed_image(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — adjudication", created_by=admin)
    annotator = member(project, Role.ANNOTATOR, username="ana")
    kim = member(project, Role.EXPERT, username="dr.kim")
    osei = member(project, Role.EXPERT, username="dr.osei")
    image, outlines = synthetic_image(project, seed=51, n_cells=9, bethesda="V")
    c1, c2, c3, c4 = annotate(image, annotator, outlines[:4])
    submit_for_review(image, annotator)
    ery = project.classes.get(model_label=2).pk
    thyroid = project.classes.get(model_label=1).pk
    shifted = [[x + 4, y + 3] for x, y in outlines[1]]
    reviews.review_draft_save(
        image=image,
        user=kim,
        comments=[],
        decisions=[
            {"cell_id": c1, "decision": "accept"},
            {"cell_id": c2, "decision": "edit", "polygon": shifted},
            {"cell_id": c3, "decision": "edit", "polygon": outlines[2], "class_id": ery},
            {"cell_id": c4, "decision": "reject"},
        ],
        added=[{"class_id": thyroid, "polygon": outlines[5]}],
    )
    reviews.review_submit(image=image, user=kim)
    reviews.review_draft_save(
        image=image,
        user=osei,
        comments=[],
        added=[],
        decisions=[{"cell_id": c, "decision": "accept"} for c in (c1, c2, c3, c4)],
    )
    reviews.review_submit(image=image, user=osei)
    image.refresh_from_db()
    assert image.status == "disputed"

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    page.wait_for_selector("a[data-queue=adjudicate]")
    shot(page, "11-images-admin-queue")
    page.click("a[data-queue=adjudicate]")
    wait_editor_ready(page)
    page.wait_for_selector(".current-dispute .option-row")
    total = page.locator(".dispute-row").count()
    assert total == 3
    assert page.locator(".adj-summary .legend").inner_text().count("dr.") == 2
    shot(page, "12-adjudication")

    # keyboard: the first version for each dispute, the last one rejected
    for i in range(1, total + 1):
        page.wait_for_function(
            "n => document.querySelector('.current-dispute .cell-head b')?.textContent.startsWith(`Dispute ${n} `)",
            arg=i,
        )
        if i == total:
            page.keyboard.press("r")
        else:
            page.keyboard.press("1")
        page.wait_for_function(
            "n => document.querySelector('.adj-summary .progress-head b')?.textContent.startsWith(`${n} /`)", arg=i
        )
    shot(page, "13-adjudication-decided")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".map-banner.good")
    image.refresh_from_db()
    assert image.status == "verified"
    assert Cell.objects.filter(image=image, layer=Layer.VERIFIED).count() >= 3
    shot(page, "14-adjudication-verified")
