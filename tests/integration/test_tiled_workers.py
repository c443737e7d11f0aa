"""Tiled pre-segmentation with real worker processes: two workers on the `gpu` queue share one
large image's tile tasks; one is SIGKILLed (its whole process group) in the middle of a tile;
the watchdog gives its tile back and the run resumes there: the tiles finished before the kill
are not redone, and the stitched proposals are complete, without duplicates."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient
from shapely.geometry import Polygon

from annotations.models import Cell, Image, Layer, PresegmentStatus
from core.processes import pid_alive
from cytoseg.backends import backend_get
from cytoseg.contours import instances_to_polygons
from cytoseg.slide_synthetic import slide_synthetic, slide_write
from inference.models import PresegmentTile, TileRunStatus
from inference.services import presegment_reap
from tests.factories import ProjectFactory, UserFactory
from tests.redis_server import RedisServer, app_broker
from tests.worker import celery_worker
from training.services.registry import model_version_baseline

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT, TILE = 2048, 1536, 512  # 12 tiles, one per task


def _in_group(worker: str, group: int) -> bool:
    try:
        return os.getpgid(int(worker.rpartition(":")[2])) == group
    except ProcessLookupError:
        return False


def test_two_workers_share_a_slides_tiles_and_a_killed_one_is_resumed(
    redis_server: RedisServer, tmp_path: Path, settings: Any
) -> None:
    settings.TILED_MIN_SIDE = 1024
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    settings.PRESEGMENT_TILE_SIZE = TILE
    settings.PRESEGMENT_TILE_MARGIN = 64
    settings.PRESEGMENT_TILES_PER_TASK = 1
    admin = UserFactory()
    project = ProjectFactory(created_by=admin, auto_presegment=False)
    client = APIClient()
    client.force_authenticate(admin)
    slide = slide_synthetic(width=WIDTH, height=HEIGHT, field_width=512, field_height=512, distinct=4, seed=5)
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff", quality=95)
    with path.open("rb") as handle:
        upload = client.post(f"/api/v1/projects/{project.pk}/images", {"files": [handle]}, format="multipart")
    assert upload.status_code == 201, upload.content
    image_id = int(upload.json()[0]["id"])
    version = model_version_baseline(project=project)
    env = {
        "CELERY_BROKER_URL": redis_server.url,
        "BROKER_VISIBILITY_TIMEOUT": "12",
        "BROKER_RESTORE_INTERVAL": "2",
        "INFERENCE_DEVICE": "cpu",
    }
    tiles = PresegmentTile.objects.filter(image_id=image_id)
    with (
        app_broker(redis_server.url),
        celery_worker(log_path=tmp_path / "a.log", queues="gpu", env=env, name="gpu-a", purge=False) as a,
        celery_worker(log_path=tmp_path / "b.log", queues="gpu", env=env, name="gpu-b", purge=False),
    ):
        answer = client.post(f"/api/v1/images/{image_id}/presegment", {"model_version": version.pk}, format="json")
        assert answer.status_code == 202, answer.content
        assert tiles.count() == 12
        # a few tiles done, and worker A in the middle of one
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = tiles.filter(status=TileRunStatus.DONE).count()
            running = tiles.filter(status=TileRunStatus.RUNNING).values_list("worker", flat=True)
            if done >= 3 and any(_in_group(w, a.pid) for w in running):
                break
            time.sleep(0.01)
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(10)
        finished = dict(tiles.filter(status=TileRunStatus.DONE).values_list("index", "worker"))
        victims: dict[int, str] = {}
        until = time.monotonic() + 15
        while not victims and time.monotonic() < until:
            running_now = tiles.filter(status=TileRunStatus.RUNNING).values_list("index", "worker")
            victims = {i: w for i, w in running_now if not pid_alive(int(w.rpartition(":")[2]))}
            time.sleep(0.1)
        assert victims, f"worker A was not caught mid-tile: {list(tiles.values_list('index', 'status', 'worker'))}"
        shown = client.get(f"/api/v1/images/{image_id}").json()
        assert shown["presegment_status"] == "running" and shown["presegment_tiles_total"] == 12
        assert 3 <= shown["presegment_tiles_done"] < 12
        # the watchdog (beat runs it every PRESEGMENT_HEARTBEAT_TIMEOUT s) gives the tile back
        assert image_id in presegment_reap()["requeued"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if Image.objects.get(pk=image_id).presegment_status != PresegmentStatus.RUNNING:
                break
            time.sleep(0.3)
    image = Image.objects.get(pk=image_id)
    assert image.presegment_status == PresegmentStatus.DONE, image.presegment_error
    assert (image.presegment_tiles_done, image.presegment_tiles_total) == (12, 12)
    rows = {row.index: row for row in tiles}
    # the tiles done before the kill were not redone; the killed one was finished by B
    for index, worker in finished.items():
        assert rows[index].worker == worker and rows[index].attempts == 1
    for index, dead in victims.items():
        assert rows[index].attempts == 2 and rows[index].worker != dead
    # shared: A held a tile when it died, B finished others
    assert any(row.worker not in victims.values() for row in rows.values())
    # complete and without duplicates: against the same backend over the whole image
    proposals = list(Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL))
    backend = backend_get(name="watershed", artifacts=None, settings={}, device="cpu")
    reference = instances_to_polygons(backend.predict(slide.region(0, 0, WIDTH, HEIGHT)).instances, min_area=20)
    assert abs(len(proposals) - len(reference)) <= 0.05 * len(reference), (len(proposals), len(reference))
    polys = [Polygon(c.polygon).buffer(0) for c in proposals]
    boxes = [p.bounds for p in polys]
    for i, a_poly in enumerate(polys):
        for j in range(i + 1, len(polys)):
            b = boxes[j]
            if boxes[i][0] <= b[2] and b[0] <= boxes[i][2] and boxes[i][1] <= b[3] and b[1] <= boxes[i][3]:
                inter = a_poly.intersection(polys[j]).area
                assert inter / (a_poly.area + polys[j].area - inter) < 0.5
