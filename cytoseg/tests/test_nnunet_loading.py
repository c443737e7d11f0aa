"""The nnU-Net backend loads models itself, weights-only, and predicts exactly as nnU-Net's own
loader does; a model folder that would run code is refused before nnU-Net sees it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cytoseg.backends.base import BackendError
from cytoseg.tests.test_packages import Marker

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cytoseg.tests.tiny_models import models_base_get, nnunet_trained

    return nnunet_trained(models_base_get(tmp_path_factory)).model_folder


def _copy(model_folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_folder, target)
    return target


def test_safe_loader_predicts_as_nnunets_own(model_folder: Path) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from cytoseg.backends.nnunet import NnUNetBackend, folds_available
    from cytoseg.tests.tiny_models import held_out_fields

    image = held_out_fields()[0].image
    ours = NnUNetBackend(artifacts=model_folder, settings={"use_mirroring": False}, device="cpu")
    # nnU-Net's own loader unpickles the checkpoint (weights_only=False): only on our own
    # freshly trained file, in a test, as the reference
    reference = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    reference.initialize_from_trained_model_folder(
        str(model_folder), use_folds=tuple(folds_available(model_folder, "checkpoint_final.pth"))
    )
    data = np.ascontiguousarray(image.transpose(2, 0, 1)[:, None].astype(np.float32))
    _, expected = reference.predict_single_npy_array(data, {"spacing": (999.0, 1.0, 1.0)}, None, None, True)
    np.testing.assert_allclose(ours.predict_probabilities(image), np.asarray(expected)[:, 0], atol=1e-5)


def test_a_checkpoint_that_would_run_code_is_refused(model_folder: Path, tmp_path: Path) -> None:
    from cytoseg.backends.nnunet import NnUNetBackend

    folder = _copy(model_folder, tmp_path)
    checkpoint = next(folder.glob("fold_*/checkpoint_final.pth"))
    content: dict[str, Any] = torch.load(checkpoint, weights_only=False)  # our own file (test only)
    content["init_args"]["extra"] = Marker(tmp_path / "ran")
    torch.save(content, checkpoint)
    with pytest.raises(BackendError, match="weights_only"):
        NnUNetBackend(artifacts=folder, settings={}, device="cpu")
    assert not (tmp_path / "ran").exists()


def test_plans_naming_other_code_are_refused_before_import(model_folder: Path, tmp_path: Path) -> None:
    from cytoseg.backends.nnunet import NnUNetBackend

    folder = _copy(model_folder, tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    arch = next(iter(plans["configurations"].values()))["architecture"]
    arch["network_class_name"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(BackendError, match="network_class_name"):
        NnUNetBackend(artifacts=folder, settings={}, device="cpu")
