"""Model versions name storage objects instead of local folders.

Each version whose local folder still exists inside the platform's model folders
(``TRAINING_DIR`` or ``MODEL_DIR``) has its files uploaded to the default storage under a fresh
``models/<project>/<key>`` prefix; a version whose folder is gone or lay elsewhere keeps no
prefix, and the registry then refuses it with "upload the model again", as before.
Its recorded sha256 are kept: a file that changed on disk is refused when it is fetched.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import migrations, models


def _upload_folders(apps: Any, schema_editor: Any) -> None:
    from django.core.files import File
    from django.core.files.storage import default_storage

    ModelVersion = apps.get_model("training", "ModelVersion")
    roots = [Path(settings.TRAINING_DIR).resolve(), Path(settings.MODEL_DIR).resolve()]
    for version in ModelVersion.objects.exclude(artifact_path="").iterator():
        folder = Path(version.artifact_path).resolve()
        if not any(folder.is_relative_to(root) for root in roots) or not folder.exists() or not version.artifacts:
            continue
        prefix = f"models/{version.project_id}/{uuid.uuid4().hex}"
        try:
            for entry in version.artifacts:
                source = folder if folder.is_file() else folder / entry["path"]
                if source.is_symlink() or not source.is_file():
                    raise FileNotFoundError(entry["path"])
                with source.open("rb") as handle:
                    default_storage.save(f"{prefix}/{entry['path']}", File(handle))
        except (FileNotFoundError, KeyError):
            continue
        version.artifact_prefix = prefix
        version.save(update_fields=["artifact_prefix"])


class Migration(migrations.Migration):
    dependencies = [("training", "0003_evaluation_intervals_presegmenter")]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="artifact_prefix",
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.RunPython(_upload_folders, migrations.RunPython.noop),
        migrations.RemoveField(model_name="modelversion", name="artifact_path"),
    ]
