"""The verification models, moved from the annotations app with their tables."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = (
    "verificationsettings",
    "verificationround",
    "review",
    "reviewdecision",
    "reviewcomment",
    "dispute",
    "pairagreement",
    "correctionrecord",
)


def _content_types_forward(apps, schema_editor):
    # Permissions and admin history point at content types: keep them, under the new app.
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="review", model__in=MOVED).delete()
    ContentType.objects.filter(app_label="annotations", model__in=MOVED).update(app_label="review")


def _content_types_backward(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="annotations", model__in=MOVED).delete()
    ContentType.objects.filter(app_label="review", model__in=MOVED).update(app_label="annotations")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("annotations", "0008_models_moved_to_core_review_interchange"),
        ("training", "0002_training_jobs_registry"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The tables stay where they are: only Django's idea of which app owns them changes.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Review",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("assigned", "Assigned (draft)"),
                                    ("submitted", "Submitted"),
                                    ("cancelled", "Cancelled"),
                                ],
                                default="assigned",
                                max_length=16,
                            ),
                        ),
                        (
                            "manual",
                            models.BooleanField(
                                default=False, help_text="Assigned by an admin rather than automatically."
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("submitted_at", models.DateTimeField(blank=True, db_index=True, null=True)),
                        ("cancelled_at", models.DateTimeField(blank=True, null=True)),
                        ("cancel_reason", models.CharField(blank=True, max_length=200)),
                        ("n_accept", models.PositiveIntegerField(default=0)),
                        ("n_reject", models.PositiveIntegerField(default=0)),
                        ("n_edit", models.PositiveIntegerField(default=0)),
                        ("n_add", models.PositiveIntegerField(default=0)),
                        ("consensus_f1", models.FloatField(blank=True, null=True)),
                        ("consensus_mean_iou", models.FloatField(blank=True, null=True)),
                        ("consensus_dice", models.FloatField(blank=True, null=True)),
                        (
                            "assigned_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "image",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="reviews",
                                to="annotations.image",
                            ),
                        ),
                        (
                            "reviewer",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="reviews",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_review",
                        "ordering": ["id"],
                    },
                ),
                migrations.CreateModel(
                    name="ReviewComment",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("text", models.TextField()),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "cell",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="annotations.cell",
                            ),
                        ),
                        (
                            "review",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, related_name="comments", to="review.review"
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_reviewcomment",
                        "ordering": ["id"],
                    },
                ),
                migrations.CreateModel(
                    name="VerificationRound",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("number", models.PositiveIntegerField()),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("open", "Open (experts reviewing)"),
                                    ("disputed", "Consensus done, disputes open"),
                                    ("closed", "Verified"),
                                    ("cancelled", "Cancelled by reopen"),
                                ],
                                default="open",
                                max_length=16,
                            ),
                        ),
                        ("experts_required", models.PositiveSmallIntegerField()),
                        ("quorum", models.PositiveSmallIntegerField()),
                        ("match_iou", models.FloatField()),
                        ("base_revision", models.PositiveIntegerField(help_text="Annotation revision under review.")),
                        ("agreed", models.JSONField(blank=True, default=list)),
                        ("summary", models.JSONField(blank=True, default=dict)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("closed_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "image",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="verification_rounds",
                                to="annotations.image",
                            ),
                        ),
                        (
                            "started_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_verificationround",
                        "ordering": ["image_id", "number"],
                    },
                ),
                migrations.AddField(
                    model_name="review",
                    name="round",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="reviews",
                        to="review.verificationround",
                    ),
                ),
                migrations.CreateModel(
                    name="PairAgreement",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("f1", models.FloatField()),
                        ("mean_iou", models.FloatField(blank=True, null=True)),
                        ("dice", models.FloatField()),
                        ("matched", models.PositiveIntegerField()),
                        ("n_a", models.PositiveIntegerField()),
                        ("n_b", models.PositiveIntegerField()),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "image",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="annotations.image"
                            ),
                        ),
                        (
                            "reviewer_a",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "reviewer_b",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "review_a",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="review.review"
                            ),
                        ),
                        (
                            "review_b",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="review.review"
                            ),
                        ),
                        (
                            "round",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="pair_agreements",
                                to="review.verificationround",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_pairagreement",
                        "ordering": ["id"],
                    },
                ),
                migrations.CreateModel(
                    name="Dispute",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "reason",
                            models.CharField(
                                choices=[
                                    ("quorum", "Fewer experts than the quorum support the cell"),
                                    ("added", "Added by an expert, not confirmed by the quorum"),
                                    ("class", "Contours match, the class does not reach the quorum"),
                                ],
                                max_length=16,
                            ),
                        ),
                        (
                            "annotation",
                            models.JSONField(
                                blank=True, help_text="The annotator's cell {polygon, class_id}.", null=True
                            ),
                        ),
                        ("versions", models.JSONField(default=list)),
                        ("candidate", models.JSONField(blank=True, null=True)),
                        ("candidate_class_id", models.PositiveIntegerField(blank=True, null=True)),
                        (
                            "status",
                            models.CharField(
                                choices=[("open", "Open"), ("resolved", "Resolved")], default="open", max_length=16
                            ),
                        ),
                        ("choice", models.CharField(blank=True, max_length=32)),
                        ("polygon", models.JSONField(blank=True, null=True)),
                        ("resolved_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "cell_class",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="annotations.cellclass",
                            ),
                        ),
                        (
                            "image",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="disputes",
                                to="annotations.image",
                            ),
                        ),
                        (
                            "origin_cell",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="annotations.cell",
                            ),
                        ),
                        (
                            "resolved_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "round",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="disputes",
                                to="review.verificationround",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_dispute",
                        "ordering": ["id"],
                    },
                ),
                migrations.CreateModel(
                    name="CorrectionRecord",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("kept", "Kept as proposed"),
                                    ("edited", "Proposal edited"),
                                    ("added", "Added by a human"),
                                    ("deleted", "Proposal deleted"),
                                    ("ignored", "Proposal never acted upon"),
                                ],
                                max_length=16,
                            ),
                        ),
                        ("iou", models.FloatField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "image",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="correction_records",
                                to="annotations.image",
                            ),
                        ),
                        (
                            "model_version",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="training.modelversion",
                            ),
                        ),
                        (
                            "proposal",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="annotations.cell",
                            ),
                        ),
                        (
                            "verified_cell",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="annotations.cell",
                            ),
                        ),
                        (
                            "round",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="review.verificationround",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_correctionrecord",
                        "ordering": ["id"],
                    },
                ),
                migrations.CreateModel(
                    name="VerificationSettings",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "active_learning_order",
                            models.CharField(
                                choices=[
                                    ("none", "Upload order"),
                                    ("uncertainty", "Model uncertainty (lowest proposal scores first)"),
                                    ("disagreement", "Past expert disagreement (lowest agreement first)"),
                                ],
                                default="none",
                                max_length=16,
                            ),
                        ),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "adjudicators",
                            models.ManyToManyField(blank=True, related_name="+", to=settings.AUTH_USER_MODEL),
                        ),
                        (
                            "project",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="verification_settings",
                                to="annotations.project",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_verificationsettings",
                    },
                ),
                migrations.CreateModel(
                    name="ReviewDecision",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "decision",
                            models.CharField(
                                choices=[
                                    ("accept", "Accept"),
                                    ("reject", "Reject"),
                                    ("edit", "Edit (expert's own contour)"),
                                    ("add", "Added cell"),
                                ],
                                max_length=8,
                            ),
                        ),
                        ("polygon", models.JSONField(blank=True, null=True)),
                        (
                            "cell",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="annotations.cell",
                            ),
                        ),
                        (
                            "cell_class",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="annotations.cellclass",
                            ),
                        ),
                        (
                            "review",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="decisions",
                                to="review.review",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_reviewdecision",
                        "ordering": ["id"],
                        "constraints": [
                            models.UniqueConstraint(
                                condition=models.Q(("cell__isnull", False)),
                                fields=("review", "cell"),
                                name="uniq_decision_per_review_cell",
                            )
                        ],
                    },
                ),
                migrations.AddConstraint(
                    model_name="verificationround",
                    constraint=models.UniqueConstraint(fields=("image", "number"), name="uniq_round_number_per_image"),
                ),
                migrations.AddIndex(
                    model_name="review",
                    index=models.Index(fields=["reviewer", "status"], name="annotations_reviewe_d094d3_idx"),
                ),
                migrations.AddIndex(
                    model_name="review",
                    index=models.Index(fields=["image", "status"], name="annotations_image_i_7f7fbd_idx"),
                ),
                migrations.AddConstraint(
                    model_name="review",
                    constraint=models.UniqueConstraint(
                        condition=models.Q(("status", "cancelled"), _negated=True),
                        fields=("round", "reviewer"),
                        name="uniq_live_review_per_round_reviewer",
                    ),
                ),
                migrations.AddIndex(
                    model_name="correctionrecord",
                    index=models.Index(fields=["image", "kind"], name="annotations_image_i_896d60_idx"),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(_content_types_forward, _content_types_backward),
    ]
