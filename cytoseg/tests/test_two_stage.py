"""Paper A's two-stage combination: the filter on hand-made arrays and the full backend."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytoseg.backends.base import Instance, instances_from_label_map
from cytoseg.backends.two_stage import two_stage_filter


def _inst(x0: int, y0: int, h: int, w: int, *, label: int = 1, score: float = 0.9) -> Instance:
    return Instance(x0=x0, y0=y0, mask=np.ones((h, w), bool), label=label, score=score)


def _semantic() -> np.ndarray:
    sem = np.zeros((20, 20), np.uint8)
    sem[0:10, 0:10] = 1  # a cell region
    sem[10:20, 10:20] = 2  # an erythrocyte region
    return sem


def test_filter_drops_instances_on_background() -> None:
    sem = _semantic()
    on_cell = _inst(2, 2, 4, 4)
    on_background = _inst(12, 2, 4, 4)
    half = _inst(8, 0, 4, 4)  # 2 of 4 columns on the cell region: exactly 0.5
    out = two_stage_filter([on_cell, on_background, half], sem, min_fg_fraction=0.5)
    assert [(i.x0, i.y0) for i in out] == [(2, 2), (8, 0)]
    out = two_stage_filter([on_cell, on_background, half], sem, min_fg_fraction=0.6)
    assert [(i.x0, i.y0) for i in out] == [(2, 2)]
    assert two_stage_filter([on_background], sem, min_fg_fraction=0.0) != []


def test_filter_majority_class_and_erythrocyte_modes() -> None:
    sem = _semantic()
    ery = _inst(12, 12, 5, 5, score=0.4)
    cell = _inst(1, 1, 5, 5, label=2)  # the incoming label does not matter
    mixed = _inst(8, 8, 4, 4)  # 2x2 on cell, 2x2 on erythrocyte, rest background: tie
    out = two_stage_filter([ery, cell, mixed], sem, min_fg_fraction=0.5, erythrocytes="label")
    assert [i.label for i in out] == [2, 1, 1]
    assert out[0].score == 0.4 and out[0].mask.shape == (5, 5)
    out = two_stage_filter([ery, cell, mixed], sem, min_fg_fraction=0.5, erythrocytes="suppress")
    assert [(i.x0, i.label) for i in out] == [(1, 1), (8, 1)]
    with pytest.raises(ValueError):
        two_stage_filter([ery], sem, erythrocytes="drop")


def test_filter_crop_and_borders() -> None:
    sem = _semantic()
    wide = _inst(6, 2, 4, 8)  # columns 6-13, cell region ends at column 9
    (out,) = two_stage_filter([wide], sem, min_fg_fraction=0.5, crop_to_foreground=True)
    assert (out.x0, out.y0, out.mask.shape) == (6, 2, (4, 4))
    outside = _inst(25, 25, 3, 3)
    partly_outside = _inst(-2, -2, 5, 5)  # the visible 3x3 lies on the cell region
    kept = two_stage_filter([outside, partly_outside], sem)
    assert len(kept) == 1 and kept[0].x0 == -2  # the crop itself is not clipped


def test_filter_removes_synthetic_erythrocytes_that_cellpose_alone_keeps() -> None:
    from cytoseg.synthetic import generate_field

    f = generate_field(seed=7, width=128, height=128, n_cells=10, n_erythrocytes=5)
    # "Cellpose alone": every visible instance, all with Cellpose's single label 1
    label_map = f.label_map()
    instances = instances_from_label_map(label_map)

    def cell_of(inst: Instance) -> int:  # label-map id = index into f.cells + 1
        r, c = np.argwhere(inst.mask)[0]
        return int(label_map[inst.y0 + r, inst.x0 + c]) - 1

    is_ery = [f.cells[cell_of(i)].label == 2 for i in instances]
    assert any(is_ery) and not all(is_ery)
    semantic = f.semantic_map()  # a perfect nnU-Net
    kept = two_stage_filter(instances, semantic, min_fg_fraction=0.5, erythrocytes="suppress")
    assert len(kept) == len(instances) - sum(is_ery)
    assert all(i.label == 1 for i in kept)
    labelled = two_stage_filter(instances, semantic, min_fg_fraction=0.5, erythrocytes="label")
    assert [i.label for i in labelled] == [2 if e else 1 for e in is_ery]
    # an nnU-Net trained with erythrocytes as background drops them by the fraction rule
    cells_only = np.where(semantic == 2, 0, semantic)
    kept = two_stage_filter(instances, cells_only, min_fg_fraction=0.5)
    assert len(kept) == len(instances) - sum(is_ery)


# ------------------------------------------------------------ full backend


@pytest.fixture(scope="module")
def two_stage_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """artifacts/{nnunet,cellpose} from the session's tiny models (trained once)."""
    from cytoseg.tests.tiny_models import cellpose_trained, models_base_get, nnunet_trained

    base = models_base_get(tmp_path_factory)
    nn = nnunet_trained(base)
    cp, _ = cellpose_trained(base)
    art = tmp_path_factory.mktemp("two_stage")
    shutil.copytree(nn.model_folder, art / "nnunet")
    shutil.copytree(cp.model_file.parent, art / "cellpose")
    return art


NN_FAST = {"use_mirroring": False}


@pytest.mark.ml
def test_backend_combines_stages(two_stage_artifacts: Path) -> None:
    from cytoseg.backends.cellpose import CellposeBackend
    from cytoseg.backends.two_stage import TwoStageBackend
    from cytoseg.tests.tiny_models import held_out_fields

    backend = TwoStageBackend(
        artifacts=two_stage_artifacts, settings={"nnunet": NN_FAST, "combine": "filter"}, device="cpu"
    )
    alone = CellposeBackend(artifacts=two_stage_artifacts / "cellpose", settings={}, device="cpu")
    f = held_out_fields()[0]
    pred = backend.predict(f.image)
    assert pred.semantic is not None and pred.semantic.shape == f.image.shape[:2]
    assert {"nnunet", "cellpose_net", "cellpose_masks", "filter"} <= set(pred.timings)
    assert pred.instances and {i.label for i in pred.instances} <= {1, 2}
    cellpose_only = alone.predict(f.image).instances
    assert len(pred.instances) <= len(cellpose_only)
    for inst in pred.instances:  # mostly on nnU-Net foreground
        h, w = inst.mask.shape
        under = pred.semantic[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w][inst.mask]
        assert (under > 0).mean() >= 0.5
    suppressed = TwoStageBackend(
        artifacts=two_stage_artifacts,
        device="cpu",
        settings={"nnunet": NN_FAST, "erythrocytes": "suppress", "colour_filter": True, "combine": "filter"},
    ).predict(f.image)
    assert all(i.label == 1 for i in suppressed.instances)
    assert len(suppressed.instances) <= len(pred.instances)


@pytest.mark.ml
def test_backend_assign_keeps_nnunets_classes_and_foreground(two_stage_artifacts: Path) -> None:
    """The default rule: every cell lies on nnU-Net's cells and every erythrocyte on its
    erythrocytes, no pixel in two instances; the foreground is nnU-Net's except what the rule
    judged not cell-like (``new_min_solidity`` trades that for precision)."""
    from cytoseg.backends.two_stage import TwoStageBackend
    from cytoseg.tests.tiny_models import held_out_fields

    def covered_share(backend: TwoStageBackend) -> float:
        pred = backend.predict(f.image)
        assert {"nnunet", "cellpose_net", "cellpose_masks"} <= set(pred.timings) and "filter" not in pred.timings
        assert pred.semantic is not None and pred.instances
        covered = np.zeros(pred.semantic.shape, bool)
        for inst in pred.instances:
            h, w = inst.mask.shape
            under = pred.semantic[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w][inst.mask]
            assert (under == inst.label).all()
            region = covered[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w]
            assert not (region & inst.mask).any()  # no pixel in two instances
            region |= inst.mask
        foreground = pred.semantic > 0
        return float((covered & foreground).sum() / foreground.sum())

    f = held_out_fields()[0]
    backend = TwoStageBackend(artifacts=two_stage_artifacts, settings={"nnunet": NN_FAST}, device="cpu")
    assert backend.combine_mode == "assign"
    strict = covered_share(backend)
    # a looser shape rule claims the unseeded blobs the strict one leaves out
    loose = TwoStageBackend(
        artifacts=two_stage_artifacts, settings={"nnunet": NN_FAST, "new_min_solidity": 0.75}, device="cpu"
    )
    assert covered_share(loose) >= max(strict, 0.9)
    with pytest.raises(Exception, match="combine"):
        TwoStageBackend(artifacts=two_stage_artifacts, settings={"combine": "merge"}, device="cpu")


@pytest.mark.ml
def test_backend_restricted_masks_and_registry(two_stage_artifacts: Path) -> None:
    from cytoseg.backends import BackendError, backend_cache_clear, backend_get
    from cytoseg.backends.two_stage import TwoStageBackend
    from cytoseg.tests.tiny_models import held_out_fields

    settings: dict[str, Any] = {
        "nnunet_model_folder": str(two_stage_artifacts / "nnunet"),
        "cellpose_model_file": str(two_stage_artifacts / "cellpose" / "cellpose.pth"),
        "nnunet": NN_FAST,
        "restrict_masks": True,
        "crop_to_foreground": True,
        "combine": "filter",
    }
    backend = backend_get(name="two_stage", artifacts=None, settings=settings, device="cpu")
    try:
        assert isinstance(backend, TwoStageBackend)
        f = held_out_fields()[1]
        pred = backend.predict(f.image)
        assert pred.semantic is not None
        for inst in pred.instances:  # cropped to the foreground
            h, w = inst.mask.shape
            assert (pred.semantic[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w][inst.mask] > 0).all()
        with pytest.raises(BackendError):
            backend_get(name="two_stage", artifacts=None, settings={}, device="cpu")
        with pytest.raises(BackendError):
            TwoStageBackend(artifacts=two_stage_artifacts, settings={"erythrocytes": "x"}, device="cpu")
    finally:
        backend_cache_clear()


@pytest.mark.ml
def test_fast_preset_inference_settings(two_stage_artifacts: Path) -> None:
    """Cellpose as one tile (bsize 0) and the fast preset's settings (few iterations, restricted dynamics)."""
    from cytoseg.backends import BackendError
    from cytoseg.backends.cellpose import CellposeBackend
    from cytoseg.backends.two_stage import TwoStageBackend
    from cytoseg.tests.tiny_models import held_out_fields
    from cytoseg.trainers.presets import FAST_INFERENCE

    f = held_out_fields()[0]
    tiled = CellposeBackend(artifacts=two_stage_artifacts / "cellpose", settings={"bsize": 32}, device="cpu")
    whole = CellposeBackend(artifacts=two_stage_artifacts / "cellpose", settings={"bsize": 0}, device="cpu")
    a, b = tiled.network(f.image), whole.network(f.image)
    assert a.dP.shape == b.dP.shape == (2, *f.image.shape[:2])
    assert b.cellprob.shape == f.image.shape[:2]
    for bad in (-1, 8):
        with pytest.raises(BackendError, match="bsize"):
            CellposeBackend(artifacts=two_stage_artifacts / "cellpose", settings={"bsize": bad}, device="cpu")
    fast = TwoStageBackend(artifacts=two_stage_artifacts, device="cpu", settings=FAST_INFERENCE["two_stage"])
    assert fast.cellpose.niter == 60 and fast.restrict_masks and fast.nnunet.settings["tile_step_size"] == 1.0
    pred = fast.predict(f.image)
    assert pred.semantic is not None and pred.instances
    for inst in pred.instances:
        h, w = inst.mask.shape
        assert (pred.semantic[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w][inst.mask] > 0).mean() >= 0.5
