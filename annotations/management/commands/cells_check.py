"""Find stored cells whose polygon is not what storage promises (numbers only, at least three
points). The API refuses such polygons now, but rows written before it did (``[[true, false],
...]`` was once accepted) are left out of every export (named in the COCO export's
``skipped_cells``). This lists them so that someone can redraw them in the editor: the command
does not edit annotation layers itself, because every change to a layer goes through its
revisions and history."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from annotations.models import Cell
from cytoseg.geometry import polygon_is_numeric


class Command(BaseCommand):
    help = "List the cells whose stored polygon is malformed (exports leave them out)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", type=int, default=None, help="only this project")

    def handle(self, *args: Any, **options: Any) -> None:
        cells = Cell.objects.select_related("image").order_by("pk")
        if options["project"] is not None:
            cells = cells.filter(image__project_id=options["project"])
        found = 0
        for cell in cells.only("pk", "polygon", "layer", "image__id", "image__project_id").iterator(chunk_size=2000):
            if polygon_is_numeric(cell.polygon):
                continue
            found += 1
            self.stdout.write(
                f"cell {cell.pk} (project {cell.image.project_id}, image {cell.image_id}, layer {cell.layer}): "
                f"{str(cell.polygon)[:120]}"
            )
        self.stdout.write(f"{found} malformed cell(s)")
