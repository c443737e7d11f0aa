"""Model registry: configuration schema, artifacts (sha256, safe loading), evaluation, the
promotion gate, promote and roll back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch

from annotations.models import AuditEvent
from core.errors import ConflictError, ServiceValidationError
from cytoseg.backends.packages import PackageError, nnunet_checkpoint_sanitize, torch_weights_load
from tests.factories import model_object_replace, model_version_files, model_zip
from training import snapshots
from training.models import Evaluation, JobStatus, ModelKind, ModelStatus, ModelVersion, TrainingJob
from training.services import artifacts, jobs, registry, runner, schedule
from training.services import config as job_config
from training.services.registry import model_version_baseline, model_version_for_project
from training.tests.factories import synthetic_project

pytestmark = pytest.mark.django_db


# --- configuration -------------------------------------------------------------------------


def test_job_sections_are_checked_against_the_trainers_configs() -> None:
    """The schema is the configuration dataclasses: every default passes, every field is known."""
    from cytoseg.trainers.configs import (
        CellposeTrainConfig,
        NnUNetTrainConfig,
        RefinementTrainConfig,
        config_errors,
    )

    for cls, config in (
        (NnUNetTrainConfig, NnUNetTrainConfig().to_dict()),
        (NnUNetTrainConfig, NnUNetTrainConfig.tiny().to_dict()),
        (CellposeTrainConfig, CellposeTrainConfig().to_dict()),
        (CellposeTrainConfig, CellposeTrainConfig.tiny().to_dict()),
        (RefinementTrainConfig, RefinementTrainConfig.tiny().to_dict()),
    ):
        assert config_errors(cls, json.loads(json.dumps(config)), "config") == {}
        assert cls.from_dict(json.loads(json.dumps(config))) == cls.from_dict(config)  # type: ignore[attr-defined]
    # a field added to a configuration is accepted without any copy to keep in step
    assert job_config.training_config_validate(kind="cellpose", config={"cellpose": {"bn_recalibrate_batches": 2}})
    errors = config_errors(NnUNetTrainConfig, {"dataset_name": "../x", "configuration": "3d", "dataset_id": 0}, "c")
    assert set(errors) == {"c.dataset_name", "c.configuration", "c.dataset_id"}


def test_config_validation_names_every_bad_key() -> None:
    ok = {
        "preset": "tiny",
        "device": "cpu",
        "nnunet": {"num_epochs": 2, "plans": {"patch_size": [64, 64]}},
        "cellpose": {"n_epochs": 2, "channels": None},
        "cellpose_erythrocytes": False,
        "evaluate": True,
        "synthetic": {"count": 4, "darken": [1.8, 2.5]},
    }
    assert job_config.training_config_validate(kind="two_stage", config=ok) == ok
    bad = {
        "presets": "tiny",
        "device": "gpu",
        "nnunet": {
            "num_epochs": 0,
            "initial_lr": "fast",
            "augmentation": {"p_flip": 1.5, "p_flop": 0.1},
            "plans": {"patch_size": [64]},
        },
        "cellpose": {"sgd": 1},
        "synthetic": {"count": 2, "colour": 1},
    }
    with pytest.raises(ServiceValidationError) as err:
        job_config.training_config_validate(kind="nnunet", config=bad)
    assert err.value.errors == {
        "config.presets": "unknown key",
        "config.device": "must be auto, cpu, cuda or cuda:N",
        "config.nnunet.num_epochs": "must be at least 1",
        "config.nnunet.initial_lr": "must be a number",
        "config.nnunet.augmentation.p_flip": "must be a probability in [0, 1]",
        "config.nnunet.augmentation.p_flop": "unknown key",
        "config.nnunet.plans.patch_size": "must be a list of two integers",
        "config.cellpose": "not used by a nnunet job (it trains nnunet)",
        "config.synthetic.colour": "unknown key",
    }
    with pytest.raises(ServiceValidationError) as err:
        job_config.training_config_validate(kind="cellpose", config={"source": "verified"}, with_snapshot=True)
    assert "config.source" in err.value.errors
    with pytest.raises(ServiceValidationError) as err:
        job_config.training_config_validate(kind="yolo", config={})
    assert "kind" in err.value.errors


# --- artifacts -----------------------------------------------------------------------------


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("unpickled!",))


def test_checkpoint_sanitize_and_safe_check(tmp_path: Path) -> None:
    checkpoint = {
        "network_weights": {"w": torch.ones(2, 2)},
        "optimizer_state": {"state": {}, "param_groups": [{"lr": np.float64(0.01)}]},
        "logging": {"train_losses": [np.float32(0.5)]},
        "_best_ema": np.float64(0.4),
        "current_epoch": 3,
        "init_args": {"configuration": "2d", "fold": 0, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1),
    }
    path = tmp_path / "checkpoint_final.pth"
    torch.save(checkpoint, path)
    with pytest.raises(PackageError, match="weights_only"):
        torch_weights_load(path)
    nnunet_checkpoint_sanitize(path)
    torch_weights_load(path)
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == {
        "network_weights",
        "trainer_name",
        "init_args",
        "inference_allowed_mirroring_axes",
        "current_epoch",
    }
    assert loaded["init_args"]["device"] == "cpu" and torch.equal(loaded["network_weights"]["w"], torch.ones(2, 2))
    digest = artifacts.file_sha256(path)
    nnunet_checkpoint_sanitize(path)  # a sanitised file is left as it is (its sha256 may be recorded)
    assert artifacts.file_sha256(path) == digest
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(PackageError):
        torch_weights_load(evil)
    with pytest.raises(PackageError):  # sanitising never unpickles arbitrary objects either
        nnunet_checkpoint_sanitize(evil)


def _version(project: Any, kind: str, name: str, **kwargs: Any) -> ModelVersion:
    return model_version_files(project, kind, {"weights.bin": b"weights" + name.encode()}, **kwargs)


def test_promote_roll_back_and_tampered_artifacts(tmp_path: Path) -> None:
    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=3, n_erythrocytes=1)
    project = sp.project
    baseline = model_version_baseline(project=project)
    v1 = _version(project, ModelKind.CELLPOSE, "v1")
    v2 = _version(project, ModelKind.CELLPOSE, "v2")
    v3 = _version(project, ModelKind.CELLPOSE, "v3")
    assert v1.artifacts == [{"path": "weights.bin", "sha256": hashlib.sha256(b"weightsv1").hexdigest(), "size": 9}]
    for version in (v1, v2, v3):
        registry.model_version_promote(version=version, user=sp.admin, reason="test")
    statuses = dict(ModelVersion.objects.values_list("pk", "status"))
    assert statuses == {baseline.pk: "active", v1.pk: "retired", v2.pk: "retired", v3.pk: "active"}
    assert model_version_for_project(project=project) == v3
    # roll back walks the chain of replaced versions
    assert registry.model_version_rollback(project=project, kind="cellpose", user=sp.admin) == v2
    assert registry.model_version_rollback(project=project, kind="cellpose", user=sp.admin) == v1
    assert registry.model_version_rollback(project=project, kind="cellpose", user=sp.admin) is None
    assert model_version_for_project(project=project) == baseline
    with pytest.raises(ConflictError):
        registry.model_version_rollback(project=project, kind="cellpose", user=sp.admin)
    assert AuditEvent.objects.filter(action="model.rollback").count() == 3
    # a changed artifact file is refused: by its size at promotion, by its sha256 before loading
    model_object_replace(v2, "weights.bin", b"tampered")
    with pytest.raises(ConflictError, match="sha256"):
        registry.model_version_promote(version=v2, user=sp.admin)
    model_object_replace(v2, "weights.bin", b"weightsvX")  # same size
    with pytest.raises(ConflictError, match="sha256"):
        artifacts.artifacts_local(v2)
    model_object_replace(v3, "fold_9/extra.pth", b"a file nobody registered")
    with pytest.raises(ConflictError, match="changed since it was registered"):
        artifacts.artifacts_check(v3)
    model_object_replace(v1, "weights.bin", None)
    with pytest.raises(ConflictError, match="changed since it was registered"):
        registry.model_version_promote(version=v1, user=sp.admin)
    with pytest.raises(ConflictError, match="missing from storage"):
        artifacts.artifacts_local(v1)
    v3.status = ModelStatus.FAILED
    v3.save()
    with pytest.raises(ConflictError):
        registry.model_version_promote(version=v3, user=sp.admin)


def test_gate_verdict_reads_the_stored_evaluations_against_the_presegmenter() -> None:
    from training.models import DatasetSnapshot

    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=3, n_erythrocytes=1)
    project = sp.project
    baseline = model_version_baseline(project=project)
    zero, good = _version(project, ModelKind.CELLPOSE, "zero"), _version(project, ModelKind.CELLPOSE, "good")
    # nothing evaluated yet: no promotion, and it says why (nothing is evaluated by the read)
    verdict = registry.model_version_gate_verdict(version=zero)
    assert (verdict["promote"], verdict["evaluated"], verdict["baseline"]) == (False, False, baseline.pk)
    assert "has not been evaluated" in verdict["reason"]
    snapshot = DatasetSnapshot.objects.create(project=project, number=1, counts={"test": {"images": 3}})
    for version, f1 in ((baseline, 0.6), (zero, 0.0), (good, 0.8)):
        Evaluation.objects.create(model_version=version, snapshot=snapshot, overall={"f1_50": f1, "dice": f1})
    verdict = registry.model_version_gate_verdict(version=zero)
    assert (verdict["promote"], verdict["evaluated"], verdict["snapshot"]) == (False, True, snapshot.pk)
    assert (verdict["candidate"], verdict["baseline_value"], verdict["metric"]) == (0.0, 0.6, "f1_50")
    assert "improvement -0.6000 < margin" in verdict["reason"]
    assert verdict["baseline_label"] == str(baseline)
    verdict = registry.model_version_gate_verdict(version=good)
    assert verdict["promote"] is True and verdict["improvement"] == pytest.approx(0.2)
    assert Evaluation.objects.count() == 3  # read-only
    # against the version that pre-segments now, once promoted
    registry.model_version_promote(version=good, user=sp.admin)
    assert registry.model_version_gate_verdict(version=zero)["baseline"] == good.pk
    assert registry.model_version_gate_verdict(version=good)["baseline"] is None


# --- evaluation and the gate ---------------------------------------------------------------


def test_evaluate_baseline_on_the_frozen_test_split() -> None:
    sp = synthetic_project(splits={"train": 1, "test": 3}, size=96, n_cells=8, n_erythrocytes=3)
    snapshot = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    baseline = model_version_baseline(project=sp.project)
    evaluation = registry.model_version_evaluate(version=baseline, snapshot=snapshot, device="cpu")
    overall = evaluation.overall
    assert overall["n_images"] == 3 and 0 < overall["dice"] <= 1 and 0 <= overall["dsb"] <= 1
    assert {
        "f1_50",
        "f1_70",
        "best_match_precision_70",
        "ranked_ap50",
        "ranked_ap70",
        "boundary_ranked_ap50",
        "coco_AP",
        "coco_AP50",
        "coco_AP75",
        "coco_AP_S",
        "erythrocyte_fp",
        "micro_f1_70",
    } <= set(overall)
    assert set(evaluation.per_bethesda) == {"IV", "V", "VI"}
    assert [row["image"] for row in evaluation.per_image] == [str(i.pk) for i in sp.images["test"]]
    baseline.refresh_from_db()
    assert baseline.metrics["snapshot"] == snapshot.pk and baseline.metrics["overall"] == overall
    # evaluating again replaces the row for that snapshot
    registry.model_version_evaluate(version=baseline, snapshot=snapshot, device="cpu")
    assert Evaluation.objects.filter(model_version=baseline).count() == 1
    train_only = synthetic_project(splits={"train": 1}, size=64, n_cells=3, n_erythrocytes=1, seed=70)
    empty = snapshots.dataset_snapshot_create(project=train_only.project, user=train_only.admin)
    with pytest.raises(ServiceValidationError):
        registry.model_version_evaluate(version=model_version_baseline(project=train_only.project), snapshot=empty)


def test_gate_compares_with_the_active_model_on_the_same_snapshot(tmp_path: Path) -> None:
    sp = synthetic_project(splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    snapshot = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    active = _version(sp.project, ModelKind.NNUNET, "a")
    registry.model_version_promote(version=active, user=None)
    candidate = _version(sp.project, ModelKind.NNUNET, "b")
    Evaluation.objects.create(model_version=active, snapshot=snapshot, overall={"dsb": 0.40, "dice": 0.8})
    Evaluation.objects.create(model_version=candidate, snapshot=snapshot, overall={"dsb": 0.45, "dice": 0.79})
    policy = schedule.training_policy_update(
        project=sp.project, data={"gate_metric": "dsb", "gate_margin": 0.02, "gate_tolerance": 0.02}, user=sp.admin
    )
    assert registry.baseline_for(candidate) == active
    decision = registry.promotion_gate(version=candidate, baseline=active, snapshot=snapshot, policy=policy)
    assert decision.promote and decision.baseline == 0.40
    policy = schedule.training_policy_update(project=sp.project, data={"gate_margin": 0.1}, user=sp.admin)
    decision = registry.promotion_gate(version=candidate, baseline=active, snapshot=snapshot, policy=policy)
    assert not decision.promote and "margin" in decision.reason
    # an active model that cannot be run on this snapshot blocks the promotion, with the reason
    other = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    Evaluation.objects.create(model_version=candidate, snapshot=other, overall={"dsb": 0.9})
    decision = registry.promotion_gate(version=candidate, baseline=active, snapshot=other, policy=policy)
    assert not decision.promote and "could not be evaluated" in decision.reason


def test_baseline_is_the_current_presegmenter_whatever_its_kind() -> None:
    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=3, n_erythrocytes=1)
    nnunet = _version(sp.project, ModelKind.NNUNET, "n")
    cellpose = _version(sp.project, ModelKind.CELLPOSE, "c")
    registry.model_version_promote(version=nnunet, user=None)
    registry.model_version_promote(version=cellpose, user=None)
    # the last promotion decides, not the kinds' order (which would pick Cellpose too, so nnU-Net again)
    registry.model_version_promote(version=nnunet, user=None)
    assert model_version_for_project(project=sp.project) == nnunet
    assert schedule.training_policy_get(project=sp.project).presegmenter == nnunet
    candidate = _version(sp.project, ModelKind.TWO_STAGE, "t")
    assert registry.baseline_for(candidate) == nnunet
    # rolling back the pre-segmenter's kind hands pre-segmentation to the kinds' order
    registry.model_version_rollback(project=sp.project, kind=ModelKind.NNUNET, user=None)
    assert model_version_for_project(project=sp.project) == cellpose


def _job(sp: Any) -> TrainingJob:
    with mock.patch("core.queue.task_send"):
        return jobs.training_job_start(
            project=sp.project, user=sp.admin, kind="two_stage", config={"preset": "tiny", "device": "cpu"}
        )


def _scored(version: ModelVersion, snapshot: Any, overall: dict[str, float], intervals: Any = None) -> None:
    Evaluation.objects.update_or_create(
        model_version=version, snapshot=snapshot, defaults={"overall": overall, "intervals": intervals or {}}
    )


def test_the_evaluation_stage_reports_each_version_and_test_image() -> None:
    """A job used to sit on one percentage for the minutes evaluation takes (issue #17)."""
    sp = synthetic_project(splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    job = _job(sp)
    nnunet = _version(sp.project, ModelKind.NNUNET, "n", job=job)
    cellpose = _version(sp.project, ModelKind.CELLPOSE, "c", job=job)

    def evaluate(*, version: ModelVersion, snapshot: Any, progress: Any = None, **_: Any) -> Evaluation:
        for image in range(1, 4):
            progress(image, 3)
        _scored(version, snapshot, {"f1_50": 0.5})
        return Evaluation.objects.get(model_version=version, snapshot=snapshot)

    def run(clock: Any) -> list[dict[str, Any]]:
        job_runner = runner.JobRunner(job)
        rows: list[dict[str, Any]] = []

        def write(**_: Any) -> None:
            rows.append(dict(job_runner.progress))
            job_runner._last_write = clock()

        with (
            mock.patch.object(runner, "model_version_evaluate", side_effect=evaluate),
            mock.patch.object(runner, "promotion_gate", side_effect=RuntimeError("stop before the gate")),
            mock.patch.object(runner.time, "monotonic", side_effect=clock),
            mock.patch.object(job_runner, "write", side_effect=write),
            pytest.raises(RuntimeError, match="stop before the gate"),
        ):
            job_runner.evaluate_and_gate([nnunet, cellpose], "cpu")
        return [row for row in rows if row.get("phase") == "evaluate"]

    # a slow model (two seconds between images): every image is written
    ticks = iter(range(0, 1000, 2))
    rows = run(lambda: float(next(ticks)))
    assert [(row["version"], row["version_index"], row["versions"], row["image"], row["images"]) for row in rows] == [
        (str(version), index, 2, image, images)
        for index, version in enumerate([nnunet, cellpose], start=1)
        for image, images in [(None, None), (1, 3), (2, 3), (3, 3)]
    ]
    assert rows[0]["stage"] == "evaluate" and rows[0]["model_version"] == nnunet.pk
    assert rows[1]["version"].startswith("nnU-Net")
    # a fast one: at most one write a second (the first image of each version at once)
    rows = run(lambda: 5.0)
    assert [(row["version_index"], row["image"]) for row in rows] == [(1, None), (1, 1), (2, None), (2, 1)]


def test_a_job_evaluates_all_its_versions_and_promotes_only_the_best() -> None:
    """The nnU-Net version used to be promoted first and then veto the better two-stage one."""
    sp = synthetic_project(splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    job = _job(sp)
    baseline = model_version_baseline(project=sp.project)
    nnunet = _version(sp.project, ModelKind.NNUNET, "n", job=job)
    cellpose = _version(sp.project, ModelKind.CELLPOSE, "c", job=job)
    two_stage = _version(sp.project, ModelKind.TWO_STAGE, "t", job=job)
    snapshot = job.snapshot
    _scored(baseline, snapshot, {"f1_50": 0.30, "dice": 0.60})
    scores = {nnunet.pk: 0.80, cellpose.pk: 0.70, two_stage.pk: 0.86}

    def evaluate(*, version: ModelVersion, snapshot: Any, **_: Any) -> Evaluation:
        _scored(version, snapshot, {"f1_50": scores[version.pk], "dice": 0.90})
        return Evaluation.objects.get(model_version=version, snapshot=snapshot)

    policy = schedule.training_policy_get(project=sp.project)
    with mock.patch.object(runner, "model_version_evaluate", side_effect=evaluate) as evaluated:
        _scored(nnunet, snapshot, {"f1_50": 0.80})
        _scored(cellpose, snapshot, {"f1_50": 0.70})
        _scored(two_stage, snapshot, {"f1_50": 0.86})
        assert (
            registry.model_version_best(versions=[nnunet, cellpose, two_stage], snapshot=snapshot, policy=policy)
            == two_stage
        )
        decisions = runner.JobRunner(job).evaluate_and_gate([nnunet, cellpose, two_stage], "cpu")
    assert evaluated.call_count == 3
    assert list(decisions) == [str(nnunet.pk), str(cellpose.pk), str(two_stage.pk)]
    assert decisions[str(two_stage.pk)]["promoted"] is True
    assert decisions[str(two_stage.pk)]["baseline_version"] == baseline.pk
    assert decisions[str(two_stage.pk)]["metric"] == "f1_50"
    assert decisions[str(nnunet.pk)]["promoted"] is False and "not the best" in decisions[str(nnunet.pk)]["reason"]
    # every entry reads alike: the loser's values against the job's best
    assert {k: decisions[str(nnunet.pk)][k] for k in ("metric", "candidate", "baseline", "best_version")} == {
        "metric": "f1_50",
        "candidate": 0.80,
        "baseline": 0.86,
        "best_version": two_stage.pk,
    }
    assert decisions[str(two_stage.pk)]["candidate"] == 0.86 and decisions[str(two_stage.pk)]["baseline"] == 0.30
    statuses = dict(ModelVersion.objects.values_list("pk", "status"))
    assert statuses[nnunet.pk] == statuses[cellpose.pk] == ModelStatus.CANDIDATE
    assert statuses[two_stage.pk] == ModelStatus.ACTIVE
    assert model_version_for_project(project=sp.project) == two_stage
    # a tie goes to the two-stage model, the kind pre-segmentation prefers
    scores[nnunet.pk] = scores[two_stage.pk]
    _scored(nnunet, snapshot, {"f1_50": 0.86})
    assert registry.model_version_best(versions=[nnunet, two_stage], snapshot=snapshot, policy=policy) == two_stage
    # the primary metric is the policy's; a lower-is-better one ranks the lowest first
    policy = schedule.training_policy_update(
        project=sp.project, data={"gate_metric": "erythrocyte_fp_rate"}, user=sp.admin
    )
    _scored(nnunet, snapshot, {"erythrocyte_fp_rate": 0.01})
    _scored(two_stage, snapshot, {"erythrocyte_fp_rate": 0.05})
    assert registry.model_version_best(versions=[nnunet, two_stage], snapshot=snapshot, policy=policy) == nnunet
    _scored(cellpose, snapshot, {})
    assert registry.model_version_best(versions=[cellpose], snapshot=snapshot, policy=policy) is None


def test_gate_tolerances_use_the_stored_confidence_intervals() -> None:
    """A guarded metric that fell on a tiny test set, within noise, does not veto a better model."""
    sp = synthetic_project(splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    snapshot = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    active = _version(sp.project, ModelKind.NNUNET, "a")
    registry.model_version_promote(version=active, user=None)
    candidate = _version(sp.project, ModelKind.TWO_STAGE, "b")
    policy = schedule.training_policy_update(
        project=sp.project,
        data={"gate_metric": "f1_50", "gate_guarded": ["boundary_ranked_ap50"], "gate_tolerance": 0.02},
        user=sp.admin,
    )
    _scored(active, snapshot, {"f1_50": 0.60, "boundary_ranked_ap50": 0.70}, {"boundary_ranked_ap50": [0.40, 0.95]})
    _scored(candidate, snapshot, {"f1_50": 0.75, "boundary_ranked_ap50": 0.57}, {"boundary_ranked_ap50": [0.30, 0.85]})
    decision = registry.promotion_gate(version=candidate, baseline=active, snapshot=snapshot, policy=policy)
    assert decision.promote and "within the confidence intervals" in decision.reason
    # intervals apart by more than the tolerance: a real regression
    _scored(candidate, snapshot, {"f1_50": 0.75, "boundary_ranked_ap50": 0.20}, {"boundary_ranked_ap50": [0.10, 0.30]})
    decision = registry.promotion_gate(version=candidate, baseline=active, snapshot=snapshot, policy=policy)
    assert not decision.promote and set(decision.regressions) == {"boundary_ranked_ap50"}


@pytest.mark.ml
def test_refinement_job_refines_the_active_nnunet(nnunet_model: Any, settings: Any, tmp_path: Path) -> None:
    """Paper B on paper A's stage 1: the job takes the active nnU-Net as its frozen first stage."""
    settings.TRAINING_DIR = str(tmp_path / "training")
    sp = synthetic_project(splits={"train": 2, "test": 1}, size=96, n_cells=8, n_erythrocytes=3)
    base = registry.model_version_upload(
        project=sp.project,
        kind=ModelKind.NNUNET,
        upload=model_zip(nnunet_model.model_folder),
        config={"use_mirroring": False},
        user=sp.admin,
    )
    with pytest.raises(ServiceValidationError):  # no active nnU-Net yet
        jobs.training_job_start(project=sp.project, user=sp.admin, kind="refinement", config={})
    registry.model_version_promote(version=base, user=sp.admin)
    with mock.patch("core.queue.task_send"):
        job = jobs.training_job_start(
            project=sp.project,
            user=sp.admin,
            kind="refinement",
            config={
                "preset": "tiny",
                "device": "cpu",
                "auto_promote": False,
                "refinement": {"max_epochs": 2, "iterations_per_epoch": 2},
            },
        )
    outcome = runner.training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert outcome["status"] == JobStatus.SUCCEEDED, job.log
    version = ModelVersion.objects.get(job=job)
    assert version.kind == ModelKind.REFINEMENT and version.config == {"base": "nnunet"}
    paths = {a["path"] for a in version.artifacts}
    assert "refinement.pt" in paths and "base/plans.json" in paths
    assert version.status == ModelStatus.CANDIDATE and version.metrics["overall"]["n_images"] == 1
    assert job.result["promotion"][str(version.pk)]["baseline_version"] == base.pk
    assert TrainingJob.objects.get(pk=job.pk).curves["refinement"]


def test_django_admin_schedule_validates_and_keeps_beat_in_step(client: Any) -> None:
    from django_celery_beat.models import PeriodicTask

    from tests.factories import UserFactory

    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=3, n_erythrocytes=1)
    policy = schedule.training_policy_get(project=sp.project)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    url = f"/admin/training/trainingpolicy/{policy.pk}/change/"
    assert client.get(url).status_code == 200
    form = {
        "project": sp.project.pk,
        "schedule_enabled": "on",
        "cron_minute": "15",
        "cron_hour": "4",
        "cron_day_of_week": "*",
        "cron_day_of_month": "*",
        "cron_month_of_year": "*",
        "min_new_images": "7",
        "job_kind": "cellpose",
        "job_config": '{"preset": "tiny"}',
        "auto_promote": "on",
        "gate_metric": "dsb",
        "gate_margin": "",
        "gate_tolerance": "",
        "gate_guarded": "[]",
    }
    bad = client.post(url, form | {"cron_hour": "99", "job_config": '{"cellpose": {"epochs": 1}}'})
    assert bad.status_code == 200 and b"job_config.cellpose.epochs: unknown key" in bad.content
    assert not PeriodicTask.objects.filter(name__contains="training").exists()
    response = client.post(url, form)
    assert response.status_code == 302, response.content[:2000]
    policy.refresh_from_db()
    task = PeriodicTask.objects.get(pk=policy.periodic_task_id)
    assert task.enabled and (task.crontab.minute, task.crontab.hour) == ("15", "4")
    assert task.task == "training.schedule_check"
