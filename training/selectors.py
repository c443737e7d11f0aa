"""Reads of the training app. Access goes through ``annotations.selectors`` (404 for
non-members, 403 for a missing capability): reading needs ``view``, everything that trains,
promotes, schedules or downloads data sets needs ``train``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from annotations.selectors import UserLike, project_get_for_user
from core.errors import NotFoundError
from cytoseg.evaluation import METRICS
from training.models import (
    DatasetSnapshot,
    Evaluation,
    ModelKind,
    ModelStatus,
    ModelVersion,
    TrainingJob,
    TrainingPolicy,
)

# Preference order of the kinds a project can pre-segment with.
PRESEGMENT_KINDS = (
    ModelKind.TWO_STAGE,
    ModelKind.CELLPOSE,
    ModelKind.NNUNET,
    ModelKind.REGION_GROWING,
    ModelKind.WATERSHED,
)


def presegmenter_find(*, project_id: int) -> ModelVersion | None:
    """The version pre-segmentation uses: the project's chosen pre-segmenter (the last version
    promoted, by the gate or an admin) while it is active; else the active versions in the order
    of ``PRESEGMENT_KINDS``; None in a project that has none yet (the registry then creates the
    watershed baseline)."""
    chosen = (
        TrainingPolicy.objects.filter(project_id=project_id, presegmenter__status=ModelStatus.ACTIVE)
        .select_related("presegmenter__project")
        .first()
    )
    if chosen is not None and chosen.presegmenter is not None:
        return chosen.presegmenter
    active = {
        v.kind: v
        for v in ModelVersion.objects.filter(project_id=project_id, status=ModelStatus.ACTIVE)
        .select_related("project")
        .order_by("id")
    }
    for kind in PRESEGMENT_KINDS:
        if kind in active:
            return active[kind]
    return None


def training_job_get_for_user(*, user: UserLike, job_id: int, capability: str = "view") -> TrainingJob:
    job = TrainingJob.objects.select_related("project", "snapshot", "created_by").filter(pk=job_id).first()
    if job is None:
        raise NotFoundError("No such training job.")
    project_get_for_user(user=user, project_id=job.project_id, capability=capability)
    return job


def model_version_get_for_user(*, user: UserLike, version_id: int, capability: str = "view") -> ModelVersion:
    version = ModelVersion.objects.select_related("project", "job", "snapshot").filter(pk=version_id).first()
    if version is None:
        raise NotFoundError("No such model version.")
    project_get_for_user(user=user, project_id=version.project_id, capability=capability)
    return version


def snapshot_get_for_user(*, user: UserLike, snapshot_id: int, capability: str = "view") -> DatasetSnapshot:
    snapshot = DatasetSnapshot.objects.select_related("project").filter(pk=snapshot_id).first()
    if snapshot is None:
        raise NotFoundError("No such dataset snapshot.")
    project_get_for_user(user=user, project_id=snapshot.project_id, capability=capability)
    return snapshot


def training_job_list(*, project_id: int, status: str | None = None, kind: str | None = None) -> QuerySet[TrainingJob]:
    queryset = TrainingJob.objects.filter(project_id=project_id).select_related("snapshot", "created_by")
    if status:
        queryset = queryset.filter(status=status)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset.order_by("-id")


def snapshot_list(*, project_id: int) -> QuerySet[DatasetSnapshot]:
    return DatasetSnapshot.objects.filter(project_id=project_id).order_by("-id")


def reference_snapshot(*, project_id: int) -> DatasetSnapshot | None:
    """The snapshot models are compared on by default: the newest one anything was evaluated on."""
    evaluation = Evaluation.objects.filter(snapshot__project_id=project_id).order_by("-snapshot_id").first()
    return evaluation.snapshot if evaluation is not None else None


def registry_table(
    *, project_id: int, snapshot: DatasetSnapshot | None = None, kind: str | None = None
) -> dict[str, Any]:
    """Every model version of the project with its metrics on one snapshot's test split, side
    by side (``metrics`` is None for a version not evaluated on it), with their 95% bootstrap
    ``intervals``, the raw-mask figures (``raw_metrics``) and which one pre-segments now."""
    snapshot = snapshot or reference_snapshot(project_id=project_id)
    versions = ModelVersion.objects.filter(project_id=project_id).select_related("job")
    if kind:
        versions = versions.filter(kind=kind)
    evaluations: dict[int, Evaluation] = {}
    if snapshot is not None:
        evaluations = {
            e.model_version_id: e
            for e in Evaluation.objects.filter(snapshot=snapshot, model_version__project_id=project_id).only(
                "model_version_id", "overall", "per_bethesda", "intervals", "raw_overall", "created_at"
            )
        }
    current = presegmenter_find(project_id=project_id)
    presegmenter = current.pk if current is not None else None
    rows = []
    for version in versions.order_by("kind", "-number"):
        evaluation = evaluations.get(version.pk)
        rows.append(
            {
                "id": version.pk,
                "kind": version.kind,
                "number": version.number,
                "name": version.name,
                "status": version.status,
                "job": version.job_id,
                "snapshot": version.snapshot_id,
                "replaced": version.replaced_id,
                "promoted_at": version.promoted_at,
                "created_at": version.created_at,
                "metrics": {m: evaluation.overall.get(m) for m in METRICS} if evaluation else None,
                "per_bethesda": evaluation.per_bethesda if evaluation else None,
                "intervals": {m: evaluation.intervals[m] for m in METRICS if m in evaluation.intervals}
                if evaluation
                else None,
                "raw_metrics": {m: evaluation.raw_overall.get(m) for m in METRICS}
                if evaluation and evaluation.raw_overall
                else None,
                "presegmenter": version.pk == presegmenter,
            }
        )
    return {
        "snapshot": snapshot.pk if snapshot else None,
        "metric_names": list(METRICS),
        "presegmenter": presegmenter,
        "versions": rows,
    }
