"""Click-to-segment and box prompts (POST images/{id}/segment/click and /box, issue #13)."""

from __future__ import annotations

import io
import threading
from typing import Any
from unittest import mock

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.test import override_settings
from PIL import Image as PILImage
from scipy import ndimage as ndi

from annotations.models import Image, ImageStatus, Role
from annotations.services import images as image_services
from cytoseg.maps import ImageMaps
from cytoseg.synthetic import SyntheticField, generate_field
from inference import interactive
from tests.api.conftest import client_for
from tests.factories import member, model_version_files
from training.models import ModelStatus

pytestmark = pytest.mark.django_db

W, H = 256, 192


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    interactive.interactive_cache_clear()
    yield
    interactive.interactive_cache_clear()


@pytest.fixture(scope="module")
def synthetic() -> SyntheticField:
    return generate_field(seed=5, width=W, height=H, n_cells=14, n_erythrocytes=0, cluster_fraction=0.0)


def _upload(project: Any, field: SyntheticField) -> Image:
    buffer = io.BytesIO()
    PILImage.fromarray(field.image).save(buffer, format="PNG")
    from django.core.files.uploadedfile import SimpleUploadedFile

    admin = project.memberships.get(role=Role.ADMIN).user
    files = [SimpleUploadedFile("field.png", buffer.getvalue(), content_type="image/png")]
    return image_services.image_upload_many(project=project, files=files, metadata={}, uploaded_by=admin)[0]


@pytest.fixture
def image(project: Any, synthetic: SyntheticField) -> Image:
    return _upload(project, synthetic)


def _inside(mask: np.ndarray) -> list[float]:
    r, c = np.unravel_index(np.argmax(ndi.distance_transform_edt(mask)), mask.shape)
    return [float(c) + 0.5, float(r) + 0.5]


def _big_cell(field: SyntheticField) -> np.ndarray:
    lm = field.label_map()
    ks = [k for k in range(1, int(lm.max()) + 1) if (lm == k).sum() >= 150]
    return lm == ks[0]


def _ground_truth_maps(field: SyntheticField) -> ImageMaps:
    from cellpose import dynamics

    lm = field.label_map()
    flows = np.asarray(dynamics.masks_to_flows(lm.astype(np.int32)), dtype=np.float32) * 5.0
    return ImageMaps(
        height=H,
        width=W,
        flows=flows,
        cellprob=np.where(lm > 0, 4.0, -6.0).astype(np.float32),
        foreground=(lm > 0).astype(np.float32),
        semantic=field.semantic_map(),
        diameter=30.0,
    )


def _rasterize(polygon: list[list[float]]) -> np.ndarray:
    from cytoseg.contours import polygon_rasterize

    return polygon_rasterize(polygon, height=H, width=W)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _cellpose_version(project: Any) -> Any:
    from cytoseg.tests.model_files import cellpose_weights

    return model_version_files(project, "cellpose", {"cellpose.pth": cellpose_weights()}, status=ModelStatus.ACTIVE)


def test_click_without_a_model_uses_the_baseline(image: Image, synthetic: SyntheticField, project: Any) -> None:
    annotator = member(project, Role.ANNOTATOR)
    cell = _big_cell(synthetic)
    response = client_for(annotator).post(
        f"/api/v1/images/{image.pk}/segment/click", {"positive": [_inside(cell)]}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["source"] == "baseline" and body["model_version"] is None and body["reason"] is None
    assert body["label"] == 1 and body["class_id"] == project.classes.get(model_label=1).pk
    assert _iou(_rasterize(body["polygon"]), cell) >= 0.6
    assert body["timings"]["total_ms"] > 0


def test_click_from_kept_maps(image: Image, synthetic: SyntheticField, project: Any) -> None:
    version = _cellpose_version(project)
    interactive.image_maps_store(image=image, model_version=version, maps=_ground_truth_maps(synthetic))
    interactive.interactive_cache_clear()  # as another web process: the maps come from storage
    annotator = member(project, Role.ANNOTATOR)
    cell = _big_cell(synthetic)
    url = f"/api/v1/images/{image.pk}/segment/click"
    cold = client_for(annotator).post(url, {"positive": [_inside(cell)]}, format="json").json()
    assert cold["source"] == "model" and cold["model_version"] == version.pk
    assert "maps_storage_ms" in cold["timings"]
    assert _iou(_rasterize(cold["polygon"]), cell) >= 0.8
    warm = client_for(annotator).post(url, {"positive": [_inside(cell)], "negative": []}, format="json").json()
    assert "maps_memory" in warm["timings"] and warm["polygon"] == cold["polygon"]
    # a negative click on the same cell's other side splits it; a click on background finds nothing
    rows, cols = np.nonzero(cell)
    left = [float(cols.min()) + 1.5, float(rows[cols.argmin()]) + 0.5]
    split = client_for(annotator).post(url, {"positive": [_inside(cell)], "negative": [left]}, format="json").json()
    assert split["polygon"] and _rasterize(split["polygon"]).sum() < _rasterize(cold["polygon"]).sum()
    box = (
        client_for(annotator)
        .post(f"/api/v1/images/{image.pk}/segment/box", {"box": [0, 0, W, H]}, format="json")
        .json()
    )
    assert box["source"] == "model" and box["model_version"] == version.pk
    lm = synthetic.label_map()
    assert len(box["cells"]) >= 0.8 * len([k for k in range(1, int(lm.max()) + 1) if (lm == k).sum() >= 30])
    assert all(c["class_id"] == project.classes.get(model_label=c["label"]).pk for c in box["cells"])


@override_settings(INTERACTIVE_MAPS_WORKER=False)
def test_image_without_maps_gets_them_on_demand(project: Any) -> None:
    """The first click computes the maps of a window around it (not the whole field); a box
    elsewhere adds another window; deleting the image deletes them."""
    big = generate_field(seed=6, width=640, height=480, n_cells=40)
    image = _upload(project, big)
    version = _cellpose_version(project)
    key = interactive.maps_key(project_id=project.pk, image_id=image.pk, model_version_id=version.pk)
    assert not default_storage.exists(key)
    annotator = member(project, Role.ANNOTATOR)
    lm = big.label_map()
    cells = [k for k in range(1, int(lm.max()) + 1) if (lm == k).sum() >= 150]
    point = _inside(lm == cells[0])
    response = client_for(annotator).post(
        f"/api/v1/images/{image.pk}/segment/click", {"positive": [point]}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert "maps_compute_ms" in body["timings"] and default_storage.exists(key)
    assert body["source"] in ("model", "baseline")  # an untrained network: whatever it sees
    if body["source"] == "model":
        assert body["model_version"] == version.pk
    with default_storage.open(key, "rb") as handle:
        kept = interactive.maps_load(handle.read())
    x, y = int(point[0]), int(point[1])
    # a window the side of what a click on a cell of the model's diameter reads (97 px for 30 px)
    side = interactive._window_side(version.pk)
    assert side == 97 and kept.known is not None and kept.known[y, x] and kept.known.sum() == side**2
    # a second click nearby needs no computing; a box elsewhere adds another window
    again = (
        client_for(annotator)
        .post(f"/api/v1/images/{image.pk}/segment/click", {"positive": [point]}, format="json")
        .json()
    )
    assert "maps_compute_ms" not in again["timings"] and "maps_memory" in again["timings"]
    corner = [0, 0, 40, 40] if y > 240 else [600, 440, 640, 480]
    box = client_for(annotator).post(f"/api/v1/images/{image.pk}/segment/box", {"box": corner}, format="json")
    assert box.status_code == 200 and "maps_compute_ms" in box.json()["timings"]
    with default_storage.open(key, "rb") as handle:
        wider = interactive.maps_load(handle.read())
    assert wider.known is not None and wider.known[corner[1], corner[0]] and wider.known.sum() > kept.known.sum()
    # deleting the image deletes its maps
    from annotations.services.images import image_delete

    with mock.patch("django.db.transaction.on_commit", side_effect=lambda fn, *a, **k: fn()):
        image_delete(image=image)
    assert not default_storage.exists(key)


def test_the_interactive_worker_computes_missing_maps(image: Image, synthetic: SyntheticField, project: Any) -> None:
    """With the worker (the default) the click enqueues the maps task on the interactive queue
    and waits for it; here the 'worker' runs the task's service when it is sent."""
    version = _cellpose_version(project)
    sent: list[tuple[str, list[Any], str]] = []

    def send(name: str, *, args: list[Any], queue: str, task_id: str | None = None) -> None:
        sent.append((name, list(args), queue))
        interactive.image_maps_compute(image_id=args[0], model_version_id=args[1], region=args[2])

    annotator = member(project, Role.ANNOTATOR)
    with (
        mock.patch("core.queue.task_send", side_effect=send),
        mock.patch("django.db.transaction.on_commit", side_effect=lambda fn, *a, **k: fn()),
    ):
        response = client_for(annotator).post(
            f"/api/v1/images/{image.pk}/segment/click", {"positive": [_inside(_big_cell(synthetic))]}, format="json"
        )
    assert response.status_code == 200, response.content
    assert [(name, args[:2], queue) for name, args, queue in sent] == [
        ("inference.image_maps", [image.pk, version.pk], "interactive")
    ]
    # what the click needs is sent (the worker widens it to its model's window); it is kept
    r0, r1, c0, c1 = sent[0][1][2]
    point = _inside(_big_cell(synthetic))
    assert r0 <= point[1] < r1 and c0 <= point[0] < c1
    assert r1 - r0 <= 2 * interactive.CLICK_MARGIN + 1 and c1 - c0 <= 2 * interactive.CLICK_MARGIN + 1
    key = interactive.maps_key(project_id=project.pk, image_id=image.pk, model_version_id=version.pk)
    with default_storage.open(key, "rb") as handle:
        kept = interactive.maps_load(handle.read())
    assert kept.covers(r0, r1, c0, c1)
    # a worker that does not answer in time: 503 with Retry-After, nothing else changes
    interactive.interactive_cache_clear()
    interactive.image_maps_delete(image_id=image.pk, project_id=project.pk)
    from django.core.cache import cache

    cache.clear()
    with (
        override_settings(INTERACTIVE_MAPS_TIMEOUT=1),
        mock.patch("core.queue.task_send"),
        mock.patch("django.db.transaction.on_commit", side_effect=lambda fn, *a, **k: fn()),
    ):
        late = client_for(annotator).post(
            f"/api/v1/images/{image.pk}/segment/click", {"positive": [[10, 10]]}, format="json"
        )
    assert late.status_code == 503 and late["Retry-After"] and "being computed" in late.json()["detail"]
    # a worker whose model fails: 409 with the reason, and the next click sends the task again
    broken = mock.patch("inference.interactive.window_maps", side_effect=RuntimeError("weights unreadable"))
    with broken, mock.patch("core.queue.task_send", side_effect=send) as sent_again:
        with mock.patch("django.db.transaction.on_commit", side_effect=lambda fn, *a, **k: fn()):
            failed = client_for(annotator).post(
                f"/api/v1/images/{image.pk}/segment/click", {"positive": [[10, 10]]}, format="json"
            )
            assert failed.status_code == 409 and "weights unreadable" in failed.json()["detail"]
            client_for(annotator).post(
                f"/api/v1/images/{image.pk}/segment/click", {"positive": [[10, 10]]}, format="json"
            )
    assert sent_again.call_count == 2


def test_presegmentation_keeps_the_maps(image: Image, project: Any) -> None:
    from inference.services import image_presegment_run

    version = _cellpose_version(project)
    Image.objects.filter(pk=image.pk).update(presegment_status="queued", presegment_model_id=version.pk)
    image_presegment_run(image_id=image.pk, model_version_id=version.pk)
    key = interactive.maps_key(project_id=project.pk, image_id=image.pk, model_version_id=version.pk)
    assert default_storage.exists(key)
    with default_storage.open(key, "rb") as handle:
        maps = interactive.maps_load(handle.read())
    assert maps.has_flows and (maps.height, maps.width) == (H, W)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"positive": [[W, 5]]}, "positive.0"),
        ({"positive": [[5, 5], [5, -1]]}, "positive.1"),
        ({"positive": [[5, 5]], "negative": [[5, H + 3]]}, "negative.0"),
        ({"positive": []}, "positive"),
        ({"positive": [[5]]}, "positive"),
        ({"positive": [[5, 5]] * 21}, "positive"),
        ({}, "positive"),
    ],
)
def test_bad_points_are_400_naming_the_field(image: Image, project: Any, body: dict[str, Any], field: str) -> None:
    annotator = member(project, Role.ANNOTATOR)
    response = client_for(annotator).post(f"/api/v1/images/{image.pk}/segment/click", body, format="json")
    assert response.status_code == 400
    data = response.json()
    assert data["detail"] and field in data["errors"]


@pytest.mark.parametrize("box", [[0, 0, 0, 10], [10, 10, 5, 20], [0, 0, W + 1, 10], [-1, 0, 5, 5], [1, 2, 3], "x"])
def test_bad_boxes_are_400_naming_box(image: Image, project: Any, box: Any) -> None:
    annotator = member(project, Role.ANNOTATOR)
    response = client_for(annotator).post(f"/api/v1/images/{image.pk}/segment/box", {"box": box}, format="json")
    assert response.status_code == 400 and "box" in response.json()["errors"]


def test_box_without_a_model(image: Image, synthetic: SyntheticField, project: Any) -> None:
    annotator = member(project, Role.ANNOTATOR)
    response = client_for(annotator).post(
        f"/api/v1/images/{image.pk}/segment/box", {"box": [0, 0, W, H]}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "baseline" and body["cells"]
    assert all(len(c["polygon"]) >= 3 and c["label"] in (1, 2) for c in body["cells"])


def test_permissions(image: Image, project: Any, outsider: Any) -> None:
    """Whoever may edit the image's cells may click (every member of its project, while the
    image is open); others get 404 (not a member) or 401/403 (not signed in)."""
    url = f"/api/v1/images/{image.pk}/segment/click"
    body = {"positive": [[10, 10]]}
    assert client_for(outsider).post(url, body, format="json").status_code == 404
    from rest_framework.test import APIClient

    assert APIClient().post(url, body, format="json").status_code in (401, 403)
    # a submitted image's cells are locked: so are its clicks
    Image.objects.filter(pk=image.pk).update(status=ImageStatus.SUBMITTED)
    annotator = member(project, Role.ANNOTATOR)
    assert client_for(annotator).post(url, body, format="json").status_code == 409
    box = client_for(annotator).post(f"/api/v1/images/{image.pk}/segment/box", {"box": [0, 0, 9, 9]}, format="json")
    assert box.status_code == 409


def test_a_first_clicks_window_runs_without_test_time_augmentation_and_as_one_tile() -> None:
    # the window's maps are computed while the doctor waits; the version's own settings stay
    # as they are for pre-segmentation's whole-field maps
    two_stage = {"combine": "assign", "nnunet": {"use_mirroring": True, "tile_step_size": 0.5}, "cellpose": {}}
    window = interactive._window_settings("two_stage", two_stage)
    assert window["nnunet"] == {"use_mirroring": False, "tile_step_size": 0.5}
    assert window["cellpose"] == {"bsize": 0, "augment": False}
    assert window["combine"] == "assign" and two_stage["nnunet"]["use_mirroring"] is True
    assert interactive._window_settings("cellpose", {"bsize": 224})["bsize"] == 0
    assert interactive._window_settings("nnunet", {})["use_mirroring"] is False
    assert interactive._window_settings("watershed", {"sigma": 1.0}) == {"sigma": 1.0}


def test_the_interactive_worker_loads_the_active_models_when_it_starts(image: Image, project: Any) -> None:
    """The models the next first clicks need are loaded (and run once) before any click: those
    of the projects worked on last with a model that has maps; a project without one is passed."""
    from cytoseg.backends import _cache as loaded

    assert interactive.interactive_models_warm() == []  # only the classical baseline so far
    version = _cellpose_version(project)
    loaded.clear()
    assert interactive.interactive_models_warm() == [version.pk]
    assert any(key[0] == "cellpose" for key in loaded)
    # the worker's pool process starts it in a thread of its own (the pool waits for the process
    # a few seconds only)
    from inference import tasks

    with (
        mock.patch("inference.tasks.current_app") as app,
        mock.patch("inference.tasks.interactive_models_warm") as warm,
        mock.patch("inference.tasks.connection"),
        mock.patch("torch.set_num_threads") as threads,
    ):
        app.amqp.queues.consume_from = {"interactive": None}
        tasks._interactive_preload()
        for thread in threading.enumerate():
            if thread.name == "interactive-warm":
                thread.join(10)
    warm.assert_called_once_with()
    threads.assert_called_once_with(1)  # INTERACTIVE_TORCH_THREADS: one, as the worker runs beside others
