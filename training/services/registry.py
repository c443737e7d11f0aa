"""The model registry, the one front door for model versions: register (uploads and training
outputs), the files' checks, the settings a version runs with, the active version of a project,
evaluation on a snapshot's frozen test split, the promotion gate, promote and roll back."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files import File
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotations.models import Project, Split
from annotations.services.audit import audit_record
from core.errors import ConflictError, ServiceValidationError
from core.events import event_emit
from cytoseg.augment import cells_from_polygons
from cytoseg.backends import backend_settings_errors
from cytoseg.backends.packages import (
    PACKAGE_KINDS,
    PackageError,
    archive_unpack,
    folder_remove,
    package_prepare,
    package_single_file,
)
from cytoseg.contours import instances_as_stored
from cytoseg.evaluation import (
    DEFAULT_GUARDED,
    LOWER_IS_BETTER,
    EvalImage,
    GateDecision,
    evaluate_backend,
    gate_decide,
)
from training.models import (
    DatasetSnapshot,
    Evaluation,
    ModelKind,
    ModelStatus,
    ModelVersion,
    SnapshotItem,
    TrainingJob,
    TrainingPolicy,
)
from training.selectors import PRESEGMENT_KINDS, presegmenter_find
from training.services.artifacts import (
    artifacts_check,
    artifacts_delete,
    artifacts_for,
    artifacts_prefix_new,
    artifacts_upload,
)
from training.services.config import device_for
from training.snapshots import snapshot_item_rgb

logger = logging.getLogger(__name__)


def model_version_baseline(*, project: Project) -> ModelVersion:
    """The watershed baseline version of a project (needs no training; used until a model is)."""
    version, _ = ModelVersion.objects.get_or_create(
        project=project,
        kind=ModelKind.WATERSHED,
        number=1,
        defaults={"name": "Watershed baseline (no training)", "status": ModelStatus.ACTIVE},
    )
    return version


def model_version_for_project(*, project: Project) -> ModelVersion:
    """The version pre-segmentation uses: the project's chosen pre-segmenter (the last version
    promoted, by the gate or an admin) while it is active; else the active versions in the order
    of ``PRESEGMENT_KINDS``; else the watershed baseline."""
    current = presegmenter_find(project_id=project.pk)
    if current is not None:
        return current
    return model_version_baseline(project=project)


def model_version_settings(*, version: ModelVersion) -> dict[str, Any]:
    """The backend settings ``version`` runs with: the project's settings for its kind,
    overridden by the version's own.

    Checked against the backend's schema with server paths refused, so that settings stored
    before they were validated can never point a worker at a file.
    """
    project_settings = (version.project.pipeline or {}).get(version.kind) or {}
    merged = {**(project_settings if isinstance(project_settings, dict) else {}), **(version.config or {})}
    errors = backend_settings_errors(version.kind, merged, allow_paths=False)
    if errors:
        problems = "; ".join(f"{key or 'settings'}: {message}" for key, message in sorted(errors.items()))
        raise ConflictError(f"The settings of {version} are invalid ({problems}); correct the project's pipeline.")
    return merged


def model_version_upload(
    *,
    project: Project,
    kind: str,
    upload: File | None,
    name: str = "",
    config: Any = None,
    user: User | None,
    activate: bool = False,
) -> ModelVersion:
    """Register a model the admin uploads: a .zip of the model folder, or a single torch file.

    The package is unpacked into the platform's model storage (never read from a path anyone
    names), every torch file must load weights-only, nnU-Net's plans may only name allowed
    classes, and the files' sha256 are recorded and checked again before every use. ``config``
    holds the version's inference settings, validated like a project's pipeline.
    """
    config = {} if config is None else config
    errors: dict[str, str] = {}
    if kind not in ModelKind.values:
        errors["kind"] = f"must be one of {', '.join(ModelKind.values)}"
    else:
        settings_problems = backend_settings_errors(kind, config, allow_paths=False)
        errors.update({f"config.{k}" if k else "config": v for k, v in settings_problems.items()})
        if kind in PACKAGE_KINDS and upload is None:
            errors["file"] = f"is required: a {kind} model is uploaded as a .zip of its folder" + (
                " or a single .pth file" if kind in ("cellpose", "refinement") else ""
            )
        elif kind not in PACKAGE_KINDS and upload is not None:
            errors["file"] = f"a {kind} model has no files"
        elif upload is not None and (upload.size or 0) > settings.MODEL_UPLOAD_MAX_BYTES:
            errors["file"] = f"is larger than {settings.MODEL_UPLOAD_MAX_BYTES} bytes"
    if len(name) > 200:
        errors["name"] = "must be at most 200 characters"
    if errors:
        raise ServiceValidationError("Invalid model version.", errors)
    folder = _package_store(kind=kind, upload=upload, config=config) if upload is not None else None
    try:
        with transaction.atomic():
            version = model_version_register(
                project=project,
                kind=kind,
                name=name,
                folder=folder,
                config=config,
                user=user,
                status=ModelStatus.ACTIVE if activate else ModelStatus.CANDIDATE,
            )
            audit_record(
                project=project,
                actor=user,
                action="model.register",
                target=str(version),
                after={"files": len(version.artifacts), "status": version.status, "config": version.config},
            )
            return version
    finally:
        if folder is not None:
            folder_remove(folder)  # scratch: the files are in storage now, or refused


def _package_store(*, kind: str, upload: File, config: Mapping[str, Any]) -> Path:
    """Unpack (or copy) an upload into a fresh scratch folder, checked."""
    key = uuid.uuid4().hex
    staging = Path(settings.MODEL_DIR) / "staging" / key
    staging.mkdir(parents=True)
    file_name = Path(upload.name or "upload").name
    try:
        upload.seek(0)
        # By name: a .pth file is itself a zip archive (torch's format), never to be unpacked.
        if file_name.lower().endswith(".zip"):
            archive_unpack(upload, staging, max_bytes=settings.MODEL_UPLOAD_MAX_BYTES)
        else:
            with (staging / package_single_file(kind, file_name)).open("xb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
        package_prepare(kind, staging, config)
        return staging
    except PackageError as exc:
        folder_remove(staging)
        raise ServiceValidationError("The model files were refused.", {"file": str(exc)}) from exc
    except BaseException:
        folder_remove(staging)
        raise


def model_version_register(
    *,
    project: Project,
    kind: str,
    name: str,
    folder: Path | None,
    config: dict[str, Any],
    user: User | None,
    status: str,
    job: TrainingJob | None = None,
) -> ModelVersion:
    """The registry row of a checked package (numbered per project and kind; one active per kind).

    ``folder`` (local scratch) is uploaded to the default storage first, so that the row only
    ever names objects that exist; if the row is not written, the objects are deleted again.
    """
    prefix = artifacts_prefix_new(project_id=project.pk) if folder is not None else ""
    artifacts = artifacts_upload(folder=folder, prefix=prefix) if folder is not None else []
    try:
        return _version_create(
            project=project,
            kind=kind,
            name=name,
            prefix=prefix,
            artifacts=artifacts,
            config=config,
            user=user,
            status=status,
            job=job,
        )
    except BaseException:
        artifacts_delete(names=[f"{prefix}/{a['path']}" for a in artifacts])
        raise


def _version_create(
    *,
    project: Project,
    kind: str,
    name: str,
    prefix: str,
    artifacts: list[dict[str, Any]],
    config: dict[str, Any],
    user: User | None,
    status: str,
    job: TrainingJob | None,
) -> ModelVersion:
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        last = ModelVersion.objects.filter(project=project, kind=kind).aggregate(top=Max("number"))
        version = ModelVersion.objects.create(
            project=project,
            kind=kind,
            number=(last["top"] or 0) + 1,
            name=name,
            artifact_prefix=prefix,
            artifacts=artifacts,
            config=config,
            status=status,
            promoted_at=timezone.now() if status == ModelStatus.ACTIVE else None,
            created_by=user,
            job=job,
            snapshot=job.snapshot if job is not None else None,
        )
        if status == ModelStatus.ACTIVE:
            # One active version per kind: pre-segmentation picks among kinds by preference.
            ModelVersion.objects.filter(project=project, kind=kind, status=ModelStatus.ACTIVE).exclude(
                pk=version.pk
            ).update(status=ModelStatus.RETIRED)
    return version


def _eval_images(items: list[SnapshotItem], should_cancel: Callable[[], bool] | None) -> Iterable[EvalImage]:
    for item in items:
        if should_cancel is not None and should_cancel():
            from cytoseg.trainers import TrainingCancelled

            raise TrainingCancelled("cancelled during evaluation")
        if item.image is None:
            logger.warning("snapshot %s: image %s was deleted; not evaluated", item.snapshot_id, item.file_name)
            continue
        rgb = snapshot_item_rgb(item)  # a slide's region: its crop of the original
        gt = cells_from_polygons(
            [c["polygon"] for c in item.cells], [c["label"] for c in item.cells], height=item.height, width=item.width
        )
        yield EvalImage(
            key=str(item.image_id),
            group=item.bethesda or "unassigned",
            image=rgb,
            gt=gt,
            gt_labels=[c.label for c in gt],
        )


def model_version_evaluate(
    *,
    version: ModelVersion,
    snapshot: DatasetSnapshot,
    device: str | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Evaluation:
    """Run ``version`` on the snapshot's test images (ground truth: the snapshot's cells) and
    store the metrics (``Evaluation``, mirrored into ``version.metrics``). ``progress(image,
    images)`` is called before each test image is predicted (see ``evaluate_backend``)."""
    from cytoseg.backends import backend_get

    if snapshot.project_id != version.project_id:
        raise ServiceValidationError("Invalid evaluation.", {"snapshot": "not a snapshot of the model's project"})
    items = list(snapshot.items.filter(split=Split.TEST).select_related("image").order_by("id"))
    if not items:
        raise ServiceValidationError("Nothing to evaluate on.", {"snapshot": "the snapshot has no test images"})
    backend = backend_get(
        name=version.kind,
        artifacts=artifacts_for(version),
        settings=model_version_settings(version=version),
        device=device or device_for({}),
    )
    min_area = float(settings.PRESEGMENT_MIN_AREA)
    result = evaluate_backend(
        backend,
        _eval_images(items, should_cancel),
        # what pre-segmentation stores, and so what doctors receive, is what is scored
        stored=lambda instances, height, width: instances_as_stored(instances, height, width, min_area=min_area),
        progress=progress,
        total=len(items),
    )
    seconds = float(result.timings.get("predict", 0.0) + result.timings.get("metrics", 0.0))
    evaluation, _ = Evaluation.objects.update_or_create(
        model_version=version,
        snapshot=snapshot,
        defaults={
            "overall": result.overall,
            "per_bethesda": result.per_group,
            "per_image": result.per_image,
            "intervals": result.intervals,
            "raw_overall": result.raw,
            "seconds": seconds,
        },
    )
    version.metrics = {
        "snapshot": snapshot.pk,
        "evaluation": evaluation.pk,
        "overall": result.overall,
        "per_bethesda": result.per_group,
        "per_image": result.per_image,
        "intervals": result.intervals,
        "raw": result.raw,
        "timings": result.timings,
    }
    version.save(update_fields=["metrics"])
    return evaluation


def baseline_for(version: ModelVersion) -> ModelVersion | None:
    """What a candidate must beat: the version pre-segmentation uses now (the watershed
    baseline in a fresh project), whatever its kind."""
    current = model_version_for_project(project=version.project)
    return None if current.pk == version.pk else current


def gate_metric_value(evaluation: Evaluation | None, metric: str) -> float | None:
    """``metric`` of an evaluation (None when missing), higher-is-better made comparable."""
    if evaluation is None:
        return None
    value = evaluation.overall.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return -float(value) if metric in LOWER_IS_BETTER else float(value)


def gate_settings(policy: TrainingPolicy) -> tuple[str, float, float, tuple[str, ...]]:
    """The gate's (primary metric, margin, tolerance, guarded metrics): the project's policy
    where it sets them, else the ``TRAINING_GATE_*`` settings."""
    metric = policy.gate_metric or settings.TRAINING_GATE_METRIC
    margin = settings.TRAINING_GATE_MARGIN if policy.gate_margin is None else policy.gate_margin
    tolerance = settings.TRAINING_GATE_TOLERANCE if policy.gate_tolerance is None else policy.gate_tolerance
    guarded = tuple(policy.gate_guarded) if policy.gate_guarded else DEFAULT_GUARDED
    return metric, float(margin), float(tolerance), guarded


def model_version_best(
    *, versions: Sequence[ModelVersion], snapshot: DatasetSnapshot, policy: TrainingPolicy
) -> ModelVersion | None:
    """The best of ``versions`` on ``snapshot`` by the gate's primary metric (ties go to the
    kind that comes first in ``PRESEGMENT_KINDS``, the two-stage model); None when none of
    them has a value for it. The versions must have been evaluated on the snapshot."""
    metric = gate_settings(policy)[0]
    evaluations = {
        e.model_version_id: e
        for e in Evaluation.objects.filter(snapshot=snapshot, model_version__in=[v.pk for v in versions])
    }
    order: dict[str, int] = {str(kind): i for i, kind in enumerate(PRESEGMENT_KINDS)}
    scored = [(gate_metric_value(evaluations.get(v.pk), metric), v) for v in versions]
    ranked = sorted(
        ((value, v) for value, v in scored if value is not None),
        key=lambda pair: (-pair[0], order.get(pair[1].kind, len(order)), pair[1].pk),
    )
    return ranked[0][1] if ranked else None


def promotion_gate(
    *,
    version: ModelVersion,
    baseline: ModelVersion | None,
    snapshot: DatasetSnapshot,
    policy: TrainingPolicy,
    device: str | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: Callable[[ModelVersion, int, int | None], None] | None = None,
) -> GateDecision:
    """The gate's decision for ``version`` against ``baseline``, both evaluated on ``snapshot``
    (the baseline is evaluated now when it has not been on this snapshot yet; ``progress(version,
    image, images)`` then reports each of its test images)."""

    def progress_of(evaluated: ModelVersion) -> Callable[[int, int | None], None] | None:
        if progress is None:
            return None
        return lambda image, images: progress(evaluated, image, images)

    metric, margin, tolerance, guarded = gate_settings(policy)
    candidate = Evaluation.objects.filter(model_version=version, snapshot=snapshot).first()
    if candidate is None:
        candidate = model_version_evaluate(
            version=version,
            snapshot=snapshot,
            device=device,
            should_cancel=should_cancel,
            progress=progress_of(version),
        )
    baseline_metrics: dict[str, Any] | None = None
    baseline_intervals: dict[str, Any] | None = None
    if baseline is not None:
        done = Evaluation.objects.filter(model_version=baseline, snapshot=snapshot).first()
        if done is None:
            try:
                done = model_version_evaluate(
                    version=baseline,
                    snapshot=snapshot,
                    device=device,
                    should_cancel=should_cancel,
                    progress=progress_of(baseline),
                )
            except Exception as exc:
                from cytoseg.trainers import TrainingCancelled

                if isinstance(exc, TrainingCancelled):
                    raise
                logger.warning("Baseline %s could not be evaluated: %s", baseline, exc)
                decision = gate_decide(
                    candidate=candidate.overall,
                    baseline=None,
                    metric=metric,
                    margin=margin,
                    tolerance=tolerance,
                    guarded=guarded,
                )
                decision.reason = f"the active model {baseline} could not be evaluated: {exc}"
                return decision
        baseline_metrics = done.overall
        baseline_intervals = done.intervals
    return gate_decide(
        candidate=candidate.overall,
        baseline=baseline_metrics,
        metric=metric,
        margin=margin,
        tolerance=tolerance,
        guarded=guarded,
        candidate_intervals=candidate.intervals,
        baseline_intervals=baseline_intervals,
    )


def model_version_gate_verdict(*, version: ModelVersion) -> dict[str, Any]:
    """What the promotion gate would decide for ``version`` against the current pre-segmenter,
    from the evaluations already stored (read-only: evaluates nothing) on the reference snapshot
    (else the version's own). ``evaluated`` is False when either side lacks an evaluation there;
    the decision then does not promote and ``reason`` says what is missing."""
    from training.selectors import reference_snapshot

    policy = TrainingPolicy.objects.filter(project_id=version.project_id).first() or TrainingPolicy(
        project_id=version.project_id
    )
    metric, margin, tolerance, guarded = gate_settings(policy)
    current = presegmenter_find(project_id=version.project_id)
    if current is None:  # a fresh project: the watershed baseline, when it was created
        current = ModelVersion.objects.filter(project_id=version.project_id, kind=ModelKind.WATERSHED, number=1).first()
    baseline = None if current is not None and current.pk == version.pk else current
    snapshot = reference_snapshot(project_id=version.project_id) or version.snapshot
    evaluations: dict[int, Evaluation] = {}
    if snapshot is not None:
        ids = [version.pk] + ([baseline.pk] if baseline is not None else [])
        evaluations = {
            e.model_version_id: e for e in Evaluation.objects.filter(snapshot=snapshot, model_version_id__in=ids)
        }
    candidate = evaluations.get(version.pk)
    base = evaluations.get(baseline.pk) if baseline is not None else None
    decision = gate_decide(
        candidate=candidate.overall if candidate else {},
        baseline=base.overall if base else None,
        metric=metric,
        margin=margin,
        tolerance=tolerance,
        guarded=guarded,
        candidate_intervals=candidate.intervals if candidate else None,
        baseline_intervals=base.intervals if base else None,
    )
    where = f"snapshot #{snapshot.number}" if snapshot is not None else "any snapshot"
    if candidate is None:
        decision.reason = f"{version} has not been evaluated on {where}: evaluate it first"
    elif baseline is not None and base is None:
        decision.reason = f"the current pre-segmenter {baseline} has not been evaluated on {where}"
    elif baseline is None and decision.reason.startswith("the active model has no value"):
        decision.reason = "there is no other model to compare with"
    verdict = decision.to_dict()
    verdict["baseline_value"] = verdict.pop("baseline")
    return verdict | {
        "version": version.pk,
        "baseline": baseline.pk if baseline is not None else None,
        "baseline_label": str(baseline) if baseline is not None else None,
        "snapshot": snapshot.pk if snapshot is not None else None,
        "evaluated": candidate is not None and (baseline is None or base is not None),
        "guarded": list(guarded),
        "candidate_metrics": _numbers(candidate.overall) if candidate else None,
        "baseline_metrics": _numbers(base.overall) if base else None,
    }


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    return {k: v for k, v in metrics.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def model_version_promote(
    *, version: ModelVersion, user: User | None, reason: str = "", decision: GateDecision | None = None
) -> ModelVersion:
    """Make ``version`` the active model of its kind (the previous one is retired and remembered
    for a rollback) and the project's pre-segmenter. Artifacts are checked against their
    recorded sha256 first."""
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=version.project_id).first()
        version.refresh_from_db()
        if version.status == ModelStatus.FAILED:
            raise ConflictError(f"{version} failed and cannot be promoted.", {"status": version.status})
        policy, _ = TrainingPolicy.objects.get_or_create(project_id=version.project_id)
        if version.status == ModelStatus.ACTIVE:
            if policy.presegmenter_id != version.pk:
                TrainingPolicy.objects.filter(pk=policy.pk).update(presegmenter=version)
            return version
        artifacts_check(version)
        previous = (
            ModelVersion.objects.filter(project_id=version.project_id, kind=version.kind, status=ModelStatus.ACTIVE)
            .exclude(pk=version.pk)
            .order_by("-promoted_at", "-id")
        )
        replaced = previous.first()
        previous.update(status=ModelStatus.RETIRED)
        version.status = ModelStatus.ACTIVE
        version.promoted_at = timezone.now()
        version.replaced = replaced
        version.save(update_fields=["status", "promoted_at", "replaced"])
        TrainingPolicy.objects.filter(pk=policy.pk).update(presegmenter=version)
        audit_record(
            project=version.project,
            actor=user,
            action="model.promote",
            target=str(version),
            before={"active": replaced.pk if replaced else None},
            after={"active": version.pk, "reason": reason, "gate": decision.to_dict() if decision else None},
        )
        event_emit(
            project_id=version.project_id,
            event="model.promoted",
            data={
                "model_version": version.pk,
                "kind": version.kind,
                "number": version.number,
                "replaced": replaced.pk if replaced else None,
            },
        )
    return version


def model_version_rollback(*, project: Project, kind: str, user: User | None) -> ModelVersion | None:
    """Retire the active ``kind`` model and reactivate the one it replaced (None when there was
    none: pre-segmentation then falls back to the next kind or the baseline)."""
    if kind not in ModelKind.values:
        raise ServiceValidationError("Invalid rollback.", {"kind": f"must be one of {', '.join(ModelKind.values)}"})
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        current = (
            ModelVersion.objects.filter(project=project, kind=kind, status=ModelStatus.ACTIVE)
            .order_by("-promoted_at", "-id")
            .first()
        )
        if current is None:
            raise ConflictError(f"The project has no active {kind} model to roll back.")
        target = current.replaced
        if target is not None and target.status == ModelStatus.FAILED:
            target = None
        if target is not None:
            artifacts_check(target)
        current.status = ModelStatus.RETIRED
        current.save(update_fields=["status"])
        if target is not None:
            target.status = ModelStatus.ACTIVE
            target.promoted_at = timezone.now()
            target.save(update_fields=["status", "promoted_at"])
        # The pre-segmenter follows its kind's roll back (none: the kinds' order decides).
        TrainingPolicy.objects.filter(project=project, presegmenter=current).update(presegmenter=target)
        audit_record(
            project=project,
            actor=user,
            action="model.rollback",
            target=str(current),
            before={"active": current.pk},
            after={"active": target.pk if target else None},
        )
        event_emit(
            project_id=project.pk,
            event="model.rolled_back",
            data={"kind": kind, "retired": current.pk, "active": target.pk if target else None},
        )
    return target


def refinement_base(*, project: Project, version_id: int | None) -> ModelVersion:
    queryset = ModelVersion.objects.filter(project=project, kind=ModelKind.NNUNET)
    base = (
        queryset.filter(pk=version_id).first()
        if version_id is not None
        else queryset.filter(status=ModelStatus.ACTIVE).order_by("-promoted_at", "-id").first()
    )
    if base is None or not base.artifact_prefix:
        what = f"nnU-Net version {version_id}" if version_id is not None else "an active nnU-Net model"
        raise ServiceValidationError(
            "Refinement needs a first stage.", {"config.base_model_version": f"the project has no {what}"}
        )
    return base
