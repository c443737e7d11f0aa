"""Large images and whole slides (Django-free): what a file is, and its tile pyramid.

``slide_probe`` reads only a file's header: size, format, the microns per pixel and the
objective's magnification where the metadata says (OpenSlide properties, OME-XML, TIFF
resolution tags). ``pyramid_build`` writes the DeepZoom tile pyramid of ``cytoseg.tiles``
(JPEG tiles, ``{level}/{col}_{row}.jpeg``) with bounded memory: libvips streams plain and
pyramidal JPEG/PNG/TIFF (OME-TIFF included) through ``dzsave``; the scanner formats only
OpenSlide reads (SVS, NDPI, MRXS, SCN, ...) go through OpenSlide's DeepZoom generator, one tile
at a time.

pyvips and openslide are imported inside the functions: a process that never meets a large
image never loads libvips or OpenSlide.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cytoseg.imaging import ImageRejected
from cytoseg.tiles import TileGeometry

TILE_SUFFIX = "jpeg"
# OpenSlide's vendor names -> the format recorded on the image (generic TIFF goes to libvips).
_VENDOR_FORMATS = {
    "aperio": "SVS",
    "hamamatsu": "NDPI",
    "mirax": "MRXS",
    "leica": "SCN",
    "ventana": "BIF",
    "philips": "PHILIPS-TIFF",
    "sakura": "SVSLIDE",
    "trestle": "TRESTLE-TIFF",
    "zeiss": "CZI",
    "dicom": "DICOM",
}
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)


@dataclass(frozen=True)
class SlideInfo:
    width: int
    height: int
    format: str  # JPEG, PNG, TIFF, OME-TIFF or a scanner format (SVS, NDPI, ...)
    reader: str  # "vips" or "openslide"
    pyramidal: bool  # the file itself holds several resolutions (or pages)
    mpp_x: float | None = None  # microns per pixel, when the metadata says
    mpp_y: float | None = None
    objective_power: float | None = None  # the scanner's objective magnification (40 for 40x)


def sniff_format(head: bytes) -> str | None:
    """JPEG, PNG or TIFF from a file's first bytes; None for anything else."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0.0 < number < 1e6 else None


def _openslide_vendor(path: Path) -> str | None:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        return None
    return vendor if vendor and vendor != "generic-tiff" else None


def _probe_openslide(path: Path, vendor: str) -> SlideInfo:
    import openslide

    try:
        with openslide.OpenSlide(str(path)) as slide:
            width, height = slide.dimensions
            props = dict(slide.properties)
            levels = slide.level_count
    except openslide.OpenSlideError as exc:
        raise ImageRejected(f"the {vendor} slide cannot be read ({exc})") from exc
    return SlideInfo(
        width=int(width),
        height=int(height),
        format=_VENDOR_FORMATS.get(vendor, vendor.upper()[:16]),
        reader="openslide",
        pyramidal=levels > 1,
        mpp_x=_positive(props.get(openslide.PROPERTY_NAME_MPP_X)),
        mpp_y=_positive(props.get(openslide.PROPERTY_NAME_MPP_Y)),
        objective_power=_positive(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
    )


_OME_UNITS_TO_MICRONS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def _ome_metadata(xml: str) -> tuple[float | None, float | None, float | None]:
    """(mpp_x, mpp_y, magnification) from OME-XML. Read with regular expressions, never an XML
    parser: the description is untrusted text, and three attributes need no entity handling."""

    def attribute(name: str) -> str | None:
        found = re.search(rf'\b{name}="([^"]*)"', xml)
        return found.group(1) if found else None

    def size(axis: str) -> float | None:
        value = _positive(attribute(f"PhysicalSize{axis}"))
        factor = _OME_UNITS_TO_MICRONS.get(attribute(f"PhysicalSize{axis}Unit") or "µm")
        return value * factor if value is not None and factor is not None else None

    return size("X"), size("Y"), _positive(attribute("NominalMagnification"))


def _vips_open(source: Path | bytes, kind: str) -> Any:
    """The first (full-resolution) page with the loader the bytes' signature names, never
    libvips' own guess: only JPEG, PNG and TIFF are ever parsed. Read once, top to bottom
    (what dzsave needs: bounded memory); a truncated or corrupt file is an error, not grey."""
    import pyvips

    loader = {"JPEG": "jpegload", "PNG": "pngload", "TIFF": "tiffload"}[kind]
    options: dict[str, Any] = {"access": "sequential", "fail_on": "truncated"}
    if isinstance(source, bytes):
        return getattr(pyvips.Image, f"{loader}_buffer")(source, **options)
    return getattr(pyvips.Image, loader)(str(source), **options)


def _probe_vips(source: Path | bytes, kind: str) -> SlideInfo:
    import pyvips

    try:
        image = _vips_open(source, kind)
    except pyvips.Error as exc:
        raise ImageRejected(f"the file is not a readable {kind} image ({str(exc).strip()[:200]})") from exc
    fields = set(image.get_fields())

    def get(name: str) -> Any:
        return image.get(name) if name in fields else None

    mpp_x = mpp_y = power = None
    fmt = kind
    description = get("image-description")
    if kind == "TIFF" and isinstance(description, str) and "<OME" in description:
        fmt = "OME-TIFF"
        mpp_x, mpp_y, power = _ome_metadata(description)
    elif kind == "TIFF" and get("resolution-unit") in ("cm", "in"):
        # libvips gives the resolution in pixels per millimetre whatever the unit; a TIFF
        # without the tag gets a made-up 1 px/mm, hence the unit check.
        mpp_x = 1000.0 / image.xres if image.xres > 0 else None
        mpp_y = 1000.0 / image.yres if image.yres > 0 else None
        if mpp_x is not None and not 0.01 <= mpp_x <= 100.0:  # a print resolution, not a microscope's
            mpp_x = mpp_y = None
    pages = int(get("n-pages") or 1)
    subifds = int(get("n-subifds") or 0)
    return SlideInfo(
        width=int(image.width),
        height=int(image.height),
        format=fmt,
        reader="vips",
        pyramidal=pages > 1 or subifds > 0,
        mpp_x=mpp_x,
        mpp_y=mpp_y,
        objective_power=power,
    )


def slide_probe(source: Path | bytes) -> SlideInfo:
    """Size, format and physical metadata of ``source`` (a file, or the bytes of a small one)
    from its header alone. Raises :class:`ImageRejected` for anything not JPEG, PNG, TIFF or
    a scanner format OpenSlide reads."""
    if isinstance(source, bytes):
        head = source[:16]
    else:
        with open(source, "rb") as handle:
            head = handle.read(16)
    kind = sniff_format(head)
    if kind == "TIFF" and isinstance(source, Path):
        vendor = _openslide_vendor(source)
        if vendor is not None:
            return _probe_openslide(source, vendor)
    if kind is None:
        if isinstance(source, Path) and _openslide_vendor(source) is not None:
            vendor = _openslide_vendor(source) or ""
            return _probe_openslide(source, vendor)
        raise ImageRejected("format unknown is not accepted (JPEG, PNG, TIFF or a slide scanner format)")
    return _probe_vips(source, kind)


def _rgb8(image: Any) -> Any:
    """8-bit sRGB without alpha, as the tiles are JPEG."""
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.bands < 3 or image.format != "uchar" or image.interpretation not in ("srgb", "rgb"):
        image = image.colourspace("srgb")
    if image.bands > 3:
        image = image.extract_band(0, n=3)
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def pyramid_build(
    path: Path,
    out_dir: Path,
    *,
    tile_size: int = 256,
    quality: int = 85,
    progress: Callable[[float], None] | None = None,
) -> tuple[SlideInfo, TileGeometry, Path]:
    """Write the DeepZoom pyramid of the slide at ``path`` under ``out_dir``.

    Returns the probe, the geometry and the folder holding ``{level}/{col}_{row}.jpeg`` for
    every level of :class:`TileGeometry`. ``progress`` (0..1) is called now and then.
    """
    info = slide_probe(path)
    geometry = TileGeometry(info.width, info.height, tile_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    if info.reader == "openslide":
        root = out_dir / "tiles"
        _pyramid_openslide(path, root, geometry, quality=quality, progress=progress)
    else:
        import pyvips

        with open(path, "rb") as handle:
            kind = sniff_format(handle.read(16)) or "TIFF"
        try:
            image = _rgb8(_vips_open(path, kind))
            if progress is not None:
                image.set_progress(True)
                image.signal_connect("eval", lambda _image, state: progress(state.percent / 100.0))
            image.dzsave(
                str(out_dir / "pyramid"),
                layout="dz",
                tile_size=tile_size,
                overlap=0,
                depth="onepixel",
                suffix=f".{TILE_SUFFIX}[Q={quality},strip]",
            )
        except pyvips.Error as exc:
            raise ImageRejected(f"the image cannot be decoded ({str(exc).strip()[:300]})") from exc
        root = out_dir / "pyramid_files"
    _pyramid_check(root, geometry)
    return info, geometry, root


def _pyramid_openslide(
    path: Path, root: Path, geometry: TileGeometry, *, quality: int, progress: Callable[[float], None] | None
) -> None:
    """One tile at a time, rows in parallel threads: OpenSlide's reads and Pillow's resampling
    and JPEG encoding release the GIL (and OpenSlide handles are thread-safe)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    try:
        with openslide.OpenSlide(str(path)) as slide:
            generator = DeepZoomGenerator(slide, tile_size=geometry.tile_size, overlap=0, limit_bounds=False)
            if generator.level_count != geometry.levels:
                raise ImageRejected("the slide's DeepZoom levels do not match its size")

            def row_write(level: int, row: int) -> int:
                folder = root / str(level)
                cols, _ = geometry.tile_counts(level)
                for col in range(cols):
                    tile = generator.get_tile(level, (col, row)).convert("RGB")
                    x0, y0, x1, y1 = geometry.tile_box(level, col, row)
                    if tile.size != (x1 - x0, y1 - y0):  # OpenSlide rounds the tiniest levels
                        tile = tile.resize((x1 - x0, y1 - y0))
                    tile.save(folder / f"{col}_{row}.{TILE_SUFFIX}", format="JPEG", quality=quality)
                return cols

            total, done = geometry.tile_total(), 0
            with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
                for level in range(geometry.levels):
                    (root / str(level)).mkdir(parents=True, exist_ok=True)
                    _, rows = geometry.tile_counts(level)
                    for written in pool.map(lambda row, level=level: row_write(level, row), range(rows)):
                        done += written
                        if progress is not None:
                            progress(done / total)
    except openslide.OpenSlideError as exc:
        raise ImageRejected(f"the slide cannot be read ({exc})") from exc


def _pyramid_check(root: Path, geometry: TileGeometry) -> None:
    """Every tile the geometry names exists: a reader that rounded level sizes otherwise
    would leave holes the viewer shows as missing tiles."""
    for level in range(geometry.levels):
        cols, rows = geometry.tile_counts(level)
        for probe in ((0, 0), (cols - 1, rows - 1)):
            if not (root / str(level) / f"{probe[0]}_{probe[1]}.{TILE_SUFFIX}").is_file():
                raise ImageRejected(f"the pyramid is incomplete at level {level} (tile {probe[0]}_{probe[1]})")
        if (root / str(level) / f"{cols}_0.{TILE_SUFFIX}").exists():
            raise ImageRejected(f"the pyramid has more tiles than expected at level {level}")
