"""Tile geometry, the synthetic slide builder, slide probing and the tile pyramid at every level."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from cytoseg.imaging import ImageRejected
from cytoseg.slide_synthetic import SLIDE_KINDS, SyntheticSlide, slide_synthetic, slide_write
from cytoseg.slides import pyramid_build, slide_probe, sniff_format
from cytoseg.tiles import TileGeometry


def test_geometry_levels_and_edges() -> None:
    geometry = TileGeometry(1500, 1000, 256)
    assert geometry.max_level == 11  # 2**11 = 2048 >= 1500
    assert geometry.level_size(11) == (1500, 1000)
    assert geometry.level_size(10) == (750, 500)
    assert geometry.level_size(0) == (1, 1)
    assert geometry.tile_counts(11) == (6, 4)
    assert geometry.tile_box(11, 5, 3) == (1280, 768, 1500, 1000)
    assert geometry.tile_box_full(10, 2, 1) == (1024, 512, 1500, 1000)
    assert geometry.single_tile_level() == 8  # 188 x 125
    assert not geometry.has_tile(11, 6, 0) and not geometry.has_tile(12, 0, 0) and not geometry.has_tile(-1, 0, 0)
    with pytest.raises(ValueError):
        geometry.tile_box(11, 6, 0)


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return slide_synthetic(width=1300, height=900, field_width=512, field_height=384, distinct=3, seed=4)


def test_synthetic_slide_is_a_mosaic_with_known_instances(slide: SyntheticSlide) -> None:
    assert len(slide.placements) == 3 * 3
    instances = list(slide.instances())
    assert len(instances) == slide.cell_count() > 100
    assert slide.cell_count(label=1) + slide.cell_count(label=2) == slide.cell_count()
    assert slide.cell_count(label=1) == sum(1 for inst in instances if inst.label == 1)
    for inst in instances[:50]:
        assert 0 <= inst.x0 < slide.width and 0 <= inst.y0 < slide.height
        assert inst.mask.any() or inst.mask.size == 0
    # a region spanning four fields equals the fields' pixels where they are placed
    index, fx, fy = slide.placements[4]
    region = slide.region(fx - 10, fy - 10, fx + 20, fy + 20)
    assert np.array_equal(region[10:, 10:], slide.fields[index].image[:20, :20])
    assert np.array_equal(np.asarray(slide.vips_image().numpy()), slide.region(0, 0, slide.width, slide.height))


def _level_image(root: Path, geometry: TileGeometry, level: int) -> np.ndarray:
    width, height = geometry.level_size(level)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    cols, rows = geometry.tile_counts(level)
    for row in range(rows):
        for col in range(cols):
            x0, y0, x1, y1 = geometry.tile_box(level, col, row)
            with PILImage.open(root / str(level) / f"{col}_{row}.jpeg") as tile:
                assert tile.size == (x1 - x0, y1 - y0), (level, col, row)
                out[y0:y1, x0:x1] = np.asarray(tile.convert("RGB"))
    return out


def _downscaled(full: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter reduction by ``factor`` (edge blocks averaged over what they hold)."""
    h, w = full.shape[:2]
    out_h, out_w = -(-h // factor), -(-w // factor)
    padded = np.zeros((out_h * factor, out_w * factor, 3), dtype=np.float64)
    weight = np.zeros((out_h * factor, out_w * factor, 1), dtype=np.float64)
    padded[:h, :w] = full
    weight[:h, :w] = 1
    sums = padded.reshape(out_h, factor, out_w, factor, 3).sum(axis=(1, 3))
    counts = weight.reshape(out_h, factor, out_w, factor, 1).sum(axis=(1, 3))
    return sums / np.maximum(counts, 1)


@pytest.mark.parametrize("kind", SLIDE_KINDS)
def test_each_format_probes_and_tiles_correctly_at_every_level(
    kind: str, slide: SyntheticSlide, tmp_path: Path
) -> None:
    path = slide_write(slide, tmp_path / f"slide.{kind}", kind=kind, mpp=0.5, magnification=20)
    info = slide_probe(path)
    assert (info.width, info.height) == (slide.width, slide.height)
    expected_format = {"svs": "SVS", "ome-tiff": "OME-TIFF", "jpeg": "JPEG", "png": "PNG"}.get(kind, "TIFF")
    assert info.format == expected_format
    assert info.reader == ("openslide" if kind == "svs" else "vips")
    if kind in ("pyramidal-tiff", "tiff", "svs", "ome-tiff"):
        assert info.mpp_x == pytest.approx(0.5) and info.mpp_y == pytest.approx(0.5)
    if kind in ("svs", "ome-tiff"):
        assert info.objective_power == pytest.approx(20)
    assert info.pyramidal == (kind in ("pyramidal-tiff", "svs", "ome-tiff"))

    info, geometry, root = pyramid_build(path, tmp_path / "out")
    assert geometry.levels == 12
    full = slide.region(0, 0, slide.width, slide.height).astype(np.float64)
    for level in range(geometry.levels):
        got = _level_image(root, geometry, level).astype(np.float64)
        want = _downscaled(full, geometry.scale(level))
        assert got.shape == want.shape
        error = np.abs(got - want).mean()
        # JPEG tiles on a textured image (all detail once reduced); libvips halves level by
        # level, OpenSlide resamples the SVS's own JPEG-compressed lower levels: neither is
        # exactly a box filter. Full resolution is the tightest.
        limit = 4.0 if level == geometry.max_level else (13.0 if kind == "svs" else 7.0)
        assert error < limit, (kind, level, error)


def test_probe_rejects_what_is_not_an_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not an image at all" * 100)
    with pytest.raises(ImageRejected):
        slide_probe(junk)
    with pytest.raises(ImageRejected):
        slide_probe(b"\xff\xd8\xff\xe0 truncated jpeg")
    assert sniff_format(b"GIF89a") is None


def test_probe_of_bytes_reads_only_the_header() -> None:
    picture = PILImage.new("RGB", (5000, 40), (200, 100, 50))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    info = slide_probe(buffer.getvalue())
    assert (info.width, info.height, info.format, info.pyramidal) == (5000, 40, "PNG", False)
