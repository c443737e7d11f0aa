"""ExportJob, moved from the annotations app with its table."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ("exportjob",)


def _content_types_forward(apps, schema_editor):
    # Permissions and admin history point at content types: keep them, under the new app.
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="interchange", model__in=MOVED).delete()
    ContentType.objects.filter(app_label="annotations", model__in=MOVED).update(app_label="interchange")


def _content_types_backward(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="annotations", model__in=MOVED).delete()
    ContentType.objects.filter(app_label="interchange", model__in=MOVED).update(app_label="annotations")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("annotations", "0008_models_moved_to_core_review_interchange"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The tables stay where they are: only Django's idea of which app owns them changes.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ExportJob",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("kind", models.CharField(max_length=16)),
                        ("params", models.JSONField(blank=True, default=dict)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("queued", "Queued"),
                                    ("running", "Running"),
                                    ("done", "Done"),
                                    ("failed", "Failed"),
                                ],
                                default="queued",
                                max_length=16,
                            ),
                        ),
                        ("items_total", models.PositiveBigIntegerField(default=0)),
                        ("items_done", models.PositiveBigIntegerField(default=0)),
                        (
                            "file",
                            models.CharField(
                                blank=True, help_text="Storage path (under MEDIA_ROOT/exports).", max_length=500
                            ),
                        ),
                        (
                            "file_name",
                            models.CharField(blank=True, help_text="Name offered to the downloader.", max_length=255),
                        ),
                        ("content_type", models.CharField(blank=True, max_length=64)),
                        ("size_bytes", models.PositiveBigIntegerField(default=0)),
                        ("error", models.TextField(blank=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("expires_at", models.DateTimeField(blank=True, db_index=True, null=True)),
                        (
                            "created_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "project",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="export_jobs",
                                to="annotations.project",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "annotations_exportjob",
                        "ordering": ["-id"],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(_content_types_forward, _content_types_backward),
    ]
