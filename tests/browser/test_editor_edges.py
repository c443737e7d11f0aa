"""The editor at the edges (GitHub issue #17): a vertex dragged off the image is clamped and
every later edit still saves; a cell the server refuses is shown in red with a sentence, the
other edits are saved; Shift+double-click never zooms; the wheel zooms gently; "accept all in
view" takes the proposals partly in view."""

from __future__ import annotations

import re
from typing import Any

import pytest

from annotations.models import Cell, CellClass, Layer, Role
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    ScreenMap,
    UserFactory,
    annotate,
    image_point,
    login,
    map_box,
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


def _square(x: float, y: float, s: float = 40) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]


def _zoom(page: Any) -> float:
    text = page.locator(".statusbar .zoom").inner_text()
    m = re.search(r"(\d+)%", text)
    assert m, text
    return float(m.group(1))


def _open(page: Any, live_server: Any, username: str, project: Any, image: Any) -> None:
    login(page, live_server.url, username)
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)


def test_vertex_dragged_off_the_image_is_clamped_and_later_edits_save(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Edges", created_by=UserFactory(username="head"))
    doctor = member(project, Role.ANNOTATOR, username="dr.edge")
    image, _ = synthetic_image(project, seed=31)
    annotate(image, doctor, [_square(80, 6, 60), _square(300, 200), _square(400, 200)])
    _open(page, live_server, "dr.edge", project, image)

    # select the cell at the top edge, drag its top-right vertex well above the image
    page.mouse.click(*screen_of(page, 110, 36, image))
    page.wait_for_selector(".selection-box .sel-head")
    sx, sy = screen_of(page, 140, 6, image)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 10, sy - 40, steps=8)
    page.mouse.up()
    wait_saved(page)
    top = _annotation(image)[0]
    assert min(p[1] for p in top.polygon) == 0, top.polygon  # clamped onto the top edge
    assert all(0 <= p[0] <= image.width and 0 <= p[1] <= image.height for p in top.polygon)

    # the edits after it save too (the issue: every later save answered 400)
    page.keyboard.press("Escape")
    page.keyboard.press("e")
    page.mouse.click(*screen_of(page, 320, 220, image))
    wait_saved(page)
    assert len(_annotation(image)) == 2
    assert not page.locator(".toast-error").count()


def test_a_refused_cell_is_red_with_a_sentence_and_the_other_edits_save(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Refusals", created_by=UserFactory(username="head"))
    doctor = member(project, Role.ANNOTATOR, username="dr.red")
    image, _ = synthetic_image(project, seed=32)
    ids = annotate(image, doctor, [_square(100, 100, 80), _square(300, 100, 80), _square(450, 300, 80)])
    doomed = CellClass.objects.create(project=project, name="Retired class", color="#22c55e", order=9)
    original = {c.pk: (c.cell_class_id, c.polygon) for c in _annotation(image)}
    _open(page, live_server, "dr.red", project, image)
    digit = page.evaluate(
        "name => [...document.querySelectorAll('.class-row')].find(r => r.textContent.includes(name))"
        "?.querySelector('.class-key')?.textContent",
        "Retired class",
    )
    assert digit, "the class is in the palette"

    # an admin removes a class while the doctor works; the doctor gives it to a cell
    doomed.delete()
    page.mouse.click(*screen_of(page, 140, 140, image))
    page.wait_for_selector(".selection-box .sel-head")
    page.keyboard.press(str(digit))
    page.wait_for_function("document.querySelector('.save-status').textContent.includes('1 cell not saved')")
    toast = page.locator(".toast-error")
    assert toast.count() == 1
    text = toast.inner_text()
    assert "class" in text and "shown in red" in text and "cells.0" not in text, text

    # the doctor's other edits still save (the view moved to the refused cell: measure it again)
    page.keyboard.press("Escape")
    page.wait_for_timeout(400)
    at = ScreenMap(page)
    page.keyboard.press("e")
    page.mouse.click(*at(340, 140))
    page.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('2 cells')")
    page.wait_for_function(
        "document.querySelector('.save-status').textContent.includes('1 cell not saved')"
        " && !document.querySelector('.save-status').classList.contains('save-saving')"
    )
    page.wait_for_timeout(1200)
    cells = {c.pk: c for c in _annotation(image)}
    assert set(cells) == {ids[0], ids[2]}, "the deletion was saved, the refused cell kept as the server had it"
    assert cells[ids[0]].cell_class_id == original[ids[0]][0]
    assert page.locator(".toast-error").count() == 1, "identical toasts are not stacked"
    assert "red" in page.locator(".save-status").get_attribute("title")
    page.keyboard.press("v")
    page.keyboard.press("Escape")
    page.wait_for_timeout(400)
    shot(page, "edges-refused-cell-red")
    # the refused cell is red on the map: sample the canvas inside it
    red = page.evaluate(
        """([x, y]) => {
            const cs = [...document.querySelectorAll('.map canvas')];
            let best = 0;
            for (const c of cs) {
              const r = c.getBoundingClientRect();
              const ctx = c.getContext('2d');
              if (!ctx) continue;
              const sx = (x - r.left) * c.width / r.width, sy = (y - r.top) * c.height / r.height;
              const d = ctx.getImageData(sx, sy, 1, 1).data;
              if (d[3] > 0 && d[0] > 150 && d[1] < 90 && d[2] < 90) best = 1;
            }
            return best;
        }""",
        list(at(100, 120)),
    )
    assert red, "the refused cell's outline is drawn in red"

    # correcting it (another class) saves it
    page.mouse.click(*at(140, 140))
    page.wait_for_selector(".selection-box .sel-head")
    shot(page, "edges-refused-cell-selected")
    page.keyboard.press("1")
    wait_saved(page)
    assert len(_annotation(image)) == 2


def test_shift_double_click_never_zooms(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Shift", created_by=UserFactory(username="head"))
    doctor = member(project, Role.ANNOTATOR, username="dr.shift")
    image, _ = synthetic_image(project, seed=33)
    annotate(image, doctor, [_square(200, 200), _square(260, 200)])
    _open(page, live_server, "dr.shift", project, image)
    before = _zoom(page)
    box = map_box(page)
    centre = image_point(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.keyboard.down("Shift")
    page.mouse.dblclick(*screen_of(page, 220, 220, image))
    page.keyboard.up("Shift")
    page.wait_for_timeout(500)
    assert _zoom(page) == before
    assert image_point(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2) == centre
    # a plain double-click still zooms in
    page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_timeout(500)
    assert _zoom(page) > before * 1.5


def test_wheel_zoom_is_gentle(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Wheel", created_by=UserFactory(username="head"))
    member(project, Role.ANNOTATOR, username="dr.wheel")
    image, _ = synthetic_image(project, seed=34)
    _open(page, live_server, "dr.wheel", project, image)
    box = map_box(page)
    start = _zoom(page)
    page.mouse.move(box["x"] + box["width"] / 2 + 13, box["y"] + box["height"] / 2 + 7)
    for _ in range(5):
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(250)
    page.wait_for_timeout(400)
    ratio = _zoom(page) / start
    assert 2.0 <= ratio <= 3.0, f"5 wheel notches zoomed {start}% -> {_zoom(page)}%"
    # and back out: five notches the other way return to about the start
    for _ in range(5):
        page.mouse.wheel(0, 100)
        page.wait_for_timeout(250)
    page.wait_for_timeout(400)
    assert abs(_zoom(page) - start) <= 2


def test_accept_all_in_view_takes_partly_visible_proposals(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="In view", created_by=UserFactory(username="head"))
    member(project, Role.ANNOTATOR, username="dr.wheel")
    image, _ = synthetic_image(project, seed=34)
    squares = [_square(x, y, 44) for x in range(10, 600, 70) for y in range(10, 440, 70)]
    proposals_create(image, squares)
    _open(page, live_server, "dr.wheel", project, image)
    box = map_box(page)
    page.click("button[title^='Zoom in']")
    page.wait_for_timeout(500)

    # the view's extent in image pixels, from the readout at the map's corners
    x0, y0 = image_point(page, box["x"] + 2, box["y"] + 2)
    x1, y1 = image_point(page, box["x"] + box["width"] - 2, box["y"] + box["height"] - 2)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

    def intersects(p: list[list[float]]) -> bool:
        return p[0][0] <= x1 and p[2][0] >= x0 and p[0][1] <= y1 and p[2][1] >= y0

    def centre_in(p: list[list[float]]) -> bool:
        cx, cy = p[0][0] + 22, p[0][1] + 22
        return x0 <= cx <= x1 and y0 <= cy <= y1

    in_view = [p for p in squares if intersects(p)]
    partly = [p for p in in_view if not centre_in(p)]
    assert partly, "the view cuts some proposals with their centre outside it"
    page.keyboard.press("Shift+A")
    page.wait_for_function(
        "n => document.querySelector('.cell-count')?.textContent.startsWith(n + ' cell')", arg=len(in_view)
    )
    page.wait_for_timeout(300)
    accepted = [c.polygon for c in _annotation(image)]
    key = lambda p: (round(p[0][0]), round(p[0][1]))  # noqa: E731
    assert sorted(map(key, accepted)) == sorted(map(key, in_view))
    shot(page, "edges-accept-all-in-view")
