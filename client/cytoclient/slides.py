"""The calls of whole slides and large images (issue #14) and of prompts (issue #13): regions of
interest and their pre-segmentation, the tile pyramid, click and box segmentation.

The viewport read and the delta save of cells are on :class:`~cytoclient.client.CellsApi`
(``cells.get(image, bbox=...)``, ``cells.patch(...)``).
"""

from __future__ import annotations

import builtins
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cytoclient import endpoints as ep
from cytoclient._base import Ref, _Api, _id
from cytoclient.errors import ProtocolError, UnavailableError
from cytoclient.models import JSON, BoxOutlines, ClickOutline, Image, Region, TileGrid
from cytoclient.progress import Progress, ProgressCallback

Point = Sequence[float]

_FORMAT = re.compile(r"[a-z]{3,4}")


def _points(value: Point | Iterable[Point], name: str) -> list[list[float]]:
    """``[[x, y], ...]`` from a list of points, or from one point (``(x, y)``)."""
    items: list[Any] = list(value)
    if len(items) == 2 and all(_number(v) for v in items):
        items = [items]
    points: list[list[float]] = []
    for item in items:
        if isinstance(item, str | bytes) or not isinstance(item, Iterable):
            raise TypeError(f"{name}: a point is [x, y], got {item!r}")
        points.append(list(item))
    return points


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Regions(_Api):
    """Regions of interest: polygons on an image (in full-resolution pixels). On a slide a region
    is the unit of pre-segmentation and training; a cell belongs to the region its centroid lies in."""

    def list(self, image: Ref) -> builtins.list[Region]:
        """The image's regions, oldest first."""
        return [Region.from_api(r) for r in self.t.json(ep.REGION_LIST, {"image_id": _id(image)})]

    def get(self, image: Ref, region: Ref) -> Region:
        return Region.from_api(self.t.json(ep.REGION_GET, {"image_id": _id(image), "region_id": _id(region)}))

    def create(self, image: Ref, *, polygon: Iterable[Point], name: str | None = None) -> Region:
        """Draw a region (whoever may annotate the image). ``polygon``: ``[[x, y], ...]``, at least
        3 points inside the image, a simple polygon (a self-crossing outline is refused, not
        repaired); without ``name`` it is ``Region <n>``. A bad one is a ValidationError naming
        ``polygon`` or ``name``; a locked image (submitted .. verified) a ConflictError."""
        body: JSON = {"polygon": _points(polygon, "polygon")}
        if name is not None:
            body["name"] = name
        return Region.from_api(self.t.json(ep.REGION_CREATE, {"image_id": _id(image)}, json=body))

    def update(
        self, image: Ref, region: Ref, *, name: str | None = None, polygon: Iterable[Point] | None = None
    ) -> Region:
        """Rename a region or redraw its polygon (same checks as :meth:`create`); a region under
        review or verified is a ConflictError."""
        body: JSON = {}
        if name is not None:
            body["name"] = name
        if polygon is not None:
            body["polygon"] = _points(polygon, "polygon")
        if not body:
            raise TypeError("give name and/or polygon")
        path = {"image_id": _id(image), "region_id": _id(region)}
        return Region.from_api(self.t.json(ep.REGION_UPDATE, path, json=body))

    def delete(self, image: Ref, region: Ref) -> None:
        """Delete a region (its cells stay)."""
        self.t.call(ep.REGION_DELETE, {"image_id": _id(image), "region_id": _id(region)})

    def presegment(self, image: Ref, region: Ref, *, model_version: int | None = None) -> JSON:
        """Pre-segment only this region of a tiled image: the tiles whose core meets its polygon
        are queued (the image's ``presegment_tiles_total`` counts them) and the proposals kept are
        those whose centroid lies inside it; the model's proposals elsewhere stay. Returns
        ``{presegment_status, model_version}``; follow it with ``images.get(image)``. A region
        of an image that is not tiled (pre-segmented whole) is a ValidationError naming ``region``."""
        body: JSON = {"region": _id(region)}
        if model_version is not None:
            body["model_version"] = model_version
        return dict(self.t.json(ep.PRESEGMENT, {"image_id": _id(image)}, json=body))


@dataclass(frozen=True)
class Tile:
    """One tile of a pyramid: its ``level``, ``col`` and ``row``, ``box`` in that level's pixels
    and ``box_full`` in full-resolution pixels (``(x0, y0, x1, y1)``, exclusive ends), and the
    encoded image (``data``, JPEG)."""

    level: int
    col: int
    row: int
    box: tuple[int, int, int, int]
    box_full: tuple[int, int, int, int]
    data: bytes


class Tiles(_Api):
    """A tiled image's DeepZoom pyramid (``Image.tiles``, ``Image.tile_grid()``), tile by tile.
    A tile is asked for by the image's id, the level, column and row; the client never follows
    a path the server sent."""

    def grid(self, image: Ref) -> TileGrid:
        """The pyramid's geometry (an :class:`Image` that has it is used as is, else it is read).
        ValueError when the image is not tiled or its pyramid is not built yet."""
        if not (isinstance(image, Image) and image.tiles is not None):
            image = Image.from_api(self.t.json(ep.IMAGE_GET, {"image_id": _id(image)}))
        return image.tile_grid()

    def get(self, image: Ref, *, level: int, col: int, row: int, suffix: str = "jpeg") -> bytes:
        """The encoded tile (JPEG) covering ``level``'s pixels ``[col * tile_size, (col + 1) *
        tile_size)`` x ``[row * tile_size, ...)``, cut at the image's edge. A tile outside the
        pyramid, or an image without a built one, is a NotFoundError."""
        for name, value in (("level", level), ("col", col), ("row", row)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not _FORMAT.fullmatch(suffix):
            raise ValueError(f"not a tile format: {suffix!r}")
        path = {"image_id": _id(image), "level": level, "tile": f"{col}_{row}.{suffix}"}
        response = self.t.call(ep.TILE, path)
        kind = response.headers.get("content-type", "")
        if not kind.startswith("image/"):
            raise ProtocolError(f"{ep.TILE}: the answer is not an image ({kind or 'no content type'})")
        return response.content

    def download(self, image: Ref, path: str | Path, *, level: int, col: int, row: int) -> Path:
        """Save one tile to ``path`` (written whole or not at all)."""
        return _write(Path(path), self.get(image, level=level, col=col, row=row))

    def iter_level(self, image: Ref, level: int) -> Iterator[Tile]:
        """Every tile of ``level``, row by row (``level`` from 0, one pixel, to
        ``grid.max_level``, full resolution; ``grid.min_level`` is the whole image in one tile)."""
        return self._tiles(_id(image), self.grid(image), level)

    def _tiles(self, image_id: int, grid: TileGrid, level: int) -> Iterator[Tile]:
        for col, row in grid.tiles(level):  # checks the level before the first request
            data = self.get(image_id, level=level, col=col, row=row, suffix=grid.format)
            yield Tile(level, col, row, grid.tile_box(level, col, row), grid.tile_box_full(level, col, row), data)

    def download_level(
        self, image: Ref, folder: str | Path, *, level: int, progress: ProgressCallback | None = None
    ) -> builtins.list[Path]:
        """Save every tile of ``level`` as ``folder/<level>/<col>_<row>.jpeg`` (the DeepZoom
        layout); ``progress`` gets the tiles done. Returns the files, row by row."""
        grid = self.grid(image)
        target = Path(folder) / str(level)
        total = len(grid.tiles(level))
        written: builtins.list[Path] = []
        for tile in self._tiles(_id(image), grid, level):
            written.append(_write(target / f"{tile.col}_{tile.row}.{grid.format}", tile.data))
            if progress is not None:
                progress(Progress("tiles", len(written), total, "tiles", f"level {level}"))
        return written


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


class Segment(_Api):
    """Click and box prompts: the server outlines cells from the project's active model (or the
    classical baseline before one is trained). Nothing is stored: add an outline to the
    annotation layer with ``cells.patch(image, added=[...])`` (or a save) to keep it."""

    def click(
        self,
        image: Ref,
        *,
        positive: Point | Iterable[Point],
        negative: Point | Iterable[Point] = (),
        wait: float = 120.0,
    ) -> ClickOutline:
        """The cell under the clicks (image pixels): ``positive`` points inside it (1 to 20;
        several merge into one cell), ``negative`` points outside it (what they fall in is
        removed or split off). ``polygon`` is None when there is no cell there (``reason``).

        The first click on an image whose model maps are not kept yet waits for the server's
        interactive worker; when that takes longer than the server waits it answers 503 with
        ``Retry-After``, and the click is sent again until ``wait`` seconds have passed (then
        :class:`~cytoclient.errors.UnavailableError`). A point outside the image is a
        ValidationError naming it (``positive.0``)."""
        body: JSON = {"positive": _points(positive, "positive")}
        points = _points(negative, "negative")
        if points:
            body["negative"] = points
        answer = _again_when_unavailable(
            lambda: self.t.json(ep.SEGMENT_CLICK, {"image_id": _id(image)}, json=body), wait
        )
        return ClickOutline.from_api(answer)

    def box(self, image: Ref, *, box: Sequence[float], wait: float = 120.0) -> BoxOutlines:
        """The cells whose centre lies in ``box`` (``[x0, y0, x1, y1]``, image pixels). An empty
        box, one reaching outside the image or not four numbers is a ValidationError naming
        ``box``; a 503 is waited out as for :meth:`click`."""
        body: JSON = {"box": list(box)}
        answer = _again_when_unavailable(lambda: self.t.json(ep.SEGMENT_BOX, {"image_id": _id(image)}, json=body), wait)
        return BoxOutlines.from_api(answer)


def _again_when_unavailable(send: Callable[[], Any], wait: float) -> Any:
    """``send()`` again after the server's Retry-After while it answers 503, for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return send()
        except UnavailableError as exc:
            pause = exc.retry_after
            # without Retry-After the 503 is not the API's "ask again" (a proxy's, say)
            if pause is None or not math.isfinite(pause) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
