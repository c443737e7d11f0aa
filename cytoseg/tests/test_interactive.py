"""Click-to-segment and box prompts (cytoseg.interactive) on synthetic fields.

The maps are built from the ground truth the way Cellpose's training targets are (flows of
the label map times 5, cell-probability logits positive inside cells), so that what is tested
is the flow following, the thresholds and the click rules rather than a model's accuracy; the
tiny trained models' maps are checked at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cytoseg.backends.base import Instance
from cytoseg.interactive import ImageMaps, box_segment, click_segment, maps_dump, maps_load
from cytoseg.synthetic import SyntheticField, generate_field

W, H = 256, 192


def _flows(label_map: np.ndarray) -> np.ndarray:
    from cellpose import dynamics

    return np.asarray(dynamics.masks_to_flows(label_map.astype(np.int32)), dtype=np.float32) * 5.0


@pytest.fixture(scope="module")
def field() -> SyntheticField:
    return generate_field(seed=3, width=W, height=H, n_cells=25)


@pytest.fixture(scope="module")
def maps(field: SyntheticField) -> ImageMaps:
    lm = field.label_map()
    cellprob = np.where(lm > 0, 4.0, -6.0).astype(np.float32)
    return ImageMaps(height=H, width=W, flows=_flows(lm), cellprob=cellprob, diameter=30.0)


def _full(inst: Instance) -> np.ndarray:
    out = np.zeros((H, W), dtype=bool)
    h, w = inst.mask.shape
    out[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w] = inst.mask
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _inside(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel deepest inside ``mask``."""
    r, c = np.unravel_index(np.argmax(ndi.distance_transform_edt(mask)), mask.shape)
    return float(c) + 0.5, float(r) + 0.5


def _cells(field: SyntheticField, min_area: int = 80) -> list[int]:
    lm = field.label_map()
    return [k for k in range(1, int(lm.max()) + 1) if (lm == k).sum() >= min_area]


def test_click_inside_a_cell_gives_that_cell(field: SyntheticField, maps: ImageMaps) -> None:
    lm = field.label_map()
    ious = []
    for k in _cells(field):
        inst = click_segment(image=field.image, maps=maps, positive=[_inside(lm == k)])
        assert inst is not None
        ious.append(_iou(_full(inst), lm == k))
        assert inst.label == 1 and 0.9 < inst.score <= 1.0
    assert len(ious) >= 10 and min(ious) >= 0.8


def test_cell_below_the_threshold_is_still_obtainable(field: SyntheticField, maps: ImageMaps) -> None:
    lm = field.label_map()
    k = _cells(field)[0]
    faint = maps.cellprob.copy()  # type: ignore[union-attr]
    faint[lm == k] = -1.5  # below the model's threshold 0: pre-segmentation drops it
    dropped = ImageMaps(height=H, width=W, flows=maps.flows, cellprob=faint, diameter=30.0)
    inst = click_segment(image=field.image, maps=dropped, positive=[_inside(lm == k)])
    assert inst is not None and _iou(_full(inst), lm == k) >= 0.8
    # a region the model is sure is background gives nothing (the caller falls back to a baseline)
    faint[lm == k] = -9.0
    gone = ImageMaps(height=H, width=W, flows=maps.flows * 0, cellprob=faint, diameter=30.0)  # type: ignore[operator]
    assert click_segment(image=field.image, maps=gone, positive=[_inside(lm == k)]) is None


def _two_touching() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two touching discs A and B, and the label map of both as one cell."""
    yy, xx = np.mgrid[:H, :W]
    a = (yy - 96) ** 2 + (xx - 100) ** 2 <= 18**2
    b = ((yy - 96) ** 2 + (xx - 134) ** 2 <= 18**2) & ~a
    return a, b, (a | b).astype(np.int32)


def test_negative_click_splits_a_merged_cell_and_removes_another() -> None:
    a, b, merged = _two_touching()
    image = np.full((H, W, 3), 230, np.uint8)
    cellprob = np.where(merged > 0, 4.0, -6.0).astype(np.float32)
    one = ImageMaps(height=H, width=W, flows=_flows(merged), cellprob=cellprob, diameter=36.0)
    both = click_segment(image=image, maps=one, positive=[(100.5, 96.5)])
    assert both is not None and _iou(_full(both), a | b) >= 0.9  # the model merged them
    split = click_segment(image=image, maps=one, positive=[(100.5, 96.5)], negative=[(134.5, 96.5)])
    assert split is not None and _iou(_full(split), a) >= 0.8
    assert not _full(split)[96, 134]
    # cells the model keeps apart: a negative click in the other one takes nothing away
    apart = a.astype(np.int32) + 2 * b.astype(np.int32)
    two = ImageMaps(height=H, width=W, flows=_flows(apart), cellprob=cellprob, diameter=36.0)
    only_a = click_segment(image=image, maps=two, positive=[(100.5, 96.5)], negative=[(134.5, 96.5)])
    assert only_a is not None and _iou(_full(only_a), a) >= 0.9
    # and several positive clicks merge the cells they fall in
    merged_clicks = click_segment(image=image, maps=two, positive=[(100.5, 96.5), (134.5, 96.5)])
    assert merged_clicks is not None and _iou(_full(merged_clicks), a | b) >= 0.9


def test_foreground_clips_flows_and_names_the_class(field: SyntheticField, maps: ImageMaps) -> None:
    lm = field.label_map()
    semantic = field.semantic_map()
    k = _cells(field)[1]
    # a foreground that lacks the cell's left half: the outline follows it
    fg = (lm > 0).astype(np.float32)
    rows, cols = np.nonzero(lm == k)
    left = (lm == k) & (np.arange(W)[None, :] < int(np.median(cols)) - 3)
    fg[left] = 0.0
    clipped = ImageMaps(
        height=H, width=W, flows=maps.flows, cellprob=maps.cellprob, foreground=fg, semantic=semantic, diameter=30.0
    )
    x, y = float(cols.max()) - 4.5, float(np.median(rows)) + 0.5
    while lm[int(y), int(x)] != k or left[int(y), int(x)]:
        x -= 1
    inst = click_segment(image=field.image, maps=clipped, positive=[(x, y)])
    assert inst is not None
    got = _full(inst)
    assert not (got & left).any() and _iou(got, (lm == k) & ~left) >= 0.8
    assert inst.label == int(semantic[lm == k].max())


def test_foreground_only_maps(field: SyntheticField) -> None:
    lm = field.label_map()
    isolated = [
        k for k in _cells(field) if not (ndi.binary_dilation(lm == k, iterations=2) & (lm > 0) & (lm != k)).any()
    ]
    assert isolated
    k = isolated[0]
    fg = np.where(lm > 0, 0.9, 0.02).astype(np.float32)
    maps = ImageMaps(height=H, width=W, foreground=fg, semantic=field.semantic_map())
    inst = click_segment(image=field.image, maps=maps, positive=[_inside(lm == k)])
    assert inst is not None and _iou(_full(inst), lm == k) >= 0.8
    # on background (nnU-Net sees nothing) there is no cell
    bg = np.argwhere(ndi.distance_transform_edt(lm == 0) > 10)[0]
    assert click_segment(image=field.image, maps=maps, positive=[(bg[1] + 0.5, bg[0] + 0.5)]) is None


def test_baseline_without_maps_outlines_an_isolated_cell() -> None:
    f = generate_field(seed=11, width=W, height=H, n_cells=6, n_erythrocytes=0, cluster_fraction=0.0)
    lm = f.label_map()
    ious = [
        _iou(_full(inst), lm == k)
        for k in _cells(f)
        if (inst := click_segment(image=f.image, maps=None, positive=[_inside(lm == k)])) is not None
    ]
    assert ious and float(np.median(ious)) >= 0.7


def test_box_returns_the_instances_inside(field: SyntheticField, maps: ImageMaps) -> None:
    lm = field.label_map()
    box = (0.0, 0.0, 128.0, 96.0)
    got = box_segment(image=field.image, maps=maps, box=box)
    want = []
    for k in range(1, int(lm.max()) + 1):
        rows, cols = np.nonzero(lm == k)
        if rows.size >= 30 and cols.mean() + 0.5 < 128 and rows.mean() + 0.5 < 96:
            want.append(lm == k)
    assert len(got) == len(want) and want
    for target in want:
        assert max(_iou(_full(g), target) for g in got) >= 0.8
    nothing = box_segment(image=field.image, maps=maps, box=(0.0, 0.0, 3.0, 3.0))
    assert all(_full(i)[:3, :3].any() for i in nothing)
    baseline = box_segment(image=field.image, maps=None, box=box)
    assert baseline and all(0 <= i.x0 < 128 + 64 for i in baseline)


def test_points_and_boxes_outside_the_image_are_named(field: SyntheticField, maps: ImageMaps) -> None:
    with pytest.raises(ValueError, match=r"^positive\.1"):
        click_segment(image=field.image, maps=maps, positive=[(5, 5), (W, 5)])
    with pytest.raises(ValueError, match=r"^negative\.0"):
        click_segment(image=field.image, maps=maps, positive=[(5, 5)], negative=[(-1, 5)])
    with pytest.raises(ValueError, match=r"^positive"):
        click_segment(image=field.image, maps=maps, positive=[])
    for box in [(10, 10, 10, 20), (10, 10, W + 1, 20), (-1, 0, 5, 5), (30, 30, 20, 40)]:
        with pytest.raises(ValueError, match=r"^box"):
            box_segment(image=field.image, maps=maps, box=box)


def test_maps_round_trip_as_float16(maps: ImageMaps) -> None:
    data = maps_dump(maps)
    back = maps_load(data)
    assert back.flows is not None and back.flows.dtype == np.float16 and back.foreground is None
    assert np.allclose(back.flows, maps.flows, atol=0.01)  # type: ignore[arg-type]
    assert (back.height, back.width, back.diameter, back.cellprob_threshold) == (H, W, 30.0, 0.0)
    assert len(data) < 5 * H * W * 2 + 4096
    with pytest.raises(ValueError, match="flows"):
        ImageMaps(height=H, width=W, flows=np.zeros((2, H, W + 1), np.float32))


@pytest.fixture(scope="module")
def two_stage_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cytoseg.tests.tiny_models import cellpose_trained, models_base_get, nnunet_trained

    base = models_base_get(tmp_path_factory)
    nn = nnunet_trained(base)
    cp, _ = cellpose_trained(base)
    art = tmp_path_factory.mktemp("two_stage_click")
    shutil.copytree(nn.model_folder, art / "nnunet")
    shutil.copytree(cp.model_file.parent, art / "cellpose")
    return art


@pytest.mark.ml
def test_backends_give_their_maps(two_stage_artifacts: Path) -> None:
    from cytoseg.backends.two_stage import TwoStageBackend
    from cytoseg.tests.tiny_models import held_out_fields

    backend = TwoStageBackend(
        artifacts=two_stage_artifacts, settings={"nnunet": {"use_mirroring": False}}, device="cpu"
    )
    f = held_out_fields()[0]
    pred = backend.predict(f.image)
    maps = backend.maps(f.image)
    assert pred.maps is not None and pred.maps.has_flows and pred.maps.foreground is not None
    assert maps.has_flows and maps.semantic is not None and maps.diameter and maps.diameter > 0
    assert np.allclose(maps.cellprob, pred.maps.cellprob, atol=1e-3)  # type: ignore[arg-type]
    # every predicted instance is obtainable by a click at its deepest pixel
    found = 0
    for inst in pred.instances[:5]:
        x, y = _inside(inst.mask)
        got = click_segment(image=f.image, maps=maps, positive=[(inst.x0 + x, inst.y0 + y)])
        found += got is not None
    assert found >= min(3, len(pred.instances))
    # a window's two networks side by side (one torch thread each) give the same maps
    import torch

    from cytoseg.interactive import _network_maps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        crop = np.ascontiguousarray(f.image[:100, :120])
        alone, side_by_side = backend.maps(crop), _network_maps(backend, crop)
    finally:
        torch.set_num_threads(threads)
    assert side_by_side is not None
    for name in ("flows", "cellprob", "foreground", "semantic"):
        assert np.array_equal(getattr(alone, name), getattr(side_by_side, name)), name


def test_a_windows_context_keeps_its_crop_within_a_multiple_of_16() -> None:
    from cytoseg.interactive import WINDOW_MARGIN, window_context

    # a 97 px window: 23 px each side (a 143 px crop, one 144 px Cellpose tile, not 160)
    assert window_context(97) == 23 and (97 + 2 * 23) <= 144
    assert window_context(112) == WINDOW_MARGIN  # 160 already
    for side in range(40, 300):
        context = window_context(side)
        crop = side + 2 * context
        assert WINDOW_MARGIN - 8 <= context <= WINDOW_MARGIN
        assert crop <= (side + 2 * WINDOW_MARGIN) // 16 * 16  # never past the multiple of 16 below


class _EchoBackend:
    """A stand-in backend whose maps repeat the image it is given (and say where it was cut)."""

    name = "echo"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def maps(self, image: np.ndarray) -> ImageMaps:
        h, w = image.shape[:2]
        self.shapes.append((h, w))
        red = image[:, :, 0].astype(np.float32)
        return ImageMaps(height=h, width=w, flows=np.stack([red, -red]), cellprob=red, diameter=12.0)


def test_window_maps_are_computed_with_context_and_merged() -> None:
    from cytoseg.interactive import window_maps
    from cytoseg.maps import UNKNOWN_LOGIT, maps_merge

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    backend = _EchoBackend()
    part = window_maps(backend, image, r0=10, r1=74, c0=100, c1=164, margin=16)  # type: ignore[arg-type]
    assert part is not None and (part.height, part.width) == (64, 64)
    assert backend.shapes == [(64 + 10 + 16, 64 + 32)]  # the context stops at the image's edge
    assert np.array_equal(part.cellprob, image[10:74, 100:164, 0].astype(np.float32))
    merged = maps_merge(None, part, y0=10, x0=100, height=H, width=W)
    assert merged.covers(10, 74, 100, 164) and not merged.covers(0, 74, 100, 164)
    assert float(merged.cellprob[0, 0]) == UNKNOWN_LOGIT  # type: ignore[index]
    other = window_maps(backend, image, r0=100, r1=150, c0=0, c1=40)  # type: ignore[arg-type]
    assert other is not None
    both = maps_merge(merged, other, y0=100, x0=0, height=H, width=W)
    assert both.covers(10, 74, 100, 164) and both.covers(100, 150, 0, 40)
    assert np.allclose(both.cellprob[100:150, 0:40], image[100:150, 0:40, 0], atol=0.5)  # type: ignore[index]
    back = maps_load(maps_dump(both))
    assert back.known is not None and np.array_equal(back.known, both.known)  # type: ignore[arg-type]
    full = ImageMaps(height=H, width=W, cellprob=np.zeros((H, W), np.float32))
    assert maps_merge(full, other, y0=0, x0=0, height=H, width=W) is full  # whole-field maps stay as they are
    # a click where no window has been computed finds nothing there
    assert click_segment(image=image, maps=both, positive=[(5.5, 5.5)]) is None
