"""Deterministic synthetic Diff-Quik thyroid cytology fields (Django-free).

A field is rendered in optical-density space (Beer-Lambert): every stained object adds
absorbance, so cells stacked on each other come out darker, as they do under the
microscope, and pasted erythrocytes tint what lies beneath them instead of hiding it.

Geometry follows a 20x, 1024x768 field: follicular cells of radius ~9-18 px with a
dark blue-purple nucleus and paler cytoplasm, alone and in overlapping clusters, and
smaller (~5-8 px) pink-red erythrocytes with a pale centre, some of them faint. Object
sizes stay in pixels at any image size (same magnification: a 256x256 image is a crop
of a field), while default counts scale with the image area, so small test images hold
proportionally fewer cells of the usual size.

Every instance keeps at least ``MIN_VISIBLE_FRACTION`` of its area visible; placements
that would break that for any instance (itself included) are rejected and retried.
All randomness comes from one ``numpy.random.Generator`` seeded by ``seed``.

``difficulty="hard"`` renders what real Diff-Quik smears throw at a model, each aspect drawn
per field: another palette (mixtures of the classic stain, magenta cytoplasm with deep-violet
nuclei on a bluish background, and a pale blue one); strong linear and radial illumination
gradients; dense clusters of 6-18 heavily overlapping cells (each keeps ``HARD_MIN_VISIBLE``
of itself visible); 35-60 erythrocytes per 256x256 of field, half of them faint; defocus blur
that varies across the field (sigma 0.3-2.6); JPEG compression at quality 40-65. The masks
stay exact: every one is the geometric shape that was painted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cytoseg.crops import CropGeometry, PaintedField

__all__ = [
    "CELL",
    "DIFFICULTIES",
    "ERYTHROCYTE",
    "MIN_VISIBLE_FRACTION",
    "REFERENCE_HEIGHT",
    "REFERENCE_WIDTH",
    "SyntheticCell",
    "SyntheticField",
    "generate_dataset",
    "generate_field",
]

CELL = 1
ERYTHROCYTE = 2
REFERENCE_WIDTH = 1024
REFERENCE_HEIGHT = 768
MIN_VISIBLE_FRACTION = 0.6

# Counts per reference field (1024x768); scaled by area for other sizes.
CELL_COUNT_RANGE = (80, 270)
ERYTHROCYTE_COUNT_RANGE = (50, 250)
CELL_RADIUS_RANGE = (9.0, 18.0)
ERYTHROCYTE_RADIUS_RANGE = (5.0, 8.0)
CLUSTER_SIZE_RANGE = (3, 14)

DIFFICULTIES = ("normal", "hard")
# Hard mode, per 256x256 of field (scaled by area): the densities of real clustered smears.
HARD_AREA = 256 * 256
HARD_CELL_COUNT_RANGE = (28, 48)
HARD_ERYTHROCYTE_COUNT_RANGE = (35, 60)
HARD_CLUSTER_SIZE_RANGE = (6, 18)
HARD_CLUSTER_FRACTION = 0.85
HARD_FAINT_FRACTION = 0.5
HARD_MIN_VISIBLE = 0.45
HARD_BLUR_RANGE = (0.3, 2.6)
HARD_JPEG_QUALITY = (40, 65)
# Palettes as the RGB each object shows on a white background: cytoplasm, nucleus (over
# cytoplasm), erythrocyte, background. The classic one is the normal mode's.
HARD_PALETTES: tuple[dict[str, tuple[float, float, float]], ...] = (
    {
        "cytoplasm": (185, 170, 215),
        "nucleus": (70, 55, 135),
        "erythrocyte": (225, 130, 150),
        "background": (240, 230, 238),
    },
    {
        "cytoplasm": (205, 120, 195),
        "nucleus": (62, 28, 105),
        "erythrocyte": (232, 118, 128),
        "background": (214, 224, 246),
    },
    {
        "cytoplasm": (160, 178, 222),
        "nucleus": (48, 62, 138),
        "erythrocyte": (222, 152, 166),
        "background": (236, 241, 246),
    },
)

# A cell cut by the image border is kept only if this much of it lies inside, so that
# no sliver of a few pixels becomes a ground-truth instance.
_MIN_INSIDE_FRACTION = 0.5
_MIN_AREA_PX = 12
_ANGLE_SAMPLES = 128
_PLACEMENT_TRIES = 12

# Optical densities (R, G, B) per unit stain, chosen so that on a white background they
# give roughly: cytoplasm (185, 170, 215) lilac-blue, cytoplasm + nucleus (70, 55, 135)
# dark blue-purple, erythrocyte (225, 130, 150) pink-red.
_CYTOPLASM_OD = np.array([0.139, 0.176, 0.074], dtype=np.float32)
_NUCLEUS_OD = np.array([0.42, 0.49, 0.20], dtype=np.float32)
_ERYTHROCYTE_OD = np.array([0.054, 0.293, 0.229], dtype=np.float32)
_BACKGROUND_RGB = np.array([240.0, 230.0, 238.0], dtype=np.float32)
_BACKGROUND_OD = np.array([0.015, 0.045, 0.02], dtype=np.float32)
_COLLOID_OD = np.array([0.035, 0.05, 0.01], dtype=np.float32)


@dataclass(eq=False)  # arrays make field-wise == ambiguous; compare by identity
class SyntheticCell(CropGeometry):
    """One synthetic instance: its semantic label and its full (unoccluded) mask crop."""

    label: int  # 1 cell, 2 erythrocyte
    x0: int  # column of the crop's top-left corner
    y0: int  # row of the crop's top-left corner
    mask: np.ndarray  # bool, the cell's full (unoccluded) extent, cropped


@dataclass(eq=False)
class SyntheticField(PaintedField):
    """A rendered field and its instances in paint order (later cells lie on top)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    cells: list[SyntheticCell] = field(default_factory=list)

    def full_mask(self, i: int) -> np.ndarray:
        """(H, W) bool full extent of instance ``i``, including its hidden parts."""
        cell = self.cells[i]
        out = np.zeros((self.height, self.width), dtype=bool)
        h, w = cell.mask.shape
        out[cell.y0 : cell.y0 + h, cell.x0 : cell.x0 + w] = cell.mask
        return out


@dataclass
class _Shape:
    """A star-shaped blob rasterised on its (unclipped) crop."""

    x0: int
    y0: int
    cx: float
    cy: float
    alpha: np.ndarray  # float32 coverage in 0..1, anti-aliased over ~1 px
    dist: np.ndarray  # float32 distance of each pixel from the centre
    radius: np.ndarray  # float32 boundary radius in each pixel's direction
    mask: np.ndarray  # bool, alpha >= 0.5


def _radius_table(rng: np.random.Generator, radius: float, min_aspect: float, wobble: float) -> np.ndarray:
    """Boundary radius at ``_ANGLE_SAMPLES + 1`` angles over [-pi, pi] (closed)."""
    aspect = rng.uniform(min_aspect, 1.0)
    # Equal-area ellipse, so ``radius`` keeps its meaning whatever the aspect.
    a = radius / math.sqrt(aspect)
    b = radius * math.sqrt(aspect)
    rot = rng.uniform(0.0, math.pi)
    theta = np.linspace(-math.pi, math.pi, _ANGLE_SAMPLES + 1, dtype=np.float64)
    ct = np.cos(theta - rot)
    st = np.sin(theta - rot)
    r = a * b / np.sqrt((b * ct) ** 2 + (a * st) ** 2)
    # Low harmonics turn the ellipse into an irregular blob that stays star-shaped.
    for k in (2, 3, 4, 5):
        amp = rng.uniform(0.0, wobble / (k - 1))
        r *= 1.0 + amp * np.cos(k * theta + rng.uniform(0.0, 2.0 * math.pi))
    return r.astype(np.float32)


def _polar(
    n: int, x0: int, y0: int, cx: float, cy: float, table: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance, boundary radius and coverage on the n x n grid whose corner is (x0, y0)."""
    # Pixel centres sit at integer coordinates.
    dx = (np.arange(n, dtype=np.float32) + np.float32(x0 - cx))[None, :]
    dy = (np.arange(n, dtype=np.float32) + np.float32(y0 - cy))[:, None]
    dist = np.sqrt(dx * dx + dy * dy)
    pos = (np.arctan2(dy, dx) + np.float32(math.pi)) * np.float32(_ANGLE_SAMPLES / (2 * math.pi))
    i0 = np.clip(pos.astype(np.int32), 0, _ANGLE_SAMPLES - 1)
    frac = pos - i0
    radius = table[i0] * (1.0 - frac) + table[i0 + 1] * frac
    alpha = np.clip(radius - dist + np.float32(0.5), 0.0, 1.0)
    return dist, radius, alpha


def _rasterise(cx: float, cy: float, table: np.ndarray) -> _Shape:
    """Rasterise the blob with boundary ``table`` centred at ``(cx, cy)``."""
    ext = math.ceil(float(table.max())) + 2
    x0, y0 = math.floor(cx) - ext, math.floor(cy) - ext
    n = 2 * ext + 1
    dist, radius, alpha = _polar(n, x0, y0, cx, cy, table)
    return _Shape(x0=x0, y0=y0, cx=cx, cy=cy, alpha=alpha, dist=dist, radius=radius, mask=alpha >= 0.5)


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells_across: int) -> np.ndarray:
    """Low-frequency random field in roughly [-1, 1], shape (H, W) float32."""
    gw = max(2, cells_across)
    gh = max(2, round(cells_across * height / max(width, 1)))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    out = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(out / 1.5, -1.0, 1.0)


@dataclass
class _Canvas:
    """Occupancy bookkeeping and the accumulated optical density."""

    height: int
    width: int
    visible_map: np.ndarray  # (H, W) int32, index + 1 of the visible instance
    od: np.ndarray  # (H, W, 3) float32
    visible: list[int] = field(default_factory=list)
    full: list[int] = field(default_factory=list)
    cells: list[SyntheticCell] = field(default_factory=list)
    centres: list[tuple[float, float, float]] = field(default_factory=list)  # cells only
    min_visible: float = MIN_VISIBLE_FRACTION

    def try_place(self, shape: _Shape) -> tuple[slice, slice, np.ndarray] | None:
        """Apply the placement rules; on success book the pixels the new instance hides.

        Returns the image window and the mask clipped to it, or None when the instance
        would lie mostly outside the image or leave some instance (itself included) less
        than ``MIN_VISIBLE_FRACTION`` visible. ``commit`` must follow a success.
        """
        n = shape.mask.shape[0]
        ys0, xs0 = max(shape.y0, 0), max(shape.x0, 0)
        ys1, xs1 = min(shape.y0 + n, self.height), min(shape.x0 + n, self.width)
        if ys1 <= ys0 or xs1 <= xs0:
            return None
        sub = shape.mask[ys0 - shape.y0 : ys1 - shape.y0, xs0 - shape.x0 : xs1 - shape.x0]
        area = int(np.count_nonzero(sub))
        total = int(np.count_nonzero(shape.mask))
        if area < _MIN_AREA_PX or area < _MIN_INSIDE_FRACTION * total:
            return None
        rows, cols = slice(ys0, ys1), slice(xs0, xs1)
        under = self.visible_map[rows, cols][sub]
        under = under[under > 0]
        if under.size:
            ids, counts = np.unique(under, return_counts=True)
            remaining = np.asarray(self.visible)[ids - 1] - counts
            if np.any(remaining < self.min_visible * np.asarray(self.full)[ids - 1]):
                return None
            for k, c in zip(ids.tolist(), counts.tolist(), strict=True):
                self.visible[k - 1] -= c
        return rows, cols, sub

    def commit(self, label: int, rows: slice, cols: slice, sub: np.ndarray) -> None:
        """Record an accepted instance (tight crop) on top of the others."""
        index = len(self.cells) + 1
        self.visible_map[rows, cols][sub] = index
        area = int(np.count_nonzero(sub))
        self.visible.append(area)
        self.full.append(area)
        r_any = np.flatnonzero(sub.any(axis=1))
        c_any = np.flatnonzero(sub.any(axis=0))
        tight = sub[r_any[0] : r_any[-1] + 1, c_any[0] : c_any[-1] + 1].copy()
        self.cells.append(
            SyntheticCell(
                label=label,
                x0=int(cols.start + c_any[0]),
                y0=int(rows.start + r_any[0]),
                mask=tight,
            )
        )

    def paint(self, shape: _Shape, od: np.ndarray) -> None:
        """Add an (n, n, 3) optical-density crop, clipped at the image border."""
        n = shape.mask.shape[0]
        ys0, xs0 = max(shape.y0, 0), max(shape.x0, 0)
        ys1, xs1 = min(shape.y0 + n, self.height), min(shape.x0 + n, self.width)
        self.od[ys0:ys1, xs0:xs1] += od[ys0 - shape.y0 : ys1 - shape.y0, xs0 - shape.x0 : xs1 - shape.x0]


@dataclass
class _Stain:
    """Per-field stain colours (the hue and strength vary from slide to slide)."""

    cytoplasm: np.ndarray
    nucleus: np.ndarray
    erythrocyte: np.ndarray


@dataclass
class _Palette:
    """Optical densities of a field's objects and its background colour (hard mode)."""

    cytoplasm: np.ndarray
    nucleus: np.ndarray
    erythrocyte: np.ndarray
    background: np.ndarray  # RGB


def _od(rgb: tuple[float, float, float]) -> np.ndarray:
    """Optical density of a colour seen on white."""
    return -np.log10(np.clip(np.asarray(rgb, dtype=np.float32), 1.0, 255.0) / 255.0).astype(np.float32)


def _hard_palette(rng: np.random.Generator) -> _Palette:
    """A random mixture of the hard palettes (in optical density), with a hue jitter."""
    weights = rng.dirichlet(np.full(len(HARD_PALETTES), 0.6))
    mix: dict[str, np.ndarray] = {}
    for key in ("cytoplasm", "nucleus", "erythrocyte"):
        mix[key] = sum(w * _od(p[key]) for w, p in zip(weights, HARD_PALETTES, strict=True)).astype(np.float32)
    # The nucleus lies on cytoplasm: its own share is the difference.
    mix["nucleus"] = np.maximum(mix["nucleus"] - mix["cytoplasm"], 0.02).astype(np.float32)
    background = sum(w * np.asarray(p["background"], np.float32) for w, p in zip(weights, HARD_PALETTES, strict=True))
    return _Palette(
        cytoplasm=mix["cytoplasm"] * rng.uniform(0.85, 1.15, size=3).astype(np.float32),
        nucleus=mix["nucleus"] * rng.uniform(0.85, 1.15, size=3).astype(np.float32),
        erythrocyte=mix["erythrocyte"] * rng.uniform(0.85, 1.15, size=3).astype(np.float32),
        background=np.asarray(background, dtype=np.float32),
    )


def _field_stain(rng: np.random.Generator, palette: _Palette | None = None) -> _Stain:
    def jitter(base: np.ndarray, spread: float) -> np.ndarray:
        scale = rng.uniform(0.8, 1.25) * rng.uniform(1.0 - spread, 1.0 + spread, size=3)
        return (base * scale).astype(np.float32)

    return _Stain(
        cytoplasm=jitter(_CYTOPLASM_OD if palette is None else palette.cytoplasm, 0.15),
        nucleus=jitter(_NUCLEUS_OD if palette is None else palette.nucleus, 0.12),
        erythrocyte=jitter(_ERYTHROCYTE_OD if palette is None else palette.erythrocyte, 0.12),
    )


def _cell_od(rng: np.random.Generator, cell: _Shape, radius: float, stain: _Stain) -> np.ndarray:
    """Optical density of a follicular cell: pale cytoplasm, rim, dark textured nucleus."""
    n = cell.mask.shape[0]
    cyto_strength = rng.uniform(0.65, 1.4)
    texture = 1.0 + 0.12 * rng.standard_normal((n, n)).astype(np.float32)
    # A slightly denser membrane makes the top cell's outline visible over a neighbour.
    rim = np.exp(-(((cell.radius - cell.dist) / 1.3) ** 2))
    density = cell.alpha * (cyto_strength * texture + 0.35 * rim)
    od = density[..., None] * stain.cytoplasm

    # Eccentric nucleus kept inside the cell (its coverage is multiplied by the cell's).
    n_radius = radius * rng.uniform(0.36, 0.55)
    offset = radius * rng.uniform(0.0, 0.28)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    table = _radius_table(rng, n_radius, min_aspect=0.75, wobble=0.05)
    ncx = cell.cx + offset * math.cos(angle)
    ncy = cell.cy + offset * math.sin(angle)
    _, _, n_cover = _polar(n, cell.x0, cell.y0, ncx, ncy, table)
    n_alpha = n_cover * cell.alpha
    # Coarse chromatin: per-pixel grain, softened later by the field blur.
    chromatin = 1.0 + 0.18 * rng.standard_normal((n, n)).astype(np.float32)
    n_strength = rng.uniform(0.75, 1.3)
    od += (n_alpha * n_strength * chromatin)[..., None] * stain.nucleus
    return od


def _erythrocyte_od(rng: np.random.Generator, rbc: _Shape, stain: _Stain, faint: bool) -> np.ndarray:
    """Optical density of an erythrocyte: a disc, thinner (paler) in the centre."""
    rel = np.clip(rbc.dist / np.maximum(rbc.radius, 1e-3), 0.0, 1.0)
    pallor = rng.uniform(0.35, 0.6)
    profile = pallor + (1.0 - pallor) * rel**2
    strength = rng.uniform(0.25, 0.5) if faint else rng.uniform(0.8, 1.25)
    hue = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    return (rbc.alpha * profile * strength)[..., None] * (stain.erythrocyte * hue)


def _default_count(rng: np.random.Generator, bounds: tuple[int, int], area_ratio: float) -> int:
    return max(1, round(int(rng.integers(bounds[0], bounds[1] + 1)) * area_ratio))


def _cluster_sizes(
    rng: np.random.Generator, n_clustered: int, bounds: tuple[int, int] = CLUSTER_SIZE_RANGE
) -> list[int]:
    sizes: list[int] = []
    left = n_clustered
    while left > 0:
        size = int(rng.integers(bounds[0], bounds[1] + 1))
        size = min(size, left)
        sizes.append(size)
        left -= size
    return sizes


def generate_field(
    *,
    seed: int,
    width: int = 1024,
    height: int = 768,
    n_cells: int | None = None,
    n_erythrocytes: int | None = None,
    cluster_fraction: float | None = None,
    faint_erythrocyte_fraction: float | None = None,
    difficulty: str = "normal",
) -> SyntheticField:
    """Render one synthetic Diff-Quik field.

    ``n_cells`` / ``n_erythrocytes`` default to random counts (80-270 and 50-250 per
    1024x768 field) scaled by the image area. ``cluster_fraction`` of the cells are
    placed in overlapping groups of 3-14, the rest alone; ``faint_erythrocyte_fraction``
    of the erythrocytes are weakly stained. The counts are met unless the field is too
    crowded to place an instance without breaking the visibility rule, in which case
    that instance is dropped. The same arguments always give the same field.

    ``difficulty="hard"`` (see the module docstring) changes the defaults (28-48 cells and
    35-60 erythrocytes per 256x256, 85% of the cells in clusters of 6-18, half the
    erythrocytes faint) and the rendering; explicit counts and fractions still apply.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}")
    hard = difficulty == "hard"
    if cluster_fraction is None:
        cluster_fraction = HARD_CLUSTER_FRACTION if hard else 0.5
    if faint_erythrocyte_fraction is None:
        faint_erythrocyte_fraction = HARD_FAINT_FRACTION if hard else 0.3
    if width < 8 or height < 8:
        raise ValueError("width and height must be at least 8 pixels")
    if not 0.0 <= cluster_fraction <= 1.0:
        raise ValueError("cluster_fraction must lie in [0, 1]")
    if not 0.0 <= faint_erythrocyte_fraction <= 1.0:
        raise ValueError("faint_erythrocyte_fraction must lie in [0, 1]")
    if (n_cells is not None and n_cells < 0) or (n_erythrocytes is not None and n_erythrocytes < 0):
        raise ValueError("counts must not be negative")

    rng = np.random.default_rng(seed)
    if hard:
        area_ratio = (width * height) / float(HARD_AREA)
        cell_range, rbc_range = HARD_CELL_COUNT_RANGE, HARD_ERYTHROCYTE_COUNT_RANGE
    else:
        area_ratio = (width * height) / float(REFERENCE_WIDTH * REFERENCE_HEIGHT)
        cell_range, rbc_range = CELL_COUNT_RANGE, ERYTHROCYTE_COUNT_RANGE
    if n_cells is None:
        n_cells = _default_count(rng, cell_range, area_ratio)
    if n_erythrocytes is None:
        n_erythrocytes = _default_count(rng, rbc_range, area_ratio)

    palette = _hard_palette(rng) if hard else None
    stain = _field_stain(rng, palette)
    canvas = _Canvas(
        height=height,
        width=width,
        visible_map=np.zeros((height, width), dtype=np.int32),
        od=np.zeros((height, width, 3), dtype=np.float32),
        min_visible=HARD_MIN_VISIBLE if hard else MIN_VISIBLE_FRACTION,
    )
    # Centre distance of a cluster member from its anchor, as a fraction of the radii sum.
    cluster_spacing = (0.42, 0.8) if hard else (0.55, 0.95)

    # Jobs are shuffled so that erythrocytes lie sometimes under, sometimes over cells.
    n_clustered = round(cluster_fraction * n_cells)
    sizes = _cluster_sizes(rng, n_clustered, HARD_CLUSTER_SIZE_RANGE if hard else CLUSTER_SIZE_RANGE)
    jobs: list[tuple[str, int]] = [("cluster", s) for s in sizes]
    jobs += [("cell", 1)] * (n_cells - n_clustered)
    jobs += [("rbc", 1)] * n_erythrocytes
    order = rng.permutation(len(jobs))

    def uniform_centre() -> tuple[float, float]:
        return float(rng.uniform(0.0, width)), float(rng.uniform(0.0, height))

    def find_spot(
        table: np.ndarray, radius: float, anchors: Sequence[tuple[float, float, float]], spacing: tuple[float, float]
    ) -> tuple[_Shape, tuple[slice, slice, np.ndarray]] | None:
        """A placement of the shape: first next to one of ``anchors`` (at ``spacing`` times the
        two radii), then anywhere; None when every try breaks the visibility rule."""
        for attempt in range(_PLACEMENT_TRIES * 2):
            if anchors and attempt < _PLACEMENT_TRIES:
                ax, ay, ar = anchors[int(rng.integers(len(anchors)))]
                d = (ar + radius) * rng.uniform(*spacing)
                ang = rng.uniform(0.0, 2.0 * math.pi)
                cx, cy = ax + d * math.cos(ang), ay + d * math.sin(ang)
            else:
                cx, cy = uniform_centre()
            shape = _rasterise(cx, cy, table)
            placed = canvas.try_place(shape)
            if placed is not None:
                return shape, placed
        return None

    def place_cell(anchors: list[tuple[float, float, float]] | None) -> None:
        radius = float(rng.uniform(*CELL_RADIUS_RANGE))
        table = _radius_table(rng, radius, min_aspect=0.6, wobble=0.1)
        # From strong overlap to touching.
        spot = find_spot(table, radius, anchors or [], cluster_spacing)
        if spot is None:
            return
        shape, placed = spot
        canvas.commit(CELL, *placed)
        canvas.paint(shape, _cell_od(rng, shape, radius, stain))
        centre = (shape.cx, shape.cy, radius)
        canvas.centres.append(centre)
        if anchors is not None:
            anchors.append(centre)

    def place_erythrocyte() -> None:
        radius = float(rng.uniform(*ERYTHROCYTE_RADIUS_RANGE))
        table = _radius_table(rng, radius, min_aspect=0.82, wobble=0.03)
        faint = bool(rng.random() < faint_erythrocyte_fraction)
        # About a third lean against a cell: the hard case for models.
        near_cell = bool(canvas.centres) and rng.random() < 0.35
        spot = find_spot(table, radius, canvas.centres if near_cell else [], (0.6, 1.05))
        if spot is None:
            return
        shape, placed = spot
        canvas.commit(ERYTHROCYTE, *placed)
        canvas.paint(shape, _erythrocyte_od(rng, shape, stain, faint))

    for j in order.tolist():
        kind, size = jobs[j]
        if kind == "rbc":
            place_erythrocyte()
        elif kind == "cell":
            place_cell(None)
        else:
            # The first member lands anywhere; the others grow from placed members.
            members: list[tuple[float, float, float]] = []
            for _ in range(size):
                place_cell(members)

    image = _render(rng, canvas.od, height, width, palette)
    if hard:
        image = _hard_optics(rng, image)
    return SyntheticField(image=image, cells=canvas.cells)


def _render(
    rng: np.random.Generator, od: np.ndarray, height: int, width: int, palette: _Palette | None = None
) -> np.ndarray:
    """Background, illumination, stain variation, blur and noise -> uint8 RGB."""
    across = max(2, round(6 * width / REFERENCE_WIDTH))
    illumination = 1.0 + rng.uniform(0.03, 0.07) * _smooth_field(rng, height, width, across)
    stain_strength = 1.0 + rng.uniform(0.08, 0.2) * _smooth_field(rng, height, width, across)
    background_tint = 0.5 + 0.5 * _smooth_field(rng, height, width, across + 2)
    # Watery colloid: soft lilac patches, a common thyroid aspirate background.
    colloid = np.clip(_smooth_field(rng, height, width, across + 3) * 2.0 - 0.6, 0.0, 1.0)

    background = _BACKGROUND_RGB if palette is None else palette.background
    base = background * rng.uniform(0.97, 1.02, size=3).astype(np.float32)
    if palette is not None:
        illumination = illumination * _hard_illumination(rng, height, width)
    total = od * stain_strength[..., None]
    total += background_tint[..., None] * _BACKGROUND_OD
    total += (colloid * rng.uniform(0.3, 1.0))[..., None] * _COLLOID_OD
    rgb = base * illumination[..., None] * np.power(np.float32(10.0), -total)

    sigma = float(rng.uniform(0.6, 1.0))
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
    noise_sigma = float(rng.uniform(1.5, 3.5))
    rgb += noise_sigma * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _hard_illumination(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A strong linear gradient times a radial fall-off around an off-centre point, (H, W)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    proj = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
    proj = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    linear = 1.0 - rng.uniform(0.2, 0.45) * proj
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / float(width**2 + height**2)
    radial = 1.0 - rng.uniform(0.25, 0.6) * np.clip(r2 / 0.5, 0.0, 1.0)
    return (linear * radial).astype(np.float32)


def _hard_optics(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Defocus that varies across the field (sigma 0.3-2.6), then JPEG at quality 40-65."""
    height, width = image.shape[:2]
    lo, hi = HARD_BLUR_RANGE
    sigmas = np.linspace(lo, hi, 5, dtype=np.float32)
    level = (_smooth_field(rng, height, width, 3) + 1.0) * 0.5 * (len(sigmas) - 1)  # 0..4
    stack = [
        np.asarray(cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigmaX=float(s)), dtype=np.float32)
        for s in sigmas
    ]
    low = np.clip(np.floor(level).astype(np.int32), 0, len(sigmas) - 2)
    frac = (level - low)[..., None]
    out = np.zeros(image.shape, dtype=np.float32)
    for k in range(len(sigmas) - 1):
        here = (low == k)[..., None]
        out = out + np.where(here, stack[k] * (1.0 - frac) + stack[k + 1] * frac, 0.0)
    blurred = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    quality = int(rng.integers(HARD_JPEG_QUALITY[0], HARD_JPEG_QUALITY[1] + 1))
    ok, data = cv2.imencode(".jpg", blurred[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("JPEG decoding failed")
    return np.ascontiguousarray(np.asarray(decoded)[:, :, ::-1])


def generate_dataset(
    *, seed: int, count: int, width: int = 1024, height: int = 768, difficulty: str = "normal"
) -> list[SyntheticField]:
    """``count`` independent fields; field ``i`` depends only on ``seed`` and ``i``."""
    if count < 0:
        raise ValueError("count must not be negative")
    seeds = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint32)
    return [generate_field(seed=int(s), width=width, height=height, difficulty=difficulty) for s in seeds.tolist()]
