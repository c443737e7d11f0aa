"""Dataset snapshots: sources, the frozen test split, immutability, training arrays, downloads."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image as PILImage

from annotations.models import Cell, Image, Layer
from core.errors import ServiceValidationError
from training import snapshots
from training.models import FrozenTestImage
from training.snapshots import snapshot_load, snapshot_zip_stream
from training.tests.factories import synthetic_project

pytestmark = pytest.mark.django_db


def test_snapshot_records_images_revisions_and_cells() -> None:
    sp = synthetic_project(splits={"train": 2, "validation": 1, "test": 1}, size=64, n_cells=5, n_erythrocytes=2)
    snapshot = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    assert snapshot.number == 1 and snapshot.source == "verified"
    assert {k: v["images"] for k, v in snapshot.counts.items()} == {"train": 2, "validation": 1, "test": 1}
    items = {item.image_id: item for item in snapshot.items.all()}
    assert set(items) == {i.pk for split in sp.images.values() for i in split}
    image = sp.images["train"][0]
    item = items[image.pk]
    verified = list(Cell.objects.filter(image=image, layer=Layer.VERIFIED).order_by("id"))
    assert [c["id"] for c in item.cells] == [c.pk for c in verified]
    assert [c["polygon"] for c in item.cells] == [c.polygon for c in verified]
    assert {c["label"] for c in item.cells} == {1, 2}
    assert item.revision == image.revision and item.image_sha256 == image.sha256 and len(item.cells_sha256) == 64
    assert FrozenTestImage.objects.filter(project=sp.project).count() == 1
    # editing the verified layer later does not change the snapshot
    Cell.objects.filter(image=image, layer=Layer.VERIFIED).delete()
    item.refresh_from_db()
    assert len(item.cells) == len(verified)
    again = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    assert again.number == 2 and again.sha256 != snapshot.sha256


def test_unverified_images_stay_out_and_annotation_source_needs_completion() -> None:
    sp = synthetic_project(splits={"train": 2, "test": 1}, size=64, n_cells=4, n_erythrocytes=1, verified=False)
    with pytest.raises(ServiceValidationError) as err:
        snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    assert "source" in err.value.errors
    with pytest.raises(ServiceValidationError):
        snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin, source="annotation")
    marked = [sp.images["train"][0].pk, sp.images["test"][0].pk]
    snapshots.image_completion_set(project=sp.project, image_ids=marked, complete=True, user=sp.admin)
    snapshot = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin, source="annotation")
    assert sorted(snapshot.items.values_list("image_id", flat=True)) == sorted(marked)
    annotation = Cell.objects.filter(image_id=marked[0], layer=Layer.ANNOTATION).count()
    assert len(snapshot.items.get(image_id=marked[0]).cells) == annotation > 0
    with pytest.raises(ServiceValidationError) as err:
        snapshots.image_completion_set(project=sp.project, image_ids=[999999], complete=True, user=sp.admin)
    assert "images" in err.value.errors


def test_test_split_is_frozen() -> None:
    sp = synthetic_project(splits={"train": 2, "test": 1}, size=64, n_cells=4, n_erythrocytes=1)
    test_image, train_image = sp.images["test"][0], sp.images["train"][0]
    snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    # someone moves the test image to train and a trained image to test
    Image.objects.filter(pk=test_image.pk).update(split="train")
    Image.objects.filter(pk=train_image.pk).update(split="test")
    second = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin)
    splits = dict(second.items.values_list("image_id", "split"))
    assert splits[test_image.pk] == "test"  # frozen: never feeds training
    assert train_image.pk not in splits  # was trained on: cannot join the test split
    assert second.excluded == [{"image": train_image.pk, "reason": second.excluded[0]["reason"]}]
    assert list(FrozenTestImage.objects.values_list("image_id", flat=True)) == [test_image.pk]


def test_synthetic_option_is_validated() -> None:
    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1)
    with pytest.raises(ServiceValidationError) as err:
        snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin, synthetic={"count": 2, "colour": 1})
    assert err.value.errors == {"synthetic.colour": "unknown option"}
    with pytest.raises(ServiceValidationError) as err:
        snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin, source="gold")
    assert "source" in err.value.errors


def test_snapshot_load_gives_training_arrays_and_synthetic_clusters() -> None:
    sp = synthetic_project(splits={"train": 2, "test": 1}, size=96, n_cells=6, n_erythrocytes=3)
    snapshot = snapshots.dataset_snapshot_create(
        project=sp.project, user=sp.admin, synthetic={"count": 2, "seed": 1, "fill_fraction": 0.3}
    )
    data = snapshot_load(snapshot)
    assert len(data.train) == 4 and data.synthetic == 2 and len(data.test) == 1
    real = data.train[0]
    fld = sp.fields[int(real.key)]
    assert real.image.shape == (96, 96, 3) and np.array_equal(real.image, fld.image)
    # the polygons of the full masks, painted in order, give back the generator's maps
    assert np.array_equal(real.semantic, fld.semantic_map())
    assert np.array_equal(real.instances > 0, fld.label_map() > 0)
    assert set(np.unique(real.cell_instances[real.semantic == 2])) == {0}
    synth = data.train[2]
    assert synth.key.startswith("synthetic_") and synth.semantic.max() >= 1
    assert (synth.semantic > 0).mean() >= (real.semantic > 0).mean()


def _zip(snapshot, fmt: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(snapshot_zip_stream(snapshot, fmt=fmt, dataset_id=42))))


def test_downloads_are_nnunet_and_cellpose_layouts() -> None:
    sp = synthetic_project(splits={"train": 2, "validation": 1, "test": 1}, size=96, n_cells=6, n_erythrocytes=3)
    snapshot = snapshots.dataset_snapshot_create(project=sp.project, user=sp.admin, synthetic={"count": 1})
    archive = _zip(snapshot, "nnunet")
    names = set(archive.namelist())
    root = f"Dataset042_Project{sp.project.pk}Snapshot1"
    train_id = sp.images["train"][0].pk
    test_id = sp.images["test"][0].pk
    assert f"{root}/imagesTr/image_{train_id}_0000.png" in names
    assert f"{root}/labelsTr/image_{train_id}.png" in names
    assert f"{root}/imagesTs/image_{test_id}_0000.png" in names
    assert f"{root}/imagesTr/synthetic_0001_0000.png" in names
    dataset = json.loads(archive.read(f"{root}/dataset.json"))
    assert dataset["labels"] == {"background": 0, "cell": 1, "erythrocyte": 2}
    assert dataset["file_ending"] == ".png" and dataset["numTraining"] == 4
    assert json.loads(archive.read(f"{root}/splits_final.json"))[0]["val"] == [f"image_{sp.images['validation'][0].pk}"]
    label = np.asarray(PILImage.open(io.BytesIO(archive.read(f"{root}/labelsTr/image_{train_id}.png"))))
    assert np.array_equal(label, sp.fields[train_id].semantic_map())
    manifest = json.loads(archive.read("snapshot.json"))
    assert manifest["sha256"] == snapshot.sha256 and len(manifest["items"]) == 4

    archive = _zip(snapshot, "cellpose")
    names = set(archive.namelist())
    assert {f"train/image_{train_id}.png", f"train/image_{train_id}_masks.png", f"test/image_{test_id}.png"} <= names
    masks = np.asarray(PILImage.open(io.BytesIO(archive.read(f"train/image_{train_id}_masks.png"))))
    assert masks.dtype == np.uint16 and len(np.unique(masks)) - 1 == len(np.unique(sp.fields[train_id].label_map())) - 1
