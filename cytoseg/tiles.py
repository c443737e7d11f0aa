"""Geometry of a DeepZoom tile pyramid (Django-free), shared by everything that works by tiles.

Level ``max_level`` is the full resolution; each level below halves both sides (rounding up)
down to level 0, one pixel. Tile ``(col, row)`` of a level covers that level's pixels
``[col * tile_size, (col + 1) * tile_size)`` (no overlap; edge tiles are cut to the image), so in
full-resolution pixels it covers ``tile_size * 2 ** (max_level - level)`` of them per side. This is
the layout libvips' ``dzsave`` and OpenSlide's ``DeepZoomGenerator`` write, and the one the
viewer's tile grid uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TileGeometry:
    width: int
    height: int
    tile_size: int = 256

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError("width and height must be at least 1")
        if self.tile_size < 16:
            raise ValueError("tile_size must be at least 16")

    @property
    def max_level(self) -> int:
        """The full-resolution level: ceil(log2(longest side))."""
        return math.ceil(math.log2(max(self.width, self.height))) if max(self.width, self.height) > 1 else 0

    @property
    def levels(self) -> int:
        return self.max_level + 1

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= self.max_level:
            raise ValueError(f"level must lie in 0..{self.max_level}")

    def scale(self, level: int) -> int:
        """Full-resolution pixels per pixel of ``level``."""
        self._check_level(level)
        return 1 << (self.max_level - level)

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of ``level`` in its own pixels."""
        factor = self.scale(level)
        return (-(-self.width // factor), -(-self.height // factor))

    def tile_counts(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles at ``level``."""
        width, height = self.level_size(level)
        return (-(-width // self.tile_size), -(-height // self.tile_size))

    def has_tile(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level <= self.max_level:
            return False
        cols, rows = self.tile_counts(level)
        return 0 <= col < cols and 0 <= row < rows

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the tile in ``level``'s pixels, exclusive ends, cut to the image."""
        if not self.has_tile(level, col, row):
            raise ValueError(f"no tile {col},{row} at level {level}")
        width, height = self.level_size(level)
        x0, y0 = col * self.tile_size, row * self.tile_size
        return (x0, y0, min(x0 + self.tile_size, width), min(y0 + self.tile_size, height))

    def tile_box_full(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the tile in full-resolution pixels, cut to the image."""
        x0, y0, x1, y1 = self.tile_box(level, col, row)
        factor = self.scale(level)
        return (x0 * factor, y0 * factor, min(x1 * factor, self.width), min(y1 * factor, self.height))

    def tile_total(self) -> int:
        """Number of tiles over all levels."""
        return sum(c * r for c, r in (self.tile_counts(level) for level in range(self.levels)))

    def single_tile_level(self) -> int:
        """The coarsest level still holding the whole image in one tile of full size; the
        viewer's lowest zoom (the levels below it are smaller than one tile)."""
        level = self.max_level
        while level > 0 and max(self.level_size(level)) > self.tile_size:
            level -= 1
        return level
