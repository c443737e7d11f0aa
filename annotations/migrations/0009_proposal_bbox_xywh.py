"""Model proposals were stored with bbox_w / bbox_h holding x_max / y_max (the contour library's
(x_min, y_min, x_max, y_max) read as [x, y, w, h]). Recompute every model-made cell's box from
its polygon. A row whose polygon is not a list of number pairs keeps its box (exports skip it)."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def _box(polygon: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(polygon, list) or not polygon:
        return None
    xs, ys = [], []
    for point in polygon:
        if (
            not isinstance(point, list)
            or len(point) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
        ):
            return None
        xs.append(float(point[0]))
        ys.append(float(point[1]))
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def forwards(apps: Any, schema_editor: Any) -> None:
    Cell = apps.get_model("annotations", "Cell")
    batch: list[Any] = []
    fields = ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    rows = Cell.objects.filter(source="model").only("id", "polygon", *fields).order_by("id")
    for cell in rows.iterator(chunk_size=2000):
        box = _box(cell.polygon)
        if box is None or box == (cell.bbox_x, cell.bbox_y, cell.bbox_w, cell.bbox_h):
            continue
        cell.bbox_x, cell.bbox_y, cell.bbox_w, cell.bbox_h = box
        batch.append(cell)
        if len(batch) >= 2000:
            Cell.objects.bulk_update(batch, fields)
            batch = []
    if batch:
        Cell.objects.bulk_update(batch, fields)


class Migration(migrations.Migration):
    dependencies = [("annotations", "0008_models_moved_to_core_review_interchange")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
