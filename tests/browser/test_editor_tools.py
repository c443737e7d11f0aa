"""The editor's interactive tools of GitHub issue #13 in the real browser: the brush paints a
bulge onto the selected cell and the eraser bites it back out (one undo step each), N walks the
open proposals, the click-to-segment tool turns a click on a missed cell into a contour, and
the box tool adds the cells found in a dragged box."""

from __future__ import annotations

import re
from typing import Any

import pytest
from shapely.geometry import Polygon

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


def _square(x: float, y: float, s: float = 40) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]


def _open(page: Any, live_server: Any, username: str, project: Any, image: Any) -> None:
    login(page, live_server.url, username)
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)


def _selected_area(page: Any) -> float:
    """The area of the selected cell as the selection panel shows it ("1234 px² · 20 vertices")."""
    text = page.locator(".selection-box").inner_text()
    m = re.search(r"(\d+) px²", text)
    assert m, text
    return float(m.group(1))


def _stroke(page: Any, image: Any, points: list[tuple[float, float]]) -> None:
    sx, sy = screen_of(page, *points[0], image)
    page.mouse.move(sx, sy)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(*screen_of(page, x, y, image), steps=6)
    page.mouse.up()


def _undo(page: Any) -> None:
    page.keyboard.press("Control+z")


def test_brush_a_bulge_in_and_erase_a_bite_out_each_one_undo(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Brush", created_by=UserFactory(username="head"))
    doctor = member(project, Role.ANNOTATOR, username="dr.brush")
    image, _ = synthetic_image(project, seed=41)
    annotate(image, doctor, [_square(200, 150, 120), _square(450, 300, 60)])
    _open(page, live_server, "dr.brush", project, image)

    # select the large cell, take the brush, make it larger with ]
    page.mouse.click(*screen_of(page, 260, 210, image))
    page.wait_for_selector(".selection-box .sel-head")
    original = _selected_area(page)
    assert original == 14400
    page.keyboard.press("b")
    assert "active" in (page.locator('[data-tool="brush"]').get_attribute("class") or "")
    assert "selected cell" in page.locator(".hint").inner_text()
    for _ in range(3):
        page.keyboard.press("]")  # 8 -> 14 px (three 20 % steps, rounded to half pixels)
    page.mouse.move(*screen_of(page, 340, 180, image))
    # Ctrl+wheel resizes the brush (one notch up, one down) instead of zooming
    zoom = page.locator(".statusbar .zoom").inner_text()
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.wait_for_timeout(100)
    page.mouse.wheel(0, 100)
    page.keyboard.up("Control")
    page.wait_for_timeout(200)
    assert page.locator(".statusbar .zoom").inner_text() == zoom
    shot(page, "tools-brush-cursor")

    # paint from inside the right edge outwards: a bulge
    _stroke(page, image, [(310, 210), (335, 210), (350, 212)])
    page.wait_for_function(
        "a => { const m = document.querySelector('.selection-box').textContent.match(/(\\d+) px²/);"
        " return m && Number(m[1]) > a + 500; }",
        arg=original,
    )
    grown = _selected_area(page)
    shot(page, "tools-brush-bulge")
    wait_saved(page)
    cell = _annotation(image)[0]
    poly = Polygon(cell.polygon)
    assert poly.is_valid and poly.area == pytest.approx(grown, abs=2)
    assert poly.bounds[2] > 355  # the bulge reaches past the old right edge (320) by the stroke + radius
    assert len(cell.polygon) < 150  # simplified: not hundreds of arc vertices

    # one stroke = one undo step: the square comes back
    _undo(page)
    page.wait_for_function(
        "a => document.querySelector('.selection-box').textContent.includes(a + ' px²')", arg=str(int(original))
    )
    wait_saved(page)
    assert Polygon(_annotation(image)[0].polygon).area == pytest.approx(original, abs=1)

    # the eraser bites a notch out of the top edge
    page.keyboard.press("u")
    _stroke(page, image, [(250, 140), (252, 165)])
    page.wait_for_function(
        "a => { const m = document.querySelector('.selection-box').textContent.match(/(\\d+) px²/);"
        " return m && Number(m[1]) < a - 300; }",
        arg=original,
    )
    shot(page, "tools-eraser-bite")
    wait_saved(page)
    bitten = Polygon(_annotation(image)[0].polygon)
    assert bitten.is_valid and bitten.area < original - 300
    assert not bitten.contains(Polygon(_square(248, 150, 4)))  # the notch is empty

    # an eraser stroke across the whole cell would cut it in two: refused with the reason
    _stroke(page, image, [(260, 130), (262, 290)])
    page.wait_for_selector(".toast >> text=cut the cell in two")
    assert Polygon(_annotation(image)[0].polygon).area == pytest.approx(bitten.area, abs=1)

    _undo(page)
    page.wait_for_function(
        "a => document.querySelector('.selection-box').textContent.includes(a + ' px²')", arg=str(int(original))
    )
    wait_saved(page)
    assert Polygon(_annotation(image)[0].polygon).area == pytest.approx(original, abs=1)
    shot(page, "tools-eraser-undone")


def test_n_selects_and_centres_the_next_proposal(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Next proposal", created_by=UserFactory(username="head"))
    member(project, Role.ANNOTATOR, username="dr.next")
    image, _ = synthetic_image(project, seed=42)
    # reading order: top row left to right, then the bottom row
    proposals = proposals_create(image, [_square(500, 40, 30), _square(40, 40, 30), _square(300, 380, 30)])
    first, second, third = proposals[1], proposals[0], proposals[2]
    _open(page, live_server, "dr.next", project, image)
    assert page.locator('[data-hint="next-proposal"]').count() == 1

    page.keyboard.press("n")
    page.wait_for_selector(".selection-box .sel-head >> text=1 proposal")
    order = []
    for _ in range(3):
        page.wait_for_timeout(300)  # the centring animation
        centre = page.evaluate(
            "() => { const r = document.querySelector('.map').getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; }"
        )
        page.mouse.move(*centre)
        page.wait_for_timeout(100)
        text = page.locator(".coords").inner_text()
        m = re.search(r"x (\d+)\s+y (\d+)", text)
        assert m, text
        order.append((float(m.group(1)), float(m.group(2))))
        page.keyboard.press("n")
    # the view was centred on each proposal in turn, in reading order
    centres = [(p.bbox_x + p.bbox_w / 2, p.bbox_y + p.bbox_h / 2) for p in (first, second, third)]
    for (x, y), (cx, cy) in zip(order, centres, strict=True):
        assert abs(x - cx) < 20 and abs(y - cy) < 20, (order, centres)
    shot(page, "tools-next-proposal")
    # after the last one N wrapped around to the first; Shift+N goes back to the last, A accepts it
    page.keyboard.press("Shift+N")
    page.keyboard.press("a")
    page.wait_for_selector(".toast >> text=Accepted 1 proposal")
    cells = _annotation(image)
    assert len(cells) == 1 and cells[0].polygon == third.polygon


def _cell_count(page: Any) -> int:
    text = page.locator(".cell-count").inner_text()
    m = re.match(r"(\d+) cells?", text)
    assert m, text
    return int(m.group(1))


def _iou(a: list[list[float]], b: list[list[float]]) -> float:
    pa, pb = Polygon(a), Polygon(b)
    return pa.intersection(pb).area / pa.union(pb).area


def _isolated(truth: list[list[list[float]]]) -> list[list[float]]:
    """The largest true cell that stands alone (no other cell within 8 px): clusters are
    the model's business, the baseline on a window separates a lone cell reliably."""
    polys = [Polygon(p) for p in truth]
    alone = [p for i, p in enumerate(truth) if all(polys[i].distance(q) > 8 for j, q in enumerate(polys) if j != i)]
    assert alone, "the synthetic field has a lone cell"
    return max(alone, key=lambda p: Polygon(p).area)


def test_click_a_missed_cell_gets_its_contour_and_undo_removes_it(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Click", created_by=UserFactory(username="head"))
    member(project, Role.ANNOTATOR, username="dr.click")
    image, truth = synthetic_image(project, seed=43)
    # no model is trained: the server outlines the clicked cell with the classical baseline
    target = _isolated(truth)
    inside = Polygon(target).representative_point()
    _open(page, live_server, "dr.click", project, image)
    assert _cell_count(page) == 0

    page.keyboard.press("w")
    assert "active" in (page.locator('[data-tool="segment"]').get_attribute("class") or "")
    page.mouse.click(*screen_of(page, inside.x, inside.y, image))
    page.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('1 cell')")
    page.wait_for_selector(".toast >> text=classical baseline")
    shot(page, "tools-click-segment")
    wait_saved(page)
    cells = _annotation(image)
    assert len(cells) == 1
    assert Polygon(cells[0].polygon).is_valid
    assert _iou(cells[0].polygon, target) > 0.6, (cells[0].polygon, target)
    assert cells[0].cell_class_id == project.classes.get(model_label=1).pk

    # Shift+click another point of the same cell refines it: still one cell, one more undo step
    page.keyboard.down("Shift")
    page.mouse.click(*screen_of(page, inside.x + 2, inside.y + 1, image))
    page.keyboard.up("Shift")
    page.wait_for_function("document.querySelector('[aria-label=Undo]').title.includes('refine segmented cell')")
    assert _cell_count(page) == 1
    page.keyboard.press("Escape")  # ends the prompt

    # undo takes the cell away again (the refinement first, then the click)
    _undo(page)
    _undo(page)
    page.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('0 cells')")
    wait_saved(page)
    assert _annotation(image) == []

    # a click on empty background: no cell, the server's reason is shown, nothing is added
    page.mouse.click(*screen_of(page, 4, 4, image))
    page.wait_for_selector(".toast >> text=No contour here")
    assert _cell_count(page) == 0


def test_box_adds_the_cells_inside_in_one_undo_step(live_server: Any, page: Any) -> None:
    project = ProjectFactory(name="Box", created_by=UserFactory(username="head"))
    member(project, Role.ANNOTATOR, username="dr.box")
    image, truth = synthetic_image(project, seed=44)
    target = _isolated(truth)
    x0, y0, x1, y1 = Polygon(target).bounds
    _open(page, live_server, "dr.box", project, image)

    page.keyboard.press("q")
    _stroke(page, image, [(x0 - 8, y0 - 8), ((x0 + x1) / 2, (y0 + y1) / 2), (x1 + 8, y1 + 8)])
    page.wait_for_selector(".toast >> text=from the box")
    # the counts panel renders on the next animation frame after the toast
    page.wait_for_function("!document.querySelector('.cell-count').textContent.startsWith('0 cells')")
    n = _cell_count(page)
    assert n >= 1
    shot(page, "tools-box")
    wait_saved(page)
    cells = _annotation(image)
    assert len(cells) == n
    assert max(_iou(c.polygon, target) for c in cells) > 0.6

    # the same box again adds nothing: those cells are drawn already
    _stroke(page, image, [(x0 - 8, y0 - 8), (x1 + 8, y1 + 8)])
    page.wait_for_selector(".toast >> text=No new cell in the box")
    assert _cell_count(page) == n

    _undo(page)
    page.wait_for_function("document.querySelector('.cell-count').textContent.startsWith('0 cells')")
    wait_saved(page)
    assert _annotation(image) == []
