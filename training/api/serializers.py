"""Input parsing and output shapes of the training API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.api.parsing import JSONObjectField
from training.models import (
    DatasetSnapshot,
    DatasetSource,
    JobKind,
    ModelKind,
    ModelVersion,
    TrainingJob,
    TrainingPolicy,
)
from training.services.schedule import POLICY_FIELDS


class JobIn(serializers.Serializer):
    kind = serializers.ChoiceField(choices=JobKind.choices)
    config = serializers.JSONField(
        required=False,
        default=dict,
        help_text=(
            "Hyper-parameters and options, validated; unknown keys are rejected. Sections per trainer: "
            "nnunet (NnUNetTrainConfig), cellpose (CellposeTrainConfig), refinement (RefinementTrainConfig); "
            "options: preset (default|fast|tiny), device (auto|cpu|cuda), evaluate, auto_promote, "
            "cellpose_erythrocytes, base_model_version (refinement), source and synthetic (when the job "
            "snapshots the data)."
        ),
    )
    snapshot = serializers.IntegerField(required=False, allow_null=True, help_text="Train on this snapshot.")


class JobOut(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()
    cancelled_by = serializers.SerializerMethodField()
    snapshot_number = serializers.IntegerField(source="snapshot.number", read_only=True)
    model_versions = serializers.SerializerMethodField()

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "project",
            "kind",
            "status",
            "trigger",
            "snapshot",
            "snapshot_number",
            "config",
            "resolved_config",
            "created_by",
            "cancel_requested",
            "cancelled_by",
            "progress",
            "curves",
            "timings",
            "error",
            "result",
            "model_versions",
            "task_id",
            "worker_host",
            "worker_pid",
            "heartbeat_at",
            "artifact_dir",
            "created_at",
            "started_at",
            "finished_at",
            "log",
        ]

    def get_created_by(self, job: TrainingJob) -> str | None:
        return job.created_by.get_username() if job.created_by else None

    def get_cancelled_by(self, job: TrainingJob) -> str | None:
        return job.cancelled_by.get_username() if job.cancelled_by else None

    def get_model_versions(self, job: TrainingJob) -> list[int]:
        return [v.pk for v in job.model_versions.all()]


class JobBriefOut(JobOut):
    class Meta(JobOut.Meta):
        fields = [f for f in JobOut.Meta.fields if f not in ("log", "curves", "resolved_config")]


class CancelOut(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    cancel_requested = serializers.BooleanField()


class SnapshotIn(serializers.Serializer):
    source = serializers.ChoiceField(  # type: ignore[assignment]  # the API field name
        choices=DatasetSource.choices, default=DatasetSource.VERIFIED
    )
    synthetic = serializers.JSONField(
        required=False,
        default=None,
        help_text=(
            "Synthetic cluster augmentation (paper C), cytoseg.augment.AugmentConfig: count, seed, fill_fraction, "
            "cluster_size, rotation_deg, colour_jitter, brightness, noise_sigma, darken, max_overlap, ..."
        ),
    )


class SnapshotOut(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = [
            "id",
            "project",
            "number",
            "source",
            "options",
            "counts",
            "excluded",
            "sha256",
            "created_by",
            "created_at",
        ]


class SnapshotItemOut(serializers.Serializer):
    image = serializers.IntegerField(source="image_id", allow_null=True)
    file_name = serializers.CharField()
    split = serializers.CharField()
    bethesda = serializers.CharField()
    revision = serializers.IntegerField()
    cell_count = serializers.SerializerMethodField()
    cells_sha256 = serializers.CharField()

    def get_cell_count(self, item: Any) -> int:
        return len(item.cells)


class SnapshotDetailOut(SnapshotOut):
    items = SnapshotItemOut(many=True, read_only=True)

    class Meta(SnapshotOut.Meta):
        fields = [*SnapshotOut.Meta.fields, "items"]


class ModelVersionDetailOut(serializers.ModelSerializer):
    evaluations = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "project",
            "kind",
            "number",
            "name",
            "status",
            "artifacts",
            "config",
            "metrics",
            "job",
            "snapshot",
            "replaced",
            "promoted_at",
            "created_at",
            "evaluations",
        ]

    def get_evaluations(self, version: ModelVersion) -> list[dict[str, Any]]:
        return [
            {
                "id": e.pk,
                "snapshot": e.snapshot_id,
                "overall": e.overall,
                "per_bethesda": e.per_bethesda,
                "intervals": e.intervals,
                "raw_overall": e.raw_overall,
                "seconds": e.seconds,
                "created_at": e.created_at,
            }
            for e in version.evaluations.order_by("-id")
        ]


class RegistryRowOut(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    number = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    job = serializers.IntegerField(allow_null=True)
    snapshot = serializers.IntegerField(allow_null=True)
    replaced = serializers.IntegerField(allow_null=True, help_text="The version a roll back returns to.")
    promoted_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    metrics = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        allow_null=True,
        help_text="Scored on the polygons as pre-segmentation stores them; null: not evaluated on this snapshot.",
    )
    per_bethesda = serializers.DictField(allow_null=True)
    intervals = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True), min_length=2, max_length=2),
        allow_null=True,
        help_text="95% percentile bootstrap interval [low, high] of each metric over the test images.",
    )
    raw_metrics = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        allow_null=True,
        help_text="The same metrics on the raw masks, before they became stored polygons.",
    )
    presegmenter = serializers.BooleanField(help_text="Whether this version pre-segments the project's images now.")


class RegistryOut(serializers.Serializer):
    snapshot = serializers.IntegerField(allow_null=True, help_text="The snapshot whose test split the metrics are on.")
    metric_names = serializers.ListField(child=serializers.CharField())
    presegmenter = serializers.IntegerField(allow_null=True, help_text="The version that pre-segments now.")
    versions = RegistryRowOut(many=True)


class PromoteIn(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


class EvaluateIn(serializers.Serializer):
    snapshot = serializers.IntegerField(required=False, allow_null=True)


class GateVerdictOut(serializers.Serializer):
    """What the promotion gate would decide for a version against the current pre-segmenter."""

    promote = serializers.BooleanField()
    reason = serializers.CharField()
    metric = serializers.CharField()
    candidate = serializers.FloatField(allow_null=True)
    baseline = serializers.IntegerField(allow_null=True, help_text="The current pre-segmenter (None: no other).")
    baseline_label = serializers.CharField(allow_null=True)
    baseline_value = serializers.FloatField(allow_null=True)
    improvement = serializers.FloatField(allow_null=True)
    margin = serializers.FloatField()
    tolerance = serializers.FloatField()
    regressions = serializers.DictField(child=serializers.FloatField())
    guarded = serializers.ListField(child=serializers.CharField())
    version = serializers.IntegerField()
    snapshot = serializers.IntegerField(allow_null=True)
    evaluated = serializers.BooleanField()
    candidate_metrics = serializers.DictField(child=serializers.FloatField(allow_null=True), allow_null=True)
    baseline_metrics = serializers.DictField(child=serializers.FloatField(allow_null=True), allow_null=True)


class RollbackIn(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ModelKind.choices)


class RollbackOut(serializers.Serializer):
    rolled_back = serializers.IntegerField()
    active = serializers.IntegerField(allow_null=True)


class PolicyOut(serializers.ModelSerializer):
    new_images = serializers.SerializerMethodField()
    live_job = serializers.SerializerMethodField()

    class Meta:
        model = TrainingPolicy
        fields = [
            "project",
            *POLICY_FIELDS,
            "presegmenter",
            "periodic_task",
            "last_check_at",
            "last_check",
            "new_images",
            "live_job",
            "updated_at",
        ]

    def get_new_images(self, policy: TrainingPolicy) -> int:
        from training.services.schedule import new_image_count

        return new_image_count(project=policy.project, source=policy.job_config.get("source", DatasetSource.VERIFIED))

    def get_live_job(self, policy: TrainingPolicy) -> int | None:
        job = policy.project.training_jobs.filter(status__in=["queued", "running"]).first()
        return job.pk if job else None


class CompletionIn(serializers.Serializer):
    images = serializers.ListField(child=serializers.IntegerField(), min_length=1, max_length=10_000)
    complete = serializers.BooleanField(default=True)


class ModelVersionIn(serializers.Serializer):
    """A model upload (multipart): the package as ``file``, never a server path."""

    kind = serializers.ChoiceField(choices=ModelKind.choices)
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
    activate = serializers.BooleanField(required=False, default=False)
    config = JSONObjectField(required=False, default=dict, help_text="Inference settings of this version.")
    file = serializers.FileField(
        required=False,
        allow_empty_file=False,
        help_text="A .zip of the model folder (nnU-Net, two-stage, refinement) or one .pth file (Cellpose).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {
                    key: (
                        "server paths are not accepted: upload the model's files as `file` (multipart)"
                        if key == "artifact_path"
                        else "unknown field"
                    )
                    for key in unknown
                }
            )
        return attrs


class ModelVersionOut(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "project",
            "kind",
            "number",
            "name",
            "artifacts",
            "config",
            "metrics",
            "status",
            "created_at",
        ]
