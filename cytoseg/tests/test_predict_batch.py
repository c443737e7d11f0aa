"""Batched prediction (``predict_batch``, what ``cytoseg.tiled`` calls with a task's reads): the
learned backends run several reads' network tiles or patches through shared network passes and
must give what one ``predict`` per read gives, and a tiled run the same cells with and without
batching. The tiny models are the session's (``cytoseg.tests.tiny_models``, trained once)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytoseg.backends.base import Prediction
from cytoseg.slide_synthetic import slide_synthetic
from cytoseg.tiled import ArrayReader, TilePlan, tiled_predict

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """artifacts/{nnunet,cellpose} from the session's tiny models."""
    from cytoseg.tests.tiny_models import cellpose_trained, models_base_get, nnunet_trained

    base = models_base_get(tmp_path_factory)
    nn = nnunet_trained(base)
    cp, _ = cellpose_trained(base)
    art = tmp_path_factory.mktemp("batched")
    shutil.copytree(nn.model_folder, art / "nnunet")
    shutil.copytree(cp.model_file.parent, art / "cellpose")
    return art


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    slide = slide_synthetic(width=320, height=320, field_width=160, field_height=160, distinct=2, seed=3)
    return slide.region(0, 0, 320, 320)


@pytest.fixture(scope="module")
def reads(rgb: np.ndarray) -> list[np.ndarray]:
    """Reads as a tiled run has them: two of one size and two cut at the image's edge."""
    return [rgb[0:160, 0:160], rgb[120:280, 100:260], rgb[200:320, 0:150], rgb[0:160, 190:320]]


def _same_instances(a: Prediction, b: Prediction) -> None:
    assert len(a.instances) == len(b.instances) > 0
    for x, y in zip(a.instances, b.instances, strict=True):
        assert (x.x0, x.y0, x.label) == (y.x0, y.y0, y.label)
        assert np.array_equal(x.mask, y.mask)
        assert math.isclose(x.score, y.score, abs_tol=1e-3)


def test_cellpose_batch_shares_network_passes_and_equals_predict(
    artifacts: Path, reads: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cytoseg.backends.cellpose import CellposeBackend

    # 64 px network tiles, 3 per pass: every read has several, and passes mix reads
    backend = CellposeBackend(artifacts=artifacts / "cellpose", settings={"bsize": 64, "batch_size": 3}, device="cpu")
    stacks: list[int] = []
    forward = backend._forward

    def spy(tiles: np.ndarray) -> np.ndarray:
        stacks.append(tiles.shape[0])
        return forward(tiles)

    monkeypatch.setattr(backend, "_forward", spy)
    single = [backend.predict(r) for r in reads]  # through Cellpose's own eval
    for r in reads:
        backend.networks([r])
    per_read = list(stacks)
    stacks.clear()
    batched = backend.predict_batch(reads)
    # one stack of every read's network tiles (all 64 x 64), in fewer passes than read by read
    assert stacks == [sum(per_read)]
    assert -(-sum(per_read) // 3) < sum(-(-n // 3) for n in per_read)
    for a, b in zip(single, batched, strict=True):
        _same_instances(a, b)
        assert a.maps is not None and b.maps is not None
        assert a.maps.flows is not None and b.maps.flows is not None
        np.testing.assert_allclose(a.maps.flows, b.maps.flows, atol=1e-4)
        np.testing.assert_allclose(a.maps.cellprob, b.maps.cellprob, atol=1e-4)
        assert set(b.timings) == {"cellpose_net", "cellpose_masks", "instances"}


def test_nnunet_batch_shares_patches_across_reads_and_equals_predict(
    artifacts: Path, reads: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cytoseg.backends.nnunet import NnUNetBackend

    backend = NnUNetBackend(
        artifacts=artifacts / "nnunet", settings={"batch_size": 5, "use_mirroring": False}, device="cpu"
    )
    passes: list[int] = []
    run = backend.predictor._internal_maybe_mirror_and_predict

    def spy(x: Any) -> Any:
        passes.append(int(x.shape[0]))
        return run(x)

    monkeypatch.setattr(backend.predictor, "_internal_maybe_mirror_and_predict", spy)
    single = [backend.predict(r) for r in reads]  # nnU-Net's own predictor: one patch per pass
    assert set(passes) == {1}
    patches = len(passes)
    passes.clear()
    batched = backend.predict_batch(reads)
    assert sum(passes) == patches and max(passes) == 5 and len(passes) == -(-patches // 5)
    for a, b in zip(single, batched, strict=True):
        assert a.semantic is not None and b.semantic is not None
        assert np.array_equal(a.semantic, b.semantic)
        _same_instances(a, b)
        assert a.maps is not None and b.maps is not None and a.maps.foreground is not None
        np.testing.assert_allclose(a.maps.foreground, b.maps.foreground, atol=2e-3)


def test_nnunet_batch_with_mirroring_equals_predict(artifacts: Path, reads: list[np.ndarray]) -> None:
    from cytoseg.backends.nnunet import NnUNetBackend

    backend = NnUNetBackend(artifacts=artifacts / "nnunet", settings={"batch_size": 4}, device="cpu")
    for image, maps in zip(reads[:2], backend.predict_maps_batch(reads[:2]), strict=True):
        alone = backend.predict_maps(image)
        assert np.array_equal(alone.semantic, maps.semantic)
        np.testing.assert_allclose(alone.probabilities, maps.probabilities, atol=2e-3)


TWO_STAGE = {"nnunet": {"use_mirroring": False, "batch_size": 4}, "cellpose": {"bsize": 64, "batch_size": 4}}


def test_two_stage_batch_equals_predict(artifacts: Path, reads: list[np.ndarray]) -> None:
    from cytoseg.backends.two_stage import TwoStageBackend

    for combine in ("assign", "filter"):
        backend = TwoStageBackend(artifacts=artifacts, settings={**TWO_STAGE, "combine": combine}, device="cpu")
        single = [backend.predict(r) for r in reads]
        batched = backend.predict_batch(reads)
        for a, b in zip(single, batched, strict=True):
            assert a.semantic is not None and b.semantic is not None
            assert np.array_equal(a.semantic, b.semantic)
            _same_instances(a, b)
            assert set(a.timings) == set(b.timings)


def test_a_tiled_run_keeps_the_same_cells_batched_and_tile_by_tile(
    artifacts: Path, rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cytoseg.backends.two_stage import TwoStageBackend

    backend = TwoStageBackend(artifacts=artifacts, settings=TWO_STAGE, device="cpu")
    calls: list[int] = []
    batch = backend.predict_batch

    def spy(images: list[np.ndarray]) -> list[Prediction]:
        calls.append(len(images))
        return batch(images)

    monkeypatch.setattr(backend, "predict_batch", spy)
    plan = TilePlan(320, 320, tile=128, margin=32)  # 9 tiles, reads of 160 to 192 px
    one_by_one = tiled_predict(backend, ArrayReader(rgb), plan, batch=1)
    assert calls == []
    batched = tiled_predict(backend, ArrayReader(rgb), plan, batch=4)
    assert calls == [4, 4]  # the last read alone goes through predict
    assert len(batched) == len(one_by_one) > 10

    def key(cell: Any) -> tuple[Any, ...]:
        return (cell.tile, cell.label, cell.points, cell.border, cell.cut)

    assert sorted(map(key, batched)) == sorted(map(key, one_by_one))
