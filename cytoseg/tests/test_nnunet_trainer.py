"""nnU-Net v2 trainer: raw dataset, plans override, daemon-safe training, cancellation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cytoseg.tests.tiny_models import (
    NNUNET_EPOCHS,
    NnUNetTrained,
    field,
    foreground_dice,
    held_out_fields,
)
from cytoseg.trainers import TrainingCancelled
from cytoseg.trainers.nnunet import (
    NnUNetPlansOverride,
    NnUNetTrainConfig,
    nnunet_env,
    nnunet_train,
    plans_override,
    raw_dataset_write,
)


def _plans() -> dict:
    """The parts of an nnU-Net 2D plan that plans_override edits."""
    return {
        "configurations": {
            "2d": {
                "patch_size": [768, 1024],
                "batch_size": 4,
                "architecture": {
                    "arch_kwargs": {
                        "n_stages": 8,
                        "features_per_stage": [32, 64, 128, 256, 512, 512, 512, 512],
                        "kernel_sizes": [[3, 3]] * 8,
                        "strides": [[1, 1]] + [[2, 2]] * 7,
                        "n_conv_per_stage": [2] * 8,
                        "n_conv_per_stage_decoder": [2] * 7,
                    }
                },
            }
        }
    }


def test_config_defaults_are_paper_a() -> None:
    cfg = NnUNetTrainConfig()
    assert (cfg.num_epochs, cfg.num_iterations_per_epoch, cfg.num_val_iterations_per_epoch) == (50, 250, 50)
    assert (cfg.initial_lr, cfg.weight_decay, cfg.oversample_foreground_percent) == (7e-3, 1e-4, 0.33)
    aug = cfg.augmentation
    assert (aug.p_flip, aug.p_rotation, aug.p_scaling, aug.p_low_res) == (0.5, 0.2, 0.2, 0.25)
    assert (aug.p_gamma, aug.p_brightness, aug.p_contrast, aug.p_blur, aug.p_noise) == (0.3, 0.15, 0.15, 0.2, 0.1)
    assert aug.rotation_deg == (-180.0, 180.0) and aug.scaling == (0.7, 1.4)
    assert cfg.plans.is_empty()


def test_config_json_roundtrip() -> None:
    cfg = NnUNetTrainConfig.tiny()
    again = NnUNetTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_plans_override_shrinks_network() -> None:
    plans = _plans()
    out = plans_override(plans, "2d", NnUNetPlansOverride(patch_size=(64, 96), base_features=8, max_features=64))
    arch = out["configurations"]["2d"]["architecture"]["arch_kwargs"]
    # deepest map of a 64-pixel edge keeps >= 4 pixels: 64 / 2**4 = 4 -> 5 stages
    assert arch["n_stages"] == 5
    assert arch["features_per_stage"] == [8, 16, 32, 64, 64]
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["n_conv_per_stage"]) == 5
    assert len(arch["n_conv_per_stage_decoder"]) == 4
    assert out["configurations"]["2d"]["patch_size"] == [64, 96]
    # the input is not modified
    assert plans["configurations"]["2d"]["patch_size"] == [768, 1024]
    assert plans_override(plans, "2d", NnUNetPlansOverride()) == plans


def test_plans_override_rejects_indivisible_patch() -> None:
    with pytest.raises(ValueError, match="divisible"):
        plans_override(_plans(), "2d", NnUNetPlansOverride(patch_size=(60, 64), n_stages=4))


def test_raw_dataset_layout(tmp_path: Path) -> None:
    f = field(1)
    folder, train_ids, val_ids = raw_dataset_write(
        raw_root=tmp_path,
        dataset_id=7,
        dataset_name="T",
        images=[f.image],
        semantic_labels=[f.semantic_map()],
        val_images=[f.image],
        val_semantic_labels=[f.semantic_map()],
    )
    assert folder.name == "Dataset007_T"
    assert (folder / "imagesTr" / f"{train_ids[0]}_0000.png").is_file()
    assert (folder / "labelsTr" / f"{val_ids[0]}.png").is_file()
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "cell": 1, "erythrocyte": 2}
    assert meta["file_ending"] == ".png" and meta["numTraining"] == 2
    with pytest.raises(ValueError):
        raw_dataset_write(
            raw_root=tmp_path,
            dataset_id=8,
            dataset_name="T",
            images=[f.image],
            semantic_labels=[np.full((SIZE := f.image.shape[0], SIZE), 3)],
        )


def test_nnunet_env_is_scoped(tmp_path: Path) -> None:
    before = os.environ.get("nnUNet_raw")
    with nnunet_env(raw=tmp_path, extra={"nnUNet_n_proc_DA": "0"}):
        assert os.environ["nnUNet_raw"] == str(tmp_path)
        from nnunetv2.paths import nnUNet_raw

        assert str(nnUNet_raw) == str(tmp_path)  # nnU-Net reads it lazily
    assert os.environ.get("nnUNet_raw") == before


def test_training_ran_in_daemonic_process(nnunet_model: NnUNetTrained) -> None:
    assert nnunet_model.child_was_daemon
    assert [c["epoch"] for c in nnunet_model.curves] == list(range(NNUNET_EPOCHS))
    assert {"prepare", "train", "epoch"} <= set(nnunet_model.phases)
    assert all(np.isfinite(c["train_loss"]) and np.isfinite(c["val_loss"]) for c in nnunet_model.curves)
    assert nnunet_model.curves[-1]["train_loss"] < nnunet_model.curves[0]["train_loss"]
    folder = nnunet_model.model_folder
    assert (folder / "plans.json").is_file() and (folder / "dataset.json").is_file()
    assert (folder / f"fold_{nnunet_model.fold}" / "checkpoint_final.pth").is_file()


def test_model_folder_predicts_held_out_image(nnunet_model: NnUNetTrained) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(nnunet_model.model_folder), None)
    dices, chances = [], []
    for f in held_out_fields():
        data = f.image.transpose(2, 0, 1)[:, None].astype(np.float32)
        seg = predictor.predict_single_npy_array(data, {"spacing": (999.0, 1.0, 1.0)})
        truth = f.semantic_map() > 0
        dices.append(foreground_dice(seg[0], truth))
        # Dice of an all-foreground map; a random map with the true rate scores less still
        chances.append(2 * truth.mean() / (1 + truth.mean()))
    assert np.mean(dices) > 0.7, dices
    assert all(d > c + 0.2 for d, c in zip(dices, chances, strict=True)), (dices, chances)


def test_backend_semantic_and_probabilities(nnunet_model: NnUNetTrained) -> None:
    from cytoseg.backends.nnunet import NnUNetBackend

    backend = NnUNetBackend(artifacts=nnunet_model.model_folder, settings={"use_mirroring": False}, device="cpu")
    f = held_out_fields()[0]
    pred = backend.predict(f.image)
    assert pred.semantic is not None and pred.semantic.shape == f.image.shape[:2]
    assert set(np.unique(pred.semantic)) <= {0, 1, 2}
    assert foreground_dice(pred.semantic, f.semantic_map()) > 0.6
    assert pred.instances and {i.label for i in pred.instances} <= {1, 2}
    assert all(0.0 <= i.score <= 1.0 for i in pred.instances)
    assert "nnunet" in pred.timings
    probs = backend.predict_probabilities(f.image)
    assert probs.shape == (3, *f.image.shape[:2])
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(probs.argmax(0), pred.semantic)


def test_cancellation_raises(tmp_path: Path) -> None:
    fields = [field(s) for s in (0, 1)]
    seen: list[dict] = []

    def cancel() -> bool:
        return any(info["phase"] == "train" for info in seen)

    with pytest.raises(TrainingCancelled):
        nnunet_train(
            images=[f.image for f in fields],
            semantic_labels=[f.semantic_map() for f in fields],
            workdir=tmp_path,
            config=NnUNetTrainConfig.tiny(),
            device="cpu",
            progress=seen.append,
            should_cancel=cancel,
        )
    train_events = [i for i in seen if i["phase"] == "train"]
    assert train_events and all(i["epoch"] == 0 for i in train_events)
    assert not any(i["phase"] == "epoch" for i in seen)
    # the job's environment does not leak into the caller's
    assert os.environ.get("nnUNet_preprocessed") != str(tmp_path / "nnUNet_preprocessed")


def test_folds_available(tmp_path: Path) -> None:
    from cytoseg.backends.nnunet import folds_available

    (tmp_path / "fold_all").mkdir()
    (tmp_path / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    # nnUNetPredictor's auto-detection would find nothing here
    assert folds_available(tmp_path, "checkpoint_final.pth") == ["all"]
    for k in (1, 0):
        (tmp_path / f"fold_{k}").mkdir()
        (tmp_path / f"fold_{k}" / "checkpoint_final.pth").write_bytes(b"")
    (tmp_path / "fold_2").mkdir()  # no checkpoint
    assert folds_available(tmp_path, "checkpoint_final.pth") == [0, 1]
    assert folds_available(tmp_path, "checkpoint_best.pth") == []


def test_rim_class_and_stain_copies_reach_the_data_set_and_the_backend(tmp_path: Path) -> None:
    """seed_class "rim" trains a fourth class (the cells' rim); stain copies add training images.
    The backend still answers 0/1/2 and three probabilities, and gives the rim separately."""
    from cytoseg.backends.nnunet import NnUNetBackend

    fields = [field(s) for s in (0, 1)]
    cfg = NnUNetTrainConfig.tiny()
    cfg.num_epochs, cfg.num_iterations_per_epoch, cfg.num_val_iterations_per_epoch = 1, 2, 1
    cfg.seed_class = "rim"
    cfg.stain.copies = 2
    steps: list[str] = []
    with pytest.raises(ValueError, match="instance maps"):
        nnunet_train(
            images=[f.image for f in fields],
            semantic_labels=[f.semantic_map() for f in fields],
            workdir=tmp_path / "refused",
            config=cfg,
        )
    result = nnunet_train(
        images=[f.image for f in fields],
        semantic_labels=[f.semantic_map() for f in fields],
        cell_instances=[np.where(f.semantic_map() == 1, f.label_map(), 0) for f in fields],
        workdir=tmp_path,
        config=cfg,
        device="cpu",
        progress=lambda info: steps.append(str(info.get("step"))),
    )
    raw = next((tmp_path / "nnUNet_raw").iterdir())
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "cell": 1, "erythrocyte": 2, "boundary": 3}
    assert dataset["numTraining"] == 2 * (1 + 2)  # the originals and two copies each
    assert "stain_augment" in steps
    from PIL import Image

    label = np.asarray(Image.open(raw / "labelsTr" / "train_0000.png"))
    assert set(np.unique(label)) == {0, 1, 2, 3}
    copy = np.asarray(Image.open(raw / "labelsTr" / "train_0002.png"))
    assert np.array_equal(copy, label)  # geometry untouched: the copies share the labels
    backend = NnUNetBackend(artifacts=result.model_folder, settings={"use_mirroring": False}, device="cpu")
    assert backend.boundary_label == 3
    maps = backend.predict_maps(fields[0].image)
    assert set(np.unique(maps.semantic)) <= {0, 1, 2}
    assert maps.probabilities.shape == (3, *fields[0].image.shape[:2])
    np.testing.assert_allclose(maps.probabilities.sum(0), 1.0, atol=1e-4)
    assert maps.boundary is not None and maps.boundary.shape == fields[0].image.shape[:2]
    assert (maps.boundary <= maps.probabilities[1] + 1e-6).all()  # the rim is part of the cell
