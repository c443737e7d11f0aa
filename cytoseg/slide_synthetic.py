"""Synthetic whole slides with known instance masks (Django-free), for tests and benchmarks.

A slide is a mosaic of synthetic fields (``cytoseg.synthetic.generate_field``): a few distinct
fields are rendered and repeated over the grid, so a 40,000 x 30,000 slide with about 250,000
cells costs a few fields' rendering, not 1,500. Every instance of the mosaic is known (the
field's instances shifted by the field's place). ``slide_write`` writes it as a pyramidal TIFF
(libvips, streamed: the mosaic is never whole in memory), an SVS-like Aperio TIFF (which
OpenSlide reads as SVS), an OME-TIFF (tifffile, small slides only) or a plain JPEG, PNG or
TIFF, with the microns per pixel and magnification in the metadata where the format has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cytoseg.synthetic import SyntheticField, generate_field

SLIDE_KINDS = ("pyramidal-tiff", "svs", "ome-tiff", "jpeg", "png", "tiff")


@dataclass(frozen=True)
class SlideInstance:
    label: int  # 1 cell, 2 erythrocyte
    x0: int  # the mask crop's top-left corner in slide pixels
    y0: int
    mask: np.ndarray  # bool, the instance's full extent (cropped to the slide)


@dataclass(eq=False)
class SyntheticSlide:
    width: int
    height: int
    field_width: int
    field_height: int
    fields: list[SyntheticField]
    # (index into fields, x0, y0) per grid cell, row by row
    placements: list[tuple[int, int, int]]

    def cell_count(self, label: int | None = None) -> int:
        """Instances whose crop starts inside the slide: all, or those of one ``label``."""
        return sum(
            sum(
                1
                for c in self.fields[i].cells
                if x0 + c.x0 < self.width and y0 + c.y0 < self.height and label in (None, c.label)
            )
            for i, x0, y0 in self.placements
        )

    def instances(self) -> Iterator[SlideInstance]:
        """Every instance in slide pixels, field by field (paint order within a field)."""
        for index, fx, fy in self.placements:
            for cell in self.fields[index].cells:
                x0, y0 = fx + cell.x0, fy + cell.y0
                if x0 >= self.width or y0 >= self.height:
                    continue
                h, w = cell.mask.shape
                mask = cell.mask[: max(0, min(h, self.height - y0)), : max(0, min(w, self.width - x0))]
                yield SlideInstance(label=cell.label, x0=x0, y0=y0, mask=mask)

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1-y0, x1-x0, 3) uint8 pixels of the slide (for checking tiles)."""
        out = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        for index, fx, fy in self.placements:
            ax0, ay0 = max(x0, fx), max(y0, fy)
            ax1, ay1 = min(x1, fx + self.field_width, self.width), min(y1, fy + self.field_height, self.height)
            if ax0 < ax1 and ay0 < ay1:
                out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = self.fields[index].image[
                    ay0 - fy : ay1 - fy, ax0 - fx : ax1 - fx
                ]
        return out

    def vips_image(self) -> Any:
        """The mosaic as a lazy libvips image (each distinct field once in memory)."""
        import pyvips

        distinct = [pyvips.Image.new_from_array(f.image, interpretation="srgb") for f in self.fields]
        tiles = [distinct[i] for i, _, _ in self.placements]
        across = -(-self.width // self.field_width)
        joined = pyvips.Image.arrayjoin(tiles, across=across)
        return joined.crop(0, 0, self.width, self.height)


def slide_synthetic(
    *,
    width: int,
    height: int,
    field_width: int = 1024,
    field_height: int = 768,
    distinct: int = 8,
    seed: int = 0,
) -> SyntheticSlide:
    """A ``width`` x ``height`` mosaic of ``distinct`` synthetic fields (the same arguments
    always give the same slide)."""
    if width < 16 or height < 16:
        raise ValueError("width and height must be at least 16 pixels")
    field_width, field_height = min(field_width, width), min(field_height, height)
    across, down = -(-width // field_width), -(-height // field_height)
    count = max(1, min(distinct, across * down))
    fields = [generate_field(seed=seed * 1000 + i, width=field_width, height=field_height) for i in range(count)]
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, count, size=across * down)
    placements = [
        (int(choice[r * across + c]), c * field_width, r * field_height) for r in range(down) for c in range(across)
    ]
    return SyntheticSlide(width, height, field_width, field_height, fields, placements)


def _aperio_description(width: int, height: int, mpp: float, magnification: float) -> str:
    return (
        f"Aperio Image Library v12.0.15\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=85"
        f"|AppMag = {magnification:g}|MPP = {mpp:g}"
    )


def _ome_xml(width: int, height: int, mpp: float, magnification: float) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Instrument ID="Instrument:0"><Objective ID="Objective:0" '
        f'NominalMagnification="{magnification:g}"/></Instrument>'
        '<Image ID="Image:0" Name="synthetic"><ObjectiveSettings ID="Objective:0"/>'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="{width}" SizeY="{height}" '
        f'SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="{mpp:g}" PhysicalSizeXUnit="µm" '
        f'PhysicalSizeY="{mpp:g}" PhysicalSizeYUnit="µm" Interleaved="true">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="3"/><TiffData/></Pixels></Image></OME>'
    )


def slide_write(
    slide: SyntheticSlide, path: Path, *, kind: str, mpp: float = 0.25, magnification: float = 40.0, quality: int = 90
) -> Path:
    """Write ``slide`` as ``kind`` (one of ``SLIDE_KINDS``) to ``path``."""
    if kind not in SLIDE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SLIDE_KINDS)}")
    image = slide.vips_image()
    px_per_mm = 1000.0 / mpp
    if kind == "jpeg":
        image.jpegsave(str(path), Q=quality)
    elif kind == "png":
        image.pngsave(str(path), compression=1)
    elif kind == "tiff":  # plain, stripped, with the resolution in pixels per centimetre
        image.tiffsave(str(path), compression="lzw", xres=px_per_mm, yres=px_per_mm, resunit="cm", bigtiff=True)
    elif kind == "pyramidal-tiff":
        image.tiffsave(
            str(path), tile=True, pyramid=True, tile_width=256, tile_height=256, compression="jpeg", Q=quality,
            xres=px_per_mm, yres=px_per_mm, resunit="cm", bigtiff=True,
        )  # fmt: skip
    elif kind == "svs":
        image = image.copy()
        image.set_type(
            _gtype_string(), "image-description", _aperio_description(slide.width, slide.height, mpp, magnification)
        )
        image.tiffsave(
            str(path), tile=True, pyramid=True, tile_width=256, tile_height=256, compression="jpeg", Q=quality,
            bigtiff=slide.width * slide.height > 200_000_000,
        )  # fmt: skip
    else:
        _write_ome(slide, path, mpp=mpp, magnification=magnification)
    return path


def _gtype_string() -> int:
    import pyvips

    return int(pyvips.GValue.gstr_type)


def _write_ome(slide: SyntheticSlide, path: Path, *, mpp: float, magnification: float) -> None:
    """OME-TIFF with its reduced resolutions as SubIFDs (the OME pyramid layout). tifffile
    writes from memory, so this is for test-sized slides."""
    import tifffile

    if slide.width * slide.height > 64_000_000:
        raise ValueError("OME-TIFF is written from memory: at most 64 megapixels")
    full = slide.region(0, 0, slide.width, slide.height)
    levels = [full]
    while max(levels[-1].shape[:2]) > 512:
        last = levels[-1]
        h, w = last.shape[0] // 2 * 2, last.shape[1] // 2 * 2
        half = last[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        levels.append(half)
    options: dict[str, Any] = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            full,
            subifds=len(levels) - 1,
            description=_ome_xml(slide.width, slide.height, mpp, magnification).encode(),  # UTF-8 (µm)
            metadata=None,
            resolution=(10_000.0 / mpp, 10_000.0 / mpp),
            resolutionunit="CENTIMETER",
            **options,
        )
        for level in levels[1:]:
            tif.write(level, subfiletype=1, metadata=None, **options)
