from django.db import migrations, models


def full_snapshots_to_deltas(apps, schema_editor):
    # Earlier rows held the whole layer after each write; as a delta that is "everything present
    # was upserted, and whatever the previous row had but this one lacks was deleted".
    revision_model = apps.get_model("annotations", "AnnotationRevision")
    previous: dict[int, set[int]] = {}
    for row in revision_model.objects.order_by("image_id", "revision"):
        cells = row.changes if isinstance(row.changes, list) else []
        ids = {c["id"] for c in cells}
        before = previous.get(row.image_id, set())
        row.changes = {"upserted": cells, "deleted": sorted(before - ids)}
        row.save(update_fields=["changes"])
        previous[row.image_id] = ids


class Migration(migrations.Migration):
    dependencies = [("annotations", "0004_verification")]

    operations = [
        migrations.AddField(
            model_name="cell",
            name="geometry_digest",
            field=models.CharField(blank=True, default="", max_length=32),
        ),
        migrations.RenameField(model_name="annotationrevision", old_name="snapshot", new_name="changes"),
        migrations.RunPython(full_snapshots_to_deltas, migrations.RunPython.noop),
    ]
