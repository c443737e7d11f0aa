"""Remove server paths from stored project pipelines.

Before pipeline settings were validated, a project admin could store settings such as
``pipeline.nnunet.model_folder`` that made a worker load any file on the server. Such keys are
refused now (at write time and again before every use); this removes the ones already stored,
recording each change in the project's audit log so the admin can see what was dropped.
"""

from typing import Any

from django.db import migrations

# The settings that named files on the machine (inference.backends.settings, "path" fields),
# written out here because a migration must not depend on code that may change.
PATH_KEYS = {"model_folder", "model_file", "nnunet_model_folder", "cellpose_model_file", "weights", "base_artifacts"}
CHECKPOINT_NAMES = {"checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth"}


def _clean(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in PATH_KEYS:
            continue
        if key == "checkpoint" and item not in CHECKPOINT_NAMES:
            continue
        out[key] = _clean(item)
    return out


def remove_paths(apps: Any, schema_editor: Any) -> None:
    Project = apps.get_model("annotations", "Project")
    AuditEvent = apps.get_model("annotations", "AuditEvent")
    for project in Project.objects.exclude(pipeline={}).iterator():
        pipeline = project.pipeline if isinstance(project.pipeline, dict) else {}
        cleaned = {k: (v if k == "split_ratios" else _clean(v)) for k, v in pipeline.items()}
        if cleaned != project.pipeline:
            AuditEvent.objects.create(
                project=project,
                action="project.pipeline_paths_removed",
                target=f"project {project.pk}",
                before={"pipeline": project.pipeline},
                after={"pipeline": cleaned},
            )
            project.pipeline = cleaned
            project.save(update_fields=["pipeline"])


class Migration(migrations.Migration):
    dependencies = [
        ("annotations", "0006_cell_class_restrict"),
    ]

    operations = [migrations.RunPython(remove_paths, migrations.RunPython.noop)]
