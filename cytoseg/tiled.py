"""Tiled pre-segmentation of large images and whole slides (Django-free).

A large image is never held whole: a :class:`TilePlan` cuts it into a grid of *cores* (squares
of ``tile`` pixels that partition the image), and every core is read with a *margin* of
``margin`` pixels on each side (cut at the image's edge) — neighbouring reads overlap by
``2 * margin``. The backend segments each read on its own (a batch of reads per call where it
can, :func:`tiles_predict`).

**Ownership.** An instance found in a read belongs to that tile when its centroid lies in the
tile's core; every other instance of the read is dropped (its owner's read has it whole). A cell
whose radius is below the margin lies whole inside its owner's read, so it is kept exactly once
and never cut. The plan's default margin is ``MARGIN_DIAMETERS`` (2) cell diameters: one for the
cell, one for the context the model sees around it (a network's answer near a read's edge is
poorer). Two reads of one cell may differ by a pixel or two, and so its centroid: an instance
is therefore kept when its centroid lies within ``slack`` pixels outside the core too, and marked
``border`` when it lies within ``slack`` of an inner core edge; :func:`cells_stitch` drops every
border instance that overlaps (polygon IoU >= ``DUPLICATE_IOU``) one lying deeper in its own
core. No cell is lost to a centroid that moved across the line, and none is kept twice.

**Cells larger than the margin** are cut at the edge of a read, and two reads may each own a
fragment of one (each fragment's centroid in its own core). Every instance touching an inner
edge of its read is marked ``cut``; :func:`cells_stitch` merges cut instances of different tiles
that overlap (by ``CUT_OVERLAP`` of the smaller: two reads of one cell share a band twice the
margin wide) into their union, so such a cell is kept once too, whole where its reads together
cover it; a cell wider than a whole read plus its margin stays cut. :func:`stitch_summary`
counts them; a larger margin (``margin=``, or a larger cell diameter) avoids them. The
platform's default margin covers a cell of twice the model's diameter.

**Reading** (:func:`region_reader`): a scanner format (SVS, NDPI, MRXS, ...) through OpenSlide's
``read_region`` at level 0; TIFF (tiled, pyramidal or striped) through libvips' random-access
loader and a crop, which decodes only the tiles or strips the crop needs; plain JPEG and PNG
through libvips as well, which decodes the image once per reader into its own cache (on disk
above libvips' threshold, 100 MB by default), never into Python. :class:`ArrayReader` serves an
array already in memory (tests, the single-image comparison).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cytoseg.backends.base import Instance, Prediction, SegmentationBackend
from cytoseg.contours import instances_to_polygons

MARGIN_DIAMETERS = 2
DEFAULT_TILE = 1024
DEFAULT_DIAMETER = 40.0  # px: the platform's cells at 20x (synthetic follicular cells are 18-36 px across)
DUPLICATE_IOU = 0.5
CUT_OVERLAP = 0.25

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends) in full-resolution pixels


def margin_for(diameter: float | None) -> int:
    """The default margin for cells of ``diameter`` pixels: ``MARGIN_DIAMETERS`` diameters, at
    least 32 px."""
    return max(32, math.ceil(MARGIN_DIAMETERS * (diameter or DEFAULT_DIAMETER)))


@dataclass(frozen=True)
class TilePlan:
    """A grid of cores of ``tile`` pixels over a ``width`` x ``height`` image, each read with
    ``margin`` pixels around it. Tiles are numbered row by row."""

    width: int
    height: int
    tile: int = DEFAULT_TILE
    margin: int = 80

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError("width and height must be at least 1")
        if self.tile < 32:
            raise ValueError("tile must be at least 32 pixels")
        if not 0 <= self.margin <= self.tile:
            raise ValueError("margin must lie in 0..tile")

    @property
    def columns(self) -> int:
        return -(-self.width // self.tile)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile)

    @property
    def count(self) -> int:
        return self.columns * self.rows

    @property
    def slack(self) -> int:
        """How far outside its core a centroid may lie and its instance still be kept (then
        de-duplicated): reads of one cell in two tiles differ by a pixel or two."""
        return max(2, self.margin // 8)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise ValueError(f"tile index must lie in 0..{self.count - 1}")

    def core(self, index: int) -> Box:
        """The part of the image tile ``index`` owns; the cores partition the image."""
        self._check(index)
        row, col = divmod(index, self.columns)
        x0, y0 = col * self.tile, row * self.tile
        return x0, y0, min(x0 + self.tile, self.width), min(y0 + self.tile, self.height)

    def read_box(self, index: int) -> Box:
        """What is read for tile ``index``: its core and the margin around it, cut to the image."""
        x0, y0, x1, y1 = self.core(index)
        m = self.margin
        return max(0, x0 - m), max(0, y0 - m), min(self.width, x1 + m), min(self.height, y1 + m)

    def crosses_border(self, box: Box) -> bool:
        """Whether ``box`` (an instance's extent) crosses a line between cores."""
        x0, y0, x1, y1 = box
        return (x0 // self.tile) != ((x1 - 1) // self.tile) or (y0 // self.tile) != ((y1 - 1) // self.tile)


class RegionReader(Protocol):
    width: int
    height: int

    def read(self, box: Box) -> np.ndarray:
        """(y1-y0, x1-x0, 3) uint8 RGB pixels of ``box`` at full resolution."""
        ...

    def close(self) -> None: ...


class ArrayReader:
    """Regions of an RGB array already in memory."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self.height, self.width = int(rgb.shape[0]), int(rgb.shape[1])

    def read(self, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        return np.ascontiguousarray(self.rgb[y0:y1, x0:x1, :3])

    def close(self) -> None:
        pass


class _OpenSlideReader:
    def __init__(self, path: Path) -> None:
        import openslide

        self.slide = openslide.OpenSlide(str(path))
        self.width, self.height = (int(v) for v in self.slide.dimensions)

    def read(self, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        region = self.slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0))
        rgba = np.asarray(region)
        # OpenSlide gives premultiplied RGBA, transparent outside the scanned area: white there
        alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
        rgb = rgba[:, :, :3].astype(np.float32) + 255.0 * (1.0 - alpha)
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def close(self) -> None:
        self.slide.close()


class _VipsReader:
    def __init__(self, path: Path, kind: str) -> None:
        import pyvips

        from cytoseg.slides import _rgb8

        loader = {"JPEG": "jpegload", "PNG": "pngload", "TIFF": "tiffload"}[kind]
        # random access: a crop decodes only what it needs (a tiled TIFF's tiles); JPEG and PNG
        # are decoded once into libvips' own cache, on disk above its threshold
        self.image = _rgb8(getattr(pyvips.Image, loader)(str(path), access="random", fail_on="truncated"))
        self.width, self.height = int(self.image.width), int(self.image.height)

    def read(self, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        crop = self.image.crop(x0, y0, x1 - x0, y1 - y0)
        return np.ndarray(buffer=crop.write_to_memory(), dtype=np.uint8, shape=(y1 - y0, x1 - x0, 3)).copy()

    def close(self) -> None:
        self.image = None


def region_reader(path: Path) -> RegionReader:
    """A reader of full-resolution regions of the image or slide at ``path`` (see the module
    docstring); never decodes the whole of a tiled file into memory."""
    from cytoseg.slides import slide_probe, sniff_format

    info = slide_probe(path)
    if info.reader == "openslide":
        return _OpenSlideReader(path)
    with open(path, "rb") as handle:
        kind = sniff_format(handle.read(16)) or "TIFF"
    return _VipsReader(path, kind)


@dataclass
class TileCell:
    """One kept instance of a tile, as a polygon in full-resolution pixels."""

    tile: int
    label: int
    score: float
    area: float
    bbox: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max
    points: list[tuple[float, float]]
    depth: float  # how far its centroid lies inside its tile's core (negative: outside, by up to slack)
    border: bool  # near a line between cores: may be a duplicate of a neighbour's
    cut: bool  # touches an inner edge of its read: a cell larger than the margin

    def to_json(self) -> list[Any]:
        return [
            self.tile, self.label, round(self.score, 4), round(self.area, 2), [round(v, 2) for v in self.bbox],
            [[round(x, 2), round(y, 2)] for x, y in self.points], round(self.depth, 2), self.border, self.cut,
        ]  # fmt: skip

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> TileCell:
        tile, label, score, area, bbox, points, depth, border, cut = row
        return cls(
            tile=int(tile), label=int(label), score=float(score), area=float(area),
            bbox=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
            points=[(float(x), float(y)) for x, y in points], depth=float(depth), border=bool(border), cut=bool(cut),
        )  # fmt: skip


def _depth(plan: TilePlan, core: Box, cx: float, cy: float) -> float:
    """Signed distance of (cx, cy) inside ``core``, counting only the sides that face another
    core (the image's own edge is nobody else's)."""
    x0, y0, x1, y1 = core
    sides = []
    if x0 > 0:
        sides.append(cx - x0)
    if y0 > 0:
        sides.append(cy - y0)
    if x1 < plan.width:
        sides.append(x1 - cx)
    if y1 < plan.height:
        sides.append(y1 - cy)
    return min(sides) if sides else math.inf


def tile_cells(plan: TilePlan, index: int, instances: Iterable[Instance], *, min_area: float = 20.0) -> list[TileCell]:
    """The instances tile ``index`` keeps (``instances`` in the read's own pixels), as polygons
    in full-resolution pixels: those it owns (see the module docstring)."""
    rx0, ry0, rx1, ry1 = plan.read_box(index)
    core = plan.core(index)
    kept: list[Instance] = []
    facts: list[tuple[float, bool, bool]] = []
    for inst in instances:
        ys, xs = np.nonzero(inst.mask)
        if ys.size == 0:
            continue
        cx, cy = rx0 + inst.x0 + float(xs.mean()) + 0.5, ry0 + inst.y0 + float(ys.mean()) + 0.5
        depth = _depth(plan, core, cx, cy)
        if depth < -plan.slack:
            continue  # a neighbour's
        left, top = inst.x0 + int(xs.min()), inst.y0 + int(ys.min())
        right, bottom = inst.x0 + int(xs.max()) + 1, inst.y0 + int(ys.max()) + 1
        cut = (
            (left == 0 and rx0 > 0)
            or (top == 0 and ry0 > 0)
            or (right >= rx1 - rx0 and rx1 < plan.width)
            or (bottom >= ry1 - ry0 and ry1 < plan.height)
        )
        kept.append(Instance(x0=rx0 + inst.x0, y0=ry0 + inst.y0, mask=inst.mask, label=inst.label, score=inst.score))
        facts.append((depth, depth < plan.slack, cut))
    out = []
    for contour in instances_to_polygons(kept, min_area=min_area):
        depth, border, cut = facts[contour.index]
        out.append(
            TileCell(
                tile=index, label=contour.label, score=contour.score, area=contour.area, bbox=contour.bbox,
                points=list(contour.points), depth=depth if math.isfinite(depth) else 1e9, border=border, cut=cut,
            )
        )  # fmt: skip
    return out


def tiles_predict(backend: SegmentationBackend, images: Sequence[np.ndarray]) -> list[Prediction]:
    """Predictions of several reads: one call of the backend's ``predict_batch`` where it has
    one (a batch on the GPU), one ``predict`` per read otherwise."""
    batch = getattr(backend, "predict_batch", None)
    if callable(batch) and len(images) > 1:
        return list(batch(list(images)))
    return [backend.predict(image) for image in images]


def tiles_segment(
    backend: SegmentationBackend,
    reader: RegionReader,
    plan: TilePlan,
    indices: Sequence[int],
    *,
    min_area: float = 20.0,
    batch: int = 4,
    on_tile: Callable[[int, list[TileCell]], None] | None = None,
) -> Iterator[tuple[int, list[TileCell]]]:
    """Segment the tiles ``indices`` in batches of ``batch`` reads; yields (index, kept cells)
    per tile as soon as its batch is done, so a caller can record it before the next one.
    Holds one batch of reads in memory at a time."""
    for start in range(0, len(indices), batch):
        chunk = list(indices[start : start + batch])
        reads = [reader.read(plan.read_box(i)) for i in chunk]
        predictions = tiles_predict(backend, reads)
        del reads
        for index, prediction in zip(chunk, predictions, strict=True):
            cells = tile_cells(plan, index, prediction.instances, min_area=min_area)
            if on_tile is not None:
                on_tile(index, cells)
            yield index, cells


def _polygon(cell: TileCell) -> Any:
    from shapely.geometry import Polygon

    poly = Polygon(cell.points)
    return poly if poly.is_valid else poly.buffer(0)


def _buckets(box: tuple[float, float, float, float], size: int = 128) -> list[tuple[int, int]]:
    x0, y0, x1, y1 = box
    columns = range(int(x0) // size, int(x1) // size + 1)
    return [(bx, by) for bx in columns for by in range(int(y0) // size, int(y1) // size + 1)]


def _cut_merge(cut: list[TileCell]) -> list[TileCell]:
    """Fragments of cells larger than the margin, merged: cut cells of different tiles that
    overlap by ``CUT_OVERLAP`` of the smaller one are parts of one cell (two reads of it overlap
    by twice the margin), and become their union."""
    from shapely.ops import unary_union

    polys = [_polygon(c) for c in cut]
    parent = list(range(len(cut)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    grid: dict[tuple[int, int], list[int]] = {}
    for i, cell in enumerate(cut):
        for key in _buckets(cell.bbox):
            for j in grid.get(key, ()):
                if cut[j].tile == cell.tile or root(i) == root(j):
                    continue
                inter = polys[i].intersection(polys[j]).area
                if inter >= CUT_OVERLAP * min(polys[i].area, polys[j].area):
                    parent[root(i)] = root(j)
            grid.setdefault(key, []).append(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(cut)):
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(cut[members[0]])
            continue
        union = unary_union([polys[i] for i in members])
        if union.geom_type != "Polygon":
            union = max(union.geoms, key=lambda g: g.area)
        first = max((cut[i] for i in members), key=lambda c: c.area)
        minx, miny, maxx, maxy = union.bounds
        points = [(float(x), float(y)) for x, y in list(union.exterior.coords)[:-1]]
        out.append(
            TileCell(
                tile=first.tile, label=first.label, score=max(cut[i].score for i in members), area=float(union.area),
                bbox=(minx, miny, maxx, maxy), points=points,
                depth=max(cut[i].depth for i in members), border=False, cut=True,
            )
        )  # fmt: skip
    return out


def _duplicates(cell: TileCell, poly: Any, other: TileCell, other_poly: Any, duplicate_iou: float) -> bool:
    """Whether candidate ``cell`` repeats ``other`` (a cell of another tile already kept): by
    IoU for a whole cell, by ``CUT_OVERLAP`` of its own area for a cut one."""
    inter = poly.intersection(other_poly).area
    if cell.cut:
        return bool(inter >= CUT_OVERLAP * poly.area)
    union = poly.area + other_poly.area - inter
    return bool(union > 0 and inter / union >= duplicate_iou)


def _meets(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return not (b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1])


def stitch_stream(
    source: Callable[[], Iterable[TileCell]], *, duplicate_iou: float = DUPLICATE_IOU
) -> Iterator[TileCell]:
    """The image's instances from every tile's kept cells (``source()`` gives them; it is called
    twice): the inner ones as they are; of the border ones that overlap with IoU >=
    ``duplicate_iou``, only the one whose centroid lies deepest in its own core; cut fragments
    of one large cell merged (:func:`_cut_merge`), and dropped where another tile holds the cell
    whole (they overlap it by ``CUT_OVERLAP`` of their own area).

    Memory: the first pass keeps the border and cut cells only (a thin band along the core
    lines); the second yields the inner cells as it reads them, checking each against the
    candidates it meets; the kept candidates come last. A slide's 250,000 cells never need to be
    held at once."""
    border: list[TileCell] = []
    cut: list[TileCell] = []
    for cell in source():
        if cell.cut:
            cut.append(cell)
        elif cell.border:
            border.append(cell)
    # whole cells by depth, then the merged fragments of large ones
    candidates = sorted(border, key=lambda c: -c.depth) + sorted(_cut_merge(cut), key=lambda c: -c.depth)
    polys = [_polygon(c) for c in candidates]
    grid: dict[tuple[int, int], list[int]] = {}
    for i, cell in enumerate(candidates):
        for key in _buckets(cell.bbox):
            grid.setdefault(key, []).append(i)
    dropped: set[int] = set()
    for cell in source():
        if cell.cut or cell.border:
            continue
        yield cell
        near = {i for key in _buckets(cell.bbox) for i in grid.get(key, ())} - dropped
        inner_poly = None
        for i in near:
            other = candidates[i]
            if other.tile == cell.tile or not _meets(other.bbox, cell.bbox):
                continue
            inner_poly = inner_poly if inner_poly is not None else _polygon(cell)
            if _duplicates(other, polys[i], cell, inner_poly, duplicate_iou):
                dropped.add(i)
    kept: dict[tuple[int, int], list[int]] = {}
    for i, cell in enumerate(candidates):
        if i in dropped:
            continue
        keys = _buckets(cell.bbox)
        seen = {j for key in keys for j in kept.get(key, ())}
        if any(
            candidates[j].tile != cell.tile
            and _meets(candidates[j].bbox, cell.bbox)
            and _duplicates(cell, polys[i], candidates[j], polys[j], duplicate_iou)
            for j in seen
        ):
            continue
        yield cell
        for key in keys:
            kept.setdefault(key, []).append(i)


def cells_stitch(cells: Iterable[TileCell], *, duplicate_iou: float = DUPLICATE_IOU) -> list[TileCell]:
    """:func:`stitch_stream` over cells held in memory."""
    held = list(cells)
    return list(stitch_stream(lambda: held, duplicate_iou=duplicate_iou))


def stitch_summary(cells: Sequence[TileCell]) -> dict[str, int]:
    """Counts of a stitched result: cells, those that were near a core line, those cut."""
    return {
        "cells": len(cells),
        "border": sum(1 for c in cells if c.border),
        "cut": sum(1 for c in cells if c.cut),
    }


def tiled_predict(
    backend: SegmentationBackend,
    reader: RegionReader,
    plan: TilePlan,
    *,
    min_area: float = 20.0,
    batch: int = 4,
) -> list[TileCell]:
    """Every tile of ``plan`` segmented and stitched in one process (tests, the benchmark; the
    platform runs the tiles as tasks and stitches at the end)."""
    cells: list[TileCell] = []
    for _, kept in tiles_segment(backend, reader, plan, list(range(plan.count)), min_area=min_area, batch=batch):
        cells.extend(kept)
    return cells_stitch(cells)
