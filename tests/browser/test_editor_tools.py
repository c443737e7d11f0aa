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
