"""The annotator's editor and the image's workflow state (issue #17): proposals accepted or
rejected stay closed after a reload; a locked image (submitted, in review, verified) opens read
only; "Submit for review" first shows a summary (cells, untouched proposals, unsaved changes)."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Cell, Image, ImageStatus, Layer, Role
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    UserFactory,
    annotate,
    image_point,
    login,
    map_box,
    member,
    proposals_create,
    screen_of,
    submit_for_review,
    synthetic_image,
    wait_editor_ready,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _centre(poly: list[list[float]]) -> tuple[float, float]:
    return sum(p[0] for p in poly) / len(poly), sum(p[1] for p in poly) / len(poly)


def _annotation(image: Image) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).order_by("id"))


def test_accepted_and_rejected_proposals_stay_closed_after_a_reload(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="head")
    project = ProjectFactory(name="Proposals reload", created_by=admin)
    member(project, Role.ANNOTATOR, username="annie")
    image, outlines = synthetic_image(project, seed=21, n_cells=8)
    proposals = proposals_create(image, outlines[:5], area=100)

    login(page, live_server.url, "annie")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    page.wait_for_function("document.querySelector('.prop-count')?.textContent.includes('5 open')")

    page.mouse.click(*screen_of(page, *_centre(proposals[0].polygon), image))
    page.wait_for_selector(".selection-box .btn-accept")
    page.keyboard.press("a")
    page.wait_for_function("document.querySelector('.prop-count')?.textContent.includes('4 open')")
    page.wait_for_timeout(350)  # not a double-click
    page.mouse.click(*screen_of(page, *_centre(proposals[1].polygon), image))
    page.wait_for_selector(".selection-box .btn-reject")
    page.keyboard.press("r")
    page.wait_for_function("document.querySelector('.prop-count')?.textContent.includes('3 open')")
    states = dict(Cell.objects.filter(layer=Layer.PROPOSAL, image=image).values_list("pk", "state"))
    assert states[proposals[0].pk] == "accepted" and states[proposals[1].pk] == "rejected"

    page.reload()
    wait_editor_ready(page)
    page.wait_for_selector(".prop-count")
    page.wait_for_timeout(300)
    assert "3 open proposals" in page.locator(".prop-count").text_content()
    assert "1 cell" in page.locator(".cell-count").inner_text()

    # every proposal decided (as on a verified image): none open
    Cell.objects.filter(pk__in=[p.pk for p in proposals[2:]]).update(state="rejected")
    page.reload()
    wait_editor_ready(page)
    page.wait_for_function("!document.querySelector('.prop-count')")
    assert "No open proposals" in page.locator(".proposal-box").inner_text()


def test_a_locked_image_opens_read_only(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="head")
    project = ProjectFactory(name="Locked", created_by=admin)
    annie = member(project, Role.ANNOTATOR, username="annie")
    image, outlines = synthetic_image(project, seed=41, n_cells=6)
    proposals_create(image, outlines[2:4], area=100)
    annotate(image, annie, outlines[:2])
    submit_for_review(image, annie)
    Image.objects.filter(pk=image.pk).update(status=ImageStatus.VERIFIED)
    image.refresh_from_db()
    before = [c.polygon for c in _annotation(image)]
    revision = image.revision

    login(page, live_server.url, "annie")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)

    # a banner says why, before anything is tried
    banner = page.locator(".map-banner")
    banner.wait_for(state="visible")
    assert "Verified — read only. An admin can reopen it." in banner.inner_text()
    # the editing tools are greyed out with the reason; select stays
    for tool in ("draw", "split", "merge", "delete", "classify"):
        btn = page.locator(f".tool-btn[data-tool={tool}]")
        assert btn.is_disabled(), tool
        assert "read only" in (btn.get_attribute("title") or ""), tool
    assert page.locator(".tool-btn[data-action=snap]").is_disabled()
    assert page.locator(".tool-btn[data-tool=select]").is_enabled()
    assert "Read only" in page.locator(".statusbar .hint").inner_text()
    # the proposals panel offers no accept / reject
    assert page.locator(".proposal-box button").count() == 0

    # editing keys do nothing
    page.keyboard.press("d")
    page.wait_for_timeout(100)
    assert "active" in (page.locator(".tool-btn[data-tool=select]").get_attribute("class") or "")
    assert "active" not in (page.locator(".tool-btn[data-tool=draw]").get_attribute("class") or "")

    # selecting works: the cell shows in the panel, without editing buttons
    cx, cy = _centre(outlines[0])
    page.mouse.click(*screen_of(page, cx, cy, image))
    page.wait_for_selector(".selection-box .sel-head")
    assert "1 cell" in page.locator(".selection-box .sel-head").inner_text()
    assert page.locator(".selection-box .btn-danger-outline").count() == 0
    shot(page, "issue17-read-only")
    for key in ("Delete", "Backspace", "2", "a", "r", "Shift+A", "Control+z"):
        page.keyboard.press(key)
        page.wait_for_timeout(60)
    assert "1 cell" in page.locator(".selection-box .sel-head").inner_text()

    # no vertex dragging: a drag on a vertex of the selected cell pans the view instead
    vx, vy = outlines[0][0]
    sx, sy = screen_of(page, vx, vy, image)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 40, sy + 30, steps=6)
    page.mouse.up()
    page.wait_for_timeout(1200)  # autosave would fire after ~800 ms
    assert "All changes saved" in page.locator(".save-status").inner_text()
    assert [c.polygon for c in _annotation(image)] == before
    image.refresh_from_db()
    assert image.status == ImageStatus.VERIFIED and image.revision == revision

    # panning still works: the pixel under the centre of the map moved
    box = map_box(page)
    mx, my = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    at = image_point(page, mx, my)
    page.mouse.move(mx + 100, my + 100)
    page.mouse.down()
    page.mouse.move(mx + 180, my + 160, steps=6)
    page.mouse.up()
    page.wait_for_timeout(300)
    assert image_point(page, mx, my) != at


def test_submit_for_review_shows_a_summary_first(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="head")
    project = ProjectFactory(name="Submit", created_by=admin)
    annie = member(project, Role.ANNOTATOR, username="annie")
    image, outlines = synthetic_image(project, seed=51, n_cells=8)
    proposals_create(image, outlines[3:6], area=100)
    annotate(image, annie, outlines[:2])

    login(page, live_server.url, "annie")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    page.wait_for_function("document.querySelector('.prop-count')?.textContent.includes('3 open')")

    submit = page.locator("button", has_text="Submit for review").first
    submit.click()
    dialog = page.locator(".submit-summary")
    dialog.wait_for(state="visible")
    text = dialog.inner_text()
    assert "2 cells will be submitted" in text
    assert "3 open model proposals left untouched" in text
    assert "All changes are saved" in text
    shot(page, "issue17-submit-summary")
    # Cancel: nothing happens
    page.click("[data-action=submit-cancel]")
    dialog.wait_for(state="detached")
    page.wait_for_timeout(500)
    image.refresh_from_db()
    assert image.status == ImageStatus.ANNOTATING
    assert page.locator(".map-banner").is_hidden()

    # Confirm: submitted, and the editor turns read only at once
    submit.click()
    page.click(".submit-summary [data-action=submit-confirm]")
    page.wait_for_selector(".map-banner:not([hidden])")
    image.refresh_from_db()
    assert image.status in (ImageStatus.SUBMITTED, ImageStatus.IN_REVIEW)
    assert page.locator(".tool-btn[data-tool=draw]").is_disabled()
    assert "read only" in page.locator(".map-banner").inner_text()
    shot(page, "issue17-submitted-read-only")


def test_an_image_locked_meanwhile_turns_read_only_at_the_refused_save(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="head")
    project = ProjectFactory(name="Locked meanwhile", created_by=admin)
    annie = member(project, Role.ANNOTATOR, username="annie")
    image, outlines = synthetic_image(project, seed=61, n_cells=6)
    annotate(image, annie, outlines[:2])

    login(page, live_server.url, "annie")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    assert page.locator(".map-banner").is_hidden()
    submit_for_review(image, annie)  # elsewhere (another tab)

    page.mouse.click(*screen_of(page, *_centre(outlines[0]), image))
    page.wait_for_selector(".selection-box .sel-head")
    page.keyboard.press("Delete")
    page.wait_for_selector(".map-banner:not([hidden])")
    assert "read only" in page.locator(".map-banner").inner_text()
    assert page.locator(".tool-btn[data-tool=draw]").is_disabled()
    assert len(_annotation(image)) == 2
