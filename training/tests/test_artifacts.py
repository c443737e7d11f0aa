"""Model files as storage objects and each host's cache of them (training.services.artifacts),
on the embedded storage (local disk); tests/integration/test_object_storage.py runs the same
code against an S3 server and workers on "other hosts"."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.files.storage import default_storage

from core.errors import ConflictError
from tests.factories import ProjectFactory, model_object_replace, model_version_files
from training.services import artifacts

pytestmark = pytest.mark.django_db


def _version(files: dict[str, bytes]) -> Any:
    return model_version_files(ProjectFactory(), "cellpose", files)


def test_upload_names_objects_under_a_fresh_prefix_and_nothing_on_failure(tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_bytes(b"{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"x" * 100)
    prefix = artifacts.artifacts_prefix_new(project_id=7)
    assert prefix.startswith("models/7/")
    entries = artifacts.artifacts_upload(folder=folder, prefix=prefix)
    assert [e["path"] for e in entries] == ["fold_0/checkpoint_final.pth", "plans.json"]
    assert default_storage.exists(f"{prefix}/fold_0/checkpoint_final.pth")
    # a failure halfway deletes what was written
    other = artifacts.artifacts_prefix_new(project_id=7)
    real_save = default_storage.save
    calls = []

    def failing_save(name: str, content: Any, **kwargs: Any) -> str:
        calls.append(name)
        if len(calls) == 2:
            raise OSError("bucket unreachable")
        return str(real_save(name, content, **kwargs))

    with mock.patch.object(default_storage, "save", side_effect=failing_save), pytest.raises(OSError):
        artifacts.artifacts_upload(folder=folder, prefix=other)
    assert not default_storage.exists(calls[0])


def test_local_copy_is_fetched_once_verified_and_refetched_when_damaged(settings: Any) -> None:
    version = _version({"cellpose.pth": b"weights" * 10, "cellpose.json": b"{}"})
    folder = artifacts.artifacts_local(version)
    assert folder.parent == Path(settings.MODEL_CACHE_DIR) and folder.name == artifacts.manifest_key(version.artifacts)
    assert (folder / "cellpose.pth").read_bytes() == b"weights" * 10
    # a hit reads nothing from storage
    with mock.patch.object(default_storage, "open", side_effect=AssertionError("fetched again")):
        assert artifacts.artifacts_local(version) == folder
    # a cached file that lost its size is fetched again
    (folder / "cellpose.pth").write_bytes(b"short")
    assert (artifacts.artifacts_local(version) / "cellpose.pth").read_bytes() == b"weights" * 10
    # no temporary folders left behind
    assert [p.name for p in Path(settings.MODEL_CACHE_DIR).iterdir() if p.name.startswith(".tmp")] == []


def test_a_changed_object_never_reaches_the_cache(settings: Any) -> None:
    version = _version({"cellpose.pth": b"A" * 64})
    model_object_replace(version, "cellpose.pth", b"B" * 64)  # same size
    with pytest.raises(ConflictError, match="sha256"):
        artifacts.artifacts_local(version)
    model_object_replace(version, "cellpose.pth", b"A" * 65)  # larger: not even read to the end
    with pytest.raises(ConflictError, match="sha256"):
        artifacts.artifacts_local(version)
    cache = Path(settings.MODEL_CACHE_DIR)
    assert [p for p in cache.iterdir() if p.is_dir()] == []


def test_cache_evicts_least_recently_used_entries_above_its_size(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(artifacts, "IN_USE_SECONDS", 0.0)
    settings.MODEL_CACHE_MAX_BYTES = 250
    old, used, new = (_version({"m.pth": bytes([i]) * 100}) for i in range(3))
    first = artifacts.artifacts_local(old)
    second = artifacts.artifacts_local(used)
    os.utime(first / ".manifest.json", (1, 1))  # long unused
    os.utime(second / ".manifest.json", (2, 2))
    third = artifacts.artifacts_local(new)  # 300 bytes > 250: the least recently used goes
    assert not first.exists() and second.exists() and third.exists()
    settings.MODEL_CACHE_MAX_BYTES = 100
    assert artifacts.artifacts_cache_evict() == [second.name]
    # an entry in use (recently touched) is kept even above the limit
    monkeypatch.setattr(artifacts, "IN_USE_SECONDS", 600.0)
    settings.MODEL_CACHE_MAX_BYTES = 1
    assert artifacts.artifacts_cache_evict() == [] and third.exists()


def test_kinds_without_files_load_without_artifacts() -> None:
    from training.services.registry import model_version_baseline

    assert artifacts.artifacts_for(model_version_baseline(project=ProjectFactory())) is None
