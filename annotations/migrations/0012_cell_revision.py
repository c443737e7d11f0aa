"""Cells by viewport and saves by delta (issue #14): each annotation cell records the revision that
last wrote it, and the bounding box gets indexes for viewport reads.

The revision of existing cells comes from the history: the last revision whose delta upserted the
cell. A cell the history does not name (none should exist) gets the image's current revision, the
safe side: a delta based on an older revision then reports it as changed meanwhile."""

from django.db import migrations, models

BOX_INDEX = "cell_bbox_gist_idx"


def cell_revisions_from_history(apps, schema_editor):
    image_model = apps.get_model("annotations", "Image")
    cell_model = apps.get_model("annotations", "Cell")
    revision_model = apps.get_model("annotations", "AnnotationRevision")
    for image_id, current in image_model.objects.filter(revision__gt=0).values_list("pk", "revision").iterator():
        last: dict[int, int] = {}
        rows = revision_model.objects.filter(image_id=image_id).order_by("revision").values_list("revision", "changes")
        for revision, changes in rows.iterator():
            if not isinstance(changes, dict):
                continue
            for cell in changes.get("upserted", []):
                last[cell["id"]] = revision
        ids = list(cell_model.objects.filter(image_id=image_id, layer="annotation").values_list("pk", flat=True))
        by_revision: dict[int, list[int]] = {}
        for pk in ids:
            by_revision.setdefault(last.get(pk, current), []).append(pk)
        for revision, pks in by_revision.items():
            for start in range(0, len(pks), 5000):
                cell_model.objects.filter(pk__in=pks[start : start + 5000]).update(revision=revision)


# Each image's cells lie in a band of their own (y shifted by image_id * 1e7 px), so one GiST index
# over every image finds one image's cells in a box; the query repeats this expression exactly
# (annotations.selectors.BOX_EXPRESSION) and still filters image_id.
BOX_EXPRESSION = (
    "box(point(bbox_x, bbox_y + image_id * 1e7::float8), "
    "point(bbox_x + bbox_w, bbox_y + bbox_h + image_id * 1e7::float8))"
)


def box_index_create(apps, schema_editor):
    # SQLite has no such index and uses the btree on bbox_x (selectors.cells_in_box).
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX {BOX_INDEX} ON annotations_cell USING gist (({BOX_EXPRESSION}))")


def box_index_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {BOX_INDEX}")


class Migration(migrations.Migration):
    dependencies = [("annotations", "0011_image_tiles")]

    operations = [
        migrations.AddField(model_name="cell", name="revision", field=models.PositiveIntegerField(default=0)),
        migrations.AddIndex(
            model_name="cell", index=models.Index(fields=["image", "layer", "bbox_x"], name="cell_bbox_x_idx")
        ),
        migrations.AddIndex(
            model_name="cell", index=models.Index(fields=["image", "layer", "revision"], name="cell_revision_idx")
        ),
        migrations.RunPython(cell_revisions_from_history, migrations.RunPython.noop),
        migrations.RunPython(box_index_create, box_index_drop),
    ]
