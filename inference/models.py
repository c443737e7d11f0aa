"""Tiled pre-segmentation's per-tile state (``inference.tiled``).

A large image or slide is pre-segmented tile by tile: one row per tile of the run's plan
(``cytoseg.tiled.TilePlan``), with its status, the worker holding it and its heartbeat, and,
once done, the cells it keeps (``TileCell.to_json``). The rows are the run's progress and what
makes it resumable: a finished tile is never redone, and the final step stitches the rows'
cells into the image's proposals. A new run of the image replaces its rows.
"""

from __future__ import annotations

from django.db import models


class TileRunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class PresegmentTile(models.Model):
    image = models.ForeignKey("annotations.Image", on_delete=models.CASCADE, related_name="+")
    model_version = models.ForeignKey("training.ModelVersion", on_delete=models.CASCADE, related_name="+")
    index = models.PositiveIntegerField()  # row by row over the plan's grid of cores
    task = models.PositiveIntegerField()  # the tile task (a batch of tiles) it belongs to
    # the plan, so that a run never mixes two (settings may change between enqueue and run)
    tile_size = models.PositiveIntegerField()
    margin = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=TileRunStatus.choices, default=TileRunStatus.QUEUED)
    queued_at = models.DateTimeField()
    worker = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    cells = models.JSONField(default=list, blank=True)  # TileCell.to_json() each; emptied once stitched
    # A run over a region of interest (issue #14): its polygon, frozen at enqueue (the region may
    # be redrawn or deleted meanwhile); the stitch keeps only the cells whose centroid is inside.
    region_polygon = models.JSONField(null=True, blank=True)
    cell_count = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0.0)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "index"], name="uniq_presegment_tile")]
        indexes = [models.Index(fields=["image", "task"]), models.Index(fields=["status"])]
        ordering = ["image", "index"]

    def __str__(self) -> str:
        return f"image {self.image_id} tile {self.index} ({self.status})"
