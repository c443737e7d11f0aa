"""Tiled pre-segmentation of a large image (inference.tiled) through the API and the services:
tile tasks with progress, the stitch into proposals, resume after a lost worker, the watchdog,
failures with their reason."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone
from shapely.geometry import Polygon

from annotations.models import Cell, Image, Layer, PresegmentStatus
from core.models import OutboxMessage
from cytoseg.backends import backend_get
from cytoseg.contours import instances_to_polygons
from cytoseg.slide_synthetic import SyntheticSlide, slide_synthetic
from inference import tiled
from inference.models import PresegmentTile, TileRunStatus
from inference.services import presegment_reap
from tests.api.conftest import client_for, slide_upload
from training.services.registry import model_version_baseline

pytestmark = pytest.mark.django_db

SIDE = 1024


@pytest.fixture(autouse=True)
def _tiled_settings(settings: Any) -> None:
    settings.TILED_MIN_SIDE = 512
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    settings.PRESEGMENT_TILE_SIZE = 256
    settings.PRESEGMENT_TILE_MARGIN = 64
    settings.PRESEGMENT_TILES_PER_TASK = 4


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return slide_synthetic(width=SIDE, height=SIDE, field_width=512, field_height=512, distinct=4, seed=3)


@pytest.fixture
def queued(slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path) -> tuple[Image, int]:
    image_id = slide_upload(slide=slide, project=project, user=admin_user, folder=tmp_path).pk
    client = client_for(admin_user)
    version = model_version_baseline(project=project)
    # the messages stay in the outbox (the test's transaction never commits)
    answer = client.post(f"/api/v1/images/{image_id}/presegment", {"model_version": version.pk}, format="json")
    assert answer.status_code == 202, answer.content
    return Image.objects.get(pk=image_id), version.pk


def _no_duplicates(cells: list[Cell]) -> None:
    polys = [Polygon(c.polygon).buffer(0) for c in cells]
    for i, a in enumerate(polys):
        for b in polys[i + 1 :]:
            if a.bounds[0] <= b.bounds[2] and b.bounds[0] <= a.bounds[2]:
                if a.bounds[1] <= b.bounds[3] and b.bounds[1] <= a.bounds[3]:
                    inter = a.intersection(b).area
                    assert inter / (a.area + b.area - inter) < 0.5


def test_a_tiled_image_is_pre_segmented_by_tile_tasks_with_progress(
    queued: tuple[Image, int], slide: SyntheticSlide, admin_user: Any
) -> None:
    image, version_id = queued
    assert image.tiled and image.presegment_status == PresegmentStatus.QUEUED
    rows = PresegmentTile.objects.filter(image=image)
    assert rows.count() == 16 and set(rows.values_list("task", flat=True)) == {0, 1, 2, 3}
    sent = OutboxMessage.objects.filter(name=tiled.TILES_TASK).values_list("args", flat=True)
    assert sorted(sent) == [[image.pk, version_id, task] for task in range(4)]
    assert not OutboxMessage.objects.filter(name="inference.presegment_image").exists()
    for task in range(3):
        result = tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=task)
        assert result.tiles == [4 * task + i for i in range(4)] and result.cell_count is None
        assert tiled.tiles_progress(image_ids=[image.pk]) == {image.pk: (4 * (task + 1), 16)}
        running = Image.objects.get(pk=image.pk)
        assert running.presegment_status == PresegmentStatus.RUNNING
        shown = client_for(admin_user).get(f"/api/v1/images/{image.pk}").json()
        assert (shown["presegment_tiles_done"], shown["presegment_tiles_total"]) == (4 * (task + 1), 16)
    last = tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=3)
    assert last.cell_count is not None and last.cell_count > 100
    done = Image.objects.get(pk=image.pk)
    assert done.presegment_status == PresegmentStatus.DONE and done.status == "pre_segmented"
    proposals = list(Cell.objects.filter(image=image, layer=Layer.PROPOSAL))
    assert len(proposals) == last.cell_count
    _no_duplicates(proposals)
    # against the same backend run once over the whole image
    backend = backend_get(name="watershed", artifacts=None, settings={}, device="cpu")
    reference = instances_to_polygons(backend.predict(slide.region(0, 0, SIDE, SIDE)).instances, min_area=20)
    assert abs(len(proposals) - len(reference)) <= 0.05 * len(reference)
    assert all(not c for c in PresegmentTile.objects.filter(image=image).values_list("cells", flat=True))
    # a duplicate delivery does nothing
    assert tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=3).skipped
    assert Cell.objects.filter(image=image, layer=Layer.PROPOSAL).count() == len(proposals)


def test_a_lost_workers_task_resumes_at_its_unfinished_tiles(queued: tuple[Image, int]) -> None:
    image, version_id = queued
    dead = f"{socket.gethostname()}:999999999"
    # the dead worker had finished tile 4 and was inside tiles 5-7
    PresegmentTile.objects.filter(image=image, task=1).update(status=TileRunStatus.RUNNING, worker=dead)
    PresegmentTile.objects.filter(image=image, index=4).update(status=TileRunStatus.DONE, cells=[], cell_count=0)
    Image.objects.filter(pk=image.pk).update(presegment_status=PresegmentStatus.RUNNING)
    result = tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=1)
    assert result.tiles == [5, 6, 7]  # tile 4 is not redone
    assert PresegmentTile.objects.get(image=image, index=4).cell_count == 0
    assert set(PresegmentTile.objects.filter(image=image, task=1).values_list("status", flat=True)) == {"done"}


def test_the_watchdog_requeues_a_silent_workers_tiles_then_gives_up(
    queued: tuple[Image, int], settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    image, version_id = queued
    old = timezone.now() - timedelta(seconds=settings.PRESEGMENT_HEARTBEAT_TIMEOUT + 5)
    PresegmentTile.objects.filter(image=image, task=2).update(
        status=TileRunStatus.RUNNING, worker="elsewhere:1", heartbeat_at=old, attempts=1
    )
    Image.objects.filter(pk=image.pk).update(presegment_status=PresegmentStatus.RUNNING)
    with mock.patch("core.queue.task_send") as send, django_capture_on_commit_callbacks(execute=True):
        assert presegment_reap() == {"requeued": [image.pk], "failed": []}
    send.assert_called_once_with(tiled.TILES_TASK, args=[image.pk, version_id, 2], queue="gpu", task_id=None)
    tiles = PresegmentTile.objects.filter(image=image, task=2)
    assert set(tiles.values_list("status", flat=True)) == {"queued"}
    assert "no heartbeat" in tiles.first().error  # type: ignore[union-attr]
    assert Image.objects.get(pk=image.pk).presegment_status == PresegmentStatus.RUNNING
    # a tile that killed its worker PRESEGMENT_MAX_ATTEMPTS times fails the image, with why
    tiles.filter(index=9).update(
        status=TileRunStatus.RUNNING, worker="elsewhere:1", heartbeat_at=old, attempts=settings.PRESEGMENT_MAX_ATTEMPTS
    )
    assert presegment_reap()["failed"] == [image.pk]
    failed = Image.objects.get(pk=image.pk)
    assert failed.presegment_status == PresegmentStatus.FAILED and "tile 10" in failed.presegment_error
    # the other tasks of the failed run stop
    assert tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=0).skipped


def test_a_lost_stitch_is_enqueued_by_the_watchdog(
    queued: tuple[Image, int], settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    image, version_id = queued
    with mock.patch.object(tiled, "image_tiles_stitch", return_value=None):  # the stitch "dies"
        for task in range(4):
            tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=task)
    old = timezone.now() - timedelta(seconds=settings.PRESEGMENT_HEARTBEAT_TIMEOUT + 5)
    Image.objects.filter(pk=image.pk).update(presegment_heartbeat_at=old)
    with mock.patch("core.queue.task_send") as send, django_capture_on_commit_callbacks(execute=True):
        assert presegment_reap() == {"requeued": [image.pk], "failed": []}
    send.assert_called_once_with(tiled.STITCH_TASK, args=[image.pk, version_id], queue="gpu", task_id=None)
    count = tiled.image_tiles_stitch(image_id=image.pk, model_version_id=version_id)
    assert count and Cell.objects.filter(image=image, layer=Layer.PROPOSAL).count() == count
    assert tiled.image_tiles_stitch(image_id=image.pk, model_version_id=version_id) is None  # once


def test_a_failing_tile_fails_the_image_with_the_reason(queued: tuple[Image, int]) -> None:
    image, version_id = queued
    with mock.patch.object(tiled, "tiles_segment", side_effect=RuntimeError("the GPU fell over")):
        with pytest.raises(RuntimeError):
            tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=0)
    failed = Image.objects.get(pk=image.pk)
    assert failed.presegment_status == PresegmentStatus.FAILED
    assert failed.presegment_error == "tile 1 of the plan: RuntimeError: the GPU fell over"
    assert set(PresegmentTile.objects.filter(image=image, task=0).values_list("status", flat=True)) == {"failed"}
    assert not PresegmentTile.objects.filter(image=image, status=TileRunStatus.RUNNING).exists()


def test_pre_segmenting_again_replaces_the_run(
    queued: tuple[Image, int], admin_user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    image, version_id = queued
    tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=0)
    with mock.patch("core.queue.task_send"), django_capture_on_commit_callbacks(execute=True):
        again = client_for(admin_user).post(f"/api/v1/images/{image.pk}/presegment", {}, format="json")
    assert again.status_code == 202
    assert tiled.tiles_progress(image_ids=[image.pk]) == {image.pk: (0, 16)}
    assert Image.objects.get(pk=image.pk).presegment_tiles_done == 0


def test_on_object_storage_each_host_reads_one_local_copy_removed_by_the_stitch(
    queued: tuple[Image, int], settings: Any, tmp_path: Path
) -> None:
    """Object storage has no local path: the first tile task on a host streams the original
    into SLIDE_SCRATCH_DIR once, the host's next tasks read that copy, the stitch removes it."""
    image, version_id = queued
    settings.SLIDE_SCRATCH_DIR = tmp_path / "scratch"
    copies = tmp_path / "scratch" / "presegment"
    opened: list[str] = []
    real_path = tiled.default_storage.path

    def storage_open(name: str, mode: str = "rb") -> Any:
        opened.append(name)
        return open(real_path(name), mode)  # what an S3 object's stream gives

    with (
        mock.patch.object(tiled.default_storage, "path", side_effect=NotImplementedError),
        mock.patch.object(tiled.default_storage, "open", side_effect=storage_open),
    ):
        for task in range(3):
            tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=task)
            assert [p.name for p in copies.iterdir()] == [f"{image.pk}-{image.sha256[:16]}.tif"]
        assert opened == [str(image.original.name)]  # streamed once
        last = tiled.image_tiles_run(image_id=image.pk, model_version_id=version_id, task=3)
    assert last.cell_count and Image.objects.get(pk=image.pk).presegment_status == PresegmentStatus.DONE
    assert list(copies.iterdir()) == []
