"""The client's whole-slide calls (issue #14) and prompts (issue #13) against the live server:
tiles by ids, cells by viewport, delta saves with their 409 and 400s, regions of interest and a
region's pre-segmentation, click and box segmentation (and a 503 waited out)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np
import pytest
from cytoclient import (
    Cell,
    Client,
    ConflictError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from cytoclient import Image as ClientImage
from PIL import Image as PILImage

from annotations.models import Cell as CellRow
from annotations.models import Role
from tests.client.conftest import SLIDE_HEIGHT, SLIDE_WIDTH, Account, account_for, image_folder, square
from tests.factories import member

pytestmark = pytest.mark.django_db(transaction=True)


def _decode(data: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(data)) as tile:
        assert tile.format == "JPEG"
        return np.asarray(tile.convert("RGB"))


def _requests(live_server: Any, token: str) -> tuple[Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]}, timeout=60)
    return Client(live_server.url, token, http=http), sent


def test_tiles_by_ids_match_the_slide(
    live_server: Any, admin: Account, slide_image: ClientImage, slide: Any, tmp_path: Path
) -> None:
    from cytoseg.tiles import TileGeometry

    image = slide_image
    assert image.tiled and image.tile_status == "done" and image.tiles is not None
    grid = image.tile_grid()
    geometry = TileGeometry(SLIDE_WIDTH, SLIDE_HEIGHT, 256)
    assert (grid.levels, grid.tile_size, grid.min_level) == (geometry.levels, 256, geometry.single_tile_level())
    for level in range(grid.levels):  # the client's geometry is the server's
        assert grid.level_size(level) == geometry.level_size(level)
        assert grid.tile_counts(level) == geometry.tile_counts(level)
        assert [grid.tile_box_full(level, c, r) for c, r in grid.tiles(level)] == [
            geometry.tile_box_full(level, c, r) for c, r in grid.tiles(level)
        ]

    # the server's url template is never followed: a tampered one changes nothing
    image.tiles.url = "/api/v1/images/999999/tiles/{level}/{col}_{row}.jpeg"
    cyto, sent = _requests(live_server, admin.token)
    with cyto:
        level = grid.max_level
        tiles = list(cyto.tiles.iter_level(image, level))
        assert [(t.col, t.row) for t in tiles] == grid.tiles(level) and len(tiles) == 12
        assert [str(r.url) for r in sent if "/tiles/" in str(r.url)] == [
            f"{cyto.url}images/{image.id}/tiles/{level}/{t.col}_{t.row}.jpeg" for t in tiles
        ]
        full = slide.region(0, 0, SLIDE_WIDTH, SLIDE_HEIGHT).astype(np.float64)
        got = np.zeros_like(full)
        for tile in tiles:
            x0, y0, x1, y1 = tile.box
            pixels = _decode(tile.data)
            assert pixels.shape == (y1 - y0, x1 - x0, 3)
            got[y0:y1, x0:x1] = pixels
        assert np.abs(got - full).mean() < 4.0  # the reassembled level is the slide (JPEG aside)

        # the coarsest useful level is one tile holding the whole image
        (whole,) = cyto.tiles.iter_level(image.id, grid.min_level)  # by id: the grid is read
        assert _decode(whole.data).shape[:2] == grid.level_size(grid.min_level)[::-1]

        one = cyto.tiles.get(image, level=level, col=3, row=2)
        assert _decode(one).shape == (256, 256, 3)
        saved = cyto.tiles.download(image, tmp_path / "one.jpeg", level=level, col=3, row=2)
        assert saved.read_bytes() == one

        files = cyto.tiles.download_level(image, tmp_path / "pyramid", level=level - 1)
        cols, rows = grid.tile_counts(level - 1)
        assert sorted(p.name for p in files) == sorted(f"{c}_{r}.jpeg" for c in range(cols) for r in range(rows))
        assert {p.parent for p in files} == {tmp_path / "pyramid" / str(level - 1)}
        assert not list((tmp_path / "pyramid").rglob("*.part"))

        with pytest.raises(NotFoundError) as missing:
            cyto.tiles.get(image, level=level, col=4, row=0)  # one past the last column
        assert missing.value.detail == "No such tile."
        with pytest.raises(NotFoundError):
            cyto.tiles.get(image, level=grid.levels, col=0, row=0)
        count = len(sent)
        with pytest.raises(ValueError, match="level"):
            cyto.tiles.get(image, level=-1, col=0, row=0)
        with pytest.raises(ValueError, match="level"):
            list(cyto.tiles.iter_level(image, grid.levels))
        with pytest.raises(ValueError, match="format"):
            cyto.tiles.get(image, level=0, col=0, row=0, suffix="../x")
        assert len(sent) == count  # refused before a request

        small = cyto.images.upload(image.project, image_folder(tmp_path / "small", 1)).images[0]
        with pytest.raises(ValueError, match="is not tiled"):
            cyto.tiles.grid(small)
        with pytest.raises(NotFoundError):
            cyto.tiles.get(small, level=0, col=0, row=0)


def test_cells_by_viewport_and_deltas(cyto: Client, slide_image: ClientImage) -> None:
    image = slide_image
    cell_class = cyto.projects.get(image.project).class_id("thyroid cell")
    # a 6 x 4 grid of 20 px squares over the slide
    origins = [(40 + 160 * i, 40 + 180 * j) for j in range(4) for i in range(6)]
    written = cyto.cells.patch(
        image, revision=0, added=[{"class_id": cell_class, "polygon": square(x, y, 20)} for x, y in origins]
    )
    assert written.revision == 1 and written.changed == [] and written.deleted == []
    assert [c.bbox[:2] for c in written.added] == [[x, y] for x, y in origins]  # request order, with ids
    assert all(c.revision == 1 and c.layer == "annotation" for c in written.added)

    box = (0, 0, 380, 250)  # meets the squares at x 40, 200, 360 (its edge) and y 40, 220
    expected = {c.id for c in written.added if c.bbox[0] <= 380 and c.bbox[1] <= 250}
    assert len(expected) == 6
    viewport = cyto.cells.get(image, bbox=box)
    assert viewport.revision == 1 and {c.id for c in viewport.cells} == expected
    assert viewport.next_after is None
    paged = list(cyto.cells.pages(image, bbox=box, page_size=4))
    assert [len(p.cells) for p in paged] == [4, 2] and paged[0].next_after == sorted(expected)[3]
    assert [c.id for c in cyto.cells.get(image, bbox="0,0,380,250", page_size=4).cells] == sorted(expected)
    assert cyto.cells.get(image, bbox=(900, 700, 1000, 760)).cells == []
    for bad in ("1,2,3", (10, 10, 5, 20), "a,b,c,d"):
        with pytest.raises(ValidationError) as invalid:
            cyto.cells.get(image, bbox=bad)
        assert invalid.value.field == "bbox" and "bbox" in str(invalid.value)

    # change one (the Cell carries the revision it was read at), delete another
    first, second = viewport.cells[0], viewport.cells[1]
    moved = Cell.from_api({**first.raw, "polygon": square(45, 45, 25)})
    changed = cyto.cells.patch(image, revision=viewport.revision, changed=[moved], deleted=[second])
    assert changed.revision == 2 and changed.deleted == [second.id]
    assert changed.changed[0].id == first.id and changed.changed[0].area == pytest.approx(625)
    assert not CellRow.objects.filter(pk=second.id).exists()
    before = cyto.cells.at_revision(image, 1, bbox=box)
    assert {c.id for c in before.cells} == expected and before.revision == 1

    # two scripts on the same slide: edits far apart merge, edits that meet are refused
    stale = viewport.revision  # 1: what this script read
    far = cyto.cells.patch(image, revision=stale, added=[{"class_id": cell_class, "polygon": square(700, 600, 30)}])
    assert far.revision == 3
    with pytest.raises(ConflictError) as conflict:
        cyto.cells.patch(
            image,
            revision=stale,
            changed=[Cell.from_api({**first.raw, "polygon": square(40, 40, 30)})],  # changed at revision 2
        )
    error = conflict.value
    assert error.status_code == 409 and error.revision == 3
    assert error.conflicts is not None and [(c.item, c.id, c.reason, c.revision) for c in error.conflicts] == [
        ("changed.0", first.id, "changed", 2)
    ]
    assert error.cells is not None and [c.id for c in error.cells] == [first.id]
    assert error.cells[0].polygon == square(45, 45, 25)  # the server's version
    assert error.deleted == []
    assert "the server's revision is 3" in str(error)
    with pytest.raises(ConflictError) as overlap:  # a new outline over one saved after the base
        cyto.cells.patch(image, revision=2, added=[{"class_id": cell_class, "polygon": square(710, 610, 10)}])
    assert overlap.value.conflicts is not None and overlap.value.conflicts[0].reason == "overlaps"
    with pytest.raises(ConflictError) as gone:
        cyto.cells.patch(image, revision=1, deleted=[{"id": second.id, "revision": 1}])
    assert gone.value.conflicts is not None and gone.value.conflicts[0].reason == "deleted"
    assert gone.value.deleted == [second.id]
    assert cyto.images.get(image).revision == 3  # nothing was written by the refused deltas

    # resolve: take the server's version and send the change again based on it
    retried = cyto.cells.patch(
        image, revision=error.revision, changed=[Cell.from_api({**error.cells[0].raw, "class_id": cell_class})]
    )
    assert retried.revision == 4
    # a cell read at its latest revision may be changed on an older base: its own revision counts
    latest = next(c for c in cyto.cells.get(image, bbox=box).cells if c.id == first.id)
    assert latest.revision == 4
    on_old_base = cyto.cells.patch(image, revision=1, changed=[Cell.from_api({**latest.raw, "class_id": cell_class})])
    assert on_old_base.revision == 5 and on_old_base.changed[0].revision == 5

    # a bad item: a 400 naming the item and field, nothing written
    for kwargs, field in (
        ({"added": [{"class_id": cell_class, "polygon": square(1020, 10, 20)}]}, "added.0.polygon"),
        ({"added": [{"class_id": 999_999, "polygon": square(10, 10)}]}, "added.0.class_id"),
        ({"changed": [{"id": 999_999, "polygon": square(10, 10)}]}, "changed.0.id"),
        ({}, "added"),
    ):
        with pytest.raises(ValidationError) as invalid:
            cyto.cells.patch(image, revision=5, **kwargs)
        assert invalid.value.status_code == 400 and invalid.value.field == field, invalid.value.errors
        assert field in str(invalid.value)
    with pytest.raises(ValidationError) as ahead:
        cyto.cells.patch(image, revision=99, added=[{"class_id": cell_class, "polygon": square(10, 10)}])
    assert ahead.value.field == "base_revision"
    assert cyto.images.get(image).revision == 5


def test_regions_and_a_regions_pre_segmentation(
    cyto: Client, slide_image: ClientImage, project: Any, tmp_path: Path
) -> None:
    from inference.models import PresegmentTile

    image = slide_image
    l_shape = [[40, 40], [500, 40], [500, 200], [200, 200], [200, 500], [40, 500]]
    region = cyto.regions.create(image, polygon=l_shape)
    assert (region.image, region.name, region.status, region.bbox) == (image.id, "Region 1", "new", [40, 40, 500, 500])
    assert region.polygon == l_shape
    named = cyto.regions.create(image, polygon=[(600, 100), (900, 100), (750, 400)], name="Follicle")
    assert [r.name for r in cyto.regions.list(image)] == ["Region 1", "Follicle"]
    assert cyto.regions.get(image, named).polygon == [[600, 100], [900, 100], [750, 400]]
    renamed = cyto.regions.update(image, named, name="Colloid", polygon=[[600, 100], [900, 100], [900, 400]])
    assert renamed.name == "Colloid" and renamed.bbox == [600, 100, 900, 400]

    for kwargs, field in (
        ({"polygon": [[0, 0], [10, 0]]}, "polygon"),
        ({"polygon": [[0, 0], [2000, 0], [0, 100]]}, "polygon"),
        ({"polygon": [[0, 0], [100, 100], [100, 0], [0, 100]]}, "polygon"),
        ({"polygon": [[0, 0], [10, 0], [0, 10]], "name": "  "}, "name"),
    ):
        with pytest.raises(ValidationError) as invalid:
            cyto.regions.create(image, **kwargs)
        assert invalid.value.field == field, invalid.value.errors
    with pytest.raises(ValidationError) as invalid:
        cyto.regions.update(image, region, polygon=[[0, 0], [1, 1]])
    assert invalid.value.field == "polygon"

    # only the tiles the L meets are planned (256 px cores: 0, 1 and 4, not 5 inside its bbox)
    with mock.patch("core.queue.task_send"):
        queued = cyto.regions.presegment(image, region)
    assert queued["presegment_status"] == "queued" and isinstance(queued["model_version"], int)
    assert cyto.images.get(image).presegment_tiles_total == 3
    assert list(PresegmentTile.objects.filter(image_id=image.id).order_by("index").values_list("index", flat=True)) == [
        0,
        1,
        4,
    ]
    with pytest.raises(ValidationError) as unknown:
        cyto.proposals.presegment(image, region=999_999)
    assert unknown.value.field == "region"
    small = cyto.images.upload(project.pk, image_folder(tmp_path / "small", 1)).images[0]
    small_region = cyto.regions.create(small, polygon=[[0, 0], [30, 0], [0, 30]])
    with pytest.raises(ValidationError) as whole:
        cyto.regions.presegment(small, small_region)
    assert whole.value.field == "region" and "whole" in whole.value.errors["region"]

    cyto.regions.delete(image, named)
    assert [r.id for r in cyto.regions.list(image)] == [region.id]
    with pytest.raises(NotFoundError):
        cyto.regions.get(image, named)
    with pytest.raises(NotFoundError):
        cyto.regions.get(small, region)  # a region of another image


@pytest.fixture
def field_image(cyto: Client, project: Any, tmp_path: Path) -> tuple[ClientImage, Any]:
    """A 256 x 192 synthetic field uploaded through the client, and its ground truth."""
    from cytoseg.synthetic import generate_field

    field = generate_field(seed=5, width=256, height=192, n_cells=14, n_erythrocytes=0, cluster_fraction=0.0)
    path = tmp_path / "field" / "field.png"
    path.parent.mkdir()
    PILImage.fromarray(field.image).save(path)
    return cyto.images.upload(project.pk, path).images[0], field


def _big_cell(field: Any) -> np.ndarray:
    labels = field.label_map()
    ks = [k for k in range(1, int(labels.max()) + 1) if (labels == k).sum() >= 150]
    return np.asarray(labels == ks[0])


def _inside(mask: np.ndarray) -> list[float]:
    from scipy import ndimage as ndi

    r, c = np.unravel_index(np.argmax(ndi.distance_transform_edt(mask)), mask.shape)
    return [float(c) + 0.5, float(r) + 0.5]


def _iou(polygon: list[list[float]], mask: np.ndarray) -> float:
    from cytoseg.contours import polygon_rasterize

    drawn = polygon_rasterize(polygon, height=mask.shape[0], width=mask.shape[1])
    return float((drawn & mask).sum() / max(1, (drawn | mask).sum()))


@pytest.fixture
def _fresh_interactive_cache() -> Any:
    from inference import interactive

    interactive.interactive_cache_clear()
    yield
    interactive.interactive_cache_clear()


@pytest.mark.usefixtures("_fresh_interactive_cache")
def test_click_and_box_segmentation(
    live_server: Any, cyto: Client, field_image: tuple[ClientImage, Any], project: Any, monkeypatch: Any
) -> None:
    image, field = field_image
    cell = _big_cell(field)
    annotator = account_for(member(project, Role.ANNOTATOR, username="dr.kim"))
    with Client(live_server.url, annotator.token) as as_annotator:
        outline = as_annotator.segment.click(image, positive=_inside(cell))  # one point, as (x, y)
    assert outline.source == "baseline" and outline.model_version is None and outline.reason is None
    assert outline.label == 1 and outline.class_id == cyto.projects.get(project.pk).class_id("thyroid cell")
    assert outline.polygon is not None and _iou(outline.polygon, cell) >= 0.6
    assert outline.timings["total_ms"] > 0
    # kept as a cell through a delta, as the editor does
    kept = cyto.cells.patch(image, revision=0, added=[{"class_id": outline.class_id, "polygon": outline.polygon}])
    assert kept.revision == 1 and len(kept.added) == 1

    ys, xs = np.nonzero(cell)
    box = [float(xs.min()) - 4, float(ys.min()) - 4, float(xs.max()) + 5, float(ys.max()) + 5]
    found = cyto.segment.box(image, box=box)
    assert found.source == "baseline" and found.cells
    assert max(_iou(c.polygon, cell) for c in found.cells) >= 0.6
    for c in found.cells:
        points = np.asarray(c.polygon)
        cx, cy = points[:, 0].mean(), points[:, 1].mean()
        assert box[0] - 2 <= cx <= box[2] + 2 and box[1] - 2 <= cy <= box[3] + 2

    with pytest.raises(ValidationError) as outside:
        cyto.segment.click(image, positive=[[10, 10], [300, 10]])
    assert outside.value.field == "positive.1"
    with pytest.raises(ValidationError) as bad_box:
        cyto.segment.box(image, box=[0, 0, 300, 100])
    assert bad_box.value.field == "box"

    # a first click whose maps are still being computed: 503 with Retry-After, sent again
    from core.errors import UnavailableError as ServerUnavailable
    from inference import interactive

    real = interactive.image_click_segment
    calls: list[float] = []

    def busy_once(**kwargs: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ServerUnavailable("The model's maps of this image are being computed.", retry_after=1)
        return real(**kwargs)

    monkeypatch.setattr(interactive, "image_click_segment", busy_once)
    again = cyto.segment.click(image, positive=[_inside(cell)])
    assert again.polygon is not None and len(calls) == 2 and calls[1] - calls[0] >= 1.0
    calls.clear()
    with pytest.raises(UnavailableError) as unavailable:
        cyto.segment.click(image, positive=[_inside(cell)], wait=0)
    assert unavailable.value.status_code == 503 and unavailable.value.retry_after == 1
    assert "being computed" in unavailable.value.detail and len(calls) == 1
