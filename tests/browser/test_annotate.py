"""The annotator's editor in a real browser: draw, edit a vertex, undo, autosave, reload; accept
model proposals; two browsers editing the same image (409 conflict, nothing lost)."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Cell, Layer, Role
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    UserFactory,
    annotate,
    login,
    member,
    proposals_create,
    screen_of,
    synthetic_image,
    wait_editor_ready,
    wait_saved,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _annotation(image: Any) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).order_by("id"))


def test_doctor_draws_edits_a_vertex_undoes_saves_and_finds_it_after_reload(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="head")
    project = ProjectFactory(
        name="Thyroid FNA — Diff-Quik", created_by=admin, description="Fine-needle aspirates, Bethesda I-VI"
    )
    doctor = member(project, Role.ANNOTATOR, username="dr.ruiz")
    image, _ = synthetic_image(project, seed=11, bethesda="IV", split="train")
    synthetic_image(project, seed=12, bethesda="II", split="validation")

    login(page, live_server.url, "dr.ruiz")
    shot(page, "01-projects")
    page.click(".project-card")
    page.wait_for_selector(".image-card")
    page.wait_for_selector(".queue-card")
    shot(page, "02-images")
    page.click(f".image-card[href$='/images/{image.pk}']")
    wait_editor_ready(page)

    # draw a cell: four clicks, Enter closes it
    page.keyboard.press("d")
    corners = [(200, 150), (300, 150), (300, 240), (200, 240)]
    for x, y in corners:
        page.mouse.click(*screen_of(page, x, y, image))
        page.wait_for_timeout(60)
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('1 cell')")
    wait_saved(page)
    (drawn,) = _annotation(image)
    assert len(drawn.polygon) == 4
    xs = sorted(p[0] for p in drawn.polygon)
    ys = sorted(p[1] for p in drawn.polygon)
    assert abs(xs[0] - 200) < 3 and abs(xs[-1] - 300) < 3 and abs(ys[0] - 150) < 3 and abs(ys[-1] - 240) < 3
    assert drawn.author == doctor

    # edit a vertex: select the cell, drag its top-right corner outwards
    page.keyboard.press("v")
    page.mouse.click(*screen_of(page, 250, 195, image))
    page.wait_for_selector(".selection-box .sel-head")
    sx, sy = screen_of(page, 300, 150, image)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 20, sy - 15, steps=6)
    page.mouse.up()
    wait_saved(page)
    page.wait_for_function("document.querySelector('.save-status').textContent.includes('All changes saved')")
    (edited,) = _annotation(image)
    assert edited.polygon != drawn.polygon, "the vertex drag was saved"
    shot(page, "03-editor-edited")

    # undo the vertex edit: the saved contour is the drawn one again
    page.keyboard.press("Control+z")
    page.wait_for_function("id => true", arg=edited.pk)
    page.wait_for_timeout(100)
    wait_saved(page)
    page.wait_for_timeout(1200)
    (undone,) = _annotation(image)
    assert undone.polygon == drawn.polygon

    # reload: the cell is there
    page.reload()
    wait_editor_ready(page)
    page.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('1 cell')")
    assert _annotation(image)[0].polygon == drawn.polygon
    image.refresh_from_db()
    assert image.status == "annotating" and image.annotator == doctor
    shot(page, "04-editor-after-reload")


def test_annotator_accepts_and_rejects_model_proposals(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="head")
    project = ProjectFactory(name="Proposals", created_by=admin)
    member(project, Role.ANNOTATOR, username="annie")
    image, outlines = synthetic_image(project, seed=21, n_cells=8)
    proposals = proposals_create(image, outlines[:5], area=100)

    login(page, live_server.url, "annie")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    page.wait_for_selector(".prop-count")
    assert "5 open proposals" in page.locator(".prop-count").text_content()
    shot(page, "05-editor-proposals")

    # click one proposal, accept it with A
    first = proposals[0].polygon
    cx = sum(p[0] for p in first) / len(first)
    cy = sum(p[1] for p in first) / len(first)
    page.mouse.click(*screen_of(page, cx, cy, image))
    page.wait_for_selector(".selection-box .btn-accept")
    page.keyboard.press("a")
    page.wait_for_function("document.querySelector('.prop-count')?.textContent.includes('4 open')")
    assert len(_annotation(image)) == 1

    # reject another one (R), then accept every one left in view (Shift+A)
    second = proposals[1].polygon
    page.wait_for_timeout(350)  # two clicks within 250 ms are a double-click (zoom) for OpenLayers
    page.mouse.click(
        *screen_of(page, sum(p[0] for p in second) / len(second), sum(p[1] for p in second) / len(second), image)
    )
    page.wait_for_selector(".selection-box .btn-reject")
    page.keyboard.press("r")
    page.wait_for_function("document.querySelector('.prop-count')?.textContent.includes('3 open')")
    page.keyboard.press("Shift+A")
    page.wait_for_function("!document.querySelector('.prop-count')")
    page.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('4 cells')")
    cells = _annotation(image)
    assert len(cells) == 4
    assert all(c.provenance.get("proposal_id") for c in cells)
    states = dict(Cell.objects.filter(layer=Layer.PROPOSAL, image=image).values_list("pk", "state"))
    assert states[proposals[1].pk] == "rejected"
    assert sum(1 for s in states.values() if s == "accepted") == 4
    shot(page, "06-editor-proposals-accepted")


def test_two_browsers_edit_one_image_conflict_prompt_keeps_both(live_server: Any, new_page: Any) -> None:
    admin = UserFactory(username="head")
    project = ProjectFactory(name="Conflicts", created_by=admin)
    member(project, Role.ANNOTATOR, username="ana")
    member(project, Role.ANNOTATOR, username="ben")
    image, outlines = synthetic_image(project, seed=31, n_cells=6)
    annotate(image, admin, outlines[:1])

    a, b = new_page(), new_page()
    login(a, live_server.url, "ana")
    login(b, live_server.url, "ben")
    url = f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}"
    for p in (a, b):
        p.goto(url)
        wait_editor_ready(p)

    def draw(p: Any, x0: float, y0: float) -> None:
        p.keyboard.press("d")
        for x, y in [(x0, y0), (x0 + 60, y0), (x0 + 60, y0 + 50), (x0, y0 + 50)]:
            p.mouse.click(*screen_of(p, x, y, image))
            p.wait_for_timeout(60)
        p.keyboard.press("Enter")

    draw(a, 40, 40)
    wait_saved(a)
    assert len(_annotation(image)) == 2
    draw(b, 500, 380)
    b.wait_for_selector(".conflict-dialog")
    assert "changed elsewhere" in b.locator(".conflict-dialog").inner_text()
    assert "Conflict" in b.locator(".save-status").inner_text()
    shot(b, "07-editor-conflict")
    # nothing lost: Ben keeps both versions
    b.click("[data-action=keep-both]")
    wait_saved(b)
    b.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('3 cells')")
    cells = _annotation(image)
    assert len(cells) == 3
    authors = {c.author.username for c in cells if c.author}
    assert {"ana", "ben"} <= authors
    # and Ana's browser sees everything after a reload
    a.reload()
    wait_editor_ready(a)
    a.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('3 cells')")
